import Foundation
import Testing
import WeirAgent
import WeirCapture
import WeirNetns
import WeirSystem
import WeirTestSupport

#if canImport(Glibc)
    import Glibc
#endif

/// A `weir daemon` process with its own runtime, state and mesh directories, and the pod namespaces a test makes
/// for it: sidecar pods with a route out (where captured connections are caught on the sidecar's port), and
/// forwarder pods joined by a veth each to one server namespace. `close()` removes all of it.
final class DaemonScene: @unchecked Sendable {
    // Set up in init and by the test's own thread; read afterwards.
    let id: String
    let dir: String
    let server: String
    var pods: [String] = []
    var forwarderIndex: [String: Int] = [:]
    var daemon: Spawned?
    var nextLink = 1

    init() throws {
        id = "\(getpid() % 1000)\(UInt32.random(in: 0..<100))"
        dir = "/tmp/weirt-daemon-\(id)"
        server = "weirt-d\(id)-srv"
        try? FileManager.default.removeItem(atPath: dir)
        try FileManager.default.createDirectory(atPath: dir + "/mesh", withIntermediateDirectories: true)
        try sh("ip", "netns", "add", server)
        try sh("ip", "-n", server, "link", "set", "lo", "up")
    }

    var runtime: String { dir + "/run" }
    var adminSocket: String { runtime + "/admin.sock" }
    func name(_ source: String, _ mode: PodMode, _ i: Int) -> String {
        "weirt-d\(id)-\(source)-\(mode == .forwarder ? "f" : "s")\(i)"
    }

    /// The config, with `extra` lines; forwarder pods are those whose name has `-f`. The full check runs once a
    /// minute only, so a repair within seconds is the nftables notifications' doing.
    func config(_ extra: String = "") -> String {
        """
        netnsDirectory: /run/netns
        runtimeDirectory: \(runtime)
        stateDirectory: \(dir)/state
        meshDirectory: \(dir)/mesh
        checkInterval: 60
        selectors:
          - netns: ["weirt-d\(id)-*-f*"]
            mode: forwarder
        \(extra)
        """
    }

    /// Makes a pod namespace: a forwarder pod gets a veth to the server (198.18.K.1 ↔ .2), a sidecar pod a link
    /// whose subnet (198.19.0.0/24) its captured connections aim at.
    @discardableResult
    func addPod(_ name: String, forwarder: Bool) throws -> String {
        try sh("ip", "netns", "add", name)
        pods.append(name)
        try sh("ip", "-n", name, "link", "set", "lo", "up")
        if forwarder {
            let k = nextLink
            nextLink += 1
            forwarderIndex[name] = k
            let (a, b) = ("wd\(id)a\(k)", "wd\(id)b\(k)")
            try sh("ip", "link", "add", a, "netns", name, "type", "veth", "peer", "name", b, "netns", server)
            try sh("ip", "-n", name, "addr", "add", "198.18.\(k).1/24", "dev", a)
            try sh("ip", "-n", server, "addr", "add", "198.18.\(k).2/24", "dev", b)
            try sh("ip", "-n", name, "link", "set", a, "up")
            try sh("ip", "-n", server, "link", "set", b, "up")
        } else {
            // (No dummy module on every machine: a veth pair with both ends in the pod gives the route.)
            try sh("ip", "-n", name, "link", "add", "d0", "type", "veth", "peer", "name", "d1")
            try sh("ip", "-n", name, "addr", "add", "198.19.0.1/24", "dev", "d0")
            try sh("ip", "-n", name, "link", "set", "d0", "up")
            try sh("ip", "-n", name, "link", "set", "d1", "up")
        }
        return name
    }

    func deletePod(_ name: String) throws {
        try sh("ip", "netns", "del", name)
        pods.removeAll { $0 == name }
    }

