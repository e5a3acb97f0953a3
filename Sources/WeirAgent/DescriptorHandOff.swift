import Synchronization
import WeirNetns
import WeirSystem

/// systemd's file-descriptor store, as the daemon uses it across its own restarts: what it keeps there (each pod's
/// namespace handle, xDS endpoint and forwarder listeners, and at a restart the relayed connections), and what the
/// previous process left there, handed back at start in `LISTEN_FDS`. Outside systemd (no notifier) nothing is
/// stored and nothing inherited.
public final class PodDescriptorStore: Sendable {
    let notifier: SystemdNotifier?
    let inherited: Mutex<[String: [DescriptorSlot]]>

    /// Stores through `notifier` (nil: no store); `inherited` are the descriptors this process was started with.
    public init(notifier: SystemdNotifier?, inherited: [String: [DescriptorSlot]] = [:]) {
        self.notifier = notifier
        self.inherited = Mutex(notifier == nil ? [:] : inherited)
    }

    /// No store: the daemon runs as it does outside systemd.
    public static let none = PodDescriptorStore(notifier: nil)

    /// Whether descriptors are kept across restarts.
    public var enabled: Bool { notifier != nil }

    /// How many inherited descriptors are not taken yet.
    public var unclaimed: Int { inherited.withLock { $0.values.map(\.count).reduce(0, +) } }

    /// Takes the inherited descriptors stored under `name` (none: empty).
    func take(_ name: String) -> [DescriptorSlot] { inherited.withLock { $0.removeValue(forKey: name) ?? [] } }

    /// Takes every inherited name that starts with `prefix`, with its descriptors.
    func take(prefix: String) -> [(String, [DescriptorSlot])] {
        inherited.withLock { all in
            let names = all.keys.filter { $0.hasPrefix(prefix) }.sorted()
            return names.map { ($0, all.removeValue(forKey: $0)!) }
        }
    }

    /// Stores descriptors under `name` (replacing nothing: names are unique per holder).
    @discardableResult
    func keep(_ name: String, _ descriptors: [Int32], poll: Bool = true) -> Bool {
        guard let notifier, !descriptors.isEmpty else { return false }
        return notifier.store(name, descriptors: descriptors, poll: poll)
    }

    /// Takes `name` out of systemd's store, so closing this process's copy really closes it.
    func forget(_ name: String) { notifier?.removeStored(name) }

    /// Closes what no pod claimed (a pod gone while the daemon was down, or its settings changed) and takes it out
    /// of systemd's store. Returns how many descriptors.
    @discardableResult
    public func releaseUnclaimed() -> Int {
        let left = inherited.withLock { all in
            let out = all
            all = [:]
            return out
        }
        for (name, slots) in left {
            forget(name)
            for s in slots { _ = s.take() }
        }
        return left.values.map(\.count).reduce(0, +)
    }

    /// Waits until systemd has read every message sent before (`BARRIER=1`): the last thing a stopping daemon does
    /// after storing, since a message from a process that has exited may not be matched to the unit.
    public func barrier() { _ = notifier?.barrier(timeoutMilliseconds: 5000) }
}

/// The names things are stored under (`FDNAME=`): the pod's namespace identity first, so a pod's are found together.
enum StoredName {
    static func pod(_ id: NamespaceIdentity) -> String { "\(id.device)-\(id.inode)" }
    static func namespace(_ id: NamespaceIdentity) -> String { "ns-" + pod(id) }
    /// A sidecar pod's xDS listener at `address` (its bytes in hex: a Unix name may hold any character).
    static func xds(_ id: NamespaceIdentity, address: String) -> String {
        "xds-" + pod(id) + "-" + address.utf8.map { String($0, radix: 16) }.joined()
    }
    /// A forwarder pod's listeners, for the ports and mode they were opened for.
    static func forwarder(_ id: NamespaceIdentity, outbound: UInt16, inbound: UInt16, mode: String) -> String {
        "fwd-" + pod(id) + "-\(outbound)-\(inbound)-\(mode)"
    }
    static func connectionPrefix(_ id: NamespaceIdentity) -> String { "conn-" + pod(id) + "-" }
    /// A relayed connection: both sockets, with its direction and which halves were shut.
    static func connection(_ id: NamespaceIdentity, serial: UInt64, _ c: HandedOffState) -> String {
        connectionPrefix(id) + "\(serial)-" + (c.inbound ? "i" : "o") + (c.upstreamShut ? "u" : "")
            + (c.downstreamShut ? "d" : "")
    }
    /// The state a connection's name gives.
    static func connectionState(_ name: String) -> HandedOffState? {
        guard let flags = name.split(separator: "-").last, let first = flags.first, first == "i" || first == "o" else {
            return nil
        }
        return HandedOffState(
            inbound: first == "i", upstreamShut: flags.contains("u"), downstreamShut: flags.contains("d"))
    }
}

/// A handed-off connection's direction and shut halves.
struct HandedOffState: Equatable {
    var inbound: Bool
    var upstreamShut: Bool
    var downstreamShut: Bool
}
