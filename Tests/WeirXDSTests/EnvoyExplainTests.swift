import Foundation
import Testing
import WeirMesh
import WeirTestSupport

/// `weir mesh explain` against the real thing: each probe of the golden meshes goes through an Envoy that weir feeds
/// the same mesh, and Envoy's access log says which route and cluster it chose (or its 404).
@Suite("mesh explain against a real Envoy", .enabled(if: canRunNamespaceTests), .serialized)
struct EnvoyExplainTests {
    static let format = "%REQ(X-WEIR-PROBE)%|%ROUTE_NAME%|%UPSTREAM_CLUSTER%|%RESPONSE_CODE%|%RESPONSE_FLAGS%"

    @Test(
        "Envoy picks the route and cluster, TCP proxy, 404 or close that explain predicts, for every probe",
        arguments: ["mesh-drop", "mesh-allow"])
    func envoyAgrees(_ mesh: String) throws {
        let lab = try MeshLab()
        defer { lab.close() }
        // The golden mesh with two changes that leave routing as it is: every endpoint is the server namespace's
        // address, where nothing listens on these ports (an upstream fails at once), and the web node's access log
        // goes to a file with the route and cluster Envoy chose.
        let log = lab.dir.appendingPathComponent("access.log").path
        FileManager.default.createFile(atPath: log, contents: nil, attributes: [.posixPermissions: 0o666])
        var text = try String(
            contentsOf: ExplainProbe.directory(mesh).appendingPathComponent("mesh.yaml"), encoding: .utf8)
        // (DNS names too: a cluster waiting for a name no resolver here answers holds Envoy's listeners back.)
        text = text.replacing(/hostname: (10\.0\.0\.[0-9]+|[a-z0-9.-]+\.cluster\.local)/, with: "hostname: 198.18.0.2")
        let original = "logging: {accessLog: {file: {path: /dev/stdout}}}"
        #expect(text.contains(original))
        text = text.replacingOccurrences(
            of: original,
            with: "logging: {accessLog: {file: {path: \(log), format: {text: \"\(Self.format)\\n\"}}}}")
        try lab.writeMesh(text)
        let weir = try lab.startWeir(["--mesh", lab.meshDir.path, "--state", lab.stateDir.path])
        let node = "mesh/shop/virtualNode/web_shop"
        // Access log lines reach the file within 50 ms rather than Envoy's default second.
        let envoy = try lab.startEnvoy(delta: false, node: node, extra: ["--file-flush-interval-msec", "50"])
        #expect(
            eventually(15) {
                let t = lab.streamTypes()["RDS"]
                return t?["lastAckedVersion"] != nil
                    && t?["lastAckedVersion"] as? String == t?["lastSentVersion"] as? String
            }, "Envoy never took the mesh: \(lab.streamTypes()) \(envoy.output) \(weir.output)")
        // What explain predicts, from the same manifests, for the same node.
        let manifests = try ManifestReader.read([("mesh.yaml", text)])
        let explainer = RouteExplainer(try MeshCompiler(manifests).compile(nodeID: node), egressPort: 15001)
        // Envoy writes a request's line once the request is done with (after its retries): each line carries the
        // probe's number (an HTTP header).
        func logged() -> [[String]] {
            ((try? String(contentsOfFile: log, encoding: .utf8)) ?? "").split(separator: "\n").map {
                $0.split(separator: "|", omittingEmptySubsequences: false).map(String.init)
            }
        }
        // A TCP proxy's choice is in Envoy's counters (the passthrough chain writes no access log).
        func connections() -> [String: Int] {
            let text = httpText(lab.net.pod, "http://127.0.0.1:15901/stats?filter=upstream_cx_total") ?? ""
            var out: [String: Int] = [:]
            for line in text.split(separator: "\n") {
                let kv = line.split(separator: ":")
                guard kv.count == 2, let n = Int(kv[1].trimmingCharacters(in: .whitespaces)) else { continue }
                out[
                    String(kv[0]).replacingOccurrences(of: "cluster.", with: "")
                        .replacingOccurrences(of: ".upstream_cx_total", with: "")] = n
            }
            return out
        }
        for (number, probe) in ExplainProbe.all.enumerated() where probe.mesh == mesh {
            let request = try ExplainRequest.parse(probe.request, headers: probe.headers)
            let predicted = explainer.explain(request).outcome
            #expect(predicted.description == probe.expected)
            let before = connections()
            let headers = request.headers.merging(["x-weir-probe": "\(number)"]) { a, _ in a }
            let answer = try sh(
                [
                    "ip", "netns", "exec", lab.net.pod, "python3", helperScript("http_once.py"), "198.18.0.2",
                    "\(request.port)", request.method, request.path, request.authority,
                ]
                    + headers.sorted { $0.key < $1.key }.map { "\($0.key):\($0.value)" }
            ).output.trimmingCharacters(in: .whitespacesAndNewlines)
            if predicted == .closed {
                Thread.sleep(forTimeInterval: 0.5)
                #expect(
                    answer == "closed" && !logged().contains { $0.first == "\(number)" }, "\(probe): \(answer)")
                continue
            }
            if case .tcp(let targets) = predicted {
                #expect(
                    eventually(5) { targets.contains { (connections()[$0.cluster] ?? 0) > (before[$0.cluster] ?? 0) } },
                    "\(probe): Envoy opened no connection to \(targets); answered \(answer); \(connections())")
                continue
            }
            var line: [String]?
            let found = eventually(10) {
                line = logged().first { $0.first == "\(number)" }
                return line != nil
            }
            #expect(found, "\(probe): no access log line; answered \(answer)")
            let fields = Array((line ?? []).dropFirst())
            try #require(fields.count == 4, "\(probe): log line \(line ?? [])")
            let (route, cluster, code, flags) = (fields[0], fields[1], fields[2], fields[3])
            switch predicted {
            case .routed(let name, let targets):
                #expect(route == name && targets.map(\.cluster).contains(cluster), "\(probe): Envoy logged \(fields)")
            case .notFound:
                #expect(code == "404" && flags == "NR" && answer == "404 envoy", "\(probe): \(answer), \(fields)")
            case .direct(_, let status):
                #expect(code == "\(status)", "\(probe): Envoy logged \(fields)")
            case .tcp, .closed:
                break
            }
        }
    }
}
