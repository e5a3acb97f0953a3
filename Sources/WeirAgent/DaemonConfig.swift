import WeirCapture
import WeirMesh
import WeirNetns
import WeirSystem

/// A problem in the daemon's config file: where it is, the key's path, and what is wrong.
public struct DaemonConfigProblem: Sendable, Hashable, CustomStringConvertible {
    /// The file, or "defaults" for the embedded ones.
    public var file: String
    /// 1-based line of the value or key at fault.
    public var line: Int
    /// The key's path from the top (`selectors[1].capture.outbound-port`).
    public var path: String
    /// What is wrong, and what to write instead.
    public var message: String
    /// `file:line: path: message`, as every weir bad input reads.
    public var description: String { "\(file):\(line): \(path.isEmpty ? "" : "\(path): ")\(message)" }
}

/// The daemon's config could not be read: every problem found, each located.
public struct DaemonConfigError: Error, Sendable, CustomStringConvertible {
    /// The problems, in file order.
    public var problems: [DaemonConfigProblem]
    /// One problem per line.
    public var description: String { problems.map(\.description).joined(separator: "\n") }
}

/// Per-pod settings chosen by a selector: namespace-name globs and labels given at enrollment.
public struct PodSelector: Sendable, Hashable {
    /// Globs (`*`, `?`) on the namespace's name; empty matches every name.
    public var netns: [String] = []
    /// Labels that must all be present with these values (labels come with an enrollment).
    public var labels: [String: String] = [:]
    /// The mode for the pods it selects, or nil to keep the default's.
    public var mode: PodMode?
    /// Node id templates (`{netns}` is the namespace's name), or nil to keep the default's.
    public var nodeIDs: [String]?
    /// Capture settings over the default's, by `weir init` flag name.
    public var capture: CaptureSpecInput = CaptureSpecInput()

    /// Whether this selector takes the pod named `name` with `labels`.
    public func matches(name: String, labels given: [String: String]) -> Bool {
        (netns.isEmpty || netns.contains { Glob.matches($0, name) }) && labels.allSatisfy { given[$0.key] == $0.value }
    }
}

/// A pod given in the config file, enrolled at start.
public struct StaticPod: Sendable, Hashable {
    /// The namespace: a name in the netns directory, or an absolute path.
    public var netns: String
    /// Labels, as an enrollment would give them (selectors see them).
    public var labels: [String: String] = [:]
    /// The line it was given on, for messages.
    public var line: Int = 0
}

/// `weir daemon`'s configuration. Every key is optional; what is left out is the documented default.
public struct DaemonConfig: Sendable, Hashable {
    /// The directory of named network namespaces that is watched (inotify).
    public var netnsDirectory = "/run/netns"
    /// Globs of the namespace names in `netnsDirectory` that are enrolled; none by default.
    public var select: [String] = []
    /// Where the daemon's sockets live: `enroll.sock`, `admin.sock`, `xds.sock`.
    public var runtimeDirectory = "/run/weir"
    /// Where pods, specs and snapshots are kept across restarts.
    public var stateDirectory = "/var/lib/weir"
    /// App Mesh manifests to compile, when the directory exists.
    public var meshDirectory = "/etc/weir/mesh"
    /// An extra loopback TCP address for the admin API (it is always on `runtimeDirectory/admin.sock`).
    public var adminTCP: Endpoint?
    /// How often every pod's rules are checked in full, besides change notifications (seconds).
    public var checkIntervalSeconds = 10
    /// The settings of a pod no selector takes.
    public var defaults = PodSelector(mode: .sidecar, nodeIDs: ["{netns}"])
    /// Selectors over the default, the first that matches wins.
    public var selectors: [PodSelector] = []
    /// Pods enrolled at start.
    public var pods: [StaticPod] = []
    /// Where a sidecar pod's xDS endpoint is opened inside the pod.
    public var podXDS = PodXDSEndpoints()
    /// The shared forwarder's worker threads (one per CPU by default).
    public var workers: Int?