    func start(config text: String, log: String = "daemon.log") throws -> Spawned {
        let path = dir + "/weir.yaml"
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        let d = try Spawned(
            [weirBinary, "daemon", "--config", path], environment: ["WEIR_LOG_LEVEL": "info"],
            log: URL(fileURLWithPath: dir + "/" + log))
        daemon = d
        return d
    }

    func admin(_ target: String) -> String? { unixHTTPGet(adminSocket, target) }

    func podViews() -> [PodView] {
        guard let text = admin("/pods") else { return [] }
        return (try? JSONDecoder().decode([PodView].self, from: Data(text.utf8))) ?? []
    }

    func view(_ name: String) -> PodView? { podViews().first { $0.name == name } }

    /// `weir` against this daemon.
    func weir(_ args: String...) throws -> (status: Int32, output: String) {
        try sh([weirBinary] + args + ["--runtime-directory", runtime], allowFailure: true)
    }

    func close() {
        daemon?.stop()
        for p in pods { deleteNamespace(p) }
        deleteNamespace(server)
        try? FileManager.default.removeItem(atPath: dir)
    }

    // MARK: traffic

    /// A sidecar pod's outbound connection lands on the sidecar's port (15001) with its original destination.
    func sidecarCaptures(_ pod: String) throws -> Bool {
        let ns = NetworkNamespace(path: "/run/netns/\(pod)")
        let envoy = try TestSockets.listen(ns, .ipv4, port: 15001)
        defer { Glibc.close(envoy) }
        let landing = try TestSockets.connect(
            from: ns, .ipv4, to: [198, 19, 0, 9], port: 8080, capture: envoy, server: nil)
        return landing == .captured(address: [198, 19, 0, 9], port: 8080)
    }

    /// A forwarder pod's outbound connection reaches the server through weir's forwarder: the server sees another
    /// source port than the client's (a relay), and bytes cross.
    func forwarderRelays(_ pod: String, server listener: Int32) throws -> Bool {
        guard let k = forwarderIndex[pod] else { return false }
        let ns = NetworkNamespace(path: "/run/netns/\(pod)")
        let client = try ns.run { () -> Int32 in
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            var tv = timeval(tv_sec: 3, tv_usec: 0)
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
            let a = SocketAddressBytes.ipv4([198, 18, UInt8(k), 2], port: 8080)
            let rc = withUnsafeBytes(of: a.storage) {
                Glibc.connect(fd, $0.baseAddress!.assumingMemoryBound(to: sockaddr.self), a.length)
            }
            if rc != 0 {
                Glibc.close(fd)
                return -1
            }
            return fd
        }
        guard client >= 0 else { return false }
        defer { Glibc.close(client) }
        guard let accepted = TestSockets.accept(listener, timeoutMilliseconds: 3000) else { return false }
        defer { Glibc.close(accepted) }
        func port(_ fd: Int32, peer: Bool) -> UInt16? {
            var ss = sockaddr_storage()
            var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
            _ = withUnsafeMutablePointer(to: &ss) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    peer ? getpeername(fd, $0, &len) : getsockname(fd, $0, &len)
                }
            }
            return SocketAddressBytes(storage: ss, length: len).ip?.port
        }
        guard let clientPort = port(client, peer: false), let seen = port(accepted, peer: true), clientPort != seen
        else { return false }
        let message: [UInt8] = Array("ping \(pod)".utf8)
        _ = message.withUnsafeBytes { send(accepted, $0.baseAddress, $0.count, 0) }
        var buffer = [UInt8](repeating: 0, count: 128)
        let n = recv(client, &buffer, buffer.count, 0)
        return n == message.count && Array(buffer[0..<n]) == message
    }

    /// The server's listener on 0.0.0.0:8080 (every forwarder pod's destination).
    func serverListener() throws -> Int32 {
        try TestSockets.listen(NetworkNamespace(path: "/run/netns/\(server)"), .ipv4, port: 8080)
    }

    /// Whether something listens on `port` (TCP, 127.0.0.1) and on the abstract socket `name` inside the pod.
    func xdsEndpointOpen(_ pod: String, port: UInt16 = 15010, abstract name: String = "@weir/xds") throws -> Bool {
        try NetworkNamespace(path: "/run/netns/\(pod)").run { () -> Bool in
            let tcp = try FileDescriptor.tcp(ipv6: false)
            _ = try tcp.connect(.ipv4([127, 0, 0, 1], port: port), describedAs: "xds")
            let unix = try FileDescriptor.unixStream()
            _ = try unix.connect(.unix(name), describedAs: "xds unix")
            return true
        }
    }

    /// The nftables ruleset of a pod with handles (a rewrite changes them).
    func ruleset(_ pod: String) throws -> String {
        try sh("ip", "netns", "exec", pod, "nft", "-a", "list", "ruleset").output
    }
}

