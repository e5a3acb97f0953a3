/// Transport protocols weir matches.
public enum TransportProtocol: String, Sendable, Hashable {
    case tcp, udp
    public var number: UInt8 { self == .tcp ? 6 : 17 }
}

/// One condition of a rule. All matches of a rule must hold.
public enum Match: Sendable, Hashable {
    /// `meta l4proto tcp` / `meta l4proto != tcp`.
    case l4proto(TransportProtocol, negated: Bool)
    /// `meta mark & mask == value`.
    case mark(value: UInt32, mask: UInt32)
    /// `meta skuid N` (locally generated packets only).
    case socketUID(UInt32)
    /// `meta skgid N`.
    case socketGID(UInt32)
    case outputInterface(String)
    case inputInterface(String)
    /// `ip daddr` / `ip6 daddr`: the family comes from the CIDR.
    case destination(CIDR)
    case source(CIDR)
    /// `tcp dport` / `udp dport`, a port or a range.
    case destinationPort(TransportProtocol, PortRange)
    /// `socket transparent 1`: the packet belongs to a transparent socket that already exists.
    case transparentSocket
}

/// What a rule does when it matches, in order, before its verdict.
public enum Statement: Sendable, Hashable {
    /// nat REDIRECT to a local port.
    case redirect(port: UInt16)
    /// TPROXY to a local port on any local address.
    case tproxy(port: UInt16)
    /// `meta mark set`.
    case setMark(UInt32)
}

public enum Verdict: String, Sendable, Hashable {
    case accept, `return`
}

/// A rule: its comment names it uniquely inside its chain, so `check` can say which rule is missing or altered.
public struct PlanRule: Sendable, Hashable {
    public var matches: [Match]
    public var statements: [Statement]
    public var verdict: Verdict?
    public var comment: String

    public init(_ matches: [Match], _ statements: [Statement] = [], verdict: Verdict? = nil, comment: String) {
        self.matches = matches; self.statements = statements; self.verdict = verdict; self.comment = comment
    }

    /// The only address family this rule can match, if its matches pin one.
    public var family: IPFamily? {
        for m in matches {
            switch m {
            case .destination(let c), .source(let c): return c.family
            default: continue
            }
        }
        return nil
    }
}

public enum ChainType: String, Sendable, Hashable { case nat, filter }
public enum Hook: String, Sendable, Hashable { case prerouting, output }

/// A chain: a base chain attached to a netfilter hook, or a regular chain (only data, never jumped to).
public struct PlanChain: Sendable, Hashable {
    public struct Base: Sendable, Hashable {
        public var type: ChainType
        public var hook: Hook
        public var priority: Int32
    }
    public var name: String
    public var base: Base?
    public var rules: [PlanRule]
    /// The iptables chain that plays this chain's role, and the built-in chain and table it hangs from.
    public var iptablesName: String
    public var iptablesTable: String
}

/// The fwmark policy route TPROXY needs: packets carrying `mark` are delivered locally through `table`.
public struct PolicyRoute: Sendable, Hashable {
    public var mark: UInt32
    public var table: UInt32
    public var priority: UInt32
    public var families: [IPFamily]
}

/// Everything weir installs for one spec: one nftables table, and the policy routes of TPROXY mode.
public struct RedirectPlan: Sendable, Hashable {
    public static let tableName = "weir"
    public static let tableComment = "managed by weir; edit with weir init / weir clean"
    /// The regular chain whose rule comments carry the encoded spec.
    public static let specChainName = "spec"
    /// Comment prefix of every rule weir creates.
    public static let commentPrefix = "weir: "
    public static let specCommentPrefix = "weir-spec "
    /// Longest comment nft accepts is 128 bytes; chunks stay below it with their prefix.
    static let specChunkLength = 96
    /// rtnetlink protocol number weir puts on its routes and rules (RTPROT values above 4 are free for daemons).
    public static let routeProtocol: UInt8 = 0x57
    /// Priorities: just before the usual dstnat (-100) and mangle (-150) chains, so iptables' own nat chains run after weir.
    public static let natPriority: Int32 = -110
    public static let manglePriority: Int32 = -160

    public let spec: CaptureSpec
    /// `inet` for dual stack, `ip` when IPv6 is off.
    public let tableFamily: IPFamily?
    public let chains: [PlanChain]
    public let policyRoute: PolicyRoute?

    public var familyName: String { tableFamily == nil ? "inet" : "ip" }

