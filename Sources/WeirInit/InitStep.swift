import Logging
import WeirCapture
import WeirNetfilter
import WeirNetns

/// weir's exit codes, the same for every command and for weir-init (README.md lists them).
public enum ExitStatus: Int32, Sendable {
    case ok = 0
    case runtimeFailure = 1
    /// Bad input: nothing was changed.
    case badInput = 2
    case checkFoundProblems = 3
}

/// A failure of the init step with its exit status (bad input, nothing changed; or a runtime failure).
public struct InitFailure: Error, Sendable, CustomStringConvertible {
    public let status: ExitStatus
    public let message: String
    public var description: String { message }

    public init(status: ExitStatus, message: String) {
        self.status = status
        self.message = message
    }

    public static func badInput(_ message: String) -> InitFailure { InitFailure(status: .badInput, message: message) }

    /// A library error as a message and exit status: a refused value is bad input, anything else a runtime failure.
    public static func from(_ error: any Error) -> InitFailure {
        switch error {
        case let e as InitFailure: return e
        case let e as CaptureSpecError: return .badInput(e.description)
        case let e as NamespaceError: return .badInput(e.description)
        case let e as IptablesBackend.ModeError: return .badInput(e.description)
        case let e as IptablesBackend.TooManyRules: return .badInput(e.description)
        default: return InitFailure(status: .runtimeFailure, message: "\(error)")
        }
    }
}

/// `weir init`: the capture spec from flags over `WEIR_*` over `APPMESH_*`, the namespace and backend, every value
/// checked before anything is touched, then one atomic install. `weir init` and the small `weir-init` executable
/// an init container ships both run this.
public struct InitStep: Sendable {
    public var flags: CaptureSpecInput
    public var netns: String?
    public var backend: String?
    public var iptablesMode: String?

    public init(flags: CaptureSpecInput, netns: String? = nil, backend: String? = nil, iptablesMode: String? = nil) {
        self.flags = flags
        self.netns = netns
        self.backend = backend
        self.iptablesMode = iptablesMode
    }

    /// Installs the rules; returns the line that says what was installed where.
    public func run(environment: [String: String]) throws(InitFailure) -> String {
        do {
            let spec = try CaptureSpecInput.resolve(flags: flags, environment: environment)
            let backendName = backend ?? environment["WEIR_BACKEND"] ?? "nftables"
            let backend = try Self.backendChoice(
                backendName, iptablesMode: iptablesMode ?? environment["WEIR_IPTABLES_MODE"] ?? "auto")
            let namespace = try Self.namespace(netns ?? environment["WEIR_NETNS"])
            let plan = RedirectPlan(spec: spec)
            // The process exits next: the transaction's socket is closed at once, not by a thread started for it.
            try CaptureInstaller(namespace: namespace, backend: backend, closesInBackground: false).install(plan)
            // The rules packets traverse (the spec chain only stores the spec); long lists are sets.
            var what = "\(plan.chains.filter { $0.base != nil }.map(\.rules.count).reduce(0, +)) rules"
            if case .iptables = backend {
                what =
                    "\(spec.families.map { IptablesRendering.ruleCount(plan, family: $0) }.reduce(0, +)) iptables rules"
            } else if !plan.sets.isEmpty {
                what += " and \(plan.sets.count) sets"
            }
            return
                "weir: installed \(what) in \(namespace) (\(backendName), mode \(spec.mode.rawValue), outbound → \(spec.outboundPort), inbound → \(spec.inboundPort))"
        } catch {
            throw InitFailure.from(error)
        }
    }

    /// The namespace at `path` (the current one when nil), checked to be a network namespace.
    public static func namespace(_ path: String?) throws(InitFailure) -> NetworkNamespace {
        let ns = NetworkNamespace(path: path)
        do { try ns.validate() } catch { throw .badInput(error.description) }
        return ns
    }

    /// The backend, with every value checked whatever the others are (a bad iptables mode is refused under
    /// nftables too: it would bite the day the backend changes).
    public static func backendChoice(_ backend: String, iptablesMode: String) throws(InitFailure) -> BackendChoice {
        guard let mode = IptablesBackend.Mode(rawValue: iptablesMode.lowercased()) else {
            throw .badInput(
                "--iptables-mode '\(iptablesMode)' (or WEIR_IPTABLES_MODE): unknown mode. Use auto, nft or legacy.")
        }
        switch backend.lowercased() {
        case "nftables", "nft": return .nftables
        case "iptables": return .iptables(mode)
        default:
            throw .badInput(
                "--backend '\(backend)' (or WEIR_BACKEND): unknown backend. Use nftables (default) or iptables.")
        }
    }
}

/// Checks that hold whatever the command: every `WEIR_*` variable is one weir reads (a typo would silently change
/// nothing), `WEIR_LOG_LEVEL` is a level, and no single-value option is given twice (the first would be dropped).
public enum ProcessEnvironment {
    static let levels = Logger.Level.allCases.map(\.rawValue)

    /// Options that take a list: they repeat.
    static let repeatable: Set<String> = [
        "--proxy-uid", "--proxy-gid", "--inbound-exclude-port", "--inbound-exclude-source", "--outbound-include-cidr",
        "--outbound-exclude-cidr", "--outbound-include-port", "--outbound-exclude-port", "--proxy-port", "--node-id",
        "--label", "--appmesh-env",
    ]

    public static func check(_ env: [String: String], arguments: [String]) throws(InitFailure) {
        let (_, problems) = CaptureSpecInput.fromWeirEnvironment(env)
        if let p = problems.first { throw .badInput("\(p.option)=\(p.value): \(p.problem). \(p.fix)") }
        if let level = env["WEIR_LOG_LEVEL"], Logger.Level(rawValue: level) == nil {
            throw .badInput("WEIR_LOG_LEVEL=\(level): not a log level. Use one of \(levels.joined(separator: ", ")).")
        }
        var seen = Set<String>()
        for arg in arguments {
            if arg == "--" { break }
            guard arg.hasPrefix("--") else { continue }
            let name = String(arg.split(separator: "=", maxSplits: 1)[0])
            if repeatable.contains(name) { continue }
            if !seen.insert(name).inserted {
                throw .badInput("\(name) is given twice; it takes one value (give it once)")
            }
        }
    }
}
