import Foundation
import Logging
import NIOHTTP1
import Prometheus
import ServiceLifecycle
import UnixSignals
import WeirForwarder
import WeirMesh
import WeirNetns
import WeirSystem
import WeirXDS

/// The agent's services under one group: SIGTERM and SIGINT (or none, for tests that trigger the shutdown) start
/// one graceful shutdown, in reverse order of `services`, bounded by `deadline`; any service that ends ends them all.
public func serviceGroup(
    _ services: [any Service], logger: Logger, deadline: Duration,
    signals: [UnixSignal] = [.sigterm, .sigint]
) -> ServiceGroup {
    var configuration = ServiceGroupConfiguration(
        services: services.map {
            ServiceGroupConfiguration.ServiceConfiguration(
                service: $0, successTerminationBehavior: .gracefullyShutdownGroup,
                failureTerminationBehavior: .gracefullyShutdownGroup)
        },
        gracefulShutdownSignals: signals, logger: logger)
    configuration.maximumGracefulShutdownDuration = deadline
    return ServiceGroup(configuration: configuration)
}

/// The xDS server as a service: listens at start, says GOAWAY and closes its connections at shutdown.
public struct XDSService: Service {
    /// The xDS server this service starts at launch and stops at shutdown.
    public let server: XDSServer
    let onListening: @Sendable (String) -> Void

    /// Runs `server`; `onListening` gets the bound address (`unix:PATH` or `HOST:PORT`) once it listens.
    public init(server: XDSServer, onListening: @escaping @Sendable (String) -> Void = { _ in }) {
        self.server = server
        self.onListening = onListening
    }

    /// Starts listening, waits for the graceful shutdown, then sends GOAWAY and closes the connections.
    public func run() async throws {
        let bound = try await server.start()
        onListening(bound)
        try? await gracefulShutdown()
        await server.stop()
    }
}

/// The watcher of the config directories: reloads on change until shutdown.
public struct ConfigWatchService: Service {
    /// The mesh and Envoy config sources whose directories are watched; a change reloads them.
    public let sources: ConfigSources

    /// Watches the directories of `sources`.
    public init(sources: ConfigSources) { self.sources = sources }

    /// Watches until the graceful shutdown, then stops the watcher thread (from a thread of its own).
    public func run() async throws {
        let watcher = try sources.watch()
        try? await gracefulShutdown()
        await OSThread.run(name: "weir-watch-stop") { watcher.stop() }
    }
}

/// The snapshot files: at shutdown, what is not yet on disk is written, within a bound, and the writer ends.
public struct SnapshotPersistenceService: Service {
    /// The snapshot cache whose pending writes are finished at shutdown.
    public let cache: SnapshotCache
    /// How long, in seconds, the shutdown waits for pending snapshots to reach the disk.
    public let deadlineSeconds: Double
    let onUnfinished: @Sendable () -> Void

    /// Finishes `cache`'s writes at shutdown within `deadlineSeconds`; `onUnfinished` runs if some were not written.
    public init(cache: SnapshotCache, deadlineSeconds: Double = 3, onUnfinished: @escaping @Sendable () -> Void = {}) {
        self.cache = cache
        self.deadlineSeconds = deadlineSeconds
        self.onUnfinished = onUnfinished
    }

    /// Waits for the graceful shutdown, then writes what is pending and ends the writer thread.
    public func run() async throws {
        try? await gracefulShutdown()
        let cache = self.cache
        let seconds = deadlineSeconds
        if !(await OSThread.run(name: "weir-persist-end") { cache.finishWriting(within: seconds) }) { onUnfinished() }
    }
}

/// The forwarder as a service: starts its workers in the namespace; at shutdown stops accepting and awaits the open
/// connections' end (within the drain timeout) before closing the rest.
public struct ForwarderService: Service {
    /// The forwarder whose listeners and worker threads this service runs.
    public let forwarder: Forwarder
    /// The network namespace the forwarder's listeners are opened and its workers run in.
    public let namespace: NetworkNamespace
    let onStarted: @Sendable () -> Void
    let onDraining: @Sendable (Int) -> Void

