import Foundation
import Testing
import WeirAgent
import WeirCapture
import WeirNetns

@Suite("the daemon's inputs and state, without root")
struct DaemonUnitTests {
    @Test("an enrollment request is read strictly: unknown keys and bad values are refused by name")
    func enrollmentBody() throws {
        func parse(_ json: String) throws(EnrollmentRefused) -> (
            path: String, labels: [String: String], request: PodRequest
        ) {
            try EnrollmentRequestBody.parse(Array(json.utf8), netnsDirectory: "/run/netns")
        }
        let ok = try parse(
            #"{"netns": "web-1", "mode": "forwarder", "nodeIDs": ["apps/web"], "labels": {"app": "web"}, "capture": {"outbound-port": 15101, "proxy-uid": ["1337", "1338"], "ipv6": false}, "appMesh": {"APPMESH_APP_PORTS": "8080"}}"#
        )
        #expect(ok.path == "/run/netns/web-1" && ok.labels == ["app": "web"])
        #expect(ok.request.mode == .forwarder && ok.request.nodeIDs == ["apps/web"])
        #expect(ok.request.capture.values[.proxyUID]?.map(\.value) == ["1337", "1338"])
        #expect(ok.request.capture.values[.outboundPort]?.map(\.value) == ["15101"])
        #expect(ok.request.appMesh?.values[.inboundPorts]?.map(\.value) == ["8080"])
        #expect(try parse(#"{"netns": "/proc/42/ns/net"}"#).path == "/proc/42/ns/net")
        let refusals: [(String, String)] = [
            (#"{"netns": "a", "nodeIds": ["x"]}"#, "unknown key 'nodeIds'; did you mean 'nodeIDs'?"),
            (#"{"netns": "a", "mode": "proxy"}"#, "mode: must be sidecar or forwarder"),
            (#"{"netns": "a/b"}"#, "a name has no '/'"),
            (#"{"mode": "sidecar"}"#, "netns: give"),
            (#"{"netns": "a", "capture": {"outbound-prot": "1"}}"#, "did you mean 'outbound-port'?"),
            (#"{"netns": "a", "capture": {"outbound-port": ["1", "2"]}}"#, "capture.outbound-port: give a string"),
            (#"{"netns": "a", "appMesh": {"PATH": "/bin"}}"#, "'PATH' is not a variable the proxy route manager read"),
            (
                #"{"netns": "a", "appMesh": {"APPMESH_APP_PORTS": "80", "APPMESH_APP_PORT": "81"}}"#,
                "'APPMESH_APP_PORT' is not a variable the proxy route manager read; did you mean 'APPMESH_APP_PORTS'?"
            ),
            (#"{"netns": "a", "nodeIDs": []}"#, "nodeIDs: must be a list"),
            ("[1]", "must be a JSON object"),
        ]
        for (body, message) in refusals {
            #expect(throws: EnrollmentRefused.self, "\(body)") { try parse(body) }
            do { _ = try parse(body) } catch { #expect(error.message.contains(message), "\(body): \(error.message)") }
        }
    }

    @Test("a sidecar pod's rules go to App Mesh's Envoy ports and let uid 1337 out; the request wins over selectors")
    func settingsLayers() throws {
        let c = try DaemonConfig.parse(
            """
            defaults:
              capture: {dns-port: "15053"}
            selectors:
              - netns: ["fwd-*"]
                mode: forwarder
                capture: {outbound-port: "15201"}
            """, file: "weir.yaml")
        let sidecar = try c.settings(name: "web", labels: [:])
        #expect(sidecar.mode == .sidecar && sidecar.nodeIDs == ["web"])
        #expect(sidecar.spec.inboundPort == 15000 && sidecar.spec.outboundPort == 15001)
        #expect(sidecar.spec.proxyUIDs == [1337] && sidecar.spec.dnsPort == 15053)
        let forwarder = try c.settings(name: "fwd-1", labels: [:])
        #expect(forwarder.mode == .forwarder && forwarder.spec.inboundPort == 15006)
        #expect(forwarder.spec.outboundPort == 15201 && forwarder.spec.proxyUIDs.isEmpty)
        var capture = CaptureSpecInput()
        capture.add(.outboundPort, "15301", from: "request")
        var appMesh = CaptureSpecInput()
        appMesh.add(.inboundPort, "15100", from: "APPMESH_ENVOY_INGRESS_PORT")
        appMesh.add(.outboundPort, "15101", from: "APPMESH_ENVOY_EGRESS_PORT")
        let asked = try c.settings(
            name: "fwd-2", labels: [:],
            request: PodRequest(mode: .sidecar, nodeIDs: ["apps/x"], capture: capture, appMesh: appMesh))
        #expect(asked.mode == .sidecar && asked.nodeIDs == ["apps/x"])
        // The request's capture wins over the selector's, which wins over App Mesh's variables.
        #expect(asked.spec.outboundPort == 15301 && asked.spec.inboundPort == 15100)
    }

    @Test("podXDS and workers are read and checked; a pod xDS endpoint needs a port or a socket")
    func podXDSConfig() throws {
        let c = try DaemonConfig.parse("podXDS: {port: 15020, socket: \"@mesh/xds\"}\nworkers: 3\n", file: "w.yaml")
        #expect(c.podXDS == PodXDSEndpoints(port: 15020, socket: "@mesh/xds") && c.workers == 3)
        let bad: [(String, String)] = [
            ("podXDS: {port: 70000}\n", "w.yaml:1: podXDS.port: '70000' must be a port"),
            ("podXDS: {socket: /run/x.sock}\n", "must be an abstract socket name"),
            ("podXDS: {port: 0, socket: none}\n", "a sidecar needs an xDS endpoint"),
            ("podXDS: {prot: 1}\n", "did you mean 'port'?"),
            ("workers: 0\n", "from 1 to 64"),
        ]
        for (text, message) in bad {
            do {
                _ = try DaemonConfig.parse(text, file: "w.yaml")
                Issue.record("\(text) was accepted")
            } catch { #expect(error.description.contains(message), "\(text): \(error.description)") }
        }
    }

    @Test("the state file keeps pods, specs and identities across a restart, written atomically")
    func stateFileRoundTrip() async throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("weirt-state-\(getpid())").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let file = PodStateFile(directory: dir, logger: .init(label: "test"))
        #expect(try file.read().isEmpty)
        var spec = CaptureSpec()
        spec.proxyUIDs = [1337]
        spec.inboundPort = 15000
        spec.mode = .tproxy
        let pods = [
            Enrollment(
                path: "/run/netns/a", identity: NamespaceIdentity(device: 4, inode: 4026532001), source: .api,
                settings: PodSettings(mode: .sidecar, nodeIDs: ["mesh/m/virtualNode/a"], spec: spec)),
            Enrollment(
                path: "/run/netns/b", identity: NamespaceIdentity(device: 4, inode: 4026532002),
                source: .netnsDirectory,
                settings: PodSettings(mode: .forwarder, nodeIDs: [], spec: CaptureSpec())),
        ]
        file.write([pods[0]])
        file.write(pods)
        await file.flush()
        #expect(try file.read() == pods)
        #expect(!FileManager.default.fileExists(atPath: file.path + ".tmp"))
        try "{\"version\": 2, \"pods\": []}".write(toFile: file.path, atomically: true, encoding: .utf8)
        #expect(throws: StateFileError.self) { try file.read() }
    }

    @Test("an nftables notification checks a protected pod now, and nothing else")
    func notificationChecks() {
        var r = PodRegistry()
        let p = Enrollment(
            path: "/run/netns/n", identity: NamespaceIdentity(device: 4, inode: 9), source: .api,
            settings: PodSettings(mode: .sidecar, nodeIDs: [], spec: CaptureSpec()))
        _ = r.apply(.enroll(p, request: nil), now: 0)
        #expect(r.apply(.changed(p.identity), now: 1).isEmpty)
        _ = r.apply(.installed(p.identity, error: nil), now: 2)
        #expect(r.apply(.changed(p.identity), now: 3) == [.check(p.identity)])
        #expect(r.apply(.changed(NamespaceIdentity(device: 4, inode: 10)), now: 4).isEmpty)
    }
}
