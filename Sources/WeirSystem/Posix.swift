import CWeirShims

#if canImport(Glibc)
    import Glibc
#endif

/// A failed system call: its name, errno, and what weir was doing.
public struct SystemCallError: Error, Sendable, Hashable, CustomStringConvertible {
    /// The call that failed (`open`, `setns`, `bind 127.0.0.1:15090`).
    public let call: String
    /// Its errno.
    public let errno: Int32
    /// What weir was doing, for the message (may be empty).
    public let context: String

    /// An error for `call` with `errno` (read by `Posix`, the one place that reads errno).
    public init(_ call: String, errno: Int32, context: String = "") {
        self.call = call
        self.errno = errno
        self.context = context
    }

    /// The same error, saying what weir was doing.
    public func context(_ context: String) -> SystemCallError { SystemCallError(call, errno: errno, context: context) }

    /// The errno's text (`Address already in use`).
    public var reason: String { Posix.describe(errno) }

    /// `call: reason (errno N)`, preceded by the context when there is one.
    public var description: String {
        context.isEmpty ? "\(call): \(reason) (errno \(errno))" : "\(context): \(call): \(reason) (errno \(errno))"
    }
}

/// The result of a call whose failures are routine (`EAGAIN` on a non-blocking socket): a value or an errno, without
/// the cost of a thrown error on the data path.
public enum Outcome<T: ~Copyable>: ~Copyable {
    /// The call succeeded, with its result.
    case ok(T)
    /// The call failed with this errno.
    case failed(Int32)
}

extension Outcome: Copyable where T: Copyable {}

/// The system-call funnel, in the shape of swift-nio's `Posix`: every libc call that can fail goes through here,
/// which retries `EINTR` where that is right, reads errno before anything else can touch it, and reports the one
/// `SystemCallError`. Nothing else in weir reads errno.
public enum Posix {
    /// Runs `body`, a call that returns -1 and sets errno on failure. `EINTR` is retried unless `retryingEINTR` is
    /// false (a call whose interruption means something, such as `sigwait`).
    @inlinable
    @discardableResult
    public static func call<T: BinaryInteger>(
        _ name: @autoclosure () -> String, retryingEINTR: Bool = true,
        _ body: () -> T
    ) throws(SystemCallError) -> T {
        // Bounded: EINTR comes from a signal delivered to this thread, and signals are few.
        for _ in 0..<1000 {
            let result = body()
            if result != -1 { return result }
            let e = weir_errno()
            if e == EINTR && retryingEINTR { continue }
            throw SystemCallError(name(), errno: e)
        }
        throw SystemCallError(name(), errno: EINTR)
    }

    /// Runs `body`, a call that returns nil and sets errno on failure (`opendir`, `mnl_socket_open`).
    @inlinable
    public static func call<P>(_ name: @autoclosure () -> String, _ body: () -> P?) throws(SystemCallError) -> P {
        for _ in 0..<1000 {
            if let p = body() { return p }
            let e = weir_errno()
            if e == EINTR { continue }
            throw SystemCallError(name(), errno: e)
        }
        throw SystemCallError(name(), errno: EINTR)
    }

    /// Runs `body`, a call that returns its error number instead of setting errno (`pthread_create`,
    /// `posix_spawn`): 0 is success.
    @inlinable
    public static func checked(_ name: @autoclosure () -> String, _ body: () -> Int32) throws(SystemCallError) {
        let rc = body()
        if rc != 0 { throw SystemCallError(name(), errno: rc) }
    }

    /// Runs `body` on the data path: the result, or the errno when it returned -1 (`EINTR` retried).
    @inlinable
    public static func attempt<T: BinaryInteger>(_ body: () -> T) -> Outcome<T> {
        for _ in 0..<1000 {
            let result = body()
            if result != -1 { return .ok(result) }
            let e = weir_errno()
            if e != EINTR { return .failed(e) }
        }
        return .failed(EINTR)
    }

    /// Runs `body` and reports whether it returned -1, with its errno; for the few calls whose "failure" is an
    /// answer (`bind` telling whether an address is local).
    @inlinable
    public static func errno<T: BinaryInteger>(of body: () -> T) -> Int32? {
        if case .failed(let e) = attempt(body) { return e }
        return nil
    }

    /// The text of an errno.
    public static func describe(_ errno: Int32) -> String { String(cString: strerror(errno)) }
}
