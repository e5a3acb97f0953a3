import Foundation
import Testing
import WeirCapture
import WeirNetfilter
import WeirNetns
import WeirTestSupport

/// Two Envoys configured by weir from App Mesh manifests: `client` in the pod namespace (its outbound TCP redirected to
/// Envoy's egress port) calls virtual service `server`, whose Envoy runs in the server namespace (inbound TCP
/// redirected to its ingress port) in front of an HTTP backend on 127.0.0.1:9080. Certificates are made by openssl at
/// test time. weir xds listens on a Unix socket both namespaces reach; everything is removed by `close()`.
final class TLSLab: @unchecked Sendable {
    // Sendable: its stored properties are set in init and only read after; the processes it holds are stopped by close().
    let net: TestNetwork
    let dir: URL
    var certs: URL { dir.appendingPathComponent("certs") }
    var meshDir: URL { dir.appendingPathComponent("mesh") }
    var xds: String { dir.appendingPathComponent("xds.sock").path }
    var admin: String { dir.appendingPathComponent("admin.sock").path }
    var sds: String { dir.appendingPathComponent("sds.sock").path }
    var processes: [Spawned] = []

    init() throws {
        net = try TestNetwork()
        dir = URL(fileURLWithPath: "/tmp/weir-tls-\(net.pod)")
        do {
            try FileManager.default.createDirectory(at: meshDir, withIntermediateDirectories: true)
            try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: dir.path)
            try sh(["bash", helperScript("make_certs.sh"), certs.path])
            try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: certs.path)
            // The client's outbound TCP to Envoy's egress; the server's inbound TCP to Envoy's ingress.
            var out = CaptureSpecInput()
            out.add(.proxyUID, "1337", from: "--proxy-uid")
            out.add(.inboundPorts, "none", from: "--inbound-ports")
            out.add(.outboundPort, "15001", from: "--outbound-port")
            try CaptureInstaller(namespace: net.podNamespace, backend: .nftables).install(
                RedirectPlan(spec: try out.validate()))
            var into = CaptureSpecInput()
            into.add(.proxyUID, "1337", from: "--proxy-uid")
            into.add(.inboundPorts, "9080", from: "--inbound-ports")
            into.add(.inboundPort, "15000", from: "--inbound-port")
            // Outbound stays as it is here: capture only an address nothing uses.
            into.add(.outboundIncludeCIDR, "198.19.255.255/32", from: "--outbound-include-cidr")
            try CaptureInstaller(namespace: net.serverNamespace, backend: .nftables).install(
                RedirectPlan(spec: try into.validate()))
            processes.append(
                try Spawned(
                    ["/usr/bin/python3", helperScript("http_backend.py"), "127.0.0.1", "9080", "server"],
                    namespace: net.server, log: dir.appendingPathComponent("backend.log")))
        } catch {
            close()
            throw error
        }
    }

    func cert(_ name: String) -> String { certs.appendingPathComponent(name).path }

    /// The mesh: `server`'s listener TLS and `client`'s client policy are given as YAML (indented for their place).
    func writeMesh(listenerTLS: String, clientPolicy: String) throws {
        let text = """
            apiVersion: appmesh.k8s.aws/v1beta2
            kind: Mesh
            metadata: {name: tls}
            ---
            apiVersion: appmesh.k8s.aws/v1beta2
            kind: VirtualNode
            metadata: {name: client, namespace: apps}
            spec:
              backends:
                - virtualService:
                    virtualServiceRef: {name: server}
            \(clientPolicy)
            ---
            apiVersion: appmesh.k8s.aws/v1beta2
            kind: VirtualNode
            metadata: {name: server, namespace: apps}
            spec:
              listeners:
                - portMapping: {port: 9080, protocol: http}
            \(listenerTLS)
              serviceDiscovery: {dns: {hostname: 198.18.0.2}}
            ---
            apiVersion: appmesh.k8s.aws/v1beta2
            kind: VirtualService
            metadata: {name: server, namespace: apps}
            spec:
              awsName: server.apps.svc.cluster.local
              provider: {virtualNode: {virtualNodeRef: {name: server}}}
            """
        let tmp = dir.appendingPathComponent(".mesh.tmp")
        try text.write(to: tmp, atomically: false, encoding: .utf8)
        _ = rename(tmp.path, meshDir.appendingPathComponent("mesh.yaml").path)
    }

    func startWeir() throws {
        let p = try Spawned(
            [
                weirBinary, "xds", "--listen", "unix:\(xds)", "--admin", "unix:\(admin)", "--mesh", meshDir.path,
                "--sds-socket", sds,
            ],
            log: dir.appendingPathComponent("weir.log"))
        processes.append(p)
        // Ready once ADS listens; Envoy (uid 1337) can connect to the socket weir made.
        #expect(eventually(10) { unixHTTPGet(admin, "/ready") == "ready\n" }, "weir xds did not start: \(p.output)")
    }

    func startEnvoy(_ node: String, namespace: String) throws {
        let envoy = try #require(envoyBinary, "Envoy is not installed in .venv; run scripts/install-deps")
        let bootstrap = try sh([
            weirBinary, "bootstrap", "--node", "mesh/tls/virtualNode/\(node)_apps", "--xds", "unix:\(xds)",
            "--admin-port", "15901",
        ]).output
        let path = dir.appendingPathComponent("\(node)-bootstrap.json")
        try bootstrap.write(to: path, atomically: true, encoding: .utf8)
        _ = chmod(path.path, 0o644)
        processes.append(
            try Spawned(
                [envoy, "-c", path.path, "--disable-hot-restart", "-l", "warning", "--concurrency", "1"],
                namespace: namespace, asProxyUser: true, log: dir.appendingPathComponent("\(node)-envoy.log")))
    }

    func startSDS() throws {
        processes.append(
            try Spawned(
                [venvPython, helperScript("sds_server.py"), sds, certs.path], log: dir.appendingPathComponent("sds.log")
            ))
        #expect(eventually(10) { FileManager.default.fileExists(atPath: sds) }, "the SDS server did not start")
    }

    /// A request straight to the server's address from the pod namespace, as uid 1337 (not redirected to the client's
    /// Envoy): it lands on the server's Envoy, plaintext or TLS.
    func direct(_ args: [String]) -> String {
        let argv =
            [
                "ip", "netns", "exec", net.pod, "/usr/bin/setpriv", "--reuid=1337", "--regid=1337", "--clear-groups",
                "/usr/bin/python3", helperScript("tls_client.py"), "198.18.0.2", "9080",
            ] + args
        return ((try? sh(argv, allowFailure: true))?.output ?? "error no output").trimmingCharacters(
            in: .whitespacesAndNewlines)
    }

    var tls: [String] { ["--ca", cert("ca.pem")] }
    func mtls(_ who: String) -> [String] { tls + ["--cert", cert("\(who).pem"), "--key", cert("\(who)-key.pem")] }

    /// A request from the client application: redirected to the client's Envoy, which calls the virtual service.
    func throughMesh() -> String {
        let argv = [
            "ip", "netns", "exec", net.pod, "python3", helperScript("http_client.py"), "198.18.0.2", "9080",
            "server.apps.svc.cluster.local", "1",
        ]
        return ((try? sh(argv, allowFailure: true))?.output ?? "").trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// Every log of the lab, for a failure's message.
    func logs() -> String {
        let files = (try? FileManager.default.contentsOfDirectory(atPath: dir.path)) ?? []
        return files.filter { $0.hasSuffix(".log") }.sorted().map { f in
            "--- \(f)\n"
                + String(((try? String(contentsOf: dir.appendingPathComponent(f), encoding: .utf8)) ?? "").suffix(3000))
        }.joined(separator: "\n")
    }

    func close() {
        for p in processes { p.stop() }
        net.close()
        try? FileManager.default.removeItem(at: dir)
    }
}

