import EnvoyAPI
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import Logging
import Synchronization
import WeirMesh

/// Relays an upstream ADS control plane: one upstream state-of-the-world stream per node id (however many local
/// sidecars of that node connect), the resources cached as snapshots (and persisted), served to local sidecars from
/// the cache. Reconnects with backoff; keeps serving the last good config while the upstream is down; forwards local
/// NACKs upstream.
public final class UpstreamRelay: SnapshotSource {
    let upstream: XDSAddress
    let cache: SnapshotCache
    let logger: Logger
    struct NodeState {
        var task: Task<Void, Never>
        var box: NackBox
    }
    let nodes = Mutex<[String: NodeState]>([:])

    public init(upstream: XDSAddress, cache: SnapshotCache, logger: Logger = Logger(label: "weir.xds.relay")) {
        self.upstream = upstream
        self.cache = cache
        self.logger = logger
        // Nodes known from disk are refreshed from the upstream as soon as it answers.
        for node in cache.nodeIDs { start(node) }
    }

    /// A local sidecar of a node not seen before connected: open its upstream stream. Its config arrives in the cache.
    public func resources(for nodeID: String) -> Snapshot? {
        start(nodeID)
        return nil
    }

    public func forwardNack(node: String, type: ResourceType, message: String) {
        nodes.withLock { $0[node] }?.box.nack(type, message: message, logger: logger, node: node)
    }

    public func stop() {
        nodes.withLock { n in
            for s in n.values { s.task.cancel() }
            n.removeAll()
        }
    }

    func start(_ node: String) {
        nodes.withLock { n in
            guard n[node] == nil else { return }
            let box = NackBox()
            let task = Task { [self] in await self.run(node, nacks: box) }
            n[node] = NodeState(task: task, box: box)
        }
    }

    func run(_ node: String, nacks nackBox: NackBox) async {
        var backoff: Duration = .milliseconds(100)
        while !Task.isCancelled {
            let started = ContinuousClock.now
            do {
                try await session(node, nacks: nackBox)
            } catch {
                if Task.isCancelled { return }
                logger.warning(
                    "upstream stream ended; serving the cached config",
                    metadata: ["node": "\(node)", "error": "\(error)"])
            }
            if ContinuousClock.now - started > .seconds(10) { backoff = .milliseconds(100) }
            try? await Task.sleep(for: backoff)
            backoff = min(backoff * 2, .seconds(5))
        }
    }

