import CWeirShims

#if canImport(Glibc)
    import Glibc
#endif

/// systemd's notification protocol (sd_notify): datagrams of `KEY=VALUE` lines to `$NOTIFY_SOCKET`.
/// The socket is made once, on the thread that reads the environment: an abstract `NOTIFY_SOCKET` name
/// (`@/org/freedesktop/systemd1/notify/…`) belongs to the network namespace a socket is made in, and only the
/// host's reaches systemd, so it must never be made on a thread that has entered a pod.
public final class SystemdNotifier: Sendable {
    let socket: SharedDescriptor
    let address: SocketAddressBytes
    /// How often systemd expects `WATCHDOG=1` (nanoseconds), when the unit has `WatchdogSec=` for this process.
    public let watchdogNanoseconds: UInt64?

    init(socket: consuming FileDescriptor, address: SocketAddressBytes, watchdog: UInt64?) {
        self.socket = SharedDescriptor(socket)
        self.address = address
        watchdogNanoseconds = watchdog
    }

    /// The notifier of a process systemd started with `Type=notify`; nil outside systemd (no `NOTIFY_SOCKET`),
    /// or when the socket cannot be made.
    public static func fromEnvironment(_ env: [String: String]) -> SystemdNotifier? {
        guard let path = env["NOTIFY_SOCKET"], path.hasPrefix("/") || path.hasPrefix("@"),
            path.utf8.count <= SocketAddressBytes.maxUnixPath,
            let fd = try? FileDescriptor.socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue))
        else { return nil }
        var watchdog: UInt64?
        // WATCHDOG_PID names the process the watchdog is for (another process than this one: not ours).
        if let usec = env["WATCHDOG_USEC"].flatMap(UInt64.init), usec > 0,
            env["WATCHDOG_PID"].flatMap(Int32.init).map({ $0 == getpid() }) ?? true
        {
            watchdog = usec * 1000
        }
        return SystemdNotifier(socket: fd, address: .unix(path), watchdog: watchdog)
    }

    /// Sends one notification (`READY=1`, `STATUS=…`, `STOPPING=1`, `WATCHDOG=1`); whether systemd got it.
    @discardableResult
    public func send(_ text: String) -> Bool {
        let bytes = Array(text.utf8)
        let raw = socket.descriptor.number
        let outcome = Posix.attempt {
            bytes.withUnsafeBytes { b in
                address.withPointer { sendto(raw, b.baseAddress, b.count, Int32(MSG_NOSIGNAL), $0, $1) }
            }
        }
        if case .ok = outcome { return true }
        return false
    }
}
