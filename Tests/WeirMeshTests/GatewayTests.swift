import Foundation
import Testing
@testable import WeirMesh

let gateway =
    canary + """

        ---
        apiVersion: v1
        kind: Namespace
        metadata: {name: shop, labels: {gateway: ingress}}
        ---
        apiVersion: appmesh.k8s.aws/v1beta2
        kind: VirtualGateway
        metadata: {name: ingress, namespace: shop}
        spec:
          namespaceSelector: {matchLabels: {gateway: ingress}}
          listeners: [{portMapping: {port: 8088, protocol: http}}]
          logging: {accessLog: {file: {path: /dev/stdout}}}
        ---
        apiVersion: appmesh.k8s.aws/v1beta2
        kind: GatewayRoute
        metadata: {name: cart-route, namespace: shop}
        spec:
          priority: 10
          httpRoute:
            match:
              prefix: /cart
              hostname: {suffix: .example.com}
              headers: [{name: x-tenant, match: {prefix: acme}}]
            action:
              target:
                virtualService:
                  virtualServiceRef: {name: cart}
              rewrite:
                prefix: {value: /}
        """

@Suite("App Mesh gateways")
struct GatewayTests {
    @Test("a virtual gateway and its gateway route read into the model")
    func reads() throws {
        let m = try ManifestReader.read([("mesh.yaml", gateway)])
        #expect(m.virtualGateways.map(\.ref.description) == ["shop/ingress"])
        #expect(m.virtualGateways.first?.listeners.first?.portMapping == PortMapping(port: 8088, protocol: .http))
        let r = try #require(m.gatewayRoutes.first)
        #expect(r.kind == .http && r.priority == 10 && r.prefix == "/cart")
        #expect(r.hostname == .suffix(".example.com"))
        #expect(r.headers == [HeaderMatch(name: "x-tenant", match: .prefix("acme"), invert: false)])
        #expect(r.target == ResourceRef(name: "cart", namespace: "shop") && r.rewritePrefix == .value("/"))
    }

    @Test(
        "bad gateway values are located and explained",
        arguments: [
            (
                "virtualServiceRef: {name: cart}\n      rewrite", "virtualServiceRef: {name: checkout}\n      rewrite",
                "spec.httpRoute.action.target.virtualService.virtualServiceRef", "shop/checkout does not exist"
            ),
            (
                "{port: 8088, protocol: http}", "{port: 8088, protocol: tcp}", "spec.listeners[0].portMapping.protocol",
                "must be one of grpc, http, http2; found 'tcp'"
            ),
            (
                "hostname: {suffix: .example.com}", "hostname: {regex: .*}", "spec.httpRoute.match.hostname.regex",
                "unknown field 'regex'; the fields here are exact, suffix"
            ),
            (
                "namespaceSelector: {matchLabels: {gateway: ingress}}",
                "namespaceSelector: {matchExpressions: [{key: gateway, operator: Like, values: [x]}]}",
                "spec.namespaceSelector.matchExpressions[0].operator", "In, NotIn, Exists or DoesNotExist"
            ),
            (
                "namespaceSelector: {matchLabels: {gateway: ingress}}",
                "namespaceSelector: {matchExpressions: [{key: gateway, operator: In}]}",
                "spec.namespaceSelector.matchExpressions[0].values", "at least one value"
            ),
            (
                "namespaceSelector: {matchLabels: {gateway: ingress}}",
                "namespaceSelector: {matchLabels: {gateway: edge}}",
                "GatewayRoute shop/cart-route", "no virtual gateway selects this gateway route"
            ),
            (
                "  namespaceSelector: {matchLabels: {gateway: ingress}}\n", "",
                "GatewayRoute shop/cart-route", "no virtual gateway selects this gateway route"
            ),
            (
                "namespaceSelector: {matchLabels: {gateway: ingress}}",
                "namespaceSelector: {matchExpressions: {key: gateway, operator: Exists}}",
                "spec.namespaceSelector.matchExpressions", "must be a list"
            ),
            (
                "namespaceSelector: {matchLabels: {gateway: ingress}}",
                "namespaceSelector: {matchExpressions: [{key: gateway, operator: In, values: [{a: b}]}]}",
                "spec.namespaceSelector.matchExpressions[0].values[0]", "must be a string, found a mapping"
            ),
            (
                "metadata: {name: shop, labels: {gateway: ingress}}",
                "metadata: {name: shop, labels: {gateway: ingress}}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: shop}",
                "Namespace shop", "defined twice"
            ),
            // A misspelt key would leave an empty selector, which takes every namespace.
            (
                "namespaceSelector: {matchLabels: {gateway: ingress}}",
                "namespaceSelector: {matchlabels: {gateway: ingress}}",
                "spec.namespaceSelector.matchlabels", "unknown field 'matchlabels'; did you mean 'matchLabels'?"
            ),
            (
                "namespaceSelector: {matchLabels: {gateway: ingress}}",
                "namespaceSelector: {matchExpressions: [{key: gateway, operator: In, value: [ingress]}]}",
                "spec.namespaceSelector.matchExpressions[0].value", "unknown field 'value'"
            ),
        ])
    func badValues(_ from: String, _ to: String, _ field: String, _ mentions: String) {
        expectRefused(gateway, from, to, field: field, mentions: mentions)
    }
}

