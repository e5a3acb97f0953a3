import EnvoyAPI
import Foundation
import SwiftProtobuf
import Synchronization

/// Compiles App Mesh manifests, per virtual node, into the Envoy resources App Mesh's control plane gave that node's
/// Envoy: an ingress listener for redirected inbound traffic, an egress listener for the node's backends, their route
/// configurations and clusters, and `api_listener`s for proxyless gRPC clients. Pure: no I/O.
public struct MeshCompiler: Sendable {
    public struct Options: Sendable, Hashable {
        /// Where redirected inbound traffic arrives (App Mesh's `APPMESH_ENVOY_INGRESS_PORT`).
        public var ingressPort: UInt16 = 15000
        /// Where redirected outbound traffic arrives (App Mesh's `APPMESH_ENVOY_EGRESS_PORT`).
        public var egressPort: UInt16 = 15001
        /// Where the local application listens (its listener ports), seen from Envoy (`::1` in an IPv6_ONLY mesh).
        public var localAppAddress = "127.0.0.1"
        /// The SDS server's Unix socket, for certificates and trust given as `sds` (App Mesh's `APPMESH_SDS_SOCKET_PATH`,
        /// where the SPIRE agent listens).
        public var sdsSocketPath = "/run/spire/sockets/agent.sock"
        public init() {}
    }

    public var manifests: MeshManifests {
        didSet {
            routesByGateway = Self.routesByGateway(manifests)
            index = ManifestIndex(manifests)
            token = Self.newToken()
        }
    }
    public var options: Options { didSet { token = Self.newToken() } }
    /// Names this compiler's manifests and options, new with every change of either: what the memo checked under one
    /// token holds for every node compiled under it.
    private(set) var token = MeshCompiler.newToken()
    static let tokens = Atomic<UInt64>(0)
    static func newToken() -> UInt64 { tokens.add(1, ordering: .relaxed).newValue }
    /// Shares what does not depend on the node being compiled across nodes and reloads (nil: build everything).
    public var memo: CompileMemo?
    /// Each virtual gateway's routes, found once rather than by every gateway's compile.
    private(set) var routesByGateway: [ResourceRef: [GatewayRoute]]
    /// The manifests' objects by reference: every node's compile looks up each backend's service, router and targets.
    private(set) var index: ManifestIndex

    public init(_ manifests: MeshManifests, options: Options = Options()) {
        self.manifests = manifests
        self.options = options
        routesByGateway = Self.routesByGateway(manifests)
        index = ManifestIndex(manifests)
    }

    /// Positions of the manifests' objects by reference (the first object with a reference, as a linear search finds).
    struct ManifestIndex: Sendable {
        var nodes: [ResourceRef: Int] = [:]
        var services: [ResourceRef: Int] = [:]
        var routers: [ResourceRef: Int] = [:]
        /// Virtual nodes by `awsName` (App Mesh node ids name a node by its mesh and awsName).
        var nodesByAWSName: [String: [Int]] = [:]
        init(_ m: MeshManifests) {
            for (i, n) in m.virtualNodes.enumerated() {
                if nodes[n.ref] == nil { nodes[n.ref] = i }
                nodesByAWSName[n.awsName, default: []].append(i)
            }
            for (i, s) in m.virtualServices.enumerated() where services[s.ref] == nil { services[s.ref] = i }
            for (i, r) in m.virtualRouters.enumerated() where routers[r.ref] == nil { routers[r.ref] = i }
        }
    }

    func virtualNode(_ ref: ResourceRef) -> VirtualNode? { index.nodes[ref].map { manifests.virtualNodes[$0] } }
    func virtualService(_ ref: ResourceRef) -> VirtualService? {
        index.services[ref].map { manifests.virtualServices[$0] }
    }
    func virtualRouter(_ ref: ResourceRef) -> VirtualRouter? { index.routers[ref].map { manifests.virtualRouters[$0] } }

    /// The virtual node an Envoy with this identity serves: `MeshManifests.virtualNode(for:)`, by the index.
    public func virtualNode(for identity: NodeIdentity) -> VirtualNode? {
        switch identity {
        case .kubernetes(let ref): return virtualNode(ref)
        case .appMesh(let mesh, let awsName):
            return (index.nodesByAWSName[awsName] ?? []).lazy.map { manifests.virtualNodes[$0] }
                .first { manifests.meshAWSName(of: $0) == mesh }
        case .appMeshGateway: return nil
        }
    }

    /// The routes of each gateway, in manifest order. A route that `MeshManifests.gateways(of:)` gives no gateway
    /// or several belongs to none (the reader refuses such manifests).
    static func routesByGateway(_ m: MeshManifests) -> [ResourceRef: [GatewayRoute]] {
        var out: [ResourceRef: [GatewayRoute]] = [:]
        for route in m.gatewayRoutes {
            let gateways = m.gateways(of: route)
            if gateways.count == 1 { out[gateways[0].ref, default: []].append(route) }
        }
        return out
    }

    /// The clusters of a node's own application, `local_app_PORT`, one per virtual-node listener.
    public static let localAppClusterPrefix = "local_app_"
    static let blackholeCluster = "blackhole"
    static let ingressListener = "ingress", egressListener = "egress", passthroughCluster = "passthrough",
        sdsCluster = "weir_sds"
    static let adsSource: Envoy_Config_Core_V3_ConfigSource = {
        var s = Envoy_Config_Core_V3_ConfigSource()
        s.ads = Envoy_Config_Core_V3_AggregatedConfigSource()
        s.resourceApiVersion = .v3
        return s
    }()

    /// The resources for the Envoy (or proxyless gRPC client) whose `node.id` is `nodeID`.
    public func compile(nodeID: String) throws(MeshError) -> EnvoyResources {
        let identity: NodeIdentity
        do { identity = try NodeIdentity.parse(nodeID) } catch {
            throw MeshError(problems: [
                MeshProblem(
                    location: SourceLocation(file: "(node)", line: 0, field: "node.id"), message: error.description)
            ])
        }
        if let node = virtualNode(for: identity) { return try compile(node) }
        if let gateway = manifests.virtualGateway(for: identity) { return try compile(gateway) }
        throw MeshError(problems: [
            MeshProblem(
                location: SourceLocation(file: "(node)", line: 0, field: "node.id"),
                message: "no virtual node or virtual gateway in the manifests answers to node id '\(nodeID)'")
        ])
    }

    /// Every node id the manifests define, in App Mesh's form where the node's mesh is known.
    public var nodeIDs: [String] {
        manifests.virtualNodes.map { n in
            if let mesh = manifests.meshAWSName(of: n) { return "mesh/\(mesh)/virtualNode/\(n.awsName)" }
            return "\(n.ref.namespace)/\(n.ref.name)"
        }
            + manifests.virtualGateways.map { g in
                if let mesh = manifests.meshAWSName(of: g) { return "mesh/\(mesh)/virtualGateway/\(g.awsName)" }
                return "\(g.ref.namespace)/\(g.ref.name)"
            }
    }

    public func compile(_ node: VirtualNode) throws(MeshError) -> EnvoyResources {
        var b = Builder(compiler: self, node: node, meshName: manifests.meshName(of: node), accessLog: node.accessLog)
        b.build()
        if !b.problems.isEmpty { throw MeshError(problems: b.problems) }
        return b.out
    }

