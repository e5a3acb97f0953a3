import EnvoyAPI
import Foundation
import Logging
import NIOHTTP1
import Prometheus
import ServiceLifecycle
import SwiftProtobuf
import Synchronization
import WeirCapture
import WeirMesh
import WeirNetns
import WeirSystem
import WeirXDS

#if canImport(Glibc)
    import Glibc
#endif

/// The daemon as a service: starts it (state file, config pods, netns directory), watches the directory, ticks the
/// registry (back-offs, the periodic check, paths that vanished), and at shutdown drains and leaves the rules.
public struct DaemonService: Service {
    /// The daemon it runs.
    public let daemon: Daemon
    let notifier: SystemdNotifier?
    let onStarted: @Sendable () -> Void

    /// Runs `daemon`; `onStarted` once its start-up pods are taken in. Under systemd (`notifier`), it says
    /// `READY=1` once every pod is protected, keeps a `STATUS=` line current, pings the watchdog from the loop that
    /// ticks the pods (a stuck daemon stops pinging), and says `STOPPING=1` at shutdown.
    public init(daemon: Daemon, notifier: SystemdNotifier? = nil, onStarted: @escaping @Sendable () -> Void = {}) {
        self.daemon = daemon
        self.notifier = notifier
        self.onStarted = onStarted
    }

    /// How long start-up waits for every pod to be protected before it says READY=1 anyway, with the pods that
    /// are degraded in its status (longer, and systemd would kill the agent that protects all the others).
    public static let readyDeadline: UInt64 = 60 * PodRegistry.second

    public func run() async throws {
        let daemon = self.daemon
        try await daemon.start()
        let directory = try DirectoryWatch(path: daemon.config.netnsDirectory, logger: daemon.logger) {
            Task { await daemon.scanDirectory() }
        }
        onStarted()
        let notifier = self.notifier
        let started = PodReconciler.monotonicNanoseconds()
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                var ticks = 0
                var ready = false
                var lastStatus = ""
                var lastPing: UInt64 = 0
                // Ends when the group is cancelled at shutdown.
                while !Task.isCancelled {
                    ticks += 1
                    await daemon.reconciler.tick()
                    if daemon.directoryRetriesPending { await daemon.scanDirectory() }
                    if ticks % 10 == 0 { await daemon.checkPaths() }
                    if let notifier {
                        let now = PodReconciler.monotonicNanoseconds()
                        let registry = await daemon.reconciler.registry
                        let status = Self.status(registry, sidecars: daemon.xds.service.status.count)
                        if !ready
                            && (registry.allProtected
                                || (now - started > Self.readyDeadline
                                    && !registry.pods.values.contains { $0.phase == .enrolling }))
                        {
                            ready = true
                            notifier.send("READY=1\nSTATUS=\(status)")
                            lastStatus = status
                        } else if status != lastStatus {
                            notifier.send("STATUS=\(status)")
                            lastStatus = status
                        }
                        // Pinged from this loop: if the pods' actor or this loop is stuck, systemd hears nothing.
                        if let interval = notifier.watchdogNanoseconds, now - lastPing >= interval / 4 {
                            notifier.send("WATCHDOG=1")
                            lastPing = now
                        }
                    }
                    try? await Task.sleep(for: .milliseconds(200))
                }
            }
            try? await gracefulShutdown()
            notifier?.send("STOPPING=1\nSTATUS=stopping: draining the forwarder; pods keep their rules")
            group.cancelAll()
        }
        directory.stop()
        await daemon.stop()
    }
}

extension DaemonService {
    /// The line `systemctl status` shows: pods by phase, repairs, connected sidecar streams.
    static func status(_ registry: PodRegistry, sidecars: Int) -> String {
        let phases = Dictionary(grouping: registry.pods.values, by: \.phase.name).mapValues(\.count)
        let parts = PodPhase.names.compactMap { p in phases[p].map { "\($0) \(p)" } }
        let repairs = registry.pods.values.map(\.repairs).reduce(0, +)
        return "\(registry.pods.count) pods\(parts.isEmpty ? "" : " (" + parts.joined(separator: ", ") + ")"); "
            + "\(repairs) repairs; \(sidecars) sidecar streams"
    }
}

/// Watches the netns directory with inotify, on a thread of its own; each burst of events calls `onChange`.
final class DirectoryWatch: Sendable {
    let stopEvent: SharedDescriptor
    let thread = Mutex<OSThread?>(nil)