@Suite("App Mesh gateways compiled")
struct GatewayCompileTests {
    @Test(
        "a virtual gateway gets a listener per port and its gateway routes through the target's router, with the prefix rewritten"
    )
    func compiles() throws {
        let m = try ManifestReader.read([("mesh.yaml", gateway)])
        let compiler = MeshCompiler(m)
        #expect(compiler.nodeIDs.contains("mesh/shop/virtualGateway/ingress_shop"))
        for id in ["mesh/shop/virtualGateway/ingress_shop", "shop/ingress"] {
            let r = try compiler.compile(nodeID: id)
            #expect(r.listeners.map(\.name) == ["gateway_8088"])
            #expect(r.listeners[0].address.socketAddress.portValue == 8088)
            let rc = try #require(r.routes.first { $0.name == "gateway_8088" })
            let host = try #require(rc.virtualHosts.first)
            #expect(host.domains == ["*.example.com", "*.example.com:8088"])
            // `/cart/` first, so that `/cart/x` becomes `/x` and not `//x`; then `/cart` itself.
            #expect(host.routes.map(\.match.prefix) == ["/cart/", "/cart"])
            let route = try #require(host.routes.first)
            #expect(route.route.prefixRewrite == "/" && host.routes[1].route.prefixRewrite == "/")
            #expect(route.route.hostRewriteLiteral == "cart.shop", "the Host becomes the target service's name")
            #expect(route.match.headers.map(\.name) == ["x-tenant"])
            #expect(
                route.route.weightedClusters.clusters.map(\.name) == ["vn_cart-v1_shop_9080", "vn_cart-v2_shop_9080"])
            #expect(Set(r.clusters.map(\.name)) == ["vn_cart-v1_shop_9080", "vn_cart-v2_shop_9080"])
            #expect(r.listeners[0].filterChains.count == 1)
        }
    }

    @Test("a gateway node id that names nothing is an error")
    func unknownGateway() throws {
        let m = try ManifestReader.read([("mesh.yaml", gateway)])
        #expect(throws: MeshError.self) { try MeshCompiler(m).compile(nodeID: "mesh/shop/virtualGateway/nope") }
        #expect(try NodeIdentity.parse("mesh/shop/virtualGateway/gw") == .appMeshGateway(mesh: "shop", awsName: "gw"))
    }
}

