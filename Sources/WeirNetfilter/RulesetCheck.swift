import CNetfilter
import WeirCapture
import WeirNetns
import WeirSystem

/// One thing `check` found.
public struct CheckFinding: Sendable, Codable, Hashable, CustomStringConvertible {
    /// What kind of finding this is; the raw value names it in `weir check`'s output.
    public enum Kind: String, Sendable, Codable {
        /// Neither an nftables table weir nor WEIR_ iptables chains are in the namespace.
        case notInstalled = "not-installed"
        /// The spec stored in the live rules' comments cannot be recovered.
        case specUnreadable = "spec-unreadable"
        /// A chain of the plan is missing from weir's nftables table or its iptables table.
        case missingChain = "missing-chain"
        /// weir's nftables table holds a chain the plan does not have.
        case extraChain = "extra-chain"
        /// A chain's type, hook, priority or policy differs from the plan's, or it is base where it should be regular.
        case alteredChain = "altered-chain"
        /// A set of the plan is missing from weir's table.
        case missingSet = "missing-set"
        /// weir's table holds a set the plan does not have.
        case extraSet = "extra-set"
        /// A set's key type or interval flag differs from the plan's, or elements were removed or added.
        case alteredSet = "altered-set"
        /// A rule of the plan (matched by its comment) is missing from its chain.
        case missingRule = "missing-rule"
        /// One of weir's chains holds a rule whose comment the plan does not have.
        case extraRule = "extra-rule"
        /// A rule with weir's comment differs from the plan's rule.
        case alteredRule = "altered-rule"
        /// A chain holds weir's rules unchanged but in another order.
        case reorderedRules = "reordered-rules"
        /// iptables: the jump from a built-in chain to one of weir's chains is missing, so that chain never runs.
        case missingJump = "missing-jump"
        /// Another table's base chain on weir's hook runs first and drops, accepts or rewrites destinations.
        case bypass
        /// iptables-legacy holds nat rules that are not weir's, in x_tables hooks beside nftables.
        case legacyRules = "legacy-rules"
        /// TPROXY's fwmark rule or its local route is missing.
        case missingPolicyRoute = "missing-policy-route"
        /// A probe failed (never produced: failed probes are reported in `CheckReport.probe`).
        case probeFailed = "probe-failed"
    }
    /// What sort of problem or warning this is.
    public let kind: Kind
    /// The finding for a person: which chain, set or rule, and what differs.
    public let detail: String

    /// A finding of `kind`, explained by `detail`.
    public init(kind: Kind, detail: String) {
        self.kind = kind
        self.detail = detail
    }

    /// `KIND: DETAIL`, as `weir check` prints it.
    public var description: String { "\(kind.rawValue): \(detail)" }
}

/// The result of `weir check`.
public struct CheckReport: Sendable, Codable {
    /// A report without findings or probes, naming the namespace, backend and spec checked.
    public init(namespace: String, backend: String, specSource: String, spec: [String]) {
        self.namespace = namespace
        self.backend = backend
        self.specSource = specSource
        self.spec = spec
    }

    /// The namespace checked: its path, or "current network namespace".
    public var namespace: String
    /// The backend holding weir's rules: `nftables`, `iptables-nft`, `iptables-legacy`, or `none`.
    public var backend: String
    /// Where the spec came from: `flags`, or `live table` (recovered from weir's rules).
    public var specSource: String
    /// The spec checked against, as the `key=value` tokens weir stores in its rules; empty when there was none.
    public var spec: [String]
    /// Findings that make the report unhealthy (`weir check` exits 3).
    public var problems: [CheckFinding] = []
    /// Findings worth a look that leave the report healthy.
    public var warnings: [CheckFinding] = []
    /// The end-to-end probes' results, when `--probe` asked for them.
    public var probe: ProbeReport?
    /// Whether there are no problems and no failed probes.
    public var healthy: Bool { problems.isEmpty && (probe?.problems.isEmpty ?? true) }
}

/// weir's iptables chains as one variant's `*-save` shows them: family → table → chain → rule lines (the jumps from
/// built-in chains under `jump:CHAIN`).
public struct IptablesState: Sendable, Hashable {
    /// The iptables variant, nft or legacy, whose save output this is.
    public let variant: IptablesBackend.Mode
    /// Per family: table → chain → `-A` lines; jumps into weir's chains under `jump:BUILTIN` (`jump:OUTPUT`).
    public let chains: [IPFamily: [String: [String: [String]]]]

