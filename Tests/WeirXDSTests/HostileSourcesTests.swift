import Foundation
import Testing
import WeirMesh
import WeirTestSupport
@testable import WeirXDS

/// A scratch directory with a mesh and an Envoy resources directory, removed by `close()`.
final class SourceDirs: @unchecked Sendable {
    // Written once in init.
    let root: URL
    var mesh: URL { root.appendingPathComponent("mesh") }
    var envoy: URL { root.appendingPathComponent("envoy") }

    init() throws {
        root = URL(fileURLWithPath: "/tmp/weir-hostile-\(getpid())-\(UInt32.random(in: 0..<1_000_000))")
        for d in [mesh, envoy] { try FileManager.default.createDirectory(at: d, withIntermediateDirectories: true) }
        try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: root.path)
        try meshFixture.write(to: mesh.appendingPathComponent("mesh.yaml"), atomically: true, encoding: .utf8)
        try SourcesTests.envoyFile.write(
            to: envoy.appendingPathComponent("legacy.yaml"), atomically: true, encoding: .utf8)
    }

    /// Writes beside and renames, so that a watcher sees the whole file at once.
    func put(_ text: String, _ name: String, in dir: URL) throws {
        let tmp = root.appendingPathComponent(".\(name).tmp")
        try text.write(to: tmp, atomically: false, encoding: .utf8)
        try FileManager.default.moveItem(at: tmp, to: dir.appendingPathComponent(name))
    }

    func close() { try? FileManager.default.removeItem(at: root) }
}

@Suite("hostile and unreadable config sources")
struct HostileSourcesTests {
    @Test("Envoy resource files past a limit are refused with file, line and the limit", arguments: HostileYAML.shapes)
    func envoyFiles(_ shape: HostileYAML.Shape) {
        let error = #expect(throws: MeshError.self) { try EnvoyResourceFiles.read([("hostile.yaml", shape.envoy)]) }
        #expect(
            error?.problems.first?.location.file == "hostile.yaml" && (error?.problems.first?.location.line ?? 0) > 0,
            "\(String(describing: error))")
        #expect(error?.problems.first?.message.contains(shape.mentions) == true, "\(String(describing: error))")
    }

    @Test("weir mesh validate refuses each shape with exit 2, file:line and the limit", arguments: HostileYAML.shapes)
    func validate(_ shape: HostileYAML.Shape) throws {
        let dirs = try SourceDirs()
        defer { dirs.close() }
        try dirs.put(shape.mesh, "hostile.yaml", in: dirs.mesh)
        let r = try sh([weirBinary, "mesh", "validate", dirs.mesh.path], allowFailure: true)
        #expect(r.status == 2, "\(r.output.prefix(500))")
        let path = dirs.mesh.appendingPathComponent("hostile.yaml").path
        #expect(r.output.contains(path + ":") && r.output.contains(shape.mentions), "\(r.output.prefix(500))")
        #expect(r.output.utf8.count < 4096, "one line per problem, not the file back")
    }

    @Test(
        "a running weir xds refuses each shape in either directory, keeps serving the last good config, and stays small"
    )
    func runningXDS() throws {
        let dirs = try SourceDirs()
        defer { dirs.close() }
        let admin = dirs.root.appendingPathComponent("admin.sock").path
        let weir = try Spawned(
            [
                weirBinary, "xds", "--listen", "unix:\(dirs.root.path)/xds.sock", "--admin", "unix:\(admin)",
                "--mesh", dirs.mesh.path, "--envoy-resources", dirs.envoy.path,
            ], log: dirs.root.appendingPathComponent("weir.log"))
        defer { weir.stop() }
        #expect(eventually(10) { unixHTTPGet(admin, "/ready") == "ready\n" }, "weir xds did not start: \(weir.output)")
        func snapshots() -> [String: Any] {
            guard let text = unixHTTPGet(admin, "/snapshots"),
                let o = try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any]
            else { return [:] }
            return o
        }
        func versions() -> [String: String] {
            ((snapshots()["snapshots"] as? [String: [String: Any]]) ?? [:]).compactMapValues {
                $0["version"] as? String
            }
        }
        let good = versions()
        #expect(good["mesh/colors/virtualNode/front_apps"] != nil, "\(snapshots())")
        for shape in HostileYAML.shapes {
            for (dir, text) in [(dirs.mesh, shape.mesh), (dirs.envoy, shape.envoy)] {
                let generation = snapshots()["generation"] as? Int
                try dirs.put(text, "hostile.yaml", in: dir)
                let file = dir.appendingPathComponent("hostile.yaml").path
                #expect(
                    eventually(20) { ((snapshots()["lastError"] as? String) ?? "").contains(file) },
                    "\(shape) in \(dir.lastPathComponent): not refused: \(snapshots()["lastError"] ?? "none")")
                let error = (snapshots()["lastError"] as? String) ?? ""
                #expect(error.contains(shape.mentions) && error.contains(file + ":"), "\(shape): \(error.prefix(300))")
                #expect(versions() == good, "\(shape): the last good config must stay served")
                #expect(snapshots()["generation"] as? Int == generation, "\(shape): nothing new was put in force")
                #expect(
                    weir.process.isRunning && unixHTTPGet(admin, "/ready") == "ready\n",
                    "\(shape): weir xds must keep serving")
                #expect(
                    (residentKiB(weir.process.processIdentifier) ?? .max) < 256 << 10,
                    "\(shape): weir xds grew to \(residentKiB(weir.process.processIdentifier) ?? -1) KiB")
                try FileManager.default.removeItem(atPath: file)
                #expect(
                    eventually(20) { snapshots()["lastError"] == nil || snapshots()["lastError"] is NSNull },
                    "\(shape): the good config did not come back")
            }
        }
    }

    @Test(
        "a manifest with an unknown field, or one weir cannot honour, is refused as a whole naming file, line and field; the last good config stays",
        arguments: [
            (
                "port: 9081, protocol: http}",
                "port: 9081, protocol: http}, tls: {mode: STRICT, certificate: {acm: {certificateARN: arn:aws:acm:x}}}",
                "certificate.acm", "weir does not honour"
            ),
            (
                "port: 9081, protocol: http}", "port: 9081, protocol: http}, timout: {}", "spec.listeners[0].timout",
                "did you mean 'timeout'?"
            ),
        ])
    func unhonoured(_ from: String, _ to: String, _ field: String, _ mentions: String) throws {
        let dirs = try SourceDirs()
        defer { dirs.close() }
        let cache = SnapshotCache(stateDirectory: nil)
        let sources = ConfigSources(mesh: dirs.mesh.path, envoy: dirs.envoy.path, cache: cache)
        #expect(sources.reload() == nil)
        let node = "mesh/colors/virtualNode/front_apps"
        let good = try #require(cache.snapshot(for: node))
        #expect(meshFixture.contains(from))
        try dirs.put(meshFixture.replacingOccurrences(of: from, with: to), "second.yaml", in: dirs.mesh)
        try FileManager.default.removeItem(at: dirs.mesh.appendingPathComponent("mesh.yaml"))
        let problems = try #require(sources.reload())
        #expect(
            problems.contains("second.yaml:") && problems.contains(field) && problems.contains(mentions), "\(problems)")
        #expect(cache.snapshot(for: node) == good)
    }

    @Test("a FIFO or a dangling link that looks like a manifest is an error naming it; weir does not block on it")
    func notRegular() throws {
        let dirs = try SourceDirs()
        defer { dirs.close() }
        #expect(mkfifo(dirs.mesh.appendingPathComponent("pipe.yaml").path, 0o644) == 0)
        try FileManager.default.createSymbolicLink(
            atPath: dirs.mesh.appendingPathComponent("gone.yaml").path, withDestinationPath: "/nonexistent/x.yaml")
        let r = try sh([weirBinary, "mesh", "validate", dirs.mesh.path], allowFailure: true)
        #expect(r.status == 2)
        #expect(r.output.contains("pipe.yaml") && r.output.contains("not a regular file"), "\(r.output)")
        #expect(r.output.contains("gone.yaml") && r.output.contains("cannot be read"), "\(r.output)")
    }
}

