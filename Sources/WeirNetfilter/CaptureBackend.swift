import WeirCapture

/// What a reconcile loop needs from one namespace's capture: install a plan, remove it, and read back what is
/// there. `CaptureInstaller` is the real one; tests use an in-memory one that needs no privileges.
public protocol CaptureBackend: Sendable {
    /// Installs the plan atomically.
    func install(_ plan: RedirectPlan) throws
    /// Removes weir's rules; returns whether there were any.
    @discardableResult func clean() throws -> Bool
    /// Reads everything `check` decides on.
    func observe() throws -> CheckInput
}

extension CaptureInstaller: CaptureBackend {}

extension RulesetCheck {
    /// The nftables ruleset the kernel holds right after `plan` was installed in an empty namespace: what an
    /// in-memory backend reports, and what `check` finds healthy.
    public static func expectedRuleset(_ plan: RedirectPlan) -> LiveRuleset {
        let family = NetfilterFamily(plan: plan)
        let table = LiveTable(family: family, name: RedirectPlan.tableName, comment: RedirectPlan.tableComment)
        let chains = plan.chains.map { c in
            LiveChain(
                family: family, table: table.name, name: c.name,
                base: c.base.map {
                    .init(hook: ChainHook($0.hook), priority: $0.priority, type: $0.type.rawValue, policy: .accept)
                })
        }
        let expected = expectedRules(plan)
        var handle: UInt64 = 0
        let rules = plan.chains.flatMap { c in
            (expected[c.name] ?? []).map { r -> LiveRule in
                handle += 1
                return LiveRule(
                    family: family, table: table.name, chain: c.name, handle: handle, comment: r.comment,
                    expressions: r.expressions)
            }
        }
        let sets = plan.sets.map { s in
            LiveSet(
                family: family, table: table.name, name: s.name, keyLength: s.keyType.length, isInterval: s.isInterval,
                intervals: s.intervals)
        }
        return LiveRuleset(tables: [table], chains: chains, rules: rules, sets: sets)
    }
}
