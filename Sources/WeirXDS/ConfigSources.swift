import EnvoyAPI
import Dispatch
import Foundation
import Logging
import SwiftProtobuf
import Synchronization
import WeirMesh
#if canImport(Glibc)
import Glibc
#endif

/// The files of a config directory: `.yaml`, `.yml` (and `.json` when asked), read recursively, sorted. Hidden
/// entries (a Kubernetes ConfigMap's `..data`) are skipped; symbolic links are followed. Everything that cannot be read
/// is an error that names it: a directory or file without permission, a file past the size limit, a path that is not
/// a directory or a regular file. Nothing is skipped silently, so no object vanishes from the mesh unnoticed.
public enum ConfigDirectory {
    public static func files(_ directory: String, extensions: [String] = [".yaml", ".yml"],
                             limits: YAMLLimits = .default) throws(MeshError) -> [(path: String, text: String)] {
        var walk = Walk(extensions: extensions, limits: limits)
        var st = stat()
        guard stat(directory, &st) == 0 else {
            throw MeshError(problems: [Walk.problem(directory, "cannot be read: \(String(cString: strerror(errno)))")])
        }
        guard (st.st_mode & S_IFMT) == S_IFDIR else { throw MeshError(problems: [Walk.problem(directory, "not a directory")]) }
        walk.directory(directory, depth: 0, visited: [])
        if !walk.problems.isEmpty { throw MeshError(problems: walk.problems) }
        return walk.files.sorted { $0.path < $1.path }
    }

    struct Walk {
        let extensions: [String]
        let limits: YAMLLimits
        var files: [(path: String, text: String)] = []
        var problems: [MeshProblem] = []
        /// Directories nested deeper than this (through links, say) are refused rather than followed.
        static let maxDepth = 32

        static func problem(_ path: String, _ message: String) -> MeshProblem {
            MeshProblem(location: SourceLocation(file: path, line: 0, field: "(file)"), message: message)
        }

        struct Identity: Hashable { var device: UInt64; var inode: UInt64 }

        mutating func directory(_ path: String, depth: Int, visited: Set<Identity>) {
            guard depth <= Self.maxDepth else { problems.append(Self.problem(path, "directories nest more than \(Self.maxDepth) deep")); return }
            var st = stat()
            guard stat(path, &st) == 0 else { problems.append(Self.problem(path, "cannot be read: \(String(cString: strerror(errno)))")); return }
            let id = Identity(device: UInt64(st.st_dev), inode: UInt64(st.st_ino))
            guard !visited.contains(id) else { problems.append(Self.problem(path, "a symbolic link loops back to a directory above it")); return }
            guard let dir = opendir(path) else {
                problems.append(Self.problem(path, "directory cannot be read: \(String(cString: strerror(errno)))")); return
            }
            var names: [String] = []
            while true {
                errno = 0
                guard let entry = readdir(dir) else {
                    if errno != 0 { problems.append(Self.problem(path, "directory cannot be listed: \(String(cString: strerror(errno)))")) }
                    break
                }
                let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                    String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
                }
                if !name.hasPrefix(".") { names.append(name) }
            }
            closedir(dir)
            for name in names.sorted() {
                let child = path.hasSuffix("/") ? path + name : path + "/" + name
                var cst = stat()
                guard stat(child, &cst) == 0 else {
                    // A dangling link that looks like a manifest is a mistake; anything else is not ours.
                    if extensions.contains(where: { name.hasSuffix($0) }) {
                        problems.append(Self.problem(child, "cannot be read: \(String(cString: strerror(errno)))"))
                    }
                    continue
                }
                switch cst.st_mode & S_IFMT {
                case S_IFDIR:
                    directory(child, depth: depth + 1, visited: visited.union([id]))
                case S_IFREG where extensions.contains(where: { name.hasSuffix($0) }):
                    file(child, size: Int(cst.st_size))
                default:
                    if extensions.contains(where: { name.hasSuffix($0) }) {
                        problems.append(Self.problem(child, "not a regular file"))
                    }
                }
            }
        }

        mutating func file(_ path: String, size: Int) {
            guard size <= limits.maxBytes else {
                problems.append(Self.problem(path, "the file is \(size) bytes; weir reads files of at most \(limits.maxBytes) bytes"))
                return
            }
            let fd = open(path, O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else { problems.append(Self.problem(path, "cannot be read: \(String(cString: strerror(errno)))")); return }
            defer { close(fd) }
            // Read at most one byte past the limit: a file that grew since stat is refused, not read whole.
            var bytes = [UInt8](repeating: 0, count: min(size, limits.maxBytes) + 1)
            var filled = 0
            while filled < bytes.count {
                let n = bytes.withUnsafeMutableBytes { read(fd, $0.baseAddress! + filled, $0.count - filled) }
                if n < 0 {
                    if errno == EINTR { continue }
                    problems.append(Self.problem(path, "cannot be read: \(String(cString: strerror(errno)))")); return
                }
                if n == 0 { break }
                filled += n
            }
            guard filled <= limits.maxBytes else {
                problems.append(Self.problem(path, "the file is over \(limits.maxBytes) bytes; weir reads files of at most \(limits.maxBytes) bytes"))
                return
            }
            files.append((path, String(decoding: bytes[..<filled], as: UTF8.self)))
        }
    }
}

