import EnvoyAPI
import Foundation
import SwiftProtobuf
import Logging
import Synchronization
import WeirMesh

/// What operators see of one ADS stream.
public struct StreamStatus: Sendable, Codable, Equatable {
    public var id: UInt64
    public var nodeID: String
    public var `protocol`: String
    public var peer: String
    public var types: [String: TypeStatus]
    /// The pod endpoint it arrived on (the daemon's per-pod endpoints); nil on the node-wide one.
    public var endpoint: String?
}

/// A per-pod xDS endpoint's rule: streams that arrive on it may ask only for these node ids.
public struct XDSEndpointScope: Sendable, Hashable {
    /// The pod, for logs, status and the refusal count.
    public var name: String
    /// The node ids the pod's sidecar may ask for.
    public var nodeIDs: Set<String>

    /// A scope for pod `name`.
    public init(name: String, nodeIDs: Set<String>) {
        self.name = name
        self.nodeIDs = nodeIDs
    }
}

/// The ADS service: `StreamAggregatedResources` (state of the world) and `DeltaAggregatedResources`, fed by a
/// `SnapshotCache`. The transport (`ADSTransport`, gRPC over NIO's HTTP/2) hands it each stream's requests and writes
/// what the stream's session queues.
///
/// A stream costs one `StreamSession` and NIO's HTTP/2 stream channel, and no task: a request runs the protocol machine
/// on the connection's event loop; a snapshot change runs it in the cache's watch callback, under the session's lock,
/// and then wakes the event loop to write. Requests and snapshot changes reach the machine in the order they happen,
/// and only the event loop writes, in queue order, so a stream's state never races and its responses never overtake
/// each other. (Each stream on grpc-swift-2's server transport held ~15 KiB of task stacks, measured with heaptrack
/// at 1000 idle streams; that was most of an idle stream's memory.)
public final class ADSService: Sendable {
    let cache: SnapshotCache
    let logger: Logger
    /// Every open stream's session; its status is computed only when someone asks (an event must stay cheap).
    let streams = Mutex<[UInt64: any StreamStatusSource]>([:])
    let nextID = Atomic<UInt64>(0)
    /// Called with a stream's NACK (node, type, error message): the upstream relay forwards it.
    let onNack: (@Sendable (String, ResourceType, String) -> Void)?
    /// Streams refused because they asked, on a pod's endpoint, for a node id that pod may not use; by pod.
    let refusals = Mutex<[String: Int]>([:])

    public init(
        cache: SnapshotCache, logger: Logger = Logger(label: "weir.xds"),
        onNack: (@Sendable (String, ResourceType, String) -> Void)? = nil
    ) {
        self.cache = cache
        self.logger = logger
        self.onNack = onNack
    }

    /// Every stream's state, for the admin endpoint and tests.
    public var status: [StreamStatus] {
        streams.withLock { Array($0.values) }.compactMap { $0.status() }.sorted { $0.id < $1.id }
    }

    /// Streams refused with PERMISSION_DENIED so far, by the pod endpoint they arrived on.
    public var refusedByEndpoint: [String: Int] { refusals.withLock { $0 } }

    /// A new stream: visible in `status` from now on.
    func opened<M: StreamMachine>(_ session: StreamSession<M>) {
        let id = nextID.add(1, ordering: .relaxed).newValue
        session.id = id
        streams.withLock { $0[id] = session }
    }

    /// The stream ended (either side, or the connection): no more responses, no more watch.
    func closed<M: StreamMachine>(_ session: StreamSession<M>) {
        session.close()
        if let node = session.node, let watch = session.watchID { cache.cancelWatch(node, watch) }
        streams.withLock { _ = $0.removeValue(forKey: session.id) }
    }

