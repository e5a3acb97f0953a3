/// One problem with the capture spec, named by the option that carries it, with the fix.
public struct CaptureSpecProblem: Sendable, Hashable, CustomStringConvertible {
    /// The option as the user wrote it: `--outbound-port`, `WEIR_OUTBOUND_PORT` or `APPMESH_APP_PORTS`.
    public let option: String
    public let value: String
    public let problem: String
    public let fix: String
    public var description: String { "\(option) '\(value)': \(problem). \(fix)" }
}

/// The spec was invalid; nothing was touched.
public struct CaptureSpecError: Error, Sendable, CustomStringConvertible {
    public let problems: [CaptureSpecProblem]
    public var description: String {
        "invalid capture spec (nothing was changed):\n" + problems.map { "  - \($0)" }.joined(separator: "\n")
    }
}

/// A raw value with the name of the place it came from, kept for error messages.
public struct Sourced: Sendable, Hashable {
    public var value: String
    public var origin: String
    public init(_ value: String, from origin: String) {
        self.value = value
        self.origin = origin
    }
}

/// The capture spec as text, from flags, `WEIR_*`, `APPMESH_*` or the spec stored in a live table.
/// Layers merge by precedence (flags over WEIR_* over APPMESH_*), then `validate()` builds a `CaptureSpec`.
public struct CaptureSpecInput: Sendable, Hashable {
    /// Every key weir understands; flags are `--KEY`, variables `WEIR_KEY` with `-` → `_`, upper case.
    public enum Key: String, Sendable, CaseIterable, Hashable {
        case outboundPort = "outbound-port"
        case inboundPort = "inbound-port"
        case proxyUID = "proxy-uid"
        case proxyGID = "proxy-gid"
        case bypassMark = "bypass-mark"
        case inboundPorts = "inbound-ports"
        case inboundExcludePort = "inbound-exclude-port"
        case inboundExcludeSource = "inbound-exclude-source"
        case outboundIncludeCIDR = "outbound-include-cidr"
        case outboundExcludeCIDR = "outbound-exclude-cidr"
        case outboundIncludePort = "outbound-include-port"
        case outboundExcludePort = "outbound-exclude-port"
        case mode = "mode"
        case ipv6 = "ipv6"
        case dnsPort = "dns-port"
        case proxyPort = "proxy-port"
        case captureOwnAddress = "capture-own-address"
        case tproxyMark = "tproxy-mark"
        case tproxyTable = "tproxy-table"

        /// Keys that take a list (repeat the flag or separate with commas).
        public var isList: Bool {
            switch self {
            case .proxyUID, .proxyGID, .inboundExcludePort, .inboundExcludeSource, .outboundIncludeCIDR,
                .outboundExcludeCIDR, .outboundIncludePort, .outboundExcludePort, .proxyPort:
                return true
            default: return false
            }
        }
        public var flag: String { "--" + rawValue }
        public var environmentName: String {
            // Not `replacing(_:with:)`: its generic instantiations cost an init container's start-up more than this.
            "WEIR_"
                + String(String.UnicodeScalarView(rawValue.uppercased().unicodeScalars.map { $0 == "-" ? "_" : $0 }))
        }
    }

    /// Values per key; list keys may hold several, scalar keys hold the last one given.
    public private(set) var values: [Key: [Sourced]] = [:]

    public init() {}

    /// Sets a key (scalar) or appends to it (list), splitting list values on commas.
    public mutating func add(_ key: Key, _ raw: String, from origin: String) {
        if key.isList {
            let items = raw.split(separator: ",", omittingEmptySubsequences: true)
                .map { Sourced($0.trimmingSpaces, from: origin) }
            values[key, default: []].append(contentsOf: items)
        } else {
            values[key] = [Sourced(raw.trimmingSpaces, from: origin)]
        }
    }

