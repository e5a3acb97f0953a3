import Testing
@testable import WeirMesh

@Suite("Envoy node identities")
struct NodeIdentityTests {
    @Test(
        "the forms App Mesh and its controller used",
        arguments: [
            ("mesh/shop/virtualNode/front_shop", NodeIdentity.appMesh(mesh: "shop", awsName: "front_shop")),
            (
                "arn:aws:appmesh:eu-west-1:111122223333:mesh/shop/virtualNode/front_shop",
                .appMesh(mesh: "shop", awsName: "front_shop")
            ),
            ("shop/front", .kubernetes(ResourceRef(name: "front", namespace: "shop"))),
        ])
    func parses(_ id: String, _ expected: NodeIdentity) throws {
        #expect(try NodeIdentity.parse(id) == expected)
    }

    @Test(
        "anything else is refused with the accepted forms",
        arguments: [
            "front", "mesh/shop/virtualRouter/x", "arn:aws:s3:::bucket/x", "mesh//virtualNode/x", "/front", "a/b/c",
        ])
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
        #expect(
            m.virtualNode(for: try NodeIdentity.parse("mesh/shop/virtualNode/front_shop"))?.ref.description
                == "shop/front")
        #expect(m.virtualNode(for: try NodeIdentity.parse("shop/cart-v2"))?.ref.description == "shop/cart-v2")
        // Nodes without a meshRef belong to the only mesh defined, so another mesh's identity finds nothing.
        #expect(m.virtualNode(for: try NodeIdentity.parse("mesh/other/virtualNode/front_shop")) == nil)
        #expect(m.virtualNode(for: try NodeIdentity.parse("shop/nobody")) == nil)
    }
}

@Suite("mesh membership by namespace")
struct MeshMembershipTests {
    static let twoMeshes = """
        apiVersion: v1
        kind: Namespace
        metadata: {name: shop, labels: {mesh: retail}}
        ---
        apiVersion: appmesh.k8s.aws/v1beta2
        kind: Mesh
        metadata: {name: retail}
        spec:
          namespaceSelector: {matchLabels: {mesh: retail}}
          egressFilter: {type: ALLOW_ALL}
        ---
        apiVersion: appmesh.k8s.aws/v1beta2
        kind: Mesh
        metadata: {name: ledger}
        spec:
          namespaceSelector: {matchExpressions: [{key: kubernetes.io/metadata.name, operator: In, values: [bank]}]}
        ---
        apiVersion: appmesh.k8s.aws/v1beta2
        kind: VirtualNode
        metadata: {name: front, namespace: shop}
        spec: {listeners: [{portMapping: {port: 8080, protocol: http}}]}
        ---
        apiVersion: appmesh.k8s.aws/v1beta2
        kind: VirtualNode
        metadata: {name: teller, namespace: bank}
        spec: {listeners: [{portMapping: {port: 8080, protocol: http}}]}
        """
    static let stray = """

        ---
        apiVersion: appmesh.k8s.aws/v1beta2
        kind: VirtualNode
        metadata: {name: stray, namespace: lab}
        spec: {listeners: [{portMapping: {port: 8080, protocol: http}}]}
        """