    /// One request: the first one names the node and starts the watch. Returns whether the caller must drain the
    /// session's queue (it became the writer).
    func received<M: StreamMachine>(_ r: M.Request, session: StreamSession<M>) throws(ADSCallFailure) -> Bool {
        if session.node == nil {
            // The node comes from the first request.
            guard let node = M.nodeID(of: r), !node.isEmpty else {
                throw ADSCallFailure(
                    status: .invalidArgument, message: "the first request of an ADS stream must carry node.id")
            }
            if let scope = session.scope, !scope.nodeIDs.contains(node) {
                // Identity comes from the namespace the stream arrived in: a pod may not read another's config.
                refusals.withLock { $0[scope.name, default: 0] += 1 }
                logger.warning(
                    "refused an ADS stream asking for another pod's node id",
                    metadata: [
                        "endpoint": "\(scope.name)", "node": "\(node)",
                        "allowed": "\(scope.nodeIDs.sorted().joined(separator: ","))",
                    ])
                throw ADSCallFailure(
                    status: .permissionDenied,
                    message:
                        "node id '\(node)' is not one this pod may ask for on its xDS endpoint (\(scope.nodeIDs.sorted().joined(separator: ", ")))"
                )
            }
            session.start(node: node, snapshot: cache.snapshot(for: node))
            logger.info(
                "ADS stream", metadata: ["node": "\(node)", "protocol": "\(M.name)", "peer": "\(session.peer)"])
            session.watchID = cache.watch(node) { [weak session, cache] s in
                // A snapshot change: queued here, written by the stream's event loop once the whole change is
                // published.
                guard let session, session.update(s) else { return }
                cache.afterPublish { session.wake() }
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

/// Why a stream ends with a gRPC status other than OK.
struct ADSCallFailure: Error {
    enum Status: Int {
        case invalidArgument = 3
        case deadlineExceeded = 4
        case permissionDenied = 7
        case resourceExhausted = 8
        case unimplemented = 12
        case `internal` = 13
    }
    var status: Status
    var message: String
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
        /// A writer has been asked to write the queue: others only append to it.
        var draining = false
        var closed = false
    }
    let state: Mutex<State>
    let peer: String
    /// Asks the stream's writer (its event loop) to drain the queue; called from any thread.
    let wake: @Sendable () -> Void
    // Set once, before anything else can see them.
    var id: UInt64 = 0
    var watchID: UInt64?
    /// The pod endpoint the stream arrived on, whose node ids bound what it may ask for.
    let scope: XDSEndpointScope?

    init(machine: M, peer: String, scope: XDSEndpointScope? = nil, wake: @escaping @Sendable () -> Void) {
        state = Mutex(State(machine: machine))
        self.peer = peer
        self.scope = scope
        self.wake = wake
    }

    var node: String? { state.withLock { $0.node } }

    func start(node: String, snapshot: Snapshot?) {
        state.withLock {
            $0.node = node
            $0.snapshot = snapshot
        }
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

    /// The writer takes the next response in order; `nil` ends its turn (the next enqueue picks a writer again).
    func next() -> OutgoingResponse? {
        state.withLock { s in
            if s.queue.isEmpty || s.closed {
                s.draining = false
                s.queue.removeAll()
                return nil
            }
            return s.queue.removeFirst()
        }
    }

    func close() {
        state.withLock {
            $0.closed = true
            $0.queue.removeAll()
        }
    }

    func status() -> StreamStatus? {
        state.withLock { s in
            guard let node = s.node else { return nil }
            return StreamStatus(
                id: id, nodeID: node, protocol: M.name, peer: peer,
                types: s.machine.status(snapshot: s.snapshot).reduce(into: [:]) { $0[$1.key.shortName] = $1.value },
                endpoint: scope?.name)
        }
    }
}

/// The two protocols behind one interface, so one loop serves both.
protocol StreamMachine: Sendable {
    associatedtype Request: SwiftProtobuf.Message & Sendable
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
    mutating func receive(_ r: Envoy_Service_Discovery_V3_DiscoveryRequest, snapshot: Snapshot?) -> [OutgoingResponse] {
        stream.receive(r, snapshot: snapshot)
    }
    mutating func update(_ s: Snapshot) -> [OutgoingResponse] { stream.update(s) }
    func status(snapshot: Snapshot?) -> [ResourceType: TypeStatus] { stream.status(snapshot: snapshot) }
}

struct DeltaMachine: StreamMachine {
    var stream = DeltaStream()
    static let name = "delta"
    static func nodeID(of r: Envoy_Service_Discovery_V3_DeltaDiscoveryRequest) -> String? {
        r.hasNode ? r.node.id : nil
    }
    static func nack(in r: Envoy_Service_Discovery_V3_DeltaDiscoveryRequest) -> (ResourceType, String)? {
        guard r.hasErrorDetail, let t = ResourceType(rawValue: r.typeURL) else { return nil }
        return (t, r.errorDetail.message)
    }
    mutating func receive(_ r: Envoy_Service_Discovery_V3_DeltaDiscoveryRequest, snapshot: Snapshot?)
        -> [OutgoingResponse]
    { stream.receive(r, snapshot: snapshot) }
    mutating func update(_ s: Snapshot) -> [OutgoingResponse] { stream.update(s) }
    func status(snapshot: Snapshot?) -> [ResourceType: TypeStatus] { stream.status(snapshot: snapshot) }
}
