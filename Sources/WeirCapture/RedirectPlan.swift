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
    /// `ip daddr @set`, `tcp dport @set`, `meta skuid @set`: one lookup in a set of the plan.
    case member(SetField, set: String)
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
        self.matches = matches
        self.statements = statements
        self.verdict = verdict
        self.comment = comment
    }

    /// The only address family this rule can match, if its matches pin one.
    public var family: IPFamily? {
        for m in matches {
            switch m {
            case .destination(let c), .source(let c): return c.family
            case .member(let field, _): if let f = field.family { return f }
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
    /// The named sets the rules look long lists up in.
    public let sets: [PlanSet]
    public let policyRoute: PolicyRoute?

    /// A list this long or longer becomes a set: one rule and one lookup, however long the list.
    public static let setThreshold = 8

    /// The set named `name`.
    public func set(named name: String) -> PlanSet? { sets.first { $0.name == name } }

    public var familyName: String { tableFamily == nil ? "inet" : "ip" }

    public init(spec: CaptureSpec) {
        self.spec = spec
        tableFamily = spec.ipv6 ? nil : .ipv4
        var sets: [PlanSet] = []
        var chains = [
            PlanChain(
                name: "output", base: .init(type: .nat, hook: .output, priority: Self.natPriority),
                rules: Self.outboundRules(spec, sets: &sets), iptablesName: "WEIR_OUTPUT", iptablesTable: "nat")
        ]
        let inbound = Self.inboundRules(spec, sets: &sets)
        if !inbound.isEmpty {
            switch spec.mode {
            case .redirect:
                chains.append(
                    PlanChain(
                        name: "prerouting", base: .init(type: .nat, hook: .prerouting, priority: Self.natPriority),
                        rules: inbound, iptablesName: "WEIR_PREROUTING", iptablesTable: "nat"))
            case .tproxy:
                chains.append(
                    PlanChain(
                        name: "divert", base: .init(type: .filter, hook: .prerouting, priority: Self.manglePriority),
                        rules: inbound, iptablesName: "WEIR_TPROXY", iptablesTable: "mangle"))
            }
        }
        chains.append(
            PlanChain(
                name: Self.specChainName, base: nil, rules: Self.specRules(spec),
                iptablesName: "WEIR_SPEC", iptablesTable: "nat"))
        self.chains = chains
        self.sets = sets
        policyRoute =
            spec.mode == .tproxy && !inbound.isEmpty
            ? PolicyRoute(mark: spec.tproxyMark, table: spec.tproxyTable, priority: 32000, families: spec.families)
            : nil
    }

    private static func c(_ s: String) -> String { commentPrefix + s }

    /// One match per element of a short list, or one set lookup per family of a long one; with the words
    /// that name it in a rule's comment.
    static func networks(
        _ list: [CIDR], set prefix: String, field: (IPFamily) -> SetField, single: (CIDR) -> Match,
        sets: inout [PlanSet]
    ) -> [(match: Match, what: String)] {
        guard list.count >= setThreshold else { return list.map { (single($0), "\($0)") } }
        return IPFamily.allCases.compactMap { f in
            let members = Array(Set(list.filter { $0.family == f })).sorted()
            guard !members.isEmpty else { return nil }
            let name = "\(prefix)_\(f == .ipv4 ? "v4" : "v6")"
            sets.append(PlanSet(name: name, field: field(f), elements: .networks(members)))
            return (.member(field(f), set: name), "\(f.rawValue) networks (set \(name))")
        }
    }

    static func ports(_ list: [PortRange], set name: String, sets: inout [PlanSet]) -> [(match: Match, what: String)] {
        guard list.count >= setThreshold else { return list.map { (.destinationPort(.tcp, $0), "port \($0)") } }
        sets.append(PlanSet(name: name, field: .destinationPort(.tcp), elements: .ports(Array(Set(list)).sorted())))
        return [(.member(.destinationPort(.tcp), set: name), "ports (set \(name))")]
    }

    static func ids(
        _ list: [UInt32], set name: String, field: SetField, noun: String, single: (UInt32) -> Match,
        sets: inout [PlanSet]
    ) -> [(match: Match, what: String)] {
        guard list.count >= setThreshold else { return list.map { (single($0), "\(noun) \($0)") } }
        sets.append(PlanSet(name: name, field: field, elements: .ids(Array(Set(list)).sorted())))
        return [(.member(field, set: name), "\(noun)s (set \(name))")]
    }

    static func outboundRules(_ s: CaptureSpec, sets: inout [PlanSet]) -> [PlanRule] {
        var r: [PlanRule] = []
        r.append(
            PlanRule(
                [.mark(value: s.bypassMark, mask: s.bypassMark)], verdict: .return,
                comment: c("out: never capture packets with bypass mark 0x\(String(s.bypassMark, radix: 16))")))
        for (m, what) in ids(
            s.proxyUIDs, set: "proxy_uids", field: .socketUID, noun: "uid", single: { .socketUID($0) }, sets: &sets)
        {
            r.append(PlanRule([m], verdict: .return, comment: c("out: never capture proxy \(what)")))
        }
        for (m, what) in ids(
            s.proxyGIDs, set: "proxy_gids", field: .socketGID, noun: "gid", single: { .socketGID($0) }, sets: &sets)
        {
            r.append(PlanRule([m], verdict: .return, comment: c("out: never capture proxy \(what)")))
        }
        if let dns = s.dnsPort {
            for p in [TransportProtocol.udp, .tcp] {
                r.append(
                    PlanRule(
                        [.l4proto(p, negated: false), .destinationPort(p, PortRange(53))], [.redirect(port: dns)],
                        comment: c("out: DNS over \(p.rawValue) to port \(dns)")))
            }
        }
        r.append(PlanRule([.l4proto(.tcp, negated: true)], verdict: .return, comment: c("out: only tcp is captured")))
        for f in s.families {
            let lo =
                f == .ipv4
                ? CIDR(family: .ipv4, address: [127, 0, 0, 0], prefixLength: 8)
                : CIDR(family: .ipv6, address: Array(repeating: 0, count: 15) + [1], prefixLength: 128)
            r.append(PlanRule([.destination(lo)], verdict: .return, comment: c("out: never capture loopback \(lo)")))
        }
        if !s.captureOwnAddress {
            r.append(
                PlanRule([.outputInterface("lo")], verdict: .return, comment: c("out: never capture traffic over lo")))
        }
        for p in s.neverCapturedPorts {
            r.append(
                PlanRule(
                    [.l4proto(.tcp, negated: false), .destinationPort(.tcp, PortRange(p))], verdict: .return,
                    comment: c("out: never capture proxy port \(p)")))
        }
        for (m, what) in ports(s.outboundExcludePorts, set: "out_exclude_ports", sets: &sets) {
            r.append(
                PlanRule([.l4proto(.tcp, negated: false), m], verdict: .return, comment: c("out: exclude \(what)")))
        }
        let excluded = networks(
            s.outboundExcludeCIDRs, set: "out_exclude", field: { .destination($0) }, single: { .destination($0) },
            sets: &sets)
        for (m, what) in excluded {
            r.append(PlanRule([m], verdict: .return, comment: c("out: exclude \(what)")))
        }
        let included = networks(
            s.outboundIncludeCIDRs, set: "out_include", field: { .destination($0) }, single: { .destination($0) },
            sets: &sets)
        let includedPorts = ports(s.outboundIncludePorts, set: "out_include_ports", sets: &sets)
        let cidrs: [(match: Match, what: String)?] = included.isEmpty ? [nil] : included
        let portMatches: [(match: Match, what: String)?] = includedPorts.isEmpty ? [nil] : includedPorts
        for n in cidrs {
            for p in portMatches {
                var m: [Match] = [.l4proto(.tcp, negated: false)]
                var what = "out: capture"
                if let n {
                    m.append(n.match)
                    what += " \(n.what)"
                }
                if let p {
                    m.append(p.match)
                    what += " \(p.what)"
                }
                if n == nil && p == nil { what += " all tcp" }
                r.append(
                    PlanRule(m, [.redirect(port: s.outboundPort)], comment: c(what + " to port \(s.outboundPort)")))
            }
        }
        return r
    }

    static func inboundRules(_ s: CaptureSpec, sets: inout [PlanSet]) -> [PlanRule] {
        if case .none = s.inboundPorts { return [] }
        var r: [PlanRule] = []
        r.append(PlanRule([.l4proto(.tcp, negated: true)], verdict: .return, comment: c("in: only tcp is captured")))
        r.append(PlanRule([.inputInterface("lo")], verdict: .return, comment: c("in: never capture traffic from lo")))
        for (m, what) in networks(
            s.inboundExcludeSources, set: "in_exclude", field: { .source($0) }, single: { .source($0) }, sets: &sets)
        {
            r.append(PlanRule([m], verdict: .return, comment: c("in: exclude source \(what)")))
        }
        for p in s.neverCapturedPorts {
            r.append(
                PlanRule(
                    [.l4proto(.tcp, negated: false), .destinationPort(.tcp, PortRange(p))], verdict: .return,
                    comment: c("in: never capture proxy port \(p)")))
        }
        for (m, what) in ports(s.inboundExcludePorts, set: "in_exclude_ports", sets: &sets) {
            r.append(
                PlanRule([.l4proto(.tcp, negated: false), m], verdict: .return, comment: c("in: exclude \(what)")))
        }
        var portMatches: [(match: Match, what: String)?] = [nil]
        if case .only(let rs) = s.inboundPorts { portMatches = ports(rs, set: "in_ports", sets: &sets) }
        switch s.mode {
        case .redirect:
            for p in portMatches {
                var m: [Match] = [.l4proto(.tcp, negated: false)]
                if let p { m.append(p.match) }
                r.append(
                    PlanRule(
                        m, [.redirect(port: s.inboundPort)],
                        comment: c("in: capture \(p?.what ?? "all tcp") to port \(s.inboundPort)")))
            }
        case .tproxy:
            r.append(
                PlanRule(
                    [.l4proto(.tcp, negated: false), .transparentSocket], [.setMark(s.tproxyMark)], verdict: .accept,
                    comment: c("in: packets of connections the proxy already holds")))
            for p in portMatches {
                var m: [Match] = [.l4proto(.tcp, negated: false)]
                if let p { m.append(p.match) }
                r.append(
                    PlanRule(
                        m, [.tproxy(port: s.inboundPort), .setMark(s.tproxyMark)], verdict: .accept,
                        comment: c("in: tproxy \(p?.what ?? "all tcp") to port \(s.inboundPort)")))
            }
        }
        return r
    }

    /// The spec, in comment-sized chunks: `weir-spec 1/2: key=value key=value`. The chunks are slices of one text
    /// (a long token may go on in the next chunk), so that reading them back is concatenating them.
    static func specRules(_ s: CaptureSpec) -> [PlanRule] {
        // Whole tokens per chunk; only a token longer than a chunk is cut, and goes on in the next.
        var chunks: [String] = []
        var current = ""
        for token in s.encodedTokens {
            var piece = " " + token
            if !current.isEmpty && current.utf8.count + piece.utf8.count > specChunkLength {
                chunks.append(current)
                current = ""
            }
            while piece.utf8.count > specChunkLength {
                let bytes = Array(piece.utf8)
                chunks.append(String(decoding: bytes[0..<specChunkLength], as: UTF8.self))
                piece = String(decoding: bytes[specChunkLength...], as: UTF8.self)
            }
            current += piece
        }
        chunks.append(current)
        return chunks.enumerated().map { i, text in
            PlanRule([], verdict: .return, comment: "\(specCommentPrefix)\(i + 1)/\(chunks.count):" + text)
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
            throw CaptureSpecError(problems: [
                .init(
                    option: "table \(tableName) chain \(specChainName)", value: "\(parts.count) of \(total ?? 0) parts",
                    problem: "the stored spec is missing or incomplete",
                    fix: "Pass the spec as flags, or re-run weir init.")
            ])
        }
        let tokens = (1...total).map { parts[$0]! }.joined().split(separator: " ").map(String.init)
        return try CaptureSpecInput.decode(tokens: tokens, origin: "stored spec").validate()
    }
}