@Suite("TLS and mTLS from App Mesh manifests, between real Envoys", .enabled(if: canRunNamespaceTests), .serialized)
struct EnvoyTLSTests {
    static func listener(_ mode: String, validation: String = "") -> String {
        "      tls:\n        mode: \(mode)\n        certificate: {file: {certificateChain: CERTS/server.pem, privateKey: CERTS/server-key.pem}}\n"
            + validation
    }
    static let clientCertRequired =
        "        validation:\n          trust: {file: {certificateChain: CERTS/ca.pem}}\n          subjectAlternativeNames: {match: {exact: [spiffe://weir.test/client]}}\n"

    static func policy(enforce: Bool = true, certificate: Bool = false, san: String = "spiffe://weir.test/server")
        -> String
    {
        var p = "        clientPolicy:\n          tls:\n            enforce: \(enforce)\n"
        if certificate {
            p +=
                "            certificate: {file: {certificateChain: CERTS/client.pem, privateKey: CERTS/client-key.pem}}\n"
        }
        p += "            validation:\n              trust: {file: {certificateChain: CERTS/ca.pem}}\n"
        p += "              subjectAlternativeNames: {match: {exact: [\(san)]}}\n"
        return p
    }

    func write(_ lab: TLSLab, _ listener: String, _ policy: String) throws {
        try lab.writeMesh(
            listenerTLS: listener.replacingOccurrences(of: "CERTS", with: lab.certs.path),
            clientPolicy: policy.replacingOccurrences(of: "CERTS", with: lab.certs.path))
    }

