import CNetfilter
import Foundation
import Testing
@testable import WeirCapture
@testable import WeirNetfilter
import WeirNetns
import WeirTestSupport

func spec(_ pairs: [(CaptureSpecInput.Key, String)] = []) throws -> CaptureSpec {
    var input = CaptureSpecInput()
    for (k, v) in pairs { input.add(k, v, from: k.flag) }
    return try input.validate()
}

let bothBackends: [BackendChoice] = [.nftables, .iptables(.nft)]

/// Real TCP through weir's rules, in throwaway namespaces, on both backends.
@Suite("Capture in namespaces", .enabled(if: canRunNamespaceTests))
struct CaptureTests {
    @Test(
        "outbound TCP lands on the outbound port with its original destination", arguments: bothBackends,
        IPFamily.allCases)
    func outbound(_ backend: BackendChoice, _ family: IPFamily) throws {
        try TestNetwork.with { net in
            try net.installer(backend).install(RedirectPlan(spec: try spec()))
            let capture = try TestSockets.listen(net.podNamespace, family, port: 15001)
            defer { close(capture) }
            let landing = try TestSockets.connect(
                from: net.podNamespace, family, to: TestNetwork.serverAddress(family), port: 8080, capture: capture,
                server: nil)
            #expect(landing == .captured(address: TestNetwork.serverAddress(family), port: 8080))
        }
    }

    @Test(
        "inbound TCP lands on the inbound port with its original destination", arguments: bothBackends,
        IPFamily.allCases)
    func inbound(_ backend: BackendChoice, _ family: IPFamily) throws {
        try TestNetwork.with { net in
            try net.installer(backend).install(RedirectPlan(spec: try spec()))
            let capture = try TestSockets.listen(net.podNamespace, family, port: 15006)
            defer { close(capture) }
            let landing = try TestSockets.connect(
                from: net.serverNamespace, family, to: TestNetwork.podAddress(family), port: 9080, capture: capture,
                server: nil)
            #expect(landing == .captured(address: TestNetwork.podAddress(family), port: 9080))
        }
    }

    /// Each exclusion sends the connection straight to the server, while the same connection without it is captured.
    struct Exclusion: Sendable, CustomTestStringConvertible {
        let name: String
        let flags: [(CaptureSpecInput.Key, String)]
        let port: UInt16
        var uid: UInt32? = nil
        var gid: UInt32? = nil
        var mark: UInt32? = nil
        var testDescription: String { name }
    }

    static let exclusions: [Exclusion] = [
        .init(name: "excluded port", flags: [(.outboundExcludePort, "7000-7010")], port: 7005),
        .init(name: "excluded CIDR", flags: [(.outboundExcludeCIDR, "198.18.0.0/24,fd00:0:0:1::/64")], port: 8080),
        .init(name: "not an included CIDR", flags: [(.outboundIncludeCIDR, "10.0.0.0/8,fd00:9::/32")], port: 8080),
        .init(name: "not an included port", flags: [(.outboundIncludePort, "443")], port: 8080),
        .init(name: "proxy uid", flags: [(.proxyUID, "1337")], port: 8080, uid: 1337),
        .init(name: "proxy gid", flags: [(.proxyGID, "1338")], port: 8080, uid: 4242, gid: 1338),
        .init(name: "bypass mark", flags: [(.bypassMark, "0x77")], port: 8080, mark: 0x77),
        .init(name: "a capture port itself", flags: [], port: 15006),
        // Eight or more entries make a set: the same exclusions, looked up instead of matched rule by rule.
        .init(
            name: "excluded ports (a set)",
            flags: [(.outboundExcludePort, "7000-7010,7100,7200,7300,7400,7500,7600,7700")], port: 7005),
        .init(
            name: "excluded CIDRs (sets)",
            flags: [(.outboundExcludeCIDR, LongLists.networks(containing: ["198.18.0.0/24", "fd00:0:0:1::/64"]))],
            port: 8080),
        .init(
            name: "not an included CIDR (sets)",
            flags: [(.outboundIncludeCIDR, LongLists.networks(containing: ["10.0.0.0/8", "fd00:9::/32"]))],
            port: 8080),
        .init(
            name: "not an included port (a set)", flags: [(.outboundIncludePort, "443,444,445,446,447,448,449,450")],
            port: 8080),
        .init(
            name: "proxy uid (a set)", flags: [(.proxyUID, "1330,1331,1332,1333,1334,1335,1336,1337")], port: 8080,
            uid: 1337),
        .init(
            name: "proxy gid (a set)", flags: [(.proxyGID, "1338,1339,1340,1341,1342,1343,1344,1345")], port: 8080,
            uid: 4242, gid: 1338),
    ]

