import CWeirShims
import Dispatch
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// A dedicated OS thread (not a Swift-concurrency or NIO thread), with a name `ps -L` and `top -H` show.
public final class OSThread: Sendable {
    let handle: pthread_t

    private init(handle: pthread_t) { self.handle = handle }

    /// Starts `body` on a new thread named `name` (15 bytes are kept). A `detached` thread is never joined: its
    /// resources go when it ends (for work whose end the caller learns otherwise).
    @discardableResult
    public static func start(
        name: String, detached: Bool = false,
        _ body: @escaping @Sendable () -> Void
    ) throws(SystemCallError) -> OSThread {
        let start = Start(name: name, body: body)
        let unmanaged = Unmanaged.passRetained(start)
        var thread = pthread_t()
        do {
            try Posix.checked("pthread_create \(name)") {
                pthread_create(
                    &thread, nil,
                    { raw in
                        let start = Unmanaged<Start>.fromOpaque(raw!).takeRetainedValue()
                        start.name.withCString { weir_set_thread_name($0) }
                        start.body()
                        return nil
                    }, unmanaged.toOpaque())
            }
        } catch {
            unmanaged.release()
            throw error
        }
        if detached { pthread_detach(thread) }
        return OSThread(handle: thread)
    }

    /// Waits for the thread to end.
    public func join() { pthread_join(handle, nil) }

    private final class Start: Sendable {
        let name: String
        let body: @Sendable () -> Void
        init(name: String, body: @escaping @Sendable () -> Void) {
            self.name = name
            self.body = body
        }
    }
}

/// The calls that move a thread between network namespaces. `setns` and `unshare` change the calling thread only:
/// callers run them on a dedicated `OSThread`, never on a shared executor.
public enum NamespaceCalls {
    /// `ioctl(NS_GET_NSTYPE)`: whether `fd` is a network namespace file. Throws ENOTTY for a file that is no
    /// namespace at all.
    public static func isNetworkNamespace(_ fd: borrowing FileDescriptor) throws(SystemCallError) -> Bool {
        try Posix.call("ioctl NS_GET_NSTYPE") { weir_namespace_type(fd.raw) } == weir_clone_newnet()
    }

    /// `setns(fd, CLONE_NEWNET)` on the calling thread.
    public static func enter(_ fd: borrowing FileDescriptor) throws(SystemCallError) {
        try Posix.call("setns") { weir_setns_net(fd.raw) }
    }

    /// `unshare(CLONE_NEWNET)` on the calling thread: it moves to a new, empty network namespace.
    public static func unshareNetwork() throws(SystemCallError) {
        try Posix.call("unshare") { weir_unshare_net() }
    }
}

/// A value set once, by one thread, and waited for by another.
public final class OneShot<T: Sendable>: Sendable {
    let state = Mutex<T?>(nil)
    let semaphore = DispatchSemaphore(value: 0)

    /// An empty slot: `wait()` blocks until the first `set`.
    public init() {}

    /// Sets the value (the first call wins) and wakes the waiter.
    public func set(_ value: T) {
        let first = state.withLock { s -> Bool in
            if s != nil { return false }
            s = value
            return true
        }
        if first { semaphore.signal() }
    }

    /// Waits for the value.
    public func wait() -> T {
        semaphore.wait()
        semaphore.signal()  // a second wait returns at once
        return state.withLock { $0! }
    }
}

extension OSThread {
    /// Runs blocking work (a join, a flush to disk) on a thread of its own, and resumes the caller when it is done:
    /// no Swift-concurrency thread waits meanwhile.
    public static func run<T: Sendable>(name: String, _ body: @escaping @Sendable () -> T) async -> T {
        await withCheckedContinuation { (c: CheckedContinuation<T, Never>) in
            do {
                try start(name: name, detached: true) { c.resume(returning: body()) }
            } catch {
                // No thread left: run it here rather than not at all.
                c.resume(returning: body())
            }
        }
    }
}
