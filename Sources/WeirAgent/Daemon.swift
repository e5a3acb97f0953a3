import Foundation
import Logging
import ServiceLifecycle
import Synchronization
import WeirCapture
import WeirForwarder
import WeirMesh
import WeirNetfilter
import WeirNetns
import WeirSystem
import WeirXDS

/// The node agent: one process that enrolls the node's pods (from the netns directory, the config file and the
/// enrollment API), keeps their rules true (nftables notifications and a periodic check), and serves each pod its
/// forwarder listeners or its xDS endpoint inside the pod's own namespace.
public final class Daemon: Sendable {
    /// The configuration it runs with.
    public let config: DaemonConfig
    /// The xDS cache and server (node-wide socket and the pods' endpoints).
    public let xds: XDSServer
    /// The compiled snapshots, per node.
    public let cache: SnapshotCache
    /// The App Mesh manifests, when `meshDirectory` exists.
    public let sources: ConfigSources?
    /// The shared forwarder that serves forwarder pods.
    public let forwarder: Forwarder
    /// What is held per pod.
    public let host: PodHost
    /// The pods and their rules.
    public let reconciler: PodReconciler
    /// Where the pods are kept across restarts.
    public let state: PodStateFile
    let watcher: RulesetWatcher
    let logger: Logger
    /// Set once the pods of the state file, the config and the netns directory have been taken in.
    let startedUp = Atomic<Bool>(false)
    let directoryPods = Mutex<DirectoryScan>(DirectoryScan())
    let applyLatency = LatencyHistogram()

    struct DirectoryScan {
        /// Names enrolled from the directory, with the namespace each had.
        var known: [String: NamespaceIdentity] = [:]
        /// Names that were not (yet) a namespace: `ip netns add` creates the file, then mounts the namespace on it.
        var retries: [String: Int] = [:]
    }

    /// Builds the daemon: nothing listens and no pod is touched until `run`. Under systemd, `store` keeps the pods'
    /// descriptors across restarts and holds what the previous process left.
    public init(config: DaemonConfig, store: PodDescriptorStore = .none, logger: Logger = Logger(label: "weir.daemon"))
        throws
    {
        self.config = config
        self.logger = logger
        let cache = SnapshotCache(
            stateDirectory: URL(fileURLWithPath: config.stateDirectory + "/snapshots"), logger: logger)
        self.cache = cache
        var sources: ConfigSources?
        if let st = try? FileStatus.of(config.meshDirectory), st.isDirectory {
            let s = ConfigSources(
                mesh: config.meshDirectory, envoy: nil, options: MeshCompiler.Options(), cache: cache, logger: logger)
            cache.setSource(s)
            sources = s
        }
        self.sources = sources
        xds = XDSServer(listen: .unix(path: config.runtimeDirectory + "/xds.sock"), cache: cache, logger: logger)
        var fc = ForwarderConfig()
        fc.workers = config.workers ?? max(1, ProcessInfo.processInfo.activeProcessorCount)
        forwarder = Forwarder(config: fc, logger: logger)
        let reconcilerRef = Mutex<PodReconciler?>(nil)
        watcher = try RulesetWatcher(logger: logger) { id in
            guard let r = reconcilerRef.withLock({ $0 }) else { return }
            Task { await r.send(.changed(id)) }
        }
        host = PodHost(
            xds: xds, forwarder: forwarder, watcher: watcher, endpoints: config.podXDS, store: store, logger: logger)
        state = PodStateFile(directory: config.stateDirectory, logger: logger)
        let host = self.host
        let state = self.state
        let latency = applyLatency
        reconciler = PodReconciler(
            registry: PodRegistry(checkInterval: UInt64(config.checkIntervalSeconds) * PodRegistry.second),
            backend: { e in TimedCapture(inner: host.capture(e), histogram: latency) }, serving: host,
            onPersist: { state.write($0) }, logger: logger)
        reconcilerRef.withLock { $0 = reconciler }
    }

    /// Whether every enrolled pod is protected, and start-up is done.
    public func isReady() async -> Bool {
        guard startedUp.load(ordering: .relaxed) else { return false }
        return await reconciler.registry.allProtected
    }

    // MARK: start and stop

