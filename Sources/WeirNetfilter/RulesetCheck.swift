import CNetfilter
import Foundation
import WeirCapture
import WeirNetns

/// One thing `check` found.
public struct CheckFinding: Sendable, Codable, Hashable, CustomStringConvertible {
    public enum Kind: String, Sendable, Codable {
        case notInstalled = "not-installed"
        case specUnreadable = "spec-unreadable"
        case missingChain = "missing-chain"
        case extraChain = "extra-chain"
        case alteredChain = "altered-chain"
        case missingRule = "missing-rule"
        case extraRule = "extra-rule"
        case alteredRule = "altered-rule"
        case reorderedRules = "reordered-rules"
        case missingJump = "missing-jump"
        case bypass
        case legacyRules = "legacy-rules"
        case missingPolicyRoute = "missing-policy-route"
        case probeFailed = "probe-failed"
    }
    public let kind: Kind
    public let detail: String
    public var description: String { "\(kind.rawValue): \(detail)" }
}

/// The result of `weir check`.
public struct CheckReport: Sendable, Codable {
    public var namespace: String
    public var backend: String
    public var specSource: String
    public var spec: [String]
    public var problems: [CheckFinding] = []
    public var warnings: [CheckFinding] = []
    public var probe: ProbeReport?
    public var healthy: Bool { problems.isEmpty && (probe?.problems.isEmpty ?? true) }
}

extension CaptureInstaller {
    /// Compares the live rules with the plan (from `spec`, or recovered from the live table), looks for
    /// rules that bypass or fight weir's, and optionally proves a redirect with real connections.
    public func check(spec flagSpec: CaptureSpec?, probe: Bool) throws -> CheckReport {
        let namespace = self.namespace
        let backend = self.backend
        return try namespace.run {
            let nft = NftablesBackend()
            let live = try nft.readRuleset()
            let weirTable = live.tables.first { $0.name == RedirectPlan.tableName && ($0.family == UInt32(NFPROTO_INET) || $0.family == UInt32(NFPROTO_IPV4)) }
            var iptablesLive: [IPFamily: [String: [String: [String]]]] = [:]
            var iptablesVariant: IptablesBackend.Mode?
            if weirTable == nil {
                // No nftables table: look for an iptables install (either variant).
                let candidates: [IptablesBackend.Mode] = {
                    if case .iptables(let m) = backend, m != .auto { return [m] }
                    return CaptureInstaller.iptablesVariantsWithTables()
                }()
                for v in candidates {
                    let b = IptablesBackend(mode: v)
                    let v4 = (try? b.liveChains(family: .ipv4)) ?? [:]
                    if v4.values.contains(where: { !$0.isEmpty }) {
                        iptablesVariant = v
                        iptablesLive[.ipv4] = v4
                        iptablesLive[.ipv6] = (try? b.liveChains(family: .ipv6)) ?? [:]
                        break
                    }
                }
            }
            var report = CheckReport(namespace: namespace.description,
                                     backend: weirTable != nil ? "nftables" : iptablesVariant.map { "iptables-\($0.rawValue)" } ?? "none",
                                     specSource: flagSpec != nil ? "flags" : "live table", spec: [])
            // The spec: flags, or what weir stored in the live rules.
            var spec = flagSpec
            if spec == nil {
                var comments: [String] = []
                if let t = weirTable {
                    comments = live.rules.filter { $0.table == t.name && $0.family == t.family && $0.chain == RedirectPlan.specChainName }.compactMap(\.comment)
                } else if let v4 = iptablesLive[.ipv4] {
                    comments = (v4["nat"]?["WEIR_SPEC"] ?? []).compactMap(IptablesBackend.comment(ofSavedRule:))
                }
                if weirTable != nil || iptablesVariant != nil {
                    do { spec = try RedirectPlan.recoverSpec(fromComments: comments) }
                    catch { report.problems.append(.init(kind: .specUnreadable, detail: "\(error)")) }
                }
            }
            if weirTable == nil && iptablesVariant == nil {
                report.problems.append(.init(kind: .notInstalled, detail: "weir's rules are not installed in \(namespace) (no nftables table weir, no WEIR_ iptables chains). Run weir init."))
            }
            guard let spec else {
                report.problems += Self.bypasses(live, plan: nil)
                report.problems += Self.legacyNatRules()
                return report
            }
            report.spec = spec.encodedTokens
            let plan = RedirectPlan(spec: spec)
            if let t = weirTable {
                report.problems += Self.diffNftables(live, table: t, plan: plan, nft: nft)
            } else if let v = iptablesVariant {
                report.problems += Self.diffIptables(iptablesLive, plan: plan, variant: v)
            }
            let (bypassProblems, bypassWarnings) = Self.classify(Self.bypasses(live, plan: plan, iptables: weirTable == nil && iptablesVariant != nil))
            report.problems += bypassProblems
            report.warnings += bypassWarnings
            report.problems += Self.legacyNatRules()
            if let pr = plan.policyRoute {
                let entries = (try? PolicyRouting().list()) ?? []
                for f in pr.families {
                    let fam = UInt8(f == .ipv4 ? AF_INET : AF_INET6)
                    if !entries.contains(where: { $0.family == fam && $0.kind == "rule" && $0.mark == pr.mark && $0.table == pr.table }) {
                        report.problems.append(.init(kind: .missingPolicyRoute, detail: "\(f.rawValue) rule 'fwmark 0x\(String(pr.mark, radix: 16)) lookup \(pr.table)' is missing: TPROXY'd packets would not reach the proxy"))
                    }
                    if !entries.contains(where: { $0.family == fam && $0.kind == "route" && $0.table == pr.table }) {
                        report.problems.append(.init(kind: .missingPolicyRoute, detail: "\(f.rawValue) route 'local default dev lo table \(pr.table)' is missing"))
                    }
                }
            }
            if probe {
                report.probe = CaptureProbe(spec: spec).run()
            }
            return report
        }
    }

