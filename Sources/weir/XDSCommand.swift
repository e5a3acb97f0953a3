import ArgumentParser
import Dispatch
import Foundation
import Logging
import WeirMesh
import WeirNetns
import WeirXDS

struct XDSCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "xds",
        abstract: "Run the local xDS cache: ADS (state of the world and delta) for co-located Envoys and proxyless gRPC clients.",
        discussion: """
        Sources: --mesh (App Mesh manifests, compiled per node), --envoy-resources (Envoy-native listeners, clusters, \
        routes and endpoints, served to every node) and --upstream (another ADS server, relayed and cached). \
        Directories are watched; a change that does not validate is refused as a whole and the last good config stays. \
        With --state, each node's last good snapshot is kept on disk and served at start, even if the sources are broken.
        """
    )

    @Option(help: "Where Envoys connect: unix:/path or HOST:PORT (loopback).") var listen: String
    @Option(help: "Directory of App Mesh (appmesh.k8s.aws/v1beta2) manifests.") var mesh: String?
    @Option(name: .customLong("envoy-resources"), help: "Directory of Envoy-native resource files (`resources:` lists with @type).") var envoyResources: String?
    @Option(help: "Upstream ADS server to relay and cache: unix:/path or HOST:PORT.") var upstream: String?
    @Option(help: "Directory for the last good snapshot of each node.") var state: String?
    @Option(help: "Admin endpoint (/streams, /snapshots, /ready): unix:/path or 127.0.0.1:PORT.") var admin: String?
    @Option(help: "Envoy's inbound (ingress) listener port in compiled manifests.") var ingressPort: UInt16 = 15000
    @Option(help: "Envoy's outbound (egress) listener port in compiled manifests.") var egressPort: UInt16 = 15001
    @Option(name: .customLong("sds-socket"), help: "The SDS server's Unix socket (the SPIRE agent's, App Mesh's APPMESH_SDS_SOCKET_PATH) for `sds` certificates and trust.")
    var sdsSocket = "/run/spire/sockets/agent.sock"

    func validate() throws {
        guard XDSAddress.parse(listen) != nil else { throw ValidationError("--listen '\(listen)': use unix:/absolute/path or HOST:PORT") }
        if let upstream, XDSAddress.parse(upstream) == nil { throw ValidationError("--upstream '\(upstream)': use unix:/absolute/path or HOST:PORT") }
        if mesh == nil && envoyResources == nil && upstream == nil && state == nil {
            throw ValidationError("give at least one source: --mesh, --envoy-resources, --upstream or --state")
        }
        if upstream != nil && (mesh != nil || envoyResources != nil) {
            throw ValidationError("--upstream relays another control plane; it does not combine with --mesh or --envoy-resources")
        }
        if ingressPort == 0 || egressPort == 0 || ingressPort == egressPort { throw ValidationError("--ingress-port and --egress-port must be two different ports") }
        if !sdsSocket.hasPrefix("/") { throw ValidationError("--sds-socket '\(sdsSocket)': give an absolute path") }
    }

    func run() throws {
        // SIGTERM and SIGINT are taken by sigwait below (blocked first, so every thread inherits the mask).
        var signals = blockTerminationSignals()
        // Validate before anything is loaded or written: a path that is a file, or a socket another server answers on,
        // is bad input and stays as it is.
        if case .unix(let path)? = XDSAddress.parse(listen) {
            do { try UnixSocketPath.check(path) } catch { throw CommandFailure(status: .badInput, message: "--listen: \(error)") }
        }
        let logger = Logger(label: "weir.xds")
        let cache = SnapshotCache(stateDirectory: state.map { URL(fileURLWithPath: $0) }, logger: logger)
        var relay: UpstreamRelay?
        var sources: ConfigSources?
        if let upstream {
            relay = UpstreamRelay(upstream: XDSAddress.parse(upstream)!, cache: cache, logger: logger)
            cache.setSource(relay)
        } else if mesh != nil || envoyResources != nil {
            var options = MeshCompiler.Options()
            options.ingressPort = ingressPort; options.egressPort = egressPort; options.sdsSocketPath = sdsSocket
            let s = ConfigSources(mesh: mesh, envoy: envoyResources, options: options, cache: cache, logger: logger)
            if let problems = s.reload() {
                FileHandle.standardError.write(Data("weir xds: sources refused, serving the last good snapshots (\(cache.nodeIDs.count) node(s)):\n\(problems)\n".utf8))
            }
            do { try s.watch() } catch { logger.warning("not watching: \(error)") }
            cache.setSource(s)
            sources = s
        }
        var onNack: (@Sendable (String, ResourceType, String) -> Void)?
        if let relay {
            onNack = { node, type, message in relay.forwardNack(node: node, type: type, message: message) }
        }
        let server = XDSServer(listen: XDSAddress.parse(listen)!, cache: cache, logger: logger, onNack: onNack)
        let adminEndpoint: AdminEndpoint?
        do {
            adminEndpoint = try admin.map { a in try AdminEndpoint(a) { [sources] path in server.adminReply(path: path, sources: sources) } }
        } catch {
            throw CommandFailure(status: .badInput, message: "--admin: \(error)")
        }
        _ = adminEndpoint
        let finished = DispatchSemaphore(value: 0)
        let task = Task {
            do { try await server.serve { address in FileHandle.standardError.write(Data("weir xds: serving ADS on \(address)\n".utf8)) } } catch {
                if !Task.isCancelled { exitProcess(1, error) }
            }
            finished.signal()
        }
        var received: Int32 = 0
        sigwait(&signals, &received)
        // Graceful shutdown waits for streams to end, and a sidecar never ends its ADS stream: give the streams a
        // moment to see the GOAWAY, then leave once the snapshots are on disk.
        task.cancel()
        _ = finished.wait(timeout: .now() + .seconds(2))
        if !cache.flush(within: 3) {
            FileHandle.standardError.write(Data("weir xds: snapshots not all written to --state within 3 s; exiting anyway\n".utf8))
        }
        Foundation.exit(0)
    }
}

func exitProcess(_ code: Int32, _ error: Error?) -> Never {
    if let error { FileHandle.standardError.write(Data("weir xds: \(error)\n".utf8)) }
    exit(code)
}

