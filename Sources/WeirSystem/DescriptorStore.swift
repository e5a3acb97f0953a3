import CWeirShims
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// One descriptor on its way from the thread that opened it to its next owner.
public final class DescriptorSlot: Sendable {
    let slot: Mutex<FileDescriptor>
    /// A slot holding `fd` until `take()` hands it on.
    public init(_ fd: consuming FileDescriptor) { slot = Mutex(fd) }
    /// Takes the descriptor (the slot is empty after).
    public func take() -> FileDescriptor {
        slot.withLock { fd in
            var out = FileDescriptor.closed
            swap(&out, &fd)
            return out
        }
    }
    /// Runs `body` on the descriptor held (`.closed` once taken), leaving it in the slot.
    public func peek<T>(_ body: (borrowing FileDescriptor) -> T) -> T { slot.withLock { body($0) } }
}

extension SystemdNotifier {
    /// Puts descriptors in the service's file-descriptor store under `name` (`FDSTORE=1`, `FDNAME=`), where systemd
    /// keeps them across a restart of the service and hands them back in `LISTEN_FDS`. `poll: false` (`FDPOLL=0`)
    /// for a descriptor that never hangs up (a namespace file): systemd would otherwise poll it. Whether systemd got
    /// the message (it drops it, and logs why, when the unit's `FileDescriptorStoreMax=` is full or 0).
    @discardableResult
    public func store(_ name: String, descriptors: [Int32], poll: Bool = true) -> Bool {
        precondition(SystemdDescriptors.validName(name), "fd store name \(name)")
        return send("FDSTORE=1\nFDNAME=\(name)" + (poll ? "" : "\nFDPOLL=0"), descriptors: descriptors)
    }

    /// Takes every descriptor stored under `name` out of the store (`FDSTOREREMOVE=1`): systemd closes its copies,
    /// so closing ours really closes the socket or namespace.
    public func removeStored(_ name: String) {
        send("FDSTOREREMOVE=1\nFDNAME=\(name)")
    }

    /// `BARRIER=1` (sd_notify_barrier): sends the write end of a pipe, which systemd closes once it has read this
    /// and every earlier message; waits for that. Whether it came within the timeout.
    public func barrier(timeoutMilliseconds: Int32) -> Bool {
        guard var pipe = try? Pipe.open(nonBlocking: false) else { return false }
        guard send("BARRIER=1", descriptors: [pipe.write.number]) else { return false }
        pipe.write = .closed
        var p = pollfd(fd: pipe.read.number, events: Int16(POLLHUP), revents: 0)
        if case .ok(let n) = Posix.attempt({ poll(&p, 1, timeoutMilliseconds) }) { return n == 1 }
        return false
    }

    /// One notification with descriptors attached (SCM_RIGHTS).
    func send(_ text: String, descriptors: [Int32]) -> Bool {
        let bytes = Array(text.utf8)
        let raw = socket.descriptor.number
        let outcome = Posix.attempt {
            bytes.withUnsafeBytes { b in
                descriptors.withUnsafeBufferPointer { fds in
                    address.withPointer { to, length in
                        weir_send_with_fds(
                            raw, b.baseAddress, UInt(b.count), to, UInt32(length), fds.baseAddress, Int32(fds.count))
                    }
                }
            }
        }
        if case .ok = outcome { return true }
        return false
    }
}

/// The descriptors systemd passed at start (`LISTEN_PID`, `LISTEN_FDS`, `LISTEN_FDNAMES`): sockets of socket units,
/// and what the service put in its file-descriptor store before a restart.
public enum SystemdDescriptors {
    /// The first descriptor systemd passes (`SD_LISTEN_FDS_START`).
    public static let first: Int32 = 3

    /// Takes the descriptors passed to this process, by name (several may share a name), marks them close-on-exec,
    /// and removes the variables from the environment so that no child takes them for its own. Empty when none were
    /// passed to this process (`LISTEN_PID` names another, or is missing).
    public static func take(environment env: [String: String]) -> [String: [DescriptorSlot]] {
        defer {
            for name in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] { unsetenv(name) }
        }
        guard let pid = env["LISTEN_PID"].flatMap(Int32.init), pid == getpid(),
            let count = env["LISTEN_FDS"].flatMap(Int32.init), count > 0, count < 1 << 20
        else { return [:] }
        let names = env["LISTEN_FDNAMES"].map { $0.split(separator: ":", omittingEmptySubsequences: false) } ?? []
        var out: [String: [DescriptorSlot]] = [:]
        for i in 0..<count {
            let raw = first + i
            _ = weir_set_cloexec(raw)
            let name = Int(i) < names.count ? String(names[Int(i)]) : "unknown"
            out[name, default: []].append(DescriptorSlot(FileDescriptor(owning: raw)))
        }
        return out
    }

    /// What systemd accepts as an `FDNAME=`: 1–255 printable ASCII characters, no `:`.
    public static func validName(_ name: String) -> Bool {
        !name.isEmpty && name.utf8.count <= 255 && name.utf8.allSatisfy { $0 > 0x20 && $0 < 0x7f && $0 != 0x3a }
    }
}
