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
/// `SnapshotCache`.
///
/// A stream costs one task (the one gRPC runs the handler on, which reads the requests) and one `StreamSession`. A
/// snapshot change does not wake that task: the cache's watch callback runs the protocol machine under the session's
/// lock, queues the responses, and a short-lived task writes them. Requests and snapshot changes reach the machine in
/// the order they happen, and one writer at a time drains the queue in that order, so a stream's state never races
/// and its responses never overtake each other. (A second task and an event stream per stream cost ~12 KiB of task
/// stacks at 1000 idle streams; this way an idle stream is the session and gRPC's own state.)
public final class ADSService: RegistrableRPCService, Sendable {
    let cache: SnapshotCache
    let logger: Logger
    /// Every open stream's session; its status is computed only when someone asks (an event must stay cheap).
    let streams = Mutex<[UInt64: any StreamStatusSource]>([:])
    let nextID = Atomic<UInt64>(0)
    /// Called with a stream's NACK (node, type, error message): the upstream relay forwards it.
    let onNack: (@Sendable (String, ResourceType, String) -> Void)?

    public init(cache: SnapshotCache, logger: Logger = Logger(label: "weir.xds"), onNack: (@Sendable (String, ResourceType, String) -> Void)? = nil) {
        self.cache = cache; self.logger = logger; self.onNack = onNack
    }

    /// Every stream's state, for the admin endpoint and tests.
    public var status: [StreamStatus] { streams.withLock { Array($0.values) }.compactMap { $0.status() }.sorted { $0.id < $1.id } }

    public func registerMethods<Transport: ServerTransport>(with router: inout RPCRouter<Transport>) {
        typealias ADS = Envoy_Service_Discovery_V3_AggregatedDiscoveryService
        router.registerHandler(
            forMethod: ADS.Method.StreamAggregatedResources.descriptor,
            deserializer: ProtobufDeserializer<Envoy_Service_Discovery_V3_DiscoveryRequest>(),
            serializer: EncodedMessageSerializer()
        ) { request, context in
            StreamingServerResponse(of: EncodedMessage.self) { writer in
                try await self.serve(request.messages, session: StreamSession(machine: SotWMachine(), writer: writer, peer: context.remotePeer))
                return [:]
            }
        }
        router.registerHandler(
            forMethod: ADS.Method.DeltaAggregatedResources.descriptor,
            deserializer: ProtobufDeserializer<Envoy_Service_Discovery_V3_DeltaDiscoveryRequest>(),
            serializer: EncodedMessageSerializer()
        ) { request, context in
            StreamingServerResponse(of: EncodedMessage.self) { writer in
                try await self.serve(request.messages, session: StreamSession(machine: DeltaMachine(), writer: writer, peer: context.remotePeer))
                return [:]
            }
        }
    }

    /// Reads the stream's requests until it ends. Kept small on purpose: this frame lives as long as the stream.
    func serve<M: StreamMachine>(_ requests: RPCAsyncSequence<M.Request, any Error>, session: StreamSession<M>) async throws {
        let id = nextID.add(1, ordering: .relaxed).newValue
        session.id = id
        streams.withLock { $0[id] = session }
        defer {
            session.close()
            if let node = session.node, let watch = session.watchID { cache.cancelWatch(node, watch) }
            streams.withLock { _ = $0.removeValue(forKey: id) }
        }
        for try await r in requests {
            if try received(r, session: session) { try await session.drain() }
        }
    }

    /// One request: the first one names the node and starts the watch. Returns whether this task must drain.
    func received<M: StreamMachine>(_ r: M.Request, session: StreamSession<M>) throws -> Bool {
        if session.node == nil {
            // The node comes from the first request.
            guard let node = M.nodeID(of: r), !node.isEmpty else {
                throw RPCError(code: .invalidArgument, message: "the first request of an ADS stream must carry node.id")
            }
            session.start(node: node, snapshot: cache.snapshot(for: node))
            logger.info("ADS stream", metadata: ["node": "\(node)", "protocol": "\(M.name)", "peer": "\(session.peer)"])
            session.watchID = cache.watch(node) { [weak session, cache] s in
                // A snapshot change: queued here, written by a short-lived task (the stream's own task is reading),
                // started once the whole change is published.
                guard let session, session.update(s) else { return }
                cache.afterPublish { Task { try? await session.drain() } }
            }
        }
        if let (type, message) = M.nack(in: r), let node = session.node {
            logger.warning("NACK", metadata: ["node": "\(node)", "type": "\(type.shortName)", "error": "\(message)"])
            cache.rejected(node)
            onNack?(node, type, message)
        }
        return session.receive(r)
    }
}

protocol StreamStatusSource: Sendable {
    func status() -> StreamStatus?
}

/// One ADS stream's protocol state and its queue of responses not yet written.
final class StreamSession<M: StreamMachine>: StreamStatusSource, @unchecked Sendable {
    struct State {
        var machine: M
        var snapshot: Snapshot?
        var node: String?
        var queue: [OutgoingResponse] = []
        /// A task is writing the queue: others only append to it.
        var draining = false
        var closed = false
    }
    let state: Mutex<State>
    let writer: RPCWriter<EncodedMessage>
    let peer: String
    // Set once by the stream's task before anything else can see them.
    var id: UInt64 = 0
    var watchID: UInt64?

    init(machine: M, writer: RPCWriter<EncodedMessage>, peer: String) {
        state = Mutex(State(machine: machine))
        self.writer = writer; self.peer = peer
    }

    var node: String? { state.withLock { $0.node } }

    func start(node: String, snapshot: Snapshot?) {
        state.withLock { $0.node = node; $0.snapshot = snapshot }
    }

    /// Runs a request through the machine; returns whether the caller must drain (it became the writer).
    func receive(_ r: M.Request) -> Bool {
        state.withLock { s in
            let out = s.machine.receive(r, snapshot: s.snapshot)
            return Self.enqueue(out, &s)
        }
    }

    /// A new snapshot for the node; returns whether the caller must drain.
    func update(_ snapshot: Snapshot) -> Bool {
        state.withLock { s in
            guard !s.closed, s.snapshot == nil || snapshot.version != s.snapshot?.version else { return false }
            s.snapshot = snapshot
            return Self.enqueue(s.machine.update(snapshot), &s)
        }
    }

    static func enqueue(_ out: [OutgoingResponse], _ s: inout State) -> Bool {
        guard !out.isEmpty, !s.closed else { return false }
        s.queue.append(contentsOf: out)
        if s.draining { return false }
        s.draining = true
        return true
    }

    /// Writes the queue in order until it is empty. Only the task that `enqueue` chose calls this.
    func drain() async throws {
        while true {
            let batch: [OutgoingResponse] = state.withLock { s in
                let b = s.queue
                s.queue.removeAll()
                if b.isEmpty { s.draining = false }
                return b
            }
            if batch.isEmpty { return }
            do {
                for response in batch {
                    try await writer.write(EncodedMessage(bytes: ResponseEncoder.shared.bytes(response)))
                }
            } catch {
                state.withLock { $0.draining = false; $0.closed = true; $0.queue.removeAll() }
                throw error
            }
        }
    }

    func close() { state.withLock { $0.closed = true; $0.queue.removeAll() } }

    func status() -> StreamStatus? {
        state.withLock { s in
            guard let node = s.node else { return nil }
            return StreamStatus(id: id, nodeID: node, protocol: M.name, peer: peer,
                                types: s.machine.status(snapshot: s.snapshot).reduce(into: [:]) { $0[$1.key.shortName] = $1.value })
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