    /// The chains `variant` holds, as read from its `*-save` output.
    public init(variant: IptablesBackend.Mode, chains: [IPFamily: [String: [String: [String]]]]) {
        self.variant = variant
        self.chains = chains
    }
}

/// Everything `check` decides on, read from one namespace. Built by `CaptureInstaller.observe()` with privileges,
/// or by hand in a test.
public struct CheckInput: Sendable, Hashable {
    /// The namespace, for the report.
    public var namespace: String
    /// The nftables ruleset.
    public var ruleset: LiveRuleset
    /// weir's iptables chains, when weir has no nftables table and an iptables variant holds them.
    public var iptables: IptablesState?
    /// The iptables-legacy nat rules (`-A` lines of `iptables-legacy-save -t nat`), per family.
    public var legacyNatRules: [IPFamily: [String]]
    /// weir's policy-routing rules and routes.
    public var policyRoutes: [PolicyRouteEntry]

    /// What was read; iptables state, legacy nat rules and policy routes default to none.
    public init(
        namespace: String, ruleset: LiveRuleset, iptables: IptablesState? = nil,
        legacyNatRules: [IPFamily: [String]] = [:], policyRoutes: [PolicyRouteEntry] = []
    ) {
        self.namespace = namespace
        self.ruleset = ruleset
        self.iptables = iptables
        self.legacyNatRules = legacyNatRules
        self.policyRoutes = policyRoutes
    }
}

extension CaptureInstaller {
    /// Compares the live rules with the plan (from `spec`, or recovered from the live table), looks for
    /// rules that bypass or fight weir's, and optionally proves a redirect with real connections.
    public func check(spec flagSpec: CaptureSpec?, probe: Bool) throws -> CheckReport {
        let input = try observe()
        var (report, spec) = RulesetCheck.decide(input, spec: flagSpec)
        if probe, let spec {
            report.probe = try namespace.run { CaptureProbe(spec: spec).run() }
        }
        return report
    }

    /// Reads everything `check` decides on.
    public func observe() throws -> CheckInput {
        let namespace = self.namespace
        let backend = self.backend
        return try namespace.run {
            let ruleset = try NftablesBackend().readRuleset()
            var iptables: IptablesState?
            if ruleset.weirTable == nil {
                // No nftables table: look for an iptables install (either variant).
                let candidates: [IptablesBackend.Mode] = {
                    if case .iptables(let m) = backend, m != .auto { return [m] }
                    return CaptureInstaller.iptablesVariantsWithTables()
                }()
                for v in candidates {
                    let b = IptablesBackend(mode: v)
                    let v4 = (try? b.liveChains(family: .ipv4)) ?? [:]
                    if v4.values.contains(where: { !$0.isEmpty }) {
                        iptables = IptablesState(
                            variant: v, chains: [.ipv4: v4, .ipv6: (try? b.liveChains(family: .ipv6)) ?? [:]])
                        break
                    }
                }
            }
            var legacy: [IPFamily: [String]] = [:]
            if IptablesBackend.legacyHasTables() {
                for family in IPFamily.allCases {
                    let tool = family == .ipv4 ? "iptables-legacy-save" : "ip6tables-legacy-save"
                    guard let r = try? Subprocess.run(tool, ["-t", "nat"]), r.status == 0 else { continue }
                    legacy[family] = r.stdout.split(separator: "\n").filter { $0.hasPrefix("-A ") }.map(String.init)
                }
            }
            return CheckInput(
                namespace: namespace.description, ruleset: ruleset, iptables: iptables, legacyNatRules: legacy,
                policyRoutes: (try? PolicyRouting().list()) ?? [])
        }
    }
}