    /// Starts serving: re-adopts the pods of the state file, enrolls the config's pods and the netns directory's.
    /// Pods that cannot be protected are shown degraded and retried; the daemon itself fails only if it cannot run.
    public func start() async throws {
        try prepareDirectories()
        if let sources, let problems = sources.reload() {
            logger.error(
                "mesh manifests refused; serving the last good snapshots", metadata: ["problems": "\(problems)"])
        }
        try forwarder.startShared()
        // Pods this daemon held before: adopted, their right rules left as they are.
        let previous: [Enrollment]
        do { previous = try state.read() } catch {
            throw DaemonError(message: "\(error); move it away to start with no pods")
        }
        var restored: [Enrollment] = []
        for e in previous {
            let stored = host.storedHandle(e.identity, path: e.path)
            guard let atPath = try? NamespaceHandle.identity(of: e.path), atPath == e.identity,
                let handle = stored ?? (try? NamespaceHandle.open(e.path))
            else {
                // Gone, or another namespace at the path now: the pod's namespace went, and its rules with it.
                logger.notice("a pod of the state file is gone", metadata: ["netns": "\(e.path)"])
                continue
            }
            host.keep(handle, stored: stored != nil)
            restored.append(e)
        }
        if !restored.isEmpty { await reconciler.send(.restored(restored)) }
        // Static pods in the netns directory are the scan's (so one whose namespace appears later is enrolled then);
        // those elsewhere (a /proc path, another directory) are enrolled here.
        for pod in config.pods where staticName(pod) == nil {
            let path = pod.netns
            do {
                try await enroll(path: path, labels: pod.labels, request: PodRequest(), source: .config)
            } catch {
                logger.error(
                    "a pod of the config file is not protected", metadata: ["netns": "\(path)", "error": "\(error)"])
            }
        }
        await scanDirectory()
        // What the previous process stored for pods that are gone (or whose settings changed) is let go.
        let released = host.store.releaseUnclaimed()
        if released > 0 {
            logger.notice("stored descriptors no pod took were closed", metadata: ["descriptors": "\(released)"])
        }
        startedUp.store(true, ordering: .relaxed)
    }

    /// Makes the runtime and state directories (before any service binds its socket there).
    public func prepareDirectories() throws {
        for dir in [config.runtimeDirectory, config.stateDirectory] {
            do { try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true) } catch {
                throw DaemonError(message: "cannot make \(dir): \(error.localizedDescription)")
            }
        }
    }

    /// Stops: the forwarder drains within its bound, the pods' endpoints close; rules stay in place, so sidecar pods
    /// keep working (Envoy keeps its config) and come back to this daemon's next start.
    ///
    /// Under systemd with the descriptor store, the forwarder hands its relayed connections to the next process
    /// instead of draining them: each goes into the store once no byte of it is left in weir, and the pods' listeners
    /// stay stored (the kernel queues new connections while no process accepts).
    public func stop() async {
        if host.store.enabled {
            let host = self.host
            let timeout = Duration.milliseconds(forwarder.config.drainTimeoutMilliseconds)
            let closed = await forwarder.handOff(timeout: timeout) { host.keep($0) }
            if closed > 0 {
                logger.warning(
                    "relayed connections that could not be handed off were closed", metadata: ["count": "\(closed)"])
            }
        } else {
            await forwarder.drain()
        }
        watcher.stop()
        await state.flush()
        // systemd must have read every FDSTORE before this process exits.
        host.store.barrier()
    }

    // MARK: enrollment

    /// Enrolls the namespace at `path`: returns once its rules and listeners are in place, or throws why not (bad
    /// input changes nothing).
    @discardableResult
    public func enroll(path: String, labels: [String: String], request: PodRequest, source: EnrollmentSource)
        async throws -> Enrollment
    {
        guard path.hasPrefix("/") else { throw EnrollmentRefused(message: "\(path): give an absolute path or a name") }
        let handle: NamespaceHandle
        do { handle = try NamespaceHandle.open(path) } catch { throw EnrollmentRefused(message: error.description) }
        let name = Enrollment.name(ofPath: path)
        let settings: PodSettings
        do { settings = try config.settings(name: name, labels: labels, request: request) } catch {
            throw EnrollmentRefused(message: "\(path): \(error)")
        }
        let e = Enrollment(path: path, identity: handle.identity, source: source, settings: settings)
        host.keep(handle)
        do { try await reconciler.enroll(e) } catch {
            throw EnrollmentFailed(message: error.description)
        }
        return e
    }

    /// Unenrolls the pod named `netns` (a name or a path): its rules removed, everything held let go.
    public func unenroll(_ netns: String) async throws {
        guard let record = await pod(named: netns) else {
            throw EnrollmentRefused(message: "no pod \(netns) is enrolled")
        }
        do { try await reconciler.unenroll(record.enrollment.identity) } catch {
            throw EnrollmentFailed(message: error.description)
        }
    }

    /// The pod with this name, path or namespace inode.
    public func pod(named key: String) async -> PodRecord? {
        let pods = await reconciler.registry.pods.values
        return pods.first {
            $0.enrollment.name == key || $0.enrollment.path == key || "\($0.enrollment.identity.inode)" == key
        }
    }

    // MARK: the netns directory

    /// Takes in the directory as it is now: new selected namespaces enrolled, removed ones released.
    public func scanDirectory() async {
        let dir = config.netnsDirectory
        let names = ((try? FileSystem.entries(dir)) ?? []).sorted()
        let present = Set(names)
        // A namespace whose path is gone is released, whichever source enrolled it.
        for record in await reconciler.registry.pods.values where record.phase != .releasing {
            let path = record.enrollment.path
            if path.hasPrefix(dir + "/"), !present.contains(String(path.dropFirst(dir.count + 1))) {
                await reconciler.send(.vanished(record.enrollment.identity))
            }
        }
        var statics: [String: StaticPod] = [:]
        for pod in config.pods { if let n = staticName(pod) { statics[n] = pod } }
        let selected = names.filter { n in statics[n] != nil || config.select.contains { Glob.matches($0, n) } }
        let enrolled = Set(await reconciler.registry.pods.keys)
        let known = directoryPods.withLock { s -> [String: NamespaceIdentity] in
            s.known = s.known.filter { present.contains($0.key) }
            s.retries = s.retries.filter { present.contains($0.key) }
            return s.known
        }
        await withTaskGroup(of: Void.self) { group in
            for name in selected {
                let path = dir + "/" + name
                let identity = try? NamespaceHandle.identity(of: path)
                if let identity, known[name] == identity { continue }
                guard let identity else {
                    directoryPods.withLock { $0.retries[name, default: 0] += 1 }
                    continue
                }
                // Enrolled already (by the API, or re-adopted from the state file): its settings stay.
                if enrolled.contains(identity) {
                    directoryPods.withLock { $0.known[name] = identity }
                    continue
                }
                let source: EnrollmentSource = statics[name] != nil ? .config : .netnsDirectory
                let labels = statics[name]?.labels ?? [:]
                group.addTask { [self] in
                    do {
                        let e = try await enroll(path: path, labels: labels, request: PodRequest(), source: source)
                        directoryPods.withLock {
                            $0.known[name] = e.identity
                            $0.retries[name] = nil
                        }
                    } catch {
                        // Degraded pods stay enrolled and are retried by the registry; a refusal is logged once.
                        directoryPods.withLock { $0.known[name] = identity }
                        logger.error(
                            "a namespace of the netns directory is not protected",
                            metadata: ["netns": "\(path)", "error": "\(error)"])
                    }
                }
            }
        }
    }

    /// The name in the netns directory of a static pod, or nil when it is a path elsewhere.
    func staticName(_ pod: StaticPod) -> String? {
        if !pod.netns.hasPrefix("/") { return pod.netns }
        let prefix = config.netnsDirectory + "/"
        guard pod.netns.hasPrefix(prefix) else { return nil }
        let rest = String(pod.netns.dropFirst(prefix.count))
        return rest.contains("/") ? nil : rest
    }

    /// Whether a name in the directory is waiting to become a namespace (scan again soon).
    var directoryRetriesPending: Bool {
        directoryPods.withLock { s in s.retries.values.contains { $0 < 100 } }
    }

    /// Releases pods whose namespace is no longer at its path (or another one is), whatever enrolled them.
    func checkPaths() async {
        for record in await reconciler.registry.pods.values where record.phase != .releasing {
            let e = record.enrollment
            if (try? NamespaceHandle.identity(of: e.path)) != e.identity {
                logger.notice("a pod's namespace is gone; releasing it", metadata: ["netns": "\(e.path)"])
                await reconciler.send(.vanished(e.identity))
            }
        }
    }
}