    @Test(
        "long include lists (sets) capture what they include and nothing else", arguments: bothBackends,
        IPFamily.allCases)
    func includeSets(_ backend: BackendChoice, _ family: IPFamily) throws {
        let flags: [(CaptureSpecInput.Key, String)] = [
            (.outboundIncludeCIDR, LongLists.networks(containing: ["198.18.0.0/24", "fd00:0:0:1::/64"])),
            (.outboundIncludePort, "8080,8081,8082,8083,8084,8085,8086,8087"),
        ]
        try TestNetwork.with { net in
            let plan = RedirectPlan(spec: try spec(flags))
            #expect(plan.sets.count == 3)
            try net.installer(backend).install(plan)
            let capture = try TestSockets.listen(net.podNamespace, family, port: 15001)
            defer { close(capture) }
            for (port, captured) in [(UInt16(8083), true), (9999, false)] {
                let server = try TestSockets.listen(net.serverNamespace, family, port: port)
                defer { close(server) }
                let landing = try TestSockets.connect(
                    from: net.podNamespace, family, to: TestNetwork.serverAddress(family), port: port,
                    capture: capture, server: server)
                #expect(
                    landing == (captured ? .captured(address: TestNetwork.serverAddress(family), port: port) : .direct),
                    "port \(port)")
            }
        }
    }

    @Test("every exclusion really goes direct", arguments: bothBackends, exclusions)
    func exclusion(_ backend: BackendChoice, _ x: Exclusion) throws {
        try TestNetwork.with { net in
            try net.installer(backend).install(RedirectPlan(spec: try spec(x.flags)))
            for family in IPFamily.allCases {
                let capture = try TestSockets.listen(net.podNamespace, family, port: 15001)
                defer { close(capture) }
                let server = try TestSockets.listen(net.serverNamespace, family, port: x.port)
                defer { close(server) }
                let landing = try TestSockets.connect(
                    from: net.podNamespace, family, to: TestNetwork.serverAddress(family), port: x.port,
                    capture: capture, server: server, uid: x.uid, gid: x.gid, mark: x.mark)
                #expect(landing == .direct, "\(family)")
                // The same connection from an ordinary process, without the mark, is captured (so the test can fail).
                if x.uid != nil || x.mark != nil {
                    let other = try TestSockets.connect(
                        from: net.podNamespace, family, to: TestNetwork.serverAddress(family), port: x.port,
                        capture: capture, server: server, uid: x.uid == nil ? nil : 4000, gid: x.uid == nil ? nil : 4000
                    )
                    #expect(
                        other == .captured(address: TestNetwork.serverAddress(family), port: x.port),
                        "\(family) control")
                }
            }
        }
    }

    @Test("inbound exclusions (port, source) go direct", arguments: bothBackends)
    func inboundExclusions(_ backend: BackendChoice) throws {
        try TestNetwork.with { net in
            try net.installer(backend).install(
                RedirectPlan(spec: try spec([(.inboundExcludePort, "9443"), (.inboundPorts, "*")])))
            for family in IPFamily.allCases {
                let capture = try TestSockets.listen(net.podNamespace, family, port: 15006)
                defer { close(capture) }
                let app = try TestSockets.listen(net.podNamespace, family, port: 9443)
                defer { close(app) }
                #expect(
                    try TestSockets.connect(
                        from: net.serverNamespace, family, to: TestNetwork.podAddress(family), port: 9443,
                        capture: capture, server: app) == .direct)
            }
        }
        try TestNetwork.with { net in
            try net.installer(backend).install(
                RedirectPlan(spec: try spec([(.inboundExcludeSource, "198.18.0.2/32,fd00:0:0:1::2/128")])))
            for family in IPFamily.allCases {
                let capture = try TestSockets.listen(net.podNamespace, family, port: 15006)
                defer { close(capture) }
                let app = try TestSockets.listen(net.podNamespace, family, port: 9080)
                defer { close(app) }
                #expect(
                    try TestSockets.connect(
                        from: net.serverNamespace, family, to: TestNetwork.podAddress(family), port: 9080,
                        capture: capture, server: app) == .direct)
            }
        }
    }

    @Test(
        "TPROXY delivers inbound with the original destination as the local address", arguments: bothBackends,
        IPFamily.allCases)
    func tproxy(_ backend: BackendChoice, _ family: IPFamily) throws {
        try TestNetwork.with { net in
            try net.installer(backend).install(RedirectPlan(spec: try spec([(.mode, "tproxy")])))
            let capture = try TestSockets.listen(net.podNamespace, family, port: 15006, transparent: true)
            defer { close(capture) }
            let landing = try TestSockets.connect(
                from: net.serverNamespace, family, to: TestNetwork.podAddress(family), port: 9080, capture: capture,
                server: nil, tproxy: true)
            #expect(landing == .captured(address: TestNetwork.podAddress(family), port: 9080))
        }
    }

    @Test("DNS capture sends UDP and TCP port 53 to the DNS port, except the proxy's own")
    func dns() throws {
        try TestNetwork.with { net in
            try net.installer(.nftables).install(
                RedirectPlan(spec: try spec([(.dnsPort, "15053"), (.proxyUID, "1337")])))
            let capture = try TestSockets.listen(net.podNamespace, .ipv4, port: 15053)
            defer { close(capture) }
            #expect(
                try TestSockets.connect(
                    from: net.podNamespace, .ipv4, to: TestNetwork.serverV4, port: 53, capture: capture, server: nil)
                    == .captured(address: TestNetwork.serverV4, port: 53))
            let server = try TestSockets.listen(net.serverNamespace, .ipv4, port: 53)
            defer { close(server) }
            #expect(
                try TestSockets.connect(
                    from: net.podNamespace, .ipv4, to: TestNetwork.serverV4, port: 53, capture: capture, server: server,
                    uid: 1337) == .direct)
            // UDP: a datagram to the server's port 53 arrives at the DNS port in the pod.
            let received: Bool = try net.podNamespace.run {
                let rx = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
                defer { close(rx) }
                let addr = SocketAddressBytes.ipv4([0, 0, 0, 0], port: 15053)
                _ = withUnsafeBytes(of: addr.storage) {
                    bind(rx, $0.baseAddress!.assumingMemoryBound(to: sockaddr.self), addr.length)
                }
                let tx = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
                defer { close(tx) }
                let dst = SocketAddressBytes.ipv4(TestNetwork.serverV4, port: 53)
                let payload: [UInt8] = Array("weir-dns-probe".utf8)
                _ = withUnsafeBytes(of: dst.storage) {
                    sendto(
                        tx, payload, payload.count, 0, $0.baseAddress!.assumingMemoryBound(to: sockaddr.self),
                        dst.length)
                }
                var p = pollfd(fd: rx, events: Int16(POLLIN), revents: 0)
                guard poll(&p, 1, 2000) == 1 else { return false }
                var buf = [UInt8](repeating: 0, count: 64)
                let n = recv(rx, &buf, buf.count, 0)
                return n == payload.count && Array(buf[0..<n]) == payload
            }
            #expect(received)
        }
    }

    @Test("iptables auto mode installs into the variant that already holds rules (legacy here), and it works")
    func legacyAuto() throws {
        try TestNetwork.with { net in
            try sh(
                "ip", "netns", "exec", net.pod, "iptables-legacy", "-t", "nat", "-A", "POSTROUTING", "-o", "lo", "-j",
                "RETURN")
            try net.installer(.iptables(.auto)).install(RedirectPlan(spec: try spec()))
            let legacy = try sh("ip", "netns", "exec", net.pod, "iptables-legacy-save", "-t", "nat").output
            #expect(legacy.contains("-A WEIR_OUTPUT"))
            #expect(!(try net.iptablesSave()).contains("WEIR_OUTPUT"))
            let capture = try TestSockets.listen(net.podNamespace, .ipv4, port: 15001)
            defer { close(capture) }
            #expect(
                try TestSockets.connect(
                    from: net.podNamespace, .ipv4, to: TestNetwork.serverV4, port: 8080, capture: capture, server: nil)
                    == .captured(address: TestNetwork.serverV4, port: 8080))
            let report = try net.installer(.iptables(.auto)).check(spec: nil, probe: false)
            #expect(report.backend == "iptables-legacy")
            // The foreign legacy rule is still reported; weir's own legacy chains are not.
            #expect(report.problems.map(\.kind) == [.legacyRules], "\(report.problems)")
            #expect(report.problems.first?.detail.contains("1 nat rule") == true)
            #expect(try net.installer(.iptables(.auto)).clean())
            #expect(
                !(try sh("ip", "netns", "exec", net.pod, "iptables-legacy-save", "-t", "nat").output.contains("WEIR")))
        }
    }

    @Test("an IPv4-only spec leaves IPv6 alone")
    func ipv4Only() throws {
        try TestNetwork.with { net in
            try net.installer(.nftables).install(RedirectPlan(spec: try spec([(.ipv6, "false")])))
            let capture = try TestSockets.listen(net.podNamespace, .ipv6, port: 15001)
            defer { close(capture) }
            let server = try TestSockets.listen(net.serverNamespace, .ipv6, port: 8080)
            defer { close(server) }
            #expect(
                try TestSockets.connect(
                    from: net.podNamespace, .ipv6, to: TestNetwork.serverV6, port: 8080, capture: capture,
                    server: server) == .direct)
        }
    }
}