    public init(spec: CaptureSpec) {
        self.spec = spec
        tableFamily = spec.ipv6 ? nil : .ipv4
        var chains = [PlanChain(name: "output", base: .init(type: .nat, hook: .output, priority: Self.natPriority),
                                rules: Self.outboundRules(spec), iptablesName: "WEIR_OUTPUT", iptablesTable: "nat")]
        let inbound = Self.inboundRules(spec)
        if !inbound.isEmpty {
            switch spec.mode {
            case .redirect:
                chains.append(PlanChain(name: "prerouting", base: .init(type: .nat, hook: .prerouting, priority: Self.natPriority),
                                        rules: inbound, iptablesName: "WEIR_PREROUTING", iptablesTable: "nat"))
            case .tproxy:
                chains.append(PlanChain(name: "divert", base: .init(type: .filter, hook: .prerouting, priority: Self.manglePriority),
                                        rules: inbound, iptablesName: "WEIR_TPROXY", iptablesTable: "mangle"))
            }
        }
        chains.append(PlanChain(name: Self.specChainName, base: nil, rules: Self.specRules(spec),
                                iptablesName: "WEIR_SPEC", iptablesTable: "nat"))
        self.chains = chains
        policyRoute = spec.mode == .tproxy && !inbound.isEmpty
            ? PolicyRoute(mark: spec.tproxyMark, table: spec.tproxyTable, priority: 32000, families: spec.families) : nil
    }

    private static func c(_ s: String) -> String { commentPrefix + s }

    static func outboundRules(_ s: CaptureSpec) -> [PlanRule] {
        var r: [PlanRule] = []
        r.append(PlanRule([.mark(value: s.bypassMark, mask: s.bypassMark)], verdict: .return,
                          comment: c("out: never capture packets with bypass mark 0x\(String(s.bypassMark, radix: 16))")))
        for u in s.proxyUIDs { r.append(PlanRule([.socketUID(u)], verdict: .return, comment: c("out: never capture proxy uid \(u)"))) }
        for g in s.proxyGIDs { r.append(PlanRule([.socketGID(g)], verdict: .return, comment: c("out: never capture proxy gid \(g)"))) }
        if let dns = s.dnsPort {
            for p in [TransportProtocol.udp, .tcp] {
                r.append(PlanRule([.l4proto(p, negated: false), .destinationPort(p, PortRange(53))], [.redirect(port: dns)],
                                  comment: c("out: DNS over \(p.rawValue) to port \(dns)")))
            }
        }
        r.append(PlanRule([.l4proto(.tcp, negated: true)], verdict: .return, comment: c("out: only tcp is captured")))
        for f in s.families {
            let lo = f == .ipv4 ? CIDR(family: .ipv4, address: [127, 0, 0, 0], prefixLength: 8)
                                : CIDR(family: .ipv6, address: Array(repeating: 0, count: 15) + [1], prefixLength: 128)
            r.append(PlanRule([.destination(lo)], verdict: .return, comment: c("out: never capture loopback \(lo)")))
        }
        if !s.captureOwnAddress {
            r.append(PlanRule([.outputInterface("lo")], verdict: .return, comment: c("out: never capture traffic over lo")))
        }
        for p in s.neverCapturedPorts {
            r.append(PlanRule([.l4proto(.tcp, negated: false), .destinationPort(.tcp, PortRange(p))], verdict: .return,
                              comment: c("out: never capture proxy port \(p)")))
        }
        for p in s.outboundExcludePorts {
            r.append(PlanRule([.l4proto(.tcp, negated: false), .destinationPort(.tcp, p)], verdict: .return, comment: c("out: exclude port \(p)")))
        }
        for n in s.outboundExcludeCIDRs {
            r.append(PlanRule([.destination(n)], verdict: .return, comment: c("out: exclude \(n)")))
        }
        let cidrs: [CIDR?] = s.outboundIncludeCIDRs.isEmpty ? [nil] : s.outboundIncludeCIDRs
        let ports: [PortRange?] = s.outboundIncludePorts.isEmpty ? [nil] : s.outboundIncludePorts
        for n in cidrs {
            for p in ports {
                var m: [Match] = [.l4proto(.tcp, negated: false)]
                var what = "out: capture"
                if let n { m.append(.destination(n)); what += " \(n)" }
                if let p { m.append(.destinationPort(.tcp, p)); what += " port \(p)" }
                if n == nil && p == nil { what += " all tcp" }
                r.append(PlanRule(m, [.redirect(port: s.outboundPort)], comment: c(what + " to port \(s.outboundPort)")))
            }
        }
        return r
    }

