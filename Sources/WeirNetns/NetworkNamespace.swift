import Synchronization
import WeirSystem

#if canImport(Glibc)
    import Glibc
#endif

/// A network namespace's identity: the device and inode of its nsfs file. A namespace deleted and recreated at the
/// same path is another namespace, with another identity.
public struct NamespaceIdentity: Sendable, Hashable, Codable, CustomStringConvertible {
    /// The device number of the nsfs file system that holds the namespace file (`st_dev`).
    public let device: UInt64
    /// The namespace's inode number on nsfs: the number a `/proc/PID/ns/net` link shows.
    public let inode: UInt64
    /// An identity from the device and inode that `stat` gives for a namespace file.
    public init(device: UInt64, inode: UInt64) {
        self.device = device
        self.inode = inode
    }
    /// `net:[4026532245]`, as `/proc/PID/ns/net` links read (with the device when it is not nsfs's usual 4).
    public var description: String { device == 4 ? "net:[\(inode)]" : "net:[\(inode)]@\(device)" }
}

/// The namespace file is missing, unreadable, or not a network namespace: a user error.
public struct NamespaceError: Error, Sendable, CustomStringConvertible {
    /// The namespace file that could not be used.
    public let path: String
    /// Why not: the errno's text, "not a namespace file", or that it is not a network namespace.
    public let reason: String
    /// The message for the user: the path, the reason, and what kind of path to give instead.
    public var description: String {
        "--netns \(path): \(reason). Give a bind-mounted network namespace such as /run/netns/NAME or /proc/PID/ns/net."
    }
}

/// An open network namespace: a descriptor that keeps it alive, and its identity.
///
/// `setns` moves only the calling thread, so work inside runs on a dedicated OS thread that enters, runs and ends;
/// no Swift-concurrency or NIO thread ever changes namespace. Sockets opened there stay in the namespace for their
/// whole life, whichever thread uses them later.
public final class NamespaceHandle: Sendable, CustomStringConvertible {
    /// The descriptor that keeps the namespace alive.
    public let descriptor: FileDescriptor
    /// The namespace's device and inode: a namespace recreated at the same path has another.
    public let identity: NamespaceIdentity
    /// Where it was opened from (for messages).
    public let path: String

    init(descriptor: consuming FileDescriptor, identity: NamespaceIdentity, path: String) {
        self.descriptor = descriptor
        self.identity = identity
        self.path = path
    }

    /// Opens `path` and checks that it is a network namespace, before anything is done in it.
    public static func open(_ path: String) throws(NamespaceError) -> NamespaceHandle {
        let fd: FileDescriptor
        do { fd = try FileDescriptor.open(path, O_RDONLY) } catch {
            throw NamespaceError(path: path, reason: error.reason)
        }
        let isNetwork: Bool
        do throws(SystemCallError) {
            isNetwork = try NamespaceCalls.isNetworkNamespace(fd)
        } catch {
            throw NamespaceError(
                path: path,
                reason: error.errno == ENOTTY || error.errno == EINVAL ? "not a namespace file" : error.reason)
        }
        guard isNetwork else { throw NamespaceError(path: path, reason: "a namespace, but not a network namespace") }
        let status: FileStatus
        do { status = try fd.status() } catch { throw NamespaceError(path: path, reason: error.reason) }
        return NamespaceHandle(
            descriptor: fd, identity: NamespaceIdentity(device: status.device, inode: status.inode), path: path)
    }

    /// Takes a namespace descriptor this process was handed (systemd's file-descriptor store), checking that it is a
    /// network namespace; `path` is where the pod's namespace is mounted, for messages.
    public static func adopt(_ fd: consuming FileDescriptor, path: String) throws(NamespaceError) -> NamespaceHandle {
        let isNetwork: Bool
        do throws(SystemCallError) { isNetwork = try NamespaceCalls.isNetworkNamespace(fd) } catch {
            throw NamespaceError(path: path, reason: "the stored descriptor: \(error.reason)")
        }
        guard isNetwork else {
            throw NamespaceError(path: path, reason: "the stored descriptor is no network namespace")
        }
        let status: FileStatus
        do { status = try fd.status() } catch { throw NamespaceError(path: path, reason: error.reason) }
        return NamespaceHandle(
            descriptor: fd, identity: NamespaceIdentity(device: status.device, inode: status.inode), path: path)
    }

    /// The namespace of the calling process.
    public static func current() throws(NamespaceError) -> NamespaceHandle { try open("/proc/self/ns/net") }

    /// The identity of the namespace at `path` without keeping it open.
    public static func identity(of path: String) throws(NamespaceError) -> NamespaceIdentity { try open(path).identity }

    /// The path it was opened from and its identity (`/run/netns/pod (net:[4026532245])`), for messages.
    public var description: String { "\(path) (\(identity))" }

    /// A `/proc/self/fd/N` path that names this namespace while the handle lives.
    public var procPath: String { "/proc/self/fd/\(descriptor.number)" }