    init(path: String, logger: Logger, onChange: @escaping @Sendable () -> Void) throws {
        // `ip netns add` makes the directory too; making it first lets the watch start before the first pod.
        try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        stopEvent = SharedDescriptor(try FileDescriptor.eventCounter())
        let stop = stopEvent
        let inotify = try Inotify()
        try inotify.watch(path, mask: UInt32(IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO))
        let box = InotifyBox(inotify)
        let t = try OSThread.start(name: "weir-netns-watch") {
            // Until stopped: each wake-up is an event or the stop request.
            while true {
                guard let ready = try? pollReadable(box.inotify.descriptor, stop.descriptor, timeout: -1) else {
                    logger.error("the netns directory watch stopped (poll failed)")
                    return
                }
                if ready.second { return }
                if ready.first, box.inotify.drain() { onChange() }
            }
        }
        thread.withLock { $0 = t }
    }

    func stop() {
        stopEvent.descriptor.signalEvent()
        thread.withLock { t in
            let out = t
            t = nil
            return out
        }?.join()
    }
}

/// An inotify instance shared with the one thread that reads it.
final class InotifyBox: Sendable {
    let inotify: Inotify
    init(_ i: consuming Inotify) { inotify = i }
}

// MARK: - What the admin API and `weir status` show

/// One pod as the admin API shows it.
public struct PodView: Codable, Sendable, Equatable {
    public var name: String
    public var netns: String
    public var namespace: String
    public var source: String
    public var mode: String
    public var nodeIDs: [String]
    /// `enrolling`, `protected`, `repairing`, `degraded` or `releasing`.
    public var phase: String
    /// Why it is degraded.
    public var reason: String?
    public var repairs: Int
    public var lastProblem: String?
    /// Re-adopted after a restart.
    public var restored: Bool
    /// The capture spec, as `weir init` flags without the dashes.
    public var spec: [String]
    /// `healthy` when protected; otherwise what is wrong.
    public var rules: String
    public var listeners: [String]
    /// The sidecar's ADS streams on the pod's endpoint: node, and per type the sent, ACKed and NACKed versions.
    public var sidecars: [StreamStatus]
    /// Streams refused on the pod's endpoint because they asked for a node id the pod may not use.
    public var refusedStreams: Int
    /// What the daemon can see is wrong, each with what it does to traffic (only in a single pod's view).
    public var problems: [String]?
}

/// The admin routes of `weir daemon` (`/healthz`, `/readyz`, `/metrics`, `/pods`, `/pods/{id}`, `/xds/clients`,
/// `/xds/config_dump?node=ID`) and of its enrollment API (`POST /v1/pods`, `DELETE /v1/pods/{id}`, `GET /v1/pods`).
public enum DaemonAdmin {
    static func encode<T: Encodable>(_ value: T) -> String {
        let e = JSONEncoder()
        e.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        return String(decoding: (try? e.encode(value)) ?? Data(), as: UTF8.self) + "\n"
    }

    /// Every pod, by name.
    public static func pods(_ daemon: Daemon) async -> [PodView] {
        let records = await daemon.reconciler.registry.pods.values
        let streams = daemon.xds.service.status
        let refused = daemon.xds.service.refusedByEndpoint
        return records.map { view($0, daemon: daemon, streams: streams, refused: refused) }.sorted { $0.name < $1.name }
    }

    static func view(_ r: PodRecord, daemon: Daemon, streams: [StreamStatus], refused: [String: Int]) -> PodView {
        let e = r.enrollment
        let (phase, reason) = (r.phase.name, r.phase.reason)
        return PodView(
            name: e.name, netns: e.path, namespace: "\(e.identity)", source: e.source.rawValue,
            mode: e.settings.mode.rawValue, nodeIDs: e.settings.nodeIDs, phase: phase, reason: reason,
            repairs: r.repairs, lastProblem: r.lastProblem, restored: r.restored, spec: e.settings.spec.encodedTokens,
            rules: r.phase == .protected ? "healthy" : (reason ?? r.lastProblem ?? phase),
            listeners: daemon.host.listeners(e.identity), sidecars: streams.filter { $0.endpoint == e.name },
            refusedStreams: refused[e.name] ?? 0)
    }

