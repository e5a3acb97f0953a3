import Foundation
import Testing
import WeirTestSupport

@Suite("weir mesh validate")
struct MeshCommandTests {
    @Test("a valid directory exits 0; a broken one exits 2 naming file, line and field")
    func validate() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("weir-mesh-\(getpid())-\(UInt32.random(in: 0..<1_000_000))")
        try FileManager.default.createDirectory(at: dir.appendingPathComponent("nested"), withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        try canary.write(to: dir.appendingPathComponent("nested/mesh.yaml"), atomically: true, encoding: .utf8)
        let ok = try sh([weirBinary, "mesh", "validate", dir.path], allowFailure: true)
        #expect(ok.status == 0, "\(ok.output)")
        #expect(ok.output.contains("3 virtual node(s)"))

        try canary.replacingOccurrences(of: "weight: 90", with: "weight: 190")
            .write(to: dir.appendingPathComponent("nested/mesh.yaml"), atomically: true, encoding: .utf8)
        let bad = try sh([weirBinary, "mesh", "validate", dir.path], allowFailure: true)
        #expect(bad.status == 2, "\(bad.output)")
        #expect(bad.output.contains("nested/mesh.yaml:51: spec.routes[0].httpRoute.action.weightedTargets[0].weight"), "\(bad.output)")

        let missing = try sh([weirBinary, "mesh", "validate", dir.appendingPathComponent("nope").path], allowFailure: true)
        #expect(missing.status == 2)
    }
}
