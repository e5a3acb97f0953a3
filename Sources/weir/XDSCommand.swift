import ArgumentParser
import Foundation
import Logging
import ServiceLifecycle
import WeirAgent
import WeirMesh
import WeirNetns
import WeirSystem
import WeirXDS

struct XDSCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "xds",
        abstract:
            "Run the local xDS cache: ADS (state of the world and delta) for co-located Envoys and proxyless gRPC clients.",
        discussion: """
            Sources: --mesh (App Mesh manifests, compiled per node), --envoy-resources (Envoy-native listeners, clusters, \
            routes and endpoints, served to every node) and --upstream (another ADS server, relayed and cached). \
            Directories are watched; a change that does not validate is refused as a whole and the last good config stays. \
            With --state, each node's last good snapshot is kept on disk and served at start, even if the sources are broken. \
            ADS listens on a Unix socket or loopback only, unless --allow-remote: every node's configuration would be \
            served to whoever reaches the address.
            """
    )

    @Option(help: "Where Envoys connect: unix:/path or HOST:PORT (loopback).") var listen: String
    @Flag(help: "Let --listen be a non-loopback address. Anyone who reaches it gets any node's configuration.")
    var allowRemote = false
    @Option(help: "Directory of App Mesh (appmesh.k8s.aws/v1beta2) manifests.") var mesh: String?
    @Option(
        name: .customLong("envoy-resources"),
        help: "Directory of Envoy-native resource files (`resources:` lists with @type).") var envoyResources: String?
    @Option(help: "Upstream ADS server to relay and cache: unix:/path or HOST:PORT.") var upstream: String?
    @Option(help: "Directory for the last good snapshot of each node.") var state: String?
    @Option(help: "Admin endpoint (/streams, /snapshots, /ready): unix:/path or HOST:PORT.") var admin: String?
    @Option(help: "Envoy's inbound (ingress) listener port in compiled manifests.") var ingressPort: UInt16 = 15000
    @Option(help: "Envoy's outbound (egress) listener port in compiled manifests.") var egressPort: UInt16 = 15001
    @Option(
        name: .customLong("sds-socket"),
        help:
            "The SDS server's Unix socket (the SPIRE agent's, App Mesh's APPMESH_SDS_SOCKET_PATH) for `sds` certificates and trust."
    )
    var sdsSocket = "/run/spire/sockets/agent.sock"

    func validate() throws {
        guard let address = XDSAddress.parse(listen) else {
            throw ValidationError("--listen '\(listen)': use unix:/absolute/path or HOST:PORT")
        }
        // The flag only lifts the loopback rule: given where there is no rule to lift, it would be ignored.
        if allowRemote {
            switch address {
            case .tcp(let e) where !e.isLoopback: break
            default:
                throw ValidationError(
                    "--allow-remote is for a --listen address beyond loopback; \(listen) is local already. Leave it out."
                )
            }
        }
        if case .tcp(let e) = address, !e.isLoopback, !allowRemote {
            throw ValidationError(
                "--listen \(listen) is not a loopback address: every node's configuration would be served to the network. Listen on 127.0.0.1 or a Unix socket, or give --allow-remote if that is what you want."
            )
        }
        if let upstream, XDSAddress.parse(upstream) == nil {
            throw ValidationError("--upstream '\(upstream)': use unix:/absolute/path or HOST:PORT")
        }
        if let admin, AdminAddress.parse(admin) == nil {
            throw ValidationError("--admin '\(admin)': use unix:/absolute/path or HOST:PORT")
        }
        if mesh == nil && envoyResources == nil && upstream == nil && state == nil {
            throw ValidationError("give at least one source: --mesh, --envoy-resources, --upstream or --state")
        }
        if upstream != nil && (mesh != nil || envoyResources != nil) {
            throw ValidationError(
                "--upstream relays another control plane; it does not combine with --mesh or --envoy-resources")
        }
        try validateEnvoyListeners(ingress: ingressPort, egress: egressPort, sdsSocket: sdsSocket)
        for (flag, dir) in [("--mesh", mesh), ("--envoy-resources", envoyResources)] {
            guard let dir else { continue }
            guard let st = try? FileStatus.of(dir) else { throw ValidationError("\(flag) \(dir): no such directory") }
            if !st.isDirectory { throw ValidationError("\(flag) \(dir): not a directory") }
        }
        if let state, let st = try? FileStatus.of(state), !st.isDirectory {
            throw ValidationError("--state \(state): not a directory")
        }
    }

    func run() async throws {
        let address = XDSAddress.parse(listen)!
        // Validate before anything is loaded or written: a path that is a file, or a socket another server answers on,
        // is bad input and stays as it is.
        if case .unix(let path) = address {
            do { try UnixSocketPath.check(path) } catch {
                throw CommandFailure(status: .badInput, message: "--listen: \(error)")
            }
        }
        if let state {
            do { try FileManager.default.createDirectory(atPath: state, withIntermediateDirectories: true) } catch {
                throw CommandFailure(
                    status: .badInput, message: "--state \(state): cannot be made: \(error.localizedDescription)")
            }
        }
        let logger = Logger(label: "weir.xds")
        let cache = SnapshotCache(stateDirectory: state.map { URL(fileURLWithPath: $0) }, logger: logger)
        var relay: UpstreamRelay?
        var sources: ConfigSources?
        var services: [any Service] = []
        if let upstream {
            relay = UpstreamRelay(upstream: XDSAddress.parse(upstream)!, cache: cache, logger: logger)
            cache.setSource(relay)
        } else if mesh != nil || envoyResources != nil {
            var options = MeshCompiler.Options()
            options.ingressPort = ingressPort
            options.egressPort = egressPort
            options.sdsSocketPath = sdsSocket
            let s = ConfigSources(mesh: mesh, envoy: envoyResources, options: options, cache: cache, logger: logger)
            if let problems = s.reload() {
                FileHandle.standardError.write(
                    Data(
                        "weir xds: sources refused, serving the last good snapshots (\(cache.nodeIDs.count) node(s)):\n\(problems)\n"
                            .utf8))
            }
            cache.setSource(s)
            sources = s
        }
        var onNack: (@Sendable (String, ResourceType, String) -> Void)?
        if let relay {
            onNack = { node, type, message in relay.forwardNack(node: node, type: type, message: message) }
        }
        let server = XDSServer(listen: address, cache: cache, logger: logger, onNack: onNack)
        // Started in order, shut down in reverse: snapshots are written last, after the server has said GOAWAY.
        services.append(
            SnapshotPersistenceService(cache: cache, deadlineSeconds: 3) {
                FileHandle.standardError.write(
                    Data("weir xds: snapshots not all written to --state within 3 s; exiting anyway\n".utf8))
            })
        if let sources { services.append(ConfigWatchService(sources: sources)) }
        if let admin {
            services.append(
                AdminServer(
                    address: AdminAddress.parse(admin)!, logger: logger,
                    handler: XDSAdmin.handler(server: server, sources: sources)))
        }
        services.append(
            XDSService(server: server) { bound in
                FileHandle.standardError.write(Data("weir xds: serving ADS on \(bound)\n".utf8))
            })
        try await runServices(services, logger: logger, what: "weir xds")
    }
}

/// Runs services under one ServiceGroup: SIGTERM and SIGINT shut it down gracefully, within one deadline; a service
/// that fails to start (a port taken) ends the group with a clear message and exit 1.
func runServices(_ services: [any Service], logger: Logger, what: String, deadline: Duration = .seconds(15))
    async throws
{
    do {
        try await serviceGroup(services, logger: logger, deadline: deadline).run()
    } catch let f as CommandFailure {
        throw f
    } catch let e as ServiceGroupError {
        throw CommandFailure(status: .runtimeFailure, message: "\(what): \(e)")
    } catch {
        throw CommandFailure(status: .runtimeFailure, message: "\(what): \(Describe.error(error))")
    }
}

/// Error text for people: a bind failure says which address and why, not NIO's call signature.
enum Describe {
    static func error(_ error: any Error) -> String {
        if let e = error as? XDSBindError { return e.description }
        return "\(error)"
    }
}