    /// The admin API's handler.
    public static func handler(daemon: Daemon, registry: PrometheusCollectorRegistry) -> AdminServer.Handler {
        { request in await route(request, daemon: daemon, registry: registry) }
    }

    static func route(_ request: AdminRequest, daemon: Daemon, registry: PrometheusCollectorRegistry) async
        -> AdminReply
    {
        guard request.method == .GET else { return .text("only GET\n", status: .methodNotAllowed) }
        switch request.path {
        case "/healthz":
            return .text("ok\n")
        case "/readyz":
            if await daemon.isReady() { return .text("ready\n") }
            let waiting = await pods(daemon).filter { $0.phase != "protected" }
            let lines = waiting.map { "\($0.name): \($0.phase)\($0.reason.map { " (\($0))" } ?? "")" }
            return .text(
                (daemon.startedUp.load(ordering: .relaxed) ? "" : "starting\n") + lines.joined(separator: "\n") + "\n",
                status: .serviceUnavailable)
        case "/metrics":
            var body: [UInt8] = []
            registry.emit(into: &body)
            body += Array(await metrics(daemon).utf8)
            return AdminReply(contentType: "text/plain; version=0.0.4", body: body)
        case "/pods":
            return .json(encode(await pods(daemon)))
        case let p where p.hasPrefix("/pods/"):
            let key = String(p.dropFirst("/pods/".count))
            guard let r = await daemon.pod(named: key) else { return .text("no pod \(key)\n", status: .notFound) }
            var v = view(
                r, daemon: daemon, streams: daemon.xds.service.status, refused: daemon.xds.service.refusedByEndpoint)
            v.problems = await problems(r, view: v, daemon: daemon)
            return .json(encode(v))
        case "/xds/clients":
            struct Body: Encodable {
                var streams: [StreamStatus]
                var refusedByPod: [String: Int]
            }
            return .json(
                encode(Body(streams: daemon.xds.service.status, refusedByPod: daemon.xds.service.refusedByEndpoint)))
        case "/xds/config_dump":
            guard let node = request.query["node"], !node.isEmpty else {
                return .text(
                    "give ?node=ID; nodes: \(daemon.cache.nodeIDs.joined(separator: ", "))\n", status: .badRequest)
            }
            guard let snapshot = daemon.cache.snapshot(for: node) else {
                return .text("no configuration for node \(node)\n", status: .notFound)
            }
            return AdminReply(
                contentType: "application/json", body: Array(configDump(snapshot, node: node, daemon: daemon).utf8))
        default:
            return .text(
                "try /healthz, /readyz, /metrics, /pods, /pods/{id}, /xds/clients or /xds/config_dump?node=ID\n",
                status: .notFound)
        }
    }

    /// What a node is served, in Envoy's JSON, with the version and what each of its streams ACKed and NACKed.
    static func configDump(_ snapshot: Snapshot, node: String, daemon: Daemon) -> String {
        let resources = decoded(snapshot)
        let streams = daemon.xds.service.status.filter { $0.nodeID == node }
        let head = encode(["node": node, "version": snapshot.version])
        return "{\n\"node\": \(head),\n\"streams\": \(encode(streams)),\n\"resources\": \(resources.json())}\n"
    }

    /// A snapshot's resources as typed messages.
    static func decoded(_ snapshot: Snapshot) -> EnvoyResources {
        var resources = EnvoyResources()
        func decode<M: SwiftProtobuf.Message>(_ type: ResourceType, _ into: inout [M]) {
            for (_, r) in (snapshot.resources[type] ?? [:]).sorted(by: { $0.key < $1.key }) {
                if let m = try? M(serializedBytes: r.bytes) { into.append(m) }
            }
        }
        decode(.listener, &resources.listeners)
        decode(.route, &resources.routes)
        decode(.cluster, &resources.clusters)
        decode(.endpoint, &resources.endpoints)
        return resources
    }

    /// What can be seen to be wrong with a pod (`PodDiagnosis` decides; this gathers what it looks at).
    static func problems(_ r: PodRecord, view v: PodView, daemon: Daemon) async -> [String] {
        let sidecar = r.enrollment.settings.mode == .sidecar
        var resources: [String: EnvoyResources] = [:]
        for node in PodDiagnosis.nodes(of: v) {
            if let snapshot = daemon.cache.snapshot(for: node) { resources[node] = decoded(snapshot) }
        }
        // What listens inside the pod, read on a thread in its namespace (nothing connects to the application).
        let handle = daemon.host.handle(r.enrollment.identity)
        let listening: [Endpoint]? =
            sidecar ? ((try? await handle?.run(name: "weir-status") { ListeningSockets.tcp() }) ?? nil) : nil
        return PodDiagnosis.problems(view: v, sidecar: sidecar, resources: resources, listening: listening)
    }

