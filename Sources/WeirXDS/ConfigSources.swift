import EnvoyAPI
import Dispatch
import Foundation
import Logging
import SwiftProtobuf
import Synchronization
import WeirMesh
import WeirSystem
#if canImport(Glibc)
    import Glibc
#endif

/// The files of a config directory: `.yaml`, `.yml` (and `.json` when asked), read recursively, sorted. Hidden
/// entries (a Kubernetes ConfigMap's `..data`) are skipped; symbolic links are followed. Everything that cannot be read
/// is an error that names it: a directory or file without permission, a file past the size limit, a path that is not
/// a directory or a regular file. Nothing is skipped silently, so no object vanishes from the mesh unnoticed.
public enum ConfigDirectory {
    /// The files read last time, by path, with their status then: a file whose status is the same, and that had not
    /// changed for a second when it was read, is not read again.
    ///
    /// Timestamps tick coarsely (a few milliseconds), so a write just after a read can leave the status as it was;
    /// but a write after a file has rested for a second changes its ctime, which the kernel sets on every write and
    /// rename and no one can set back. A file renamed over (how deploy tools and Kubernetes write) is a new inode.
    public final class ReadCache: Sendable {
        struct Entry {
            var status: FileStatus
            var text: String
        }
        let entries = Mutex<[String: Entry]>([:])
        public init() {}
        /// How long a file must have been left alone, before it was read, for its status to vouch for its text.
        static let restNanoseconds: Int64 = 1_000_000_000

        func text(_ path: String, _ status: FileStatus) -> String? {
            entries.withLock { $0[path].flatMap { $0.status == status ? $0.text : nil } }
        }

        func set(_ path: String, _ status: FileStatus, _ text: String, readAt: Int64) {
            entries.withLock { e in
                if status.changed < readAt - Self.restNanoseconds && status.modified < readAt - Self.restNanoseconds {
                    e[path] = Entry(status: status, text: text)
                } else {
                    e[path] = nil
                }
            }
        }

        /// Forgets files that are gone.
        func keep(_ paths: Set<String>) { entries.withLock { $0 = $0.filter { paths.contains($0.key) } } }

        /// The wall clock, in nanoseconds since the epoch (what file timestamps count).
        static func now() -> Int64 {
            var t = timespec()
            clock_gettime(CLOCK_REALTIME, &t)
            return Int64(t.tv_sec) * 1_000_000_000 + Int64(t.tv_nsec)
        }
    }

    public static func files(
        _ directory: String, extensions: [String] = [".yaml", ".yml"],
        limits: YAMLLimits = .default, cache: ReadCache? = nil
    ) throws(MeshError) -> [(path: String, text: String)] {
        var walk = Walk(extensions: extensions, limits: limits, cache: cache)
        let st: FileStatus
        do { st = try FileStatus.of(directory) } catch {
            throw MeshError(problems: [Walk.problem(directory, "cannot be read: \(error.reason)")])
        }
        guard st.isDirectory else { throw MeshError(problems: [Walk.problem(directory, "not a directory")]) }
        walk.directory(directory, depth: 0, visited: [])
        if !walk.problems.isEmpty { throw MeshError(problems: walk.problems) }
        cache?.keep(Set(walk.files.map(\.path)))
        return walk.files.sorted { $0.path < $1.path }
    }

    struct Walk {
        let extensions: [String]
        let limits: YAMLLimits
        var cache: ReadCache?
        var files: [(path: String, text: String)] = []
        var problems: [MeshProblem] = []
        /// Directories nested deeper than this (through links, say) are refused rather than followed.
        static let maxDepth = 32

        static func problem(_ path: String, _ message: String) -> MeshProblem {
            MeshProblem(location: SourceLocation(file: path, line: 0, field: "(file)"), message: message)
        }

        struct Identity: Hashable {
            var device: UInt64
            var inode: UInt64
        }