@Suite("Install, re-apply, failure, clean", .enabled(if: canRunNamespaceTests))
struct LifecycleTests {
    @Test("re-applying gives the identical ruleset")
    func reapply() throws {
        try TestNetwork.with { net in
            let plan = RedirectPlan(spec: try spec([(.proxyUID, "1337"), (.dnsPort, "15053")]))
            try net.installer(.nftables).install(plan)
            let first = try net.weirRuleset()
            try net.installer(.nftables).install(plan)
            #expect(try net.weirRuleset() == first)
            #expect(first.count > 10)
        }
    }

    @Test("re-applying with iptables gives identical chains and one jump")
    func reapplyIptables() throws {
        try TestNetwork.with { net in
            let plan = RedirectPlan(spec: try spec([(.proxyUID, "1337")]))
            try net.installer(.iptables(.nft)).install(plan)
            let first = try net.iptablesSave()
            try net.installer(.iptables(.nft)).install(plan)
            #expect(try net.iptablesSave() == first)
            #expect(first.components(separatedBy: "-j WEIR_OUTPUT").count == 2)
        }
    }

    @Test("an apply refused half-way leaves the previous ruleset intact")
    func atomic() throws {
        try TestNetwork.with { net in
            try net.installer(.nftables).install(RedirectPlan(spec: try spec()))
            let before = try net.weirRuleset()
            let next = RedirectPlan(spec: try spec([(.proxyUID, "1337"), (.outboundPort, "16001")]))
            var batch = NftablesBackend().transaction(for: next, replacing: NetfilterFamily.weirFamilies)
            // After the fourth rule of the new table: the deletes, the table, its chains and some rules came first.
            let fourthRule = batch.messages.indices.filter {
                batch.messages[$0].type == UInt8(NFT_MSG_NEWRULE.rawValue)
            }[3]
            batch.insert(failingRule(next, chain: "output"), at: fourthRule + 1)
            let refused = batch
            #expect {
                try net.podNamespace.run { try NftablesBackend().commit(refused) }
            } throws: { error in
                "\(error)".contains("a rule jumping to a missing chain")
            }
            #expect(try net.weirRuleset() == before)
        }
    }

    @Test("a refused first install leaves no table behind")
    func atomicFirstInstall() throws {
        try TestNetwork.with { net in
            let plan = RedirectPlan(spec: try spec())
            var batch = NftablesBackend().transaction(for: plan, replacing: [])
            batch.insert(failingRule(plan, chain: "output"), at: batch.messages.count)
            let refused = batch
            #expect(throws: ApplyError.self) {
                try net.podNamespace.run { try NftablesBackend().commit(refused) }
            }
            #expect(try net.weirRuleset().isEmpty)
        }
    }

    @Test("weir-init installs what weir init installs, and refuses what it refuses, with the same exit codes")
    func smallInitExecutable() throws {
        let flags = ["--proxy-uid", "1337", "--outbound-exclude-cidr=169.254.169.254", "--inbound-ports", "8080,9000"]
        try TestNetwork.with { net in
            let ns = "/run/netns/\(net.pod)"
            let big = try sh([weirBinary, "init", "--netns", ns] + flags, allowFailure: true)
            #expect(big.status == 0, "\(big.output)")
            let bigRules = try sh("ip", "netns", "exec", net.pod, "nft", "list", "ruleset").output
            _ = try sh(weirBinary, "clean", "--netns", ns)
            // Also as an App Mesh init container would run it: the word init first, APPMESH_* beside WEIR_*.
            let small = try sh([weirInitBinary, "init", "--netns", ns] + flags, allowFailure: true)
            #expect(small.status == 0 && small.output.hasPrefix("weir: installed"), "\(small.output)")
            #expect(try sh("ip", "netns", "exec", net.pod, "nft", "list", "ruleset").output == bigRules)
            #expect(try sh(weirBinary, "check", "--netns", ns, "--probe").status == 0)
            let appMesh = try sh(
                [
                    "env", "APPMESH_IGNORE_UID=1337", "APPMESH_APP_PORTS=8080", "WEIR_OUTBOUND_PORT=15002",
                    weirInitBinary,
                    "--netns", ns, "--quiet",
                ], allowFailure: true)
            #expect(appMesh.status == 0 && appMesh.output.isEmpty, "\(appMesh.output)")
            let spec = try sh(weirBinary, "check", "--netns", ns).output
            #expect(spec.contains("outbound-port=15002") && spec.contains("proxy-uid=1337"), "\(spec)")
            let before = try sh("ip", "netns", "exec", net.pod, "nft", "list", "ruleset").output
            for (args, env, problem) in [
                (["--outbound-port", "0"], [String](), "--outbound-port '0'"),
                (["--outbound-prot", "1"], [], "--outbound-prot: unknown option"),
                (["--inbound-port", "1", "--inbound-port=2"], [], "--inbound-port is given twice"),
                (["--backend", "pf"], [], "--backend 'pf'"),
                (["--iptables-mode", "both"], [], "--iptables-mode 'both'"),
                (["--netns", "/etc/hostname"], [], "/etc/hostname"),
                (["--proxy-uid"], [], "--proxy-uid needs a value"),
                (["--netns", "--quiet"], [], "--netns needs a value"),
                (["stray"], [], "'stray': unexpected argument"),
                ([], ["WEIR_PROXYUID=1"], "WEIR_PROXYUID=1: unknown variable"),
                ([], ["APPMESH_APP_PORTS=80800"], "APPMESH_APP_PORTS"),
            ] {
                let target = args.contains("--netns") ? [] : ["--netns", ns]
                let r = try sh(["env"] + env + [weirInitBinary] + target + args, allowFailure: true)
                #expect(r.status == 2 && r.output.contains(problem), "\(args) \(env): \(r.status) \(r.output)")
                let big = try sh(["env"] + env + [weirBinary, "init"] + target + args, allowFailure: true)
                #expect(big.status == 2, "weir init \(args) \(env): \(big.status) \(big.output)")
            }
            #expect(try sh("ip", "netns", "exec", net.pod, "nft", "list", "ruleset").output == before)
            let badHelp = try sh(["env", "WEIR_BOGUS=1", weirInitBinary, "--help"], allowFailure: true)
            #expect(badHelp.status == 2, "\(badHelp.output)")
            let help = try sh([weirInitBinary, "--help"], allowFailure: true)
            #expect(help.status == 0 && help.output.contains("--outbound-exclude-cidr VALUE"), "\(help.output)")
        }
    }

    @Test(
        "long lists become sets: 1,000 networks, 1,000 ports and 100 ids apply, re-apply and check healthy",
        arguments: [true, false])
    func longLists(_ ipv6: Bool) throws {
        let args = LongLists.arguments(ipv6: ipv6)
        let plan = RedirectPlan(spec: try spec(args))
        #expect(
            plan.sets.map(\.name).sorted()
                == (ipv6
                    ? ["in_exclude_v4", "out_exclude_ports", "out_exclude_v4", "out_exclude_v6", "proxy_uids"]
                    : ["in_exclude_v4", "out_exclude_ports", "out_exclude_v4", "proxy_uids"]))
        let flags = args.map { "\($0.0.flag)=\($0.1)" }
        try TestNetwork.with { net in
            for _ in 0..<2 {
                let installed = try sh(
                    [weirBinary, "init", "--netns", "/run/netns/\(net.pod)"] + flags, allowFailure: true)
                #expect(installed.status == 0, "\(installed.output)")
                let checked = try sh([weirBinary, "check", "--netns", "/run/netns/\(net.pod)"], allowFailure: true)
                #expect(checked.status == 0, "\(checked.output.prefix(2000))")
            }
            // One lookup per list: the rule count does not grow with the lists.
            let rules = try net.podNamespace.run { try NftablesBackend().readRuleset() }.rules.filter {
                $0.table == "weir" && $0.chain != "spec"
            }
            #expect(rules.count < 40, "\(rules.count) rules")
            // nft itself reads the sets back with their types and elements.
            let family = ipv6 ? "inet" : "ip"
            let listed = try sh("ip", "netns", "exec", net.pod, "nft", "list", "set", family, "weir", "out_exclude_v4")
                .output
            #expect(
                listed.contains("type ipv4_addr") && listed.contains("flags interval")
                    && listed.contains("10.0.4.0/24"), "\(listed.prefix(400))")
            let ports = try sh(
                "ip", "netns", "exec", net.pod, "nft", "list", "set", family, "weir", "out_exclude_ports"
            ).output
            #expect(ports.contains("type inet_service") && ports.contains("21998"), "\(ports.prefix(400))")
            let uids = try sh("ip", "netns", "exec", net.pod, "nft", "list", "set", family, "weir", "proxy_uids").output
            #expect(uids.contains("type uid") && uids.contains("1099"), "\(uids.prefix(400))")
            // An element removed behind weir's back is found.
            try sh("ip", "netns", "exec", net.pod, "nft", "delete", "element", family, "weir", "proxy_uids", "{ 1042 }")
            let report = try net.installer(.nftables).check(spec: nil, probe: false)
            #expect(
                report.problems.map(\.kind) == [.alteredSet] && report.problems[0].detail.contains("1042"),
                "\(report.problems)")
        }
    }

    @Test("clean removes tables, chains and policy routes, and succeeds when there is nothing", arguments: bothBackends)
    func clean(_ backend: BackendChoice) throws {
        try TestNetwork.with { net in
            try net.installer(backend).install(RedirectPlan(spec: try spec([(.mode, "tproxy")])))
            #expect(try net.podNamespace.run { try PolicyRouting().list() }.count == 4)
            #expect(try net.installer(backend).clean())
            #expect(try net.weirRuleset().isEmpty)
            #expect(try net.podNamespace.run { try PolicyRouting().list() }.isEmpty)
            #expect(!(try net.iptablesSave(.ipv4)).contains("WEIR"))
            #expect(!(try net.iptablesSave(.ipv6)).contains("WEIR"))
            #expect(try !net.installer(backend).clean())
        }
    }

    @Test("switching from tproxy to redirect removes the TPROXY chain and routes")
    func switchMode() throws {
        for backend in bothBackends {
            try TestNetwork.with { net in
                try net.installer(backend).install(RedirectPlan(spec: try spec([(.mode, "tproxy")])))
                try net.installer(backend).install(RedirectPlan(spec: try spec()))
                #expect(try net.podNamespace.run { try PolicyRouting().list() }.isEmpty)
                #expect(!(try net.iptablesSave()).contains("WEIR_TPROXY"))
                #expect(!(try net.weirRuleset()).contains { $0.contains("divert") })
            }
        }
    }

    @Test(
        "bad input exits 2 and leaves the ruleset byte-for-byte unchanged",
        arguments: [
            ["--outbound-port", "0"], ["--proxy-uid", "envoy"], ["--mode", "nat"],
            ["--outbound-exclude-cidr", "10.0.0.1/8"],
            ["--inbound-port", "15001"], ["--backend", "ebpf"], ["--netns", "/nonexistent"],
        ])
    func badInput(_ args: [String]) throws {
        try TestNetwork.with { net in
            try net.installer(.nftables).install(RedirectPlan(spec: try spec([(.proxyUID, "1337")])))
            let before = try sh("ip", "netns", "exec", net.pod, "nft", "list", "ruleset").output
            let netnsArgs = args.first == "--netns" ? [] : ["--netns", "/run/netns/\(net.pod)"]
            let r = try sh([weirBinary, "init"] + netnsArgs + args, allowFailure: true)
            #expect(r.status == 2, "\(r.output)")
            #expect(r.output.contains(args[0]), "message does not name \(args[0]): \(r.output)")
            #expect(try sh("ip", "netns", "exec", net.pod, "nft", "list", "ruleset").output == before)
        }
    }

    @Test(
        "the nft text rendering installs the same rules as the netlink backend",
        arguments: ["", "tproxy", "rich", "sets"])
    func nftTextMatchesNetlink(_ variant: String) throws {
        let flags: [(CaptureSpecInput.Key, String)] =
            switch variant {
            case "tproxy":
                [(.mode, "tproxy"), (.inboundPorts, "8080,9000-9100"), (.inboundExcludeSource, "198.18.7.0/24")]
            case "sets":
                LongLists.arguments(ipv6: true) + [
                    (.outboundIncludePort, "80,81,82,83,84,85,86,8000-8100"),
                    (.inboundPorts, "8080,8081,8082,8083,8084,8085,8086,9000-9100"),
                ]
            case "rich":
                [
                    (.proxyUID, "1337"), (.outboundIncludeCIDR, "10.0.0.0/8,fd00::/8"),
                    (.outboundExcludeCIDR, "10.96.0.1"),
                    (.outboundIncludePort, "80,8000-8100"), (.dnsPort, "15053"), (.bypassMark, "0x10"),
                ]
            default: []
            }
        try TestNetwork.with { net in
            let plan = RedirectPlan(spec: try spec(flags))
            try sh("ip", "netns", "exec", net.pod, "nft", "-f", "-", input: NftRendering.render(plan))
            let report = try net.installer(.nftables).check(spec: nil, probe: false)
            #expect(report.problems.filter { $0.kind != .missingPolicyRoute }.isEmpty, "\(report.problems)")
        }
    }
}

