import ArgumentParser
import Foundation
import WeirXDS

struct BootstrapCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bootstrap",
        abstract: "Print an Envoy bootstrap that takes its whole configuration from weir over ADS.",
        discussion: "The node id is App Mesh's (mesh/<mesh>/virtualNode/<name>, or its ARN) or <namespace>/<name>."
    )

    @Option(help: "Envoy node id.") var node: String
    @Option(help: "weir's ADS address: unix:/path, unix:@NAME (abstract, as inside a daemon's pod) or 127.0.0.1:PORT.")
    var xds: String
    @Flag(help: "Use incremental (delta) xDS instead of state of the world.") var delta = false
    @Option(help: "Envoy admin port on 127.0.0.1.") var adminPort: UInt16 = 9901

    func run() throws {
        guard let address = XDSAddress.parse(xds, allowAbstract: true) else {
            throw CommandFailure(
                status: .badInput,
                message: "--xds '\(xds)': use unix:/absolute/path, unix:@NAME or HOST:PORT, for example 127.0.0.1:15010"
            )
        }
        guard adminPort > 0 else {
            throw CommandFailure(status: .badInput, message: "--admin-port must be from 1 to 65535")
        }
        do {
            print(
                try EnvoyBootstrap(nodeID: node, xds: address, delta: delta, adminPort: adminPort).json(),
                terminator: "")
        } catch {
            throw CommandFailure(status: .badInput, message: "--node: \(error)")
        }
    }
}