        func isConfig(_ name: String) -> Bool { extensions.contains { name.hasSuffix($0) } }

        mutating func directory(_ path: String, depth: Int, visited: Set<Identity>) {
            guard depth <= Self.maxDepth else {
                problems.append(Self.problem(path, "directories nest more than \(Self.maxDepth) deep"))
                return
            }
            let st: FileStatus
            do { st = try FileStatus.of(path) } catch {
                problems.append(Self.problem(path, "cannot be read: \(error.reason)"))
                return
            }
            let id = Identity(device: st.device, inode: st.inode)
            guard !visited.contains(id) else {
                problems.append(Self.problem(path, "a symbolic link loops back to a directory above it"))
                return
            }
            let names: [String]
            do { names = try FileSystem.entries(path) } catch {
                problems.append(Self.problem(path, "directory cannot be read: \(error.reason)"))
                return
            }
            for name in names.sorted() where !name.hasPrefix(".") {
                let child = path.hasSuffix("/") ? path + name : path + "/" + name
                let cst: FileStatus
                do { cst = try FileStatus.of(child) } catch {
                    // A dangling link that looks like a manifest is a mistake; anything else is not ours.
                    if isConfig(name) { problems.append(Self.problem(child, "cannot be read: \(error.reason)")) }
                    continue
                }
                if cst.isDirectory {
                    directory(child, depth: depth + 1, visited: visited.union([id]))
                } else if isConfig(name) {
                    if cst.isRegular {
                        file(child, cst)
                    } else {
                        problems.append(Self.problem(child, "not a regular file"))
                    }
                }
            }
        }

        mutating func file(_ path: String, _ status: FileStatus) {
            let size = status.size
            guard size <= limits.maxBytes else {
                problems.append(
                    Self.problem(
                        path, "the file is \(size) bytes; weir reads files of at most \(limits.maxBytes) bytes"))
                return
            }
            if let text = cache?.text(path, status) {
                files.append((path, text))
                return
            }
            do {
                let readAt = ReadCache.now()
                // Read at most one byte past the limit: a file that grew since stat is refused, not read whole.
                let bytes = try FileDescriptor.open(path, O_RDONLY).readAll(limit: limits.maxBytes)
                guard bytes.count <= limits.maxBytes else {
                    problems.append(
                        Self.problem(
                            path,
                            "the file is over \(limits.maxBytes) bytes; weir reads files of at most \(limits.maxBytes) bytes"
                        ))
                    return
                }
                let text = String(decoding: bytes, as: UTF8.self)
                files.append((path, text))
                // What was read is what the status said only if nothing wrote between the stat and the read: the
                // status is taken again, and the text kept only if it is the same.
                if let cache, (try? FileStatus.of(path)) == status { cache.set(path, status, text, readAt: readAt) }
            } catch {
                problems.append(Self.problem(path, "cannot be read: \(error.reason)"))
            }
        }
    }
}

