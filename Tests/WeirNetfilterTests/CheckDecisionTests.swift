import Testing
@testable import WeirCapture
@testable import WeirNetfilter
import WeirTestSupport

/// `check`'s decisions from hand-built rulesets: no root, no namespace. Each finding from the smallest change that
/// causes it, against the ruleset a clean install leaves.
@Suite("check decides from a LiveRuleset")
struct CheckDecisionTests {
    static func installed(_ flags: [(CaptureSpecInput.Key, String)] = [(.proxyUID, "1337")]) throws -> (
        RedirectPlan, LiveRuleset
    ) {
        let plan = RedirectPlan(spec: try spec(flags))
        return (plan, RulesetCheck.expectedRuleset(plan))
    }

    static func decide(
        _ ruleset: LiveRuleset, legacy: [IPFamily: [String]] = [:], routes: [PolicyRouteEntry] = [],
        spec: CaptureSpec? = nil
    ) -> CheckReport {
        RulesetCheck.decide(
            CheckInput(namespace: "test", ruleset: ruleset, legacyNatRules: legacy, policyRoutes: routes), spec: spec
        ).report
    }

    static func kinds(_ r: CheckReport) -> [CheckFinding.Kind] { r.problems.map(\.kind) }

    static let capture = "weir: out: capture all tcp to port 15001"