/// A rule the kernel must refuse (it jumps to a chain that does not exist): proves a batch lands whole or not at all.
func failingRule(_ plan: RedirectPlan, chain: String) -> NftMessage {
    let rule = nftnl_rule_alloc()!
    defer { nftnl_rule_free(rule) }
    nftnl_rule_set_str(rule, UInt16(NFTNL_RULE_TABLE.rawValue), RedirectPlan.tableName)
    nftnl_rule_set_str(rule, UInt16(NFTNL_RULE_CHAIN.rawValue), chain)
    nftnl_rule_set_u32(rule, UInt16(NFTNL_RULE_FAMILY.rawValue), UInt32(NftablesObjects.family(plan)))
    let e = nftnl_expr_alloc("immediate")!
    nftnl_expr_set_u32(e, UInt16(NFTNL_EXPR_IMM_DREG), UInt32(NFT_REG_VERDICT.rawValue))
    nftnl_expr_set_u32(e, UInt16(NFTNL_EXPR_IMM_VERDICT), UInt32(bitPattern: NFT_JUMP.rawValue))
    nftnl_expr_set_str(e, UInt16(NFTNL_EXPR_IMM_CHAIN), "no-such-chain")
    nftnl_rule_add_expr(rule, e)
    var batch = NftTransaction()
    batch.add(
        NFT_MSG_NEWRULE, family: NftablesObjects.family(plan), flags: NLM_F_CREATE | NLM_F_APPEND,
        what: "a rule jumping to a missing chain"
    ) { nftnl_rule_nlmsg_build_payload($0, rule) }
    return batch.messages[0]
}