    /// A virtual gateway: one listener per gateway listener port, its gateway routes (those it selects, see
    /// `MeshManifests.gateways(of:)`) as routes to the target virtual services, through their routers' routes.
    public func compile(_ gateway: VirtualGateway) throws(MeshError) -> EnvoyResources {
        let mesh = manifests.meshName(of: gateway)
        var b = Builder(compiler: self, node: nil, meshName: mesh, accessLog: gateway.accessLog)
        b.buildGateway(gateway)
        b.finish()
        if !b.problems.isEmpty { throw MeshError(problems: b.problems) }
        return b.out
    }

    /// Everything the compiler needs while building one node's resources.
    struct Builder {
        let compiler: MeshCompiler
        /// The virtual node being compiled (nil for a virtual gateway).
        let node: VirtualNode!
        let meshName: String?
        let accessLog: AccessLog?
        var out = EnvoyResources()
        var problems: [MeshProblem] = []
        var clusterNames = Set<String>()
        /// Target clusters resolved by DNS (STRICT_DNS), by name: proxyless routes use a LOGICAL_DNS twin of each.
        var dnsClusters: [String: Envoy_Config_Cluster_V3_Cluster] = [:]
        /// Whether a TLS context takes a certificate or trust from SDS (then the SDS server's cluster is added).
        var usesSDS = false
        /// While one backend's unit is built: what `addHost` and `addTCP` placed, for the node's builder to place.
        var contributions: [CompileMemo.BackendUnit.Contribution]?

        init(compiler: MeshCompiler, node: VirtualNode?, meshName: String?, accessLog: AccessLog?) {
            self.compiler = compiler
            self.node = node
            self.meshName = meshName
            self.accessLog = accessLog
        }

        var m: MeshManifests { compiler.manifests }
        var mesh: Mesh? { m.meshes.first { $0.name == meshName } }
        var dropAll: Bool { mesh?.egressDropAll ?? true }
        /// Listeners bind every address of the mesh's family: `::` (with IPv4 mapped) once the mesh states a preference.
        var anyAddress: String { mesh?.ipPreference == nil ? "0.0.0.0" : "::" }
        var localAppAddress: String { mesh?.ipPreference == .ipv6Only ? "::1" : compiler.options.localAppAddress }

        mutating func problem(_ loc: SourceLocation, _ message: String) {
            problems.append(MeshProblem(location: loc, message: message))
        }

        mutating func build() {
            buildIngress()
            buildEgress()
            finish()
        }

        /// What every node's resources end with: the SDS cluster if a TLS context uses it, and a stable order.
        mutating func finish() {
            if usesSDS { addSDSCluster() }
            out.clusters.sort { $0.name < $1.name }
            out.endpoints.sort { $0.clusterName < $1.clusterName }
            out.routes.sort { $0.name < $1.name }
        }

        // MARK: ingress

        mutating func buildIngress() {
            // A node without listeners (a client) takes no inbound traffic: Envoy refuses a listener without filter
            // chains, and that NACK would hold back the node's other listeners' updates too.
            guard !node.listeners.isEmpty else { return }
            guard let memo = compiler.memo else { return addIngress() }
            let part = memo.ingress(node, mesh: mesh, options: compiler.options, accessLog: accessLog) { [self] in
                var sub = Builder(compiler: compiler, node: node, meshName: meshName, accessLog: accessLog)
                sub.addIngress()
                sub.encodeAll()
                return CompileMemo.IngressPart(
                    node: node, mesh: mesh, options: compiler.options, accessLog: accessLog, out: sub.out,
                    usesSDS: sub.usesSDS, problems: sub.problems)
            }
            // The ingress is the node's first part: its resources so far are the part's.
            out = part.out
            for c in part.out.clusters { clusterNames.insert(c.name) }
            usesSDS = usesSDS || part.usesSDS
            problems += part.problems
        }

        /// Every resource built so far serialized into the encodings (route configurations as their virtual hosts),
        /// for a part the memo keeps.
        mutating func encodeAll() {
            for l in out.listeners { out.encodings.listeners[l.name] = try? l.serializedBytes() }
            for c in out.clusters { out.encodings.clusters[c.name] = try? c.serializedBytes() }
            for e in out.endpoints { out.encodings.endpoints[e.clusterName] = try? e.serializedBytes() }
            for r in out.routes {
                let hosts = r.virtualHosts.compactMap { (h) -> [UInt8]? in try? h.serializedBytes() }
                // Only a configuration of a name and virtual hosts is composed from its hosts.
                var bare = Envoy_Config_Route_V3_RouteConfiguration()
                bare.name = r.name
                bare.virtualHosts = r.virtualHosts
                if hosts.count == r.virtualHosts.count && bare == r { out.routeEncodings[r.name] = hosts }
            }
        }

        /// The ingress listener, its route configurations and the local application's clusters.
        mutating func addIngress() {
            var listener = Envoy_Config_Listener_V3_Listener()
            listener.name = MeshCompiler.ingressListener
            listener.address = listenAddress(compiler.options.ingressPort)
            listener.trafficDirection = .inbound
            listener.listenerFilters = [originalDst()]
            for l in node.listeners {
                let port = l.portMapping.port
                let cluster = "\(MeshCompiler.localAppClusterPrefix)\(port)"
                addLocalCluster(cluster, l)
                var chain = Envoy_Config_Listener_V3_FilterChain()
                chain.name = "ingress_\(port)"
                chain.filterChainMatch.destinationPort = Google_Protobuf_UInt32Value(UInt32(port))
                if l.portMapping.protocol == .tcp {
                    var tcp = Envoy_Extensions_Filters_Network_TcpProxy_V3_TcpProxy()
                    tcp.statPrefix = "ingress_\(port)"
                    tcp.cluster = cluster
                    if let idle = l.idleTimeoutMilliseconds { tcp.idleTimeout = duration(milliseconds: idle) }
                    tcp.accessLog = accessLogs
                    chain.filters = [filter("envoy.filters.network.tcp_proxy", tcp)]
                } else {
                    let routeName = "ingress_\(port)"
                    var route = Envoy_Config_Route_V3_Route()
                    route.name = "ingress"
                    route.match.prefix = "/"
                    route.route.cluster = cluster
                    if let t = l.perRequestTimeoutMilliseconds { route.route.timeout = duration(milliseconds: t) }
                    if let t = l.idleTimeoutMilliseconds { route.route.idleTimeout = duration(milliseconds: t) }
                    var vhost = Envoy_Config_Route_V3_VirtualHost()
                    vhost.name = "ingress_\(port)"
                    vhost.domains = ["*"]
                    vhost.routes = [route]
                    var rc = Envoy_Config_Route_V3_RouteConfiguration()
                    rc.name = routeName
                    rc.virtualHosts = [vhost]
                    out.routes.append(rc)
                    chain.filters = [
                        filter(
                            "envoy.filters.network.http_connection_manager",
                            httpConnectionManager(
                                statPrefix: "ingress_\(port)", routeConfig: routeName,
                                idleMilliseconds: l.idleTimeoutMilliseconds))
                    ]
                }
                addChains(chain, tls: l.tls, protocol: l.portMapping.protocol, to: &listener)
            }
            out.listeners.append(listener)
        }

        mutating func addLocalCluster(_ name: String, _ l: NodeListener) {
            var c = Envoy_Config_Cluster_V3_Cluster()
            c.name = name
            c.type = .static
            c.connectTimeout = duration(milliseconds: 1000)
            c.loadAssignment = loadAssignment(name, [(localAppAddress, l.portMapping.port)])
            if l.portMapping.protocol != .tcp && l.portMapping.protocol != .http {
                c.typedExtensionProtocolOptions = http2Options()
            }
            if let pool = l.connectionPool { c.circuitBreakers.thresholds = [circuitBreaker(pool)] }
            out.clusters.append(c)
            clusterNames.insert(name)
        }