    @Test("a clean install is healthy, and its spec is read back from the spec chain")
    func healthy() throws {
        let (plan, live) = try Self.installed()
        let report = Self.decide(live)
        #expect(report.healthy, "\(report.problems)")
        #expect(
            report.spec == plan.spec.encodedTokens && report.specSource == "live table" && report.backend == "nftables")
    }

    @Test("no table is not-installed; a table without its spec is spec-unreadable")
    func notInstalledAndUnreadable() throws {
        #expect(Self.kinds(Self.decide(LiveRuleset())) == [.notInstalled])
        var (_, live) = try Self.installed()
        live.rules.removeAll { $0.chain == RedirectPlan.specChainName }
        #expect(Self.kinds(Self.decide(live)) == [.specUnreadable])
    }

    @Test("a missing rule, an extra one, an altered one, and two swapped")
    func rules() throws {
        let (_, live) = try Self.installed()
        var missing = live
        missing.rules.removeAll { $0.comment == Self.capture }
        let m = Self.decide(missing)
        #expect(Self.kinds(m) == [.missingRule] && m.problems[0].detail.contains("capture all tcp"), "\(m.problems)")

        var extra = live
        let first = extra.rules.first { $0.chain == "output" }!
        extra.rules.append(
            LiveRule(
                family: first.family, table: "weir", chain: "output", handle: 999, comment: "someone else's",
                expressions: [RuleExpression(name: "immediate", text: "reg 0 accept")]))
        #expect(Self.kinds(Self.decide(extra)) == [.extraRule])

        var altered = live
        let i = altered.rules.firstIndex { $0.comment == Self.capture }!
        let r = altered.rules[i]
        altered.rules[i] = LiveRule(
            family: r.family, table: r.table, chain: r.chain, handle: r.handle, comment: r.comment,
            expressions: r.expressions.dropLast() + [RuleExpression(name: "redir", text: "proto_min reg 2")])
        let a = Self.decide(altered)
        #expect(Self.kinds(a) == [.alteredRule] && a.problems[0].detail.contains("redir"), "\(a.problems)")

        var swapped = live
        let outputs = swapped.rules.indices.filter { swapped.rules[$0].chain == "output" }
        swapped.rules.swapAt(outputs[0], outputs[1])
        #expect(Self.kinds(Self.decide(swapped)) == [.reorderedRules])
    }

    @Test("an altered, missing or extra chain")
    func chains() throws {
        let (_, live) = try Self.installed()
        var altered = live
        let i = altered.chains.firstIndex { $0.name == "output" }!
        let c = altered.chains[i]
        altered.chains[i] = LiveChain(
            family: c.family, table: c.table, name: c.name,
            base: .init(hook: .output, priority: 0, type: "nat", policy: .accept))
        let a = Self.decide(altered)
        #expect(Self.kinds(a) == [.alteredChain] && a.problems[0].detail.contains("priority 0"), "\(a.problems)")

        var missing = live
        missing.chains.removeAll { $0.name == "prerouting" }
        missing.rules.removeAll { $0.chain == "prerouting" }
        #expect(Self.kinds(Self.decide(missing)) == [.missingChain])

        var extra = live
        extra.chains.append(LiveChain(family: c.family, table: "weir", name: "mine", base: nil))
        #expect(Self.kinds(Self.decide(extra)) == [.extraChain])
    }

    @Test(
        "a chain of another table before weir that NATs or drops is a bypass; one that accepts is a warning; one after is neither"
    )
    func bypass() throws {
        let (_, live) = try Self.installed()
        func with(priority: Int32, policy: ChainPolicy = .accept, _ expressions: [RuleExpression]) -> CheckReport {
            var r = live
            r.tables.append(LiveTable(family: .ip, name: "sneaky"))
            r.chains.append(
                LiveChain(
                    family: .ip, table: "sneaky", name: "out",
                    base: .init(hook: .output, priority: priority, type: "nat", policy: policy)))
            if !expressions.isEmpty {
                r.rules.append(
                    LiveRule(
                        family: .ip, table: "sneaky", chain: "out", handle: 1, comment: nil, expressions: expressions))
            }
            return Self.decide(r)
        }
        let dnat = [RuleExpression(name: "nat", text: "dnat ip addr_min reg 1")]
        let nat = with(priority: -150, dnat)
        #expect(Self.kinds(nat) == [.bypass] && nat.problems[0].detail.contains("sneaky"), "\(nat.problems)")
        #expect(Self.kinds(with(priority: -150, [RuleExpression(name: "immediate", text: "reg 0 drop")])) == [.bypass])
        #expect(Self.kinds(with(priority: -150, policy: .drop, [])) == [.bypass])
        let accept = with(priority: -150, [RuleExpression(name: "immediate", text: "reg 0 accept")])
        #expect(accept.healthy && accept.warnings.count == 1, "\(accept.problems) \(accept.warnings)")
        #expect(with(priority: 0, dnat).healthy)
    }

    @Test("iptables-legacy nat rules beside nftables are reported; weir's own legacy chains are not")
    func legacy() throws {
        let (_, live) = try Self.installed()
        let foreign = Self.decide(live, legacy: [.ipv4: ["-A OUTPUT -p tcp -j DNAT --to-destination 198.18.0.9"]])
        #expect(
            Self.kinds(foreign) == [.legacyRules] && foreign.problems[0].detail.contains("iptables-legacy"),
            "\(foreign.problems)")
        let own = Self.decide(
            live,
            legacy: [
                .ipv6: ["-A WEIR_OUTPUT -j RETURN", "-A OUTPUT -m comment --comment \"weir: capture\" -j WEIR_OUTPUT"]
            ])
        #expect(own.healthy, "\(own.problems)")
    }

    @Test("a set that is missing, altered or not weir's")
    func sets() throws {
        let ports = (0..<20).map { "\(7000 + 2 * $0)" }.joined(separator: ",")
        let (plan, live) = try Self.installed([(.outboundExcludePort, ports)])
        #expect(plan.sets.map(\.name) == ["out_exclude_ports"])
        #expect(Self.decide(live).healthy)

        var missing = live
        missing.sets = []
        #expect(Self.kinds(Self.decide(missing)) == [.missingSet])

        var altered = live
        let s = altered.sets[0]
        altered.sets[0] = LiveSet(
            family: s.family, table: s.table, name: s.name, keyLength: s.keyLength, isInterval: true,
            intervals: Array(s.intervals.dropFirst()) + [KeyInterval(first: [0x1F, 0x90], last: [0x1F, 0x90])])
        let a = Self.decide(altered)
        #expect(Self.kinds(a) == [.alteredSet], "\(a.problems)")
        #expect(
            a.problems.first?.detail.contains("1 of weir's elements missing (first: 7000)") == true
                && a.problems.first?.detail.contains("(first: 8080)") == true, "\(a.problems)")

        var extra = live
        extra.sets.append(
            LiveSet(family: s.family, table: "weir", name: "other", keyLength: 4, isInterval: false, intervals: []))
        #expect(Self.kinds(Self.decide(extra)) == [.extraSet])
    }

    @Test("TPROXY without its policy routes is reported, per family and kind")
    func policyRoutes() throws {
        let (plan, live) = try Self.installed([(.mode, "tproxy")])
        let route = try #require(plan.policyRoute)
        #expect(Self.kinds(Self.decide(live)) == Array(repeating: .missingPolicyRoute, count: 4))
        let all = IPFamily.allCases.flatMap { f in
            [
                PolicyRouteEntry(family: f, kind: .rule, table: route.table, mark: route.mark),
                PolicyRouteEntry(family: f, kind: .route, table: route.table),
            ]
        }
        #expect(Self.decide(live, routes: all).healthy)
        #expect(Self.kinds(Self.decide(live, routes: Array(all.dropFirst()))) == [.missingPolicyRoute])
    }

    @Test("a spec given as flags is checked against instead of the stored one")
    func flagsOverride() throws {
        let (_, live) = try Self.installed()
        let other = try spec([(.proxyUID, "1337"), (.outboundPort, "16001")])
        let report = Self.decide(live, spec: other)
        #expect(report.specSource == "flags" && !report.healthy && report.problems.contains { $0.kind == .missingRule })
    }

    @Test("iptables: a deleted rule and a missing jump")
    func iptables() throws {
        let plan = RedirectPlan(spec: try spec([(.proxyUID, "1337")]))
        var chains: [IPFamily: [String: [String: [String]]]] = [:]
        for f in plan.spec.families {
            chains[f] = IptablesBackend.weirChains(
                IptablesRendering.render(plan, family: f).replacingOccurrences(of: "-I OUTPUT 1 ", with: "-A OUTPUT ")
                    .replacingOccurrences(of: "-I PREROUTING 1 ", with: "-A PREROUTING "))
        }
        func decide(_ c: [IPFamily: [String: [String: [String]]]]) -> CheckReport {
            RulesetCheck.decide(
                CheckInput(
                    namespace: "test", ruleset: LiveRuleset(), iptables: IptablesState(variant: .nft, chains: c)),
                spec: nil
            ).report
        }
        let healthy = decide(chains)
        #expect(healthy.healthy && healthy.backend == "iptables-nft", "\(healthy.problems)")
        var deleted = chains
        deleted[.ipv4]!["nat"]!["WEIR_OUTPUT"]!.removeAll { $0.contains("capture all tcp") }
        #expect(Self.kinds(decide(deleted)) == [.missingRule])
        var unjumped = chains
        unjumped[.ipv6]!["nat"]!["jump:OUTPUT"] = []
        #expect(Self.kinds(decide(unjumped)) == [.missingJump])
    }
}

