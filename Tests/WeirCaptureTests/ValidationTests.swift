import Testing
@testable import WeirCapture

/// Every bad input is refused with a message that names the option and says how to fix it.
@Suite("Capture spec validation")
struct ValidationTests {
    typealias K = CaptureSpecInput.Key

    func problems(_ pairs: [(K, String)]) -> [CaptureSpecProblem] {
        var input = CaptureSpecInput()
        for (k, v) in pairs { input.add(k, v, from: k.flag) }
        do {
            _ = try input.validate()
            return []
        } catch {
            return error.problems
        }
    }

    struct BadInput: Sendable, CustomTestStringConvertible {
        let pairs: [(K, String)]
        let option: String
        let mentions: String
        var testDescription: String { pairs.map { "\($0.0.flag)=\($0.1)" }.joined(separator: " ") }
    }

    static let badInputs: [BadInput] = [
        .init(pairs: [(.outboundPort, "0")], option: "--outbound-port", mentions: "1 to 65535"),
        .init(pairs: [(.outboundPort, "65536")], option: "--outbound-port", mentions: "1 to 65535"),
        .init(pairs: [(.inboundPort, "http")], option: "--inbound-port", mentions: "not a port"),
        .init(pairs: [(.inboundPort, "15001")], option: "--inbound-port", mentions: "equals the outbound"),
        .init(pairs: [(.proxyUID, "envoy")], option: "--proxy-uid", mentions: "not a numeric user id"),
        .init(pairs: [(.proxyGID, "-1")], option: "--proxy-gid", mentions: "not a numeric group id"),
        .init(
            pairs: [(.outboundExcludeCIDR, "10.0.0.0/33")], option: "--outbound-exclude-cidr",
            mentions: "longer than 32"),
        .init(
            pairs: [(.outboundExcludeCIDR, "10.0.0.1/8")], option: "--outbound-exclude-cidr",
            mentions: "Did you mean 10.0.0.0/8"),
        .init(pairs: [(.outboundIncludeCIDR, "not-a-cidr")], option: "--outbound-include-cidr", mentions: "not a CIDR"),
        .init(
            pairs: [(.inboundExcludeSource, "::ffff:10.0.0.0/104")], option: "--inbound-exclude-source",
            mentions: "mixes address families"),
        .init(
            pairs: [(.ipv6, "false"), (.outboundExcludeCIDR, "fd00::/8")], option: "--outbound-exclude-cidr",
            mentions: "IPv6 capture is off"),
        .init(pairs: [(.mode, "nat")], option: "--mode", mentions: "redirect"),
        .init(pairs: [(.outboundExcludePort, "80-70")], option: "--outbound-exclude-port", mentions: "range"),
        .init(
            pairs: [(.outboundIncludePort, "80"), (.outboundExcludePort, "70-90")], option: "--outbound-include-port",
            mentions: "included and excluded"),
        .init(
            pairs: [(.outboundIncludeCIDR, "10.1.0.0/16"), (.outboundExcludeCIDR, "10.0.0.0/8")],
            option: "--outbound-include-cidr", mentions: "included and excluded"),
        .init(
            pairs: [(.inboundPorts, "8080"), (.inboundExcludePort, "8000-9000")], option: "--inbound-ports",
            mentions: "both captured and excluded"),
        .init(pairs: [(.inboundPorts, "15000-15010")], option: "--inbound-ports", mentions: "proxy port"),
        .init(pairs: [(.bypassMark, "0")], option: "--bypass-mark", mentions: "non-zero"),
        .init(pairs: [(.tproxyMark, "0x539")], option: "--tproxy-mark", mentions: "equals the bypass mark"),
        .init(pairs: [(.tproxyTable, "254")], option: "--tproxy-table", mentions: "main"),
        .init(pairs: [(.dnsPort, "15006")], option: "--dns-port", mentions: "equals a capture port"),
        .init(pairs: [(.captureOwnAddress, "maybe")], option: "--capture-own-address", mentions: "true or false"),
        .init(pairs: [(.proxyPort, "1-2")], option: "--proxy-port", mentions: "one port"),
    ]