    /// One upstream stream for one node: wildcard CDS and LDS, then the EDS and RDS names they reference.
    func session(_ node: String, nacks: NackBox) async throws {
        let target: any ResolvableTarget
        switch upstream {
        case .unix(let path): target = .unixDomainSocket(path: path)
        case .tcp(let e):
            target =
                e.family == .ipv4
                ? .ipv4(address: e.host, port: Int(e.port)) : .ipv6(address: e.host, port: Int(e.port))
        }
        let transport = try HTTP2ClientTransport.Posix(target: target, transportSecurity: .plaintext)
        try await withGRPCClient(transport: transport) { client in
            let ads = Envoy_Service_Discovery_V3_AggregatedDiscoveryService.Client(wrapping: client)
            let (outgoing, send) = AsyncStream<Envoy_Service_Discovery_V3_DiscoveryRequest>.makeStream()
            var first = Envoy_Service_Discovery_V3_DiscoveryRequest()
            first.node.id = node
            first.node.userAgentName = "weir-relay"
            first.typeURL = ResourceType.cluster.rawValue
            send.yield(first)
            var lds = Envoy_Service_Discovery_V3_DiscoveryRequest()
            lds.typeURL = ResourceType.listener.rawValue
            send.yield(lds)
            nacks.reset()  // nonces belong to one stream: a new stream starts without them
            nacks.attach(send)
            defer {
                nacks.attach(nil)
                send.finish()
            }
            try await ads.streamAggregatedResources(
                requestProducer: { writer in
                    for await r in outgoing { try await writer.write(r) }
                },
                onResponse: { [self] response in
                    var resources: [ResourceType: [String: VersionedResource]] = [:]
                    var subscribed: [ResourceType: Set<String>] = [:]
                    if let s = cache.snapshot(for: node) { resources = s.resources }  // start from what we serve
                    var fresh = Set<ResourceType>()
                    for try await message in response.messages {
                        guard let type = ResourceType(rawValue: message.typeURL) else { continue }
                        var byName: [String: VersionedResource] =
                            type.isFullState || !fresh.contains(type) ? [:] : (resources[type] ?? [:])
                        for any in message.resources {
                            guard let name = Self.name(of: type, any.value) else { continue }
                            byName[name] = VersionedResource(name: name, bytes: Array(any.value))
                        }
                        if !type.isFullState {
                            byName.merge(
                                resources[type]?.filter {
                                    subscribed[type]?.contains($0.key) == true && byName[$0.key] == nil
                                } ?? [:]
                            ) { a, _ in a }
                        }
                        resources[type] = byName
                        fresh.insert(type)
                        var ack = Envoy_Service_Discovery_V3_DiscoveryRequest()
                        ack.typeURL = type.rawValue
                        ack.versionInfo = message.versionInfo
                        ack.responseNonce = message.nonce
                        // Follow references: the route configurations listeners name, the endpoints clusters name.
                        if type == .listener || type == .cluster {
                            let wanted: ResourceType = type == .listener ? .route : .endpoint
                            let names = Set(
                                byName.values.flatMap { r -> [String] in
                                    if type == .listener {
                                        return (try? Envoy_Config_Listener_V3_Listener(serializedBytes: r.bytes)).map(
                                            Snapshot.routeNames(of:)) ?? []
                                    }
                                    return (try? Envoy_Config_Cluster_V3_Cluster(serializedBytes: r.bytes)).flatMap(
                                        Snapshot.endpointName(of:)
                                    ).map { [$0] } ?? []
                                })
                            if names != subscribed[wanted] ?? [] {
                                subscribed[wanted] = names
                                var sub = Envoy_Service_Discovery_V3_DiscoveryRequest()
                                sub.typeURL = wanted.rawValue
                                sub.resourceNames = names.sorted()
                                if let st = nacks.state(wanted) {
                                    sub.versionInfo = st.ackedVersion
                                    sub.responseNonce = st.nonce
                                }
                                send.yield(sub)
                                nacks.record(
                                    wanted, nonce: nacks.state(wanted)?.nonce ?? "",
                                    version: nacks.state(wanted)?.ackedVersion ?? "", names: names.sorted())
                            }
                            ack.resourceNames = []
                        } else {
                            ack.resourceNames = (subscribed[type] ?? []).sorted()
                        }
                        send.yield(ack)
                        nacks.record(type, nonce: message.nonce, version: message.versionInfo, names: ack.resourceNames)
                        // Publish once the set is consistent (clusters' endpoints and listeners' routes are all here).
                        let snapshot = Snapshot(resources: resources.mapValues { $0.filter { _ in true } })
                        if snapshot.consistencyProblems().isEmpty {
                            do { try cache.set(node, snapshot) } catch { logger.warning("\(error)") }
                        }
                    }
                })
        }
    }

    static func name(of type: ResourceType, _ bytes: Data) -> String? {
        switch type {
        case .listener: return (try? Envoy_Config_Listener_V3_Listener(serializedBytes: bytes))?.name
        case .cluster: return (try? Envoy_Config_Cluster_V3_Cluster(serializedBytes: bytes))?.name
        case .route: return (try? Envoy_Config_Route_V3_RouteConfiguration(serializedBytes: bytes))?.name
        case .endpoint:
            return (try? Envoy_Config_Endpoint_V3_ClusterLoadAssignment(serializedBytes: bytes))?.clusterName
        }
    }
}

/// Per type, what the upstream last sent a node (to answer on its nonce), and the current session's request sink,
/// so a local sidecar's NACK is forwarded upstream.
final class NackBox: Sendable {
    struct TypeState: Sendable {
        var nonce: String
        var ackedVersion: String
        var names: [String]
    }
    let states = Mutex<[ResourceType: TypeState]>([:])
    let sink = Mutex<AsyncStream<Envoy_Service_Discovery_V3_DiscoveryRequest>.Continuation?>(nil)

    func reset() { states.withLock { $0.removeAll() } }
    func attach(_ s: AsyncStream<Envoy_Service_Discovery_V3_DiscoveryRequest>.Continuation?) {
        sink.withLock { $0 = s }
    }
    func state(_ t: ResourceType) -> TypeState? { states.withLock { $0[t] } }
    func record(_ t: ResourceType, nonce: String, version: String, names: [String]) {
        states.withLock { $0[t] = TypeState(nonce: nonce, ackedVersion: version, names: names) }
    }

    /// A local sidecar rejected what the upstream sent: tell the upstream, on that type's last nonce.
    func nack(_ type: ResourceType, message: String, logger: Logger, node: String) {
        guard let st = state(type), let sink = sink.withLock({ $0 }) else { return }
        var r = Envoy_Service_Discovery_V3_DiscoveryRequest()
        r.typeURL = type.rawValue
        r.versionInfo = st.ackedVersion
        r.responseNonce = st.nonce
        r.resourceNames = st.names
        r.errorDetail.code = 3  // INVALID_ARGUMENT, as Envoy reports a rejected config
        r.errorDetail.message = message
        sink.yield(r)
        logger.info("forwarded a local NACK upstream", metadata: ["node": "\(node)", "type": "\(type.shortName)"])
    }
}
