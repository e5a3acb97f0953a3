import CNetfilter
import Dispatch
import CWeirShims
import WeirNetns
#if canImport(Glibc)
import Glibc
#endif

/// An error the kernel returned in a netlink ack, with what the message was doing.
public struct NetlinkError: Error, Sendable, CustomStringConvertible {
    public let errno: Int32
    public let what: String
    public var description: String { "kernel refused \(what): \(String(cString: strerror(errno))) (errno \(errno))" }
}

/// A netlink socket (libmnl). Not shared between threads; one per operation.
final class NetlinkSocket {
    let socket: OpaquePointer
    let portID: UInt32
    private(set) var sequence: UInt32

    init(bus: Int32) throws {
        guard let s = mnl_socket_open(bus) else { throw SystemCallError("mnl_socket_open", context: "opening a netlink socket") }
        guard mnl_socket_bind(s, 0, pid_t(MNL_SOCKET_AUTOPID)) == 0 else {
            let e = SystemCallError("mnl_socket_bind", context: "binding a netlink socket")
            mnl_socket_close(s)
            throw e
        }
        socket = s
        portID = mnl_socket_get_portid(s)
        // Sequence numbers only need to be unique per socket; start from the clock like nft does.
        sequence = UInt32(truncatingIfNeeded: time(nil))
    }

    /// Set after a committed nf_tables batch: closing such a socket blocks until the kernel has freed the
    /// replaced objects (an RCU grace period, 4–16 ms here), though the new rules are already in force.
    var closeInBackground = false

    deinit {
        if closeInBackground {
            let address = UInt(bitPattern: socket)
            NetlinkSocket.closer.async { mnl_socket_close(OpaquePointer(bitPattern: address)) }
        } else {
            mnl_socket_close(socket)
        }
    }

    /// Closes sockets whose release waits on the kernel, off the caller's path.
    static let closer = DispatchQueue(label: "weir.netlink.close")

    func nextSequence() -> UInt32 { sequence &+= 1; return sequence }

    func send(_ buffer: UnsafeRawPointer, _ length: Int) throws {
        guard mnl_socket_sendto(socket, buffer, length) >= 0 else { throw SystemCallError("sendto", context: "sending to netlink") }
    }

    /// Sends several buffers in one sendmsg (a batch built page by page).
    func send(iovecs: inout [iovec]) throws {
        var address = sockaddr_nl()
        address.nl_family = sa_family_t(AF_NETLINK)
        let n = withUnsafeMutablePointer(to: &address) { addr in
            iovecs.withUnsafeMutableBufferPointer { iov -> Int in
                var msg = msghdr()
                msg.msg_name = UnsafeMutableRawPointer(addr)
                msg.msg_namelen = socklen_t(MemoryLayout<sockaddr_nl>.size)
                msg.msg_iov = iov.baseAddress
                msg.msg_iovlen = iov.count
                return sendmsg(mnl_socket_get_fd(socket), &msg, 0)
            }
        }
        guard n >= 0 else { throw SystemCallError("sendmsg", context: "sending a netfilter batch") }
    }

    /// Receives until `isDone` says so, running `callback` on each message (mnl_cb_run semantics).
    /// `callback` returns MNL_CB_OK / MNL_CB_STOP / MNL_CB_ERROR; errors in acks arrive as thrown NetlinkError via `onError`.
    func receive(expectedSequence: UInt32?, handle: (UnsafePointer<nlmsghdr>) -> Bool) throws {
        let size = 1 << 16
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 8)
        defer { buffer.deallocate() }
        // Bounded: a dump or an ack stream always ends with DONE or the last ack; cap the reads anyway.
        for _ in 0..<1_000_000 {
            let n = mnl_socket_recvfrom(socket, buffer, size)
            guard n >= 0 else { throw SystemCallError("recvfrom", context: "reading netlink replies") }
            var remaining = Int32(n)
            var header = buffer.assumingMemoryBound(to: nlmsghdr.self)
            while mnl_nlmsg_ok(header, remaining) {
                if !handle(UnsafePointer(header)) { return }
                header = mnl_nlmsg_next(header, &remaining)
            }
        }
    }
}

extension UnsafePointer<nlmsghdr> {
    /// The errno of an NLMSG_ERROR message (0 for a plain ack).
    var ackErrno: Int32 {
        -mnl_nlmsg_get_payload(self)!.assumingMemoryBound(to: nlmsgerr.self).pointee.error
    }
}
