import CNetfilter
import WeirSystem

#if canImport(Glibc)
    import Glibc
#endif

/// An error the kernel returned in a netlink ack, with what the message was doing.
public struct NetlinkError: Error, Sendable, Hashable, CustomStringConvertible {
    /// The errno of the ack.
    public let errno: Int32
    /// What the refused message did.
    public let what: String

    /// The kernel's refusal, with `errno`, of the message that did `what`.
    public init(errno: Int32, what: String) {
        self.errno = errno
        self.what = what
    }

    /// `kernel refused WHAT: REASON (errno N)`, for the user.
    public var description: String { "kernel refused \(what): \(Posix.describe(errno)) (errno \(errno))" }
}

/// One request-and-replies exchange on a fresh netlink socket: a dump, a request with its ack, or an nf_tables
/// batch. Replies are read in a buffer large enough for the biggest datagram the kernel sends (32 KiB, or a page).
enum Netlink {
    static let receiveBufferSize = 1 << 16
    /// Bounded: a dump or an ack stream always ends with DONE or the last ack; a kernel that kept talking would
    /// end here.
    static let maxDatagrams = 1_000_000

    /// Opens a socket on `bus` with small acks (NETLINK_CAP_ACK).
    static func open(_ bus: Int32) throws(SystemCallError) -> NetlinkSocket {
        let socket = try NetlinkSocket(bus: bus)
        // Older kernels lack the option; the acks are then larger, which the buffer sizes absorb.
        try? socket.capAcknowledgements()
        return socket
    }

    /// Reads datagrams and hands each message to `handle` until it returns false.
    static func receive(
        _ socket: borrowing NetlinkSocket, context: String,
        _ handle: (UnsafePointer<nlmsghdr>) -> Bool
    ) throws {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: receiveBufferSize, alignment: 8)
        defer { buffer.deallocate() }
        for _ in 0..<maxDatagrams {
            let n: Int
            do {
                n = try socket.receive(into: buffer)
            } catch {
                throw error.context(context)
            }
            var remaining = Int32(n)
            var header = buffer.baseAddress!.assumingMemoryBound(to: nlmsghdr.self)
            while mnl_nlmsg_ok(header, remaining) {
                if !handle(UnsafePointer(header)) { return }
                header = mnl_nlmsg_next(header, &remaining)
            }
        }
    }

    /// Sends the message `build` writes into a zeroed buffer (returning its header) and collects every reply of
    /// the dump (NLM_F_DUMP) until DONE.
    static func dump(
        _ bus: Int32, what: String, build: (UnsafeMutableRawPointer) -> UnsafeMutablePointer<nlmsghdr>,
        _ each: (UnsafePointer<nlmsghdr>) -> Void
    ) throws {
        let socket = try open(bus)
        let message = UnsafeMutableRawBufferPointer.allocate(byteCount: mnlBufferSize, alignment: 8)
        defer { message.deallocate() }
        message.initializeMemory(as: UInt8.self, repeating: 0)
        let nlh = build(message.baseAddress!)
        nlh.pointee.nlmsg_seq = 1
        nlh.pointee.nlmsg_flags |= UInt16(NLM_F_REQUEST | NLM_F_DUMP)
        try socket.send([UnsafeRawBufferPointer(rebasing: message[0..<Int(nlh.pointee.nlmsg_len)])])
        var failure: Int32 = 0
        try receive(socket, context: "reading \(what)") { msg in
            if msg.pointee.nlmsg_type == UInt16(NLMSG_DONE) { return false }
            if msg.pointee.nlmsg_type == UInt16(NLMSG_ERROR) {
                failure = msg.ackErrno
                return false
            }
            each(msg)
            return true
        }
        if failure != 0 { throw NetlinkError(errno: failure, what: what) }
    }

    /// One request with an ack; errors in `tolerate` count as success.
    static func request(
        _ bus: Int32, type: UInt16, flags: Int32, what: String, tolerate: Set<Int32> = [],
        build: (UnsafeMutablePointer<nlmsghdr>) -> Void
    ) throws {
        let socket = try open(bus)
        let message = UnsafeMutableRawBufferPointer.allocate(byteCount: mnlBufferSize, alignment: 8)
        defer { message.deallocate() }
        message.initializeMemory(as: UInt8.self, repeating: 0)
        let nlh = mnl_nlmsg_put_header(message.baseAddress)!
        nlh.pointee.nlmsg_type = type
        nlh.pointee.nlmsg_flags = UInt16(NLM_F_REQUEST | NLM_F_ACK | flags)
        nlh.pointee.nlmsg_seq = 1
        build(nlh)
        try socket.send([UnsafeRawBufferPointer(rebasing: message[0..<Int(nlh.pointee.nlmsg_len)])])
        var failure: Int32 = 0
        try receive(socket, context: what) { msg in
            if msg.pointee.nlmsg_type == UInt16(NLMSG_ERROR) {
                failure = msg.ackErrno
                return false
            }
            return true
        }
        if failure != 0 && !tolerate.contains(failure) { throw NetlinkError(errno: failure, what: what) }
    }
}

extension UnsafePointer<nlmsghdr> {
    /// The errno of an NLMSG_ERROR message (0 for a plain ack).
    var ackErrno: Int32 {
        -mnl_nlmsg_get_payload(self)!.assumingMemoryBound(to: nlmsgerr.self).pointee.error
    }

    /// The sequence number of the message an NLMSG_ERROR acknowledges.
    var acknowledgedSequence: UInt32 {
        mnl_nlmsg_get_payload(self)!.assumingMemoryBound(to: nlmsgerr.self).pointee.msg.nlmsg_seq
    }
}

/// libmnl's MNL_SOCKET_BUFFER_SIZE (a macro Swift cannot import): 8 KiB, or the page size if larger.
let mnlBufferSize = max(8192, Int(getpagesize()))
