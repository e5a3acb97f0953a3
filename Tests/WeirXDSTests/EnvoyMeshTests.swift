import Foundation
import Testing
import WeirCapture
import WeirNetns
import WeirTestSupport

/// App Mesh manifests for the tests: `front` calls `color` (a router: header route to green, then a blue/green split
/// with retries) and `flaky` (a router whose only target fails twice before it answers, with retries).
func colorMesh(blue: Int, green: Int, brokenRegex: Bool = false) -> String {
    """
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
      backends:
        - virtualService: {virtualServiceRef: {name: color}}
        - virtualService: {virtualServiceRef: {name: flaky}}
    ---
    apiVersion: appmesh.k8s.aws/v1beta2
    kind: VirtualNode
    metadata: {name: blue, namespace: apps}
    spec:
      listeners: [{portMapping: {port: 9081, protocol: http}}]
      serviceDiscovery: {dns: {hostname: 198.18.0.2}}
    ---
    apiVersion: appmesh.k8s.aws/v1beta2
    kind: VirtualNode
    metadata: {name: green, namespace: apps}
    spec:
      listeners: [{portMapping: {port: 9082, protocol: http}}]
      serviceDiscovery: {dns: {hostname: 198.18.0.2}}
    ---
    apiVersion: appmesh.k8s.aws/v1beta2
    kind: VirtualNode
    metadata: {name: flaky, namespace: apps}
    spec:
      listeners: [{portMapping: {port: 9083, protocol: http}}]
      serviceDiscovery: {dns: {hostname: 198.18.0.2}}
    ---
    apiVersion: appmesh.k8s.aws/v1beta2
    kind: VirtualRouter
    metadata: {name: color-router, namespace: apps}
    spec:
      listeners: [{portMapping: {port: 8080, protocol: http}}]
      routes:
        - name: canary-header
          priority: 1
          httpRoute:
            match:
              prefix: /
              headers: [{name: x-canary, match: {\(brokenRegex ? "regex: \"([\"" : "exact: \"yes\"")}}]
            action: {weightedTargets: [{virtualNodeRef: {name: green}, weight: 1}]}
        - name: split
          priority: 2
          httpRoute:
            match: {prefix: /}
            action:
              weightedTargets:
                - {virtualNodeRef: {name: blue}, weight: \(blue)}
                - {virtualNodeRef: {name: green}, weight: \(green)}
    ---
    apiVersion: appmesh.k8s.aws/v1beta2
    kind: VirtualRouter
    metadata: {name: flaky-router, namespace: apps}
    spec:
      listeners: [{portMapping: {port: 8080, protocol: http}}]
      routes:
        - name: retried
          httpRoute:
            match: {prefix: /}
            action: {weightedTargets: [{virtualNodeRef: {name: flaky}, weight: 1}]}
            retryPolicy:
              maxRetries: 3
              perRetryTimeout: {unit: s, value: 2}
              httpRetryEvents: [server-error]
    ---
    apiVersion: appmesh.k8s.aws/v1beta2
    kind: VirtualService
    metadata: {name: color, namespace: apps}
    spec:
      awsName: color.apps.svc.cluster.local
      provider: {virtualRouter: {virtualRouterRef: {name: color-router}}}
    ---
    apiVersion: appmesh.k8s.aws/v1beta2
    kind: VirtualService
    metadata: {name: flaky, namespace: apps}
    spec:
      awsName: flaky.apps.svc.cluster.local
      provider: {virtualRouter: {virtualRouterRef: {name: flaky-router}}}
    """
}

/// A pod namespace whose outbound TCP weir redirects to Envoy (uid 1337), backends in the server namespace,
/// weir xds on loopback TCP in the pod, and helpers to drive them. Everything is torn down by `close()`.
final class MeshLab: @unchecked Sendable {
    // Sendable: its stored properties are set in init and only read after; the processes it holds are stopped by close().
    let net: TestNetwork
    let dir: URL
    var meshDir: URL { dir.appendingPathComponent("mesh") }
    var stateDir: URL { dir.appendingPathComponent("state") }
    var processes: [Spawned] = []
    var weir: Spawned?
    var envoy: Spawned?
    let node = "mesh/colors/virtualNode/front_apps"

