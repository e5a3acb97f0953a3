import CWeirShims
#if canImport(Glibc)
import Glibc
#endif

/// A network namespace named by a file: a bind mount (`/run/netns/NAME`) or `/proc/PID/ns/net`.
///
/// `setns` moves only the calling thread, so work inside runs on a dedicated OS thread that enters,
/// runs the work and ends; no shared executor thread ever changes namespace. Sockets opened there
/// stay in that namespace for their whole life, whichever thread uses them later.
public struct NetworkNamespace: Sendable, CustomStringConvertible {
    /// nil is the namespace of the calling process.
    public let path: String?

    public static let current = NetworkNamespace(path: nil)

    public init(path: String?) { self.path = path }

    public var description: String { path ?? "current network namespace" }

    /// The namespace file is missing or not a network namespace: a user error.
    public struct NotFound: Error, Sendable, CustomStringConvertible {
        public let path: String
        public let reason: String
        public var description: String { "--netns \(path): \(reason). Give a bind-mounted namespace such as /run/netns/NAME or /proc/PID/ns/net." }
    }

    /// Checks that the path exists and is a namespace file, before any work starts.
    public func validate() throws(NotFound) {
        guard let path else { return }
        var st = stat()
        guard stat(path, &st) == 0 else { throw NotFound(path: path, reason: String(cString: strerror(weir_errno()))) }
        // Namespace files live on nsfs; a plain file or directory is a mistake.
        let nsfsMagic: Int = 0x6E73_6673
        let fsType = weir_fs_type(path)
        if fsType >= 0, Int(fsType) != nsfsMagic {
            throw NotFound(path: path, reason: "not a namespace file (not on nsfs)")
        }
    }

    /// Runs `body` inside the namespace and returns its result.
    public func run<T: Sendable>(_ body: @escaping @Sendable () throws -> T) throws -> T {
        guard let path else { return try body() }
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw SystemCallError("open", context: "opening network namespace \(path)") }
        defer { close(fd) }
        let box = ThreadBox<T>(fd: fd, body: body)
        var thread = pthread_t()
        let unmanaged = Unmanaged.passRetained(box)
        let rc = pthread_create(&thread, nil, { raw in
            let box = Unmanaged<AnyObject>.fromOpaque(raw!).takeRetainedValue() as! ThreadEntry
            box.enterAndRun()
            return nil
        }, unmanaged.toOpaque())
        guard rc == 0 else {
            unmanaged.release()
            throw SystemCallError("pthread_create", errno: rc, context: "starting the namespace thread")
        }
        pthread_join(thread, nil)
        return try box.result!.get()
    }
}

private protocol ThreadEntry: AnyObject { func enterAndRun() }

/// Carries work to the namespace thread and its result back. The creating thread only reads `result`
/// after `pthread_join`, which orders it after the namespace thread's write, so no data race is possible.
private final class ThreadBox<T: Sendable>: ThreadEntry, @unchecked Sendable {
    let fd: Int32
    let body: @Sendable () throws -> T
    var result: Result<T, Error>?

    init(fd: Int32, body: @escaping @Sendable () throws -> T) { self.fd = fd; self.body = body }

    func enterAndRun() {
        guard weir_setns_net(fd) == 0 else {
            result = .failure(SystemCallError("setns", context: "entering the network namespace"))
            return
        }
        result = Result { try body() }
    }
}

/// A new, empty network namespace held open by a file descriptor; it disappears when released.
public final class ScratchNamespace: Sendable {
    /// The descriptor that keeps the namespace alive.
    public let fd: Int32

    /// Creates the namespace on a throwaway thread (unshare moves only that thread).
    public init() throws {
        let fd = try NetworkNamespace.current.run { () throws -> Int32 in
            // `current.run` runs inline; make a dedicated thread by entering our own namespace first.
            try NetworkNamespace(path: "/proc/thread-self/ns/net").run {
                guard weir_unshare_net() == 0 else { throw SystemCallError("unshare", context: "creating a scratch network namespace") }
                let fd = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC)
                guard fd >= 0 else { throw SystemCallError("open", context: "holding the scratch network namespace") }
                return fd
            }
        }
        self.fd = fd
    }

    deinit { close(fd) }

    /// A path that names the namespace while this object lives.
    public var namespace: NetworkNamespace { NetworkNamespace(path: "/proc/\(getpid())/fd/\(fd)") }
}

/// A long-running OS thread inside a network namespace (for event loops whose sockets must live there).
public final class NamespaceThread: @unchecked Sendable {
    // `thread` is written once before the initializer returns and only read by join().
    private var thread = pthread_t()

    /// Starts `body` on a new thread that first enters `namespace` (nil path: stays in the current one).
    public init(namespace: NetworkNamespace, name: String, _ body: @escaping @Sendable () -> Void) throws {
        var fd: Int32 = -1
        if let path = namespace.path {
            fd = open(path, O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else { throw SystemCallError("open", context: "opening network namespace \(path)") }
        }
        let start = ThreadStart(fd: fd, name: name, body: body)
        let unmanaged = Unmanaged.passRetained(start)
        let rc = pthread_create(&thread, nil, { raw in
            let start = Unmanaged<ThreadStart>.fromOpaque(raw!).takeRetainedValue()
            start.run()
            return nil
        }, unmanaged.toOpaque())
        guard rc == 0 else {
            unmanaged.release()
            if fd >= 0 { close(fd) }
            throw SystemCallError("pthread_create", errno: rc, context: "starting thread \(name)")
        }
    }

    public func join() { pthread_join(thread, nil) }
}

private final class ThreadStart: @unchecked Sendable {
    // Immutable after init; handed to exactly one thread.
    let fd: Int32
    let name: String
    let body: @Sendable () -> Void
    init(fd: Int32, name: String, body: @escaping @Sendable () -> Void) { self.fd = fd; self.name = name; self.body = body }

    func run() {
        if fd >= 0 {
            let ok = weir_setns_net(fd) == 0
            close(fd)
            // A thread that cannot enter its namespace must not run there by mistake in the host's.
            guard ok else { return }
        }
        body()
    }
}