        /// A connection pool's limits as circuit-breaker thresholds.
        func circuitBreaker(_ pool: ConnectionPool) -> Envoy_Config_Cluster_V3_CircuitBreakers.Thresholds {
            var t = Envoy_Config_Cluster_V3_CircuitBreakers.Thresholds()
            if let v = pool.maxConnections { t.maxConnections = Google_Protobuf_UInt32Value(UInt32(clamping: v)) }
            if let v = pool.maxPendingRequests {
                t.maxPendingRequests = Google_Protobuf_UInt32Value(UInt32(clamping: v))
            }
            if let v = pool.maxRequests { t.maxRequests = Google_Protobuf_UInt32Value(UInt32(clamping: v)) }
            return t
        }

        // MARK: egress

        /// What one backend port carries: HTTP-family virtual hosts, or one TCP service.
        struct PortPlan {
            var proto: PortProtocol
            var hosts: [Envoy_Config_Route_V3_VirtualHost] = []
            /// Each of `hosts` serialized, as its unit encoded it once (see `EnvoyResources.routeEncodings`).
            var hostEncodings: [[UInt8]] = []
            var tcpTargets: [(cluster: String, weight: Int)] = []
            var tcpIdleMilliseconds: Int?
            var owner: String
        }

        mutating func buildEgress() {
            var ports: [UInt16: PortPlan] = [:]
            for backend in node.backends { place(backendUnit(backend), &ports) }
            if !dropAll { addPassthroughCluster() }
            let order = ports.keys.sorted()
            for port in order where ports[port]!.proto != .tcp {
                let plan = ports[port]!
                var rc = Envoy_Config_Route_V3_RouteConfiguration()
                rc.name = "egress_\(port)"
                rc.virtualHosts = plan.hosts
                var encodings = plan.hostEncodings
                if !dropAll {
                    // ALLOW_ALL: HTTP to a host the mesh does not know goes where it was going.
                    rc.virtualHosts.append(Self.allowAll.host)
                    encodings.append(Self.allowAll.bytes)
                }
                if encodings.count == rc.virtualHosts.count { out.routeEncodings[rc.name] = encodings }
                out.routes.append(rc)
            }
            if dropAll && ports.isEmpty {
                // DROP_ALL and no backends: every outbound connection is refused. Envoy rejects a listener with no
                // filter chain, so the one chain sends everything to a cluster with no endpoints (reset at once).
                var c = Envoy_Config_Cluster_V3_Cluster()
                c.name = MeshCompiler.blackholeCluster
                c.type = .static
                c.connectTimeout = duration(milliseconds: 1000)
                c.loadAssignment.clusterName = c.name
                out.clusters.append(c)
                clusterNames.insert(c.name)
            }
            // The listener depends on the ports' shape only (not on their virtual hosts): nodes alike share one.
            let shape = CompileMemo.EgressShape(
                address: anyAddress, port: compiler.options.egressPort, dropAll: dropAll, accessLog: accessLog,
                ports: order.map { port in
                    let plan = ports[port]!
                    return CompileMemo.EgressShape.Port(
                        port: port, tcp: plan.proto == .tcp, targets: plan.tcpTargets.map(\.cluster),
                        weights: plan.tcpTargets.map(\.weight), idleMilliseconds: plan.tcpIdleMilliseconds)
                })
            guard let memo = compiler.memo else { return out.listeners.append(egressListener(shape)) }
            let built = memo.egressListener(shape) { CompileMemo.EgressListener(egressListener(shape)) }
            out.listeners.append(built.listener)
            if let b = built.bytes { out.encodings.listeners[built.listener.name] = b }
        }

        /// The egress listener: a filter chain per backend port (tcp_proxy, or an HTTP connection manager with the
        /// port's route configuration), then ALLOW_ALL's passthrough or DROP_ALL's refusal.
        func egressListener(_ shape: CompileMemo.EgressShape) -> Envoy_Config_Listener_V3_Listener {
            var listener = Envoy_Config_Listener_V3_Listener()
            listener.name = MeshCompiler.egressListener
            listener.address = listenAddress(shape.port)
            listener.trafficDirection = .outbound
            listener.listenerFilters = [originalDst()]
            for p in shape.ports {
                let port = p.port
                var chain = Envoy_Config_Listener_V3_FilterChain()
                chain.name = "egress_\(port)"
                chain.filterChainMatch.destinationPort = Google_Protobuf_UInt32Value(UInt32(port))
                if p.tcp {
                    var tcp = Envoy_Extensions_Filters_Network_TcpProxy_V3_TcpProxy()
                    tcp.statPrefix = "egress_\(port)"
                    if p.targets.count == 1 {
                        tcp.cluster = p.targets[0]
                    } else {
                        tcp.weightedClusters.clusters = zip(p.targets, p.weights).map { name, weight in
                            var w = Envoy_Extensions_Filters_Network_TcpProxy_V3_TcpProxy.WeightedCluster
                                .ClusterWeight()
                            w.name = name
                            w.weight = UInt32(weight)
                            return w
                        }
                    }
                    if let idle = p.idleMilliseconds { tcp.idleTimeout = duration(milliseconds: idle) }
                    tcp.accessLog = accessLogs
                    chain.filters = [filter("envoy.filters.network.tcp_proxy", tcp)]
                } else {
                    chain.filters = [
                        filter(
                            "envoy.filters.network.http_connection_manager",
                            httpConnectionManager(
                                statPrefix: "egress_\(port)", routeConfig: "egress_\(port)", idleMilliseconds: nil))
                    ]
                }
                listener.filterChains.append(chain)
            }
            if !shape.dropAll {
                listener.defaultFilterChain = tcpProxyChain("passthrough", to: MeshCompiler.passthroughCluster)
            } else if listener.filterChains.isEmpty {
                listener.defaultFilterChain = tcpProxyChain("drop_all", to: MeshCompiler.blackholeCluster)
            }
            return listener
        }

        /// The egress `allow_all` virtual host (ALLOW_ALL meshes) and its encoding: the same for every node.
        static let allowAll: (host: Envoy_Config_Route_V3_VirtualHost, bytes: [UInt8]) = {
            var any = Envoy_Config_Route_V3_VirtualHost()
            any.name = "allow_all"
            any.domains = ["*"]
            var r = Envoy_Config_Route_V3_Route()
            r.name = "allow_all"
            r.match.prefix = "/"
            r.route.cluster = MeshCompiler.passthroughCluster
            any.routes = [r]
            return (any, try! any.serializedBytes())
        }()

        /// What one backend adds to the node's egress, built once and then taken from the memo for as long as what it
        /// reads is unchanged: a manifest change rebuilds only the backends it touches.
        func backendUnit(_ backend: Backend) -> CompileMemo.BackendUnit {
            let policy = node.clientTLS(for: backend)
            let service = compiler.virtualService(backend.service)
            let mesh = self.mesh
            // A unit does not depend on the node that has the backend, but for the problem a service without a
            // provider gives (it names the node): the other nodes with the same backend and policy share it.
            let key = CompileMemo.UnitKey(
                node: service != nil && service?.provider == nil ? node.ref : nil, backend: backend.service)
            // The closures are not kept (nothing of the builder is copied for them): most nodes take the unit from
            // the memo and call neither.
            guard let memo = compiler.memo else {
                return unit(backend, policy: policy, unitInputs(key, policy: policy, service: service, mesh: mesh))
            }
            return memo.backendUnit(
                key, token: compiler.token, policy: policy, mesh: mesh,
                inputs: { unitInputs(key, policy: policy, service: service, mesh: mesh) },
                build: { unit(backend, policy: policy, $0) })
        }

