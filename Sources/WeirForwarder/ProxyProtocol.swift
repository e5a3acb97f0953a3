import WeirCapture
import WeirNetns

/// PROXY protocol headers (HAProxy's text v1 and binary v2), TCP over IPv4/IPv6.
public enum ProxyProtocolHeader {
    /// v2 signature: \r\n\r\n\0\r\nQUIT\n.
    static let v2Signature: [UInt8] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A]

    /// The PROXY header announcing `source` and `destination`, in `version`'s form (text v1 or binary v2).
    public static func encode(_ version: ProxyProtocolVersion, source: Endpoint, destination: Endpoint) -> [UInt8] {
        switch version {
        case .v1:
            // Mixed families cannot be expressed; both ends of one TCP connection share a family.
            let proto = source.family == .ipv4 ? "TCP4" : "TCP6"
            return Array(
                "PROXY \(proto) \(source.host) \(destination.host) \(source.port) \(destination.port)\r\n".utf8)
        case .v2:
            var h = v2Signature
            h.append(0x21)  // version 2, command PROXY
            h.append(source.family == .ipv4 ? 0x11 : 0x21)  // AF_INET/AF_INET6, STREAM
            let body = source.address + destination.address + be(source.port) + be(destination.port)
            h += be(UInt16(body.count))
            h += body
            return h
        }
    }

    static func be(_ v: UInt16) -> [UInt8] { [UInt8(v >> 8), UInt8(v & 0xFF)] }
}
