import EnvoyAPI
import Foundation
import SwiftProtobuf
import Testing
import WeirMesh
@testable import WeirXDS
import WeirTestSupport

@Suite("wire compatibility with the public Envoy API")
struct WireCompatibilityTests {
    @Test("every resource weir compiles is decoded by Python's xds-protos, field by field equal to weir's own view")
    func decodedByXdsProtos() throws {
        EnvoyTypes.register()
        let mesh = projectRoot.appendingPathComponent("Tests/WeirMeshTests/Goldens/mesh-allow/mesh.yaml")
        let manifests = try ManifestReader.read([(mesh.path, try String(contentsOf: mesh, encoding: .utf8))])
        let r = try MeshCompiler(manifests).compile(nodeID: "shop/web")
        var options = JSONEncodingOptions()
        options.preserveProtoFieldNames = true
        var entries: [[String: Any]] = []
        func add<M: SwiftProtobuf.Message>(_ m: M) throws {
            entries.append([
                "type_url": "type.googleapis.com/\(M.protoMessageName)",
                "bytes": Data(try m.serializedBytes() as [UInt8]).base64EncodedString(),
                "json": try JSONSerialization.jsonObject(with: Data(try m.jsonString(options: options).utf8)),
            ])
        }
        for m in r.listeners { try add(m) }
        for m in r.routes { try add(m) }
        for m in r.clusters { try add(m) }
        for m in r.endpoints { try add(m) }
        // A whole ADS response, as the server encodes it.
        var s = SotWStream()
        let response = try #require(s.receive(request(.cluster), snapshot: try Snapshot(r)).first)
        let wire = try Envoy_Service_Discovery_V3_DiscoveryResponse(
            serializedBytes: ResponseEncoder.shared.bytes(response))
        try add(wire)
        #expect(entries.count > 10)
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("weir-wire-\(UUID().uuidString).json")
        defer { try? FileManager.default.removeItem(at: file) }
        try JSONSerialization.data(withJSONObject: entries).write(to: file)
        let out = try sh([venvPython, helperScript("decode_with_xds_protos.py"), file.path], allowFailure: true)
        #expect(out.status == 0, "\(out.output)")
    }

    @Test("Protos/ matches the public API: every field number, type and name (scripts/check_protos.py)")
    func protoSubset() throws {
        let set = FileManager.default.temporaryDirectory.appendingPathComponent("weir-protos-\(UUID().uuidString).pb")
        defer { try? FileManager.default.removeItem(at: set) }
        let protos = try FileManager.default.subpathsOfDirectory(
            atPath: projectRoot.appendingPathComponent("Protos").path
        ).filter { $0.hasSuffix(".proto") }
        _ = try sh(
            [
                "/usr/bin/protoc", "-I", projectRoot.appendingPathComponent("Protos").path, "--include_imports",
                "--descriptor_set_out=\(set.path)",
            ] + protos)
        let out = try sh(
            [venvPython, projectRoot.appendingPathComponent("scripts/check_protos.py").path, set.path],
            allowFailure: true)
        #expect(out.status == 0 && out.output.contains(" 0 mismatches"), "\(out.output)")
    }
}