        /// What a backend's unit reads from the manifests.
        func unitInputs(_ key: CompileMemo.UnitKey, policy: ClientTLS?, service: VirtualService?, mesh: Mesh?)
            -> CompileMemo.BackendInputs
        {
            var inputs = CompileMemo.BackendInputs(
                node: key.node, backend: key.backend, policy: policy, service: service, mesh: mesh,
                options: compiler.options)
            switch service?.provider {
            case .virtualNode(let ref)?: inputs.targets = [compiler.virtualNode(ref)]
            case .virtualRouter(let ref)?:
                let router = compiler.virtualRouter(ref)
                inputs.router = router
                inputs.targets = (router?.routes ?? []).flatMap(\.targets).map { compiler.virtualNode($0.node) }
            case nil: break
            }
            return inputs
        }

        /// A backend's unit, built.
        func unit(_ backend: Backend, policy: ClientTLS?, _ inputs: CompileMemo.BackendInputs)
            -> CompileMemo.BackendUnit
        {
            var sub = Builder(compiler: compiler, node: node, meshName: meshName, accessLog: accessLog)
            sub.contributions = []
            var ports: [UInt16: PortPlan] = [:]
            sub.addBackend(backend, policy: policy, &ports)
            return CompileMemo.BackendUnit(
                inputs: inputs, checkedBy: compiler.token, contributions: sub.contributions ?? [],
                clusters: sub.out.clusters, endpoints: sub.out.endpoints, encodings: sub.out.encodings,
                namedOnly: sub.out.namedOnly, dnsClusters: sub.dnsClusters, usesSDS: sub.usesSDS,
                problems: sub.problems)
        }

        /// Places a backend's unit in the node's resources, as building it there would have: clusters other backends
        /// added already are not added twice, and a port that already carries another protocol family is refused.
        mutating func place(_ unit: CompileMemo.BackendUnit, _ ports: inout [UInt16: PortPlan]) {
            problems += unit.problems
            usesSDS = usesSDS || unit.usesSDS
            for c in unit.clusters where clusterNames.insert(c.name).inserted {
                out.clusters.append(c)
                if let b = unit.encodings.clusters[c.name] { out.encodings.clusters[c.name] = b }
                if unit.namedOnly.contains(c.name) { out.namedOnly.insert(c.name) }
                if let e = unit.endpoints.first(where: { $0.clusterName == c.name }) {
                    out.endpoints.append(e)
                    if let b = unit.encodings.endpoints[c.name] { out.encodings.endpoints[c.name] = b }
                }
            }
            dnsClusters.merge(unit.dnsClusters) { had, _ in had }
            for contribution in unit.contributions {
                switch contribution {
                case .host(let h):
                    guard placeable(host: h.proto, port: h.port, service: h.service, in: ports) else { continue }
                    ports[h.port, default: PortPlan(proto: h.proto, owner: h.service.awsName)].hosts.append(h.vhost)
                    out.routes.append(h.proxyless)
                    // Without encodings the port's configuration has fewer of them than hosts, and is serialized
                    // as a whole (see `buildEgress`).
                    if let encodings = h.encodings {
                        ports[h.port]!.hostEncodings.append(encodings.vhost)
                        out.routeEncodings[h.proxyless.name] = [encodings.proxyless]
                    }
                    out.listeners.append(h.api)
                    if let b = unit.encodings.listeners[h.api.name] { out.encodings.listeners[h.api.name] = b }
                    out.namedOnly.insert(h.api.name)
                case .tcp(let port, let service, let targets, let idle):
                    guard placeable(tcp: port, service: service, in: ports) else { continue }
                    var plan = PortPlan(proto: .tcp, owner: service.awsName)
                    plan.tcpTargets = targets
                    plan.tcpIdleMilliseconds = idle
                    ports[port] = plan
                }
            }
        }

        /// Whether `port` can take an HTTP-family virtual host (a problem if it carries tcp already).
        mutating func placeable(
            host proto: PortProtocol, port: UInt16, service: VirtualService, in ports: [UInt16: PortPlan]
        )
            -> Bool
        {
            guard let existing = ports[port], existing.proto == .tcp else { return true }
            problem(
                service.location,
                "port \(port) carries tcp for \(existing.owner) and \(proto.rawValue) for \(service.awsName); one port carries one protocol family"
            )
            return false
        }

        /// Whether `port` can take a tcp virtual service (a problem if it carries anything already).
        mutating func placeable(tcp port: UInt16, service: VirtualService, in ports: [UInt16: PortPlan]) -> Bool {
            guard let existing = ports[port] else { return true }
            problem(
                service.location,
                "port \(port) already carries \(existing.proto.rawValue) for \(existing.owner); a tcp virtual service (\(service.awsName)) needs a port of its own in a node's backends"
            )
            return false
        }

        /// One backend's virtual hosts, tcp services and clusters.
        mutating func addBackend(_ backend: Backend, policy: ClientTLS?, _ ports: inout [UInt16: PortPlan]) {
            guard let service = compiler.virtualService(backend.service) else { return }
            switch service.provider {
            case nil:
                problem(
                    service.location,
                    "virtual service \(service.ref) has no provider, so backend \(node.ref) cannot reach it")
            case .virtualNode(let ref):
                guard let target = compiler.virtualNode(ref) else { return }
                guard !target.listeners.isEmpty else {
                    problem(target.location, "virtual node \(ref) provides \(service.awsName) but has no listener")
                    return
                }
                for l in target.listeners {
                    let port = l.portMapping.port
                    let proto = l.portMapping.protocol
                    let cluster = addTargetCluster(
                        target, port: port, tls: policy?.applies(to: port) == true ? policy : nil)
                    if proto == .tcp {
                        addTCP(&ports, port: port, service: service, targets: [(cluster, 1)], idle: nil)
                    } else {
                        var route = Envoy_Config_Route_V3_Route()
                        route.name = "\(service.awsName)/\(target.ref.name)"
                        route.match.prefix = "/"
                        route.route.cluster = cluster
                        addHost(&ports, port: port, proto: proto, service: service, routes: [route])
                    }
                }
            case .virtualRouter(let ref):
                guard let router = compiler.virtualRouter(ref) else { return }
                for pm in router.listeners {
                    let routes = router.routes(for: pm)
                    let tls = policy?.applies(to: pm.port) == true ? policy : nil
                    if pm.protocol == .tcp {
                        guard let r = routes.first else {
                            problem(
                                router.location,
                                "tcp listener \(pm.port) of virtual router \(router.ref) has no tcpRoute")
                            continue
                        }
                        let targets = r.targets.filter { $0.weight > 0 }.map { t in
                            (addTargetCluster(t, port: pm.port, tls: tls), t.weight)
                        }
                        addTCP(
                            &ports, port: pm.port, service: service, targets: targets,
                            idle: r.idleTimeoutMilliseconds)
                    } else {
                        var envoyRoutes: [Envoy_Config_Route_V3_Route] = []
                        for r in routes {
                            envoyRoutes.append(httpRoute(r, router: router, port: pm.port, tls: tls))
                        }
                        addHost(&ports, port: pm.port, proto: pm.protocol, service: service, routes: envoyRoutes)
                    }
                }
            }
        }

