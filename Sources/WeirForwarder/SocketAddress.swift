import CWeirShims
import WeirCapture
#if canImport(Glibc)
import Glibc
#endif

/// Conversions between sockaddr storage and `Endpoint`.
enum SocketAddress {
    static func make(_ e: Endpoint) -> (sockaddr_storage, socklen_t) {
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

    static func endpoint(_ storage: sockaddr_storage, family: IPFamily) -> Endpoint? {
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

    static func local(_ fd: Int32, family: IPFamily) -> Endpoint? {
        var ss = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let rc = withUnsafeMutablePointer(to: &ss) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
        return rc == 0 ? endpoint(ss, family: family) : nil
    }

    /// SO_ORIGINAL_DST / IP6T_SO_ORIGINAL_DST.
    static func originalDestination(_ fd: Int32, family: IPFamily) -> Endpoint? {
        var ss = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        guard weir_original_dst(fd, family == .ipv4 ? AF_INET : AF_INET6, &ss, &len) == 0 else { return nil }
        return endpoint(ss, family: family)
    }

    /// True when the address is assigned in this namespace (a bind to it succeeds) or is loopback.
    static func isLocal(_ e: Endpoint) -> Bool {
        if e.family == .ipv4 && e.address[0] == 127 { return true }
        if e.family == .ipv6 && e.address == Array(repeating: 0, count: 15) + [1] { return true }
        let fd = socket(e.family == .ipv4 ? AF_INET : AF_INET6, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var (addr, len) = make(Endpoint(family: e.family, address: e.address, port: 0))
        return withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) } } == 0
    }

    /// A short metric label for a connect errno.
    static func reason(_ e: Int32) -> String {
        switch e {
        case ECONNREFUSED: return "refused"
        case ETIMEDOUT: return "timeout"
        case ENETUNREACH, EHOSTUNREACH: return "unreachable"
        case EMFILE, ENFILE: return "no_descriptors"
        default: return "errno_\(e)"
        }
    }
}