/// The daemon cannot run.
public struct DaemonError: Error, CustomStringConvertible {
    /// What stops it.
    public var message: String
    /// `message`.
    public var description: String { message }
}

/// An enrollment refused as bad input (nothing was changed).
public struct EnrollmentRefused: Error, CustomStringConvertible {
    /// Why.
    public var message: String
    /// `message`.
    public var description: String { message }
}

/// An enrollment that could not be carried out (the pod is left as it was).
public struct EnrollmentFailed: Error, CustomStringConvertible {
    /// Why.
    public var message: String
    /// `message`.
    public var description: String { message }
}

/// A capture backend whose installs are timed into the rule-apply histogram.
struct TimedCapture: CaptureBackend {
    let inner: any CaptureBackend
    let histogram: LatencyHistogram
    func install(_ plan: RedirectPlan) throws {
        let start = DispatchTime.now().uptimeNanoseconds
        defer { histogram.record(DispatchTime.now().uptimeNanoseconds - start) }
        try inner.install(plan)
    }
    func clean() throws -> Bool { try inner.clean() }
    func observe() throws -> CheckInput { try inner.observe() }
}

/// A Prometheus histogram of durations, with fixed buckets in seconds.
final class LatencyHistogram: Sendable {
    static let bounds: [Double] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5]
    let state = Mutex<(counts: [Int], sum: Double, count: Int)>((Array(repeating: 0, count: 12), 0, 0))

    func record(_ nanoseconds: UInt64) {
        let s = Double(nanoseconds) / 1e9
        state.withLock { st in
            for (i, b) in Self.bounds.enumerated() where s <= b { st.counts[i] += 1 }
            st.sum += s
            st.count += 1
        }
    }

    /// The histogram as Prometheus text under `name`.
    func render(_ name: String, help: String) -> String {
        let st = state.withLock { $0 }
        var out = "# HELP \(name) \(help)\n# TYPE \(name) histogram\n"
        for (i, b) in Self.bounds.enumerated() { out += "\(name)_bucket{le=\"\(b)\"} \(st.counts[i])\n" }
        out += "\(name)_bucket{le=\"+Inf\"} \(st.count)\n\(name)_sum \(st.sum)\n\(name)_count \(st.count)\n"
        return out
    }
}
