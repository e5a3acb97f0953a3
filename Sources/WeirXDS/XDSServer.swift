import Foundation
import Logging
import NIOCore
import Synchronization
import WeirMesh
import WeirNetns
import WeirSystem

#if canImport(Glibc)
    import Glibc
#endif

/// The local xDS cache as a running server: the ADS service on a Unix socket or loopback TCP, and the cache and sources
/// it serves. The admin API that shows its state is WeirAgent's.
public final class XDSServer: Sendable {
    public let cache: SnapshotCache
    public let service: ADSService
    public let listen: XDSAddress
    let logger: Logger
    let transport: ADSTransport
    let listener = Mutex<(any Channel)?>(nil)

    public init(
        listen: XDSAddress, cache: SnapshotCache, logger: Logger = Logger(label: "weir.xds"),
        onNack: (@Sendable (String, ResourceType, String) -> Void)? = nil
    ) {
        self.listen = listen
        self.cache = cache
        self.logger = logger
        self.service = ADSService(cache: cache, logger: logger, onNack: onNack)
        self.transport = ADSTransport(service: service)
    }

    /// Whether ADS is listening.
    public var isListening: Bool { listener.withLock { $0 != nil } }

    /// Binds and starts accepting; returns the bound address (`unix:PATH`, `HOST:PORT`).
    public func start() async throws -> String {
        let channel = try await transport.bind(listen)
        listener.withLock { $0 = channel }
        let bound = channel.localAddress.map(ADSTransport.hostPort) ?? "\(listen)"
        logger.info("xDS server listening", metadata: ["address": "\(bound)"])
        return bound
    }

    /// Stops listening and ends the connections: a sidecar never ends its ADS stream, so GOAWAY tells it to
    /// reconnect (to the next weir), then the connections close.
    public func stop() async {
        guard
            let channel = listener.withLock({ c in
                let out = c
                c = nil
                return out
            })
        else { return }
        await transport.stop(listener: channel)
    }

    /// Serves ADS on a socket already bound and listening (a pod's, made inside its namespace), holding its streams
    /// to `scope`. Takes the descriptor; the endpoint closes it.
    public func attach(
        listening socket: consuming WeirSystem.FileDescriptor, isTCP: Bool, address: String, scope: XDSEndpointScope
    ) async throws
        -> XDSEndpoint
    {
        let raw = socket.releaseToOwner()
        do {
            let channel = try await transport.adopt(listening: raw, isTCP: isTCP, scope: scope)
            return XDSEndpoint(channel: channel, scope: scope, address: address)
        } catch {
            _ = Glibc.close(raw)
            throw error
        }
    }

    /// Closes a pod's endpoint and its connections (GOAWAY first, as at shutdown).
    public func detach(_ endpoint: XDSEndpoint) async {
        await transport.stop(listener: endpoint.channel, scope: endpoint.scope.name, all: false)
    }

    /// Serves until the task is cancelled; `ready` is called with the bound address once listening.
    public func serve(ready: (@Sendable (String) -> Void)? = nil) async throws {
        let bound = try await start()
        ready?(bound)
        await waitForCancellation()
        await stop()
    }
}

/// One pod's xDS endpoint: a listener NIO accepts on, and the rule its streams are held to.
public struct XDSEndpoint: Sendable {
    let channel: any Channel
    /// The pod and the node ids it may ask for.
    public let scope: XDSEndpointScope
    /// The address inside the pod (`127.0.0.1:15010`, `unix:@weir/xds`).
    public let address: String
}

/// Returns when the calling task is cancelled (without a timer or a sleeping thread).
func waitForCancellation() async {
    let (stream, continuation) = AsyncStream<Never>.makeStream()
    await withTaskCancellationHandler {
        for await _ in stream {}
    } onCancel: {
        continuation.finish()
    }
}