        mutating func addHost(
            _ ports: inout [UInt16: PortPlan], port: UInt16, proto: PortProtocol, service: VirtualService,
            routes: [Envoy_Config_Route_V3_Route]
        ) {
            guard placeable(host: proto, port: port, service: service, in: ports) else { return }
            var vhost = Envoy_Config_Route_V3_VirtualHost()
            vhost.name = "\(service.awsName):\(port)"
            vhost.domains = [service.awsName, "\(service.awsName):\(port)"]
            vhost.routes = routes
            ports[port, default: PortPlan(proto: proto, owner: service.awsName)].hosts.append(vhost)

            // The same service for proxyless gRPC clients: xds:///<name>:<port>.
            let name = "\(service.awsName):\(port)"
            var rc = Envoy_Config_Route_V3_RouteConfiguration()
            rc.name = name
            var grpcHost = vhost
            grpcHost.domains = [name, service.awsName]
            grpcHost.routes = routes.map { proxylessRoute($0) }
            rc.virtualHosts = [grpcHost]
            out.routes.append(rc)
            var api = Envoy_Config_Listener_V3_Listener()
            api.name = name
            api.apiListener.apiListener = anyOf(
                httpConnectionManager(statPrefix: name, routeConfig: name, idleMilliseconds: nil, accessLog: false))
            out.listeners.append(api)
            out.namedOnly.insert(name)
            if contributions != nil {
                // Encoded once, with the unit: every node with this backend composes its route configurations'
                // bytes from these rather than serializing (and comparing) the same virtual hosts again.
                // A host that does not serialize here (it cannot, today) gets none: the memo then serializes its
                // configurations as they are, which reports the error.
                var encodings: (vhost: [UInt8], proxyless: [UInt8])?
                if let v: [UInt8] = try? vhost.serializedBytes(), let g: [UInt8] = try? grpcHost.serializedBytes() {
                    encodings = (v, g)
                }
                out.encodings.listeners[name] = try? api.serializedBytes()
                contributions?.append(
                    .host(
                        CompileMemo.Host(
                            port: port, proto: proto, service: service, vhost: vhost, proxyless: rc, api: api,
                            encodings: encodings)))
            }
        }

        /// gRPC's xDS client takes EDS and LOGICAL_DNS clusters but not STRICT_DNS ones: in the route a proxyless
        /// client gets, a target found by DNS hostname is a LOGICAL_DNS twin of its cluster (the same endpoint).
        mutating func proxylessRoute(_ route: Envoy_Config_Route_V3_Route) -> Envoy_Config_Route_V3_Route {
            guard case .route(var action) = route.action else { return route }
            switch action.clusterSpecifier {
            case .cluster(let name): action.cluster = logicalDNSTwin(name)
            case .weightedClusters(var w):
                for i in w.clusters.indices { w.clusters[i].name = logicalDNSTwin(w.clusters[i].name) }
                action.weightedClusters = w
            default: return route
            }
            var r = route
            r.route = action
            return r
        }

        /// The LOGICAL_DNS twin of a STRICT_DNS target cluster, added once and sent only to clients that ask for it
        /// by name (an Envoy sidecar's wildcard CDS does not get it); any other cluster name comes back as it is.
        mutating func logicalDNSTwin(_ name: String) -> String {
            guard let strict = dnsClusters[name] else { return name }
            let twin = name + "_logical_dns"
            if clusterNames.insert(twin).inserted {
                var c = strict
                c.name = twin
                c.type = .logicalDns
                c.loadAssignment.clusterName = twin
                out.clusters.append(c)
                out.namedOnly.insert(twin)
            }
            return twin
        }

        mutating func addTCP(
            _ ports: inout [UInt16: PortPlan], port: UInt16, service: VirtualService, targets: [(String, Int)],
            idle: Int?
        ) {
            guard placeable(tcp: port, service: service, in: ports) else { return }
            var plan = PortPlan(proto: .tcp, owner: service.awsName)
            plan.tcpTargets = targets.map { (cluster: $0.0, weight: $0.1) }
            plan.tcpIdleMilliseconds = idle
            ports[port] = plan
            contributions?.append(.tcp(port, service, plan.tcpTargets, idle))
        }

        mutating func addTargetCluster(_ t: WeightedTarget, port: UInt16, tls: ClientTLS?) -> String {
            guard let target = compiler.virtualNode(t.node) else { return "" }
            return addTargetCluster(target, port: t.port ?? target.listeners.first?.portMapping.port ?? port, tls: tls)
        }

        /// The cluster of a virtual node as a route target: its listener's health check and outlier detection,
        /// endpoints from its DNS service discovery (an IP literal gives EDS endpoints, a hostname a DNS cluster), and
        /// the caller's client TLS policy (a cluster of its own per policy).
        mutating func addTargetCluster(_ target: VirtualNode, port: UInt16, tls: ClientTLS?) -> String {
            let name = "vn_\(target.awsName)_\(port)" + (tls.map { "_tls_" + $0.fingerprint } ?? "")
            if tls != nil { usesSDS = usesSDS || tls!.usesSDS }
            guard clusterNames.insert(name).inserted else { return name }
            let family = dnsLookupFamily
            let built =
                compiler.memo?.targetCluster(target, port: port, tls: tls, family: family, name: name) {
                    targetCluster(target, port: port, name: name, tls: tls)
                } ?? targetCluster(target, port: port, name: name, tls: tls)
            out.clusters.append(built.cluster)
            if contributions != nil {
                out.encodings.clusters[name] = built.clusterBytes
                if built.endpoints != nil { out.encodings.endpoints[name] = built.endpointBytes }
            }
            if built.cluster.type == .strictDns { dnsClusters[name] = built.cluster }
            if let e = built.endpoints { out.endpoints.append(e) }
            return name
        }

        /// The DNS lookup family of the mesh's DNS clusters.
        var dnsLookupFamily: Envoy_Config_Cluster_V3_Cluster.DnsLookupFamily {
            switch mesh?.ipPreference {
            case .ipv4Only?: .v4Only
            case .ipv6Only?: .v6Only
            case nil: .v4Preferred
            }
        }

        func targetCluster(_ target: VirtualNode, port: UInt16, name: String, tls: ClientTLS?)
            -> CompileMemo.TargetCluster
        {
            var endpoints: Envoy_Config_Endpoint_V3_ClusterLoadAssignment?
            let listener = target.listeners.first { $0.portMapping.port == port } ?? target.listeners.first
            var c = Envoy_Config_Cluster_V3_Cluster()
            c.name = name
            c.connectTimeout = duration(milliseconds: 1000)
            let host = target.hostname
            switch (host, target.responseType) {
            case (let host?, nil) where IPAddressLiteral.isLiteral(host):
                c.type = .eds
            case (let host?, let response):
                // App Mesh's default is LOADBALANCER: one address at a time, as behind a load balancer.
                c.type = response == .endpoints ? .strictDns : .logicalDns
                c.dnsLookupFamily = dnsLookupFamily
                c.loadAssignment = loadAssignment(name, [(host, port)])
            case (nil, _):
                c.type = .eds
            }
            if c.type == .eds {
                c.edsClusterConfig.edsConfig = MeshCompiler.adsSource
                endpoints = loadAssignment(name, host.map { [($0, port)] } ?? [])
            }
            if let proto = listener?.portMapping.protocol, proto == .http2 || proto == .grpc {
                c.typedExtensionProtocolOptions = http2Options()
            }
            if let hc = listener?.healthCheck { c.healthChecks = [healthCheck(hc)] }
            if let o = listener?.outlierDetection {
                var od = Envoy_Config_Cluster_V3_OutlierDetection()
                od.consecutive5Xx = Google_Protobuf_UInt32Value(UInt32(clamping: o.maxServerErrors))
                od.interval = duration(milliseconds: o.intervalMilliseconds)
                od.baseEjectionTime = duration(milliseconds: o.baseEjectionMilliseconds)
                od.maxEjectionPercent = Google_Protobuf_UInt32Value(UInt32(clamping: o.maxEjectionPercent))
                od.enforcingConsecutive5Xx = Google_Protobuf_UInt32Value(100)
                od.enforcingSuccessRate = Google_Protobuf_UInt32Value(0)
                c.outlierDetection = od
            }
            if let tls {
                c.transportSocket = upstreamTLS(tls, target: target, protocol: listener?.portMapping.protocol ?? .http)
            }
            return CompileMemo.TargetCluster(
                target: target, tls: tls, family: dnsLookupFamily, cluster: c, endpoints: endpoints,
                encoded: compiler.memo != nil)
        }