/// Two gateways and routes in two namespaces: which route goes to which gateway, as App Mesh's controller chose.
func selectorMesh(edge: String, internalGW: String, routeExtra: String = "") -> String {
    canary + """

        ---
        apiVersion: v1
        kind: Namespace
        metadata: {name: shop, labels: {exposure: public}}
        ---
        apiVersion: appmesh.k8s.aws/v1beta2
        kind: VirtualGateway
        metadata: {name: edge, namespace: ingress}
        spec:
          listeners: [{portMapping: {port: 8088, protocol: http}}]
        \(edge)
        ---
        apiVersion: appmesh.k8s.aws/v1beta2
        kind: VirtualGateway
        metadata: {name: internal, namespace: ingress}
        spec:
          listeners: [{portMapping: {port: 9099, protocol: http}}]
        \(internalGW)
        ---
        apiVersion: appmesh.k8s.aws/v1beta2
        kind: GatewayRoute
        metadata: {name: public-cart, namespace: shop, labels: {audience: public}}
        spec:
          httpRoute:
            match: {prefix: /public}
            action: {target: {virtualService: {virtualServiceRef: {name: cart}}}}
        ---
        apiVersion: appmesh.k8s.aws/v1beta2
        kind: GatewayRoute
        metadata: {name: staff-cart, namespace: shop, labels: {audience: staff}}
        spec:
        \(routeExtra)
          httpRoute:
            match: {prefix: /staff}
            action: {target: {virtualService: {virtualServiceRef: {name: cart}}}}
        """
}

