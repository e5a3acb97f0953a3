import EnvoyAPI
import Foundation
import Testing
@testable import WeirMesh
import WeirTestSupport

/// The compiler's output for whole meshes, compared with checked-in Envoy JSON (regenerate with WEIR_UPDATE_GOLDENS=1).
@Suite("App Mesh compiler goldens")
struct CompilerGoldenTests {
    static let goldens = Bundle.module.resourceURL!.appendingPathComponent("Goldens")
    static let sourceGoldens = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent(
        "Goldens")

    static func manifests(_ dir: String) throws -> MeshManifests {
        let url = goldens.appendingPathComponent(dir).appendingPathComponent("mesh.yaml")
        return try ManifestReader.read([(url.lastPathComponent, try String(contentsOf: url, encoding: .utf8))])
    }

    @Test(
        "every node of the DROP_ALL and ALLOW_ALL meshes renders as its golden", arguments: ["mesh-drop", "mesh-allow"])
    func golden(_ dir: String) throws {
        let m = try Self.manifests(dir)
        let compiler = MeshCompiler(m)
        let json = try compiler.compile(nodeID: "mesh/shop/virtualNode/web_shop").json()
        let name = "\(dir)-web.json"
        if ProcessInfo.processInfo.environment["WEIR_UPDATE_GOLDENS"] == "1" {
            try json.write(to: Self.sourceGoldens.appendingPathComponent(name), atomically: true, encoding: .utf8)
        }
        let expected = try String(contentsOf: Self.goldens.appendingPathComponent(name), encoding: .utf8)
        #expect(
            json == expected,
            "\(name) differs; inspect with weir mesh render, then regenerate with WEIR_UPDATE_GOLDENS=1")
    }

    @Test("a node without listeners (a client) gets no ingress listener: Envoy refuses one without filter chains")
    func clientWithoutListeners() throws {
        let dir = projectRoot.appendingPathComponent("examples/color")
        let files = try ["mesh.yaml", "client.yaml", "color.yaml"].map {
            ($0, try String(contentsOf: dir.appendingPathComponent($0), encoding: .utf8))
        }
        let r = try MeshCompiler(try ManifestReader.read(files)).compile(nodeID: "demo/client")
        #expect(!r.listeners.map(\.name).contains("ingress") && r.listeners.map(\.name).contains("egress"))
        let v1 = try MeshCompiler(try ManifestReader.read(files)).compile(nodeID: "demo/color-v1")
        #expect(v1.listeners.map(\.name).contains("ingress"))
    }

    @Test("canary weights, header/method/query/regex matches, retries and timeouts land where Envoy reads them")
    func routeDetails() throws {
        let r = try MeshCompiler(Self.manifests("mesh-drop")).compile(nodeID: "shop/web")
        let egress = try #require(r.routes.first { $0.name == "egress_9080" })
        let host = try #require(egress.virtualHosts.first)
        #expect(host.domains == ["catalog.shop", "catalog.shop:9080"])
        #expect(
            host.routes.map(\.name) == [
                "catalog_shop/beta-testers", "catalog_shop/items-by-id", "catalog_shop/canary",
            ], "ordered by priority")
        let beta = host.routes[0]
        #expect(beta.match.prefix == "/api")
        #expect(beta.match.headers.map(\.name) == [":method", "x-beta", "x-debug"])
        #expect(beta.match.headers[2].invertMatch && beta.match.headers[2].presentMatch)
        #expect(beta.match.queryParameters.first?.stringMatch.exact == "gold")
        let items = host.routes[1]
        #expect(items.match.safeRegex.regex == "/items/[0-9]+")
        #expect(
            items.route.timeout.nanos == 500_000_000 && items.route.timeout.seconds == 1
                && items.route.idleTimeout.seconds == 60)
        let canary = host.routes[2]
        #expect(
            canary.route.weightedClusters.clusters.map { "\($0.name)=\($0.weight.value)" } == [
                "vn_catalog-v1_shop_9080=90", "vn_catalog-v2_shop_9080=10",
            ])
        #expect(canary.route.retryPolicy.retryOn == "5xx,gateway-error,connect-failure,reset")
        #expect(canary.route.retryPolicy.numRetries.value == 2)
        let grpc = try #require(r.routes.first { $0.name == "egress_7070" }?.virtualHosts.first?.routes.first)
        #expect(grpc.match.path == "/shop.Prices/Quote" && grpc.match.hasGrpc)
        #expect(grpc.route.retryPolicy.retryOn == "unavailable,deadline-exceeded")
    }

    @Test(
        "DROP_ALL has no passthrough; ALLOW_ALL adds an ORIGINAL_DST cluster, a catch-all virtual host and a default chain"
    )
    func egressFilter() throws {
        let drop = try MeshCompiler(Self.manifests("mesh-drop")).compile(nodeID: "shop/web")
        let allow = try MeshCompiler(Self.manifests("mesh-allow")).compile(nodeID: "shop/web")
        #expect(!drop.clusters.contains { $0.name == "passthrough" })
        #expect(drop.listeners.first { $0.name == "egress" }?.hasDefaultFilterChain == false)
        let passthrough = try #require(allow.clusters.first { $0.name == "passthrough" })
        #expect(passthrough.type == .originalDst && passthrough.lbPolicy == .clusterProvided)
        #expect(allow.listeners.first { $0.name == "egress" }?.hasDefaultFilterChain == true)
        #expect(allow.routes.first { $0.name == "egress_9080" }?.virtualHosts.last?.domains == ["*"])
    }

    @Test(
        "the TCP route is a tcp_proxy on its port; a DNS hostname with ENDPOINTS is a STRICT_DNS cluster, an IP literal an EDS one"
    )
    func tcpAndDiscovery() throws {
        let r = try MeshCompiler(Self.manifests("mesh-drop")).compile(nodeID: "shop/web")
        let egress = try #require(r.listeners.first { $0.name == "egress" })
        let chain = try #require(egress.filterChains.first { $0.filterChainMatch.destinationPort.value == 5432 })
        #expect(chain.filters.first?.name == "envoy.filters.network.tcp_proxy")
        let tcp = try Envoy_Extensions_Filters_Network_TcpProxy_V3_TcpProxy(
            serializedBytes: chain.filters[0].typedConfig.value)
        #expect(tcp.cluster == "vn_postgres_shop_5432" && tcp.idleTimeout.seconds == 600)
        #expect(r.clusters.first { $0.name == "vn_catalog-v2_shop_9080" }?.type == .strictDns)
        #expect(r.clusters.first { $0.name == "vn_catalog-v1_shop_9080" }?.type == .eds)
        #expect(r.endpoints.map(\.clusterName).contains("vn_catalog-v1_shop_9080"))
        let v1 = try #require(r.clusters.first { $0.name == "vn_catalog-v1_shop_9080" })
        #expect(
            v1.healthChecks.first?.httpHealthCheck.path == "/healthz" && v1.outlierDetection.consecutive5Xx.value == 5)
        #expect(
            r.clusters.first { $0.name == "local_app_8080" }?.circuitBreakers.thresholds.first?.maxConnections.value
                == 100)
        #expect(
            r.namedOnly == ["catalog.shop:9080", "prices.shop:7070", "vn_catalog-v2_shop_9080_logical_dns"],
            "api_listeners for proxyless gRPC (not for TCP), and the LOGICAL_DNS cluster their routes use")
    }

    @Test(
        "proxyless routes send a DNS-hostname target to a LOGICAL_DNS twin (gRPC takes no STRICT_DNS); Envoy's routes keep STRICT_DNS"
    )
    func proxylessDNSTargets() throws {
        let r = try MeshCompiler(Self.manifests("mesh-drop")).compile(nodeID: "shop/web")
        let envoyCanary = try #require(
            r.routes.first { $0.name == "egress_9080" }?.virtualHosts.first?.routes.first {
                $0.name == "catalog_shop/canary"
            })
        #expect(
            envoyCanary.route.weightedClusters.clusters.map(\.name) == [
                "vn_catalog-v1_shop_9080", "vn_catalog-v2_shop_9080",
            ])
        let proxyless = try #require(r.routes.first { $0.name == "catalog.shop:9080" }?.virtualHosts.first)
        #expect(
            proxyless.routes.map(\.name) == [
                "catalog_shop/beta-testers", "catalog_shop/items-by-id", "catalog_shop/canary",
            ])
        let canary = try #require(proxyless.routes.last)
        #expect(
            canary.route.weightedClusters.clusters.map { "\($0.name)=\($0.weight.value)" }
                == ["vn_catalog-v1_shop_9080=90", "vn_catalog-v2_shop_9080_logical_dns=10"],
            "the EDS target stays, the DNS one is the twin")
        #expect(canary.route.retryPolicy == envoyCanary.route.retryPolicy, "only the cluster names differ")
        let strict = try #require(r.clusters.first { $0.name == "vn_catalog-v2_shop_9080" })
        let twin = try #require(r.clusters.first { $0.name == "vn_catalog-v2_shop_9080_logical_dns" })
        #expect(strict.type == .strictDns && twin.type == .logicalDns)
        #expect(twin.loadAssignment.clusterName == twin.name)
        #expect(
            twin.loadAssignment.endpoints.flatMap(\.lbEndpoints).map(\.endpoint.address.socketAddress.address)
                == strict.loadAssignment.endpoints.flatMap(\.lbEndpoints).map(\.endpoint.address.socketAddress.address))
        #expect(
            twin.loadAssignment.endpoints.count == 1 && twin.loadAssignment.endpoints[0].lbEndpoints.count == 1,
            "LOGICAL_DNS takes exactly one endpoint")
        #expect(r.clusters.filter { $0.type == .logicalDns }.count == 1, "one twin however many routes use it")
    }

    @Test("an unknown node id is an error naming it")
    func unknownNode() throws {
        #expect(throws: MeshError.self) {
            try MeshCompiler(Self.manifests("mesh-drop")).compile(nodeID: "mesh/shop/virtualNode/nobody")
        }
        do { _ = try MeshCompiler(Self.manifests("mesh-drop")).compile(nodeID: "mesh/shop/virtualNode/nobody") } catch {
            #expect("\(error)".contains("nobody"))
        }
    }
}