    /// The embedded defaults.
    public init() {}

    /// The top-level keys, as written in the file.
    static let keys = [
        "netnsDirectory", "select", "runtimeDirectory", "stateDirectory", "meshDirectory", "admin", "checkInterval",
        "defaults", "selectors", "pods", "podXDS", "workers",
    ]
    static let selectorKeys = ["netns", "labels", "mode", "nodeIDs", "capture"]

    /// Reads a config file's text; every problem is reported, located, and nothing is half-applied.
    public static func parse(_ text: String, file: String) throws(DaemonConfigError) -> DaemonConfig {
        var reader = Reader(file: file)
        let config = reader.read(text)
        if !reader.problems.isEmpty { throw DaemonConfigError(problems: reader.problems) }
        return config
    }

    /// The settings for a pod named `name` with `labels`: the first matching selector over the defaults.
    public func settings(
        name: String, labels: [String: String], request: PodRequest = PodRequest()
    ) throws(CaptureSpecError) -> PodSettings {
        let chosen = selectors.first { $0.matches(name: name, labels: labels) }
        let mode = request.mode ?? chosen?.mode ?? defaults.mode ?? .sidecar
        // Lowest first: the mode's own ports, App Mesh's variables, the defaults, the selector, the request.
        var input = Self.base(mode)
        if let appMesh = request.appMesh { input = input.overlaid(by: appMesh) }
        input = input.overlaid(by: defaults.capture)
        if let chosen { input = input.overlaid(by: chosen.capture) }
        input = input.overlaid(by: request.capture)
        let templates = request.nodeIDs ?? chosen?.nodeIDs ?? defaults.nodeIDs ?? []
        return PodSettings(
            mode: mode, nodeIDs: templates.map { $0.replacingOccurrences(of: "{netns}", with: name) },
            spec: try input.validate())
    }

    /// A sidecar pod's rules go to App Mesh's Envoy ports (15000 in, 15001 out) and let Envoy's own uid (1337, as
    /// App Mesh's injector set APPMESH_IGNORE_UID) out uncaptured; a forwarder pod's go to weir's forwarder ports
    /// (15006 in, 15001 out), whose upstream sockets carry the bypass mark instead.
    static func base(_ mode: PodMode) -> CaptureSpecInput {
        var input = CaptureSpecInput()
        if mode == .sidecar {
            input.add(.inboundPort, "15000", from: "sidecar mode (default)")
            input.add(.outboundPort, "15001", from: "sidecar mode (default)")
            input.add(.proxyUID, "1337", from: "sidecar mode (default)")
        }
        return input
    }
}

/// What an enrollment request asks for beyond the selectors: each given field wins over them.
public struct PodRequest: Sendable, Hashable {
    /// The mode, or nil for the selector's.
    public var mode: PodMode?
    /// The node ids, or nil for the selector's.
    public var nodeIDs: [String]?
    /// Capture settings over the selector's, by `weir init` flag name.
    public var capture = CaptureSpecInput()
    /// The pod's `APPMESH_*` variables (as App Mesh's proxy route manager read them), under everything else.
    public var appMesh: CaptureSpecInput?

    /// An empty request: the selectors decide.
    public init(
        mode: PodMode? = nil, nodeIDs: [String]? = nil, capture: CaptureSpecInput = CaptureSpecInput(),
        appMesh: CaptureSpecInput? = nil
    ) {
        self.mode = mode
        self.nodeIDs = nodeIDs
        self.capture = capture
        self.appMesh = appMesh
    }
}

/// Shell-style globs on names: `*` any run, `?` one character, everything else itself.
public enum Glob {
    /// Whether `name` matches `pattern`.
    public static func matches(_ pattern: String, _ name: String) -> Bool {
        let p = Array(pattern)
        let n = Array(name)
        // Iterative matching with one backtrack point: linear in practice, never exponential.
        var pi = 0
        var ni = 0
        var star = -1
        var mark = 0
        while ni < n.count {
            if pi < p.count && (p[pi] == "?" || p[pi] == n[ni]) {
                pi += 1
                ni += 1
            } else if pi < p.count && p[pi] == "*" {
                star = pi
                mark = ni
                pi += 1
            } else if star >= 0 {
                pi = star + 1
                mark += 1
                ni = mark
            } else {
                return false
            }
        }
        while pi < p.count && p[pi] == "*" { pi += 1 }
        return pi == p.count
    }
}