    static func diffNftables(_ live: LiveRuleset, table: LiveTable, plan: RedirectPlan, nft: NftablesBackend) -> [CheckFinding] {
        var out: [CheckFinding] = []
        let liveChains = live.chains.filter { $0.table == table.name && $0.family == table.family }
        let expected = nft.expectedRules(plan)
        for c in plan.chains {
            guard let lc = liveChains.first(where: { $0.name == c.name }) else {
                out.append(.init(kind: .missingChain, detail: "chain \(c.name) is missing from table \(familyName(table.family)) weir"))
                continue
            }
            if let b = c.base {
                let hook = NftablesObjects.hookNumber(b.hook)
                if lc.hook != hook || lc.priority != b.priority || lc.type != b.type.rawValue || lc.policy != UInt32(NF_ACCEPT) {
                    out.append(.init(kind: .alteredChain, detail: "chain \(c.name) should be 'type \(b.type.rawValue) hook \(b.hook.rawValue) priority \(b.priority); policy accept' but is 'type \(lc.type ?? "-") hook \(lc.hook.map(String.init) ?? "-") priority \(lc.priority.map(String.init) ?? "-") policy \(lc.policy == UInt32(NF_ACCEPT) ? "accept" : "drop")'"))
                }
            } else if lc.hook != nil {
                out.append(.init(kind: .alteredChain, detail: "chain \(c.name) should be a regular chain but is attached to a hook"))
            }
            let liveRules = live.rules.filter { $0.table == table.name && $0.family == table.family && $0.chain == c.name }
            out += diffRules(chain: c.name, expected: expected[c.name] ?? [], live: liveRules.map { ($0.comment ?? "(no comment, handle \($0.handle))", $0.expressions) })
        }
        for lc in liveChains where !plan.chains.contains(where: { $0.name == lc.name }) {
            out.append(.init(kind: .extraChain, detail: "chain \(lc.name) in table weir is not weir's"))
        }
        return out
    }