/// Envoy resources written by hand, in Envoy's own YAML/JSON shape: files with a `resources:` list whose entries
/// carry `@type` (as Envoy's filesystem subscriptions read them), for the subset of the API weir knows.
public enum EnvoyResourceFiles {
    public static func read(_ files: [(path: String, text: String)], limits: YAMLLimits = .default) throws(MeshError)
        -> EnvoyResources
    {
        EnvoyTypes.register()
        var out = EnvoyResources()
        var problems: [MeshProblem] = []
        var options = JSONDecodingOptions()
        options.ignoreUnknownFields = false
        for (path, text) in files {
            func problem(_ line: Int, _ field: String, _ message: String) {
                problems.append(
                    MeshProblem(location: SourceLocation(file: path, line: line, field: field), message: message))
            }
            let documents: [YAMLNode]
            do { documents = try YAMLNode.documents(text, limits: limits) } catch {
                problem(error.line, "(yaml)", error.message)
                continue
            }
            guard documents.count == 1, let root = documents.first else {
                problem(
                    documents.dropFirst().first?.line ?? 1, "(yaml)",
                    "expected one document with a `resources:` list, found \(documents.count)")
                continue
            }
            guard let list = root["resources"]?.sequence else {
                problem(root.line, "resources", "expected a `resources:` list")
                continue
            }
            for (i, node) in list.enumerated() {
                let field = "resources[\(i)]"
                guard node.mapping != nil, let type = node["@type"]?.string else {
                    problem(node.line, field + ".@type", "each resource is a mapping with an @type")
                    continue
                }
                let text: String
                do { text = try node.json(omitting: ["@type"]) } catch {
                    problem(error.line, field, error.message)
                    continue
                }
                do {
                    switch type.split(separator: "/").last.map(String.init) {
                    case Envoy_Config_Listener_V3_Listener.protoMessageName:
                        out.listeners.append(try Envoy_Config_Listener_V3_Listener(jsonString: text, options: options))
                    case Envoy_Config_Cluster_V3_Cluster.protoMessageName:
                        out.clusters.append(try Envoy_Config_Cluster_V3_Cluster(jsonString: text, options: options))
                    case Envoy_Config_Route_V3_RouteConfiguration.protoMessageName:
                        out.routes.append(
                            try Envoy_Config_Route_V3_RouteConfiguration(jsonString: text, options: options))
                    case Envoy_Config_Endpoint_V3_ClusterLoadAssignment.protoMessageName:
                        out.endpoints.append(
                            try Envoy_Config_Endpoint_V3_ClusterLoadAssignment(jsonString: text, options: options))
                    default:
                        problem(
                            node.line, field + ".@type",
                            "'\(type)' is not a Listener, Cluster, RouteConfiguration or ClusterLoadAssignment (v3)")
                    }
                } catch {
                    problem(
                        node.line, field,
                        "not a valid \(type.split(separator: ".").last ?? "") for weir's subset of the Envoy API: \(error)"
                    )
                }
            }
        }
        if !problems.isEmpty { throw MeshError(problems: problems) }
        return out
    }
}

/// weir's config sources for the xDS cache: App Mesh manifests (compiled per node) and Envoy-native files (served to
/// every node), each read from a watched directory. A change that does not validate is refused as a whole and the
/// last good config stays served.
public final class ConfigSources: SnapshotSource {
    public let meshDirectory: String?
    public let envoyDirectory: String?
    let options: MeshCompiler.Options
    let cache: SnapshotCache
    let logger: Logger
    struct Good {
        var manifests: MeshManifests?
        var envoy: EnvoyResources?
        var lastError: String?
        var generation = 0
    }
    let good = Mutex(Good())
    let fileCache = ManifestReader.FileCache()
    let readCache = ConfigDirectory.ReadCache()
    let envoyReadCache = ConfigDirectory.ReadCache()
    let memo = ResourceMemo()
    let compileMemo = CompileMemo()

    public init(
        mesh: String?, envoy: String?, options: MeshCompiler.Options = MeshCompiler.Options(), cache: SnapshotCache,
        logger: Logger = Logger(label: "weir.xds.sources")
    ) {
        self.meshDirectory = mesh
        self.envoyDirectory = envoy
        self.options = options
        self.cache = cache
        self.logger = logger
    }

    /// The problem that made the last reload fail, if it did.
    public var lastError: String? { good.withLock { $0.lastError } }
    public var generation: Int { good.withLock { $0.generation } }

