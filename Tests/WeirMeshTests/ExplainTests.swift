import Foundation
import Testing
import WeirMesh
import WeirTestSupport

/// `weir mesh explain` on the golden meshes' `web` node: which route, targets, TCP proxy or 404 each request gets,
/// and the failed condition it names. (EnvoyExplainTests sends the same requests through a real Envoy.)
@Suite("mesh explain")
struct ExplainTests {
    static func explain(_ mesh: String, _ request: String, _ headers: [String] = []) throws -> RouteExplanation {
        let resources = try MeshCompiler(CompilerGoldenTests.manifests(mesh)).compile(
            nodeID: "mesh/shop/virtualNode/web_shop")
        return RouteExplainer(resources, egressPort: 15001).explain(try ExplainRequest.parse(request, headers: headers))
    }

    @Test("each request's route, targets or 404, with the condition that decided it", arguments: ExplainProbe.all)
    func outcomes(_ probe: ExplainProbe) throws {
        let e = try Self.explain(probe.mesh, probe.request, probe.headers)
        #expect(e.outcome.description == probe.expected, "\(e.text)")
        for words in probe.says { #expect(e.text.contains(words), "'\(words)' missing from:\n\(e.text)") }
    }

    @Test(
        "bad requests are refused by name",
        arguments: [
            ("GET", [], "give a method and a URL"), ("get http://a/", [], "not an HTTP method"),
            ("GET color:8080/", [], "needs a scheme"), ("GET ftp://a/", [], "scheme 'ftp'"),
            ("GET https://a/", [], "scheme 'https'"),
            ("GET http://a:0/", [], "port '0'"), ("GET http://a:99999/", [], "port '99999'"),
            ("GET http:///x", [], "no host"), ("GET http://a/", ["novalue"], "'name: value'"),
            ("GET http://a/", [":path: /x"], "pseudo-headers"), ("GET http://fd00::1/", [], "in brackets"),
            ("GET http://[::1]junk/", [], "give [IPv6]:port"), ("GET http://a:+80/", [], "port '+80'"),
            ("GET http://a/", ["a b: 1"], "not a header name"),
        ] as [(String, [String], String)])
    func badRequests(_ request: String, _ headers: [String], _ problem: String) {
        #expect(throws: ExplainProblem.self) { try ExplainRequest.parse(request, headers: headers) }
        do {
            _ = try ExplainRequest.parse(request, headers: headers)
        } catch {
            #expect(error.description.contains(problem), "\(error.description)")
        }
    }

    @Test("the Host: URL port unless the default, a host header over it, repeated headers joined")
    func requestParsing() throws {
        let a = try ExplainRequest.parse("GET http://Color:8080/p?q=1#frag", headers: ["X-A: 1", "x-a: 2"])
        #expect(a.authority == "Color:8080" && a.port == 8080 && a.path == "/p?q=1" && a.headers["x-a"] == "1,2")
        let b = try ExplainRequest.parse("GET http://color", headers: ["Host: other:9"])
        #expect(b.authority == "other:9" && b.port == 80 && b.path == "/")
        let d = try ExplainRequest.parse("GET http://color#frag", headers: [])
        #expect(d.authority == "color" && d.path == "/")
        let c = try ExplainRequest.parse("GET http://[fd00::1]:8443?x", headers: [])
        #expect(c.authority == "[fd00::1]:8443" && c.port == 8443 && c.path == "/?x")
    }
}
