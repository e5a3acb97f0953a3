/// Renders a plan as an `nft -f` script that replaces weir's table in one transaction.
public enum NftRendering {
    public static func render(_ plan: RedirectPlan) -> String {
        let t = "\(plan.familyName) \(RedirectPlan.tableName)"
        var out = "# weir: replaces table \(t) in one transaction (nft -f)\n"
        out += "table \(t)\ndelete table \(t)\n"
        out += "table \(t) {\n\tcomment \(quote(RedirectPlan.tableComment))\n"
        for set in plan.sets {
            out += "\n\tset \(set.name) {\n\t\ttype \(set.keyType.rawValue)\n"
            if set.isInterval { out += "\t\tflags interval\n" }
            out += "\t\telements = { " + set.intervals.map(set.text(of:)).joined(separator: ", ") + " }\n\t}\n"
        }
        for chain in plan.chains {
            out += "\n\tchain \(chain.name) {\n"
            if let b = chain.base {
                out += "\t\ttype \(b.type.rawValue) hook \(b.hook.rawValue) priority \(b.priority); policy accept;\n"
            }
            for r in chain.rules { out += "\t\t" + rule(r) + "\n" }
            out += "\t}\n"
        }
        out += "}\n"
        if let pr = plan.policyRoute {
            out += "# policy routing (rtnetlink, not nft):\n"
            for f in pr.families {
                let v = f == .ipv4 ? "-4" : "-6"
                out +=
                    "#   ip \(v) rule add fwmark 0x\(String(pr.mark, radix: 16)) lookup \(pr.table) priority \(pr.priority) protocol \(RedirectPlan.routeProtocol)\n"
                out +=
                    "#   ip \(v) route add local \(f == .ipv4 ? "0.0.0.0/0" : "::/0") dev lo table \(pr.table) protocol \(RedirectPlan.routeProtocol)\n"
            }
        }
        return out
    }

    /// One rule in nft syntax, without the chain.
    public static func rule(_ r: PlanRule) -> String {
        var parts: [String] = []
        var i = 0
        while i < r.matches.count {
            let m = r.matches[i]
            // `tcp dport 22` implies `meta l4proto tcp`, as nft itself writes it.
            if case .l4proto(let p, false) = m, i + 1 < r.matches.count, r.matches[i + 1].portProtocol == p {
                i += 1
                continue
            }
            parts.append(match(m))
            i += 1
        }
        parts += r.statements.map(statement)
        if let v = r.verdict { parts.append(v.rawValue) }
        parts.append("comment " + quote(r.comment))
        return parts.joined(separator: " ")
    }

    static func match(_ m: Match) -> String {
        switch m {
        case .l4proto(let p, let neg): return "meta l4proto \(neg ? "!= " : "")\(p.rawValue)"
        case .mark(let v, let mask): return "meta mark & \(hex(mask)) == \(hex(v))"
        case .socketUID(let u): return "meta skuid \(u)"
        case .socketGID(let g): return "meta skgid \(g)"
        case .outputInterface(let n): return "oifname \(quote(n))"
        case .inputInterface(let n): return "iifname \(quote(n))"
        case .destination(let c): return "\(c.family == .ipv4 ? "ip" : "ip6") daddr \(c)"
        case .source(let c): return "\(c.family == .ipv4 ? "ip" : "ip6") saddr \(c)"
        case .destinationPort(let p, let r): return "\(p.rawValue) dport \(r)"
        case .transparentSocket: return "socket transparent 1"
        case .member(let field, let set): return "\(fieldName(field)) @\(set)"
        }
    }

    /// The nft name of a field a set is looked up with.
    static func fieldName(_ field: SetField) -> String {
        switch field {
        case .destination(let f): return "\(f == .ipv4 ? "ip" : "ip6") daddr"
        case .source(let f): return "\(f == .ipv4 ? "ip" : "ip6") saddr"
        case .destinationPort(let p): return "\(p.rawValue) dport"
        case .socketUID: return "meta skuid"
        case .socketGID: return "meta skgid"
        }
    }