/// `check`'s decisions: a pure function of what was read and the spec.
public enum RulesetCheck {
    /// The report for `input`: the plan of `flagSpec`, or of the spec stored in the live rules, against what is
    /// there. Also returns the spec it checked against (the probe's), if any.
    public static func decide(_ input: CheckInput, spec flagSpec: CaptureSpec?) -> (
        report: CheckReport, spec: CaptureSpec?
    ) {
        let live = input.ruleset
        let weirTable = live.weirTable
        let iptables = weirTable == nil ? input.iptables : nil
        var report = CheckReport(
            namespace: input.namespace,
            backend: weirTable != nil ? "nftables" : iptables.map { "iptables-\($0.variant.rawValue)" } ?? "none",
            specSource: flagSpec != nil ? "flags" : "live table", spec: [])
        // The spec: flags, or what weir stored in the live rules.
        var spec = flagSpec
        if spec == nil {
            var comments: [String] = []
            if let t = weirTable {
                comments = live.rules(of: t, chain: RedirectPlan.specChainName).compactMap(\.comment)
            } else if let v4 = iptables?.chains[.ipv4] {
                comments = (v4["nat"]?["WEIR_SPEC"] ?? []).compactMap(IptablesBackend.comment(ofSavedRule:))
            }
            if weirTable != nil || iptables != nil {
                do {
                    spec = try RedirectPlan.recoverSpec(fromComments: comments)
                } catch {
                    report.problems.append(.init(kind: .specUnreadable, detail: "\(error)"))
                }
            }
        }
        if weirTable == nil && iptables == nil {
            report.problems.append(
                .init(
                    kind: .notInstalled,
                    detail:
                        "weir's rules are not installed in \(input.namespace) (no nftables table weir, no WEIR_ iptables chains). Run weir init."
                ))
        }
        guard let spec else {
            let (bypassProblems, bypassWarnings) = classify(bypasses(live, plan: nil))
            report.problems += bypassProblems
            report.warnings += bypassWarnings
            report.problems += legacyNatRules(input.legacyNatRules)
            return (report, nil)
        }
        report.spec = spec.encodedTokens
        let plan = RedirectPlan(spec: spec)
        if let t = weirTable {
            report.problems += diffNftables(live, table: t, plan: plan)
        } else if let iptables {
            report.problems += diffIptables(iptables, plan: plan)
        }
        let (bypassProblems, bypassWarnings) = classify(
            bypasses(live, plan: plan, iptables: weirTable == nil && iptables != nil))
        report.problems += bypassProblems
        report.warnings += bypassWarnings
        report.problems += legacyNatRules(input.legacyNatRules)
        report.problems += missingPolicyRoutes(plan, input.policyRoutes)
        return (report, spec)
    }

    static func missingPolicyRoutes(_ plan: RedirectPlan, _ entries: [PolicyRouteEntry]) -> [CheckFinding] {
        guard let pr = plan.policyRoute else { return [] }
        var out: [CheckFinding] = []
        for f in pr.families {
            if !entries.contains(where: {
                $0.family == f && $0.kind == .rule && $0.mark == pr.mark && $0.table == pr.table
            }) {
                out.append(
                    .init(
                        kind: .missingPolicyRoute,
                        detail:
                            "\(f.rawValue) rule 'fwmark 0x\(String(pr.mark, radix: 16)) lookup \(pr.table)' is missing: TPROXY'd packets would not reach the proxy"
                    ))
            }
            if !entries.contains(where: { $0.family == f && $0.kind == .route && $0.table == pr.table }) {
                out.append(
                    .init(
                        kind: .missingPolicyRoute,
                        detail: "\(f.rawValue) route 'local default dev lo table \(pr.table)' is missing"))
            }
        }
        return out
    }

    /// The expressions weir's plan would produce, chain by chain.
    static func expectedRules(_ plan: RedirectPlan) -> [String: [(comment: String, expressions: [RuleExpression])]] {
        var out: [String: [(comment: String, expressions: [RuleExpression])]] = [:]
        for c in plan.chains {
            out[c.name] = c.rules.map { r in
                let rule = NftablesObjects.rule(plan, chain: c.name, r)
                defer { nftnl_rule_free(rule) }
                return (r.comment, NftablesObjects.expressions(of: rule))
            }
        }
        return out
    }

