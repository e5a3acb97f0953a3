import Foundation
import Testing
import WeirTestSupport
@testable import WeirMesh

/// App Mesh's own CRD files (../shared/appmesh-crds): the published v1beta2 schema each kind's manifests follow.
enum CRDs {
    static let directory = projectRoot.deletingLastPathComponent().appendingPathComponent("shared/appmesh-crds")
    static let files: [String: String] = [
        "Mesh": "appmesh.k8s.aws_meshes.yaml", "VirtualNode": "appmesh.k8s.aws_virtualnodes.yaml",
        "VirtualService": "appmesh.k8s.aws_virtualservices.yaml",
        "VirtualRouter": "appmesh.k8s.aws_virtualrouters.yaml",
        "VirtualGateway": "appmesh.k8s.aws_virtualgateways.yaml", "GatewayRoute": "appmesh.k8s.aws_gatewayroutes.yaml",
    ]

    /// The openAPIV3Schema of a kind's v1beta2 version.
    static func schema(_ kind: String) throws -> YAMLNode {
        let path = directory.appendingPathComponent(try #require(files[kind])).path
        let text = try String(contentsOfFile: path, encoding: .utf8)
        var limits = YAMLLimits()
        limits.maxDepth = 200
        let doc = try #require(try YAMLNode.documents(text, limits: limits).first, "\(path) is empty")
        let versions = try #require(doc["spec"]?["versions"]?.sequence)
        let v1beta2 = try #require(versions.first { $0["name"]?.text == "v1beta2" }, "no v1beta2 in \(path)")
        return try #require(v1beta2["schema"]?["openAPIV3Schema"])
    }
}

/// Where weir deliberately differs from the CRD, each with its reason.
let schemaDeviations: [String: String] = [
    "meshRef.uid":
        "required by the CRD because App Mesh's webhook always filled it in; weir has no API server, so a hand-written meshRef needs none (when given, it is checked)",
    "virtualGatewayRef.uid": "as meshRef.uid",
]

/// The fields of the short list that mean something outside Envoy's config, each with why it changes no Envoy resource.
let metaExceptions: [(prefix: String, why: String)] = [
    ("spec.podSelector", "which pods are the node's or gateway's: the node agent's business, not Envoy's"),
    ("spec.meshRef.uid", "checked against the Mesh's metadata.uid; changes nothing it would otherwise accept"),
    ("spec.virtualGatewayRef.uid", "checked against the VirtualGateway's metadata.uid"),
    (
        "spec.namespaceSelector",
        "a selector: decides membership, which shows in node ids and errors, not in one node's resources"
    ),
    ("spec.gatewayRouteSelector", "a selector: decides which gateway routes a gateway takes"),
    ("spec.meshOwner", "the account of a shared mesh: checked against ARNs that name the mesh"),
]

@Suite("App Mesh schema: weir's against the CRDs")
struct SchemaOracleTests {
    static func compare(_ crd: YAMLNode, _ weir: SchemaType, _ path: String, into problems: inout [String]) {
        let type = crd["type"]?.text ?? "?"
        func number(_ key: String) -> Int64? { crd[key]?.int.map(Int64.init) }
        switch weir {
        case .object(let fields):
            guard type == "object", let props = crd["properties"]?.mapping else {
                problems.append("\(path): weir has an object, the CRD \(type)")
                return
            }
            let theirs = Set(props.compactMap(\.key.text))
            let ours = Set(fields.map(\.name))
            for name in theirs.subtracting(ours).sorted() {
                problems.append("\(path).\(name): in the CRD, not in weir's schema")
            }
            for name in ours.subtracting(theirs).sorted() {
                problems.append("\(path).\(name): in weir's schema, not in the CRD")
            }
            let required = Set((crd["required"]?.sequence ?? []).compactMap(\.text))
            for f in fields {
                guard let sub = crd["properties"]?[f.name] else { continue }
                let key = path.split(separator: ".").suffix(1).joined() + "." + f.name
                if (required.contains(f.name)) != f.required && schemaDeviations[key] == nil {
                    problems.append(
                        "\(path).\(f.name): required is \(required.contains(f.name)) in the CRD, \(f.required) in weir")
                }
                compare(sub, f.type, "\(path).\(f.name)", into: &problems)
            }
        case .stringMap:
            guard type == "object", crd["additionalProperties"]?["type"]?.text == "string" else {
                problems.append("\(path): weir has a string map, the CRD \(type)")
                return
            }
        case .array(let items, let minItems, let maxItems):
            guard type == "array", let sub = crd["items"] else {
                problems.append("\(path): weir has a list, the CRD \(type)")
                return
            }
            if number("minItems").map(Int.init) != minItems {
                problems.append(
                    "\(path): minItems \(String(describing: number("minItems"))) in the CRD, \(String(describing: minItems)) in weir"
                )
            }
            if number("maxItems").map(Int.init) != maxItems {
                problems.append(
                    "\(path): maxItems \(String(describing: number("maxItems"))) in the CRD, \(String(describing: maxItems)) in weir"
                )
            }
            compare(sub, items, path + "[]", into: &problems)
        case .string(let values, let minLength, let maxLength):
            guard type == "string" else {
                problems.append("\(path): weir has a string, the CRD \(type)")
                return
            }
            let theirs = crd["enum"]?.sequence?.compactMap(\.text)
            if theirs.map(Set.init) != values.map(Set.init) {
                problems.append(
                    "\(path): enum \(String(describing: theirs)) in the CRD, \(String(describing: values)) in weir")
            }
            if number("minLength").map(Int.init) != minLength { problems.append("\(path): minLength differs") }
            if number("maxLength").map(Int.init) != maxLength { problems.append("\(path): maxLength differs") }
        case .integer(let minimum, let maximum):
            guard type == "integer" else {
                problems.append("\(path): weir has an integer, the CRD \(type)")
                return
            }
            if number("minimum") != minimum {
                problems.append(
                    "\(path): minimum \(String(describing: number("minimum"))) in the CRD, \(String(describing: minimum)) in weir"
                )
            }
            if number("maximum") != maximum {
                problems.append(
                    "\(path): maximum \(String(describing: number("maximum"))) in the CRD, \(String(describing: maximum)) in weir"
                )
            }
        case .boolean:
            if type != "boolean" { problems.append("\(path): weir has a boolean, the CRD \(type)") }
        case .any:
            problems.append("\(path): weir checks nothing here")
        }
    }