@Suite("App Mesh gateway route selection")
struct GatewaySelectionTests {
    @Test("a Namespace object in two files is an error naming the first")
    func namespaceTwice() {
        let ns = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {gateway: other}}\n"
        do {
            _ = try ManifestReader.read([("mesh.yaml", gateway), ("namespaces.yaml", ns)])
            Issue.record("accepted a second Namespace shop")
        } catch {
            #expect(
                error.problems.contains {
                    $0.location.file == "namespaces.yaml" && $0.message.contains("first at mesh.yaml:")
                }, "\(error.problems)")
        }
    }

    @Test("a label value YAML reads as a number or a boolean is refused, as Kubernetes refuses it; quoted, it is taken")
    func labelValueTypes() throws {
        for (value, type) in [
            ("1", "number"), ("1.5", "number"), ("true", "boolean"), ("off", "boolean"), ("y", "boolean"),
            ("N", "boolean"),
        ] {
            let text = gateway.replacingOccurrences(
                of: "labels: {gateway: ingress}}", with: "labels: {gateway: ingress, version: \(value)}}")
            #expect(text != gateway)
            let error = #expect(throws: MeshError.self) { try ManifestReader.read([("mesh.yaml", text)]) }
            let p = error?.problems.first { $0.location.field == "metadata.labels.version" }
            #expect(
                p?.message.contains("YAML reads '\(value)' as a \(type), so quote it") == true,
                "\(String(describing: error?.problems))")
            #expect(
                p?.location.line == Self.line(of: "metadata: {name: shop, labels", in: text), "\(String(describing: p))"
            )
            let quoted = gateway.replacingOccurrences(
                of: "labels: {gateway: ingress}}", with: "labels: {gateway: ingress, version: '\(value)'}}")
            #expect(try ManifestReader.read([("mesh.yaml", quoted)]).labels(ofNamespace: "shop")["version"] == value)
        }
        // Strings as Kubernetes reads them: an explicit !!str, a date (kept as text), and null as the empty string.
        for (written, read) in [
            ("!!str 1", "1"), ("2024-01-01", "2024-01-01"), ("v1.2", "v1.2"), ("~", ""), ("null", ""),
        ] {
            let text = gateway.replacingOccurrences(
                of: "labels: {gateway: ingress}}", with: "labels: {gateway: ingress, version: \(written)}}")
            #expect(
                try ManifestReader.read([("mesh.yaml", text)]).labels(ofNamespace: "shop")["version"] == read,
                "version: \(written)")
        }
        // A selector's values follow the same rule.
        expectRefused(
            gateway, "namespaceSelector: {matchLabels: {gateway: ingress}}",
            "namespaceSelector: {matchExpressions: [{key: gateway, operator: In, values: [ingress, 2]}]}",
            field: "matchExpressions[0].values[1]", mentions: "YAML reads '2' as a number")
    }

    @Test("a v1 Namespace without a name is refused, not dropped with its labels")
    func namespaceWithoutName() {
        let text = gateway.replacingOccurrences(
            of: "metadata: {name: shop, labels: {gateway: ingress}}", with: "metadata: {labels: {gateway: ingress}}")
        #expect(text != gateway)
        let nullName = gateway.replacingOccurrences(
            of: "metadata: {name: shop, labels: {gateway: ingress}}",
            with: "metadata: {name: ~, labels: {gateway: ingress}}")
        #expect(
            (#expect(throws: MeshError.self) { try ManifestReader.read([("mesh.yaml", nullName)]) })?.problems.contains
            { $0.message == "a Namespace needs a name" } == true)
        let error = #expect(throws: MeshError.self) { try ManifestReader.read([("mesh.yaml", text)]) }
        let p = error?.problems.first { $0.location.field == "metadata.name" }
        #expect(
            p?.message == "a Namespace needs a name"
                && p?.location.line == Self.line(of: "metadata: {labels:", in: text),
            "\(String(describing: error?.problems))")
    }

    /// The 1-based line of the first line of `text` that starts with `prefix`.
    static func line(of prefix: String, in text: String) -> Int? {
        text.components(separatedBy: "\n").firstIndex { $0.hasPrefix(prefix) }.map { $0 + 1 }
    }

    @Test("null labels, selectors and virtualGatewayRef read as left out, as Kubernetes reads them")
    func nulls() throws {
        let text =
            gateway
            .replacingOccurrences(
                of: "metadata: {name: cart-route, namespace: shop}",
                with: "metadata: {name: cart-route, namespace: shop, labels: }"
            )
            .replacingOccurrences(of: "spec:\n  priority: 10", with: "spec:\n  virtualGatewayRef: ~\n  priority: 10")
            + "\n---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: billing\n  labels:\n"
        #expect(text.contains("labels: }") && text.contains("virtualGatewayRef: ~"))
        let m = try ManifestReader.read([("mesh.yaml", text)])
        #expect(m.gatewayRoutes.first?.labels == [:] && m.gatewayRoutes.first?.virtualGatewayRef == nil)
        #expect(m.labels(ofNamespace: "billing") == ["kubernetes.io/metadata.name": "billing"])
        #expect(
            try MeshCompiler(m).compile(nodeID: "shop/ingress").routes.first { $0.name == "gateway_8088" }?.virtualHosts
                .first?.routes.count == 2)
        // A null gatewayRouteSelector selects every route, a null namespaceSelector none.
        let noRoutes = gateway.replacingOccurrences(
            of: "namespaceSelector: {matchLabels: {gateway: ingress}}",
            with: "namespaceSelector:\n  gatewayRouteSelector:")
        let refused = #expect(throws: MeshError.self) { try ManifestReader.read([("mesh.yaml", noRoutes)]) }
        #expect(
            refused?.problems.map(\.message)
                == [refused?.problems.first { $0.message.contains("no virtual gateway selects") }?.message].compactMap {
                    $0
                },
            "refused for the null namespaceSelector alone, not as a malformed selector: \(String(describing: refused?.problems))"
        )
        let everyRoute = gateway.replacingOccurrences(
            of: "namespaceSelector: {matchLabels: {gateway: ingress}}",
            with: "namespaceSelector: {matchLabels: {gateway: ingress}}\n  gatewayRouteSelector:")
        #expect(everyRoute.contains("gatewayRouteSelector:\n"))
        #expect(
            try ManifestReader.read([("mesh.yaml", everyRoute)]).gatewayRoutes.count == 1,
            "a null gatewayRouteSelector takes the route")
    }

    func prefixes(_ m: MeshManifests, _ node: String, _ port: Int) throws -> [String] {
        let r = try MeshCompiler(m).compile(nodeID: node)
        return r.routes.first { $0.name == "gateway_\(port)" }?.virtualHosts.flatMap(\.routes).map(\.match.prefix) ?? []
    }

    @Test("gateways in another namespace take routes by namespace labels and route labels")
    func crossNamespace() throws {
        let m = try ManifestReader.read([
            (
                "mesh.yaml",
                selectorMesh(
                    edge:
                        "  namespaceSelector: {matchLabels: {exposure: public}}\n  gatewayRouteSelector: {matchLabels: {audience: public}}",
                    internalGW:
                        "  namespaceSelector: {matchExpressions: [{key: kubernetes.io/metadata.name, operator: In, values: [shop, billing]}]}\n  gatewayRouteSelector: {matchExpressions: [{key: audience, operator: NotIn, values: [public]}]}"
                )
            )
        ])
        #expect(try prefixes(m, "ingress/edge", 8088) == ["/public/", "/public"])
        #expect(
            try prefixes(m, "ingress/internal", 9099) == ["/staff/", "/staff"],
            "selected by the namespace's name label, which every namespace has")
    }

    @Test("a route two gateways select is an error naming both; virtualGatewayRef settles it")
    func ambiguous() throws {
        let both = selectorMesh(
            edge: "  namespaceSelector: {}",
            internalGW: "  namespaceSelector: {matchExpressions: [{key: exposure, operator: Exists}]}")
        do {
            _ = try ManifestReader.read([("mesh.yaml", both)])
            Issue.record("two gateways selecting one route were accepted")
        } catch {
            #expect(
                error.problems.contains {
                    $0.message.contains("several virtual gateways")
                        && $0.message.contains("ingress/edge, ingress/internal")
                }, "\(error.problems)")
            #expect(error.problems.allSatisfy { $0.location.line > 0 })
        }
        // Naming the gateway outright: the staff route goes to internal only, even though edge selects everything.
        let named = selectorMesh(
            edge: "  namespaceSelector: {}", internalGW: "  namespaceSelector: {matchLabels: {exposure: none}}",
            routeExtra: "  virtualGatewayRef: {name: internal, namespace: ingress}")
        let m = try ManifestReader.read([("mesh.yaml", named)])
        #expect(try prefixes(m, "ingress/edge", 8088) == ["/public/", "/public"])
        #expect(try prefixes(m, "ingress/internal", 9099) == ["/staff/", "/staff"])
        let missing = named.replacingOccurrences(of: "{name: internal, namespace: ingress}", with: "{name: gone}")
        #expect(throws: MeshError.self) { try ManifestReader.read([("mesh.yaml", missing)]) }
        do { _ = try ManifestReader.read([("mesh.yaml", missing)]) } catch {
            #expect(
                error.problems.contains { $0.message.contains("shop/gone") },
                "the ref defaults to the route's namespace: \(error.problems)")
        }
    }

    @Test("label selector semantics: matchLabels and every operator; an empty selector matches all")
    func selectorSemantics() {
        let labels = ["app": "cart", "tier": "web"]
        #expect(LabelSelector().matches(labels) && LabelSelector().matches([:]))
        #expect(LabelSelector(matchLabels: ["app": "cart"]).matches(labels))
        #expect(!LabelSelector(matchLabels: ["app": "cart", "tier": "db"]).matches(labels))
        func one(_ op: LabelSelector.Operator, _ key: String, _ values: [String] = []) -> Bool {
            LabelSelector(matchExpressions: [.init(key: key, op: op, values: values)]).matches(labels)
        }
        #expect(one(.in, "tier", ["web", "db"]) && !one(.in, "tier", ["db"]) && !one(.in, "zone", ["a"]))
        #expect(one(.notIn, "tier", ["db"]) && !one(.notIn, "tier", ["web"]) && one(.notIn, "zone", ["a"]))
        #expect(one(.exists, "app") && !one(.exists, "zone"))
        #expect(one(.doesNotExist, "zone") && !one(.doesNotExist, "app"))
    }
}
