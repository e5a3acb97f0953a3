import CWeirShims
#if canImport(Glibc)
import Glibc
#endif

/// A failed system call: its name, errno, and what weir was doing.
public struct SystemCallError: Error, Sendable, CustomStringConvertible {
    public let call: String
    public let errno: Int32
    public let context: String

    public init(_ call: String, errno: Int32 = weir_errno(), context: String = "") {
        self.call = call; self.errno = errno; self.context = context
    }

    public var description: String {
        let reason = String(cString: strerror(errno))
        return context.isEmpty ? "\(call): \(reason) (errno \(errno))" : "\(context): \(call): \(reason) (errno \(errno))"
    }
}