    static func diffNftables(_ live: LiveRuleset, table: LiveTable, plan: RedirectPlan) -> [CheckFinding] {
        var out: [CheckFinding] = []
        let liveChains = live.chains.filter { $0.table == table.name && $0.family == table.family }
        let expected = expectedRules(plan)
        for c in plan.chains {
            guard let lc = liveChains.first(where: { $0.name == c.name }) else {
                out.append(
                    .init(kind: .missingChain, detail: "chain \(c.name) is missing from table \(table.family) weir"))
                continue
            }
            if let b = c.base {
                let want = LiveChain.Base(
                    hook: ChainHook(b.hook), priority: b.priority, type: b.type.rawValue, policy: .accept)
                if lc.base != want {
                    let found =
                        lc.base.map { "type \($0.type) hook \($0.hook) priority \($0.priority); policy \($0.policy)" }
                        ?? "a regular chain"
                    out.append(
                        .init(
                            kind: .alteredChain,
                            detail:
                                "chain \(c.name) should be 'type \(b.type.rawValue) hook \(b.hook.rawValue) priority \(b.priority); policy accept' but is '\(found)'"
                        ))
                }
            } else if lc.base != nil {
                out.append(
                    .init(
                        kind: .alteredChain,
                        detail: "chain \(c.name) should be a regular chain but is attached to a hook"))
            }
            let liveRules = live.rules(of: table, chain: c.name)
            out += diffRules(
                chain: c.name, expected: expected[c.name] ?? [],
                live: liveRules.map { ($0.comment ?? "(no comment, handle \($0.handle))", $0.expressions) })
        }
        for lc in liveChains where !plan.chains.contains(where: { $0.name == lc.name }) {
            out.append(.init(kind: .extraChain, detail: "chain \(lc.name) in table weir is not weir's"))
        }
        out += diffSets(live.sets.filter { $0.table == table.name && $0.family == table.family }, plan: plan)
        return out
    }

    /// Missing, extra and altered sets: an altered set names how many elements are missing or foreign, with one of
    /// each.
    static func diffSets(_ live: [LiveSet], plan: RedirectPlan) -> [CheckFinding] {
        var out: [CheckFinding] = []
        for set in plan.sets {
            guard let l = live.first(where: { $0.name == set.name }) else {
                out.append(
                    .init(
                        kind: .missingSet,
                        detail: "set \(set.name) (\(set.keyType.rawValue)) is missing from table weir"))
                continue
            }
            if l.keyLength != set.keyType.length || l.isInterval != set.isInterval {
                out.append(
                    .init(
                        kind: .alteredSet,
                        detail:
                            "set \(set.name) should hold \(set.keyType.rawValue)\(set.isInterval ? " intervals" : "") but holds \(l.keyLength)-byte keys\(l.isInterval ? " in intervals" : "")"
                    ))
                continue
            }
            let expected = set.intervals
            let want = Set(expected)
            let have = Set(l.intervals)
            let missing = expected.filter { !have.contains($0) }
            let foreign = l.intervals.filter { !want.contains($0) }
            if !missing.isEmpty || !foreign.isEmpty {
                var parts: [String] = []
                if let m = missing.first {
                    parts.append("\(missing.count) of weir's elements missing (first: \(set.text(of: m)))")
                }
                if let f = foreign.first {
                    parts.append("\(foreign.count) elements not weir's (first: \(set.text(of: f)))")
                }
                out.append(
                    .init(kind: .alteredSet, detail: "set \(set.name) was changed: " + parts.joined(separator: ", ")))
            }
        }
        for l in live where plan.set(named: l.name) == nil {
            out.append(.init(kind: .extraSet, detail: "set \(l.name) in table weir is not weir's"))
        }
        return out
    }