    init(capture: Bool = true) throws {
        net = try TestNetwork()
        dir = URL(fileURLWithPath: "/tmp/weir-xds-\(net.pod)")
        do {
            try FileManager.default.createDirectory(at: meshDir, withIntermediateDirectories: true)
            try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: dir.path)
            if capture {
                var input = CaptureSpecInput()
                input.add(.proxyUID, "1337", from: "--proxy-uid")
                input.add(.inboundPort, "15000", from: "--inbound-port")
                input.add(.outboundPort, "15001", from: "--outbound-port")
                try net.installer(.nftables).install(RedirectPlan(spec: try input.validate()))
            }
            for (port, name, extra) in [
                (9081, "blue", [String]()), (9082, "green", []), (9083, "flaky", ["--fail-first", "2"]),
            ] {
                processes.append(
                    try Spawned(
                        ["/usr/bin/python3", helperScript("http_backend.py"), "198.18.0.2", "\(port)", name] + extra,
                        namespace: net.server, log: dir.appendingPathComponent("\(name).log")))
            }
        } catch {
            close()
            throw error
        }
    }

    func writeMesh(_ text: String, file: String = "mesh.yaml") throws {
        // Write beside and rename, as a deploy tool would: the watcher sees one complete file.
        let tmp = dir.appendingPathComponent(".\(file).tmp")
        try text.write(to: tmp, atomically: false, encoding: .utf8)
        try FileManager.default.moveItem(atPath: tmp.path, toPath: meshDir.appendingPathComponent(file).path)
    }

    func replaceMesh(_ text: String, file: String = "mesh.yaml") throws {
        try? FileManager.default.removeItem(at: meshDir.appendingPathComponent(file))
        try writeMesh(text, file: file)
    }

    func startWeir(
        _ args: [String], listen: String = "127.0.0.1:15010", admin: String = "127.0.0.1:15902", name: String = "weir"
    ) throws -> Spawned {
        let p = try Spawned(
            [weirBinary, "xds", "--listen", listen, "--admin", admin] + args, namespace: net.pod,
            log: dir.appendingPathComponent("\(name).log"))
        processes.append(p)
        #expect(
            eventually(10) { httpText(net.pod, "http://\(admin)/ready") == "ready\n" },
            "weir xds did not start: \(p.output)")
        return p
    }

    func startEnvoy(
        delta: Bool, xds: String = "127.0.0.1:15010", name: String = "envoy", node: String? = nil,
        extra: [String] = []
    ) throws -> Spawned {
        let envoy = try #require(envoyBinary, "Envoy is not installed in .venv; run scripts/install-deps")
        var args = ["bootstrap", "--node", node ?? self.node, "--xds", xds, "--admin-port", "15901"]
        if delta { args.append("--delta") }
        let bootstrap = try sh([weirBinary] + args).output
        let path = dir.appendingPathComponent("\(name)-bootstrap.json")
        try bootstrap.write(to: path, atomically: true, encoding: .utf8)
        try FileManager.default.setAttributes([.posixPermissions: 0o644], ofItemAtPath: path.path)
        let p = try Spawned(
            [envoy, "-c", path.path, "--disable-hot-restart", "-l", "warning", "--concurrency", "1"] + extra,
            namespace: net.pod, asProxyUser: true, log: dir.appendingPathComponent("\(name).log"))
        processes.append(p)
        return p
    }

    /// Sends `n` requests to the `color` (or another) virtual service through the pod's redirect and Envoy.
    func requests(_ n: Int, host: String = "color.apps.svc.cluster.local", headers: [String] = []) throws -> [String:
        Int]
    {
        let out = try sh(
            [
                "ip", "netns", "exec", net.pod, "python3", helperScript("http_client.py"), "198.18.0.2", "8080", host,
                "\(n)",
            ] + headers
        ).output
        let object = try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Int]
        return try #require(object, "client printed \(out)")
    }

    /// `n` requests, whose `favoured` share should be 90 %. Envoy picks each request's cluster at random, so a correct
    /// 90/10 split of 1000 still falls outside ±3 points about once in 600 samples (binomial, 3.2 standard
    /// deviations); a sample outside is taken once more, so a wrong split fails and a correct one does not, but for
    /// about one check in 400,000.
    func split(_ n: Int, favoured: String) throws -> [String: Int] {
        let first = try requests(n)
        let share = Double(first[favoured] ?? 0) / Double(n)
        return abs(share - 0.9) <= 0.03 ? first : try requests(n)
    }

    /// weir's per-stream state for the one Envoy stream: type → its TypeStatus fields.
    func streamTypes(admin: String = "127.0.0.1:15902") -> [String: [String: Any]] {
        guard let text = httpText(net.pod, "http://\(admin)/streams"),
            let streams = try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [[String: Any]],
            let first = streams.first, let types = first["types"] as? [String: [String: Any]]
        else { return [:] }
        return types
    }

    /// Waits until Envoy has ACKed a new RDS version (different from `previous`).
    func waitForAck(after previous: String?, type: String = "RDS", seconds: Double = 10) -> Bool {
        eventually(seconds) {
            let t = streamTypes()[type]
            guard let sent = t?["lastSentVersion"] as? String, sent != previous else { return false }
            return (t?["lastAckedVersion"] as? String) == sent
        }
    }

    func sentVersion(_ type: String = "RDS") -> String? { streamTypes()[type]?["lastSentVersion"] as? String }

    func close() {
        for p in processes { p.stop() }
        net.close()
        try? FileManager.default.removeItem(at: dir)
    }
}