/// Walks the YAML, collecting every problem with its line and path.
struct Reader {
    let file: String
    var problems: [DaemonConfigProblem] = []

    init(file: String) { self.file = file }

    mutating func problem(_ node: YAMLNode, _ path: String, _ message: String) {
        problems.append(DaemonConfigProblem(file: file, line: node.line, path: path, message: message))
    }

    mutating func read(_ text: String) -> DaemonConfig {
        var config = DaemonConfig()
        let documents: [YAMLNode]
        do {
            documents = try YAMLNode.documents(text, limits: YAMLLimits())
        } catch {
            problems.append(DaemonConfigProblem(file: file, line: error.line, path: "", message: error.message))
            return config
        }
        guard documents.count <= 1 else {
            problem(documents[1], "", "one YAML document is a config; this file has \(documents.count)")
            return config
        }
        guard let root = documents.first, !root.isNull else { return config }
        guard let pairs = mapping(root, "") else { return config }
        for (key, value) in pairs {
            switch key {
            case "netnsDirectory": if let v = absolutePath(value, key) { config.netnsDirectory = v }
            case "select": if let v = strings(value, key) { config.select = v }
            case "runtimeDirectory": if let v = absolutePath(value, key) { config.runtimeDirectory = v }
            case "stateDirectory": if let v = absolutePath(value, key) { config.stateDirectory = v }
            case "meshDirectory": if let v = absolutePath(value, key) { config.meshDirectory = v }
            case "admin": config.adminTCP = admin(value, key)
            case "podXDS": if let v = podXDS(value, key) { config.podXDS = v }
            case "workers":
                if let t = string(value, key) {
                    if let n = Int(t), n >= 1, n <= 64 {
                        config.workers = n
                    } else {
                        problem(value, key, "'\(t)' must be a whole number of threads from 1 to 64")
                    }
                }
            case "checkInterval": if let v = seconds(value, key) { config.checkIntervalSeconds = v }
            case "defaults":
                if var d = selector(value, key, allowMatch: false) {
                    d.mode = d.mode ?? .sidecar
                    d.nodeIDs = d.nodeIDs ?? ["{netns}"]
                    config.defaults = d
                }
            case "selectors":
                guard let items = sequence(value, key) else { continue }
                for (i, item) in items.enumerated() {
                    if let s = selector(item, "\(key)[\(i)]", allowMatch: true) { config.selectors.append(s) }
                }
            case "pods":
                guard let items = sequence(value, key) else { continue }
                for (i, item) in items.enumerated() {
                    if let p = staticPod(item, "\(key)[\(i)]") { config.pods.append(p) }
                }
            default:
                problem(value, key, "unknown key\(NearestName.suggestion(key, DaemonConfig.keys, always: true))")
            }
        }
        return config
    }

    /// A mapping's pairs by key text, refusing a non-mapping and a repeated key.
    mutating func mapping(_ node: YAMLNode, _ path: String) -> [(String, YAMLNode)]? {
        guard let pairs = node.mapping else {
            problem(node, path, "must be a mapping of keys to values")
            return nil
        }
        var seen = Set<String>()
        var out: [(String, YAMLNode)] = []
        for p in pairs {
            guard let key = p.key.text else {
                problem(p.key, path, "keys must be plain names")
                continue
            }
            let sub = path.isEmpty ? key : "\(path).\(key)"
            guard seen.insert(key).inserted else {
                problem(p.key, sub, "given twice; give it once")
                continue
            }
            if p.value.isNull { continue }
            out.append((key, p.value))
        }
        return out
    }