    /// Overlays `higher` on self: a key present in `higher` replaces this layer's values.
    public func overlaid(by higher: CaptureSpecInput) -> CaptureSpecInput {
        var out = self
        for (k, v) in higher.values { out.values[k] = v }
        return out
    }

    // MARK: - Environment

    /// Reads `WEIR_*` variables; unknown `WEIR_` names are problems (a typo would silently change nothing).
    public static func fromWeirEnvironment(_ env: [String: String]) -> (CaptureSpecInput, [CaptureSpecProblem]) {
        var input = CaptureSpecInput()
        var problems: [CaptureSpecProblem] = []
        let names = env.keys.filter { $0.hasPrefix("WEIR_") }
        // Most processes have none: the table of names is built only for those that do.
        guard !names.isEmpty else { return (input, problems) }
        let known = Dictionary(uniqueKeysWithValues: Key.allCases.map { ($0.environmentName, $0) })
        let otherWeirVariables: Set<String> = ["WEIR_LOG_LEVEL", "WEIR_NETNS", "WEIR_BACKEND", "WEIR_IPTABLES_MODE"]
        for name in names.sorted() {
            guard let key = known[name] else {
                if !otherWeirVariables.contains(name) {
                    problems.append(
                        .init(
                            option: name, value: env[name]!, problem: "unknown variable",
                            fix: "Known capture variables: "
                                + Key.allCases.map(\.environmentName).joined(separator: ", ") + "."))
                }
                continue
            }
            input.add(key, env[name]!, from: name)
        }
        return (input, problems)
    }

    /// The variables App Mesh's proxy route manager read.
    public static let appMeshVariables = [
        "APPMESH_IGNORE_UID", "APPMESH_IGNORE_GID", "APPMESH_APP_PORTS", "APPMESH_ENVOY_INGRESS_PORT",
        "APPMESH_ENVOY_EGRESS_PORT", "APPMESH_EGRESS_IGNORED_IP", "APPMESH_EGRESS_IGNORED_PORTS", "APPMESH_ENABLE_IPV6",
    ]

    /// The App Mesh proxy route manager's variables, with its defaults, so weir replaces it as is.
    /// Returns nil when no `APPMESH_` capture variable is set.
    public static func fromAppMeshEnvironment(_ env: [String: String]) -> (CaptureSpecInput, [CaptureSpecProblem])? {
        guard appMeshVariables.contains(where: { env[$0] != nil }) else { return nil }
        var input = CaptureSpecInput()
        var problems: [CaptureSpecProblem] = []
        func get(_ n: String) -> String? { env[n].map { $0.trimmingSpaces } }
        input.add(
            .inboundPort, get("APPMESH_ENVOY_INGRESS_PORT") ?? "15000",
            from: env["APPMESH_ENVOY_INGRESS_PORT"] == nil
                ? "APPMESH_ENVOY_INGRESS_PORT (default)" : "APPMESH_ENVOY_INGRESS_PORT")
        input.add(
            .outboundPort, get("APPMESH_ENVOY_EGRESS_PORT") ?? "15001",
            from: env["APPMESH_ENVOY_EGRESS_PORT"] == nil
                ? "APPMESH_ENVOY_EGRESS_PORT (default)" : "APPMESH_ENVOY_EGRESS_PORT")
        if let v = get("APPMESH_IGNORE_UID"), !v.isEmpty { input.add(.proxyUID, v, from: "APPMESH_IGNORE_UID") }
        if let v = get("APPMESH_IGNORE_GID"), !v.isEmpty { input.add(.proxyGID, v, from: "APPMESH_IGNORE_GID") }
        // App Mesh captured only the listed application ports; none listed means no inbound capture.
        let appPorts = get("APPMESH_APP_PORTS") ?? ""
        input.add(.inboundPorts, appPorts.isEmpty ? "none" : appPorts, from: "APPMESH_APP_PORTS")
        input.add(
            .outboundExcludeCIDR, get("APPMESH_EGRESS_IGNORED_IP") ?? "169.254.169.254",
            from: env["APPMESH_EGRESS_IGNORED_IP"] == nil
                ? "APPMESH_EGRESS_IGNORED_IP (default)" : "APPMESH_EGRESS_IGNORED_IP")
        input.add(.outboundExcludePort, "22", from: "APPMESH_EGRESS_IGNORED_PORTS (22 is always ignored)")
        if let v = get("APPMESH_EGRESS_IGNORED_PORTS"), !v.isEmpty {
            input.add(.outboundExcludePort, v, from: "APPMESH_EGRESS_IGNORED_PORTS")
        }
        if let v = get("APPMESH_ENABLE_IPV6") {
            switch v.lowercased() {
            case "1", "true", "yes", "on", "": input.add(.ipv6, "true", from: "APPMESH_ENABLE_IPV6")
            case "0", "false", "no", "off": input.add(.ipv6, "false", from: "APPMESH_ENABLE_IPV6")
            default:
                problems.append(
                    .init(
                        option: "APPMESH_ENABLE_IPV6", value: v, problem: "unknown value",
                        fix: "Use 1 (IPv6 on, the default) or 0 (IPv4 only)."))
            }
        }
        return (input, problems)
    }

