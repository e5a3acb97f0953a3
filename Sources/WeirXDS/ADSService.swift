import EnvoyAPI
import Foundation
import GRPCCore
import GRPCProtobuf
import Logging
import Synchronization
import WeirMesh

/// A response already serialized (shared between streams); the serializer only copies it into the transport.
struct EncodedMessage: Sendable {
    let bytes: [UInt8]
}

struct EncodedMessageSerializer: MessageSerializer {
    func serialize<Bytes: GRPCContiguousBytes>(_ message: EncodedMessage) throws -> Bytes { Bytes(message.bytes) }
}

/// What operators see of one ADS stream.
public struct StreamStatus: Sendable, Codable, Equatable {
    public var id: UInt64
    public var nodeID: String
    public var `protocol`: String
    public var peer: String
    public var types: [String: TypeStatus]
}

/// The ADS service: `StreamAggregatedResources` (state of the world) and `DeltaAggregatedResources`, fed by a
/// `SnapshotCache`. Each stream runs its protocol state machine on one task: requests and snapshot changes are
/// handled in arrival order, so a stream's state never races.
public final class ADSService: RegistrableRPCService, Sendable {
    let cache: SnapshotCache
    let logger: Logger
    /// Per stream, how to describe it: the status is computed only when someone asks (an event must stay cheap).
    let streams = Mutex<[UInt64: @Sendable () -> StreamStatus]>([:])
    let nextID = Atomic<UInt64>(0)
    /// Called with a stream's NACK (node, type, error message): the upstream relay forwards it.
    let onNack: (@Sendable (String, ResourceType, String) -> Void)?

    public init(cache: SnapshotCache, logger: Logger = Logger(label: "weir.xds"), onNack: (@Sendable (String, ResourceType, String) -> Void)? = nil) {
        self.cache = cache; self.logger = logger; self.onNack = onNack
    }

    /// Every stream's state, for the admin endpoint and tests.
    public var status: [StreamStatus] { streams.withLock { Array($0.values) }.map { $0() }.sorted { $0.id < $1.id } }

    public func registerMethods<Transport: ServerTransport>(with router: inout RPCRouter<Transport>) {
        typealias ADS = Envoy_Service_Discovery_V3_AggregatedDiscoveryService
        router.registerHandler(
            forMethod: ADS.Method.StreamAggregatedResources.descriptor,
            deserializer: ProtobufDeserializer<Envoy_Service_Discovery_V3_DiscoveryRequest>(),
            serializer: EncodedMessageSerializer()
        ) { request, context in
            StreamingServerResponse(of: EncodedMessage.self) { writer in
                try await self.serve(request.messages, writer: writer, peer: context.remotePeer, machine: SotWMachine())
                return [:]
            }
        }
        router.registerHandler(
            forMethod: ADS.Method.DeltaAggregatedResources.descriptor,
            deserializer: ProtobufDeserializer<Envoy_Service_Discovery_V3_DeltaDiscoveryRequest>(),
            serializer: EncodedMessageSerializer()
        ) { request, context in
            StreamingServerResponse(of: EncodedMessage.self) { writer in
                try await self.serve(request.messages, writer: writer, peer: context.remotePeer, machine: DeltaMachine())
                return [:]
            }
        }
    }

    enum Event<Request: Sendable>: Sendable {
        case request(Request)
        case snapshot(Snapshot)
        case end
    }

