import CWeirShims

#if canImport(Glibc)
    import Glibc
#endif

/// A socket address as the kernel takes it: IPv4, IPv6 or a Unix path.
public struct SocketAddressBytes: Sendable {
    /// The address in the kernel's layout (a `sockaddr_in`, `sockaddr_in6` or `sockaddr_un` at its start).
    public var storage: sockaddr_storage
    /// How many bytes of `storage` the address takes, as bind, connect and accept pass it.
    public var length: socklen_t

    /// An address the kernel filled in (`getsockname`, `accept`).
    public init(storage: sockaddr_storage, length: socklen_t) {
        self.storage = storage
        self.length = length
    }

    /// An IPv4 address (4 bytes, network order) and port.
    public static func ipv4(_ address: [UInt8], port: UInt16) -> SocketAddressBytes {
        var ss = sockaddr_storage()
        withUnsafeMutableBytes(of: &ss) { raw in
            let sin = raw.baseAddress!.assumingMemoryBound(to: sockaddr_in.self)
            sin.pointee.sin_family = sa_family_t(AF_INET)
            sin.pointee.sin_port = port.bigEndian
            withUnsafeMutableBytes(of: &sin.pointee.sin_addr) { $0.copyBytes(from: address.prefix(4)) }
        }
        return SocketAddressBytes(storage: ss, length: socklen_t(MemoryLayout<sockaddr_in>.size))
    }

    /// An IPv6 address (16 bytes) and port.
    public static func ipv6(_ address: [UInt8], port: UInt16) -> SocketAddressBytes {
        var ss = sockaddr_storage()
        withUnsafeMutableBytes(of: &ss) { raw in
            let sin6 = raw.baseAddress!.assumingMemoryBound(to: sockaddr_in6.self)
            sin6.pointee.sin6_family = sa_family_t(AF_INET6)
            sin6.pointee.sin6_port = port.bigEndian
            withUnsafeMutableBytes(of: &sin6.pointee.sin6_addr) { $0.copyBytes(from: address.prefix(16)) }
        }
        return SocketAddressBytes(storage: ss, length: socklen_t(MemoryLayout<sockaddr_in6>.size))
    }

    /// Whether two addresses are the same bytes (a Unix name, or an IP address and port).
    public func sameAs(_ other: SocketAddressBytes) -> Bool {
        guard length == other.length else { return false }
        return withUnsafeBytes(of: storage) { a in
            withUnsafeBytes(of: other.storage) { b in a.prefix(Int(length)).elementsEqual(b.prefix(Int(length))) }
        }
    }

    /// The longest Unix socket path the kernel takes (`sun_path` less its NUL).
    public static let maxUnixPath = 107

    /// A Unix socket path (cut at `maxUnixPath` bytes: callers check the length they accept). A path that starts
    /// with `@` is in the abstract namespace (per network namespace, no file).
    public static func unix(_ path: String) -> SocketAddressBytes {
        var sun = sockaddr_un()
        sun.sun_family = sa_family_t(AF_UNIX)
        var bytes = Array(path.utf8.prefix(maxUnixPath))
        let abstract = bytes.first == UInt8(ascii: "@")
        if abstract { bytes[0] = 0 }
        withUnsafeMutableBytes(of: &sun.sun_path) { $0.copyBytes(from: bytes + (abstract ? [] : [0])) }
        var ss = sockaddr_storage()
        withUnsafeMutableBytes(of: &ss) { dst in withUnsafeBytes(of: sun) { dst.copyMemory(from: $0) } }
        let length = abstract ? MemoryLayout<sa_family_t>.size + bytes.count : MemoryLayout<sockaddr_un>.size
        return SocketAddressBytes(storage: ss, length: socklen_t(length))
    }

    /// The family (AF_INET, AF_INET6, AF_UNIX).
    public var family: Int32 { Int32(storage.ss_family) }