/// Long lists for the set tests: 1,000 networks (half IPv6 when dual stack), 1,000 excluded ports, 100 uids.
enum LongLists {
    /// Eight networks or more (a set): `extra` and filler from 203.0.113.0/24 and 2001:db8::/32.
    static func networks(containing extra: [String]) -> String {
        (extra + (0..<4).map { "203.0.113.\($0 * 16)/28" } + (0..<4).map { "2001:db8:\($0)::/48" }).joined(
            separator: ",")
    }

    static func arguments(ipv6: Bool) -> [(CaptureSpecInput.Key, String)] {
        var args: [(CaptureSpecInput.Key, String)] = []
        for i in 0..<1000 {
            if ipv6 && i % 2 == 1 {
                args.append((.outboundExcludeCIDR, "fd00:\(String(i, radix: 16))::/64"))
            } else {
                args.append((.outboundExcludeCIDR, "10.\(i / 128).\((i % 128) * 2).0/24"))
            }
        }
        // Ports 20000-21999 every other one: 1,000 ports that do not merge into ranges.
        for i in 0..<1000 { args.append((.outboundExcludePort, "\(20000 + 2 * i)")) }
        for i in 0..<100 { args.append((.proxyUID, "\(1000 + i)")) }
        for i in 0..<10 { args.append((.inboundExcludeSource, "198.19.\(i).0/24")) }
        args.append((.ipv6, ipv6 ? "true" : "false"))
        return args
    }
}