@Suite("unreadable config directories", .enabled(if: canRunNamespaceTests))
struct UnreadableSourcesTests {
    @Test(
        "a subdirectory weir cannot read is an error naming it, for validate and for a running weir xds; its nodes do not silently vanish"
    )
    func unreadableSubdirectory() throws {
        let dirs = try SourceDirs()
        defer { dirs.close() }
        let team = dirs.mesh.appendingPathComponent("team")
        try FileManager.default.createDirectory(at: team, withIntermediateDirectories: true)
        try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: dirs.mesh.path)
        try FileManager.default.setAttributes(
            [.posixPermissions: 0o644], ofItemAtPath: dirs.mesh.appendingPathComponent("mesh.yaml").path)
        try FileManager.default.setAttributes([.posixPermissions: 0o700], ofItemAtPath: team.path)
        // As nobody: root reads everything.
        let nobody = ["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        let r = try sh(nobody + [weirBinary, "mesh", "validate", dirs.mesh.path], allowFailure: true)
        #expect(r.status == 2, "\(r.output)")
        #expect(r.output.contains(team.path) && r.output.contains("Permission denied"), "\(r.output)")
        try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: team.path)
        try
            "apiVersion: appmesh.k8s.aws/v1beta2\nkind: VirtualNode\nmetadata: {name: extra, namespace: apps}\nspec: {}\n"
            .write(to: team.appendingPathComponent("extra.yaml"), atomically: true, encoding: .utf8)
        try FileManager.default.setAttributes(
            [.posixPermissions: 0o644], ofItemAtPath: team.appendingPathComponent("extra.yaml").path)
        let readable = try sh(nobody + [weirBinary, "mesh", "validate", dirs.mesh.path], allowFailure: true)
        #expect(readable.status == 0, "\(readable.output)")

        // A running weir xds (as nobody) whose subdirectory becomes unreadable refuses the reload, naming it, and keeps
        // serving the node defined there.
        let sockets = dirs.root.appendingPathComponent("run")
        try FileManager.default.createDirectory(at: sockets, withIntermediateDirectories: true)
        #expect(chown(sockets.path, 65534, 65534) == 0)
        let admin = sockets.appendingPathComponent("admin.sock").path
        let weir = try Spawned(
            nobody + [
                weirBinary, "xds", "--listen", "unix:\(sockets.path)/xds.sock", "--admin", "unix:\(admin)", "--mesh",
                dirs.mesh.path,
            ],
            log: dirs.root.appendingPathComponent("weir.log"))
        defer { weir.stop() }
        func snapshots() -> String { unixHTTPGet(admin, "/snapshots") ?? "" }
        #expect(
            eventually(10) { snapshots().contains("virtualNode/extra_apps") },
            "weir xds did not serve the subdirectory's node: \(weir.output)")
        try FileManager.default.setAttributes([.posixPermissions: 0o700], ofItemAtPath: team.path)
        #expect(
            eventually(10) { snapshots().contains(team.path) && snapshots().contains("Permission denied") },
            "not refused: \(snapshots())")
        #expect(
            snapshots().contains("virtualNode/extra_apps"),
            "the node defined in the unreadable directory must stay served")
    }
}