    /// Missing, extra, altered and reordered rules of one chain, matched by their comments.
    static func diffRules(chain: String, expected: [(comment: String, expressions: [String])], live: [(String, [String])]) -> [CheckFinding] {
        var out: [CheckFinding] = []
        var liveByComment: [String: [String]] = [:]
        for (c, e) in live { liveByComment[c] = e }
        let expectedComments = Set(expected.map(\.comment))
        for e in expected {
            guard let l = liveByComment[e.comment] else {
                out.append(.init(kind: .missingRule, detail: "chain \(chain): rule \"\(e.comment)\" is missing"))
                continue
            }
            if l != e.expressions {
                let diff = zip(e.expressions, l).first { $0 != $1 }.map { "expected \($0.0) but found \($0.1)" }
                    ?? "expected \(e.expressions.count) expressions but found \(l.count)"
                out.append(.init(kind: .alteredRule, detail: "chain \(chain): rule \"\(e.comment)\" was changed: \(diff)"))
            }
        }
        for (c, e) in live where !expectedComments.contains(c) {
            out.append(.init(kind: .extraRule, detail: "chain \(chain): rule \"\(c)\" is not weir's: \(e.joined(separator: " "))"))
        }
        let liveOrder = live.map(\.0).filter { expectedComments.contains($0) }
        let expectedOrder = expected.map(\.comment).filter { liveByComment[$0] != nil }
        if out.isEmpty && liveOrder != expectedOrder {
            out.append(.init(kind: .reorderedRules, detail: "chain \(chain): weir's rules are in a different order"))
        }
        return out
    }

    static func diffIptables(_ live: [IPFamily: [String: [String: [String]]]], plan: RedirectPlan, variant: IptablesBackend.Mode) -> [CheckFinding] {
        var out: [CheckFinding] = []
        for family in plan.spec.families {
            let tables = live[family] ?? [:]
            let tool = family == .ipv4 ? "iptables-\(variant.rawValue)" : "ip6tables-\(variant.rawValue)"
            for c in plan.chains {
                guard let lines = tables[c.iptablesTable]?[c.iptablesName] else {
                    out.append(.init(kind: .missingChain, detail: "\(tool): chain \(c.iptablesName) is missing from table \(c.iptablesTable)"))
                    continue
                }
                let expected = c.rules.filter { $0.family == nil || $0.family == family }.flatMap { r in
                    IptablesRendering.rules(r, family: family).map { (comment: r.comment, expressions: ["-A \(c.iptablesName) " + $0]) }
                }
                // Several iptables rules may share a plan rule's comment (MARK then ACCEPT): key by comment and position.
                func keyed(_ xs: [(comment: String, expressions: [String])]) -> [(comment: String, expressions: [String])] {
                    var seen: [String: Int] = [:]
                    return xs.map { x in
                        let n = seen[x.comment, default: 0]; seen[x.comment] = n + 1
                        return (n == 0 ? x.comment : "\(x.comment) #\(n + 1)", x.expressions)
                    }
                }
                let liveRules = lines.map { line in (comment: IptablesBackend.comment(ofSavedRule: line) ?? line, expressions: [line]) }
                out += diffRules(chain: "\(tool) \(c.iptablesName)", expected: keyed(expected), live: keyed(liveRules).map { ($0.comment, $0.expressions) })
                if let jump = IptablesRendering.jumpLine(c), !(tables[c.iptablesTable]?["jump:" + (c.base!.hook.rawValue.uppercased())] ?? []).contains(jump) {
                    out.append(.init(kind: .missingJump, detail: "\(tool): the jump from \(c.base!.hook.rawValue.uppercased()) to \(c.iptablesName) in table \(c.iptablesTable) is missing, so the chain never runs"))
                }
            }
        }
        return out
    }

    /// Base chains of other tables on weir's hooks that run before weir and drop, accept or NAT traffic.
    /// With the iptables backend weir's rules run inside iptables' own base chains: nat at -100, mangle at -150.
    static func iptablesPriority(_ b: PlanChain.Base) -> Int32 { b.type == .nat ? -100 : -150 }

