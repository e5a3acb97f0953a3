import ArgumentParser
import Foundation
import WeirMesh

struct MeshCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mesh",
        abstract: "Work with App Mesh (appmesh.k8s.aws/v1beta2) manifests.",
        subcommands: [MeshValidateCommand.self]
    )
}

struct MeshValidateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "validate",
        abstract: "Check a directory of App Mesh manifests; every problem is reported as file:line: field: message.",
        discussion: "Exit 0 when valid, 2 when a manifest has problems."
    )

    @Argument(help: "Directory of .yaml/.yml manifests (read recursively).") var directory: String

    func run() throws {
        let files = try Self.manifestFiles(directory)
        do {
            let m = try ManifestReader.read(files)
            print("weir mesh: \(files.count) file(s) valid: \(m.meshes.count) mesh(es), \(m.virtualNodes.count) virtual node(s), \(m.virtualRouters.count) virtual router(s), \(m.virtualServices.count) virtual service(s), \(m.virtualGateways.count) virtual gateway(s), \(m.gatewayRoutes.count) gateway route(s)")
        } catch {
            throw CommandFailure(status: .badInput, message: "invalid App Mesh manifests:\n" + error.description)
        }
    }

    /// The manifest files under `directory`, sorted, with their text.
    static func manifestFiles(_ directory: String) throws -> [(path: String, text: String)] {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: directory, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw CommandFailure(status: .badInput, message: "\(directory): not a directory of App Mesh manifests")
        }
        let base = URL(fileURLWithPath: directory)
        let paths = (FileManager.default.enumerator(atPath: directory)?.compactMap { $0 as? String } ?? [])
            .filter { $0.hasSuffix(".yaml") || $0.hasSuffix(".yml") }.sorted()
        return try paths.map { rel in
            do {
                return (base.appendingPathComponent(rel).path, try String(contentsOf: base.appendingPathComponent(rel), encoding: .utf8))
            } catch {
                throw CommandFailure(status: .badInput, message: "\(rel): cannot be read: \(error.localizedDescription)")
            }
        }
    }
}