    /// Flags over `WEIR_*` over `APPMESH_*` over weir's defaults, validated.
    public static func resolve(flags: CaptureSpecInput, environment env: [String: String]) throws(CaptureSpecError)
        -> CaptureSpec
    {
        var problems: [CaptureSpecProblem] = []
        var merged = CaptureSpecInput()
        if let (appMesh, p) = fromAppMeshEnvironment(env) {
            merged = appMesh
            problems += p
        }
        let (weirEnv, p2) = fromWeirEnvironment(env)
        problems += p2
        merged = merged.overlaid(by: weirEnv).overlaid(by: flags)
        let spec: CaptureSpec
        do {
            spec = try merged.validate()
        } catch {
            throw CaptureSpecError(problems: problems + error.problems)
        }
        if !problems.isEmpty { throw CaptureSpecError(problems: problems) }
        return spec
    }

    // MARK: - Validation

    /// Checks every value and builds the spec; collects all problems before failing.
    public func validate() throws(CaptureSpecError) -> CaptureSpec {
        var problems: [CaptureSpecProblem] = []
        var spec = CaptureSpec()
        func problem(_ s: Sourced, _ what: String, _ fix: String) {
            problems.append(.init(option: s.origin, value: s.value, problem: what, fix: fix))
        }
        func scalar(_ k: Key) -> Sourced? { values[k]?.last }
        func list(_ k: Key) -> [Sourced] { values[k] ?? [] }

        func port(_ k: Key) -> UInt16? {
            guard let s = scalar(k) else { return nil }
            guard let r = PortRange.parse(s.value), r.isSinglePort else {
                problem(s, "not a port number", "Give one port from 1 to 65535, for example 15001.")
                return nil
            }
            return r.first
        }
        func ranges(_ k: Key) -> [PortRange] {
            var out: [PortRange] = []
            for s in list(k) {
                if let r = PortRange.parse(s.value) {
                    if !out.contains(r) { out.append(r) }
                } else {
                    problem(s, "not a port or port range", "Give ports from 1 to 65535, or a range such as 8000-8080.")
                }
            }
            return out
        }
        func ids(_ k: Key, _ what: String) -> [UInt32] {
            var out: [UInt32] = []
            for s in list(k) {
                if s.value.allSatisfy({ $0.isASCII && $0.isNumber }), let v = UInt32(s.value), v != UInt32.max {
                    if !out.contains(v) { out.append(v) }
                } else {
                    problem(
                        s, "not a numeric \(what)",
                        "Give the number (for example 1337), not a name: the rules match numbers.")
                }
            }
            return out
        }
        func mark(_ k: Key) -> UInt32? {
            guard let s = scalar(k) else { return nil }
            let v = s.value.lowercased()
            let parsed = v.hasPrefix("0x") ? UInt32(v.dropFirst(2), radix: 16) : UInt32(v)
            guard let m = parsed, m != 0 else {
                problem(
                    s, "not a non-zero 32-bit mark",
                    "Give a mark such as 0x539 or 1337 (0 would match every unmarked packet).")
                return nil
            }
            return m
        }
        func bool(_ k: Key) -> Bool? {
            guard let s = scalar(k) else { return nil }
            switch s.value.lowercased() {
            case "1", "true", "yes", "on": return true
            case "0", "false", "no", "off": return false
            default:
                problem(s, "not a boolean", "Use true or false.")
                return nil
            }
        }
        func cidrs(_ k: Key) -> [CIDR] {
            var out: [CIDR] = []
            for s in list(k) {
                switch CIDR.parse(s.value) {
                case .success(let c): if !out.contains(c) { out.append(c) }
                case .failure(.malformed):
                    problem(s, "not a CIDR", "Write an IPv4 or IPv6 network such as 10.0.0.0/8 or fd00::/8.")
                case .failure(.prefixTooLong(let max)):
                    problem(
                        s, "prefix longer than \(max) bits",
                        "Use a prefix length from 0 to \(max) for this address family.")
                case .failure(.hostBitsSet(let network)):
                    problem(s, "host bits are set", "Did you mean \(network)?")
                case .failure(.mixedFamily):
                    problem(
                        s, "IPv4-mapped IPv6 network mixes address families",
                        "Write the IPv4 network itself, for example 10.0.0.0/8.")
                }
            }
            return out
        }

        if let p = port(.outboundPort) { spec.outboundPort = p }
        if let p = port(.inboundPort) { spec.inboundPort = p }
        if let p = port(.dnsPort) { spec.dnsPort = p }
        spec.proxyUIDs = ids(.proxyUID, "user id")
        spec.proxyGIDs = ids(.proxyGID, "group id")
        if let m = mark(.bypassMark) { spec.bypassMark = m }
        if let m = mark(.tproxyMark) { spec.tproxyMark = m }
        if let s = scalar(.tproxyTable) {
            if let t = UInt32(s.value), t >= 1, ![253, 254, 255].contains(t) {
                spec.tproxyTable = t
            } else {
                problem(
                    s, "not a usable routing table",
                    "Give a table number from 1 to 4294967295 other than 253 (default), 254 (main) and 255 (local).")
            }
        }
        if let s = scalar(.mode) {
            if let m = CaptureMode(rawValue: s.value.lowercased()) {
                spec.mode = m
            } else {
                problem(s, "unknown mode", "Use redirect (nat REDIRECT, the default) or tproxy.")
            }
        }
        if let b = bool(.ipv6) { spec.ipv6 = b }
        if let b = bool(.captureOwnAddress) { spec.captureOwnAddress = b }
        if let s = scalar(.inboundPorts) {
            switch s.value.lowercased() {
            case "*", "all": spec.inboundPorts = .all
            case "", "none": spec.inboundPorts = .none
            default:
                var rs: [PortRange] = []
                for item in s.value.split(separator: ",") {
                    let t = item.trimmingSpaces
                    if let r = PortRange.parse(t) {
                        if !rs.contains(r) { rs.append(r) }
                    } else {
                        problem(
                            Sourced(t, from: s.origin), "not a port or port range",
                            "List ports such as 8080,9000-9100, or * for all, or none.")
                    }
                }
                spec.inboundPorts = .only(rs)
            }
        }
        spec.inboundExcludePorts = ranges(.inboundExcludePort)
        spec.outboundExcludePorts = ranges(.outboundExcludePort)
        spec.outboundIncludePorts = ranges(.outboundIncludePort)
        spec.inboundExcludeSources = cidrs(.inboundExcludeSource)
        spec.outboundIncludeCIDRs = cidrs(.outboundIncludeCIDR)
        spec.outboundExcludeCIDRs = cidrs(.outboundExcludeCIDR)
        for s in list(.proxyPort) {
            if let r = PortRange.parse(s.value), r.isSinglePort {
                if !spec.proxyPorts.contains(r.first) { spec.proxyPorts.append(r.first) }
            } else {
                problem(s, "not a port number", "Give one port from 1 to 65535 per --proxy-port.")
            }
        }

        // Cross-field rules: only meaningful when the single values were valid.
        guard problems.isEmpty else { throw CaptureSpecError(problems: problems) }
        if spec.inboundPort == spec.outboundPort {
            problem(
                scalar(.inboundPort) ?? scalar(.outboundPort)
                    ?? Sourced("\(spec.inboundPort)", from: Key.inboundPort.flag),
                "inbound capture port equals the outbound capture port",
                "Give the proxy two different listeners, for example --outbound-port 15001 --inbound-port 15006.")
        }
        if let d = spec.dnsPort, d == spec.inboundPort || d == spec.outboundPort {
            problem(
                scalar(.dnsPort)!, "DNS port equals a capture port",
                "Give the DNS proxy its own port, for example 15053.")
        }
        if spec.bypassMark == spec.tproxyMark {
            problem(
                scalar(.tproxyMark) ?? scalar(.bypassMark)!, "TPROXY mark equals the bypass mark",
                "Diverted inbound packets would be taken for the proxy's own traffic; give --tproxy-mark another value."
            )
        }
        if !spec.ipv6 {
            for k in [Key.inboundExcludeSource, .outboundIncludeCIDR, .outboundExcludeCIDR] {
                for s in list(k) where (try? CIDR.parse(s.value).get())?.family == .ipv6 {
                    problem(
                        s, "IPv6 network while IPv6 capture is off", "Remove it, or turn IPv6 capture on (--ipv6 true)."
                    )
                }
            }
        }
        for inc in spec.outboundIncludeCIDRs {
            for exc in spec.outboundExcludeCIDRs where exc.contains(inc) {
                problem(
                    list(.outboundIncludeCIDR).first {
                        $0.value.contains(inc.description) || (try? CIDR.parse($0.value).get()) == inc
                    }
                        ?? Sourced(inc.description, from: Key.outboundIncludeCIDR.flag),
                    "included and excluded at once (\(exc) excludes all of it)",
                    "Remove it from one of --outbound-include-cidr and --outbound-exclude-cidr.")
            }
        }
        for inc in spec.outboundIncludePorts {
            for exc in spec.outboundExcludePorts where exc.overlaps(inc) {
                problem(
                    list(.outboundIncludePort).first { PortRange.parse($0.value) == inc }
                        ?? Sourced(inc.description, from: Key.outboundIncludePort.flag),
                    "included and excluded at once (overlaps excluded \(exc))",
                    "Remove the overlap from --outbound-include-port or --outbound-exclude-port.")
            }
            for p in spec.neverCapturedPorts where inc.contains(p) {
                problem(
                    list(.outboundIncludePort).first { PortRange.parse($0.value) == inc }
                        ?? Sourced(inc.description, from: Key.outboundIncludePort.flag),
                    "includes proxy port \(p), which is never captured",
                    "Leave the proxy's own ports out of --outbound-include-port.")
            }
        }
        if case .only(let rs) = spec.inboundPorts {
            for r in rs {
                for exc in spec.inboundExcludePorts where exc.overlaps(r) {
                    problem(
                        scalar(.inboundPorts)!, "port \(r) is both captured and excluded (\(exc))",
                        "Remove it from --inbound-ports or from --inbound-exclude-port.")
                }
                for p in spec.neverCapturedPorts where r.contains(p) {
                    problem(
                        scalar(.inboundPorts)!, "captures proxy port \(p), which is never captured",
                        "Leave the proxy's own ports out of --inbound-ports.")
                }
            }
        }
        guard problems.isEmpty else { throw CaptureSpecError(problems: problems) }
        return spec
    }
}

