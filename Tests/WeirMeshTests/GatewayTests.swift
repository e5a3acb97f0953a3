import Foundation
import Testing
@testable import WeirMesh

let gateway = canary + """

---
apiVersion: appmesh.k8s.aws/v1beta2
kind: VirtualGateway
metadata: {name: ingress, namespace: shop}
spec:
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
        #expect(r.target == ResourceRef(name: "cart", namespace: "shop") && r.rewritePrefix == "/")
    }

    @Test("bad gateway values are located and explained", arguments: [
        ("virtualServiceRef: {name: cart}\n      rewrite", "virtualServiceRef: {name: checkout}\n      rewrite", "GatewayRoute shop/cart-route", "shop/checkout does not exist"),
        ("{port: 8088, protocol: http}", "{port: 8088, protocol: tcp}", "spec.listeners[0].portMapping.protocol", "not tcp"),
        ("hostname: {suffix: .example.com}", "hostname: {regex: .*}", "spec.httpRoute.match.hostname", "exact or suffix"),
    ])
    func badValues(_ from: String, _ to: String, _ field: String, _ mentions: String) {
        #expect(gateway.contains(from))
        do {
            _ = try ManifestReader.read([("mesh.yaml", gateway.replacingOccurrences(of: from, with: to))])
            Issue.record("accepted \(to)")
        } catch {
            let p = error.problems.first { $0.location.field.hasSuffix(field) }
            #expect(p?.message.contains(mentions) == true, "\(error.problems)")
            #expect((p?.location.line ?? 0) > 0)
        }
    }
}

@Suite("App Mesh gateways compiled")
struct GatewayCompileTests {
    @Test("a virtual gateway gets a listener per port and its gateway routes through the target's router, with the prefix rewritten")
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
            let route = try #require(host.routes.first)
            #expect(route.match.prefix == "/cart" && route.route.prefixRewrite == "/")
            #expect(route.match.headers.map(\.name) == ["x-tenant"])
            #expect(route.route.weightedClusters.clusters.map(\.name) == ["vn_cart-v1_shop_9080", "vn_cart-v2_shop_9080"])
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
