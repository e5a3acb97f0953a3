import ArgumentParser
import Foundation
import Logging
import WeirCapture
import WeirNetfilter
import WeirNetns

/// Exit codes, documented in README.md.
enum ExitStatus: Int32 {
    case ok = 0, runtimeFailure = 1, badInput = 2, checkFoundProblems = 3
}

/// An error that already says what to do, with its exit status.
struct CommandFailure: Error {
    let status: ExitStatus
    let message: String
}

@main
struct Weir: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "weir",
        abstract: "Node-level service-mesh network agent: capture a pod's TCP into a local proxy, and check that it works.",
        discussion: """
        weir installs nftables rules (over netlink, one atomic transaction; iptables-restore as fallback) into a \
        network namespace so the pod's inbound and outbound TCP reaches a local proxy.

        Exit codes: 0 ok, 1 runtime failure, 2 bad input (nothing was changed), 3 check found a problem.
        """,
        subcommands: [InitCommand.self, CheckCommand.self, CleanCommand.self, PlanCommand.self, ForwardCommand.self, MeshCommand.self, BootstrapCommand.self, XDSCommand.self]
    )

    static func main() {
        LoggingSystem.bootstrap { label in
            var h = StreamLogHandler.standardError(label: label)
            h.logLevel = ProcessInfo.processInfo.environment["WEIR_LOG_LEVEL"].flatMap(Logger.Level.init(rawValue:)) ?? .notice
            return h
        }
        do {
            var command = try parseAsRoot()
            try command.run()
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
    switch error {
    case let e as CommandFailure: return e
    case let e as CaptureSpecError: return CommandFailure(status: .badInput, message: e.description)
    case let e as NetworkNamespace.NotFound: return CommandFailure(status: .badInput, message: e.description)
    case let e as IptablesBackend.ModeError: return CommandFailure(status: .badInput, message: e.description)
    default: return CommandFailure(status: .runtimeFailure, message: "\(error)")
    }
}

/// Blocks SIGTERM and SIGINT (call before starting threads: they inherit the mask) so `sigwait` takes them, and
/// ignores SIGPIPE. Returns the set to wait on.
func blockTerminationSignals() -> sigset_t {
    var signals = sigset_t()
    sigemptyset(&signals)
    sigaddset(&signals, SIGTERM)
    sigaddset(&signals, SIGINT)
    pthread_sigmask(SIG_BLOCK, &signals, nil)
    signal(SIGPIPE, SIG_IGN)
    return signals
}
