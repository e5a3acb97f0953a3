import CWeirShims
import Glibc

/// The path a Unix-socket server is about to bind. Only a socket that nobody serves (left by a process that is gone)
/// is replaced: a mistyped path never deletes a file, and a running server is never displaced.
public enum UnixSocketPath {
    public enum Failure: Error, CustomStringConvertible, Equatable {
        case notASocket(String)
        case inUse(String)

        public var description: String {
            switch self {
            case .notASocket(let p): return "\(p) exists and is not a socket; weir will not replace it"
            case .inUse(let p): return "\(p) is a socket another process is serving"
            }
        }
    }

    /// Checks without changing anything.
    public static func check(_ path: String) throws(Failure) {
        var st = stat()
        guard lstat(path, &st) == 0 else { return } // nothing there (or nothing we can see): bind will say
        guard st.st_mode & S_IFMT == S_IFSOCK else { throw .notASocket(path) }
        if isServed(path) { throw .inUse(path) }
    }

    /// Checks, then removes a stale socket so that bind can take the path.
    public static func claim(_ path: String) throws(Failure) {
        try check(path)
        unlink(path)
    }

    /// Whether a connect reaches a listener (a full backlog still counts as served).
    static func isServed(_ path: String) -> Bool {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var sun = address(path)
        let rc = withUnsafePointer(to: &sun) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
        return rc == 0 || weir_errno() == EAGAIN || weir_errno() == EINPROGRESS
    }

    /// The socket address of `path` (cut at 107 bytes: callers check the length they accept).
    public static func address(_ path: String) -> sockaddr_un {
        var sun = sockaddr_un()
        sun.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8.prefix(107)) + [0]
        withUnsafeMutableBytes(of: &sun.sun_path) { $0.copyBytes(from: bytes) }
        return sun
    }
}