    /// For IPv4 and IPv6: the address bytes and port (an IPv4-mapped IPv6 address comes back as IPv4).
    public var ip: (address: [UInt8], port: UInt16)? {
        withUnsafeBytes(of: storage) { raw in
            if family == AF_INET {
                let sin = raw.load(as: sockaddr_in.self)
                return (withUnsafeBytes(of: sin.sin_addr) { Array($0) }, UInt16(bigEndian: sin.sin_port))
            }
            if family == AF_INET6 {
                let sin6 = raw.load(as: sockaddr_in6.self)
                let a = withUnsafeBytes(of: sin6.sin6_addr) { Array($0) }
                if a[0..<10].allSatisfy({ $0 == 0 }) && a[10] == 0xFF && a[11] == 0xFF {
                    return (Array(a[12...]), UInt16(bigEndian: sin6.sin6_port))
                }
                return (a, UInt16(bigEndian: sin6.sin6_port))
            }
            return nil
        }
    }

    /// Whether `ip` is IPv6 (not mapped IPv4).
    public var isIPv6: Bool { ip.map { $0.address.count == 16 } ?? false }

    @usableFromInline
    func withPointer<T>(_ body: (UnsafePointer<sockaddr>, socklen_t) -> T) -> T {
        withUnsafeBytes(of: storage) { raw in body(raw.baseAddress!.assumingMemoryBound(to: sockaddr.self), length) }
    }
}

/// What a non-blocking connect did.
public enum ConnectProgress: Sendable { case connected, inProgress }

/// An accepted connection: its socket and the peer's address.
@frozen
public struct AcceptedSocket: ~Copyable, Sendable {
    /// The connected socket, non-blocking and close-on-exec (from `accept4`).
    public var socket: FileDescriptor
    /// The address of the remote end, as `accept4` reported it.
    public let peer: SocketAddressBytes

    /// The socket, without the peer's address.
    public consuming func intoSocket() -> FileDescriptor { socket }
}

extension FileDescriptor {
    /// `socket(domain, type | SOCK_CLOEXEC, protocol)`.
    public static func socket(
        _ domain: Int32, _ type: Int32, protocol proto: Int32 = 0,
        nonBlocking: Bool = false
    ) throws(SystemCallError) -> FileDescriptor {
        let flags = type | Int32(SOCK_CLOEXEC.rawValue) | (nonBlocking ? Int32(SOCK_NONBLOCK.rawValue) : 0)
        return FileDescriptor(owning: try Posix.call("socket") { Glibc.socket(domain, flags, proto) })
    }

    /// A TCP socket of the family: IPv4 (`ipv6` false) or IPv6.
    public static func tcp(ipv6: Bool, nonBlocking: Bool = false) throws(SystemCallError) -> FileDescriptor {
        try socket(ipv6 ? AF_INET6 : AF_INET, Int32(SOCK_STREAM.rawValue), nonBlocking: nonBlocking)
    }

