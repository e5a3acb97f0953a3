import CWeirShims

#if canImport(Glibc)
    import Glibc
#endif

/// An epoll instance; registrations carry a 64-bit tag the wait gives back.
public struct Epoll: ~Copyable, Sendable {
    let descriptor: FileDescriptor

    /// Event bits: readable (EPOLLIN), writable (EPOLLOUT), an error (EPOLLERR), a hang-up (EPOLLHUP).
    public static let readable = WEIR_EPOLLIN, writable = WEIR_EPOLLOUT, error = WEIR_EPOLLERR, hangUp = WEIR_EPOLLHUP
    /// Flags: the peer shut down its writing side (EPOLLRDHUP); report edges, not levels (EPOLLET).
    public static let peerClosed = WEIR_EPOLLRDHUP, edgeTriggered = WEIR_EPOLLET

    /// Creates a close-on-exec epoll instance (`epoll_create1(EPOLL_CLOEXEC)`).
    public init() throws(SystemCallError) {
        descriptor = FileDescriptor(owning: try Posix.call("epoll_create1") { weir_epoll_create() })
    }

    /// Registers `fd` for `events`, tagged `tag`.
    public func add(_ fd: borrowing FileDescriptor, events: UInt32, tag: UInt64) throws(SystemCallError) {
        try Posix.call("epoll_ctl ADD") { weir_epoll_add(descriptor.raw, fd.raw, events, tag) }
    }

    /// Unregisters `fd` (closing it would too).
    public func remove(_ fd: borrowing FileDescriptor) { _ = Posix.attempt { weir_epoll_del(descriptor.raw, fd.raw) } }

    /// Waits for events (`timeout` ms; -1: no timeout), filling `tags` and `events`; returns how many.
    public func wait(tags: inout [UInt64], events: inout [UInt32], timeout: Int32) throws(SystemCallError) -> Int {
        let max = Int32(min(tags.count, events.count))
        return Int(try Posix.call("epoll_wait") { weir_epoll_wait(descriptor.raw, &tags, &events, max, timeout) })
    }
}

extension FileDescriptor {
    /// A non-blocking CLOCK_MONOTONIC timerfd that fires every `period` ms.
    public static func periodicTimer(milliseconds period: Int32) throws(SystemCallError) -> FileDescriptor {
        FileDescriptor(owning: try Posix.call("timerfd_create") { weir_timerfd_periodic(period) })
    }

    /// Reads a timerfd's expiry count, so it stops polling readable.
    public func acknowledgeTimer() { weir_timerfd_ack(raw) }

    /// A non-blocking eventfd, for waking a thread that polls.
    public static func eventCounter() throws(SystemCallError) -> FileDescriptor {
        FileDescriptor(owning: try Posix.call("eventfd") { weir_eventfd() })
    }

    /// Adds to an eventfd: the thread polling it wakes.
    public func signalEvent() {
        var one: UInt64 = 1
        _ = Posix.attempt { Glibc.write(raw, &one, 8) }
    }
}

/// Waits for several descriptors at once (`poll`): which of them are readable, within `timeout` ms (-1: no limit).
public func pollReadable(
    _ first: borrowing FileDescriptor, _ second: borrowing FileDescriptor,
    timeout: Int32
) throws(SystemCallError) -> (first: Bool, second: Bool) {
    var fds = [
        pollfd(fd: first.raw, events: Int16(POLLIN), revents: 0),
        pollfd(fd: second.raw, events: Int16(POLLIN), revents: 0),
    ]
    _ = try Posix.call("poll") { poll(&fds, 2, timeout) }
    return (fds[0].revents != 0, fds[1].revents != 0)
}

extension FileDescriptor {
    /// Waits until the descriptor is readable (or writable, with `writable`) within `timeout` ms; false on timeout.
    public func wait(writable: Bool = false, timeout: Int32) throws(SystemCallError) -> Bool {
        var fd = pollfd(fd: raw, events: Int16(writable ? POLLOUT : POLLIN), revents: 0)
        return try Posix.call("poll") { poll(&fd, 1, timeout) } > 0
    }
}

/// An inotify instance (non-blocking).
public struct Inotify: ~Copyable, Sendable {
    /// The inotify descriptor: readable while events are queued, so it can be polled beside others.
    public let descriptor: FileDescriptor

    /// Default mask: entries created, deleted, moved, rewritten or re-attributed; the watched path moved or deleted.
    public static let changes = UInt32(
        IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_DELETE | IN_CREATE | IN_ATTRIB | IN_DELETE_SELF | IN_MOVE_SELF
    )

    /// Creates a non-blocking, close-on-exec inotify instance (`inotify_init1`).
    public init() throws(SystemCallError) {
        descriptor = FileDescriptor(
            owning: try Posix.call("inotify_init1") { inotify_init1(Int32(IN_CLOEXEC | IN_NONBLOCK)) })
    }

    /// Watches `path` for `mask`.
    @discardableResult
    public func watch(_ path: String, mask: UInt32 = Inotify.changes) throws(SystemCallError) -> Int32 {
        try Posix.call("inotify_add_watch \(path)") { inotify_add_watch(descriptor.raw, path, mask) }
    }

    /// Reads and discards every pending event; returns whether there was one.
    public func drain() -> Bool {
        var buffer = [UInt8](repeating: 0, count: 16384)
        var any = false
        // Bounded: a read returns EAGAIN once the queue is empty.
        for _ in 0..<10_000 {
            guard
                case .ok(let n) = Posix.attempt({
                    buffer.withUnsafeMutableBytes { Glibc.read(descriptor.raw, $0.baseAddress, $0.count) }
                }), n > 0
            else { break }
            any = true
        }
        return any
    }
}
