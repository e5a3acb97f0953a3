import Foundation
import Testing
@testable import WeirCapture

/// Plan renderings against reviewed golden files. `WEIR_UPDATE_GOLDENS=1 swift test` rewrites them.
@Suite("Plan goldens")
struct GoldenTests {
    typealias K = CaptureSpecInput.Key

    struct Case: Sendable, CustomTestStringConvertible {
        let name: String
        let flags: [(K, String)]
        let environment: [String: String]
        var testDescription: String { name }
    }

    static let cases: [Case] = [
        .init(name: "default", flags: [], environment: [:]),
        .init(
            name: "appmesh", flags: [],
            environment: [
                "APPMESH_IGNORE_UID": "1337", "APPMESH_APP_PORTS": "8080,9080", "APPMESH_EGRESS_IGNORED_PORTS": "3306",
            ]),
        .init(
            name: "tproxy",
            flags: [
                (.mode, "tproxy"), (.proxyUID, "1337"), (.inboundPorts, "8080,9000-9100"),
                (.inboundExcludeSource, "198.18.7.0/24"),
            ], environment: [:]),
        .init(
            name: "dual-stack-rich",
            flags: [
                (.proxyUID, "1337"), (.proxyGID, "1337"), (.outboundIncludeCIDR, "10.0.0.0/8,fd00::/8"),
                (.outboundExcludeCIDR, "10.96.0.1/32,fd00:96::1/128"), (.outboundIncludePort, "80,8000-8100"),
                (.outboundExcludePort, "22"), (.proxyPort, "15000,15090"), (.inboundExcludePort, "15021"),
            ], environment: [:]),
        .init(name: "ipv4-only", flags: [(.ipv6, "false"), (.proxyUID, "1337")], environment: [:]),
        .init(name: "dns", flags: [(.dnsPort, "15053"), (.proxyUID, "1337")], environment: [:]),
    ]

    static let goldens = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Goldens")

    func plan(_ c: Case) throws -> RedirectPlan {
        var flags = CaptureSpecInput()
        for (k, v) in c.flags { flags.add(k, v, from: k.flag) }
        return RedirectPlan(spec: try CaptureSpecInput.resolve(flags: flags, environment: c.environment))
    }

    func compare(_ rendered: String, _ file: String) throws {
        let url = Self.goldens.appendingPathComponent(file)
        if ProcessInfo.processInfo.environment["WEIR_UPDATE_GOLDENS"] == "1" {
            try rendered.write(to: url, atomically: true, encoding: .utf8)
        }
        let golden = try String(contentsOf: url, encoding: .utf8)
        #expect(
            rendered == golden,
            "rendering differs from \(file); review and rerun with WEIR_UPDATE_GOLDENS=1 if intended")
    }

    @Test("nft rendering", arguments: cases)
    func nft(_ c: Case) throws {
        try compare(NftRendering.render(try plan(c)), "\(c.name).nft")
    }

    @Test("iptables-restore rendering", arguments: cases)
    func iptables(_ c: Case) throws {
        let p = try plan(c)
        let text = p.spec.families.map { "# \($0.rawValue)\n" + IptablesRendering.render(p, family: $0) }.joined()
        try compare(text, "\(c.name).iptables")
    }

    @Test("every rule comment is unique in its chain and short enough for nft")
    func commentsAreKeys() throws {
        for c in Self.cases {
            for chain in try plan(c).chains {
                let comments = chain.rules.map(\.comment)
                #expect(Set(comments).count == comments.count, "\(c.name) \(chain.name)")
                #expect(comments.allSatisfy { $0.utf8.count < 128 })
            }
        }
    }

    @Test("the capture ports are never captured, in either direction")
    func capturePortsExempt() throws {
        let p = try plan(Self.cases[0])
        for name in ["output", "prerouting"] {
            let rules = p.chains.first { $0.name == name }!.rules
            let redirectIndex = rules.firstIndex {
                $0.statements.contains(.redirect(port: name == "output" ? 15001 : 15006))
            }!
            for port: UInt16 in [15001, 15006] {
                let exempt = rules.firstIndex {
                    $0.matches.contains(.destinationPort(.tcp, PortRange(port))) && $0.verdict == .return
                }
                #expect(exempt != nil && exempt! < redirectIndex, "\(name) does not exempt \(port) before redirecting")
            }
        }
    }
}
