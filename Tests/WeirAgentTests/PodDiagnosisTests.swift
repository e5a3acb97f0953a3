import Foundation
import Testing
import WeirAgent
import WeirCapture
import WeirMesh
import WeirNetns
import WeirTestSupport

/// `weir status POD`'s problems, decided from a pod's view, its node's resources (the color example's) and the
/// sockets listening in it: each trouble named, and none when there is none.
@Suite("pod diagnosis, without root")
struct PodDiagnosisTests {
    static func resources(_ node: String) throws -> EnvoyResources {
        let dir = projectRoot.appendingPathComponent("examples/color")
        let files = try ["mesh.yaml", "client.yaml", "color.yaml"].map {
            ($0, try String(contentsOf: dir.appendingPathComponent($0), encoding: .utf8))
        }
        return try MeshCompiler(try ManifestReader.read(files)).compile(nodeID: node)
    }

    /// A sidecar pod's view with one connected sidecar whose RDS state is `rds` (sent, ACKed, NACKed, message).
    static func view(
        node: String = "demo/color-v1", rules: String = "healthy", connected: Bool = true,
        rds: (String?, String?, String?, String?) = ("v1", "v1", nil, nil)
    ) throws -> PodView {
        let sidecar: [String: Any] = [
            "id": 1, "nodeID": node, "protocol": "sotw", "peer": "ipv4:127.0.0.1:5000", "endpoint": "pod",
            "types": [
                "RDS": [
                    "subscribedNames": [], "wildcard": true, "pendingNames": [], "lastSentVersion": rds.0 as Any,
                    "lastAckedVersion": rds.1 as Any, "lastNackVersion": rds.2 as Any, "lastNackMessage": rds.3 as Any,
                ].compactMapValues { $0 is NSNull ? nil : $0 }
            ],
        ]
        let object: [String: Any] = [
            "name": "pod", "netns": "/run/netns/pod", "namespace": "net:[1]", "source": "api", "mode": "sidecar",
            "nodeIDs": [node], "phase": "protected", "repairs": 0, "restored": false, "spec": [], "rules": rules,
            "listeners": ["xds 127.0.0.1:15010"], "sidecars": connected ? [sidecar] : [], "refusedStreams": 0,
        ]
        let data = try JSONSerialization.data(withJSONObject: object)
        return try JSONDecoder().decode(PodView.self, from: data)
    }

    static func endpoint(_ text: String, _ port: UInt16) -> Endpoint {
        if let v4 = IPAddressText.parseIPv4(text) { return Endpoint(family: .ipv4, address: v4, port: port) }
        return Endpoint(family: .ipv6, address: IPAddressText.parseIPv6(text)!, port: port)
    }

    @Test(
        "the application's port is served only by a socket on the address Envoy dials, its wildcard or ::",
        arguments: [
            ([("127.0.0.1", 8080)], true), ([("0.0.0.0", 8080)], true), ([("::", 8080)], true),
            ([("::1", 8080)], false), ([("127.0.0.2", 8080)], false), ([("198.18.10.11", 8080)], false),
            ([("127.0.0.1", 8081)], false), ([], false),
        ] as [([(String, UInt16)], Bool)])
    func applicationPort(_ sockets: [(String, UInt16)], _ served: Bool) throws {
        let listening = sockets.map { Self.endpoint($0.0, $0.1) }
        let problems = PodDiagnosis.problems(
            view: try Self.view(), sidecar: true, resources: ["demo/color-v1": try Self.resources("demo/color-v1")],
            listening: listening)
        if served {
            #expect(problems.isEmpty, "\(problems)")
        } else {
            #expect(problems.count == 1, "\(problems)")
            #expect(problems.first?.hasPrefix("virtual node listener 8080: nothing listens on 127.0.0.1:8080") == true)
        }
        if sockets.first?.0 == "198.18.10.11" {
            #expect(problems.first?.contains("(only on 198.18.10.11:8080)") == true, "\(problems)")
        }
    }

    @Test("sockets that cannot be read say nothing of the ports")
    func unreadable() throws {
        let problems = PodDiagnosis.problems(
            view: try Self.view(), sidecar: true, resources: ["demo/color-v1": try Self.resources("demo/color-v1")],
            listening: nil)
        #expect(problems.isEmpty, "\(problems)")
    }

    @Test("a NACK is named with Envoy's reason and the version kept, until a later version is ACKed")
    func nack() throws {
        let resources = ["demo/color-v1": try Self.resources("demo/color-v1")]
        let listening = [Self.endpoint("0.0.0.0", 8080)]
        let nacked = PodDiagnosis.problems(
            view: try Self.view(rds: ("v2", "v1", "v2", "missing ]\n")), sidecar: true, resources: resources,
            listening: listening)
        #expect(nacked == ["demo/color-v1 NACKed RDS version v2: missing ]; it keeps running on version v1"])
        let recovered = PodDiagnosis.problems(
            view: try Self.view(rds: ("v3", "v3", "v2", "missing ]")), sidecar: true, resources: resources,
            listening: listening)
        #expect(recovered.isEmpty, "\(recovered)")
    }

    @Test("no sidecar connected, a node the mesh lacks, drifted rules, a backend without endpoints")
    func others() throws {
        let lonely = PodDiagnosis.problems(
            view: try Self.view(connected: false), sidecar: true, resources: [:], listening: [])
        #expect(lonely.count == 1 && lonely[0].hasPrefix("no sidecar is connected"), "\(lonely)")
        let unknown = PodDiagnosis.problems(
            view: try Self.view(node: "demo/ghost"), sidecar: true, resources: [:], listening: [])
        #expect(unknown.count == 1 && unknown[0].hasPrefix("node demo/ghost: the mesh has no virtual node"))
        let drifted = PodDiagnosis.problems(
            view: try Self.view(rules: "missing-rule: chain output"), sidecar: false, resources: [:], listening: nil)
        #expect(drifted.count == 1 && drifted[0].hasPrefix("rules: missing-rule: chain output"), "\(drifted)")
        var client = try Self.resources("demo/client")
        #expect(
            PodDiagnosis.problems(
                view: try Self.view(node: "demo/client"), sidecar: true, resources: ["demo/client": client],
                listening: []
            ).isEmpty)
        client.endpoints.removeAll { $0.clusterName == "vn_color-v2_demo_8080" }
        let empty = PodDiagnosis.problems(
            view: try Self.view(node: "demo/client"), sidecar: true, resources: ["demo/client": client], listening: [])
        #expect(empty == ["backend cluster vn_color-v2_demo_8080 has no endpoints: requests routed to it get 503 (UH)"])
    }
}
