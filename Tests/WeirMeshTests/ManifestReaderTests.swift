import Foundation
import Testing
@testable import WeirMesh

let canary = """
    apiVersion: appmesh.k8s.aws/v1beta2
    kind: Mesh
    metadata:
      name: shop
    spec:
      egressFilter:
        type: DROP_ALL
    ---
    apiVersion: appmesh.k8s.aws/v1beta2
    kind: VirtualNode
    metadata:
      name: front
      namespace: shop
    spec:
      listeners:
        - portMapping: {port: 8080, protocol: http}
      serviceDiscovery:
        dns: {hostname: front.shop.svc.cluster.local}
      backends:
        - virtualService:
            virtualServiceRef: {name: cart}
      logging:
        accessLog:
          file: {path: /dev/stdout}
    ---
    apiVersion: appmesh.k8s.aws/v1beta2
    kind: VirtualNode
    metadata: {name: cart-v1, namespace: shop}
    spec:
      listeners: [{portMapping: {port: 9080, protocol: http}}]
      serviceDiscovery: {dns: {hostname: cart-v1.shop.svc.cluster.local}}
    ---
    apiVersion: appmesh.k8s.aws/v1beta2
    kind: VirtualNode
    metadata: {name: cart-v2, namespace: shop}
    spec:
      listeners: [{portMapping: {port: 9080, protocol: http}}]
      serviceDiscovery: {dns: {hostname: cart-v2.shop.svc.cluster.local}}
    ---
    apiVersion: appmesh.k8s.aws/v1beta2
    kind: VirtualRouter
    metadata: {name: cart-router, namespace: shop}
    spec:
      listeners: [{portMapping: {port: 9080, protocol: http}}]
      routes:
        - name: canary
          httpRoute:
            match: {prefix: /}
            action:
              weightedTargets:
                - {virtualNodeRef: {name: cart-v1}, weight: 90}
                - {virtualNodeRef: {name: cart-v2}, weight: 10}
    ---
    apiVersion: appmesh.k8s.aws/v1beta2
    kind: VirtualService
    metadata: {name: cart, namespace: shop}
    spec:
      provider:
        virtualRouter:
          virtualRouterRef: {name: cart-router}
    ---
    apiVersion: apps/v1
    kind: Deployment
    metadata: {name: not-app-mesh}
    """

/// Changes `from` to `to` in `fixture`, expects the read to be refused, and expects a problem on a field ending
/// in `field` whose message mentions `mentions`, on a real line.
func expectRefused(
    _ fixture: String, _ from: String, _ to: String, field: String, mentions: String,
    at here: Testing.SourceLocation = #_sourceLocation
) {
    #expect(fixture.contains(from), "fixture text not found", sourceLocation: here)
    let error = #expect(throws: MeshError.self, "accepted \(to)", sourceLocation: here) {
        try ManifestReader.read([("mesh.yaml", fixture.replacingOccurrences(of: from, with: to))])
    }
    guard let error else { return }
    let p = error.problems.first { $0.location.field.hasSuffix(field) }
    #expect(p?.message.contains(mentions) == true, "\(error.problems)", sourceLocation: here)
    #expect((p?.location.line ?? 0) > 0, sourceLocation: here)
}

