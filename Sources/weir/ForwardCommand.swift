import ArgumentParser
import Foundation
import Logging
import ServiceLifecycle
import WeirAgent
import WeirCapture
import WeirForwarder
import WeirNetns

struct ForwardCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "forward",
        abstract:
            "Run the transparent forwarder: relay redirected connections to their original destination or to a proxy.",
        discussion: """
            Listens on the capture ports (IPv4 and IPv6) of the current or --netns namespace. Under redirect mode the \
            original destination comes from SO_ORIGINAL_DST; under tproxy it is the accepted socket's local address. \
            Upstream sockets carry the bypass mark, which weir's rules never capture. SIGTERM drains gracefully.
            """
    )

    @Option(help: "Network namespace to serve (/run/netns/NAME or /proc/PID/ns/net).") var netns: String?
    @Option(help: "Outbound capture port (default 15001).") var outboundPort: UInt16 = 15001
    @Option(help: "Inbound capture port (default 15006).") var inboundPort: UInt16 = 15006
    @Option(help: "redirect (SO_ORIGINAL_DST) or tproxy (local address).") var mode: String = "redirect"
    @Option(help: "Relay every connection to this HOST:PORT instead of its original destination.") var upstream: String?
    @Option(help: "With --upstream: prefix a PROXY protocol header, v1 or v2.") var proxyProtocol: String?
    @Option(help: "Admin endpoint for /metrics and /ready: 127.0.0.1:PORT or unix:PATH.") var admin: String?
    @Option(help: "Mark on upstream sockets (must match weir init's --bypass-mark).") var bypassMark: String = "0x539"
    @Option(help: "Worker threads (default: one per CPU).") var workers: Int = ProcessInfo.processInfo
        .activeProcessorCount
    @Option(help: "Connect timeout in milliseconds.") var connectTimeout: Int = 5_000
    @Option(help: "Idle timeout in milliseconds (0: none).") var idleTimeout: Int = 3_600_000
    @Option(help: "Maximum concurrent connections; new ones beyond it are reset.") var maxConnections: Int = 65_536
    @Option(help: "On SIGTERM, how long open connections may finish, in milliseconds.") var drainTimeout: Int = 10_000
    @Option(help: "Append a JSON line per closed connection to this file.") var accessLog: String?
    @Option(help: "Serve IPv6 too (true, default) or IPv4 only.") var ipv6: Bool = true
    @Option(
        help: "Busy-poll this many microseconds after activity before sleeping (0: never); lowers latency, costs CPU.")
    var busyPoll: Int = 0

    func run() async throws {
        var config = ForwarderConfig()
        config.outboundPort = outboundPort
        config.inboundPort = inboundPort
        guard outboundPort > 0, inboundPort > 0, outboundPort != inboundPort else {
            throw CommandFailure(
                status: .badInput,
                message: "--outbound-port and --inbound-port must be two different ports from 1 to 65535")
        }
        guard let m = CaptureMode(rawValue: mode) else {
            throw CommandFailure(status: .badInput, message: "--mode '\(mode)': unknown mode. Use redirect or tproxy.")
        }
        config.mode = m
        if let upstream {
            guard let ep = Endpoint.parse(upstream) else {
                throw CommandFailure(
                    status: .badInput,
                    message: "--upstream '\(upstream)': not HOST:PORT. Write 127.0.0.1:15100 or [::1]:15100.")
            }
            var version: ProxyProtocolVersion?
            if let p = proxyProtocol {
                guard let v = ProxyProtocolVersion(rawValue: p) else {
                    throw CommandFailure(status: .badInput, message: "--proxy-protocol '\(p)': use v1 or v2.")
                }
                version = v
            }
            config.target = .proxy(upstream: ep, proxyProtocol: version)
        } else if proxyProtocol != nil {
            throw CommandFailure(
                status: .badInput,
                message:
                    "--proxy-protocol needs --upstream: the header goes to a proxy, not to the original destination.")
        }
        let markText = bypassMark.lowercased()
        guard let mark = markText.hasPrefix("0x") ? UInt32(markText.dropFirst(2), radix: 16) : UInt32(markText),
            mark != 0
        else {
            throw CommandFailure(
                status: .badInput, message: "--bypass-mark '\(bypassMark)': give a non-zero mark such as 0x539.")
        }
        config.bypassMark = mark
        guard workers >= 1, connectTimeout >= 1, idleTimeout >= 0, maxConnections >= 1, drainTimeout >= 0 else {
            throw CommandFailure(
                status: .badInput,
                message: "--workers, --connect-timeout and --max-connections must be positive; timeouts not negative.")
        }
        config.workers = workers
        guard busyPoll >= 0 && busyPoll <= 10_000 else {
            throw CommandFailure(status: .badInput, message: "--busy-poll must be from 0 to 10000 microseconds.")
        }
        config.busyPollMicroseconds = busyPoll
        config.connectTimeoutMilliseconds = connectTimeout
        config.idleTimeoutMilliseconds = idleTimeout
        config.maxConnections = maxConnections
        config.drainTimeoutMilliseconds = drainTimeout
        config.accessLogPath = accessLog
        config.families = ipv6 ? [.ipv4, .ipv6] : [.ipv4]
        var adminAddress: AdminAddress?
        if let admin {
            guard let a = AdminAddress.parse(admin) else {
                throw CommandFailure(
                    status: .badInput, message: "--admin '\(admin)': use 127.0.0.1:PORT, unix:/PATH or unix:@NAME.")
            }
            adminAddress = a
        }
        let namespace = NetworkNamespace(path: netns)
        do { try namespace.validate() } catch { throw CommandFailure(status: .badInput, message: error.description) }

        let logger = Logger(label: "weir.forward")
        let forwarder = Forwarder(config: config, logger: logger)
        var services: [any Service] = []
        // Shut down in reverse: the forwarder drains first, the admin endpoint (showing 503) goes last.
        if let adminAddress {
            services.append(
                AdminServer(
                    address: adminAddress, namespace: namespace, logger: logger,
                    handler: ForwarderAdmin.handler(forwarder: forwarder, registry: Weir.metrics)))
        }
        let (outbound, inbound) = (outboundPort, inboundPort)
        services.append(
            ForwarderService(
                forwarder: forwarder, namespace: namespace,
                onStarted: {
                    FileHandle.standardError.write(
                        Data(
                            "weir forward: listening on \(outbound) (outbound) and \(inbound) (inbound) in \(namespace)\n"
                                .utf8))
                },
                onDraining: { n in
                    FileHandle.standardError.write(Data("weir forward: draining \(n) connection(s)\n".utf8))
                }))
        try await runServices(
            services, logger: logger, what: "weir forward", deadline: .milliseconds(drainTimeout + 5000))
    }
}
