import CWeirShims
import WeirCapture
#if canImport(Glibc)
import Glibc
#endif

/// An IP endpoint: family, address bytes in network order, port.
public struct Endpoint: Sendable, Hashable, CustomStringConvertible {
    public let family: IPFamily
    public let address: [UInt8]
    public let port: UInt16

    public init(family: IPFamily, address: [UInt8], port: UInt16) {
        self.family = family; self.address = address; self.port = port
    }

    /// `198.18.0.2:80` or `[fd00::2]:80`.
    public var description: String {
        family == .ipv4 ? "\(IPAddressText.formatIPv4(address)):\(port)" : "[\(IPAddressText.formatIPv6(address))]:\(port)"
    }

    /// The address alone.
    public var host: String { family == .ipv4 ? IPAddressText.formatIPv4(address) : IPAddressText.formatIPv6(address) }

    /// Parses `HOST:PORT` or `[V6]:PORT`; nil when malformed.
    public static func parse(_ text: String) -> Endpoint? {
        var host: Substring, portText: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else { return nil }
            host = text[text.index(after: text.startIndex)..<close]
            let rest = text[text.index(after: close)...]
            guard rest.hasPrefix(":") else { return nil }
            portText = rest.dropFirst()
        } else {
            guard let colon = text.lastIndex(of: ":") else { return nil }
            host = text[..<colon]; portText = text[text.index(after: colon)...]
        }
        guard let port = UInt16(portText), port > 0 else { return nil }
        if let v4 = IPAddressText.parseIPv4(String(host)) { return Endpoint(family: .ipv4, address: v4, port: port) }
        if let v6 = IPAddressText.parseIPv6(String(host)) { return Endpoint(family: .ipv6, address: v6, port: port) }
        return nil
    }
}


/// Conversions between sockaddr storage and `Endpoint`, and the socket calls that return addresses.
public enum SocketAddress {
    public static func make(_ e: Endpoint) -> (sockaddr_storage, socklen_t) {
        var ss = sockaddr_storage()
        withUnsafeMutableBytes(of: &ss) { raw in
            if e.family == .ipv4 {
                let sin = raw.baseAddress!.assumingMemoryBound(to: sockaddr_in.self)
                sin.pointee.sin_family = sa_family_t(AF_INET)
                sin.pointee.sin_port = e.port.bigEndian
                withUnsafeMutableBytes(of: &sin.pointee.sin_addr) { $0.copyBytes(from: e.address) }
            } else {
                let sin6 = raw.baseAddress!.assumingMemoryBound(to: sockaddr_in6.self)
                sin6.pointee.sin6_family = sa_family_t(AF_INET6)
                sin6.pointee.sin6_port = e.port.bigEndian
                withUnsafeMutableBytes(of: &sin6.pointee.sin6_addr) { $0.copyBytes(from: e.address) }
            }
        }
        return (ss, socklen_t(e.family == .ipv4 ? MemoryLayout<sockaddr_in>.size : MemoryLayout<sockaddr_in6>.size))
    }

    public static func endpoint(_ storage: sockaddr_storage, family: IPFamily) -> Endpoint? {
        var ss = storage
        return withUnsafeBytes(of: &ss) { raw -> Endpoint? in
            let f = raw.load(as: sa_family_t.self)
            if f == sa_family_t(AF_INET) {
                let sin = raw.load(as: sockaddr_in.self)
                return Endpoint(family: .ipv4, address: withUnsafeBytes(of: sin.sin_addr) { Array($0) }, port: UInt16(bigEndian: sin.sin_port))
            }
            if f == sa_family_t(AF_INET6) {
                let sin6 = raw.load(as: sockaddr_in6.self)
                let a = withUnsafeBytes(of: sin6.sin6_addr) { Array($0) }
                // An IPv4-mapped peer on a dual-stack socket is an IPv4 peer.
                if a[0..<10].allSatisfy({ $0 == 0 }) && a[10] == 0xFF && a[11] == 0xFF {
                    return Endpoint(family: .ipv4, address: Array(a[12...]), port: UInt16(bigEndian: sin6.sin6_port))
                }
                return Endpoint(family: .ipv6, address: a, port: UInt16(bigEndian: sin6.sin6_port))
            }
            return nil
        }
    }

    public static func local(_ fd: Int32, family: IPFamily) -> Endpoint? {
        var ss = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let rc = withUnsafeMutablePointer(to: &ss) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
        return rc == 0 ? endpoint(ss, family: family) : nil
    }

    /// SO_ORIGINAL_DST / IP6T_SO_ORIGINAL_DST.
    public static func originalDestination(_ fd: Int32, family: IPFamily) -> Endpoint? {
        var ss = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        guard weir_original_dst(fd, family == .ipv4 ? AF_INET : AF_INET6, &ss, &len) == 0 else { return nil }
        return endpoint(ss, family: family)
    }

    /// Whether the address may be assigned in this namespace: loopback, or a bind to it succeeds. Only a bind
    /// refused with EADDRNOTAVAIL proves an address foreign; any other failure (no descriptor left, a link-local
    /// address without its scope) answers "local", so that a caller guarding against loops errs on the safe side.
    public static func isLocal(_ e: Endpoint) -> Bool {
        if e.family == .ipv4 && e.address[0] == 127 { return true }
        if e.family == .ipv6 && e.address == Array(repeating: 0, count: 15) + [1] { return true }
        let fd = socket(e.family == .ipv4 ? AF_INET : AF_INET6, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return true }
        defer { close(fd) }
        // Only EADDRNOTAVAIL says "not an address of this namespace": any other failure (EADDRINUSE when the
        // ephemeral ports are exhausted, say) leaves the address counted as local, the safe side for a loop guard.
        var (addr, len) = make(Endpoint(family: e.family, address: e.address, port: 0))
        if withUnsafePointer(to: &addr, { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) } }) == 0 { return true }
        return weir_errno() != EADDRNOTAVAIL
    }

}
