import Foundation
import Testing
@testable import WeirXDS
import WeirTestSupport

@Suite("weir bootstrap")
struct BootstrapTests {
    @Test(
        "the bootstrap is accepted by a real Envoy 1.40 (--mode validate)",
        arguments: [
            ["--xds", "unix:/run/weir/xds.sock"],
            ["--xds", "unix:/run/weir/xds.sock", "--delta"],
            ["--xds", "127.0.0.1:15010", "--admin-port", "15000"],
            ["--xds", "[::1]:15010", "--delta"],
        ])
    func envoyAccepts(_ args: [String]) throws {
        let envoy = try #require(envoyBinary, "Envoy is not installed in .venv; run scripts/install-deps")
        let out = try sh([weirBinary, "bootstrap", "--node", "mesh/shop/virtualNode/front_shop"] + args)
        let file = FileManager.default.temporaryDirectory.appendingPathComponent(
            "weir-bootstrap-\(getpid())-\(UInt32.random(in: 0..<1_000_000)).json")
        try out.output.write(to: file, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(at: file) }
        let check = try sh([envoy, "--mode", "validate", "-c", file.path, "-l", "error"], allowFailure: true)
        #expect(check.status == 0, "\(check.output)")
        #expect(check.output.contains("OK"))
        let json = try JSONSerialization.jsonObject(with: Data(out.output.utf8)) as? [String: Any]
        let ads = (json?["dynamic_resources"] as? [String: Any])?["ads_config"] as? [String: Any]
        #expect(ads?["api_type"] as? String == (args.contains("--delta") ? "DELTA_GRPC" : "GRPC"))
        #expect((json?["node"] as? [String: Any])?["id"] as? String == "mesh/shop/virtualNode/front_shop")
    }

    @Test(
        "bad input exits 2",
        arguments: [
            ["--node", "front", "--xds", "unix:/run/weir/xds.sock"],
            ["--node", "shop/front", "--xds", "xds.sock"],
            ["--node", "shop/front", "--xds", "unix:relative"],
        ])
    func badInput(_ args: [String]) throws {
        let r = try sh([weirBinary, "bootstrap"] + args, allowFailure: true)
        #expect(r.status == 2, "\(r.output)")
    }

    @Test("the Kubernetes form names the cluster after the virtual node")
    func kubernetesNode() throws {
        let b = try EnvoyBootstrap(nodeID: "shop/front", xds: .unix(path: "/x"))
        #expect(b.cluster == "front")
    }
}