    /// The daemon's own metrics: pods by phase, repairs, refusals, the rule-apply latency histogram.
    static func metrics(_ daemon: Daemon) async -> String {
        let views = await pods(daemon)
        var out = "# HELP weir_daemon_pods Enrolled pods by phase.\n# TYPE weir_daemon_pods gauge\n"
        for phase in PodPhase.names {
            out += "weir_daemon_pods{phase=\"\(phase)\"} \(views.filter { $0.phase == phase }.count)\n"
        }
        out += "# HELP weir_daemon_repairs_total Rule repairs (drift seen and put right).\n"
        out += "# TYPE weir_daemon_repairs_total counter\n"
        out += "weir_daemon_repairs_total \(views.map(\.repairs).reduce(0, +))\n"
        out += "# HELP weir_xds_refused_streams_total ADS streams refused for asking another pod's node id.\n"
        out += "# TYPE weir_xds_refused_streams_total counter\n"
        out += "weir_xds_refused_streams_total \(daemon.xds.service.refusedByEndpoint.values.reduce(0, +))\n"
        out +=
            "# HELP weir_daemon_watch_failures_total Pods whose nftables changes cannot be heard (checked on the timer only).\n"
        out += "# TYPE weir_daemon_watch_failures_total counter\n"
        out += "weir_daemon_watch_failures_total \(daemon.watcher.failures.load(ordering: .relaxed))\n"
        out += "# HELP weir_xds_streams Open ADS streams.\n# TYPE weir_xds_streams gauge\n"
        out += "weir_xds_streams \(daemon.xds.service.status.count)\n"
        out += "# HELP weir_forwarder_active_connections Connections the shared forwarder relays.\n"
        out += "# TYPE weir_forwarder_active_connections gauge\n"
        out += "weir_forwarder_active_connections \(daemon.forwarder.activeConnections)\n"
        out += daemon.applyLatency.render(
            "weir_daemon_rule_apply_seconds", help: "Time to apply a pod's rules (one transaction).")
        return out
    }

    // MARK: enrollment API

    /// The enrollment API's handler.
    public static func enrollmentHandler(daemon: Daemon) -> AdminServer.Handler {
        { request in await enrollmentRoute(request, daemon: daemon) }
    }

    static func error(_ message: String, status: HTTPResponseStatus) -> AdminReply {
        .json(encode(["error": message]), status: status)
    }

    static func enrollmentRoute(_ request: AdminRequest, daemon: Daemon) async -> AdminReply {
        switch (request.method, request.path) {
        case (.GET, "/v1/pods"):
            return .json(encode(await pods(daemon)))
        case (.POST, "/v1/pods"):
            let parsed: (path: String, labels: [String: String], request: PodRequest)
            do {
                parsed = try EnrollmentRequestBody.parse(request.body, netnsDirectory: daemon.config.netnsDirectory)
            } catch {
                return self.error("\(error)", status: .badRequest)
            }
            do {
                let e = try await daemon.enroll(
                    path: parsed.path, labels: parsed.labels, request: parsed.request, source: .api)
                guard let r = await daemon.reconciler.registry.pods[e.identity] else {
                    return self.error("\(e.path): released while enrolling", status: .conflict)
                }
                return .json(
                    encode(
                        view(
                            r, daemon: daemon, streams: daemon.xds.service.status,
                            refused: daemon.xds.service.refusedByEndpoint)))
            } catch let refused as EnrollmentRefused {
                return self.error(refused.message, status: .badRequest)
            } catch {
                return self.error("\(error)", status: .internalServerError)
            }
        case (.DELETE, let p) where p.hasPrefix("/v1/pods/"):
            let key = String(p.dropFirst("/v1/pods/".count)).removingPercentEncoding ?? ""
            do {
                try await daemon.unenroll(key)
                return .json(encode(["unenrolled": key]))
            } catch let refused as EnrollmentRefused {
                return self.error(refused.message, status: .notFound)
            } catch {
                return self.error("\(error)", status: .internalServerError)
            }
        default:
            return self.error("try GET /v1/pods, POST /v1/pods, DELETE /v1/pods/{name}", status: .notFound)
        }
    }
}

