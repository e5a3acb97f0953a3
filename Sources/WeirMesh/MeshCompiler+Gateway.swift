import EnvoyAPI
import SwiftProtobuf

extension MeshCompiler.Builder {
    /// A virtual gateway: one listener per gateway listener port with the gateway routes it takes (those it selects,
    /// see `MeshManifests.gateways(of:)`, whose kind and `match.port` fit the listener), routed to the target virtual
    /// services through their routers' routes.
    mutating func buildGateway(_ gw: VirtualGateway) {
        let routes = (compiler.routesByGateway[gw.ref] ?? [])
            .enumerated().sorted { ($0.element.priority ?? 1001, $0.offset) < ($1.element.priority ?? 1001, $1.offset) }
            .map(\.element)
        var pools: [String: (port: UInt16, pool: ConnectionPool)] = [:]
        for l in gw.listeners {
            let port = l.portMapping.port
            var hosts: [String: Envoy_Config_Route_V3_VirtualHost] = [:]
            var order: [String] = []
            for gr in routes where gr.kind == l.portMapping.protocol && (gr.port == nil || gr.port == port) {
                let domains: [String]
                switch gr.hostname {
                case .exact(let h)?: domains = [h, "\(h):\(port)"]
                case .suffix(let s)?: domains = ["*\(s)", "*\(s):\(port)"]
                default: domains = ["*"]
                }
                let key = domains.joined(separator: ",")
                if hosts[key] == nil {
                    var v = Envoy_Config_Route_V3_VirtualHost()
                    v.name = "gateway_\(port)_\(domains[0])"
                    v.domains = domains
                    hosts[key] = v
                    order.append(key)
                }
                hosts[key]!.routes += gatewayRoutes(gr, gateway: gw)
            }
            // Specific hostnames first; Envoy picks the most specific domain anyway, the order keeps output stable.
            let name = "gateway_\(port)"
            var rc = Envoy_Config_Route_V3_RouteConfiguration()
            rc.name = name
            rc.virtualHosts = order.sorted { ($0 == "*" ? 1 : 0, $0) < ($1 == "*" ? 1 : 0, $1) }.map { hosts[$0]! }
            if let pool = l.connectionPool {
                limit(clustersOf: rc, to: pool, listenerPort: port, in: &pools, gateway: gw)
            }
            out.routes.append(rc)
            var listener = Envoy_Config_Listener_V3_Listener()
            listener.name = name
            listener.address = listenAddress(port)
            listener.trafficDirection = .inbound
            var chain = Envoy_Config_Listener_V3_FilterChain()
            chain.name = name
            chain.filters = [
                filter(
                    "envoy.filters.network.http_connection_manager",
                    httpConnectionManager(
                        statPrefix: name, routeConfig: name, idleMilliseconds: l.idleTimeoutMilliseconds))
            ]
            addChains(chain, tls: l.tls, protocol: l.portMapping.protocol, to: &listener)
            out.listeners.append(listener)
            if let hc = l.healthCheck { addSelfHealthCheck(l, hc) }
        }
    }

    /// A listener's `connectionPool`: circuit-breaker thresholds on every cluster its routes reach. Two listeners that
    /// reach one cluster with different pools cannot both be honoured, and are refused.
    mutating func limit(
        clustersOf rc: Envoy_Config_Route_V3_RouteConfiguration, to pool: ConnectionPool, listenerPort: UInt16,
        in pools: inout [String: (port: UInt16, pool: ConnectionPool)], gateway: VirtualGateway
    ) {
        var names: [String] = []
        for route in rc.virtualHosts.flatMap(\.routes) {
            guard case .route(let action)? = route.action else { continue }
            switch action.clusterSpecifier {
            case .cluster(let c)?: names.append(c)
            case .weightedClusters(let w)?: names += w.clusters.map(\.name)
            default: break
            }
        }
        for name in Set(names).sorted() {
            if let other = pools[name] {
                if other.pool != pool {
                    problem(
                        gateway.location,
                        "listeners \(other.port) and \(listenerPort) reach cluster \(name) with different connectionPools; give them the same pool or separate targets"
                    )
                }
                continue
            }
            pools[name] = (listenerPort, pool)
            guard let i = out.clusters.firstIndex(where: { $0.name == name }) else { continue }
            out.clusters[i].circuitBreakers.thresholds = [circuitBreaker(pool)]
        }
    }

    /// A gateway listener's `healthCheck`: as App Mesh's gateway Envoy did through its self-redirect cluster, an active
    /// health check of the listener itself, seen in Envoy's `/clusters` and stats.
    mutating func addSelfHealthCheck(_ l: NodeListener, _ hc: HealthCheck) {
        let port = l.portMapping.port
        var c = Envoy_Config_Cluster_V3_Cluster()
        c.name = "gateway_\(port)_self"
        c.type = .static
        c.connectTimeout = duration(milliseconds: 1000)
        c.loadAssignment = loadAssignment(c.name, [(localAppAddress, hc.port ?? port)])
        c.healthChecks = [healthCheck(hc)]
        if hc.protocol == .http2 || hc.protocol == .grpc { c.typedExtensionProtocolOptions = http2Options() }
        if let tls = l.tls, tls.mode == .strict { c.transportSocket = selfTLS(tls) }
        out.clusters.append(c)
        clusterNames.insert(c.name)
    }