    /// Runs `forwarder` in `namespace`; `onStarted` runs once it listens, `onDraining` with the connections to drain.
    public init(
        forwarder: Forwarder, namespace: NetworkNamespace, onStarted: @escaping @Sendable () -> Void = {},
        onDraining: @escaping @Sendable (Int) -> Void = { _ in }
    ) {
        self.forwarder = forwarder
        self.namespace = namespace
        self.onStarted = onStarted
        self.onDraining = onDraining
    }

    /// Starts the forwarder; at shutdown stops accepting, drains connections within the drain timeout, ends the rest.
    public func run() async throws {
        try forwarder.start(in: namespace)
        onStarted()
        try? await gracefulShutdown()
        await forwarder.stopAccepting()
        onDraining(forwarder.activeConnections)
        await forwarder.drain()
    }
}

/// The admin routes of a `weir xds`: `/streams`, `/snapshots`, `/ready`.
public enum XDSAdmin {
    /// The admin handler for `server`'s `/streams`, `/snapshots` (with `sources`' reload state) and `/ready`.
    public static func handler(server: XDSServer, sources: ConfigSources?) -> AdminServer.Handler {
        { request in route(request, server: server, sources: sources) }
    }

    static func encoder() -> JSONEncoder {
        let e = JSONEncoder()
        e.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        return e
    }

    /// Answers one request: stream status, snapshot counts and reload state, or readiness; 405 for all but GET.
    public static func route(_ request: AdminRequest, server: XDSServer, sources: ConfigSources?) -> AdminReply {
        guard request.method == .GET else { return .text("only GET\n", status: .methodNotAllowed) }
        switch request.path {
        case "/streams":
            return .json(
                String(decoding: (try? encoder().encode(server.service.status)) ?? Data(), as: UTF8.self) + "\n")
        case "/snapshots":
            struct Entry: Codable {
                var version: String
                var listeners, routes, clusters, endpoints: Int
            }
            var out: [String: Entry] = [:]
            for node in server.cache.nodeIDs {
                guard let s = server.cache.snapshot(for: node) else { continue }
                out[node] = Entry(
                    version: s.version, listeners: s.count(.listener), routes: s.count(.route),
                    clusters: s.count(.cluster), endpoints: s.count(.endpoint))
            }
            struct Body: Codable {
                var snapshots: [String: Entry]
                var lastError: String?
                var generation: Int
            }
            let body = Body(snapshots: out, lastError: sources?.lastError, generation: sources?.generation ?? 0)
            return .json(String(decoding: (try? encoder().encode(body)) ?? Data(), as: UTF8.self) + "\n")
        case "/ready":
            return server.isListening ? .text("ready\n") : .text("not listening yet\n", status: .serviceUnavailable)
        default:
            return .text("try /streams, /snapshots or /ready\n", status: .notFound)
        }
    }
}

/// The admin routes of a `weir forward`: `/metrics` (Prometheus text) and `/ready` (503 while draining).
public enum ForwarderAdmin {
    /// The admin handler for the forwarder's `/metrics`, from `registry`, and `/ready` (503 while it drains).
    public static func handler(forwarder: Forwarder, registry: PrometheusCollectorRegistry) -> AdminServer.Handler {
        { request in
            guard request.method == .GET else { return .text("only GET\n", status: .methodNotAllowed) }
            switch request.path {
            case "/metrics":
                var body: [UInt8] = []
                registry.emit(into: &body)
                return AdminReply(contentType: "text/plain; version=0.0.4", body: body)
            case "/ready":
                return forwarder.isDraining ? .text("draining\n", status: .serviceUnavailable) : .text("ready\n")
            default:
                return .text("try /metrics or /ready\n", status: .notFound)
            }
        }
    }
}