/// The reconcile the daemon will run, against the in-memory backend: observe, decide, repair.
@Suite("reconcile against an in-memory capture backend")
struct InMemoryBackendTests {
    /// One pass: installs when the live state is not what the plan wants; returns whether it did.
    static func reconcile(_ backend: some CaptureBackend, _ plan: RedirectPlan) throws -> Bool {
        let (report, _) = RulesetCheck.decide(try backend.observe(), spec: plan.spec)
        guard !report.healthy else { return false }
        try backend.install(plan)
        return true
    }

    @Test("drift is repaired once, a healthy state is left alone, and a failed install is retried on the next pass")
    func repair() throws {
        let backend = InMemoryCaptureBackend()
        let plan = RedirectPlan(spec: try spec([(.proxyUID, "1337")]))
        #expect(try Self.reconcile(backend, plan))
        #expect(try !Self.reconcile(backend, plan))
        backend.tamper { $0.rules.removeAll { $0.comment == CheckDecisionTests.capture } }
        backend.failNextInstall(with: PreconditionError(message: "injected"))
        #expect(throws: PreconditionError.self) { try Self.reconcile(backend, plan) }
        #expect(try Self.reconcile(backend, plan))
        #expect(try !Self.reconcile(backend, plan))
        #expect(backend.installs == 2)
        #expect(try backend.clean())
        #expect(try Self.reconcile(backend, plan))
    }
}

/// The elements an interval set holds, and reading them back: pure, both ways.
@Suite("set elements")
struct SetElementTests {
    static func roundTrip(_ set: PlanSet) -> [KeyInterval] {
        NftablesObjects.intervals(
            fromElements: NftablesObjects.elementKeys(set), interval: set.isInterval,
            hostOrder: !set.isInterval)
    }

    @Test("networks merge when they overlap or touch, and come back from start and end elements, edges included")
    func networks() throws {
        let cidrs = ["10.0.0.0/24", "10.0.1.0/24", "10.0.0.128/25", "192.0.2.7", "255.255.255.255", "0.0.0.0/8"].map {
            try! CIDR.parse($0).get()
        }
        let set = PlanSet(name: "n", field: .destination(.ipv4), elements: .networks(cidrs))
        #expect(set.intervals.map(set.text(of:)) == ["0.0.0.0/8", "10.0.0.0/23", "192.0.2.7", "255.255.255.255"])
        #expect(Self.roundTrip(set) == set.intervals)
        // Starting at zero needs no leading end element; ending at the top needs no trailing one.
        #expect(
            NftablesObjects.elementKeys(set).first?.end == false && NftablesObjects.elementKeys(set).last?.end == false)
        let whole = PlanSet(name: "w", field: .source(.ipv6), elements: .networks([try CIDR.parse("::/0").get()]))
        #expect(Self.roundTrip(whole) == whole.intervals && whole.intervals.map(whole.text(of:)) == ["::/0"])
    }

    @Test("ports and ids")
    func portsAndIDs() {
        let ports = PlanSet(
            name: "p", field: .destinationPort(.tcp),
            elements: .ports([PortRange(80), PortRange(first: 81, last: 90), PortRange(65535), PortRange(1)]))
        #expect(ports.intervals.map(ports.text(of:)) == ["1", "80-90", "65535"])
        #expect(Self.roundTrip(ports) == ports.intervals)
        let ids = PlanSet(name: "u", field: .socketUID, elements: .ids([1337, 0, 1337, 4_000_000_000]))
        #expect(!ids.isInterval && ids.intervals.map(ids.text(of:)) == ["0", "1337", "4000000000"])
        #expect(Self.roundTrip(ids) == ids.intervals)
        // uid keys go to the kernel in host order.
        #expect(NftablesObjects.elementKeys(ids)[1].key == [0x39, 0x05, 0, 0])
    }

    @Test("a repeated element in a dump counts once")
    func repeatedElement() {
        let set = PlanSet(name: "p", field: .destinationPort(.tcp), elements: .ports([PortRange(100), PortRange(200)]))
        var keys = NftablesObjects.elementKeys(set)
        keys.insert(keys[1], at: 2)
        #expect(NftablesObjects.intervals(fromElements: keys, interval: true, hostOrder: false) == set.intervals)
    }
}