    /// A gateway route to a virtual service: through its router's routes (each combined with the gateway route's
    /// match), or straight to the virtual node that provides it; with App Mesh's rewrites (the Host to the target
    /// service's name, the matched prefix to `/`, unless the route says otherwise) and the gateway's client policy.
    mutating func gatewayRoutes(_ gr: GatewayRoute, gateway gw: VirtualGateway) -> [Envoy_Config_Route_V3_Route] {
        guard let service = compiler.virtualService(gr.target) else { return [] }
        var specs: [(RouteSpec, VirtualRouter?)] = []
        func base(_ name: String, _ kind: PortProtocol) -> RouteSpec {
            var s = RouteSpec(
                name: name, kind: kind, priority: nil, prefix: gr.prefix, targets: [], location: gr.location)
            s.path = gr.path
            s.headers = gr.headers
            s.query = gr.query
            s.method = gr.method
            s.grpcService = gr.grpcService
            return s
        }
        switch service.provider {
        case .virtualNode(let ref)?:
            var s = base(gr.awsName, gr.kind)
            s.targets = [WeightedTarget(node: ref, weight: 1, port: gr.targetPort, location: gr.location)]
            specs.append((s, nil))
        case .virtualRouter(let ref)?:
            // `target.port` picks the router listener whose routes apply (default: the first that is not tcp).
            guard let router = compiler.virtualRouter(ref),
                let listener = router.listeners.first(where: { l in
                    gr.targetPort.map { l.port == $0 } ?? (l.protocol != .tcp)
                })
            else { return [] }
            for r in router.routes(for: listener) {
                var s = base("\(gr.awsName)/\(r.name)", r.kind)
                if (gr.prefix == nil || gr.prefix == "/") && gr.path == nil {
                    s.prefix = r.prefix
                    s.path = r.path
                }
                s.headers += r.headers
                s.query += r.query
                s.method = gr.method ?? r.method
                s.scheme = r.scheme
                if gr.grpcService == nil || gr.grpcService == r.grpcService {
                    s.grpcService = r.grpcService ?? gr.grpcService
                    s.grpcMethod = r.grpcMethod
                }
                s.retry = r.retry
                s.perRequestTimeoutMilliseconds = r.perRequestTimeoutMilliseconds
                s.idleTimeoutMilliseconds = r.idleTimeoutMilliseconds
                s.targets = r.targets
                specs.append((s, router))
            }
        case nil:
            problem(gr.location, "target virtual service \(service.ref) has no provider")
            return []
        }
        var out: [Envoy_Config_Route_V3_Route] = []
        for (spec, router) in specs {
            let port =
                gr.targetPort ?? router?.listeners.first { $0.protocol != .tcp }?.port
                ?? spec.targets.first.flatMap { t in
                    compiler.virtualNode(t.node)?.listeners.first?.portMapping.port
                } ?? 80
            let tls = gw.backendDefaults?.applies(to: port) == true ? gw.backendDefaults : nil
            let via =
                router
                ?? VirtualRouter(ref: gr.ref, awsName: gr.awsName, listeners: [], routes: [], location: gr.location)
            var route = httpRoute(spec, router: via, port: port, tls: tls)
            route.name = spec.name
            if gr.rewriteHostname { route.route.hostRewriteLiteral = service.awsName }
            if let path = gr.rewritePath {
                var rewrite = Envoy_Type_Matcher_V3_RegexMatchAndSubstitute()
                rewrite.pattern.regex = "^.*$"
                rewrite.substitution = path
                route.route.regexRewrite = rewrite
            }
            // The matched prefix is rewritten only where the gateway route's own prefix is what the route matches.
            let rewrite: String?
            switch gr.rewritePrefix {
            case .root: rewrite = gr.prefix == "/" ? nil : "/"
            case .value(let v): rewrite = v
            case .none: rewrite = nil
            }
            guard let p = gr.prefix, route.match.prefix == p, let rewrite else {
                out.append(route)
                continue
            }
            route.route.prefixRewrite = rewrite
            if !p.hasSuffix("/") && rewrite.hasSuffix("/") {
                // Envoy replaces the prefix as text: `/red` to `/` would make `/red/tell` `//tell`. `/red/` takes the
                // paths below it first, then `/red` the rest.
                var below = route
                below.match.prefix = p + "/"
                out.append(below)
            }
            out.append(route)
        }
        return out
    }
}