        /// A filter chain named `name` that proxies every connection to `cluster`.
        func tcpProxyChain(_ name: String, to cluster: String) -> Envoy_Config_Listener_V3_FilterChain {
            var chain = Envoy_Config_Listener_V3_FilterChain()
            chain.name = name
            var tcp = Envoy_Extensions_Filters_Network_TcpProxy_V3_TcpProxy()
            tcp.statPrefix = name
            tcp.cluster = cluster
            chain.filters = [filter("envoy.filters.network.tcp_proxy", tcp)]
            return chain
        }

        mutating func addPassthroughCluster() {
            var c = Envoy_Config_Cluster_V3_Cluster()
            c.name = MeshCompiler.passthroughCluster
            c.type = .originalDst
            c.lbPolicy = .clusterProvided
            c.connectTimeout = duration(milliseconds: 1000)
            out.clusters.append(c)
            clusterNames.insert(c.name)
        }

        // MARK: routes

        mutating func httpRoute(_ r: RouteSpec, router: VirtualRouter, port: UInt16, tls: ClientTLS?)
            -> Envoy_Config_Route_V3_Route
        {
            var route = Envoy_Config_Route_V3_Route()
            route.name = "\(router.awsName)/\(r.name)"
            var match = Envoy_Config_Route_V3_RouteMatch()
            if r.kind == .grpc {
                if let s = r.grpcService {
                    if let method = r.grpcMethod { match.path = "/\(s)/\(method)" } else { match.prefix = "/\(s)/" }
                } else {
                    match.prefix = "/"
                }
                match.grpc = Envoy_Config_Route_V3_RouteMatch.GrpcRouteMatchOptions()
            } else if let p = r.path {
                switch p {
                case .exact(let v): match.path = v
                case .regex(let v): match.safeRegex.regex = v
                default: match.prefix = "/"
                }
            } else {
                match.prefix = r.prefix ?? "/"
            }
            for (name, value) in [(":method", r.method), (":scheme", r.scheme)] {
                guard let value else { continue }
                var h = Envoy_Config_Route_V3_HeaderMatcher()
                h.name = name
                h.stringMatch.exact = value
                match.headers.append(h)
            }
            for h in r.headers { match.headers.append(headerMatcher(h)) }
            for q in r.query {
                var qm = Envoy_Config_Route_V3_QueryParameterMatcher()
                qm.name = q.name
                if let v = q.exact { qm.stringMatch.exact = v } else { qm.presentMatch = true }
                match.queryParameters.append(qm)
            }
            route.match = match
            var action = Envoy_Config_Route_V3_RouteAction()
            let targets = r.targets.filter { $0.weight > 0 }
            let clusters = targets.map { addTargetCluster($0, port: port, tls: tls) }
            if clusters.count == 1 {
                action.cluster = clusters[0]
            } else {
                action.weightedClusters.clusters = zip(targets, clusters).map { t, c in
                    var w = Envoy_Config_Route_V3_WeightedCluster.ClusterWeight()
                    w.name = c
                    w.weight = Google_Protobuf_UInt32Value(UInt32(t.weight))
                    return w
                }
            }
            if let t = r.perRequestTimeoutMilliseconds { action.timeout = duration(milliseconds: t) }
            if let t = r.idleTimeoutMilliseconds { action.idleTimeout = duration(milliseconds: t) }
            if let retry = r.retry { action.retryPolicy = retryPolicy(retry) }
            route.route = action
            return route
        }

        func headerMatcher(_ h: HeaderMatch) -> Envoy_Config_Route_V3_HeaderMatcher {
            var m = Envoy_Config_Route_V3_HeaderMatcher()
            m.name = h.name
            m.invertMatch = h.invert
            switch h.match {
            case nil: m.presentMatch = true
            case .exact(let v)?: m.stringMatch.exact = v
            case .prefix(let v)?: m.stringMatch.prefix = v
            case .suffix(let v)?: m.stringMatch.suffix = v
            case .regex(let v)?: m.stringMatch.safeRegex.regex = v
            case .range(let a, let b)?:
                var range = Envoy_Type_V3_Int64Range()
                range.start = Int64(a)
                range.end = Int64(b)
                m.rangeMatch = range
            }
            return m
        }

        /// App Mesh retry events to Envoy's `retry_on` conditions.
        func retryPolicy(_ r: RetryPolicy) -> Envoy_Config_Route_V3_RetryPolicy {
            var on: [String] = []
            for e in r.httpRetryEvents {
                switch e {
                case "server-error": on.append("5xx")
                case "gateway-error": on.append("gateway-error")
                case "client-error": on.append("retriable-4xx")
                case "stream-error": on.append("refused-stream")
                default: break
                }
            }
            if !r.tcpRetryEvents.isEmpty { on += ["connect-failure", "reset"] }
            on += r.grpcRetryEvents
            var p = Envoy_Config_Route_V3_RetryPolicy()
            p.retryOn = on.joined(separator: ",")
            p.numRetries = Google_Protobuf_UInt32Value(UInt32(clamping: r.maxRetries))
            p.perTryTimeout = duration(milliseconds: r.perRetryTimeoutMilliseconds)
            return p
        }

        // MARK: pieces

        var accessLogs: [Envoy_Config_Accesslog_V3_AccessLog] {
            guard let accessLog else { return [] }
            var file = Envoy_Extensions_AccessLoggers_File_V3_FileAccessLog()
            file.path = accessLog.path
            switch accessLog.format {
            case .text(let text)?:
                file.logFormat.textFormatSource.inlineString = text
            case .json(let pairs)?:
                var s = Google_Protobuf_Struct()
                for p in pairs { s.fields[p.key] = Google_Protobuf_Value(stringValue: p.value) }
                file.logFormat.jsonFormat = s
            case nil:
                break
            }
            var log = Envoy_Config_Accesslog_V3_AccessLog()
            log.name = "envoy.access_loggers.file"
            log.typedConfig = anyOf(file)
            return [log]
        }

        func httpConnectionManager(
            statPrefix: String, routeConfig: String, idleMilliseconds: Int?, accessLog: Bool = true
        )
            -> Envoy_Extensions_Filters_Network_HttpConnectionManager_V3_HttpConnectionManager
        {
            var hcm = Envoy_Extensions_Filters_Network_HttpConnectionManager_V3_HttpConnectionManager()
            hcm.statPrefix = statPrefix
            hcm.codecType = .auto
            hcm.rds.configSource = MeshCompiler.adsSource
            hcm.rds.routeConfigName = routeConfig
            var router = Envoy_Extensions_Filters_Network_HttpConnectionManager_V3_HttpFilter()
            router.name = "envoy.filters.http.router"
            router.typedConfig = anyOf(Envoy_Extensions_Filters_Http_Router_V3_Router())
            hcm.httpFilters = [router]
            if let idle = idleMilliseconds { hcm.streamIdleTimeout = duration(milliseconds: idle) }
            if accessLog { hcm.accessLog = accessLogs }
            return hcm
        }