@Suite("weir xds serving real Envoys", .enabled(if: canRunNamespaceTests), .serialized)
struct EnvoyMeshTests {
    @Test(
        "an Envoy started from weir bootstrap gets the mesh, splits 90/10, follows header routes and retries, takes weight changes live, survives bad manifests and NACKs, and restarts from disk",
        arguments: [false, true])
    func envoyServesTheMesh(delta: Bool) throws {
        let lab = try MeshLab()
        defer { lab.close() }
        try lab.writeMesh(colorMesh(blue: 90, green: 10))
        _ = try lab.startWeir(["--mesh", lab.meshDir.path, "--state", lab.stateDir.path])
        _ = try lab.startEnvoy(delta: delta)
        #expect(
            eventually(15) { (try? lab.requests(1))?["blue"] != nil || (try? lab.requests(1))?["green"] != nil },
            "Envoy never routed a request: \(lab.processes.last?.output ?? "")")
        #expect(lab.streamTypes()["LDS"]?["lastAckedVersion"] as? String == lab.sentVersion("LDS"))

        // 90/10 within ±3 points over 1000 requests.
        let split = try lab.split(1000, favoured: "blue")
        #expect((870...930).contains(split["blue"] ?? 0), "90/10 split gave \(split)")
        #expect((split["blue"] ?? 0) + (split["green"] ?? 0) == 1000, "\(split)")

        // A header route wins over the split.
        #expect(try lab.requests(20, headers: ["x-canary:yes"]) == ["green": 20])