    static func statement(_ s: Statement) -> String {
        switch s {
        case .redirect(let p): return "redirect to :\(p)"
        case .tproxy(let p): return "tproxy to :\(p)"
        case .setMark(let m): return "meta mark set \(hex(m))"
        }
    }

    static func hex(_ v: UInt32) -> String {
        let h = String(v, radix: 16)
        return "0x" + String(repeating: "0", count: max(0, 8 - h.count)) + h
    }

    static func quote(_ s: String) -> String { "\"" + s.replacing("\"", with: "'") + "\"" }
}

extension Match {
    /// The protocol of a destination-port match (a port or a set of ports).
    var portProtocol: TransportProtocol? {
        switch self {
        case .destinationPort(let p, _), .member(.destinationPort(let p), _): return p
        default: return nil
        }
    }
}

/// Renders a plan as iptables-restore / ip6tables-restore input for `--noflush`, into weir's own chains.
public enum IptablesRendering {
    /// The comment on the jump from a built-in chain into weir's chain.
    public static let jumpComment = "weir: capture"

    /// One family's restore input. `jumps` says which built-in chain jumps to add (the backend leaves out those already present).
    public static func render(_ plan: RedirectPlan, family: IPFamily, jumps: Set<String>? = nil) -> String {
        var byTable: [(String, [PlanChain])] = []
        for chain in plan.chains {
            if let i = byTable.firstIndex(where: { $0.0 == chain.iptablesTable }) {
                byTable[i].1.append(chain)
            } else {
                byTable.append((chain.iptablesTable, [chain]))
            }
        }
        var out = ""
        for (table, chains) in byTable {
            out += "*\(table)\n"
            for c in chains { out += ":\(c.iptablesName) - [0:0]\n" }
            for c in chains {
                for r in c.rules where r.family == nil || r.family == family {
                    for line in rules(r, family: family, sets: plan.sets) { out += "-A \(c.iptablesName) \(line)\n" }
                }
            }
            for c in chains {
                guard let b = c.base else { continue }
                let builtin = b.hook.rawValue.uppercased()
                if jumps == nil || jumps!.contains(jumpKey(table: table, chain: c)) {
                    out += "-I \(builtin) 1 -m comment --comment \(saveString(jumpComment)) -j \(c.iptablesName)\n"
                }
            }
            out += "COMMIT\n"
        }
        return out
    }

    /// `table/CHAIN` of a weir chain's jump, as the backend tracks them.
    public static func jumpKey(table: String, chain: PlanChain) -> String { "\(table)/\(chain.iptablesName)" }

    /// The jump line as iptables-save prints it.
    public static func jumpLine(_ c: PlanChain) -> String? {
        guard let b = c.base else { return nil }
        return "-A \(b.hook.rawValue.uppercased()) -m comment --comment \(saveString(jumpComment)) -j \(c.iptablesName)"
    }

    /// How many iptables rules the plan needs in one family: iptables has no sets, so a rule that looks up a set
    /// becomes one rule per element (per pair of elements for the outbound include lists).
    public static func ruleCount(_ plan: RedirectPlan, family: IPFamily) -> Int {
        plan.chains.flatMap(\.rules).filter { $0.family == nil || $0.family == family }.reduce(0) { total, r in
            let targets =
                r.statements.contains { if case .setMark = $0 { return true } else { return false } }
                    && !r.statements.contains { if case .tproxy = $0 { return true } else { return false } } ? 2 : 1
            return total + expanded(r, sets: plan.sets).count * targets
        }
    }

    /// The rule with each set lookup replaced by one element, in every combination.
    static func expanded(_ r: PlanRule, sets: [PlanSet]) -> [PlanRule] {
        var out: [PlanRule] = [PlanRule([], r.statements, verdict: r.verdict, comment: r.comment)]
        for m in r.matches {
            let choices: [Match]
            if case .member(let field, let name) = m, let set = sets.first(where: { $0.name == name }) {
                choices = elementMatches(field, set.elements)
            } else {
                choices = [m]
            }
            out = out.flatMap { partial in
                choices.map { choice in
                    var next = partial
                    next.matches.append(choice)
                    return next
                }
            }
        }
        return out
    }

