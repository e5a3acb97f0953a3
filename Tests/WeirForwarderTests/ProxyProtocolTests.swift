import Testing
@testable import WeirForwarder
import WeirCapture
import WeirNetns

@Suite("PROXY protocol headers")
struct ProxyProtocolTests {
    let v4s = Endpoint(family: .ipv4, address: [198, 18, 0, 1], port: 40000)
    let v4d = Endpoint(family: .ipv4, address: [198, 18, 0, 2], port: 80)

    @Test("v1 is one text line")
    func v1() {
        #expect(
            String(decoding: ProxyProtocolHeader.encode(.v1, source: v4s, destination: v4d), as: UTF8.self)
                == "PROXY TCP4 198.18.0.1 198.18.0.2 40000 80\r\n")
        let s6 = Endpoint(family: .ipv6, address: IPAddressText.parseIPv6("fd00::1")!, port: 1)
        let d6 = Endpoint(family: .ipv6, address: IPAddressText.parseIPv6("fd00::2")!, port: 2)
        #expect(
            String(decoding: ProxyProtocolHeader.encode(.v1, source: s6, destination: d6), as: UTF8.self)
                == "PROXY TCP6 fd00::1 fd00::2 1 2\r\n")
    }

    @Test("v2 is the signature, PROXY command, family, length and addresses")
    func v2() {
        let h = ProxyProtocolHeader.encode(.v2, source: v4s, destination: v4d)
        #expect(Array(h.prefix(12)) == [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A])
        #expect(h[12] == 0x21 && h[13] == 0x11)
        #expect(h[14] == 0 && h[15] == 12)
        #expect(Array(h[16...]) == [198, 18, 0, 1, 198, 18, 0, 2, 0x9C, 0x40, 0, 80])
        let s6 = Endpoint(family: .ipv6, address: IPAddressText.parseIPv6("fd00::1")!, port: 1)
        let d6 = Endpoint(family: .ipv6, address: IPAddressText.parseIPv6("fd00::2")!, port: 2)
        let h6 = ProxyProtocolHeader.encode(.v2, source: s6, destination: d6)
        #expect(h6[13] == 0x21 && h6.count == 16 + 36)
    }

    @Test("endpoints parse and print", arguments: ["198.18.0.2:80", "[fd00::2]:15001", "127.0.0.1:1"])
    func endpoints(_ text: String) {
        #expect(Endpoint.parse(text)?.description == text)
    }

    @Test("bad endpoints are refused", arguments: ["198.18.0.2", "[fd00::2]", "host:80", "1.2.3.4:0", "1.2.3.4:70000"])
    func badEndpoints(_ text: String) {
        #expect(Endpoint.parse(text) == nil)
    }
}