    /// Reads and validates both directories; on success publishes every known node's new snapshot.
    /// Returns the problems (nil when the new config is in force).
    @discardableResult
    public func reload() -> String? {
        var manifests: MeshManifests?
        var envoy: EnvoyResources?
        let clock = ContinuousClock()
        let started = clock.now
        do {
            if let meshDirectory {
                let files = try ConfigDirectory.files(meshDirectory, cache: readCache)
                manifests = try ManifestReader.read(files, cache: fileCache)
            }
            if let envoyDirectory {
                let files = try ConfigDirectory.files(
                    envoyDirectory, extensions: [".yaml", ".yml", ".json"], cache: envoyReadCache)
                envoy = try EnvoyResourceFiles.read(files)
            }
        } catch {
            return refuse(error.description)
        }
        // Compile every node we serve under the new config before anything is published: all or nothing.
        let read = clock.now
        var next: [String: Snapshot] = [:]
        var nodes = cache.interestingNodeIDs
        // One compiler for every node: its index of the manifests is built once.
        let compiler = manifests.map { Self.compiler($0, options: options, memo: compileMemo) }
        if let compiler { nodes.formUnion(compiler.nodeIDs) }
        // Nodes compile independently: spread them over the cores.
        let order = nodes.sorted()
        let results = Mutex([Result<Snapshot?, MeshError>?](repeating: nil, count: order.count))
        let e = envoy
        memo.beginGeneration()
        compileMemo.beginGeneration()
        let memo = self.memo
        DispatchQueue.concurrentPerform(iterations: order.count) { i in
            let r = Self.build(order[i], compiler: compiler, envoy: e, memo: memo)
            results.withLock { $0[i] = r }
        }
        for (node, r) in zip(order, results.withLock { $0 }) {
            switch r {
            case .success(let s?)?: next[node] = s
            case .failure(let e)?: return refuse("node \(node): \(e.description)")
            default: continue
            }
        }
        let compiled = clock.now
        // A generation is a config put in force that differs from the one before (versions are content hashes): a
        // reload that reads the same files again, after a touch or a refused edit taken back, is none.
        let changed =
            Set(cache.nodeIDs) != Set(next.keys)
            || next.contains { cache.snapshot(for: $0.key)?.version != $0.value.version }
        good.withLock { g in
            g.manifests = manifests
            g.envoy = envoy
            g.lastError = nil
            if changed || g.generation == 0 { g.generation += 1 }
        }
        cache.publish(next)
        logger.info(
            "config in force",
            metadata: [
                "nodes": "\(next.count)", "read_ms": "\((read - started).milliseconds)",
                "compile_ms": "\((compiled - read).milliseconds)",
                "publish_ms": "\((clock.now - compiled).milliseconds)",
            ])
        return nil
    }

    func refuse(_ problems: String) -> String {
        good.withLock { $0.lastError = problems }
        logger.error("config refused; the last good config stays served", metadata: ["problems": "\(problems)"])
        return problems
    }

    /// A node's snapshot under the given config, checked for consistency (nil: the config does not know the node).
    static func build(_ node: String, compiler: MeshCompiler?, envoy: EnvoyResources?, memo: ResourceMemo)
        -> Result<Snapshot?, MeshError>
    {
        var resources = EnvoyResources()
        var known = false
        if let compiler, let id = try? NodeIdentity.parse(node),
            compiler.virtualNode(for: id) != nil || compiler.manifests.virtualGateway(for: id) != nil
        {
            do { resources = try compiler.compile(nodeID: node) } catch { return .failure(error) }
            known = true
        }
        if let envoy {
            resources.listeners += envoy.listeners
            resources.clusters += envoy.clusters
            resources.routes += envoy.routes
            resources.endpoints += envoy.endpoints
            // A file's resources are serialized as they are, not taken from a compiled one's encoding of the same name.
            for r in envoy.routes { resources.routeEncodings[r.name] = nil }
            for l in envoy.listeners { resources.encodings.listeners[l.name] = nil }
            for c in envoy.clusters { resources.encodings.clusters[c.name] = nil }
            for e in envoy.endpoints { resources.encodings.endpoints[e.clusterName] = nil }
            known = true
        }
        guard known else { return .success(nil) }
        do {
            let (snapshot, problems) = try memo.snapshot(node: node, resources)
            guard problems.isEmpty else {
                return .failure(
                    MeshError(problems: [
                        MeshProblem(
                            location: SourceLocation(file: "(node)", line: 0, field: node),
                            message: problems.joined(separator: "; "))
                    ]))
            }
            return .success(snapshot)
        } catch {
            return .failure(
                MeshError(problems: [
                    MeshProblem(
                        location: SourceLocation(file: "(node)", line: 0, field: node),
                        message: "cannot encode: \(error)")
                ]))
        }
    }