    @Test(
        "every kind's spec and status: the same fields, types, enums, ranges, lengths, item counts and required fields as the CRD",
        arguments: AppMeshSchema.kinds)
    func sameAsCRD(_ kind: String) throws {
        let crd = try CRDs.schema(kind)
        guard case .object(let top)? = AppMeshSchema.object(kind) else {
            Issue.record("no schema for \(kind)")
            return
        }
        var problems: [String] = []
        for part in ["spec", "status"] {
            let ours = try #require(top.first { $0.name == part })
            Self.compare(try #require(crd["properties"]?[part]), ours.type, part, into: &problems)
        }
        #expect(problems.isEmpty, "\(kind):\n\(problems.joined(separator: "\n"))")
        #expect(AppMeshSchema.specLeaves(kind).count > 5)
    }

    @Test("every field has a use; the meta fields are exactly the short list, each with its reason")
    func uses() {
        for kind in AppMeshSchema.kinds {
            for leaf in AppMeshSchema.specLeaves(kind) {
                #expect(leaf.use.note != "no use declared", "\(kind) \(leaf.path) has no use")
                if case .meta = leaf.use {
                    #expect(
                        metaExceptions.contains { leaf.path.hasPrefix($0.prefix) },
                        "\(kind) \(leaf.path) is meta but not on the short list")
                }
            }
        }
    }

    @Test("README.md carries the field table the schema gives")
    func readmeTable() throws {
        let readme = try String(contentsOf: projectRoot.appendingPathComponent("README.md"), encoding: .utf8)
        let begin = "<!-- field table: generated from AppMeshSchema, kept equal by a test -->\n"
        let end = "<!-- end of field table -->"
        let start = try #require(readme.range(of: begin), "README.md has no field table")
        let stop = try #require(readme.range(of: end, range: start.upperBound..<readme.endIndex))
        let table = String(readme[start.upperBound..<stop.lowerBound])
        if table != AppMeshSchema.markdownTable(), ProcessInfo.processInfo.environment["WEIR_UPDATE_GOLDENS"] == "1" {
            let updated = readme.replacingCharacters(
                in: start.upperBound..<stop.lowerBound, with: AppMeshSchema.markdownTable())
            try updated.write(to: projectRoot.appendingPathComponent("README.md"), atomically: true, encoding: .utf8)
        }
        #expect(
            table == AppMeshSchema.markdownTable(),
            "README.md's field table differs from the code; regenerate with WEIR_UPDATE_GOLDENS=1")
    }
}