    mutating func sequence(_ node: YAMLNode, _ path: String) -> [YAMLNode]? {
        guard let items = node.sequence else {
            problem(node, path, "must be a list")
            return nil
        }
        return items
    }

    mutating func string(_ node: YAMLNode, _ path: String) -> String? {
        // A number reads as its text (a label value `1`, a namespace named `42`); bools and null do not.
        let isText: Bool
        switch node.scalar?.resolved {
        case .string?, .int?: isText = true
        default: isText = false
        }
        guard let s = node.scalar, isText, !s.text.isEmpty else {
            problem(node, path, "must be a non-empty string")
            return nil
        }
        return s.text
    }

    mutating func strings(_ node: YAMLNode, _ path: String) -> [String]? {
        guard let items = sequence(node, path) else { return nil }
        var out: [String] = []
        for (i, item) in items.enumerated() {
            if let s = string(item, "\(path)[\(i)]") { out.append(s) }
        }
        return out.count == items.count ? out : nil
    }

    mutating func absolutePath(_ node: YAMLNode, _ path: String) -> String? {
        guard let s = string(node, path) else { return nil }
        guard s.hasPrefix("/") else {
            problem(node, path, "'\(s)' must be an absolute path")
            return nil
        }
        return s
    }

    /// `10`, `10s`, `2m`: whole seconds from 1 to 3600.
    mutating func seconds(_ node: YAMLNode, _ path: String) -> Int? {
        guard let text = node.text else {
            problem(node, path, "must be a duration such as 10s or 2m")
            return nil
        }
        var digits = Substring(text)
        var scale = 1
        if text.hasSuffix("s") {
            digits = digits.dropLast()
        } else if text.hasSuffix("m") {
            digits = digits.dropLast()
            scale = 60
        }
        guard let n = Int(digits), n > 0, n * scale <= 3600 else {
            problem(node, path, "'\(text)' must be a duration from 1s to 60m, such as 10s or 2m")
            return nil
        }
        return n * scale
    }

    mutating func admin(_ node: YAMLNode, _ path: String) -> Endpoint? {
        guard let pairs = mapping(node, path) else { return nil }
        var out: Endpoint?
        for (key, value) in pairs {
            guard key == "tcp" else {
                problem(value, "\(path).\(key)", "unknown key\(NearestName.suggestion(key, ["tcp"], always: true))")
                continue
            }
            guard let text = string(value, "\(path).tcp") else { continue }
            guard let e = Endpoint.parse(text), e.isLoopback, e.port != 0 else {
                problem(value, "\(path).tcp", "'\(text)' must be a loopback HOST:PORT such as 127.0.0.1:15090")
                continue
            }
            out = e
        }
        return out
    }

    mutating func podXDS(_ node: YAMLNode, _ path: String) -> PodXDSEndpoints? {
        guard let pairs = mapping(node, path) else { return nil }
        var out = PodXDSEndpoints()
        let before = problems.count
        for (key, value) in pairs {
            let sub = "\(path).\(key)"
            switch key {
            case "port":
                guard let t = string(value, sub) else { continue }
                if let p = UInt16(t) {
                    out.port = p
                } else {
                    problem(value, sub, "'\(t)' must be a port from 0 (none) to 65535")
                }
            case "socket":
                guard let t = string(value, sub) else { continue }
                if t == "none" {
                    out.socket = ""
                } else if t.hasPrefix("@") && t.utf8.count > 1 && t.utf8.count <= SocketAddressBytes.maxUnixPath {
                    out.socket = t
                } else {
                    problem(value, sub, "'\(t)' must be an abstract socket name such as @weir/xds, or none")
                }
            default:
                problem(value, sub, "unknown key\(NearestName.suggestion(key, ["port", "socket"], always: true))")
            }
        }
        if problems.count == before && out.port == 0 && out.socket.isEmpty {
            problem(node, path, "a sidecar needs an xDS endpoint: give a port or a socket")
        }
        return problems.count == before ? out : nil
    }

