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
    @Test("outbound TCP lands on the outbound port with its original destination", arguments: bothBackends, IPFamily.allCases)
    func outbound(_ backend: BackendChoice, _ family: IPFamily) throws {
        try TestNetwork.with { net in
            try net.installer(backend).install(RedirectPlan(spec: try spec()))
            let capture = try TestSockets.listen(net.podNamespace, family, port: 15001)
            defer { close(capture) }
            let landing = try TestSockets.connect(from: net.podNamespace, family, to: TestNetwork.serverAddress(family), port: 8080, capture: capture, server: nil)
            #expect(landing == .captured(address: TestNetwork.serverAddress(family), port: 8080))
        }
    }

    @Test("inbound TCP lands on the inbound port with its original destination", arguments: bothBackends, IPFamily.allCases)
    func inbound(_ backend: BackendChoice, _ family: IPFamily) throws {
        try TestNetwork.with { net in
            try net.installer(backend).install(RedirectPlan(spec: try spec()))
            let capture = try TestSockets.listen(net.podNamespace, family, port: 15006)
            defer { close(capture) }
            let landing = try TestSockets.connect(from: net.serverNamespace, family, to: TestNetwork.podAddress(family), port: 9080, capture: capture, server: nil)
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
    ]

    @Test("every exclusion really goes direct", arguments: bothBackends, exclusions)
    func exclusion(_ backend: BackendChoice, _ x: Exclusion) throws {
        try TestNetwork.with { net in
            try net.installer(backend).install(RedirectPlan(spec: try spec(x.flags)))
            for family in IPFamily.allCases {
                let capture = try TestSockets.listen(net.podNamespace, family, port: 15001)
                defer { close(capture) }
                let server = try TestSockets.listen(net.serverNamespace, family, port: x.port)
                defer { close(server) }
                let landing = try TestSockets.connect(from: net.podNamespace, family, to: TestNetwork.serverAddress(family), port: x.port,
                                                      capture: capture, server: server, uid: x.uid, gid: x.gid, mark: x.mark)
                #expect(landing == .direct, "\(family)")
                // The same connection from an ordinary process, without the mark, is captured (so the test can fail).
                if x.uid != nil || x.mark != nil {
                    let other = try TestSockets.connect(from: net.podNamespace, family, to: TestNetwork.serverAddress(family), port: x.port,
                                                        capture: capture, server: server, uid: x.uid == nil ? nil : 4000, gid: x.uid == nil ? nil : 4000)
                    #expect(other == .captured(address: TestNetwork.serverAddress(family), port: x.port), "\(family) control")
                }
            }
        }
    }

    @Test("inbound exclusions (port, source) go direct", arguments: bothBackends)
    func inboundExclusions(_ backend: BackendChoice) throws {
        try TestNetwork.with { net in
            try net.installer(backend).install(RedirectPlan(spec: try spec([(.inboundExcludePort, "9443"), (.inboundPorts, "*")])))
            for family in IPFamily.allCases {
                let capture = try TestSockets.listen(net.podNamespace, family, port: 15006)
                defer { close(capture) }
                let app = try TestSockets.listen(net.podNamespace, family, port: 9443)
                defer { close(app) }
                #expect(try TestSockets.connect(from: net.serverNamespace, family, to: TestNetwork.podAddress(family), port: 9443, capture: capture, server: app) == .direct)
            }
        }
        try TestNetwork.with { net in
            try net.installer(backend).install(RedirectPlan(spec: try spec([(.inboundExcludeSource, "198.18.0.2/32,fd00:0:0:1::2/128")])))
            for family in IPFamily.allCases {
                let capture = try TestSockets.listen(net.podNamespace, family, port: 15006)
                defer { close(capture) }
                let app = try TestSockets.listen(net.podNamespace, family, port: 9080)
                defer { close(app) }
                #expect(try TestSockets.connect(from: net.serverNamespace, family, to: TestNetwork.podAddress(family), port: 9080, capture: capture, server: app) == .direct)
            }
        }
    }

    @Test("TPROXY delivers inbound with the original destination as the local address", arguments: bothBackends, IPFamily.allCases)
    func tproxy(_ backend: BackendChoice, _ family: IPFamily) throws {
        try TestNetwork.with { net in
            try net.installer(backend).install(RedirectPlan(spec: try spec([(.mode, "tproxy")])))
            let capture = try TestSockets.listen(net.podNamespace, family, port: 15006, transparent: true)
            defer { close(capture) }
            let landing = try TestSockets.connect(from: net.serverNamespace, family, to: TestNetwork.podAddress(family), port: 9080, capture: capture, server: nil, tproxy: true)
            #expect(landing == .captured(address: TestNetwork.podAddress(family), port: 9080))
        }
    }

    @Test("DNS capture sends UDP and TCP port 53 to the DNS port, except the proxy's own")
    func dns() throws {
        try TestNetwork.with { net in
            try net.installer(.nftables).install(RedirectPlan(spec: try spec([(.dnsPort, "15053"), (.proxyUID, "1337")])))
            let capture = try TestSockets.listen(net.podNamespace, .ipv4, port: 15053)
            defer { close(capture) }
            #expect(try TestSockets.connect(from: net.podNamespace, .ipv4, to: TestNetwork.serverV4, port: 53, capture: capture, server: nil)
                    == .captured(address: TestNetwork.serverV4, port: 53))
            let server = try TestSockets.listen(net.serverNamespace, .ipv4, port: 53)
            defer { close(server) }
            #expect(try TestSockets.connect(from: net.podNamespace, .ipv4, to: TestNetwork.serverV4, port: 53, capture: capture, server: server, uid: 1337) == .direct)
            // UDP: a datagram to the server's port 53 arrives at the DNS port in the pod.
            let received: Bool = try net.podNamespace.run {
                let rx = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
                defer { close(rx) }
                var (addr, len) = ProbeSocket.socketAddress(family: .ipv4, address: [0, 0, 0, 0], port: 15053)
                _ = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(rx, $0, len) } }
                let tx = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
                defer { close(tx) }
                var (dst, dlen) = ProbeSocket.socketAddress(family: .ipv4, address: TestNetwork.serverV4, port: 53)
                let payload: [UInt8] = Array("weir-dns-probe".utf8)
                _ = withUnsafePointer(to: &dst) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { sendto(tx, payload, payload.count, 0, $0, dlen) } }
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
            try sh("ip", "netns", "exec", net.pod, "iptables-legacy", "-t", "nat", "-A", "POSTROUTING", "-o", "lo", "-j", "RETURN")
            try net.installer(.iptables(.auto)).install(RedirectPlan(spec: try spec()))
            let legacy = try sh("ip", "netns", "exec", net.pod, "iptables-legacy-save", "-t", "nat").output
            #expect(legacy.contains("-A WEIR_OUTPUT"))
            #expect(!(try net.iptablesSave()).contains("WEIR_OUTPUT"))
            let capture = try TestSockets.listen(net.podNamespace, .ipv4, port: 15001)
            defer { close(capture) }
            #expect(try TestSockets.connect(from: net.podNamespace, .ipv4, to: TestNetwork.serverV4, port: 8080, capture: capture, server: nil)
                    == .captured(address: TestNetwork.serverV4, port: 8080))
            let report = try net.installer(.iptables(.auto)).check(spec: nil, probe: false)
            #expect(report.backend == "iptables-legacy")
            // The foreign legacy rule is still reported; weir's own legacy chains are not.
            #expect(report.problems.map(\.kind) == [.legacyRules], "\(report.problems)")
            #expect(report.problems.first?.detail.contains("1 nat rule") == true)
            #expect(try net.installer(.iptables(.auto)).clean())
            #expect(!(try sh("ip", "netns", "exec", net.pod, "iptables-legacy-save", "-t", "nat").output.contains("WEIR")))
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
            #expect(try TestSockets.connect(from: net.podNamespace, .ipv6, to: TestNetwork.serverV6, port: 8080, capture: capture, server: server) == .direct)
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
            #expect {
                try net.podNamespace.run { try NftablesBackend().apply(next, failAfterRules: 4) }
            } throws: { error in
                "\(error)".contains("injected failing rule")
            }
            #expect(try net.weirRuleset() == before)
        }
    }

    @Test("a refused first install leaves no table behind")
    func atomicFirstInstall() throws {
        try TestNetwork.with { net in
            let plan = RedirectPlan(spec: try spec())
            #expect(throws: ApplyError.self) {
                try net.podNamespace.run { try NftablesBackend().apply(plan, failAfterRules: 2) }
            }
            #expect(try net.weirRuleset().isEmpty)
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

    @Test("bad input exits 2 and leaves the ruleset byte-for-byte unchanged", arguments: [
        ["--outbound-port", "0"], ["--proxy-uid", "envoy"], ["--mode", "nat"], ["--outbound-exclude-cidr", "10.0.0.1/8"],
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

    @Test("the nft text rendering installs the same rules as the netlink backend", arguments: ["", "tproxy", "rich"])
    func nftTextMatchesNetlink(_ variant: String) throws {
        let flags: [(CaptureSpecInput.Key, String)] = switch variant {
        case "tproxy": [(.mode, "tproxy"), (.inboundPorts, "8080,9000-9100"), (.inboundExcludeSource, "198.18.7.0/24")]
        case "rich": [(.proxyUID, "1337"), (.outboundIncludeCIDR, "10.0.0.0/8,fd00::/8"), (.outboundExcludeCIDR, "10.96.0.1"),
                      (.outboundIncludePort, "80,8000-8100"), (.dnsPort, "15053"), (.bypassMark, "0x10")]
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
