import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import Logging
import WeirMesh
import WeirNetns

/// The local xDS cache as a running server: the ADS service on a Unix socket or loopback TCP, an admin endpoint with
/// the per-stream state, and the config sources it serves.
public final class XDSServer: Sendable {
    public let cache: SnapshotCache
    public let service: ADSService
    let listen: XDSAddress
    let logger: Logger

    public init(listen: XDSAddress, cache: SnapshotCache, logger: Logger = Logger(label: "weir.xds"),
                onNack: (@Sendable (String, ResourceType, String) -> Void)? = nil) {
        self.listen = listen; self.cache = cache; self.logger = logger
        self.service = ADSService(cache: cache, logger: logger, onNack: onNack)
    }

    /// Serves until the task is cancelled. `ready` is called with the bound address once listening.
    public func serve(ready: (@Sendable (String) -> Void)? = nil) async throws {
        let address: GRPCNIOTransportCore.SocketAddress
        switch listen {
        case .unix(let path):
            unlink(path)
            address = .unixDomainSocket(path: path)
        case .tcp(let e):
            address = e.family == .ipv4 ? .ipv4(host: e.host, port: Int(e.port)) : .ipv6(host: e.host, port: Int(e.port))
        }
        var config = HTTP2ServerTransport.Posix.Config.defaults
        config.rpc.maxRequestPayloadSize = 16 << 20
        // Many proxyless clients (or a relay) multiplex their streams on one connection; NIO's own default is 100,
        // and a client that opens the 101st before it has read the server's SETTINGS gets a GOAWAY.
        config.http2.maxConcurrentStreams = 16384
        // grpc clients multiplexing many streams send BDP pings while data flows; on a local control plane they are
        // not abuse, and striking them out closed whole connections of streams (GOAWAY ENHANCE_YOUR_CALM).
        config.connection.keepalive.clientBehavior.minPingIntervalWithoutCalls = .zero
        config.connection.keepalive.clientBehavior.allowWithoutCalls = true
        let transport = HTTP2ServerTransport.Posix(address: address, transportSecurity: .plaintext, config: config)
        let server = GRPCServer(transport: transport, services: [service])
        try await withThrowingDiscardingTaskGroup { group in
            group.addTask { try await server.serve() }
            let bound = try await transport.listeningAddress
            logger.info("xDS server listening", metadata: ["address": "\(bound)"])
            ready?("\(bound)")
            await withTaskCancellationHandler {
                // Cancellation is the way to stop: it ends this sleep and starts the graceful shutdown.
                try? await Task.sleep(for: .seconds(1 << 40))
            } onCancel: {
                server.beginGracefulShutdown()
            }
        }
    }

    /// `/streams` (JSON: every ADS stream's node, protocol and per-type state), `/snapshots` (node → version and
    /// resource counts), `/ready`.
    public func adminReply(path: String, sources: ConfigSources?) -> AdminEndpoint.Reply {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        if path.hasPrefix("/streams") {
            return .json(String(decoding: (try? encoder.encode(service.status)) ?? Data(), as: UTF8.self) + "\n")
        }
        if path.hasPrefix("/snapshots") {
            struct Entry: Codable { var version: String; var listeners, routes, clusters, endpoints: Int }
            var out: [String: Entry] = [:]
            for node in cache.nodeIDs {
                guard let s = cache.snapshot(for: node) else { continue }
                out[node] = Entry(version: s.version, listeners: s.count(.listener), routes: s.count(.route), clusters: s.count(.cluster), endpoints: s.count(.endpoint))
            }
            struct Body: Codable { var snapshots: [String: Entry]; var lastError: String?; var generation: Int }
            let body = Body(snapshots: out, lastError: sources?.lastError, generation: sources?.generation ?? 0)
            return .json(String(decoding: (try? encoder.encode(body)) ?? Data(), as: UTF8.self) + "\n")
        }
        if path.hasPrefix("/ready") { return .text("ready\n") }
        return .text("try /streams, /snapshots or /ready\n", status: "404 Not Found")
    }
}
