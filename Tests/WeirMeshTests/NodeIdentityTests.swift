import Testing
@testable import WeirMesh

@Suite("Envoy node identities")
struct NodeIdentityTests {
    @Test("the forms App Mesh and its controller used", arguments: [
        ("mesh/shop/virtualNode/front_shop", NodeIdentity.appMesh(mesh: "shop", awsName: "front_shop")),
        ("arn:aws:appmesh:eu-west-1:111122223333:mesh/shop/virtualNode/front_shop", .appMesh(mesh: "shop", awsName: "front_shop")),
        ("shop/front", .kubernetes(ResourceRef(name: "front", namespace: "shop"))),
    ])
    func parses(_ id: String, _ expected: NodeIdentity) throws {
        #expect(try NodeIdentity.parse(id) == expected)
    }

    @Test("anything else is refused with the accepted forms", arguments: ["front", "mesh/shop/virtualRouter/x", "arn:aws:s3:::bucket/x", "mesh//virtualNode/x", "/front", "a/b/c"])
    func refused(_ id: String) {
        #expect {
            _ = try NodeIdentity.parse(id)
        } throws: { error in
            "\(error)".contains("mesh/<mesh>/virtualNode/<name>")
        }
    }

    @Test("identities resolve to the virtual node, by awsName default or namespace/name")
    func resolves() throws {
        let m = try ManifestReader.read([("mesh.yaml", canary)])
        #expect(m.virtualNode(for: try NodeIdentity.parse("mesh/shop/virtualNode/front_shop"))?.ref.description == "shop/front")
        #expect(m.virtualNode(for: try NodeIdentity.parse("shop/cart-v2"))?.ref.description == "shop/cart-v2")
        // Nodes without a meshRef belong to the only mesh defined, so another mesh's identity finds nothing.
        #expect(m.virtualNode(for: try NodeIdentity.parse("mesh/other/virtualNode/front_shop")) == nil)
        #expect(m.virtualNode(for: try NodeIdentity.parse("shop/nobody")) == nil)
    }
}