@Suite("App Mesh manifests")
struct ManifestReaderTests {
    @Test("a canary mesh reads into the model, with App Mesh's defaults")
    func canaryMesh() throws {
        let m = try ManifestReader.read([("mesh.yaml", canary)])
        #expect(m.meshes.map(\.name) == ["shop"] && m.meshes[0].egressDropAll)
        #expect(m.virtualNodes.map(\.ref.description) == ["shop/front", "shop/cart-v1", "shop/cart-v2"])
        #expect(m.virtualNodes[0].backends.map(\.service) == [ResourceRef(name: "cart", namespace: "shop")])
        #expect(m.virtualNodes[0].accessLog == AccessLog(path: "/dev/stdout"))
        #expect(m.virtualNodes[0].listeners.map(\.portMapping) == [PortMapping(port: 8080, protocol: .http)])
        let route = try #require(m.virtualRouters.first?.routes.first)
        #expect(route.kind == .http && route.prefix == "/")
        #expect(route.targets.map(\.weight) == [90, 10])
        #expect(m.virtualServices.first?.awsName == "cart.shop")
        #expect(
            m.virtualServices.first?.provider == .virtualRouter(ResourceRef(name: "cart-router", namespace: "shop")))
    }

    struct Broken: Sendable, CustomTestStringConvertible {
        let name: String
        let from: String
        let to: String
        let line: Int
        let field: String
        let mentions: String
        var testDescription: String { name }
    }

    static let broken: [Broken] = [
        .init(
            name: "port out of range",
            from: "port: 9080, protocol: http}}]\n  serviceDiscovery: {dns: {hostname: cart-v1",
            to: "port: 99999, protocol: http}}]\n  serviceDiscovery: {dns: {hostname: cart-v1",
            line: 30, field: "spec.listeners[0].portMapping.port", mentions: "1 to 65535"),
        .init(
            name: "unknown protocol", from: "{port: 8080, protocol: http}", to: "{port: 8080, protocol: https}",
            line: 16, field: "spec.listeners[0].portMapping.protocol", mentions: "must be one of grpc, http, http2, tcp"
        ),
        .init(
            name: "weight above 100", from: "weight: 90", to: "weight: 190", line: 51,
            field: "spec.routes[0].httpRoute.action.weightedTargets[0].weight", mentions: "0 to 100"),
        .init(
            name: "missing target node", from: "{name: cart-v2}, weight: 10", to: "{name: cart-v3}, weight: 10",
            line: 52, field: "weightedTargets[1]", mentions: "shop/cart-v3 does not exist"),
        .init(
            name: "missing backend service", from: "virtualServiceRef: {name: cart}",
            to: "virtualServiceRef: {name: basket}", line: 21,
            field: "spec.backends[0].virtualService.virtualServiceRef", mentions: "shop/basket does not exist"),
        .init(
            name: "missing router", from: "virtualRouterRef: {name: cart-router}",
            to: "virtualRouterRef: {name: router}", line: 60, field: "spec.provider.virtualRouter.virtualRouterRef",
            mentions: "shop/router does not exist"),
        .init(
            name: "bad egress filter", from: "type: DROP_ALL", to: "type: DENY", line: 7,
            field: "spec.egressFilter.type", mentions: "must be one of ALLOW_ALL, DROP_ALL"),
        .init(
            name: "two route kinds", from: "      httpRoute:\n",
            to:
                "      tcpRoute: {action: {weightedTargets: [{virtualNodeRef: {name: cart-v1}, weight: 1}]}}\n      httpRoute:\n",
            line: 46, field: "spec.routes[0]", mentions: "exactly one of"),
        .init(
            name: "wrong apiVersion on an App Mesh kind", from: "apiVersion: appmesh.k8s.aws/v1beta2\nkind: Mesh",
            to: "apiVersion: appmesh.k8s.aws/v1beta1\nkind: Mesh",
            line: 1, field: "apiVersion", mentions: "must be appmesh.k8s.aws/v1beta2"),
        .init(
            name: "not YAML", from: "kind: Mesh\nmetadata:\n  name: shop", to: "kind: Mesh\nmetadata:\n  name: \"shop",
            line: 0, field: "(yaml)", mentions: "not valid YAML"),
    ]

    @Test("each broken manifest is refused with file, line, field and what is wrong", arguments: broken)
    func brokenManifest(_ b: Broken) {
        #expect(canary.contains(b.from), "fixture text not found")
        let text = canary.replacingOccurrences(of: b.from, with: b.to)
        do {
            _ = try ManifestReader.read([("mesh.yaml", text)])
            Issue.record("accepted: \(b.name)")
        } catch {
            let p = error.problems.first { $0.location.field.contains(b.field) }
            #expect(p != nil, "no problem on \(b.field): \(error.problems)")
            #expect(p?.message.contains(b.mentions) == true, "\(String(describing: p))")
            #expect(p?.location.file == "mesh.yaml")
            if b.line > 0 { #expect(p?.location.line == b.line, "\(String(describing: p))") }
        }
    }

    @Test("a definition given twice is refused, naming where it was first; the Mesh too")
    func duplicate() {
        let error = #expect(throws: MeshError.self) {
            try ManifestReader.read([("a.yaml", canary), ("b.yaml", canary)])
        }
        let twice =
            error?.problems.filter {
                $0.message.contains("is defined twice (first at a.yaml:") && $0.location.file == "b.yaml"
            } ?? []
        #expect(twice.contains { $0.message.hasPrefix("Mesh shop ") }, "\(String(describing: error?.problems))")
        #expect(twice.contains { $0.message.hasPrefix("VirtualNode ") })
    }
}

@Suite("manifest file cache")
struct ManifestFileCacheTests {
    @Test("an unchanged file is not parsed again, a changed one is, and the result is the same as without the cache")
    func cache() throws {
        let cache = ManifestReader.FileCache()
        let files = [("a.yaml", canary)]
        let first = try ManifestReader.read(files, cache: cache)
        let plain = try ManifestReader.read(files)
        #expect(first == plain)
        #expect(try ManifestReader.read(files, cache: cache) == first)
        let changed = [("a.yaml", canary.replacingOccurrences(of: "weight: 90", with: "weight: 80"))]
        let second = try ManifestReader.read(changed, cache: cache)
        let uncached = try ManifestReader.read(changed)
        #expect(second != first && second == uncached)
        // A broken file stays broken from the cache too.
        let broken = [("a.yaml", canary.replacingOccurrences(of: "weight: 90", with: "weight: 190"))]
        #expect(throws: MeshError.self) { try ManifestReader.read(broken, cache: cache) }
        #expect(throws: MeshError.self) { try ManifestReader.read(broken, cache: cache) }
    }
}