    static func elementMatches(_ field: SetField, _ elements: SetElements) -> [Match] {
        switch (field, elements) {
        case (.destination, .networks(let n)): return n.map { .destination($0) }
        case (.source, .networks(let n)): return n.map { .source($0) }
        case (.destinationPort(let p), .ports(let ps)): return ps.map { .destinationPort(p, $0) }
        case (.socketUID, .ids(let ids)): return ids.map { .socketUID($0) }
        case (.socketGID, .ids(let ids)): return ids.map { .socketGID($0) }
        default: return []
        }
    }

    /// The rule in iptables-save's canonical order, each set lookup expanded into one rule per element.
    public static func rules(_ r: PlanRule, family: IPFamily, sets: [PlanSet]) -> [String] {
        expanded(r, sets: sets).flatMap { rules($0, family: family) }
    }

    /// The rule in iptables-save's canonical order: addresses, interfaces, protocol, matches, comment, target.
    /// One plan rule may need two iptables rules (a non-terminal target, then the verdict).
    static func rules(_ r: PlanRule, family: IPFamily) -> [String] {
        var head: [String] = []
        var src: String?
        var dst: String?
        var iif: String?
        var oif: String?
        var proto: String?
        var ms: [String] = []
        for m in r.matches {
            switch m {
            case .l4proto(let p, let neg): proto = (neg ? "! " : "") + "-p \(p.rawValue)"
            case .mark(let v, let mask): ms.append("-m mark --mark \(h(v))/\(h(mask))")
            case .socketUID(let u): ms.append("-m owner --uid-owner \(u)")
            case .socketGID(let g): ms.append("-m owner --gid-owner \(g)")
            case .outputInterface(let n): oif = "-o \(n)"
            case .inputInterface(let n): iif = "-i \(n)"
            case .destination(let c): dst = "-d \(c)"
            case .source(let c): src = "-s \(c)"
            case .destinationPort(let p, let range):
                proto = "-p \(p.rawValue)"
                ms.append(
                    "-m \(p.rawValue) --dport "
                        + (range.isSinglePort ? "\(range.first)" : "\(range.first):\(range.last)"))
            case .transparentSocket: ms.append("-m socket --transparent")
            case .member: break  // expanded by the caller
            }
        }
        head = [src, dst, iif, oif, proto].compactMap { $0 } + ms
        head.append("-m comment --comment \(saveString(r.comment))")
        let any = family == .ipv4 ? "0.0.0.0" : "::"
        var targets: [String] = []
        if let tp = r.statements.compactMap({ (s: Statement) -> UInt16? in
            if case .tproxy(let p) = s { return p } else { return nil }
        }).first {
            let mark: UInt32 =
                r.statements.compactMap { (s: Statement) -> UInt32? in
                    if case .setMark(let m) = s { return m } else { return nil }
                }.first ?? 0
            targets.append("-j TPROXY --on-port \(tp) --on-ip \(any) --tproxy-mark \(h(mark))/0xffffffff")
        } else {
            for s in r.statements {
                switch s {
                case .redirect(let p): targets.append("-j REDIRECT --to-ports \(p)")
                case .setMark(let m): targets.append("-j MARK --set-xmark \(h(m))/0xffffffff")
                case .tproxy: break
                }
            }
            if let v = r.verdict { targets.append(v == .accept ? "-j ACCEPT" : "-j RETURN") }
        }
        if targets.isEmpty { targets = ["-j RETURN"] }
        return targets.map { (head + [$0]).joined(separator: " ") }
    }

    static func h(_ v: UInt32) -> String { "0x" + String(v, radix: 16) }

    /// Quotes as iptables-save does: bare when only [A-Za-z0-9_-], otherwise in double quotes with `"` and `\` escaped.
    public static func saveString(_ s: String) -> String {
        let bare =
            !s.isEmpty
            && s.unicodeScalars.allSatisfy {
                ("a"..."z").contains($0) || ("A"..."Z").contains($0) || ("0"..."9").contains($0) || $0 == "_"
                    || $0 == "-"
            }
        if bare { return s }
        return "\"" + s.replacing("\\", with: "\\\\").replacing("\"", with: "\\\"") + "\""
    }
}