/// The body of `POST /v1/pods`, read strictly: an unknown key is refused by name, never ignored.
public enum EnrollmentRequestBody {
    /// The keys a request may carry.
    public static let keys = ["netns", "labels", "mode", "nodeIDs", "capture", "appMesh"]

    /// Reads a request: the namespace path, the labels and what the request asks over the selectors.
    public static func parse(_ body: [UInt8], netnsDirectory: String) throws(EnrollmentRefused)
        -> (path: String, labels: [String: String], request: PodRequest)
    {
        guard let object = try? JSONSerialization.jsonObject(with: Data(body)), let map = object as? [String: Any]
        else { throw EnrollmentRefused(message: "the request body must be a JSON object") }
        for key in map.keys.sorted() where !keys.contains(key) {
            throw EnrollmentRefused(message: "unknown key '\(key)'\(NearestName.suggestion(key, keys, always: true))")
        }
        guard let netns = map["netns"] as? String, !netns.isEmpty else {
            throw EnrollmentRefused(message: "netns: give the namespace's name in \(netnsDirectory) or its path")
        }
        let path = netns.hasPrefix("/") ? netns : netnsDirectory + "/" + netns
        if !netns.hasPrefix("/") && netns.contains("/") {
            throw EnrollmentRefused(message: "netns '\(netns)': a name has no '/'; give a name or an absolute path")
        }
        var request = PodRequest()
        if let m = map["mode"] {
            guard let t = m as? String, let mode = PodMode(rawValue: t) else {
                throw EnrollmentRefused(message: "mode: must be sidecar or forwarder")
            }
            request.mode = mode
        }
        if let n = map["nodeIDs"] {
            guard let ids = n as? [String], !ids.isEmpty, ids.allSatisfy({ !$0.isEmpty }) else {
                throw EnrollmentRefused(message: "nodeIDs: must be a list of non-empty node ids")
            }
            request.nodeIDs = ids
        }
        var labels: [String: String] = [:]
        if let l = map["labels"] {
            guard let ls = l as? [String: String] else {
                throw EnrollmentRefused(message: "labels: must map names to string values")
            }
            labels = ls
        }
        if let c = map["capture"] {
            guard let cs = c as? [String: Any] else {
                throw EnrollmentRefused(message: "capture: must map weir init flag names to values")
            }
            let names = CaptureSpecInput.Key.allCases.map(\.rawValue)
            for (key, value) in cs.sorted(by: { $0.key < $1.key }) {
                guard let k = CaptureSpecInput.Key(rawValue: key) else {
                    throw EnrollmentRefused(
                        message: "capture: unknown setting '\(key)'\(NearestName.suggestion(key, names, always: true))")
                }
                if let list = value as? [String], k.isList {
                    for item in list { request.capture.add(k, item, from: "capture.\(key)") }
                } else if let text = value as? String {
                    request.capture.add(k, text, from: "capture.\(key)")
                } else if let number = value as? Int {
                    request.capture.add(k, "\(number)", from: "capture.\(key)")
                } else if let flag = value as? Bool {
                    request.capture.add(k, flag ? "true" : "false", from: "capture.\(key)")
                } else {
                    throw EnrollmentRefused(
                        message: "capture.\(key): give a string\(k.isList ? " or a list of strings" : "")")
                }
            }
        }
        if let a = map["appMesh"] {
            guard let env = a as? [String: String] else {
                throw EnrollmentRefused(message: "appMesh: must map APPMESH_* variable names to string values")
            }
            let known = CaptureSpecInput.appMeshVariables
            for key in env.keys.sorted() where !known.contains(key) {
                // Read nowhere: refused by name rather than dropped (APPMESH_RESOURCE_ARN and the like are Envoy's).
                throw EnrollmentRefused(
                    message:
                        "appMesh: '\(key)' is not a variable the proxy route manager read\(NearestName.suggestion(key, known, always: true))"
                )
            }
            if let (input, problems) = CaptureSpecInput.fromAppMeshEnvironment(env) {
                if let p = problems.first {
                    throw EnrollmentRefused(message: "appMesh: \(p.option)=\(p.value): \(p.problem). \(p.fix)")
                }
                request.appMesh = input
            }
        }
        return (path, labels, request)
    }
}