        func filter<M: SwiftProtobuf.Message>(_ name: String, _ config: M) -> Envoy_Config_Listener_V3_Filter {
            var f = Envoy_Config_Listener_V3_Filter()
            f.name = name
            f.typedConfig = anyOf(config)
            return f
        }

        func originalDst() -> Envoy_Config_Listener_V3_ListenerFilter {
            var f = Envoy_Config_Listener_V3_ListenerFilter()
            f.name = "envoy.filters.listener.original_dst"
            f.typedConfig = anyOf(Envoy_Extensions_Filters_Listener_OriginalDst_V3_OriginalDst())
            return f
        }

        /// A listener's address: every address of the mesh's family, on `port`.
        func listenAddress(_ port: UInt16) -> Envoy_Config_Core_V3_Address {
            var a = socketAddress(anyAddress, port)
            if anyAddress == "::" { a.socketAddress.ipv4Compat = true }
            return a
        }

        func socketAddress(_ host: String, _ port: UInt16) -> Envoy_Config_Core_V3_Address {
            var a = Envoy_Config_Core_V3_Address()
            a.socketAddress.address = host
            a.socketAddress.portValue = UInt32(port)
            return a
        }

        func loadAssignment(_ name: String, _ endpoints: [(String, UInt16)])
            -> Envoy_Config_Endpoint_V3_ClusterLoadAssignment
        {
            var cla = Envoy_Config_Endpoint_V3_ClusterLoadAssignment()
            cla.clusterName = name
            if !endpoints.isEmpty {
                var locality = Envoy_Config_Endpoint_V3_LocalityLbEndpoints()
                // Proxyless gRPC needs a locality (an empty one will do) with a weight; Envoy ignores the weight unless
                // told to use locality weights.
                locality.locality = Envoy_Config_Core_V3_Locality()
                locality.loadBalancingWeight = Google_Protobuf_UInt32Value(1)
                locality.lbEndpoints = endpoints.map { host, port in
                    var e = Envoy_Config_Endpoint_V3_LbEndpoint()
                    e.endpoint.address = socketAddress(host, port)
                    return e
                }
                cla.endpoints = [locality]
            }
            return cla
        }

        func http2Options() -> [String: Google_Protobuf_Any] {
            var o = Envoy_Extensions_Upstreams_Http_V3_HttpProtocolOptions()
            o.explicitHTTPConfig.http2ProtocolOptions = Envoy_Config_Core_V3_Http2ProtocolOptions()
            return ["envoy.extensions.upstreams.http.v3.HttpProtocolOptions": anyOf(o)]
        }

        func healthCheck(_ h: HealthCheck) -> Envoy_Config_Core_V3_HealthCheck {
            var hc = Envoy_Config_Core_V3_HealthCheck()
            hc.timeout = duration(milliseconds: h.timeoutMilliseconds)
            hc.interval = duration(milliseconds: h.intervalMilliseconds)
            hc.healthyThreshold = Google_Protobuf_UInt32Value(UInt32(h.healthyThreshold))
            hc.unhealthyThreshold = Google_Protobuf_UInt32Value(UInt32(h.unhealthyThreshold))
            if let p = h.port { hc.altPort = Google_Protobuf_UInt32Value(UInt32(p)) }
            switch h.protocol {
            case .http: hc.httpHealthCheck.path = h.path ?? "/"
            case .http2:
                hc.httpHealthCheck.path = h.path ?? "/"
                hc.httpHealthCheck.codecClientType = .http2
            case .grpc: hc.grpcHealthCheck = Envoy_Config_Core_V3_HealthCheck.GrpcHealthCheck()
            case .tcp: hc.tcpHealthCheck = Envoy_Config_Core_V3_HealthCheck.TcpHealthCheck()
            }
            return hc
        }
    }
}

/// Whether a DNS service-discovery hostname is an IP address literal.
enum IPAddressLiteral {
    static func isLiteral(_ s: String) -> Bool {
        var v4 = in_addr()
        var v6 = in6_addr()
        return inet_pton(AF_INET, s, &v4) == 1 || inet_pton(AF_INET6, s, &v6) == 1
    }
}

/// What the compiler builds the same way for every node that uses it, kept across nodes and reloads: the cluster (and
/// endpoints) of a virtual node as a route target depends only on that virtual node and the port. A reused message is
/// the same value, so comparing it with the last one sent is immediate and it is not serialized again.
public final class CompileMemo: Sendable {
    /// Classes, not values: the memo hands them out per node and backend, for one retain each.
    public final class TargetCluster: Sendable {
        let target: VirtualNode
        let tls: ClientTLS?
        let family: Envoy_Config_Cluster_V3_Cluster.DnsLookupFamily
        let cluster: Envoy_Config_Cluster_V3_Cluster
        let endpoints: Envoy_Config_Endpoint_V3_ClusterLoadAssignment?
        /// The cluster and endpoints serialized once (with `encoded`; nil: not, or they do not serialize).
        let clusterBytes: [UInt8]?
        let endpointBytes: [UInt8]?
        init(
            target: VirtualNode, tls: ClientTLS?, family: Envoy_Config_Cluster_V3_Cluster.DnsLookupFamily,
            cluster: Envoy_Config_Cluster_V3_Cluster, endpoints: Envoy_Config_Endpoint_V3_ClusterLoadAssignment?,
            encoded: Bool
        ) {
            self.target = target
            self.tls = tls
            self.family = family
            self.cluster = cluster
            self.endpoints = endpoints
            clusterBytes = encoded ? try? cluster.serializedBytes() : nil
            endpointBytes = encoded ? try? endpoints?.serializedBytes() : nil
        }
    }
    struct Key: Hashable {
        var name: String
        var port: UInt16
    }
    let clusters = GenerationMap<Key, TargetCluster>()

    /// What a backend's unit reads from the manifests: while all of it is unchanged, so is the unit.
    public struct BackendInputs: Sendable, Hashable {
        /// The node, where the unit names it (nil: every node with this backend and policy gets the same unit).
        var node: ResourceRef?
        /// The backend's virtual service: what `addBackend` reads of the backend (its place in the node's manifest
        /// is not, so it is left out of the key).
        var backend: ResourceRef
        var policy: ClientTLS?
        var service: VirtualService?
        var mesh: Mesh?
        var options: MeshCompiler.Options
        var router: VirtualRouter?
        /// The provider virtual node, or every target of the router's routes (nil: not in the manifests).
        var targets: [VirtualNode?] = []
        init(
            node: ResourceRef?, backend: ResourceRef, policy: ClientTLS?, service: VirtualService?, mesh: Mesh?,
            options: MeshCompiler.Options
        ) {
            self.node = node
            self.backend = backend
            self.policy = policy
            self.service = service
            self.mesh = mesh
            self.options = options
        }
    }

    /// An HTTP-family port's part of a unit (a class: placed per node for one retain).
    final class Host: Sendable {
        let port: UInt16
        let proto: PortProtocol
        let service: VirtualService
        let vhost: Envoy_Config_Route_V3_VirtualHost
        let proxyless: Envoy_Config_Route_V3_RouteConfiguration
        let api: Envoy_Config_Listener_V3_Listener
        let encodings: (vhost: [UInt8], proxyless: [UInt8])?
        init(
            port: UInt16, proto: PortProtocol, service: VirtualService, vhost: Envoy_Config_Route_V3_VirtualHost,
            proxyless: Envoy_Config_Route_V3_RouteConfiguration, api: Envoy_Config_Listener_V3_Listener,
            encodings: (vhost: [UInt8], proxyless: [UInt8])?
        ) {
            self.port = port
            self.proto = proto
            self.service = service
            self.vhost = vhost
            self.proxyless = proxyless
            self.api = api
            self.encodings = encodings
        }
    }