/// The memo shares what a change did not touch across reloads; what it gives must be what a fresh compile gives.
@Suite("compile memo")
struct CompileMemoTests {
    /// Compiles every node of `text` with `memo` (one reload) and expects each to equal a compile without it; returns
    /// how many units the reload built.
    static func compileEveryNode(_ text: String, with memo: CompileMemo, _ what: String) throws -> Int {
        let before = memo.unitsBuilt.load(ordering: .relaxed)
        let m = try ManifestReader.read([("mesh.yaml", text)])
        var memoized = MeshCompiler(m)
        memoized.memo = memo
        memo.beginGeneration()
        for id in memoized.nodeIDs {
            let fresh = try MeshCompiler(m).compile(nodeID: id).json()
            #expect(try memoized.compile(nodeID: id).json() == fresh, "\(what), node \(id)")
        }
        return memo.unitsBuilt.load(ordering: .relaxed) - before
    }

    @Test("after each of a series of edits, every node compiled with the memo equals a compile without it")
    func memoMatchesFreshCompile() throws {
        let url = CompilerGoldenTests.goldens.appendingPathComponent("mesh-drop/mesh.yaml")
        let original = try String(contentsOf: url, encoding: .utf8)
        // Each edit keeps the mesh valid and changes what some backends read: a router's weights, a target's
        // health check and address, a router's target, a tcp route's idle timeout (in the egress listener's shape);
        // then a node's own listener timeout (its ingress, which no unit reads) and the mesh's egress filter (the
        // egress listener's shape; every unit reads the mesh); then back to the start.
        let edits: [(String, String, units: Bool)] = [
            ("weight: 90}", "weight: 70}", true),
            ("intervalMillis: 5000", "intervalMillis: 7000", true),
            ("hostname: 10.0.0.11", "hostname: 10.0.0.12", true),
            (
                "{virtualNodeRef: {name: catalog-v2}, weight: 1}", "{virtualNodeRef: {name: catalog-v1}, weight: 1}",
                true
            ),
            ("weight: 10}", "weight: 0}", true),
            ("timeout: {idle: {unit: s, value: 600}}", "timeout: {idle: {unit: s, value: 900}}", true),
            ("perRequest: {unit: s, value: 30}", "perRequest: {unit: s, value: 45}", false),
            ("egressFilter: {type: DROP_ALL}", "egressFilter: {type: ALLOW_ALL}", false),
        ]
        var texts = [(original, true)]
        for (from, to, units) in edits {
            #expect(texts.last!.0.contains(from), "the fixture still holds \(from)")
            texts.append((texts.last!.0.replacingOccurrences(of: from, with: to), units))
        }
        texts.append((original, false))  // the mesh changes back: every unit reads it
        let memo = CompileMemo()
        for (i, (text, units)) in texts.enumerated() {
            let built = try Self.compileEveryNode(text, with: memo, "edit \(i)")
            let used = memo.units.count
            if i > 0 && units { #expect(built > 0 && built < used, "edit \(i): \(built) of \(used) units built anew") }
        }
    }

    @Test("nodes with the same backends share their units: a router's edit builds its unit once, not once per node")
    func unitsSharedAcrossNodes() throws {
        let url = CompilerGoldenTests.goldens.appendingPathComponent("mesh-drop/mesh.yaml")
        // A second node with web's backends, but its own listener and no access log.
        let twin = """
            ---
            apiVersion: appmesh.k8s.aws/v1beta2
            kind: VirtualNode
            metadata: {name: web-b, namespace: shop}
            spec:
              listeners:
                - portMapping: {port: 9090, protocol: http}
              backends:
                - virtualService: {virtualServiceRef: {name: catalog}}
                - virtualService: {virtualServiceRef: {name: db}}
                - virtualService: {virtualServiceRef: {name: prices}}
            """
        let first = try String(contentsOf: url, encoding: .utf8) + "\n" + twin + "\n"
        #expect(first.contains("weight: 90}"))
        #expect(MeshCompiler(try ManifestReader.read([("mesh.yaml", first)])).nodeIDs.count >= 2)
        let memo = CompileMemo()
        let builtPerText = try [first, first.replacingOccurrences(of: "weight: 90}", with: "weight: 70}")].map {
            try Self.compileEveryNode($0, with: memo, "twin")
        }
        // catalog, db and prices once for both nodes; then only catalog, whose router changed.
        #expect(builtPerText == [3, 1], "units built: \(builtPerText)")
    }

    @Test(
        "a unit checked once under a compiler is taken by every node with the same policy, and not by a node with another policy"
    )
    func unitsPerPolicy() throws {
        let url = CompilerGoldenTests.goldens.appendingPathComponent("mesh-drop/mesh.yaml")
        // Three more nodes calling db: two with the same client policy, one without any.
        func caller(_ name: String, tls: Bool) -> String {
            """
            ---
            apiVersion: appmesh.k8s.aws/v1beta2
            kind: VirtualNode
            metadata: {name: \(name), namespace: shop}
            spec:
              listeners:
                - portMapping: {port: 9090, protocol: http}
            """
                + (tls
                    ? """

                      backendDefaults:
                        clientPolicy:
                          tls:
                            validation: {trust: {file: {certificateChain: /certs/ca.pem}}}
                    """ : "")
                    + """

                      backends:
                        - virtualService: {virtualServiceRef: {name: db}}
                    """
        }
        let text =
            try String(contentsOf: url, encoding: .utf8) + "\n" + caller("tls-a", tls: true) + "\n"
            + caller("tls-b", tls: true) + "\n" + caller("plain", tls: false) + "\n"
        let memo = CompileMemo()
        // compileEveryNode expects each node to equal its compile without the memo.
        _ = try Self.compileEveryNode(text, with: memo, "policies")
        let m = try ManifestReader.read([("mesh.yaml", text)])
        var compiler = MeshCompiler(m)
        compiler.memo = memo
        func postgresClusters(_ node: String) throws -> [String] {
            try compiler.compile(nodeID: "shop/\(node)").clusters.map(\.name).filter { $0.contains("postgres") }
        }
        let a = try postgresClusters("tls-a")
        let b = try postgresClusters("tls-b")
        let plain = try postgresClusters("plain")
        #expect(a == b && !a.isEmpty && a.allSatisfy { $0.contains("_tls_") }, "\(a) \(b)")
        #expect(!plain.isEmpty && plain.allSatisfy { !$0.contains("_tls_") }, "\(plain)")
        // Compiled again in the other order under the same compiler: each still gets its own policy's unit.
        #expect(try postgresClusters("plain") == plain)
        #expect(try postgresClusters("tls-b") == b)
    }
}