    mutating func labels(_ node: YAMLNode, _ path: String) -> [String: String]? {
        guard let pairs = mapping(node, path) else { return nil }
        var out: [String: String] = [:]
        for (key, value) in pairs {
            if let v = string(value, "\(path).\(key)") { out[key] = v }
        }
        return out
    }

    mutating func selector(_ node: YAMLNode, _ path: String, allowMatch: Bool) -> PodSelector? {
        guard let pairs = mapping(node, path) else { return nil }
        var s = PodSelector()
        let before = problems.count
        for (key, value) in pairs {
            let sub = "\(path).\(key)"
            switch key {
            case "netns" where allowMatch, "labels" where allowMatch:
                if key == "netns" {
                    if value.sequence != nil {
                        s.netns = strings(value, sub) ?? []
                    } else if let g = string(value, sub) {
                        s.netns = [g]
                    }
                } else {
                    s.labels = labels(value, sub) ?? [:]
                }
            case "netns", "labels":
                problem(value, sub, "the defaults apply to every pod; '\(key)' belongs in a selector")
            case "mode":
                guard let text = string(value, sub) else { continue }
                guard let m = PodMode(rawValue: text) else {
                    problem(value, sub, "'\(text)' must be sidecar or forwarder")
                    continue
                }
                s.mode = m
            case "nodeIDs":
                s.nodeIDs = strings(value, sub)
            case "capture":
                s.capture = capture(value, sub)
            default:
                let names = allowMatch ? DaemonConfig.selectorKeys : ["mode", "nodeIDs", "capture"]
                problem(value, sub, "unknown key\(NearestName.suggestion(key, names, always: true))")
            }
        }
        return problems.count == before ? s : nil
    }

    /// Capture settings by `weir init` flag name; values are checked with the flags' own rules.
    mutating func capture(_ node: YAMLNode, _ path: String) -> CaptureSpecInput {
        var input = CaptureSpecInput()
        guard let pairs = mapping(node, path) else { return input }
        let names = CaptureSpecInput.Key.allCases.map(\.rawValue)
        var lines: [String: Int] = [:]
        for (key, value) in pairs {
            let sub = "\(path).\(key)"
            lines[sub] = value.line
            guard let k = CaptureSpecInput.Key(rawValue: key) else {
                problem(value, sub, "unknown capture setting\(NearestName.suggestion(key, names, always: true))")
                continue
            }
            let origin = sub
            if let items = value.sequence {
                guard k.isList else {
                    problem(value, sub, "takes one value, not a list")
                    continue
                }
                for item in items {
                    if let t = item.text {
                        input.add(k, t, from: origin)
                    } else {
                        problem(item, sub, "must be a value")
                    }
                }
            } else if let t = value.text {
                input.add(k, t, from: origin)
            } else {
                problem(value, sub, "must be a value\(k.isList ? " or a list" : "")")
            }
        }
        // Each value is checked now, so a bad one is refused at start with its line.
        do throws(CaptureSpecError) { _ = try input.validate() } catch {
            for p in error.problems {
                let line = lines[p.option] ?? node.line
                let where_ = lines[p.option] != nil ? p.option : path
                problems.append(
                    DaemonConfigProblem(
                        file: file, line: line, path: where_, message: "'\(p.value)': \(p.problem). \(p.fix)"))
            }
        }
        return input
    }

    mutating func staticPod(_ node: YAMLNode, _ path: String) -> StaticPod? {
        guard let pairs = mapping(node, path) else { return nil }
        var pod = StaticPod(netns: "", line: node.line)
        for (key, value) in pairs {
            let sub = "\(path).\(key)"
            switch key {
            case "netns": pod.netns = string(value, sub) ?? ""
            case "labels": pod.labels = labels(value, sub) ?? [:]
            default: problem(value, sub, "unknown key\(NearestName.suggestion(key, ["netns", "labels"], always: true))")
            }
        }
        guard !pod.netns.isEmpty else {
            problem(node, "\(path).netns", "is required: a namespace name in netnsDirectory or an absolute path")
            return nil
        }
        return pod
    }
}