    @Test(
        "with several meshes, a node without meshRef belongs to the one mesh whose namespaceSelector takes its namespace"
    )
    func bySelector() throws {
        let m = try ManifestReader.read([("mesh.yaml", Self.twoMeshes)])
        let compiler = MeshCompiler(m)
        #expect(compiler.nodeIDs.contains("mesh/retail/virtualNode/front_shop"))
        #expect(compiler.nodeIDs.contains("mesh/ledger/virtualNode/teller_bank"))
        #expect(
            m.virtualNode(for: try NodeIdentity.parse("mesh/retail/virtualNode/front_shop"))?.ref.description
                == "shop/front")
        #expect(m.virtualNode(for: try NodeIdentity.parse("mesh/ledger/virtualNode/front_shop")) == nil)
        // Each node gets its own mesh's egress filter: retail allows all, ledger drops.
        #expect(try compiler.compile(nodeID: "shop/front").clusters.contains { $0.name == "passthrough" })
        #expect(try !compiler.compile(nodeID: "bank/teller").clusters.contains { $0.name == "passthrough" })
    }

    static func gatewayIn(_ namespace: String) -> String {
        """

        ---
        apiVersion: appmesh.k8s.aws/v1beta2
        kind: VirtualGateway
        metadata: {name: door, namespace: \(namespace)}
        spec:
          namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: \(namespace)}}
          listeners: [{portMapping: {port: 8088, protocol: http}}]
        """
    }

    @Test(
        "with several meshes, a virtual gateway joins its namespace's mesh, and one in no mesh's namespace is an error")
    func gateways() throws {
        let m = try ManifestReader.read([("mesh.yaml", Self.twoMeshes + Self.gatewayIn("bank"))])
        let compiler = MeshCompiler(m)
        #expect(compiler.nodeIDs.contains("mesh/ledger/virtualGateway/door_bank"), "\(compiler.nodeIDs)")
        #expect(!compiler.nodeIDs.contains("mesh/retail/virtualGateway/door_bank"))
        #expect(
            m.virtualGateway(for: try NodeIdentity.parse("mesh/ledger/virtualGateway/door_bank"))?.ref.description
                == "bank/door")
        #expect(m.virtualGateway(for: try NodeIdentity.parse("mesh/retail/virtualGateway/door_bank")) == nil)
        #expect(
            try compiler.compile(nodeID: "mesh/ledger/virtualGateway/door_bank").listeners.map(\.name) == [
                "gateway_8088"
            ])

        let text = Self.twoMeshes + Self.gatewayIn("lab")
        let error = #expect(throws: MeshError.self) { try ManifestReader.read([("mesh.yaml", text)]) }
        let p = error?.problems.first { $0.location.field == "VirtualGateway lab/door" }
        #expect(p?.message.contains("no mesh takes namespace 'lab'") == true, "\(String(describing: error?.problems))")
        let named = text.replacingOccurrences(
            of: "spec:\n  namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: lab}}",
            with:
                "spec:\n  meshRef: {name: retail}\n  namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: lab}}"
        )
        #expect(named != text)
        #expect(
            try MeshCompiler(ManifestReader.read([("mesh.yaml", named)])).nodeIDs.contains(
                "mesh/retail/virtualGateway/door_lab"))
    }

    @Test(
        "with several meshes, a node that no mesh or two meshes take is an error naming its namespace; meshRef settles it",
        arguments: [
            (false, "no mesh takes namespace 'lab'"), (true, "several meshes take namespace 'lab' (ledger, retail)"),
        ])
    func unplaced(_ widen: Bool, _ message: String) throws {
        var text = Self.twoMeshes + Self.stray
        if widen {
            // Both meshes take every namespace.
            text = text.replacingOccurrences(
                of: "namespaceSelector: {matchLabels: {mesh: retail}}", with: "namespaceSelector: {}"
            )
            .replacingOccurrences(
                of:
                    "namespaceSelector: {matchExpressions: [{key: kubernetes.io/metadata.name, operator: In, values: [bank]}]}",
                with: "namespaceSelector: {}")
        }
        do {
            _ = try ManifestReader.read([("mesh.yaml", text)])
            Issue.record("accepted a node with no single mesh")
        } catch {
            let p = error.problems.first { $0.location.field == "VirtualNode lab/stray" }
            #expect(p?.message.contains(message) == true, "\(error.problems)")
            #expect((p?.location.line ?? 0) > 0)
        }
        guard !widen else { return }  // with both meshes taking everything, the other nodes are unplaced too
        let named = text.replacingOccurrences(
            of: "metadata: {name: stray, namespace: lab}\nspec: {",
            with: "metadata: {name: stray, namespace: lab}\nspec: {meshRef: {name: ledger}, ")
        #expect(named != text)
        #expect(
            try MeshCompiler(ManifestReader.read([("mesh.yaml", named)])).nodeIDs.contains(
                "mesh/ledger/virtualNode/stray_lab"))
    }
}
