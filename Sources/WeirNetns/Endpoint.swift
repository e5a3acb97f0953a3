import WeirCapture
import WeirSystem
#if canImport(Glibc)
    import Glibc
#endif

/// An IP endpoint: family, address bytes in network order, port.
public struct Endpoint: Sendable, Hashable, CustomStringConvertible {
    /// IPv4 or IPv6: whether `address` has 4 or 16 bytes.
    public let family: IPFamily
    /// The IP address in network byte order: 4 bytes for IPv4, 16 for IPv6.
    public let address: [UInt8]
    /// The TCP port, in host byte order.
    public let port: UInt16

    /// An endpoint from its parts; `address` must have the family's length (4 or 16 bytes), which is not checked.
    public init(family: IPFamily, address: [UInt8], port: UInt16) {
        self.family = family
        self.address = address
        self.port = port
    }

    /// `198.18.0.2:80` or `[fd00::2]:80`.
    public var description: String {
        family == .ipv4
            ? "\(IPAddressText.formatIPv4(address)):\(port)" : "[\(IPAddressText.formatIPv6(address))]:\(port)"
    }

    /// Whether the address is loopback (127.0.0.0/8 or ::1).
    public var isLoopback: Bool {
        family == .ipv4 ? address.first == 127 : address == Array(repeating: 0, count: 15) + [1]
    }

    /// The address alone.
    public var host: String { family == .ipv4 ? IPAddressText.formatIPv4(address) : IPAddressText.formatIPv6(address) }

    /// Parses `HOST:PORT` or `[V6]:PORT`; nil when malformed.
    public static func parse(_ text: String) -> Endpoint? {
        var host: Substring
        var portText: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else { return nil }
            host = text[text.index(after: text.startIndex)..<close]
            let rest = text[text.index(after: close)...]
            guard rest.hasPrefix(":") else { return nil }
            portText = rest.dropFirst()
        } else {
            guard let colon = text.lastIndex(of: ":") else { return nil }
            host = text[..<colon]
            portText = text[text.index(after: colon)...]
        }
        guard let port = UInt16(portText), port > 0 else { return nil }
        if let v4 = IPAddressText.parseIPv4(String(host)) { return Endpoint(family: .ipv4, address: v4, port: port) }
        if let v6 = IPAddressText.parseIPv6(String(host)) { return Endpoint(family: .ipv6, address: v6, port: port) }
        return nil
    }
}

/// Conversions between kernel socket addresses and `Endpoint`, and the socket calls that return addresses.
public enum SocketAddress {
    /// The kernel's form of an endpoint.
    public static func make(_ e: Endpoint) -> SocketAddressBytes {
        e.family == .ipv4 ? .ipv4(e.address, port: e.port) : .ipv6(e.address, port: e.port)
    }

    /// An IPv4 or IPv6 address as an endpoint (an IPv4-mapped peer on a dual-stack socket is an IPv4 peer).
    public static func endpoint(_ a: SocketAddressBytes) -> Endpoint? {
        guard let (address, port) = a.ip else { return nil }
        return Endpoint(family: address.count == 4 ? .ipv4 : .ipv6, address: address, port: port)
    }

    /// The socket's own address.
    public static func local(_ fd: borrowing FileDescriptor) -> Endpoint? { fd.localAddress().flatMap(endpoint) }

    /// SO_ORIGINAL_DST / IP6T_SO_ORIGINAL_DST.
    public static func originalDestination(_ fd: borrowing FileDescriptor, family: IPFamily) -> Endpoint? {
        fd.originalDestination(ipv6: family == .ipv6).flatMap(endpoint)
    }

    /// Whether the address may be assigned in this namespace: loopback, or a bind to it succeeds. Only a bind
    /// refused with EADDRNOTAVAIL proves an address foreign; any other failure (no descriptor left, a link-local
    /// address without its scope) answers "local", so that a caller guarding against loops errs on the safe side.
    public static func isLocal(_ e: Endpoint) -> Bool {
        if e.family == .ipv4 && e.address[0] == 127 { return true }
        if e.family == .ipv6 && e.address == Array(repeating: 0, count: 15) + [1] { return true }
        guard let fd = try? FileDescriptor.tcp(ipv6: e.family == .ipv6) else { return true }
        // Only EADDRNOTAVAIL says "not an address of this namespace": any other failure (EADDRINUSE when the
        // ephemeral ports are exhausted, say) leaves the address counted as local, the safe side for a loop guard.
        return fd.tryBind(make(Endpoint(family: e.family, address: e.address, port: 0))) != EADDRNOTAVAIL
    }
}
