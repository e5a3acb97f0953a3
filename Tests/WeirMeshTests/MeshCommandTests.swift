import Foundation
import Testing
import WeirTestSupport

@Suite("weir mesh validate")
struct MeshCommandTests {
    @Test("a valid directory exits 0; a broken one exits 2 naming file, line and field")
    func validate() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent(
            "weir-mesh-\(getpid())-\(UInt32.random(in: 0..<1_000_000))")
        try FileManager.default.createDirectory(
            at: dir.appendingPathComponent("nested"), withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        try canary.write(to: dir.appendingPathComponent("nested/mesh.yaml"), atomically: true, encoding: .utf8)
        let ok = try sh([weirBinary, "mesh", "validate", dir.path], allowFailure: true)
        #expect(ok.status == 0, "\(ok.output)")
        #expect(ok.output.contains("3 virtual node(s)"))

        try canary.replacingOccurrences(of: "weight: 90", with: "weight: 190")
            .write(to: dir.appendingPathComponent("nested/mesh.yaml"), atomically: true, encoding: .utf8)
        let bad = try sh([weirBinary, "mesh", "validate", dir.path], allowFailure: true)
        #expect(bad.status == 2, "\(bad.output)")
        #expect(
            bad.output.contains("nested/mesh.yaml:51: spec.routes[0].httpRoute.action.weightedTargets[0].weight"),
            "\(bad.output)")

        let missing = try sh(
            [weirBinary, "mesh", "validate", dir.appendingPathComponent("nope").path], allowFailure: true)
        #expect(missing.status == 2)
    }
}

@Suite("weir mesh render and weir xds arguments")
struct MeshRenderCommandTests {
    static let meshDir = projectRoot.appendingPathComponent("Tests/WeirMeshTests/Goldens/mesh-drop").path

    @Test("render prints the node's Envoy resources as JSON, the same as the golden")
    func render() throws {
        let out = try sh(
            [weirBinary, "mesh", "render", Self.meshDir, "--node", "mesh/shop/virtualNode/web_shop"], allowFailure: true
        )
        #expect(out.status == 0, "\(out.output)")
        let golden = try String(
            contentsOf: projectRoot.appendingPathComponent("Tests/WeirMeshTests/Goldens/mesh-drop-web.json"),
            encoding: .utf8)
        #expect(out.output == golden)
        let k8s = try sh([weirBinary, "mesh", "render", Self.meshDir, "--node", "shop/web"], allowFailure: true)
        #expect(k8s.output == golden, "the <namespace>/<name> id names the same node")
    }

    @Test("explain: exit 0 and the route for a routed request, 3 and the reason for a 404, 2 for a bad request")
    func explain() throws {
        let node = ["--node", "mesh/shop/virtualNode/web_shop"]
        let routed = try sh(
            [weirBinary, "mesh", "explain", Self.meshDir, "--request", "GET http://catalog.shop:9080/items/7"] + node,
            allowFailure: true)
        #expect(routed.status == 0, "\(routed.output)")
        #expect(routed.output.contains("catalog_shop/items-by-id: matches"), "\(routed.output)")
        let missing = try sh(
            [weirBinary, "mesh", "explain", Self.meshDir, "--request", "GET http://catalog:9080/", "-H", "x-a: 1"]
                + node, allowFailure: true)
        #expect(missing.status == 3, "\(missing.output)")
        #expect(missing.output.contains("Envoy answers 404"), "\(missing.output)")
        let bad = try sh(
            [weirBinary, "mesh", "explain", Self.meshDir, "--request", "GET catalog:9080/"] + node, allowFailure: true)
        #expect(bad.status == 2 && bad.output.contains("needs a scheme"), "\(bad.output)")
    }

    @Test("an unknown node or a malformed id exits 2 and says which")
    func unknownNode() throws {
        let out = try sh(
            [weirBinary, "mesh", "render", Self.meshDir, "--node", "mesh/shop/virtualNode/ghost"], allowFailure: true)
        #expect(out.status == 2 && out.output.contains("ghost"), "\(out.output)")
        let bad = try sh([weirBinary, "mesh", "render", Self.meshDir, "--node", "not-an-id"], allowFailure: true)
        #expect(bad.status == 2 && bad.output.contains("not-an-id"), "\(bad.output)")
    }

    @Test(
        "weir xds refuses bad arguments with exit 2 before listening",
        arguments: [
            ["--listen", "nowhere"],
            ["--listen", "127.0.0.1:15999"],
            ["--listen", "127.0.0.1:15999", "--mesh", "/tmp", "--upstream", "127.0.0.1:1"],
            ["--listen", "127.0.0.1:15999", "--upstream", "bad address"],
        ])
    func xdsArguments(_ args: [String]) throws {
        let out = try sh([weirBinary, "xds"] + args, allowFailure: true)
        #expect(out.status == 2, "\(out.output)")
    }

    @Test("weir xds refuses a --listen path that is a file with exit 2, and leaves the file as it is")
    func xdsListenOnAFile() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent(
            "weir-listen-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let file = dir.appendingPathComponent("not-a-socket").path
        try "keep me\n".write(toFile: file, atomically: false, encoding: .utf8)
        let out = try sh([weirBinary, "xds", "--listen", "unix:\(file)", "--state", dir.path], allowFailure: true)
        #expect(out.status == 2 && out.output.contains("is not a socket"), "\(out.output)")
        #expect(try String(contentsOfFile: file, encoding: .utf8) == "keep me\n")
        #expect(
            try FileManager.default.contentsOfDirectory(atPath: dir.path) == ["not-a-socket"],
            "nothing written to --state")
    }
}
