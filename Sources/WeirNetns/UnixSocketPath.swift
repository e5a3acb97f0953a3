import WeirSystem

#if canImport(Glibc)
    import Glibc
#endif

/// The path a Unix-socket server is about to bind. Only a socket that nobody serves (left by a process that is gone)
/// is replaced: a mistyped path never deletes a file, and a running server is never displaced.
public enum UnixSocketPath {
    /// Why a path cannot be bound: it is not a socket, a live server holds it, or it is too long for `sun_path`.
    public enum Failure: Error, CustomStringConvertible, Equatable {
        /// Something other than a socket is at the path; weir never deletes it.
        case notASocket(String)
        /// The socket at the path accepts connections: another process serves it.
        case inUse(String)
        /// The path is longer than the `SocketAddressBytes.maxUnixPath` bytes a Unix socket address holds.
        case tooLong(String)

        /// The message for the user, naming the path and what is wrong with it.
        public var description: String {
            switch self {
            case .notASocket(let p): return "\(p) exists and is not a socket; weir will not replace it"
            case .inUse(let p): return "\(p) is a socket another process is serving"
            case .tooLong(let p):
                return "\(p) is longer than the \(SocketAddressBytes.maxUnixPath) bytes a Unix socket path may have"
            }
        }
    }

    /// Checks without changing anything.
    public static func check(_ path: String) throws(Failure) {
        if path.utf8.count > SocketAddressBytes.maxUnixPath { throw .tooLong(path) }
        if path.hasPrefix("@") { return }  // abstract: no file
        // Nothing there (or nothing we can see): bind will say.
        guard let st = try? FileStatus.ofLink(path) else { return }
        guard st.isSocket else { throw .notASocket(path) }
        if isServed(path) { throw .inUse(path) }
    }

    /// Checks, then removes a stale socket so that bind can take the path.
    public static func claim(_ path: String) throws(Failure) {
        try check(path)
        if !path.hasPrefix("@") { try? FileSystem.unlinkIfPresent(path) }
    }

    /// Whether a connect reaches a listener (a full backlog still counts as served).
    static func isServed(_ path: String) -> Bool {
        guard let fd = try? FileDescriptor.unixStream(nonBlocking: true) else { return false }
        switch Result(catching: { () throws(SystemCallError) in try fd.connect(.unix(path), describedAs: path) }) {
        case .success: return true
        case .failure(let e): return e.errno == EAGAIN
        }
    }
}