    func serve<M: StreamMachine>(_ requests: RPCAsyncSequence<M.Request, any Error>, writer: RPCWriter<EncodedMessage>, peer: String, machine: M) async throws {
        var machine = machine
        let id = nextID.add(1, ordering: .relaxed).newValue
        let (events, sink) = AsyncStream<Event<M.Request>>.makeStream()
        var watch: (node: String, id: UInt64)?
        var snapshot: Snapshot?
        defer {
            if let watch { cache.cancelWatch(watch.node, watch.id) }
            streams.withLock { _ = $0.removeValue(forKey: id) }
        }
        let reader = Task {
            do {
                for try await r in requests { sink.yield(.request(r)) }
            } catch {}
            sink.yield(.end)
        }
        defer { reader.cancel() }

        for await event in events {
            var out: [OutgoingResponse] = []
            switch event {
            case .end:
                sink.finish()
            case .request(let r):
                if watch == nil {
                    // The node comes from the first request.
                    guard let node = M.nodeID(of: r), !node.isEmpty else {
                        throw RPCError(code: .invalidArgument, message: "the first request of an ADS stream must carry node.id")
                    }
                    watch = (node, cache.watch(node) { s in sink.yield(.snapshot(s)) })
                    logger.info("ADS stream", metadata: ["node": "\(node)", "protocol": "\(M.name)", "peer": "\(peer)"])
                    snapshot = cache.snapshot(for: node)
                }
                if let (type, message) = M.nack(in: r), let node = watch?.node {
                    logger.warning("NACK", metadata: ["node": "\(node)", "type": "\(type.shortName)", "error": "\(message)"])
                    cache.rejected(node)
                    onNack?(node, type, message)
                }
                out = machine.receive(r, snapshot: snapshot)
            case .snapshot(let s):
                guard s.version != snapshot?.version || snapshot == nil else { continue }
                snapshot = s
                out = machine.update(s)
            }
            for response in out {
                try await writer.write(EncodedMessage(bytes: ResponseEncoder.shared.bytes(response)))
            }
            if let node = watch?.node {
                let (m, s) = (machine, snapshot)
                streams.withLock {
                    $0[id] = {
                        StreamStatus(id: id, nodeID: node, protocol: M.name, peer: peer,
                                     types: m.status(snapshot: s).reduce(into: [:]) { $0[$1.key.shortName] = $1.value })
                    }
                }
            }
        }
    }
}

/// The two protocols behind one interface, so one loop serves both.
protocol StreamMachine: Sendable {
    associatedtype Request: Sendable
    static var name: String { get }
    static func nodeID(of r: Request) -> String?
    static func nack(in r: Request) -> (ResourceType, String)?
    mutating func receive(_ r: Request, snapshot: Snapshot?) -> [OutgoingResponse]
    mutating func update(_ s: Snapshot) -> [OutgoingResponse]
    func status(snapshot: Snapshot?) -> [ResourceType: TypeStatus]
}

struct SotWMachine: StreamMachine {
    var stream = SotWStream()
    static let name = "sotw"
    static func nodeID(of r: Envoy_Service_Discovery_V3_DiscoveryRequest) -> String? { r.hasNode ? r.node.id : nil }
    static func nack(in r: Envoy_Service_Discovery_V3_DiscoveryRequest) -> (ResourceType, String)? {
        guard r.hasErrorDetail, let t = ResourceType(rawValue: r.typeURL) else { return nil }
        return (t, r.errorDetail.message)
    }
    mutating func receive(_ r: Envoy_Service_Discovery_V3_DiscoveryRequest, snapshot: Snapshot?) -> [OutgoingResponse] { stream.receive(r, snapshot: snapshot) }
    mutating func update(_ s: Snapshot) -> [OutgoingResponse] { stream.update(s) }
    func status(snapshot: Snapshot?) -> [ResourceType: TypeStatus] { stream.status(snapshot: snapshot) }
}

struct DeltaMachine: StreamMachine {
    var stream = DeltaStream()
    static let name = "delta"
    static func nodeID(of r: Envoy_Service_Discovery_V3_DeltaDiscoveryRequest) -> String? { r.hasNode ? r.node.id : nil }
    static func nack(in r: Envoy_Service_Discovery_V3_DeltaDiscoveryRequest) -> (ResourceType, String)? {
        guard r.hasErrorDetail, let t = ResourceType(rawValue: r.typeURL) else { return nil }
        return (t, r.errorDetail.message)
    }
    mutating func receive(_ r: Envoy_Service_Discovery_V3_DeltaDiscoveryRequest, snapshot: Snapshot?) -> [OutgoingResponse] { stream.receive(r, snapshot: snapshot) }
    mutating func update(_ s: Snapshot) -> [OutgoingResponse] { stream.update(s) }
    func status(snapshot: Snapshot?) -> [ResourceType: TypeStatus] { stream.status(snapshot: snapshot) }
}