    /// What one backend of a node adds to the node's resources.
    public final class BackendUnit: Sendable {
        enum Contribution: Sendable {
            /// An HTTP-family port: the egress virtual host, and the route configuration and `api_listener` of
            /// proxyless gRPC clients.
            /// With the encodings of the egress virtual host and of the proxyless route configuration's one host.
            case host(Host)
            case tcp(UInt16, VirtualService, [(cluster: String, weight: Int)], Int?)
        }
        let inputs: BackendInputs
        /// The token of the last compiler under which `inputs` were found to be what the unit read (see
        /// `backendUnit`).
        let checkedBy: Atomic<UInt64>
        let contributions: [Contribution]
        let clusters: [Envoy_Config_Cluster_V3_Cluster]
        let endpoints: [Envoy_Config_Endpoint_V3_ClusterLoadAssignment]
        /// The clusters', endpoints' and proxyless listeners' bytes (see `EnvoyResources.encodings`).
        let encodings: EnvoyResources.Encodings
        let namedOnly: Set<String>
        let dnsClusters: [String: Envoy_Config_Cluster_V3_Cluster]
        let usesSDS: Bool
        let problems: [MeshProblem]
        init(
            inputs: BackendInputs, checkedBy: UInt64, contributions: [Contribution],
            clusters: [Envoy_Config_Cluster_V3_Cluster], endpoints: [Envoy_Config_Endpoint_V3_ClusterLoadAssignment],
            encodings: EnvoyResources.Encodings, namedOnly: Set<String>,
            dnsClusters: [String: Envoy_Config_Cluster_V3_Cluster], usesSDS: Bool, problems: [MeshProblem]
        ) {
            self.inputs = inputs
            self.checkedBy = Atomic(checkedBy)
            self.contributions = contributions
            self.clusters = clusters
            self.endpoints = endpoints
            self.encodings = encodings
            self.namedOnly = namedOnly
            self.dnsClusters = dnsClusters
            self.usesSDS = usesSDS
            self.problems = problems
        }
    }
    struct UnitKey: Hashable {
        var node: ResourceRef?
        var backend: ResourceRef
    }
    let units = GenerationMap<UnitKey, BackendUnit>()

    /// A node's ingress (listener, route configurations, local clusters), with what it was built from.
    final class IngressPart: Sendable {
        let node: VirtualNode
        let mesh: Mesh?
        let options: MeshCompiler.Options
        let accessLog: AccessLog?
        let out: EnvoyResources
        let usesSDS: Bool
        let problems: [MeshProblem]
        init(
            node: VirtualNode, mesh: Mesh?, options: MeshCompiler.Options, accessLog: AccessLog?,
            out: EnvoyResources, usesSDS: Bool, problems: [MeshProblem]
        ) {
            self.node = node
            self.mesh = mesh
            self.options = options
            self.accessLog = accessLog
            self.out = out
            self.usesSDS = usesSDS
            self.problems = problems
        }
    }
    let ingresses = GenerationMap<ResourceRef, IngressPart>()

    func ingress(
        _ node: VirtualNode, mesh: Mesh?, options: MeshCompiler.Options, accessLog: AccessLog?,
        build: () -> IngressPart
    ) -> IngressPart {
        ingresses.value(
            for: node.ref,
            valid: { $0.node == node && $0.mesh == mesh && $0.options == options && $0.accessLog == accessLog },
            build: build)
    }

    /// What an egress listener is built from: everything it holds, so equal shapes are one listener.
    struct EgressShape: Hashable {
        struct Port: Hashable {
            var port: UInt16
            var tcp: Bool
            var targets: [String]
            var weights: [Int]
            var idleMilliseconds: Int?
        }
        var address: String
        var port: UInt16
        var dropAll: Bool
        var accessLog: AccessLog?
        var ports: [Port]
    }
    final class EgressListener: Sendable {
        let listener: Envoy_Config_Listener_V3_Listener
        let bytes: [UInt8]?
        init(_ listener: Envoy_Config_Listener_V3_Listener) {
            self.listener = listener
            bytes = try? listener.serializedBytes()
        }
    }
    let egressListeners = GenerationMap<EgressShape, EgressListener>()

    func egressListener(_ shape: EgressShape, build: () -> EgressListener) -> EgressListener {
        egressListeners.value(for: shape, valid: { _ in true }, build: build)
    }
    /// How many units were built rather than taken from the memo.
    let unitsBuilt = Atomic<Int>(0)

    public init() {}

    /// Starts a reload: what the previous one did not use is forgotten.
    public func beginGeneration() {
        clusters.beginGeneration()
        units.beginGeneration()
        ingresses.beginGeneration()
        egressListeners.beginGeneration()
    }

    /// A backend's unit: the one built before if it read the same, else a new one.
    ///
    /// Under one compiler token the manifests and options are fixed, so what a unit reads of them through its key
    /// (the service, its router, their targets) is the same for every node: once a unit's inputs are found equal
    /// under a token, the next nodes compare only what is theirs (the client policy and the mesh), and the inputs
    /// are not even gathered.
    func backendUnit(
        _ key: UnitKey, token: UInt64, policy: ClientTLS?, mesh: Mesh?, inputs: () -> BackendInputs,
        build: (BackendInputs) -> BackendUnit
    ) -> BackendUnit {
        var gathered: BackendInputs?
        return units.value(
            for: key,
            valid: { u in
                if u.checkedBy.load(ordering: .relaxed) == token {
                    return u.inputs.policy == policy && u.inputs.mesh == mesh
                }
                if gathered == nil { gathered = inputs() }
                guard u.inputs == gathered else { return false }
                u.checkedBy.store(token, ordering: .relaxed)
                return true
            }
        ) {
            unitsBuilt.add(1, ordering: .relaxed)
            return build(gathered ?? inputs())
        }
    }

    func targetCluster(
        _ target: VirtualNode, port: UInt16, tls: ClientTLS?, family: Envoy_Config_Cluster_V3_Cluster.DnsLookupFamily,
        name: String, build: () -> TargetCluster
    ) -> TargetCluster {
        clusters.value(
            for: Key(name: name, port: port), valid: { $0.target == target && $0.tls == tls && $0.family == family },
            build: build)
    }
}

/// Values kept across reloads, by key: what this reload used, and what the one before did. A value the previous
/// reload used is kept for this one if it is still valid; what neither used is dropped.
final class GenerationMap<Key: Hashable & Sendable, Value: Sendable>: Sendable {
    struct Generations {
        var current: [Key: Value] = [:]
        var previous: [Key: Value] = [:]
    }
    let state = Mutex(Generations())

    /// Starts a reload.
    func beginGeneration() {
        state.withLock {
            $0.previous = $0.current
            // Sized as the last reload's: filling it again does not rehash as it grows.
            $0.current = Dictionary(minimumCapacity: $0.previous.count)
        }
    }

    /// The value for `key` that `valid` accepts, from this reload or the one before, else `build()`'s (kept).
    func value(for key: Key, valid: (Value) -> Bool, build: () -> Value) -> Value {
        // Checked outside the lock: the other cores compile other nodes meanwhile.
        let (now, before) = state.withLock { ($0.current[key], $0.previous[key]) }
        if let now, valid(now) { return now }
        if let before, valid(before) {
            state.withLock { $0.current[key] = before }
            return before
        }
        let v = build()
        state.withLock { $0.current[key] = v }
        return v
    }

    /// What this reload has used so far.
    var count: Int { state.withLock { $0.current.count } }
}
