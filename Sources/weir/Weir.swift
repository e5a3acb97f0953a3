import ArgumentParser
import Foundation
import Logging
import Metrics
import Prometheus
import WeirAgent
import WeirCapture
import WeirInit
import WeirNetfilter
import WeirNetns

/// An error that already says what to do, with its exit status.
struct CommandFailure: Error {
    let status: ExitStatus
    let message: String
}

@main
struct Weir: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "weir",
        abstract:
            "Node-level service-mesh network agent: capture a pod's TCP into a local proxy, and check that it works.",
        discussion: """
            weir installs nftables rules (over netlink, one atomic transaction; iptables-restore as fallback) into a \
            network namespace so the pod's inbound and outbound TCP reaches a local proxy.

            Exit codes: 0 ok, 1 runtime failure, 2 bad input (nothing was changed), 3 check found a problem.
            """,
        subcommands: [
            InitCommand.self, CheckCommand.self, CleanCommand.self, PlanCommand.self, ForwardCommand.self,
            MeshCommand.self, BootstrapCommand.self, XDSCommand.self, DaemonCommand.self, EnrollCommand.self,
            UnenrollCommand.self, PodsCommand.self, StatusCommand.self,
        ]
    )

    /// The process-wide registry of metrics (swift-metrics over Prometheus), shown by admin endpoints' `/metrics`.
    static let metrics = PrometheusCollectorRegistry()

    static func main() async {
        let arguments = Array(CommandLine.arguments.dropFirst())
        if arguments.first == "daemon" && !arguments.contains(where: { $0 == "--help" || $0 == "-h" }) {
            // First, before any other thread exists (capabilities are per thread; later threads inherit them).
            do { try Privileges.restrict() } catch {
                FileHandle.standardError.write(Data("weir daemon: \(error)\n".utf8))
                Foundation.exit(ExitStatus.runtimeFailure.rawValue)
            }
        }
        let environment = ProcessInfo.processInfo.environment
        do {
            try ProcessEnvironment.check(environment, arguments: Array(CommandLine.arguments.dropFirst()))
        } catch {
            FileHandle.standardError.write(Data(("weir: " + error.message + "\n").utf8))
            Foundation.exit(error.status.rawValue)
        }
        let level = environment["WEIR_LOG_LEVEL"].flatMap(Logger.Level.init(rawValue:)) ?? .notice
        LoggingSystem.bootstrap { label in
            var h = StreamLogHandler.standardError(label: label)
            h.logLevel = level
            return h
        }
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: metrics))
        // Writes to a closed pipe (an admin client gone, stdout piped to head) fail with EPIPE rather than kill weir.
        signal(SIGPIPE, SIG_IGN)
        do {
            var command = try parseAsRoot()
            if var asyncCommand = command as? AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch let code as ExitCode {
            Foundation.exit(code.rawValue)
        } catch let failure as CommandFailure {
            FileHandle.standardError.write(Data(("weir: " + failure.message + "\n").utf8))
            Foundation.exit(failure.status.rawValue)
        } catch {
            let code = exitCode(for: error)
            if code == .success {
                print(fullMessage(for: error))
                Foundation.exit(0)
            }
            FileHandle.standardError.write(Data((fullMessage(for: error) + "\n").utf8))
            // Parse and validation errors are bad input (2); ArgumentParser's own code for them is 64.
            Foundation.exit(code == .validationFailure ? ExitStatus.badInput.rawValue : code.rawValue)
        }
    }
}

/// Maps library errors to messages and exit codes.
func failure(from error: Error) -> CommandFailure {
    if let e = error as? CommandFailure { return e }
    let f = InitFailure.from(error)
    return CommandFailure(status: f.status, message: f.message)
}
