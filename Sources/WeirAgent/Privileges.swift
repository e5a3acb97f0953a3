import CCapabilities
import Foundation
import WeirNetns
import WeirSystem

/// The capabilities the daemon keeps, and the checks that it can still do its work with them.
public enum Privileges {
    /// CAP_NET_ADMIN: nftables, SO_MARK, IP_TRANSPARENT. CAP_NET_RAW: iptables-restore's raw sockets (the
    /// fallback backend) and TPROXY's transparent sockets. CAP_SYS_ADMIN: `setns` into pods' network namespaces.
    /// Nothing else: no CAP_SYS_PTRACE (pods are enrolled by bind-mounted namespace paths, not another user's
    /// `/proc/PID/ns/net`), no CAP_DAC_OVERRIDE, no CAP_CHOWN, no CAP_SETUID.
    public static let daemonKeeps: [(name: String, value: cap_value_t)] = [
        ("cap_net_admin", CAP_NET_ADMIN), ("cap_net_raw", CAP_NET_RAW), ("cap_sys_admin", CAP_SYS_ADMIN),
    ]

    /// Keeps only `keep` in the effective and permitted sets, clears the inheritable and ambient sets, and drops
    /// every other capability from the bounding set (so no program weir starts gets more). Capabilities are per
    /// thread: call this before any other thread exists, and every thread made afterwards inherits the result.
    public static func restrict(to keep: [(name: String, value: cap_value_t)] = daemonKeeps) throws(PrivilegesError) {
        let kept = Set(keep.map(\.value))
        let last = cap_max_bits()
        // Under systemd's CapabilityBoundingSet= the others are gone already (and CAP_SETPCAP with them).
        for cap in 0..<last where !kept.contains(cap) && cap_get_bound(cap) == 1 {
            // Needs CAP_SETPCAP, which is still held here: the bounding set goes first.
            do throws(SystemCallError) { _ = try Posix.call("cap_drop_bound") { cap_drop_bound(cap) } } catch {
                if error.errno == EINVAL { continue }
                throw PrivilegesError(message: "cannot drop capability \(cap) from the bounding set: \(error.reason)")
            }
        }
        let ambient = (0..<last).contains { cap_get_ambient($0) == 1 }
        if ambient {
            do throws(SystemCallError) { _ = try Posix.call("cap_reset_ambient") { cap_reset_ambient() } } catch {
                throw PrivilegesError(message: "cannot clear the ambient capabilities: \(error.reason)")
            }
        }
        // Already exactly so (systemd's CapabilityBoundingSet= did it): no capset, which the unit's system call
        // filter refuses.
        if holdsExactly(kept, last: last) { return }
        guard let caps = cap_init() else { throw PrivilegesError(message: "cap_init failed") }
        defer { cap_free(UnsafeMutableRawPointer(caps)) }
        var values = keep.map(\.value)
        for flag in [CAP_PERMITTED, CAP_EFFECTIVE] {
            guard cap_set_flag(caps, flag, Int32(values.count), &values, CAP_SET) == 0 else {
                throw PrivilegesError(message: "cap_set_flag failed")
            }
        }
        do throws(SystemCallError) { _ = try Posix.call("cap_set_proc") { cap_set_proc(caps) } } catch {
            let names = keep.map(\.name).joined(separator: ", ")
            throw PrivilegesError(message: "cannot keep \(names): \(error.reason) (the daemon must start with them)")
        }
    }

    /// Whether the permitted and effective sets are `kept` and the inheritable set is empty.
    static func holdsExactly(_ kept: Set<cap_value_t>, last: cap_value_t) -> Bool {
        guard let caps = cap_get_proc() else { return false }
        defer { cap_free(UnsafeMutableRawPointer(caps)) }
        for cap in 0..<last {
            for (flag, want) in [
                (CAP_PERMITTED, kept.contains(cap)), (CAP_EFFECTIVE, kept.contains(cap)), (CAP_INHERITABLE, false),
            ] {
                var value = CAP_CLEAR
                guard cap_get_flag(caps, cap, flag, &value) == 0 else { return false }
                if (value == CAP_SET) != want { return false }
            }
        }
        return true
    }

    /// Proves the kept capabilities do the work: a thread enters a namespace (CAP_SYS_ADMIN) and marks a socket
    /// (CAP_NET_ADMIN), as the daemon does for every pod.
    public static func verify() throws(PrivilegesError) {
        do {
            let handle = try NamespaceHandle.current()
            try handle.run(name: "weir-cap-check") {
                let s = try FileDescriptor.tcp(ipv6: false)
                try s.setMark(0x539)
            }
        } catch {
            throw PrivilegesError(message: "with its capabilities restricted, the daemon cannot do its work: \(error)")
        }
    }

    /// The capability lines of `/proc/self/status` (CapInh, CapPrm, CapEff, CapBnd, CapAmb).
    public static func statusLines(pid: String = "self") -> [String] {
        let text = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
        return text.split(separator: "\n").map(String.init).filter { $0.hasPrefix("Cap") }
    }
}

/// The daemon cannot restrict its capabilities, or cannot work with what it kept.
public struct PrivilegesError: Error, CustomStringConvertible {
    /// What went wrong.
    public var message: String
    /// `message`.
    public var description: String { message }
}