        // Retries: the flaky backend fails twice, the route retries on server errors.
        #expect(try lab.requests(1, host: "flaky.apps.svc.cluster.local") == ["flaky": 1])
        #expect(
            httpText(lab.net.server, "http://198.18.0.2:9083/hits") == "3",
            "the flaky backend should see 1 request + 2 retries")

        // A weight change in the manifest reaches the running Envoy and shifts traffic.
        var before = lab.sentVersion()
        try lab.replaceMesh(colorMesh(blue: 10, green: 90))
        #expect(lab.waitForAck(after: before), "the new weights were not ACKed")
        let shifted = try lab.split(1000, favoured: "green")
        #expect((870...930).contains(shifted["green"] ?? 0), "10/90 split gave \(shifted)")

        // An invalid manifest is refused as a whole; Envoy keeps what it had.
        before = lab.sentVersion()
        try lab.writeMesh(
            "apiVersion: appmesh.k8s.aws/v1beta2\nkind: VirtualNode\nmetadata: {name: broken, namespace: apps}\nspec:\n  listeners: [{portMapping: {port: 99999, protocol: http}}]\n",
            file: "broken.yaml")
        #expect(
            eventually(5) { httpText(lab.net.pod, "http://127.0.0.1:15902/snapshots")?.contains("99999") == true },
            "weir did not report the broken manifest")
        #expect(lab.sentVersion() == before)
        #expect((try lab.requests(100))["green"].map { $0 > 70 } == true)
        try FileManager.default.removeItem(at: lab.meshDir.appendingPathComponent("broken.yaml"))

        // A config Envoy rejects (an invalid regex) is a NACK with Envoy's message; the old routes stay in force.
        before = lab.sentVersion()
        try lab.replaceMesh(colorMesh(blue: 10, green: 90, brokenRegex: true))
        #expect(
            eventually(10) { (lab.streamTypes()["RDS"]?["lastNackMessage"] as? String)?.isEmpty == false },
            "no NACK recorded: \(lab.streamTypes()["RDS"] ?? [:])")
        let nack = lab.streamTypes()["RDS"]?["lastNackMessage"] as? String ?? ""
        #expect(nack.contains("missing ]"), "NACK text should be RE2's complaint as Envoy reports it: \(nack)")
        #expect(
            try lab.requests(20, headers: ["x-canary:yes"]) == ["green": 20], "the old header route should still work")
        try lab.replaceMesh(colorMesh(blue: 10, green: 90))

        // weir stopped, its sources gone: a newly started Envoy still gets the last good config from disk. SIGTERM, as
        // systemd stops it: weir writes the files its writer thread has not yet written (a SIGKILL may leave the last
        // change unwritten; README says so).
        for p in lab.processes where p.process.arguments?.contains("xds") == true {
            kill(p.process.processIdentifier, SIGTERM)
            #expect(eventually(10) { !p.process.isRunning }, "weir xds did not exit on SIGTERM")
            p.stop()
        }
        for p in lab.processes where p.process.arguments?.contains("--disable-hot-restart") == true { p.stop() }
        try FileManager.default.removeItem(at: lab.meshDir)
        // The mesh directory is gone: --mesh would refuse to start (exit 2), so only the state is given.
        _ = try lab.startWeir(["--state", lab.stateDir.path], name: "weir-restarted")
        _ = try lab.startEnvoy(delta: delta, name: "envoy-restarted")
        #expect(
            eventually(15) { ((try? lab.requests(1)) ?? [:]).keys.contains { $0 == "blue" || $0 == "green" } },
            "the restarted Envoy got no config from weir's disk state")
        let fromDisk = try lab.requests(200)
        #expect((fromDisk["green"] ?? 0) > 150, "config from disk routed \(fromDisk)")
    }

    @Test("a second weir relays the first (upstream relay) and survives the upstream's restart")
    func relay() throws {
        let lab = try MeshLab()
        defer { lab.close() }
        try lab.writeMesh(colorMesh(blue: 100, green: 0))
        let upstream = try lab.startWeir(
            ["--mesh", lab.meshDir.path], listen: "127.0.0.1:15020", admin: "127.0.0.1:15903", name: "weir-upstream")
        let relay = try lab.startWeir(["--upstream", "127.0.0.1:15020", "--state", lab.stateDir.path])
        _ = try lab.startEnvoy(delta: false)
        #expect(eventually(15) { (try? lab.requests(1)) == ["blue": 1] }, "no config through the relay")
        #expect(try lab.requests(50) == ["blue": 50])

        // The upstream goes away: the relay keeps serving; the upstream comes back with new weights and they arrive.
        upstream.stop()
        #expect(try lab.requests(20) == ["blue": 20])
        try lab.replaceMesh(colorMesh(blue: 0, green: 100))
        _ = try lab.startWeir(
            ["--mesh", lab.meshDir.path], listen: "127.0.0.1:15020", admin: "127.0.0.1:15903", name: "weir-upstream-2")
        #expect(
            eventually(20) { (try? lab.requests(5)) == ["green": 5] },
            "the relay did not pass on the restarted upstream's config")

        // A config the local Envoy rejects: its NACK is forwarded upstream, where it shows on the relay's stream.
        try lab.replaceMesh(colorMesh(blue: 0, green: 100, brokenRegex: true))
        #expect(
            eventually(20) {
                (lab.streamTypes(admin: "127.0.0.1:15903")["RDS"]?["lastNackMessage"] as? String)?.contains("missing ]")
                    == true
            }, "the upstream did not see the local NACK: \(lab.streamTypes(admin: "127.0.0.1:15903")["RDS"] ?? [:])")
        #expect(try lab.requests(5) == ["green": 5], "Envoy keeps its last good routes")

        // SIGTERM ends weir promptly and cleanly even though a sidecar keeps its ADS stream open.
        kill(relay.process.processIdentifier, SIGTERM)
        #expect(eventually(6) { !relay.process.isRunning }, "weir xds did not exit on SIGTERM")
        if !relay.process.isRunning {
            #expect(relay.process.terminationStatus == 0 && relay.process.terminationReason == .exit)
        }
    }
}