extension CaptureSpec {
    /// The spec as `key=value` tokens, default values left out; `CaptureSpecInput.decode` reads them back.
    /// Stored in weir's live table so `check` and `clean` can recover the spec from the kernel alone.
    /// The longest token a list is packed into: below RedirectPlan's comment chunk, with room for its prefix.
    static let tokenLength = 90

    public var encodedTokens: [String] {
        let d = CaptureSpec()
        var t: [String] = []
        typealias K = CaptureSpecInput.Key
        func add(_ k: K, _ v: String) { t.append("\(k.rawValue)=\(v)") }
        // A list goes in as few tokens as fit a stored chunk each (`proxy-uid=1000,1001,...`), so that the stored
        // spec of a long list stays short.
        func add(_ k: K, _ values: [String]) {
            var current: [String] = []
            var length = k.rawValue.count + 1
            for v in values {
                if !current.isEmpty && length + 1 + v.count > Self.tokenLength {
                    add(k, current.joined(separator: ","))
                    current = []
                    length = k.rawValue.count + 1
                }
                length += (current.isEmpty ? 0 : 1) + v.count
                current.append(v)
            }
            if !current.isEmpty { add(k, current.joined(separator: ",")) }
        }
        if outboundPort != d.outboundPort { add(.outboundPort, "\(outboundPort)") }
        if inboundPort != d.inboundPort { add(.inboundPort, "\(inboundPort)") }
        add(.proxyUID, proxyUIDs.map { "\($0)" })
        add(.proxyGID, proxyGIDs.map { "\($0)" })
        if bypassMark != d.bypassMark { add(.bypassMark, "0x" + String(bypassMark, radix: 16)) }
        switch inboundPorts {
        case .all: break
        case .none: add(.inboundPorts, "none")
        case .only(let rs): add(.inboundPorts, rs.map(\.description).joined(separator: ","))
        }
        add(.inboundExcludePort, inboundExcludePorts.map(\.description))
        add(.inboundExcludeSource, inboundExcludeSources.map(\.description))
        add(.outboundIncludeCIDR, outboundIncludeCIDRs.map(\.description))
        add(.outboundExcludeCIDR, outboundExcludeCIDRs.map(\.description))
        add(.outboundIncludePort, outboundIncludePorts.map(\.description))
        add(.outboundExcludePort, outboundExcludePorts.map(\.description))
        if mode != d.mode { add(.mode, mode.rawValue) }
        if ipv6 != d.ipv6 { add(.ipv6, "\(ipv6)") }
        if let p = dnsPort { add(.dnsPort, "\(p)") }
        add(.proxyPort, proxyPorts.map { "\($0)" })
        if captureOwnAddress { add(.captureOwnAddress, "true") }
        if tproxyMark != d.tproxyMark { add(.tproxyMark, "0x" + String(tproxyMark, radix: 16)) }
        if tproxyTable != d.tproxyTable { add(.tproxyTable, "\(tproxyTable)") }
        return t
    }
}

extension CaptureSpecInput {
    /// Reads `key=value` tokens written by `CaptureSpec.encodedTokens`.
    public static func decode(tokens: [String], origin: String) throws(CaptureSpecError) -> CaptureSpecInput {
        var input = CaptureSpecInput()
        var problems: [CaptureSpecProblem] = []
        for tok in tokens {
            let kv = tok.split(separator: "=", maxSplits: 1)
            guard kv.count == 2, let key = Key(rawValue: String(kv[0])) else {
                problems.append(
                    .init(
                        option: origin, value: tok, problem: "unknown stored spec token",
                        fix: "Re-run weir init with this weir version, or pass the spec as flags."))
                continue
            }
            input.add(key, String(kv[1]), from: "\(origin) \(key.rawValue)")
        }
        if !problems.isEmpty { throw CaptureSpecError(problems: problems) }
        return input
    }
}
