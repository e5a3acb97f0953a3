import Foundation
import Testing
@testable import WeirCapture
@testable import WeirNetfilter
import WeirNetns
import WeirTestSupport

@Suite("weir check", .enabled(if: canRunNamespaceTests))
struct CheckTests {
    @Test("a clean install is healthy, and the probe proves it with real connections", arguments: bothBackends)
    func healthy(_ backend: BackendChoice) throws {
        try TestNetwork.with { net in
            try net.installer(backend).install(
                RedirectPlan(spec: try spec([(.proxyUID, "1337"), (.outboundExcludePort, "22")])))
            let report = try net.installer(backend).check(spec: nil, probe: true)
            #expect(report.problems.isEmpty, "\(report.problems)")
            #expect(report.spec == ["proxy-uid=1337", "outbound-exclude-port=22"])
            #expect(
                report.probe?.checks.map(\.name) == ["outbound ipv4", "outbound ipv6", "inbound ipv4", "inbound ipv6"])
            #expect(
                report.probe?.checks.allSatisfy { $0.outcome == "passed" } == true,
                "\(String(describing: report.probe))")
            #expect(report.healthy)
        }
    }

    @Test("TPROXY: the inbound probe passes, and fails once the divert chain is gone", arguments: bothBackends)
    func tproxyProbe(_ backend: BackendChoice) throws {
        try TestNetwork.with { net in
            try net.installer(backend).install(RedirectPlan(spec: try spec([(.mode, "tproxy")])))
            let good = try net.installer(backend).check(spec: nil, probe: true)
            #expect(good.healthy, "\(good.problems) \(String(describing: good.probe))")
            #expect(good.probe?.checks.filter { $0.name.hasPrefix("inbound") && $0.outcome == "passed" }.count == 2)
            if backend == .nftables {
                try sh("ip", "netns", "exec", net.pod, "nft", "delete", "chain", "inet", "weir", "divert")
            } else {
                for tool in ["iptables-nft", "ip6tables-nft"] {
                    try sh("ip", "netns", "exec", net.pod, tool, "-t", "mangle", "-F", "WEIR_TPROXY")
                }
            }
            let bad = try net.installer(backend).check(spec: nil, probe: true)
            #expect(
                bad.probe?.problems.map(\.name) == ["inbound ipv4", "inbound ipv6"], "\(String(describing: bad.probe))")
            #expect(!bad.healthy)
            // The probe leaves no link behind.
            #expect(!(try sh("ip", "-n", net.pod, "link").output.contains("wprobe")))
        }
    }

    @Test("nothing installed is a problem")
    func notInstalled() throws {
        try TestNetwork.with { net in
            let report = try net.installer(.nftables).check(spec: nil, probe: false)
            #expect(report.problems.map(\.kind) == [.notInstalled])
        }
    }

    @Test("a deleted rule is reported missing, and the probe sees the capture is gone")
    func deletedRule() throws {
        try TestNetwork.with { net in
            try net.installer(.nftables).install(RedirectPlan(spec: try spec()))
            let handle = try net.podNamespace.run {
                try NftablesBackend().readRuleset().rules.first {
                    $0.comment == "weir: out: capture all tcp to port 15001"
                }!.handle
            }
            try sh(
                "ip", "netns", "exec", net.pod, "nft", "delete", "rule", "inet", "weir", "output", "handle", "\(handle)"
            )
            let report = try net.installer(.nftables).check(spec: nil, probe: true)
            #expect(
                report.problems.contains { $0.kind == .missingRule && $0.detail.contains("capture all tcp") },
                "\(report.problems)")
            #expect(report.probe?.problems.count == 2)
            #expect(!report.healthy)
        }
    }

    @Test("a changed port is reported as an altered rule")
    func changedPort() throws {
        try TestNetwork.with { net in
            try net.installer(.nftables).install(RedirectPlan(spec: try spec()))
            let handle = try net.podNamespace.run {
                try NftablesBackend().readRuleset().rules.first {
                    $0.comment == "weir: out: capture all tcp to port 15001"
                }!.handle
            }
            try sh(
                "ip", "netns", "exec", net.pod, "nft", "replace", "rule", "inet", "weir", "output", "handle",
                "\(handle)",
                "meta", "l4proto", "tcp", "redirect", "to", ":15999", "comment",
                "\"weir: out: capture all tcp to port 15001\"")
            let report = try net.installer(.nftables).check(spec: nil, probe: false)
            #expect(report.problems.map(\.kind) == [.alteredRule], "\(report.problems)")
        }
    }

    @Test("a foreign chain that NATs before weir is a bypass")
    func foreignBypass() throws {
        try TestNetwork.with { net in
            try net.installer(.nftables).install(RedirectPlan(spec: try spec()))
            try sh(
                "ip", "netns", "exec", net.pod, "nft", "-f", "-",
                input: """
                    table ip sneaky {
                        chain out { type nat hook output priority -150; policy accept; tcp dport 80 dnat to 198.18.0.2:8080; }
                    }
                    """)
            let report = try net.installer(.nftables).check(spec: nil, probe: false)
            #expect(
                report.problems.contains { $0.kind == .bypass && $0.detail.contains("sneaky") }, "\(report.problems)")
        }
    }

    @Test("with the iptables backend, a foreign chain before iptables' nat chain is a bypass")
    func foreignBypassIptables() throws {
        try TestNetwork.with { net in
            try net.installer(.iptables(.nft)).install(RedirectPlan(spec: try spec()))
            try sh(
                "ip", "netns", "exec", net.pod, "nft", "-f", "-",
                input: """
                    table ip sneaky {
                        chain out { type nat hook output priority -105; policy accept; tcp dport 80 dnat to 198.18.0.2:8080; }
                    }
                    """)
            let report = try net.installer(.iptables(.nft)).check(spec: nil, probe: false)
            #expect(report.backend == "iptables-nft")
            #expect(
                report.problems.contains { $0.kind == .bypass && $0.detail.contains("sneaky") }, "\(report.problems)")
            #expect(
                !report.problems.contains {
                    $0.detail.contains("chain ip nat ") || $0.detail.contains("chain ip6 nat ")
                }, "iptables' own chains flagged: \(report.problems)")
        }
    }

    @Test("a foreign chain after weir is not a bypass")
    func foreignAfter() throws {
        try TestNetwork.with { net in
            try net.installer(.nftables).install(RedirectPlan(spec: try spec()))
            try sh(
                "ip", "netns", "exec", net.pod, "nft", "-f", "-",
                input: """
                    table ip later {
                        chain out { type nat hook output priority 0; policy accept; tcp dport 80 dnat to 198.18.0.2:8080; }
                    }
                    """)
            #expect(try net.installer(.nftables).check(spec: nil, probe: false).problems.isEmpty)
        }
    }

    @Test("iptables-legacy nat rules beside nftables are reported")
    func legacyRules() throws {
        try TestNetwork.with { net in
            try net.installer(.nftables).install(RedirectPlan(spec: try spec()))
            try sh(
                "ip", "netns", "exec", net.pod, "iptables-legacy", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "--dport",
                "9999", "-j", "RETURN")
            let report = try net.installer(.nftables).check(spec: nil, probe: false)
            #expect(report.problems.contains { $0.kind == .legacyRules }, "\(report.problems)")
        }
    }

    @Test("iptables backend: a deleted rule and a missing jump are reported")
    func iptablesDrift() throws {
        try TestNetwork.with { net in
            try net.installer(.iptables(.nft)).install(RedirectPlan(spec: try spec([(.proxyUID, "1337")])))
            try sh(
                "ip", "netns", "exec", net.pod, "iptables-nft", "-t", "nat", "-D", "WEIR_OUTPUT", "-m", "owner",
                "--uid-owner", "1337",
                "-m", "comment", "--comment", "weir: out: never capture proxy uid 1337", "-j", "RETURN")
            try sh(
                "ip", "netns", "exec", net.pod, "ip6tables-nft", "-t", "nat", "-D", "OUTPUT", "-m", "comment",
                "--comment", "weir: capture", "-j", "WEIR_OUTPUT")
            let report = try net.installer(.iptables(.auto)).check(spec: nil, probe: false)
            #expect(report.backend == "iptables-nft")
            #expect(
                report.problems.contains { $0.kind == .missingRule && $0.detail.contains("uid 1337") },
                "\(report.problems)")
            #expect(
                report.problems.contains { $0.kind == .missingJump && $0.detail.contains("ip6tables") },
                "\(report.problems)")
        }
    }

    @Test("flags override the stored spec: a different port is reported")
    func flagsOverride() throws {
        try TestNetwork.with { net in
            try net.installer(.nftables).install(RedirectPlan(spec: try spec()))
            let report = try net.installer(.nftables).check(spec: try spec([(.outboundPort, "16001")]), probe: false)
            #expect(report.specSource == "flags")
            #expect(!report.problems.isEmpty)
        }
    }

    @Test("weir check exits 0 healthy and 3 with problems, and --json is machine-readable")
    func cli() throws {
        try TestNetwork.with { net in
            let ns = "/run/netns/\(net.pod)"
            #expect(try sh(weirBinary, "init", "--netns", ns).status == 0)
            let ok = try sh(weirBinary, "check", "--netns", ns, "--probe", "--json", allowFailure: true)
            #expect(ok.status == 0, "\(ok.output)")
            let json = try JSONSerialization.jsonObject(with: Data(ok.output.utf8)) as? [String: Any]
            #expect(json?["healthy"] as? Bool == true)
            try sh("ip", "netns", "exec", net.pod, "nft", "delete", "chain", "inet", "weir", "spec")
            let bad = try sh(weirBinary, "check", "--netns", ns, allowFailure: true)
            #expect(bad.status == 3, "\(bad.output)")
            #expect(bad.output.contains("spec"))
            #expect(try sh(weirBinary, "clean", "--netns", ns).status == 0)
            #expect(try sh(weirBinary, "clean", "--netns", ns).status == 0)
        }
    }
}