/// Envoy resources written by hand, in Envoy's own YAML/JSON shape: files with a `resources:` list whose entries
/// carry `@type` (as Envoy's filesystem subscriptions read them), for the subset of the API weir knows.
public enum EnvoyResourceFiles {
    public static func read(_ files: [(path: String, text: String)], limits: YAMLLimits = .default) throws(MeshError) -> EnvoyResources {
        EnvoyTypes.register()
        var out = EnvoyResources()
        var problems: [MeshProblem] = []
        var options = JSONDecodingOptions()
        options.ignoreUnknownFields = false
        for (path, text) in files {
            func problem(_ line: Int, _ field: String, _ message: String) {
                problems.append(MeshProblem(location: SourceLocation(file: path, line: line, field: field), message: message))
            }
            let documents: [YAMLNode]
            do { documents = try YAMLNode.documents(text, limits: limits) } catch {
                problem(error.line, "(yaml)", error.message); continue
            }
            guard documents.count == 1, let root = documents.first else {
                problem(documents.dropFirst().first?.line ?? 1, "(yaml)", "expected one document with a `resources:` list, found \(documents.count)"); continue
            }
            guard let list = root["resources"]?.sequence else { problem(root.line, "resources", "expected a `resources:` list"); continue }
            for (i, node) in list.enumerated() {
                let field = "resources[\(i)]"
                guard node.mapping != nil, let type = node["@type"]?.string else {
                    problem(node.line, field + ".@type", "each resource is a mapping with an @type"); continue
                }
                let text: String
                do { text = try node.json(omitting: ["@type"]) } catch { problem(error.line, field, error.message); continue }
                do {
                    switch type.split(separator: "/").last.map(String.init) {
                    case Envoy_Config_Listener_V3_Listener.protoMessageName:
                        out.listeners.append(try Envoy_Config_Listener_V3_Listener(jsonString: text, options: options))
                    case Envoy_Config_Cluster_V3_Cluster.protoMessageName:
                        out.clusters.append(try Envoy_Config_Cluster_V3_Cluster(jsonString: text, options: options))
                    case Envoy_Config_Route_V3_RouteConfiguration.protoMessageName:
                        out.routes.append(try Envoy_Config_Route_V3_RouteConfiguration(jsonString: text, options: options))
                    case Envoy_Config_Endpoint_V3_ClusterLoadAssignment.protoMessageName:
                        out.endpoints.append(try Envoy_Config_Endpoint_V3_ClusterLoadAssignment(jsonString: text, options: options))
                    default:
                        problem(node.line, field + ".@type", "'\(type)' is not a Listener, Cluster, RouteConfiguration or ClusterLoadAssignment (v3)")
                    }
                } catch {
                    problem(node.line, field, "not a valid \(type.split(separator: ".").last ?? "") for weir's subset of the Envoy API: \(error)")
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
    let memo = ResourceMemo()
    let compileMemo = CompileMemo()

    public init(mesh: String?, envoy: String?, options: MeshCompiler.Options = MeshCompiler.Options(), cache: SnapshotCache,
                logger: Logger = Logger(label: "weir.xds.sources")) {
        self.meshDirectory = mesh; self.envoyDirectory = envoy; self.options = options; self.cache = cache; self.logger = logger
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
                let files = try ConfigDirectory.files(meshDirectory)
                manifests = try ManifestReader.read(files, cache: fileCache)
            }
            if let envoyDirectory {
                let files = try ConfigDirectory.files(envoyDirectory, extensions: [".yaml", ".yml", ".json"])
                envoy = try EnvoyResourceFiles.read(files)
            }
        } catch {
            return refuse((error as? MeshError)?.description ?? "\(error)")
        }
        // Compile every node we serve under the new config before anything is published: all or nothing.
        let read = clock.now
        var next: [String: Snapshot] = [:]
        var nodes = cache.interestingNodeIDs
        if let manifests { nodes.formUnion(MeshCompiler(manifests, options: options).nodeIDs) }
        // Nodes compile independently: spread them over the cores.
        let order = nodes.sorted()
        let results = Mutex([Result<Snapshot?, MeshError>?](repeating: nil, count: order.count))
        let options = self.options
        let (m, e) = (manifests, envoy)
        memo.beginGeneration()
        compileMemo.beginGeneration()
        let (memo, compileMemo) = (self.memo, self.compileMemo)
        DispatchQueue.concurrentPerform(iterations: order.count) { i in
            let r = Self.build(order[i], manifests: m, envoy: e, options: options, memo: memo, compileMemo: compileMemo)
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
        good.withLock { $0.manifests = manifests; $0.envoy = envoy; $0.lastError = nil; $0.generation += 1 }
        cache.publish(next)
        logger.info("config in force", metadata: ["nodes": "\(next.count)", "read_ms": "\((read - started).milliseconds)",
                                                   "compile_ms": "\((compiled - read).milliseconds)", "publish_ms": "\((clock.now - compiled).milliseconds)"])
        return nil
    }

    func refuse(_ problems: String) -> String {
        good.withLock { $0.lastError = problems }
        logger.error("config refused; the last good config stays served", metadata: ["problems": "\(problems)"])
        return problems
    }

    /// A node's snapshot under the given config, checked for consistency (nil: the config does not know the node).
    static func build(_ node: String, manifests: MeshManifests?, envoy: EnvoyResources?, options: MeshCompiler.Options, memo: ResourceMemo,
                      compileMemo: CompileMemo) -> Result<Snapshot?, MeshError> {
        var resources = EnvoyResources()
        var known = false
        if let manifests, let id = try? NodeIdentity.parse(node), manifests.virtualNode(for: id) != nil || manifests.virtualGateway(for: id) != nil {
            var compiler = MeshCompiler(manifests, options: options)
            compiler.memo = compileMemo
            do { resources = try compiler.compile(nodeID: node) } catch { return .failure(error) }
            known = true
        }
        if let envoy {
            resources.listeners += envoy.listeners; resources.clusters += envoy.clusters
            resources.routes += envoy.routes; resources.endpoints += envoy.endpoints
            known = true
        }
        guard known else { return .success(nil) }
        do {
            let (snapshot, problems) = try memo.snapshot(node: node, resources)
            guard problems.isEmpty else {
                return .failure(MeshError(problems: [MeshProblem(location: SourceLocation(file: "(node)", line: 0, field: node), message: problems.joined(separator: "; "))]))
            }
            return .success(snapshot)
        } catch {
            return .failure(MeshError(problems: [MeshProblem(location: SourceLocation(file: "(node)", line: 0, field: node), message: "cannot encode: \(error)")]))
        }
    }

    public func resources(for nodeID: String) -> Snapshot? {
        let (m, e) = good.withLock { ($0.manifests, $0.envoy) }
        guard case .success(let s?) = Self.build(nodeID, manifests: m, envoy: e, options: options, memo: memo, compileMemo: compileMemo) else { return nil }
        return s
    }

    /// Watches both directories with inotify and reloads on change (debounced by 10 ms); runs until the process ends.
    public func watch() throws {
        let fd = inotify_init1(Int32(IN_CLOEXEC))
        guard fd >= 0 else { throw WatchFailure(description: "inotify_init1: \(String(cString: strerror(errno)))") }
        let mask = UInt32(IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_DELETE | IN_CREATE | IN_ATTRIB)
        @Sendable func addTree(_ root: String) {
            _ = inotify_add_watch(fd, root, mask)
            for rel in FileManager.default.enumerator(atPath: root)?.compactMap({ $0 as? String }) ?? [] {
                var d: ObjCBool = false
                let p = root + "/" + rel
                if FileManager.default.fileExists(atPath: p, isDirectory: &d), d.boolValue { _ = inotify_add_watch(fd, p, mask) }
            }
        }
        let roots = [meshDirectory, envoyDirectory].compactMap { $0 }
        for r in roots { addTree(r) }
        let thread = Thread { [self] in
            var buffer = [UInt8](repeating: 0, count: 16384)
            while true {
                let n = read(fd, &buffer, buffer.count)
                if n < 0 { if errno == EINTR { continue }; return }
                // Let an editor or `kubectl cp` finish its burst of writes, then read everything once.
                usleep(10_000)
                var pending = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                while poll(&pending, 1, 0) > 0 { _ = read(fd, &buffer, buffer.count) }
                for r in roots { addTree(r) } // new subdirectories
                self.reload()
            }
        }
        thread.name = "weir-xds-watch"
        thread.start()
    }
}

/// The directories cannot be watched.
public struct WatchFailure: Error, CustomStringConvertible {
    public var description: String
}

extension Duration {
    var milliseconds: Int64 { components.seconds * 1000 + components.attoseconds / 1_000_000_000_000_000 }
}
