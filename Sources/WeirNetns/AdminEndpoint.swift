import CWeirShims
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A tiny HTTP/1.1 endpoint for operators and probes (`GET /metrics`, `/ready`, state dumps), on loopback TCP
/// (`127.0.0.1:15090`) or a Unix socket (`unix:/path`). One request per connection, served on its own thread.
public final class AdminEndpoint: Sendable {
    public struct Reply: Sendable {
        public var status: String
        public var contentType: String
        public var body: [UInt8]
        public init(status: String = "200 OK", contentType: String = "text/plain", body: [UInt8]) {
            self.status = status; self.contentType = contentType; self.body = body
        }
        public static func text(_ s: String, status: String = "200 OK") -> Reply { Reply(status: status, body: Array(s.utf8)) }
        public static func json(_ s: String) -> Reply { Reply(contentType: "application/json", body: Array(s.utf8)) }
    }

    public enum Failure: Error, CustomStringConvertible {
        case address(String)
        case bind(String, Int32)
        case path(String, UnixSocketPath.Failure)
        public var description: String {
            switch self {
            case .address(let a): return "admin address '\(a)' is not unix:/path or HOST:PORT"
            case .bind(let a, let e): return "cannot listen on \(a): \(String(cString: strerror(e)))"
            case .path(let a, let f): return "cannot listen on \(a): \(f)"
            }
        }
    }

    let fd: Atomic<Int32>
    public let address: String

    /// Opens the listener in `namespace` and serves `handler(path)` for each GET.
    public init(_ address: String, namespace: NetworkNamespace = .current, handler: @escaping @Sendable (String) -> Reply) throws {
        self.address = address
        let fd: Int32 = try namespace.run { () throws -> Int32 in
            if address.hasPrefix("unix:") {
                let path = String(address.dropFirst(5))
                guard path.hasPrefix("/"), path.utf8.count < 108 else { throw Failure.address(address) }
                do throws(UnixSocketPath.Failure) { try UnixSocketPath.claim(path) } catch { throw Failure.path(address, error) }
                let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
                var sun = UnixSocketPath.address(path)
                let rc = withUnsafePointer(to: &sun) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
                guard rc == 0, listen(fd, 64) == 0 else { let e = weir_errno(); Glibc.close(fd); throw Failure.bind(address, e) }
                return fd
            }
            guard let ep = Endpoint.parse(address) else { throw Failure.address(address) }
            let fd = socket(ep.family == .ipv4 ? AF_INET : AF_INET6, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            _ = weir_set_reuse(fd)
            var (addr, len) = SocketAddress.make(ep)
            let rc = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) } }
            guard rc == 0, listen(fd, 64) == 0 else { let e = weir_errno(); Glibc.close(fd); throw Failure.bind(address, e) }
            return fd
        }
        self.fd = Atomic(fd)
        _ = try NamespaceThread(namespace: .current, name: "weir-admin") {
            // Bounded by the listener: closing it ends accept with an error.
            while true {
                let c = accept(fd, nil, nil)
                if c < 0 { if weir_errno() == EINTR { continue }; return }
                var request = [UInt8](repeating: 0, count: 4096)
                let n = recv(c, &request, request.count, 0)
                let line = n > 0 ? String(decoding: request[0..<n], as: UTF8.self).split(separator: "\r\n").first.map(String.init) ?? "" : ""
                let parts = line.split(separator: " ")
                let reply: Reply = parts.count >= 2 && parts[0] == "GET" ? handler(String(parts[1])) : .text("only GET\n", status: "405 Method Not Allowed")
                let head = Array("HTTP/1.1 \(reply.status)\r\nContent-Type: \(reply.contentType)\r\nContent-Length: \(reply.body.count)\r\nConnection: close\r\n\r\n".utf8)
                _ = (head + reply.body).withUnsafeBytes { send(c, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                Glibc.close(c)
            }
        }
    }

    /// Stops serving (the thread ends when accept fails).
    public func close() {
        let fd = self.fd.exchange(-1, ordering: .relaxed)
        if fd >= 0 { shutdown(fd, Int32(SHUT_RDWR)); Glibc.close(fd) }
    }
}