    /// Missing, extra, altered and reordered rules of one chain, matched by their comments.
    static func diffRules<E: Hashable & CustomStringConvertible>(
        chain: String, expected: [(comment: String, expressions: [E])],
        live: [(String, [E])]
    ) -> [CheckFinding] {
        var out: [CheckFinding] = []
        var liveByComment: [String: [E]] = [:]
        for (c, e) in live { liveByComment[c] = e }
        let expectedComments = Set(expected.map(\.comment))
        for e in expected {
            guard let l = liveByComment[e.comment] else {
                out.append(.init(kind: .missingRule, detail: "chain \(chain): rule \"\(e.comment)\" is missing"))
                continue
            }
            if l != e.expressions {
                let diff =
                    zip(e.expressions, l).first { $0 != $1 }.map { "expected \($0.0) but found \($0.1)" }
                    ?? "expected \(e.expressions.count) expressions but found \(l.count)"
                out.append(
                    .init(kind: .alteredRule, detail: "chain \(chain): rule \"\(e.comment)\" was changed: \(diff)"))
            }
        }
        for (c, e) in live where !expectedComments.contains(c) {
            out.append(
                .init(
                    kind: .extraRule,
                    detail:
                        "chain \(chain): rule \"\(c)\" is not weir's: \(e.map(\.description).joined(separator: " "))"))
        }
        let liveOrder = live.map(\.0).filter { expectedComments.contains($0) }
        let expectedOrder = expected.map(\.comment).filter { liveByComment[$0] != nil }
        if out.isEmpty && liveOrder != expectedOrder {
            out.append(.init(kind: .reorderedRules, detail: "chain \(chain): weir's rules are in a different order"))
        }
        return out
    }

    static func diffIptables(_ state: IptablesState, plan: RedirectPlan) -> [CheckFinding] {
        var out: [CheckFinding] = []
        for family in plan.spec.families {
            let tables = state.chains[family] ?? [:]
            let tool = family == .ipv4 ? "iptables-\(state.variant.rawValue)" : "ip6tables-\(state.variant.rawValue)"
            for c in plan.chains {
                guard let lines = tables[c.iptablesTable]?[c.iptablesName] else {
                    out.append(
                        .init(
                            kind: .missingChain,
                            detail: "\(tool): chain \(c.iptablesName) is missing from table \(c.iptablesTable)"))
                    continue
                }
                let expected = c.rules.filter { $0.family == nil || $0.family == family }.flatMap { r in
                    IptablesRendering.rules(r, family: family, sets: plan.sets).map {
                        (comment: r.comment, expressions: ["-A \(c.iptablesName) " + $0])
                    }
                }
                // Several iptables rules may share a plan rule's comment (MARK then ACCEPT, a set's elements): key by
                // comment and position.
                func keyed(_ xs: [(comment: String, expressions: [String])]) -> [(
                    comment: String, expressions: [String]
                )] {
                    var seen: [String: Int] = [:]
                    return xs.map { x in
                        let n = seen[x.comment, default: 0]
                        seen[x.comment] = n + 1
                        return (n == 0 ? x.comment : "\(x.comment) #\(n + 1)", x.expressions)
                    }
                }
                let liveRules = lines.map { line in
                    (comment: IptablesBackend.comment(ofSavedRule: line) ?? line, expressions: [line])
                }
                out += diffRules(
                    chain: "\(tool) \(c.iptablesName)", expected: keyed(expected),
                    live: keyed(liveRules).map { ($0.comment, $0.expressions) })
                if let jump = IptablesRendering.jumpLine(c),
                    !(tables[c.iptablesTable]?["jump:" + (c.base!.hook.rawValue.uppercased())] ?? []).contains(jump)
                {
                    out.append(
                        .init(
                            kind: .missingJump,
                            detail:
                                "\(tool): the jump from \(c.base!.hook.rawValue.uppercased()) to \(c.iptablesName) in table \(c.iptablesTable) is missing, so the chain never runs"
                        ))
                }
            }
        }
        return out
    }

    /// With the iptables backend weir's rules run inside iptables' own base chains: nat at -100, mangle at -150.
    static func iptablesPriority(_ b: PlanChain.Base) -> Int32 { b.type == .nat ? -100 : -150 }

