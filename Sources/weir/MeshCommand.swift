import ArgumentParser
import Foundation
import WeirMesh
import WeirXDS

struct MeshCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mesh",
        abstract: "Work with App Mesh (appmesh.k8s.aws/v1beta2) manifests.",
        subcommands: [MeshValidateCommand.self, MeshRenderCommand.self]
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
            print(
                "weir mesh: \(files.count) file(s) valid: \(m.meshes.count) mesh(es), \(m.virtualNodes.count) virtual node(s), \(m.virtualRouters.count) virtual router(s), \(m.virtualServices.count) virtual service(s), \(m.virtualGateways.count) virtual gateway(s), \(m.gatewayRoutes.count) gateway route(s)"
            )
        } catch {
            throw CommandFailure(status: .badInput, message: "invalid App Mesh manifests:\n" + error.description)
        }
    }

    /// The manifest files under `directory`, sorted, with their text.
    static func manifestFiles(_ directory: String) throws -> [(path: String, text: String)] {
        do { return try ConfigDirectory.files(directory) } catch {
            throw CommandFailure(status: .badInput, message: "invalid App Mesh manifests:\n" + error.description)
        }
    }
}

struct MeshRenderCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "render",
        abstract: "Print the Envoy resources (JSON) a node gets from a directory of App Mesh manifests.",
        discussion:
            "The node id is App Mesh's (mesh/<mesh>/virtualNode/<name>, or its ARN) or <namespace>/<name>. Exit 2 on invalid manifests or an unknown node."
    )

    @Argument(help: "Directory of .yaml/.yml manifests (read recursively).") var directory: String
    @Option(help: "Envoy node id.") var node: String
    @Option(help: "Envoy's inbound (ingress) listener port.") var ingressPort: UInt16 = 15000
    @Option(help: "Envoy's outbound (egress) listener port.") var egressPort: UInt16 = 15001
    @Option(name: .customLong("sds-socket"), help: "The SDS server's Unix socket, for `sds` certificates and trust.")
    var sdsSocket = "/run/spire/sockets/agent.sock"

    func validate() throws {
        try validateEnvoyListeners(ingress: ingressPort, egress: egressPort, sdsSocket: sdsSocket)
    }

    func run() throws {
        let files = try MeshValidateCommand.manifestFiles(directory)
        do {
            let m = try ManifestReader.read(files)
            var options = MeshCompiler.Options()
            options.ingressPort = ingressPort
            options.egressPort = egressPort
            options.sdsSocketPath = sdsSocket
            print(try MeshCompiler(m, options: options).compile(nodeID: node).json(), terminator: "")
        } catch {
            throw CommandFailure(status: .badInput, message: "cannot render node \(node):\n" + error.description)
        }
    }
}

/// The Envoy listener ports and SDS socket that `mesh render` and `xds` compile for, checked the same way in both.
func validateEnvoyListeners(ingress: UInt16, egress: UInt16, sdsSocket: String) throws {
    if ingress == 0 || egress == 0 {
        throw ValidationError(
            "--ingress-port \(ingress) and --egress-port \(egress): a listener port is from 1 to 65535")
    }
    if ingress == egress {
        throw ValidationError("--ingress-port and --egress-port are both \(ingress): give two different ports")
    }
    if !sdsSocket.hasPrefix("/") { throw ValidationError("--sds-socket '\(sdsSocket)': give an absolute path") }
}