    @Test(
        "STRICT refuses plaintext and serves TLS; mTLS between the Envoys, a wrong client SAN refused; PERMISSIVE serves both; enforce decides whether the client Envoy originates TLS"
    )
    func strictPermissiveMutual() throws {
        let lab = try TLSLab()
        defer { lab.close() }
        try write(lab, Self.listener("STRICT"), Self.policy())
        try lab.startWeir()
        try lab.startEnvoy("server", namespace: lab.net.server)
        try lab.startEnvoy("client", namespace: lab.net.pod)

        // STRICT: TLS served with the server's certificate (chain checked against the CA, name checked), plaintext refused.
        #expect(
            eventually(20) { lab.direct(lab.tls + ["--sni", "server.apps.svc.cluster.local"]) == "ok 200 server" },
            "TLS to the STRICT listener: \(lab.direct(lab.tls))")
        #expect(
            lab.direct(["--plain"]).hasPrefix("error"),
            "plaintext to a STRICT listener must fail: \(lab.direct(["--plain"]))")
        // The client's Envoy originates TLS (enforce), checks the server's SAN, and the request arrives.
        #expect(eventually(20) { lab.throughMesh() == #"{"server": 1}"# }, "through the mesh: \(lab.throughMesh())")

        // The client policy expects another SAN: the client's Envoy refuses the server's certificate.
        try write(lab, Self.listener("STRICT"), Self.policy(san: "spiffe://weir.test/someone-else"))
        #expect(
            eventually(20) { lab.throughMesh().contains("status:503") },
            "a server with the wrong SAN must be refused: \(lab.throughMesh())")

        // enforce: false: the policy is off, the client's Envoy speaks plaintext, and the STRICT listener refuses it.
        try write(lab, Self.listener("STRICT"), Self.policy(enforce: false))
        #expect(
            eventually(20) { lab.throughMesh().contains("status:503") },
            "plaintext from the client's Envoy to STRICT: \(lab.throughMesh())")

        // mTLS: the listener requires a client certificate from the CA with the client's SAN; the client's Envoy presents one.
        try write(lab, Self.listener("STRICT", validation: Self.clientCertRequired), Self.policy(certificate: true))
        #expect(
            eventually(20) { lab.direct(lab.tls).hasPrefix("error") },
            "without a client certificate: \(lab.direct(lab.tls))")
        #expect(lab.direct(lab.mtls("client")) == "ok 200 server", "\(lab.direct(lab.mtls("client")))")
        #expect(lab.direct(lab.mtls("evil")).hasPrefix("error"), "the wrong SAN: \(lab.direct(lab.mtls("evil")))")
        #expect(lab.direct(lab.mtls("stranger")).hasPrefix("error"), "another CA: \(lab.direct(lab.mtls("stranger")))")
        #expect(
            eventually(20) { lab.throughMesh() == #"{"server": 1}"# }, "mTLS between the Envoys: \(lab.throughMesh())")

        // PERMISSIVE: TLS and plaintext on the same port.
        try write(lab, Self.listener("PERMISSIVE"), Self.policy(enforce: false))
        #expect(
            eventually(20) { lab.direct(["--plain"]) == "ok 200 server" },
            "plaintext to PERMISSIVE: \(lab.direct(["--plain"]))")
        #expect(lab.direct(lab.tls) == "ok 200 server", "TLS to PERMISSIVE: \(lab.direct(lab.tls))")
        #expect(
            eventually(20) { lab.throughMesh() == #"{"server": 1}"# },
            "plaintext through the mesh to PERMISSIVE: \(lab.throughMesh())")
    }

    @Test("certificates and trust given as sds come from the SDS server on --sds-socket and are used")
    func sds() throws {
        let lab = try TLSLab()
        defer { lab.close() }
        try lab.startSDS()
        let listener = """
                  tls:
                    mode: STRICT
                    certificate: {sds: {secretName: "spiffe://weir.test/server"}}
                    validation:
                      trust: {sds: {secretName: "spiffe://weir.test"}}
                      subjectAlternativeNames: {match: {exact: [spiffe://weir.test/client]}}

            """
        let policy = """
                    clientPolicy:
                      tls:
                        certificate: {sds: {secretName: "spiffe://weir.test/client"}}
                        validation:
                          trust: {sds: {secretName: "spiffe://weir.test"}}
                          subjectAlternativeNames: {match: {exact: [spiffe://weir.test/server]}}

            """
        try write(lab, listener, policy)
        try lab.startWeir()
        try lab.startEnvoy("server", namespace: lab.net.server)
        try lab.startEnvoy("client", namespace: lab.net.pod)
        // The server's Envoy terminates TLS with the certificate SDS gave it, and checks clients against SDS's trust.
        #expect(
            eventually(30) { lab.direct(lab.mtls("client")) == "ok 200 server" },
            "mTLS with SDS certificates: \(lab.direct(lab.mtls("client")))\n\(lab.logs())")
        #expect(lab.direct(lab.mtls("evil")).hasPrefix("error"))
        #expect(lab.direct(lab.tls).hasPrefix("error"), "a client certificate is required")
        // Envoy to Envoy, both sides' certificates from SDS.
        #expect(
            eventually(30) { lab.throughMesh() == #"{"server": 1}"# }, "through the mesh with SDS: \(lab.throughMesh())"
        )
        let log = (try? String(contentsOf: lab.dir.appendingPathComponent("sds.log"), encoding: .utf8)) ?? ""
        for name in ["spiffe://weir.test/server", "spiffe://weir.test/client", "spiffe://weir.test"] {
            #expect(
                log.contains("response \(name) ") || log.contains("response \(name),") || log.contains(",\(name) "),
                "SDS never served \(name):\n\(log)")
        }
    }
}
