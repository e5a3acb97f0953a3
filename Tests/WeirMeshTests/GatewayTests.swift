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