    /// A Unix stream socket.
    public static func unixStream(nonBlocking: Bool = false) throws(SystemCallError) -> FileDescriptor {
        try socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), nonBlocking: nonBlocking)
    }

    /// `bind`; the error names the address.
    public func bind(_ address: SocketAddressBytes, describedAs name: String) throws(SystemCallError) {
        try Posix.call("bind \(name)") { address.withPointer { Glibc.bind(raw, $0, $1) } }
    }

    /// `bind`, for the callers that want the errno (is this address ours?): nil on success.
    public func tryBind(_ address: SocketAddressBytes) -> Int32? {
        Posix.errno { address.withPointer { Glibc.bind(raw, $0, $1) } }
    }

    /// `listen`.
    public func listen(backlog: Int32) throws(SystemCallError) {
        try Posix.call("listen") { Glibc.listen(raw, backlog) }
    }

    /// `connect`; on a non-blocking socket EINPROGRESS is `.inProgress`.
    public func connect(_ address: SocketAddressBytes, describedAs name: String) throws(SystemCallError)
        -> ConnectProgress
    {
        switch Posix.attempt({ address.withPointer { Glibc.connect(raw, $0, $1) } }) {
        case .ok: return .connected
        case .failed(let e) where e == EINPROGRESS: return .inProgress
        case .failed(let e): throw SystemCallError("connect \(name)", errno: e)
        }
    }

    /// `connect` on the data path (a non-blocking socket): connected at once, in progress, or the errno.
    public func startConnect(_ address: SocketAddressBytes) -> Outcome<ConnectProgress> {
        switch Posix.attempt({ address.withPointer { Glibc.connect(raw, $0, $1) } }) {
        case .ok: return .ok(.connected)
        case .failed(let e): return e == EINPROGRESS ? .ok(.inProgress) : .failed(e)
        }
    }

    /// `accept4(SOCK_NONBLOCK | SOCK_CLOEXEC)`: the connection, or the errno (EAGAIN when none waits).
    public func accept() -> Outcome<AcceptedSocket> {
        var peer = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        switch Posix.attempt({ weir_accept(raw, &peer, &len) }) {
        case .ok(let fd):
            return .ok(
                AcceptedSocket(socket: FileDescriptor(owning: fd), peer: SocketAddressBytes(storage: peer, length: len))
            )
        case .failed(let e): return .failed(e)
        }
    }

    /// `getsockname`.
    public func localAddress() -> SocketAddressBytes? { address(getsockname) }

    /// `getpeername`: the address a connected socket is connected to.
    public func peerAddress() -> SocketAddressBytes? { address(getpeername) }

    /// An address the kernel fills in for this socket (`getsockname`, `getpeername`).
    func address(
        _ call: (Int32, UnsafeMutablePointer<sockaddr>, UnsafeMutablePointer<socklen_t>) -> Int32
    ) -> SocketAddressBytes? {
        var ss = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let rc = Posix.attempt {
            withUnsafeMutablePointer(to: &ss) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { call(raw, $0, &len) }
            }
        }
        if case .ok = rc { return SocketAddressBytes(storage: ss, length: len) }
        return nil
    }

    /// The pre-NAT destination of a redirected connection: SO_ORIGINAL_DST or IP6T_SO_ORIGINAL_DST.
    public func originalDestination(ipv6: Bool) -> SocketAddressBytes? {
        var ss = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        if case .ok = Posix.attempt({ weir_original_dst(raw, ipv6 ? AF_INET6 : AF_INET, &ss, &len) }) {
            return SocketAddressBytes(storage: ss, length: len)
        }
        return nil
    }

    /// SO_ERROR: a non-blocking connect's result (0: connected).
    public func pendingError() -> Int32 {
        var err: Int32 = 0
        var len = socklen_t(4)
        _ = Posix.attempt { getsockopt(raw, SOL_SOCKET, SO_ERROR, &err, &len) }
        return err
    }

    func setInt(_ level: Int32, _ name: Int32, _ value: Int32, _ what: String) throws(SystemCallError) {
        var v = value
        try Posix.call("setsockopt \(what)") { setsockopt(raw, level, name, &v, socklen_t(4)) }
    }

    /// SO_REUSEADDR and SO_REUSEPORT.
    public func setReuse() throws(SystemCallError) { try Posix.call("setsockopt SO_REUSEPORT") { weir_set_reuse(raw) } }
    /// SO_REUSEADDR alone.
    public func setReuseAddress() throws(SystemCallError) { try setInt(SOL_SOCKET, SO_REUSEADDR, 1, "SO_REUSEADDR") }
    /// TCP_NODELAY.
    public func setNoDelay() throws(SystemCallError) {
        try Posix.call("setsockopt TCP_NODELAY") { weir_set_nodelay(raw) }
    }
    /// IPV6_V6ONLY.
    public func setIPv6Only() throws(SystemCallError) { try setInt(Int32(IPPROTO_IPV6), IPV6_V6ONLY, 1, "IPV6_V6ONLY") }
    /// SO_MARK.
    public func setMark(_ mark: UInt32) throws(SystemCallError) {
        try Posix.call("setsockopt SO_MARK") { weir_set_mark(raw, mark) }
    }
    /// IP_TRANSPARENT or IPV6_TRANSPARENT.
    public func setTransparent(ipv6: Bool) throws(SystemCallError) {
        try Posix.call("setsockopt IP_TRANSPARENT") { weir_set_transparent(raw, ipv6 ? AF_INET6 : AF_INET) }
    }
    /// SO_LINGER {on, 0}: the close sends RST instead of FIN.
    public func setResetOnClose() { _ = Posix.attempt { weir_set_linger_reset(raw) } }
    /// SO_RCVTIMEO and SO_SNDTIMEO.
    public func setTimeouts(milliseconds ms: Int) throws(SystemCallError) {
        var tv = timeval(tv_sec: ms / 1000, tv_usec: (ms % 1000) * 1000)
        try Posix.call("setsockopt SO_RCVTIMEO") {
            setsockopt(raw, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        }
        try Posix.call("setsockopt SO_SNDTIMEO") {
            setsockopt(raw, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        }
    }
    /// O_NONBLOCK on or off.
    public func setNonBlocking(_ on: Bool) throws(SystemCallError) {
        let flags = try Posix.call("fcntl F_GETFL") { fcntl(raw, F_GETFL) }
        try Posix.call("fcntl F_SETFL") { fcntl(raw, F_SETFL, on ? flags | O_NONBLOCK : flags & ~O_NONBLOCK) }
    }

    // MARK: the data path

    /// `recv(MSG_DONTWAIT)`: bytes read (0: the peer closed), or the errno.
    @inlinable
    public func receive(into buffer: UnsafeMutableRawPointer, count: Int) -> Outcome<Int> {
        Posix.attempt { recv(raw, buffer, count, Int32(MSG_DONTWAIT)) }
    }

    /// `send(MSG_NOSIGNAL | MSG_DONTWAIT)`: bytes written, or the errno.
    @inlinable
    public func send(_ buffer: UnsafeRawPointer, count: Int) -> Outcome<Int> {
        Posix.attempt { Glibc.send(raw, buffer, count, Int32(MSG_NOSIGNAL) | Int32(MSG_DONTWAIT)) }
    }

    /// `splice(from, to, count, SPLICE_F_MOVE | SPLICE_F_NONBLOCK)`.
    @inlinable
    public static func splice(from: borrowing FileDescriptor, to: borrowing FileDescriptor, count: Int) -> Outcome<Int>
    {
        Posix.attempt { weir_splice(from.raw, to.raw, UInt(count), WEIR_SPLICE_MOVE | WEIR_SPLICE_NONBLOCK) }
    }

    /// `shutdown(SHUT_WR)`: the peer reads the end of the stream.
    public func shutdownWrite() { _ = Posix.attempt { Glibc.shutdown(raw, Int32(SHUT_WR)) } }

    /// `shutdown(SHUT_RDWR)`: wakes a thread blocked in accept or recv on it.
    public func shutdownBoth() { _ = Posix.attempt { Glibc.shutdown(raw, Int32(SHUT_RDWR)) } }

    /// Blocking `send` of all of `bytes` (a short answer on a blocking socket).
    public func sendAll(_ bytes: [UInt8]) throws(SystemCallError) {
        var offset = 0
        while offset < bytes.count {
            let n = try Posix.call("send") {
                bytes.withUnsafeBytes {
                    Glibc.send(raw, $0.baseAddress! + offset, $0.count - offset, Int32(MSG_NOSIGNAL))
                }
            }
            if n == 0 { break }
            offset += n
        }
    }

    /// Blocking `recv` into `buffer`; 0 when the peer closed.
    public func receiveBlocking(into buffer: UnsafeMutableRawPointer, count: Int) throws(SystemCallError) -> Int {
        try Posix.call("recv") { recv(raw, buffer, count, 0) }
    }
}

/// A pipe: the read end and the write end.
@frozen
public struct Pipe: ~Copyable, Sendable {
    /// The end bytes are read or spliced out of (`fds[0]` of `pipe2`).
    public var read: FileDescriptor
    /// The end bytes are written or spliced into (`fds[1]` of `pipe2`).
    public var write: FileDescriptor

    /// `pipe2(O_CLOEXEC)`, non-blocking when asked (for splice).
    public static func open(nonBlocking: Bool = false) throws(SystemCallError) -> Pipe {
        var fds: [Int32] = [-1, -1]
        try Posix.call("pipe2") { nonBlocking ? weir_pipe_nonblock(&fds) : weir_pipe_cloexec(&fds) }
        return Pipe(read: FileDescriptor(owning: fds[0]), write: FileDescriptor(owning: fds[1]))
    }

    /// F_SETPIPE_SZ: a larger pipe moves more per splice (the kernel caps it at fs.pipe-max-size).
    public func grow(to size: Int) { _ = Posix.attempt { weir_pipe_grow(write.raw, Int32(size)) } }
}

/// Network interfaces of the calling thread's namespace.
public enum NetworkInterface {
    /// Whether the interface is up (false when it is down; throws when there is no such interface).
    public static func isUp(_ name: String) throws(SystemCallError) -> Bool {
        try Posix.call("SIOCGIFFLAGS \(name)") { weir_interface_is_up(name) } == 1
    }
}