    static func bypasses(_ live: LiveRuleset, plan: RedirectPlan?, iptables: Bool = false) -> [CheckFinding] {
        var out: [CheckFinding] = []
        let families: Set<UInt32> = [UInt32(NFPROTO_INET), UInt32(NFPROTO_IPV4), UInt32(NFPROTO_IPV6)]
        let weirFamily: UInt32? = plan.map { UInt32(NftablesObjects.family($0)) }
        for c in live.chains where families.contains(c.family) {
            guard let hook = c.hook, let prio = c.priority else { continue }
            if !iptables && c.table == RedirectPlan.tableName && (weirFamily == nil || c.family == weirFamily) { continue }
            // iptables-nft's own tables hold weir's jumps under the iptables backend; they are not foreign.
            if iptables && ["nat", "mangle"].contains(c.table) && c.family != UInt32(NFPROTO_INET) { continue }
            // weir's earliest chain on this hook (defaults when the spec is unknown).
            let weirPriorities: [Int32] = (plan?.chains ?? []).compactMap { ch in
                guard let b = ch.base, NftablesObjects.hookNumber(b.hook) == hook else { return nil }
                return iptables ? iptablesPriority(b) : b.priority
            }
            let onWeirHook = hook == NftablesObjects.hookNumber(.output) || hook == NftablesObjects.hookNumber(.prerouting)
            guard onWeirHook else { continue }
            let before = prio < (weirPriorities.min() ?? RedirectPlan.natPriority)
            guard before else { continue }
            let name = "\(familyName(c.family)) \(c.table) \(c.name) (hook \(hook == NftablesObjects.hookNumber(.output) ? "output" : "prerouting") priority \(prio))"
            if c.policy == UInt32(NF_DROP) {
                out.append(.init(kind: .bypass, detail: "chain \(name) runs before weir with policy drop"))
            }
            for r in live.rules where r.table == c.table && r.family == c.family && r.chain == c.name {
                let text = r.expressions.joined(separator: " ")
                if text.contains("[ nat ") || text.contains("[ redir") || text.contains("[ tproxy") || text.contains("[ masq") {
                    out.append(.init(kind: .bypass, detail: "chain \(name) runs before weir and rewrites destinations (\(text)); weir's redirect will not apply to those connections"))
                } else if text.contains("reg 0 drop") || text.contains("[ reject") {
                    out.append(.init(kind: .bypass, detail: "chain \(name) runs before weir and drops traffic (\(text))"))
                } else if text.contains("reg 0 accept") {
                    out.append(.init(kind: .bypass, detail: "warning: chain \(name) runs before weir and accepts traffic (\(text)); nftables still runs weir's chain, but iptables-style tools may read it as an exemption"))
                }
            }
        }
        return out
    }

    /// Splits findings whose detail starts with "warning:" into warnings.
    static func classify(_ f: [CheckFinding]) -> ([CheckFinding], [CheckFinding]) {
        (f.filter { !$0.detail.hasPrefix("warning:") }, f.filter { $0.detail.hasPrefix("warning:") })
    }

    /// iptables-legacy nat rules: they run in x_tables' own hooks beside nftables and fight weir's redirect.
    static func legacyNatRules() -> [CheckFinding] {
        guard IptablesBackend.legacyHasTables() else { return [] }
        var out: [CheckFinding] = []
        for family in IPFamily.allCases {
            let tool = family == .ipv4 ? "iptables-legacy-save" : "ip6tables-legacy-save"
            guard let r = try? ChildProcess.run(tool, ["-t", "nat"]), r.status == 0 else { continue }
            // weir's own chains and jumps (the iptables-legacy backend) are not foreign.
            let ownJump = "--comment " + IptablesRendering.saveString(IptablesRendering.jumpComment)
            let rules = r.stdout.split(separator: "\n").filter { $0.hasPrefix("-A ") && !$0.hasPrefix("-A WEIR_") && !$0.contains(ownJump) }
            if !rules.isEmpty {
                out.append(.init(kind: .legacyRules, detail: "\(tool.replacingOccurrences(of: "-save", with: "")) holds \(rules.count) nat rule(s) beside nftables (first: \(rules[0])); they run in separate hooks and can redirect or exempt traffic behind weir's back"))
            }
        }
        return out
    }
}

extension IptablesBackend {
    /// The text of `--comment "..."` in an iptables-save line.
    static func comment(ofSavedRule line: String) -> String? {
        guard let r = line.range(of: "--comment ") else { return nil }
        var rest = line[r.upperBound...]
        if rest.hasPrefix("\"") {
            rest = rest.dropFirst()
            var out = ""
            var escaped = false
            for ch in rest {
                if escaped { out.append(ch); escaped = false }
                else if ch == "\\" { escaped = true }
                else if ch == "\"" { return out }
                else { out.append(ch) }
            }
            return out
        }
        return String(rest.prefix { $0 != " " })
    }
}
