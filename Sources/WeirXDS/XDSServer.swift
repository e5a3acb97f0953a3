import Foundation
import Logging
import NIOCore
import Synchronization
import WeirMesh
import WeirNetns

/// The local xDS cache as a running server: the ADS service on a Unix socket or loopback TCP, an admin endpoint with
/// the per-stream state, and the config sources it serves.
public final class XDSServer: Sendable {
    public let cache: SnapshotCache
    public let service: ADSService
    let listen: XDSAddress
    let logger: Logger
    /// Set once ADS is listening: `/ready` answers 503 until then.
    let listening = Atomic<Bool>(false)

    public init(listen: XDSAddress, cache: SnapshotCache, logger: Logger = Logger(label: "weir.xds"),
                onNack: (@Sendable (String, ResourceType, String) -> Void)? = nil) {
        self.listen = listen; self.cache = cache; self.logger = logger
        self.service = ADSService(cache: cache, logger: logger, onNack: onNack)
    }

    /// Serves until the task is cancelled. `ready` is called with the bound address once listening.
    public func serve(ready: (@Sendable (String) -> Void)? = nil) async throws {
        let transport = ADSTransport(service: service)
        let listener = try await transport.bind(listen)
        let bound = listener.localAddress.map(ADSTransport.hostPort) ?? "\(listen)"
        logger.info("xDS server listening", metadata: ["address": "\(bound)"])
        listening.store(true, ordering: .releasing)
        ready?(bound)
        // Cancellation is the way to stop: it ends this sleep.
        try? await Task.sleep(for: .seconds(1 << 40))
        // A sidecar never ends its ADS stream: GOAWAY tells it to reconnect (to the next weir), then the connections
        // close.
        await transport.stop(listener: listener)
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
        if path.hasPrefix("/ready") {
            return listening.load(ordering: .acquiring) ? .text("ready\n") : .text("not listening yet\n", status: "503 Service Unavailable")
        }
        return .text("try /streams, /snapshots or /ready\n", status: "404 Not Found")
    }
}