@Suite("proxyless gRPC through weir", .enabled(if: canRunNamespaceTests))
struct ProxylessGRPCTests {
    @Test(
        "a grpcio client with an xds:/// target calls a server through weir's config, found by IP literal (EDS) and by DNS hostname (LOGICAL_DNS)"
    )
    func grpcioThroughXDS() throws {
        let lab = try MeshLab(capture: false)
        defer { lab.close() }
        try lab.writeMesh(
            """
            apiVersion: appmesh.k8s.aws/v1beta2
            kind: Mesh
            metadata: {name: colors}
            ---
            apiVersion: appmesh.k8s.aws/v1beta2
            kind: VirtualNode
            metadata: {name: front, namespace: apps}
            spec:
              backends: [{virtualService: {virtualServiceRef: {name: echo}}}, {virtualService: {virtualServiceRef: {name: echo-dns}}}]
            ---
            apiVersion: appmesh.k8s.aws/v1beta2
            kind: VirtualNode
            metadata: {name: echo, namespace: apps}
            spec:
              listeners: [{portMapping: {port: 7070, protocol: grpc}}]
              serviceDiscovery: {dns: {hostname: 127.0.0.1}}
            ---
            apiVersion: appmesh.k8s.aws/v1beta2
            kind: VirtualService
            metadata: {name: echo, namespace: apps}
            spec:
              awsName: echo.apps.svc.cluster.local
              provider: {virtualNode: {virtualNodeRef: {name: echo}}}
            ---
            apiVersion: appmesh.k8s.aws/v1beta2
            kind: VirtualNode
            metadata: {name: echo-dns, namespace: apps}
            spec:
              listeners: [{portMapping: {port: 7071, protocol: grpc}}]
              serviceDiscovery: {dns: {hostname: localhost}}
            ---
            apiVersion: appmesh.k8s.aws/v1beta2
            kind: VirtualService
            metadata: {name: echo-dns, namespace: apps}
            spec:
              awsName: echo-dns.apps.svc.cluster.local
              provider: {virtualNode: {virtualNodeRef: {name: echo-dns}}}
            """)
        let socket = lab.dir.appendingPathComponent("xds.sock").path
        _ = try lab.startWeir(["--mesh", lab.meshDir.path], listen: "unix:\(socket)")
        lab.processes.append(
            try Spawned(
                [venvPython, helperScript("grpc_echo.py"), "server", "127.0.0.1:7070", "echo-server"],
                namespace: lab.net.pod, log: lab.dir.appendingPathComponent("grpc-server.log")))
        lab.processes.append(
            try Spawned(
                [venvPython, helperScript("grpc_echo.py"), "server", "127.0.0.1:7071", "echo-dns-server"],
                namespace: lab.net.pod, log: lab.dir.appendingPathComponent("grpc-server-dns.log")))
        let bootstrap = """
            {"xds_servers": [{"server_uri": "unix://\(socket)", "channel_creds": [{"type": "insecure"}], "server_features": ["xds_v3"]}],
             "node": {"id": "\(lab.node)", "cluster": "front"}}
            """
        let path = lab.dir.appendingPathComponent("grpc-bootstrap.json")
        try bootstrap.write(to: path, atomically: true, encoding: .utf8)
        let r = try sh(
            [
                "ip", "netns", "exec", lab.net.pod, "env", "GRPC_XDS_BOOTSTRAP=\(path.path)", venvPython,
                helperScript("grpc_echo.py"),
                "client", "xds:///echo.apps.svc.cluster.local:7070",
            ], allowFailure: true)
        #expect(r.status == 0 && r.output.contains("echo-server:hello"), "grpc client: \(r.output)")
        // A hostname target is a STRICT_DNS cluster for Envoy, which gRPC refuses; the proxyless route uses its LOGICAL_DNS twin.
        let d = try sh(
            [
                "ip", "netns", "exec", lab.net.pod, "env", "GRPC_XDS_BOOTSTRAP=\(path.path)", venvPython,
                helperScript("grpc_echo.py"),
                "client", "xds:///echo-dns.apps.svc.cluster.local:7071",
            ], allowFailure: true)
        #expect(d.status == 0 && d.output.contains("echo-dns-server:hello"), "grpc client: \(d.output)")
    }
}