    /// Runs `body` inside the namespace on a dedicated thread, and returns its result. A namespace the thread
    /// cannot enter is an error, not work done in the host's namespace.
    public func run<T: Sendable>(name: String = "weir-netns", _ body: @escaping @Sendable () throws -> T) throws -> T {
        // The join is the wait: the result is read after the thread has ended (no semaphore, so an init container
        // never starts libdispatch).
        let result = Mutex<Result<T, any Error>?>(nil)
        let thread = try OSThread.start(name: name) { [self] in
            let r = Result { () throws -> T in
                do throws(SystemCallError) { try NamespaceCalls.enter(descriptor) } catch {
                    throw error.context("entering network namespace \(path)")
                }
                return try body()
            }
            result.withLock { $0 = r }
        }
        thread.join()
        return try result.withLock { $0! }.get()
    }

    /// Runs `body` inside the namespace on a dedicated thread; the caller's task resumes when it is done, without
    /// blocking a cooperative or event-loop thread meanwhile.
    public func run<T: Sendable>(name: String = "weir-netns", _ body: @escaping @Sendable () throws -> T) async throws
        -> T
    {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, any Error>) in
            do {
                try OSThread.start(name: name, detached: true) { [self] in
                    continuation.resume(
                        with: Result { () throws -> T in
                            do throws(SystemCallError) { try NamespaceCalls.enter(descriptor) } catch {
                                throw error.context("entering network namespace \(path)")
                            }
                            return try body()
                        })
                }
            } catch {
                continuation.resume(throwing: error)
            }
        }
    }

    /// Starts a long-running thread inside the namespace (an event loop whose sockets live there). Returns once the
    /// thread is inside; a namespace it cannot enter is thrown here, and `body` never runs.
    public func thread(name: String, _ body: @escaping @Sendable () -> Void) throws -> OSThread {
        let entered = OneShot<SystemCallError?>()
        let thread = try OSThread.start(name: name) { [self] in
            do throws(SystemCallError) { try NamespaceCalls.enter(descriptor) } catch {
                entered.set(error.context("entering network namespace \(path)"))
                return
            }
            entered.set(nil)
            body()
        }
        if let failure = entered.wait() {
            thread.join()
            throw failure
        }
        return thread
    }
}

/// A network namespace named by a file (a bind mount such as `/run/netns/NAME`, or `/proc/PID/ns/net`), or the
/// process's own. Opened afresh for each piece of work; hold a `NamespaceHandle` to keep one namespace.
public struct NetworkNamespace: Sendable, CustomStringConvertible {
    /// nil is the namespace of the calling process.
    public let path: String?
    /// A namespace already held open: work goes into exactly this one, even if its path is reused meanwhile.
    let pinned: NamespaceHandle?

    /// The calling process's own network namespace: nothing is entered, and `run` works on the caller's thread.
    public static let current = NetworkNamespace(path: nil)

    /// The namespace at `path` (nil: the process's own), opened afresh for each piece of work.
    public init(path: String?) {
        self.path = path
        pinned = nil
    }

    /// The namespace a handle holds (named by its `/proc/self/fd` path in messages and to child processes).
    public init(handle: NamespaceHandle) {
        path = handle.procPath
        pinned = handle
    }

    /// A handle on the namespace, held for as long as the caller keeps it.
    public func open() throws(NamespaceError) -> NamespaceHandle {
        if let pinned { return pinned }
        return try NamespaceHandle.open(path ?? "/proc/self/ns/net")
    }

    /// The path, or "current network namespace", for messages (a held namespace by the path it was opened from).
    public var description: String { pinned?.path ?? path ?? "current network namespace" }

    /// Checks that the path names a network namespace, before any work starts.
    public func validate() throws(NamespaceError) {
        guard let path, pinned == nil else { return }
        _ = try NamespaceHandle.open(path)
    }

    /// Runs `body` inside the namespace and returns its result (inline for the current namespace).
    public func run<T: Sendable>(_ body: @escaping @Sendable () throws -> T) throws -> T {
        guard path != nil else { return try body() }
        return try open().run(body)
    }

    /// A long-running thread inside the namespace (see `NamespaceHandle.thread`).
    public func thread(name: String, _ body: @escaping @Sendable () -> Void) throws -> OSThread {
        if path != nil { return try open().thread(name: name, body) }
        return try OSThread.start(name: name, body)
    }
}

/// A new, empty network namespace held open; it disappears when released.
public final class ScratchNamespace: Sendable {
    /// The handle that keeps the namespace alive.
    public let handle: NamespaceHandle

    /// Creates the namespace on a throwaway thread (unshare moves only that thread).
    public init() throws {
        handle = try NamespaceHandle.current().run(name: "weir-scratch") { () throws -> NamespaceHandle in
            try NamespaceCalls.unshareNetwork()
            return try NamespaceHandle.open("/proc/thread-self/ns/net")
        }
    }

    /// A path that names the namespace while this object lives.
    public var namespace: NetworkNamespace {
        NetworkNamespace(path: "/proc/\(getpid())/fd/\(handle.descriptor.number)")
    }
}