    static func inboundRules(_ s: CaptureSpec) -> [PlanRule] {
        if case .none = s.inboundPorts { return [] }
        var r: [PlanRule] = []
        r.append(PlanRule([.l4proto(.tcp, negated: true)], verdict: .return, comment: c("in: only tcp is captured")))
        r.append(PlanRule([.inputInterface("lo")], verdict: .return, comment: c("in: never capture traffic from lo")))
        for n in s.inboundExcludeSources {
            r.append(PlanRule([.source(n)], verdict: .return, comment: c("in: exclude source \(n)")))
        }
        for p in s.neverCapturedPorts {
            r.append(PlanRule([.l4proto(.tcp, negated: false), .destinationPort(.tcp, PortRange(p))], verdict: .return,
                              comment: c("in: never capture proxy port \(p)")))
        }
        for p in s.inboundExcludePorts {
            r.append(PlanRule([.l4proto(.tcp, negated: false), .destinationPort(.tcp, p)], verdict: .return, comment: c("in: exclude port \(p)")))
        }
        var ports: [PortRange?] = [nil]
        if case .only(let rs) = s.inboundPorts { ports = rs }
        switch s.mode {
        case .redirect:
            for p in ports {
                var m: [Match] = [.l4proto(.tcp, negated: false)]
                if let p { m.append(.destinationPort(.tcp, p)) }
                r.append(PlanRule(m, [.redirect(port: s.inboundPort)],
                                  comment: c("in: capture \(p.map { "port \($0)" } ?? "all tcp") to port \(s.inboundPort)")))
            }
        case .tproxy:
            r.append(PlanRule([.l4proto(.tcp, negated: false), .transparentSocket], [.setMark(s.tproxyMark)], verdict: .accept,
                              comment: c("in: packets of connections the proxy already holds")))
            for p in ports {
                var m: [Match] = [.l4proto(.tcp, negated: false)]
                if let p { m.append(.destinationPort(.tcp, p)) }
                r.append(PlanRule(m, [.tproxy(port: s.inboundPort), .setMark(s.tproxyMark)], verdict: .accept,
                                  comment: c("in: tproxy \(p.map { "port \($0)" } ?? "all tcp") to port \(s.inboundPort)")))
            }
        }
        return r
    }

    /// The spec, in comment-sized chunks: `weir-spec 1/2: key=value key=value`.
    static func specRules(_ s: CaptureSpec) -> [PlanRule] {
        var chunks: [String] = []
        var current = ""
        for t in s.encodedTokens {
            if !current.isEmpty && current.utf8.count + 1 + t.utf8.count > specChunkLength {
                chunks.append(current); current = ""
            }
            current += current.isEmpty ? t : " " + t
        }
        chunks.append(current)
        return chunks.enumerated().map { i, text in
            PlanRule([], verdict: .return, comment: "\(specCommentPrefix)\(i + 1)/\(chunks.count):" + (text.isEmpty ? "" : " " + text))
        }
    }

    /// Rebuilds the spec from the comments of the spec chain, as read back from a live table.
    public static func recoverSpec(fromComments comments: [String]) throws(CaptureSpecError) -> CaptureSpec {
        var parts: [Int: String] = [:]
        var total: Int?
        for cm in comments where cm.hasPrefix(specCommentPrefix) {
            let rest = cm.dropFirst(specCommentPrefix.count)
            guard let colon = rest.firstIndex(of: ":") else { continue }
            let frac = rest[..<colon].split(separator: "/")
            guard frac.count == 2, let i = Int(frac[0]), let n = Int(frac[1]) else { continue }
            total = n
            parts[i] = String(rest[rest.index(after: colon)...])
        }
        guard let total, parts.count == total else {
            throw CaptureSpecError(problems: [.init(option: "table \(tableName) chain \(specChainName)", value: "\(parts.count) of \(total ?? 0) parts",
                                                    problem: "the stored spec is missing or incomplete",
                                                    fix: "Pass the spec as flags, or re-run weir init.")])
        }
        let tokens = (1...total).flatMap { parts[$0]!.split(separator: " ").map(String.init) }
        return try CaptureSpecInput.decode(tokens: tokens, origin: "stored spec").validate()
    }
}