    /// Base chains of other tables on weir's hooks that run before weir and drop, accept or NAT traffic.
    static func bypasses(_ live: LiveRuleset, plan: RedirectPlan?, iptables: Bool = false) -> [CheckFinding] {
        var out: [CheckFinding] = []
        let weirFamily = plan.map(NetfilterFamily.init(plan:))
        for c in live.chains where c.family.carriesIP {
            guard let base = c.base, base.hook == .output || base.hook == .prerouting else { continue }
            if !iptables && c.table == RedirectPlan.tableName && (weirFamily == nil || c.family == weirFamily) {
                continue
            }
            // iptables-nft's own tables hold weir's jumps under the iptables backend; they are not foreign.
            if iptables && ["nat", "mangle"].contains(c.table) && c.family != .inet { continue }
            // weir's earliest chain on this hook (defaults when the spec is unknown).
            let weirPriorities: [Int32] = (plan?.chains ?? []).compactMap { ch in
                guard let b = ch.base, ChainHook(b.hook) == base.hook else { return nil }
                return iptables ? iptablesPriority(b) : b.priority
            }
            guard base.priority < (weirPriorities.min() ?? RedirectPlan.natPriority) else { continue }
            let name = "\(c.family) \(c.table) \(c.name) (hook \(base.hook) priority \(base.priority))"
            if base.policy == .drop {
                out.append(.init(kind: .bypass, detail: "chain \(name) runs before weir with policy drop"))
            }
            for r in live.rules where r.table == c.table && r.family == c.family && r.chain == c.name {
                let text = r.expressions.map(\.description).joined(separator: " ")
                if r.expressions.contains(where: \.rewritesDestination) {
                    out.append(
                        .init(
                            kind: .bypass,
                            detail:
                                "chain \(name) runs before weir and rewrites destinations (\(text)); weir's redirect will not apply to those connections"
                        ))
                } else if r.expressions.contains(where: \.setsMark) {
                    out.append(
                        .init(
                            kind: .bypass,
                            detail:
                                "chain \(name) runs before weir and sets packet marks (\(text)); a mark that carries weir's bypass mark skips the capture"
                        ))
                } else if r.expressions.contains(where: \.drops) {
                    out.append(
                        .init(kind: .bypass, detail: "chain \(name) runs before weir and drops traffic (\(text))"))
                } else if r.expressions.contains(where: \.accepts) {
                    out.append(
                        .init(
                            kind: .bypass,
                            detail:
                                "warning: chain \(name) runs before weir and accepts traffic (\(text)); nftables still runs weir's chain, but iptables-style tools may read it as an exemption"
                        ))
                }
            }
        }
        return out
    }

    /// Splits findings whose detail starts with "warning: " into warnings (without that prefix).
    static func classify(_ f: [CheckFinding]) -> ([CheckFinding], [CheckFinding]) {
        let prefix = "warning: "
        let warnings = f.filter { $0.detail.hasPrefix(prefix) }.map {
            CheckFinding(kind: $0.kind, detail: String($0.detail.dropFirst(prefix.count)))
        }
        return (f.filter { !$0.detail.hasPrefix(prefix) }, warnings)
    }

    /// iptables-legacy nat rules: they run in x_tables' own hooks beside nftables and fight weir's redirect.
    static func legacyNatRules(_ rules: [IPFamily: [String]]) -> [CheckFinding] {
        var out: [CheckFinding] = []
        for family in IPFamily.allCases {
            let tool = family == .ipv4 ? "iptables-legacy" : "ip6tables-legacy"
            // weir's own chains and jumps (the iptables-legacy backend) are not foreign.
            let ownJump = "--comment " + IptablesRendering.saveString(IptablesRendering.jumpComment)
            let foreign = (rules[family] ?? []).filter { !$0.hasPrefix("-A WEIR_") && !$0.contains(ownJump) }
            if let first = foreign.first {
                out.append(
                    .init(
                        kind: .legacyRules,
                        detail:
                            "\(tool) holds \(foreign.count) nat rule(s) beside nftables (first: \(first)); they run in separate hooks and can redirect or exempt traffic behind weir's back"
                    ))
            }
        }
        return out
    }
}

extension IptablesBackend {
    /// The text of `--comment "..."` in an iptables-save line.
    static func comment(ofSavedRule line: String) -> String? {
        guard let r = line.firstRange(of: "--comment ") else { return nil }
        var rest = line[r.upperBound...]
        if rest.hasPrefix("\"") {
            rest = rest.dropFirst()
            var out = ""
            var escaped = false
            for ch in rest {
                if escaped {
                    out.append(ch)
                    escaped = false
                } else if ch == "\\" {
                    escaped = true
                } else if ch == "\"" {
                    return out
                } else {
                    out.append(ch)
                }
            }
            return out
        }
        return String(rest.prefix { $0 != " " })
    }
}
