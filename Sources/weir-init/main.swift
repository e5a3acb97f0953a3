// weir-init: `weir init` alone, for an init container. The same step, flags and variables as `weir init`, in a
// binary without Foundation or argument-parser, so that it starts in about a millisecond and ships small.
import Logging
import WeirCapture
import WeirInit
import WeirSystem

#if canImport(Glibc)
    import Glibc
#endif

/// The help text; a function, not a global, so that its table of flags is built only for --help.
func usage() -> String {
    """
    usage: weir-init [init] [--netns PATH] [--backend nftables|iptables] [--iptables-mode auto|nft|legacy]
                     [--mode redirect|tproxy] [--quiet] [CAPTURE FLAGS]

    Validates a capture spec and installs the redirect rules in one atomic transaction, then exits: `weir init`
    for an init container's image. Every capture flag and --netns, --backend and --iptables-mode also read
    WEIR_<FLAG>; flags win over WEIR_*, which win over App Mesh's APPMESH_* variables. Capture flags (`weir init
    --help` says what each does):
    \(CaptureSpecInput.Key.allCases.filter { $0 != .mode }.map { "  " + $0.flag + " VALUE" }.joined(separator: "\n"))

    Exit codes: 0 ok, 1 runtime failure, 2 bad input (nothing was changed).
    """
}

func fail(_ status: ExitStatus, _ message: String) -> Never {
    let text = Array("weir: \(message)\n".utf8)
    _ = text.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
    exit(status.rawValue)
}

func environment() -> [String: String] {
    var out: [String: String] = [:]
    var p = environ
    while let entry = p.pointee {
        let text = String(cString: entry)
        if let eq = text.firstIndex(of: "=") { out[String(text[..<eq])] = String(text[text.index(after: eq)...]) }
        p += 1
    }
    return out
}

var arguments = Array(CommandLine.arguments.dropFirst())
if arguments.first == "init" { arguments.removeFirst() }
// The environment is checked first, as `weir` does for every command, --help included.
let env = environment()
do { try ProcessEnvironment.check(env, arguments: arguments) } catch { fail(error.status, error.message) }
if arguments.contains(where: { $0 == "--help" || $0 == "-h" }) {
    print(usage())
    exit(ExitStatus.ok.rawValue)
}
let level = env["WEIR_LOG_LEVEL"].flatMap(Logger.Level.init(rawValue:)) ?? .notice
LoggingSystem.bootstrap { label in
    var h = StreamLogHandler.standardError(label: label)
    h.logLevel = level
    return h
}

var input = CaptureSpecInput()
var netns: String?
var backend: String?
var iptablesMode: String?
var quiet = false
let keys = Dictionary(uniqueKeysWithValues: CaptureSpecInput.Key.allCases.map { ($0.flag, $0) })
var i = 0
while i < arguments.count {
    let arg = arguments[i]
    i += 1
    if arg == "--quiet" {
        quiet = true
        continue
    }
    guard arg.hasPrefix("--") else { fail(.badInput, "'\(arg)': unexpected argument; see weir-init --help") }
    var name = arg
    var value: String?
    if let eq = arg.firstIndex(of: "=") {
        name = String(arg[..<eq])
        value = String(arg[arg.index(after: eq)...])
    }
    let known = ["--netns", "--backend", "--iptables-mode"].contains(name) || keys[name] != nil
    guard known else { fail(.badInput, "\(name): unknown option; see weir-init --help") }
    if value == nil {
        guard i < arguments.count, !arguments[i].hasPrefix("--") else { fail(.badInput, "\(name) needs a value") }
        value = arguments[i]
        i += 1
    }
    switch name {
    case "--netns": netns = value
    case "--backend": backend = value
    case "--iptables-mode": iptablesMode = value
    default: input.add(keys[name]!, value!, from: name)
    }
}

do {
    let line = try InitStep(flags: input, netns: netns, backend: backend, iptablesMode: iptablesMode).run(
        environment: env)
    if !quiet { print(line) }
} catch {
    fail(error.status, error.message)
}