    static func compiler(_ manifests: MeshManifests, options: MeshCompiler.Options, memo: CompileMemo) -> MeshCompiler {
        var c = MeshCompiler(manifests, options: options)
        c.memo = memo
        return c
    }

    public func resources(for nodeID: String) -> Snapshot? {
        let (m, e) = good.withLock { ($0.manifests, $0.envoy) }
        guard
            case .success(let s?) = Self.build(
                nodeID, compiler: m.map { Self.compiler($0, options: options, memo: compileMemo) }, envoy: e,
                memo: memo)
        else { return nil }
        return s
    }

    /// Watches both directories (and their parents, so that a directory removed and made again is seen) with
    /// inotify, and reloads on change, 10 ms after the first event so that an editor's burst of writes is read once.
    /// The watcher runs on its own thread until stopped.
    public func watch() throws -> ConfigWatcher {
        let roots = [meshDirectory, envoyDirectory].compactMap { $0 }
        return try ConfigWatcher(roots: roots) { [self] in self.reload() }
    }
}

/// A thread that waits for inotify events on some directory trees and calls `onChange`; `stop()` ends it.
public final class ConfigWatcher: Sendable {
    let inotify: Inotify
    let wake: FileDescriptor
    let thread = Mutex<OSThread?>(nil)
    let roots: [String]

    init(roots: [String], onChange: @escaping @Sendable () -> Void) throws {
        inotify = try Inotify()
        wake = try FileDescriptor.eventCounter()
        self.roots = roots
        addWatches()
        let t = try OSThread.start(name: "weir-xds-watch") { [self] in
            // Bounded by stop(): each pass waits for an event or the wake-up.
            while true {
                guard let (changed, stopping) = try? pollReadable(inotify.descriptor, wake, timeout: -1) else { return }
                if stopping { return }
                guard changed else { continue }
                _ = inotify.drain()
                // Let an editor or `kubectl cp` finish its burst of writes (10 ms), then read everything once;
                // a stop meanwhile ends the wait.
                if (try? wake.wait(timeout: 10)) == true { return }
                _ = inotify.drain()
                addWatches()  // new subdirectories, or a root made again
                onChange()
            }
        }
        thread.withLock { $0 = t }
    }

    /// Watches each root's tree, and each root's parent (for the root itself coming and going).
    func addWatches() {
        for root in roots {
            let parent = (root as NSString).deletingLastPathComponent
            _ = try? inotify.watch(
                parent.isEmpty ? "/" : parent,
                mask: UInt32(IN_CREATE | IN_MOVED_TO | IN_DELETE | IN_MOVED_FROM | IN_ATTRIB))
            addTree(root, depth: 0)
        }
    }

    func addTree(_ dir: String, depth: Int) {
        guard depth <= ConfigDirectory.Walk.maxDepth, (try? inotify.watch(dir)) != nil,
            let names = try? FileSystem.entries(dir)
        else { return }
        for name in names where !name.hasPrefix(".") {
            let child = dir.hasSuffix("/") ? dir + name : dir + "/" + name
            if (try? FileStatus.of(child))?.isDirectory == true { addTree(child, depth: depth + 1) }
        }
    }

    /// Ends the thread (after a reload in progress) and waits for it.
    public func stop() {
        wake.signalEvent()
        thread.withLock { t in
            let out = t
            t = nil
            return out
        }?.join()
    }
}

extension Duration {
    var milliseconds: Int64 { components.seconds * 1000 + components.attoseconds / 1_000_000_000_000_000 }
}
