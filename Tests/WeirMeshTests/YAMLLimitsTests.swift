import Foundation
import Testing
import WeirTestSupport
@testable import WeirMesh

@Suite("bounded YAML reading")
struct YAMLLimitsTests {
    @Test(
        "each hostile shape is refused with file, line and the limit, as a manifest and as an Envoy resource file",
        arguments: HostileYAML.shapes)
    func refused(_ shape: HostileYAML.Shape) {
        let error = #expect(throws: MeshError.self, "accepted \(shape.name)") {
            try ManifestReader.read([("hostile.yaml", shape.mesh)])
        }
        let p = error?.problems.first
        #expect(p?.location.file == "hostile.yaml" && (p?.location.line ?? 0) > 0, "\(String(describing: error))")
        #expect(p?.message.contains(shape.mentions) == true, "\(String(describing: error))")
        #expect(error?.problems.count == 1, "one problem, the limit: \(String(describing: error))")
    }

    @Test("under the limits the same shapes read: 64 levels, 2000 documents, aliases that expand modestly")
    func underLimits() throws {
        #expect(try YAMLNode.documents("k: " + HostileYAML.flow(63)).count == 1)
        #expect(throws: YAMLFailure.self) { try YAMLNode.documents("k: " + HostileYAML.flow(64)) }
        #expect(try YAMLNode.documents(String(repeating: "---\na: 1\n", count: 2000)).count == 2000)
        let doc = try #require(try YAMLNode.documents("base: &b {x: 1, y: [2, 3]}\nuse: [*b, *b]\n").first)
        #expect(doc["use"]?.sequence?.count == 2 && doc["use"]?.sequence?[1]["y"]?.sequence?.count == 2)
        var small = YAMLLimits()
        small.maxNodes = 20
        #expect(throws: YAMLFailure.self) {
            try YAMLNode.documents("a: &a [1, 2, 3, 4]\nb: [*a, *a, *a, *a]\n", limits: small)
        }
    }

    @Test(
        "scalars resolve as Kubernetes' YAML 1.1 reader resolves them",
        arguments: [
            ("1", YAMLNode.Resolved.int(1)), ("0x1F", .int(31)), ("010", .int(8)), ("1_000", .int(1000)),
            ("-7", .int(-7)),
            ("1.5", .float(1.5)), ("yes", .bool(true)), ("off", .bool(false)), ("y", .bool(true)), ("~", .null),
            ("", .null),
            ("null", .null), ("2001-12-14", .string), ("\"1\"", .string), ("!!str 1", .string), ("1.2.3", .string),
            ("abc", .string),
        ])
    func resolution(_ text: String, _ expected: YAMLNode.Resolved) throws {
        let doc = try #require(try YAMLNode.documents("v: \(text)\n").first)
        let v = try #require(doc.mapping?.first?.value)
        #expect(v.scalar?.resolved == expected)
    }

    @Test("not YAML: the parser's complaint with its line")
    func invalid() {
        let error = #expect(throws: YAMLFailure.self) { try YAMLNode.documents("a: 1\nb: [2, 3\nc: 4\n") }
        #expect(
            error?.message.contains("not valid YAML") == true && (error?.line ?? 0) >= 2, "\(String(describing: error))"
        )
    }

    @Test("JSON from YAML: scalars typed, keys given twice refused")
    func json() throws {
        let doc = try #require(try YAMLNode.documents("a: 1\nb: [true, null, x, \"2\"]\nc: {d: 1.5}\n").first)
        #expect(try doc.json() == #"{"a":1,"b":[true,null,"x","2"],"c":{"d":1.5}}"#)
        #expect(try doc.json(omitting: ["a"]) == #"{"b":[true,null,"x","2"],"c":{"d":1.5}}"#)
        let twice = try #require(try YAMLNode.documents("a: 1\na: 2\n").first)
        #expect(throws: YAMLFailure.self) { try twice.json() }
    }
}
