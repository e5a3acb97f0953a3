import CWeirShims
import Dispatch

#if canImport(Glibc)
    import Glibc
#endif

/// A netlink socket bound to a port id the kernel chose. One owner, one thread at a time.
public struct NetlinkSocket: ~Copyable, Sendable {
    /// The owned socket.
    public let descriptor: FileDescriptor
    /// The port id the kernel gave it (replies are addressed to it).
    public let portID: UInt32

    /// `socket(AF_NETLINK, SOCK_RAW, bus)`, bound with port id 0 so that the kernel picks one.
    public init(bus: Int32) throws(SystemCallError) {
        let fd = try FileDescriptor.socket(AF_NETLINK, Int32(SOCK_RAW.rawValue), protocol: bus)
        portID = try fd.bindNetlink()
        descriptor = fd
    }

    /// NETLINK_CAP_ACK: an ack carries the header of the acknowledged message, not all of it, so a batch of a
    /// thousand messages gets a thousand small acks instead of its own size back.
    public func capAcknowledgements() throws(SystemCallError) {
        try descriptor.setInt(Int32(SOL_NETLINK), 10, 1, "NETLINK_CAP_ACK")
    }

    /// Grows the receive and send buffers to at least `bytes`: the `FORCE` options (CAP_NET_ADMIN) pass the
    /// system-wide caps, the plain ones are the fallback without the capability.
    public func growBuffers(to bytes: Int) {
        let value = Int32(clamping: bytes)
        for (force, plain) in [(SO_RCVBUFFORCE, SO_RCVBUF), (SO_SNDBUFFORCE, SO_SNDBUF)] {
            if (try? descriptor.setInt(SOL_SOCKET, force, value, "SO_BUFFORCE")) == nil {
                try? descriptor.setInt(SOL_SOCKET, plain, value, "SO_BUF")
            }
        }
    }

    /// SO_RCVTIMEO: a reply that never comes ends the wait with EAGAIN.
    public func setReceiveTimeout(seconds: Int) throws(SystemCallError) {
        var tv = timeval(tv_sec: seconds, tv_usec: 0)
        try Posix.call("setsockopt SO_RCVTIMEO") {
            setsockopt(descriptor.raw, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        }
    }

    /// Sends the buffers to the kernel in one `sendmsg`: one skb, as an nf_tables batch must be.
    public func send(_ buffers: [UnsafeRawBufferPointer]) throws(SystemCallError) {
        var address = sockaddr_nl()
        address.nl_family = sa_family_t(AF_NETLINK)
        var iov = buffers.map { iovec(iov_base: UnsafeMutableRawPointer(mutating: $0.baseAddress), iov_len: $0.count) }
        let raw = descriptor.raw
        try Posix.call("sendmsg netlink") {
            withUnsafeMutablePointer(to: &address) { addr in
                iov.withUnsafeMutableBufferPointer { vector -> Int in
                    var message = msghdr()
                    message.msg_name = UnsafeMutableRawPointer(addr)
                    message.msg_namelen = socklen_t(MemoryLayout<sockaddr_nl>.size)
                    message.msg_iov = vector.baseAddress
                    message.msg_iovlen = vector.count
                    return sendmsg(raw, &message, 0)
                }
            }
        }
    }

    /// One datagram of replies into `buffer`; its length.
    public func receive(into buffer: UnsafeMutableRawBufferPointer) throws(SystemCallError) -> Int {
        try Posix.call("recv netlink") { recv(descriptor.raw, buffer.baseAddress, buffer.count, 0) }
    }

    /// Closes on a background queue. After a committed nf_tables batch the kernel frees the replaced objects
    /// when the socket closes, after an RCU grace period (4–16 ms here); the new rules are in force already, so
    /// the caller need not wait.
    public consuming func closeInBackground() {
        let box = DescriptorBox(descriptor)
        NetlinkCloser.queue.async { box.close() }
    }

    /// Closes now: the caller waits for what the kernel frees (a process that exits next would wait at its exit).
    public consuming func close() {}
}

/// Moves an owned descriptor into an escaping closure. Its one use: the close happens on one queue, once.
private final class DescriptorBox: @unchecked Sendable {
    // Sendable by construction: the box is made on one thread and then only touched by the closer queue.
    var descriptor: FileDescriptor?
    init(_ descriptor: consuming FileDescriptor) { self.descriptor = .some(consume descriptor) }
    func close() { descriptor = nil }
}

private enum NetlinkCloser {
    static let queue = DispatchQueue(label: "weir.netlink.close")
}

extension FileDescriptor {
    /// Binds a netlink socket with port id 0, so that the kernel picks one; returns the port id it gave.
    func bindNetlink() throws(SystemCallError) -> UInt32 {
        var address = sockaddr_nl()
        address.nl_family = sa_family_t(AF_NETLINK)
        var length = socklen_t(MemoryLayout<sockaddr_nl>.size)
        try Posix.call("bind netlink") {
            withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.bind(raw, $0, length) }
            }
        }
        try Posix.call("getsockname netlink") {
            withUnsafeMutablePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(raw, $0, &length) }
            }
        }
        return address.nl_pid
    }

    /// A non-blocking netlink socket on `bus` that receives the multicast `group`'s notifications (nftables'
    /// changes are NETLINK_NETFILTER's group NFNLGRP_NFTABLES). Made in the namespace whose changes it hears.
    public static func netlinkSubscriber(bus: Int32, group: UInt32) throws(SystemCallError) -> FileDescriptor {
        let fd = try socket(AF_NETLINK, Int32(SOCK_RAW.rawValue), protocol: bus, nonBlocking: true)
        _ = try fd.bindNetlink()
        // NETLINK_ADD_MEMBERSHIP (1) takes any group number; the bind mask only the first 32.
        try fd.setInt(Int32(SOL_NETLINK), 1, Int32(group), "NETLINK_ADD_MEMBERSHIP")
        return fd
    }

    /// Reads and discards what a subscriber holds; returns whether anything was there (an overrun, ENOBUFS, counts:
    /// notifications were lost, so something changed).
    public func drainNotifications() -> Bool {
        var buffer = [UInt8](repeating: 0, count: 65536)
        var any = false
        // Bounded: EAGAIN ends it once the queue is empty.
        for _ in 0..<10_000 {
            let outcome = Posix.attempt {
                buffer.withUnsafeMutableBytes { Glibc.recv(raw, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
            }
            switch outcome {
            case .ok(let n) where n > 0: any = true
            case .failed(let e) where e == ENOBUFS: any = true
            default: return any
            }
        }
        return any
    }
}
