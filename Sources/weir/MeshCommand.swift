import ArgumentParser
import Foundation
import WeirMesh
import WeirXDS
import WeirInit

struct MeshCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mesh",
        abstract: "Work with App Mesh (appmesh.k8s.aws/v1beta2) manifests.",
        subcommands: [MeshValidateCommand.self, MeshRenderCommand.self, MeshExplainCommand.self]
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
    @OptionGroup var envoy: EnvoyListenerOptions

    func run() throws {
        print(try envoy.compile(directory, node: node).json(), terminator: "")
    }
}

struct MeshExplainCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "explain",
        abstract:
            "Show how a node's Envoy routes one HTTP request: listener, virtual host, route and targets, or why it 404s.",
        discussion: """
            It follows the request through the Envoy resources weir renders for the node (as `mesh render` prints \
            them), as Envoy 1.40 matches them: the listener at the request's port or the egress listener, the filter \
            chain for the port, the virtual host by Host (exact, *suffix, prefix*, *), then the first route whose every \
            condition holds; each route tried and the condition that failed. Exit 0 when a route (or a TCP proxy) \
            takes the request, 3 when Envoy would answer 404 or close the connection, 2 on bad input.
            """
    )

    @Argument(help: "Directory of .yaml/.yml manifests (read recursively).") var directory: String
    @Option(help: "Envoy node id of the caller (the pod whose sidecar routes the request).") var node: String
    @Option(help: "The request: METHOD URL, as 'GET http://color:8080/path?q=1'.") var request: String
    @Option(name: .customShort("H"), help: "A request header, 'name: value' (repeatable; 'host: …' sets the Host).")
    var header: [String] = []
    @OptionGroup var envoy: EnvoyListenerOptions

    func run() throws {
        let parsed: ExplainRequest
        do { parsed = try ExplainRequest.parse(request, headers: header) } catch {
            throw CommandFailure(status: .badInput, message: error.description)
        }
        let resources = try envoy.compile(directory, node: node)
        let e = RouteExplainer(resources, egressPort: envoy.egressPort).explain(parsed)
        print(e.text, terminator: "")
        switch e.outcome {
        case .routed, .tcp, .direct: break
        case .notFound, .closed: throw ExitCode(ExitStatus.checkFoundProblems.rawValue)
        }
    }
}

/// The Envoy listener ports and SDS socket a node's resources are compiled for (`mesh render`, `mesh explain`).
struct EnvoyListenerOptions: ParsableArguments {
    @Option(help: "Envoy's inbound (ingress) listener port.") var ingressPort: UInt16 = 15000
    @Option(help: "Envoy's outbound (egress) listener port.") var egressPort: UInt16 = 15001
    @Option(name: .customLong("sds-socket"), help: "The SDS server's Unix socket, for `sds` certificates and trust.")
    var sdsSocket = "/run/spire/sockets/agent.sock"

    func validate() throws {
        try validateEnvoyListeners(ingress: ingressPort, egress: egressPort, sdsSocket: sdsSocket)
    }

    /// The node's resources from the manifests in `directory`; bad manifests or an unknown node are bad input.
    func compile(_ directory: String, node: String) throws -> EnvoyResources {
        let files = try MeshValidateCommand.manifestFiles(directory)
        do {
            let m = try ManifestReader.read(files)
            var options = MeshCompiler.Options()
            options.ingressPort = ingressPort
            options.egressPort = egressPort
            options.sdsSocketPath = sdsSocket
            return try MeshCompiler(m, options: options).compile(nodeID: node)
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