    @Test("bad input names the option and the fix", arguments: badInputs)
    func badInputIsRefused(_ bad: BadInput) {
        let found = problems(bad.pairs)
        #expect(!found.isEmpty, "accepted \(bad.testDescription)")
        let matching = found.first { $0.option == bad.option }
        #expect(matching != nil, "no problem names \(bad.option): \(found)")
        #expect(
            matching.map { $0.description.contains(bad.mentions) } == true,
            "\(String(describing: matching)) does not mention '\(bad.mentions)'")
        #expect(matching.map { !$0.fix.isEmpty } == true)
    }

    @Test("all problems are reported at once")
    func allProblemsAtOnce() {
        let found = problems([(.outboundPort, "0"), (.proxyUID, "x"), (.mode, "y")])
        #expect(Set(found.map(\.option)) == ["--outbound-port", "--proxy-uid", "--mode"])
    }

    @Test("defaults are istio's ports, dual stack, redirect")
    func defaults() throws {
        let spec = try CaptureSpecInput().validate()
        #expect(spec.outboundPort == 15001)
        #expect(spec.inboundPort == 15006)
        #expect(spec.ipv6)
        #expect(spec.mode == .redirect)
        #expect(spec.inboundPorts == .all)
    }

    @Test("lists accept commas and repeats, and drop duplicates")
    func lists() throws {
        var input = CaptureSpecInput()
        input.add(.proxyUID, "1337, 1338", from: "--proxy-uid")
        input.add(.proxyUID, "1337", from: "--proxy-uid")
        input.add(.outboundExcludePort, "22,8000:8080", from: "--outbound-exclude-port")
        let spec = try input.validate()
        #expect(spec.proxyUIDs == [1337, 1338])
        #expect(spec.outboundExcludePorts == [PortRange(22), PortRange(first: 8000, last: 8080)])
    }

    @Test(
        "the encoded spec reads back to the same spec",
        arguments: [
            [(K, String)](),
            [
                (.proxyUID, "1337"), (.proxyGID, "1337"), (.mode, "tproxy"), (.inboundPorts, "8080,9000-9100"),
                (.dnsPort, "15053"),
            ],
            [
                (.ipv6, "false"), (.outboundIncludeCIDR, "10.0.0.0/8,192.168.0.0/16"), (.outboundIncludePort, "80,443"),
                (.bypassMark, "0x100"),
            ],
            [
                (.inboundPorts, "none"), (.outboundExcludeCIDR, "fd00::/8"), (.inboundExcludeSource, "198.18.0.0/15"),
                (.captureOwnAddress, "true"),
            ],
        ])
    func roundTrip(_ pairs: [(K, String)]) throws {
        var input = CaptureSpecInput()
        for (k, v) in pairs { input.add(k, v, from: k.flag) }
        let spec = try input.validate()
        let plan = RedirectPlan(spec: spec)
        let comments = plan.chains.first { $0.name == RedirectPlan.specChainName }!.rules.map(\.comment)
        #expect(comments.allSatisfy { $0.utf8.count < 128 })
        #expect(try RedirectPlan.recoverSpec(fromComments: comments) == spec)
    }

    @Test("a stored spec with a part missing is refused")
    func incompleteStoredSpec() {
        #expect(throws: CaptureSpecError.self) {
            try RedirectPlan.recoverSpec(fromComments: ["weir-spec 1/2: proxy-uid=1"])
        }
    }
}

@Suite("Addresses")
struct AddressTests {
    @Test(
        "CIDR text round trips",
        arguments: [
            "10.0.0.0/8", "0.0.0.0/0", "198.18.0.1/32", "fd00::/8", "::1/128", "2001:db8::1:0:0:1/128", "::/0",
            "fe80::/10",
        ])
    func cidr(_ text: String) throws {
        #expect(try CIDR.parse(text).get().description == text)
    }

    @Test("IPv6 forms parse to the same bytes")
    func ipv6Forms() {
        #expect(IPAddressText.parseIPv6("2001:db8:0:0:0:0:0:1") == IPAddressText.parseIPv6("2001:db8::1"))
        #expect(IPAddressText.parseIPv6("::ffff:1.2.3.4")?.suffix(4) == [1, 2, 3, 4])
        #expect(IPAddressText.parseIPv6("1::2::3") == nil)
        #expect(IPAddressText.parseIPv6("12345::") == nil)
    }

    @Test("a bare address is a host network")
    func bareAddress() throws {
        #expect(try CIDR.parse("169.254.169.254").get().prefixLength == 32)
    }
}