/// One ADS stream from inside a pod, with grpcio: "OK VERSION" or "ERROR CODE DETAILS".
func adsOnce(pod: String, target: String, node: String) -> String {
    let r = try? sh(
        ["ip", "netns", "exec", pod, venvPython, helperScript("ads_once.py"), target, node], allowFailure: true)
    return (r?.output ?? "").trimmingCharacters(in: .whitespacesAndNewlines)
}

@Suite("weir daemon, in namespaces", .serialized, .enabled(if: canRunNamespaceTests))
struct DaemonTests {
    static let mesh = """
        apiVersion: appmesh.k8s.aws/v1beta2
        kind: Mesh
        metadata: {name: colors}
        spec: {egressFilter: {type: DROP_ALL}}
        ---
        apiVersion: appmesh.k8s.aws/v1beta2
        kind: VirtualNode
        metadata: {name: front, namespace: apps}
        spec:
          listeners: [{portMapping: {port: 8080, protocol: http}}]
        ---
        apiVersion: appmesh.k8s.aws/v1beta2
        kind: VirtualNode
        metadata: {name: back, namespace: apps}
        spec:
          listeners: [{portMapping: {port: 9080, protocol: http}}]
        """

    @Test("50 pods from each source are protected in both modes, served in their namespaces, repaired and released")
    func fiftyFromEachSource() async throws {
        let scene = try DaemonScene()
        defer { scene.close() }
        try Self.mesh.write(toFile: scene.dir + "/mesh/mesh.yaml", atomically: true, encoding: .utf8)
        var all: [String] = []
        // Config pods and half the directory's pods exist before the start; the rest appear while it runs.
        var staticPods = "pods:\n"
        for i in 0..<50 {
            let n = scene.name("cfg", i % 2 == 0 ? .forwarder : .sidecar, i)
            staticPods += "  - netns: \(n)\n"
            // Two of them appear only after the start: enrolled then.
            if i < 48 { all.append(try scene.addPod(n, forwarder: i % 2 == 0)) }
        }
        for i in 0..<25 {
            all.append(
                try scene.addPod(scene.name("dir", i % 2 == 0 ? .forwarder : .sidecar, i), forwarder: i % 2 == 0))
        }
        let d = try scene.start(config: scene.config("select: [\"weirt-d\(scene.id)-dir-*\"]\n" + staticPods))
        #expect(eventually(20) { scene.admin("/readyz") == "ready\n" }, "\(d.output.suffix(2000))")
        for i in 25..<50 {
            all.append(
                try scene.addPod(scene.name("dir", i % 2 == 0 ? .forwarder : .sidecar, i), forwarder: i % 2 == 0))
        }
        for i in 48..<50 {
            all.append(
                try scene.addPod(scene.name("cfg", i % 2 == 0 ? .forwarder : .sidecar, i), forwarder: i % 2 == 0))
        }
        // API pods: enrolled with weir enroll, which returns once rules and listeners are in place.
        for i in 0..<50 {
            let n = try scene.addPod(scene.name("api", i % 2 == 0 ? .forwarder : .sidecar, i), forwarder: i % 2 == 0)
            all.append(n)
            let node = i == 1 ? "front_apps" : i == 7 ? "back_apps" : nil
            let r =
                try node.map { try scene.weir("enroll", n, "--node-id", "mesh/colors/virtualNode/\($0)") }
                ?? scene.weir("enroll", n)
            #expect(r.status == 0, "\(n): \(r.output)")
        }
        #expect(eventually(20) { scene.podViews().filter { $0.phase == "protected" }.count == 150 })
        #expect(scene.admin("/readyz") == "ready\n")

        // Least privilege: three capabilities, in every set that can hold one.
        let caps = Privileges.statusLines(pid: "\(d.process.processIdentifier)")
        #expect(caps.contains("CapEff:\t0000000000203000"), "\(caps)")
        #expect(caps.contains("CapPrm:\t0000000000203000"), "\(caps)")
        #expect(caps.contains("CapBnd:\t0000000000203000"), "\(caps)")
        #expect(caps.contains("CapInh:\t0000000000000000") && caps.contains("CapAmb:\t0000000000000000"))

        // Traffic is captured in every pod: to the sidecar's port, or relayed by the shared forwarder.
        let listener = try scene.serverListener()
        defer { Glibc.close(listener) }
        let views = Dictionary(uniqueKeysWithValues: scene.podViews().map { ($0.name, $0) })
        for n in all {
            let v = try #require(views[n], "\(n) is not enrolled")
            #expect(v.rules == "healthy", "\(n): \(v.rules)")
            if scene.forwarderIndex[n] != nil {
                #expect(v.mode == "forwarder")
                #expect(try scene.forwarderRelays(n, server: listener), "\(n) was not relayed")
            } else {
                #expect(v.mode == "sidecar")
                #expect(try scene.sidecarCaptures(n), "\(n) was not captured")
                #expect(try scene.xdsEndpointOpen(n), "\(n) has no xDS endpoint")
            }
        }
        #expect(views.values.filter { $0.source == "config" }.count == 50)
        #expect(views.values.filter { $0.source == "netns-directory" }.count == 50)
        #expect(views.values.filter { $0.source == "api" }.count == 50)

        // Identity from the namespace: a pod's endpoint serves its own node id, and refuses another's.
        let front = scene.name("api", .sidecar, 1)
        #expect(
            adsOnce(pod: front, target: "127.0.0.1:15010", node: "mesh/colors/virtualNode/front_apps").hasPrefix("OK"))
        #expect(
            adsOnce(pod: front, target: "unix-abstract:weir/xds", node: "mesh/colors/virtualNode/front_apps")
                .hasPrefix("OK"))
        let other = scene.name("api", .sidecar, 3)
        let denied = adsOnce(pod: other, target: "unix-abstract:weir/xds", node: "mesh/colors/virtualNode/front_apps")
        #expect(denied.hasPrefix("ERROR PERMISSION_DENIED"), "\(denied)")
        #expect(scene.view(other)?.refusedStreams == 1)
        let metrics = scene.admin("/metrics") ?? ""
        #expect(metrics.contains("weir_xds_refused_streams_total 1"))
        #expect(metrics.contains("weir_daemon_pods{phase=\"protected\"} 150"))
        #expect(metrics.contains("weir_daemon_rule_apply_seconds_count "))
        let json = try scene.weir("status", "--json")
        let decoded = try JSONSerialization.jsonObject(with: Data(json.output.utf8)) as? [String: Any]
        #expect(decoded?["ready"] as? Bool == true && (decoded?["pods"] as? [Any])?.count == 150)

        // A real Envoy sidecar, bootstrapped with weir bootstrap to the endpoint inside its pod, gets its config.
        var sidecar: Spawned?
        defer { sidecar?.stop() }
        if let envoy = envoyBinary {
            let boot = try sh(
                weirBinary, "bootstrap", "--node", "mesh/colors/virtualNode/front_apps", "--xds", "unix:@weir/xds",
                "--admin-port", "15902")
            let bootPath = scene.dir + "/envoy.json"
            try boot.output.write(toFile: bootPath, atomically: true, encoding: .utf8)
            let e = try Spawned(
                [envoy, "-c", bootPath, "--base-id", "\(UInt32.random(in: 1000..<60000))", "-l", "warning"],
                namespace: front, asProxyUser: true, log: URL(fileURLWithPath: scene.dir + "/envoy.log"))
            sidecar = e
            // A second pod's Envoy on the loopback TCP endpoint, with its own node id.
            let back = scene.name("api", .sidecar, 7)
            let backBoot = try sh(
                weirBinary, "bootstrap", "--node", "mesh/colors/virtualNode/back_apps", "--xds", "127.0.0.1:15010",
                "--admin-port", "15903")
            try backBoot.output.write(toFile: scene.dir + "/envoy-back.json", atomically: true, encoding: .utf8)
            let e2 = try Spawned(
                [envoy, "-c", scene.dir + "/envoy-back.json", "--base-id", "\(UInt32.random(in: 1000..<60000))"],
                namespace: back, asProxyUser: true, log: URL(fileURLWithPath: scene.dir + "/envoy-back.log"))
            defer { e2.stop() }
            #expect(
                eventually(20) {
                    scene.view(front)?.sidecars.contains { $0.types["LDS"]?.lastAckedVersion != nil } == true
                }, "\(e.output.suffix(1500))")
            #expect(
                eventually(20) {
                    scene.view(back)?.sidecars.contains {
                        $0.nodeID == "mesh/colors/virtualNode/back_apps" && $0.types["LDS"]?.lastAckedVersion != nil
                    } == true
                }, "\(e2.output.suffix(1500))")
            // What the sidecar was sent, and what it ACKed, from the admin API.
            let dump = scene.admin("/xds/config_dump?node=mesh/colors/virtualNode/front_apps") ?? ""
            #expect(dump.contains("\"egress\"") && dump.contains("lastAckedVersion"), "\(dump.prefix(500))")
            #expect(scene.admin("/xds/clients")?.contains("mesh/colors/virtualNode/back_apps") == true)
            let listeners = httpText(front, "http://127.0.0.1:15902/listeners") ?? ""
            #expect(listeners.contains("15000") || listeners.contains("15001"), "\(listeners)")
            let status = try scene.weir("status", front)
            #expect(status.output.contains("ACKed"), "\(status.output)")
        } else {
            Issue.record("Envoy is not installed (scripts/install-deps)")
        }

        // Tampering is repaired, and the repair shows in weir status.
        let victims = Array(all.filter { scene.forwarderIndex[$0] == nil }.prefix(3))
        let handle = try sh("ip", "netns", "exec", victims[0], "nft", "-a", "list", "chain", "inet", "weir", "output")
            .output.split(separator: "\n").first { $0.contains("skuid") }?.split(separator: " ").last
        try sh(
            "ip", "netns", "exec", victims[0], "nft", "delete", "rule", "inet", "weir", "output", "handle",
            String(handle ?? ""))
        try sh("ip", "netns", "exec", victims[1], "nft", "flush", "table", "inet", "weir")
        // The capture port changed: the redirect rule replaced by one to another port.
        let redirect = try sh("ip", "netns", "exec", victims[2], "nft", "-a", "list", "chain", "inet", "weir", "output")
            .output.split(separator: "\n").first { $0.contains("redirect to") }?.split(separator: " ").last
        try sh(
            "ip", "netns", "exec", victims[2], "nft", "replace", "rule", "inet", "weir", "output", "handle",
            String(redirect ?? ""), "meta", "l4proto", "tcp", "redirect", "to", ":15099")
        for v in victims {
            #expect(eventually(5) { (scene.view(v)?.repairs ?? 0) >= 1 && scene.view(v)?.rules == "healthy" }, "\(v)")
            #expect(try sh([weirBinary, "check", "--netns", "/run/netns/\(v)"], allowFailure: true).status == 0)
            #expect(try scene.weir("status", v).output.contains("repairs:   1"))
        }
        // A foreign chain that runs first and rewrites destinations: reinstalling cannot undo it, so the pod is
        // shown degraded with the reason; once it is removed, the pod is protected again.
        let fought = victims[0]
        try sh("ip", "netns", "exec", fought, "nft", "add", "table", "ip", "foreign")
        try sh(
            "ip", "netns", "exec", fought, "nft", "add", "chain", "ip", "foreign", "out",
            "{ type nat hook output priority -150; }")
        try sh(
            "ip", "netns", "exec", fought, "nft", "add", "rule", "ip", "foreign", "out", "tcp", "dport", "8080", "dnat",
            "to", "198.19.0.7")
        #expect(eventually(10) { scene.view(fought)?.phase == "degraded" })
        #expect(
            scene.view(fought)?.reason?.contains("rewrites destinations") == true,
            "\(String(describing: scene.view(fought)))")
        try sh("ip", "netns", "exec", fought, "nft", "delete", "table", "ip", "foreign")
        #expect(eventually(15) { scene.view(fought)?.phase == "protected" })

        // A namespace deleted under the daemon releases everything it held: the pod, and its namespace descriptor.
        let gone = [scene.name("dir", .sidecar, 3), scene.name("api", .forwarder, 4)]
        let inodes = gone.compactMap { scene.view($0)?.namespace }
        for g in gone { try scene.deletePod(g) }
        #expect(eventually(10) { gone.allSatisfy { g in scene.view(g) == nil } })
        let fds =
            (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(d.process.processIdentifier)/fd")) ?? []
        let targets = fds.compactMap {
            try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(d.process.processIdentifier)/fd/\($0)")
        }
        for inode in inodes { #expect(!targets.contains { $0 == inode.replacingOccurrences(of: "@4", with: "") }) }

        // Unenrolling removes the rules.
        let leaving = scene.name("api", .sidecar, 5)
        #expect(try scene.weir("unenroll", leaving).status == 0)
        #expect(
            try sh(["ip", "netns", "exec", leaving, "nft", "list", "table", "inet", "weir"], allowFailure: true).status
                != 0)
        #expect(scene.view(leaving) == nil)

        // SIGTERM: the daemon ends within its bound and leaves every pod's rules; the sidecar keeps its config.
        kill(d.process.processIdentifier, SIGTERM)
        #expect(eventually(25) { !d.process.isRunning }, "\(d.output.suffix(1000))")
        #expect(d.process.terminationStatus == 0)
        for n in [front, scene.name("cfg", .forwarder, 0), scene.name("dir", .sidecar, 7)] {
            #expect(
                try sh([weirBinary, "check", "--netns", "/run/netns/\(n)"], allowFailure: true).status == 0, "\(n)")
        }
        if sidecar != nil {
            #expect(httpText(front, "http://127.0.0.1:15902/listeners")?.contains("15001") == true)
        }
    }

    @Test("bad enrollment requests and bad config are refused by name, and change nothing")
    func badInput() async throws {
        let scene = try DaemonScene()
        defer { scene.close() }
        // A bad config: exit 2 with file, line and reason, before anything runs.
        try "netnsDirectory: /run/netns\nchekInterval: 5\n".write(
            toFile: scene.dir + "/bad.yaml", atomically: true, encoding: .utf8)
        let bad = try sh([weirBinary, "daemon", "--config", scene.dir + "/bad.yaml"], allowFailure: true)
        #expect(bad.status == 2)
        #expect(bad.output.contains("bad.yaml:2: chekInterval: unknown key"), "\(bad.output)")
        #expect(bad.output.contains("checkInterval"))

        let pod = try scene.addPod(scene.name("api", .sidecar, 0), forwarder: false)
        _ = try scene.start(config: scene.config())
        #expect(eventually(10) { scene.admin("/readyz") == "ready\n" })
        let cases: [([String], String)] = [
            (["enroll", pod, "--mode", "sidecars"], "--mode 'sidecars'"),
            (["enroll", pod, "--outbound-port", "99999"], "outbound-port"),
            (["enroll", pod, "--capture-mode", "tproxyy"], "tproxyy"),
            (["enroll", "weirt-no-such-\(scene.id)"], "weirt-no-such"),
            (["enroll", "/etc/hostname"], "not a namespace"),
            (["enroll", pod, "--appmesh-env", "APPMESH_APP_PORTS=80800"], "APPMESH_APP_PORTS"),
            (["unenroll", "weirt-nobody"], "no pod weirt-nobody"),
        ]
        for (args, expected) in cases {
            let r = try sh([weirBinary] + args + ["--runtime-directory", scene.runtime], allowFailure: true)
            #expect(r.status == 2, "\(args): \(r.output)")
            #expect(r.output.contains(expected), "\(args): \(r.output)")
        }
        // An unknown key in the API's body is refused by name.
        let body = #"{"netns": "\#(pod)", "nodeIds": ["x"]}"#
        let raw = try sh(
            "python3", "-c",
            """
            import socket,sys
            s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); b=sys.argv[2].encode()
            s.sendall(b"POST /v1/pods HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\nContent-Length: %d\\r\\n\\r\\n" % len(b) + b)
            print(s.makefile('rb').read().decode())
            """, scene.runtime + "/enroll.sock", body)
        #expect(
            raw.output.contains("400") && raw.output.contains("unknown key 'nodeIds'") && raw.output.contains("nodeIDs")
        )
        #expect(scene.podViews().isEmpty)
        #expect(try sh(["ip", "netns", "exec", pod, "nft", "list", "tables"]).output.isEmpty)
    }

    @Test("SIGKILL and restart with 50 pods: re-adopted without rewriting a rule, the one tampered meanwhile repaired")
    func restartReadopts() async throws {
        let scene = try DaemonScene()
        defer { scene.close() }
        var names: [String] = []
        for i in 0..<50 {
            names.append(
                try scene.addPod(scene.name("api", i % 2 == 0 ? .forwarder : .sidecar, i), forwarder: i % 2 == 0))
        }
        let first = try scene.start(config: scene.config())
        #expect(eventually(10) { scene.admin("/readyz") == "ready\n" })
        for n in names { #expect(try scene.weir("enroll", n).status == 0) }
        #expect(eventually(10) { scene.podViews().filter { $0.phase == "protected" }.count == 50 })
        var before: [String: String] = [:]
        for n in names { before[n] = try scene.ruleset(n) }
        // The state file is written off the enrollment's path: wait until it holds every pod.
        #expect(
            eventually(5) {
                ((try? String(contentsOfFile: scene.dir + "/state/pods.json", encoding: .utf8)) ?? "")
                    .components(separatedBy: "\"inode\"").count == 51
            })
        kill(first.process.processIdentifier, SIGKILL)
        first.process.waitUntilExit()
        // Rules stay while the daemon is down; one pod is tampered with meanwhile.
        let tampered = names[1]
        try sh("ip", "netns", "exec", tampered, "nft", "flush", "table", "inet", "weir")
        _ = try scene.start(config: scene.config(), log: "daemon2.log")
        #expect(eventually(15) { scene.admin("/readyz") == "ready\n" })
        let views = scene.podViews()
        #expect(views.count == 50 && views.allSatisfy { $0.restored && $0.phase == "protected" })
        for n in names where n != tampered {
            #expect(try scene.ruleset(n) == before[n], "\(n)'s rules were rewritten")
        }
        #expect(try sh([weirBinary, "check", "--netns", "/run/netns/\(tampered)"], allowFailure: true).status == 0)
        // Listeners are back: forwarder pods relay, sidecar pods have their endpoint.
        let listener = try scene.serverListener()
        defer { Glibc.close(listener) }
        #expect(try scene.forwarderRelays(names[0], server: listener))
        #expect(try scene.xdsEndpointOpen(names[3]))
    }
}
