import CCapabilities
import Logging
import WeirCapture
import WeirNetns
import WeirSystem

/// Which programming interface installs the rules.
public enum BackendChoice: Sendable, Equatable {
    /// nftables over netlink: one atomic batch, with sets for long lists.
    case nftables
    /// iptables-restore of the given variant into WEIR_ chains: one restore per family, a rule per list element.
    case iptables(IptablesBackend.Mode)
}

/// The process lacks CAP_NET_ADMIN: nothing can be changed.
public struct PrivilegeError: Error, CustomStringConvertible {
    /// Says CAP_NET_ADMIN is needed, how to get it, and that nothing was changed.
    public var description: String {
        "weir needs CAP_NET_ADMIN to change netfilter rules (run as root, or give the init container NET_ADMIN); nothing was changed"
    }
}

/// The namespace is not fit for the spec; nothing was changed.
public struct PreconditionError: Error, CustomStringConvertible {
    /// What the namespace lacks and how to fix it (the loopback interface up, for TPROXY).
    public let message: String
    /// `message`, unchanged, for the user.
    public var description: String { message }
}

/// Installs, removes and checks weir's capture in one network namespace.
public struct CaptureInstaller: Sendable {
    /// The network namespace whose rules this installer changes and reads.
    public let namespace: NetworkNamespace
    /// The backend `install` writes with; `clean` removes weir's objects from every backend, whichever this is.
    public let backend: BackendChoice
    /// Whether nftables' transaction socket is closed in the background (see `NftablesBackend.closesInBackground`).
    public let closesInBackground: Bool
    let logger = Logger(label: "weir.capture")

    /// An installer for `namespace` using `backend`; nothing is read or changed until a call. A process that exits
    /// after one install (the init step) passes `closesInBackground: false`.
    public init(namespace: NetworkNamespace, backend: BackendChoice, closesInBackground: Bool = true) {
        self.namespace = namespace
        self.backend = backend
        self.closesInBackground = closesInBackground
    }

    /// Installs the plan atomically (nftables: one batch) and then TPROXY's policy routes.
    public func install(_ plan: RedirectPlan) throws {
        try Self.requireNetAdmin()
        let backend = self.backend
        let closesInBackground = self.closesInBackground
        let logger = self.logger
        let namespace = self.namespace
        try namespace.run {
            // Everything that could refuse the policy routes is checked before the first rule changes.
            if plan.policyRoute != nil && !((try? NetworkInterface.isUp("lo")) ?? false) {
                throw PreconditionError(
                    message:
                        "TPROXY mode needs the loopback interface up in \(namespace) (its local route table points at lo); bring it up with 'ip link set lo up' — nothing was changed"
                )
            }
            switch backend {
            case .nftables: try NftablesBackend(closesInBackground: closesInBackground).apply(plan)
            case .iptables(let mode): try IptablesBackend(mode: mode).apply(plan)
            }
            try PolicyRouting().apply(plan.policyRoute)
            logger.info(
                "installed capture",
                metadata: ["chains": "\(plan.chains.count)", "rules": "\(plan.chains.map(\.rules.count).reduce(0, +))"])
        }
    }

    /// Removes every object weir created: its nftables tables, its iptables chains and jumps, its policy routes.
    @discardableResult
    public func clean() throws -> Bool {
        try Self.requireNetAdmin()
        return try namespace.run {
            var removed = try NftablesBackend().clean()
            for variant in Self.iptablesVariantsWithTables() {
                removed = try IptablesBackend(mode: variant).clean() || removed
            }
            removed = try PolicyRouting().removeAll() > 0 || removed
            return removed
        }
    }

    /// iptables variants that hold tables in the current namespace (checked without loading any kernel module).
    static func iptablesVariantsWithTables() -> [IptablesBackend.Mode] {
        var out: [IptablesBackend.Mode] = []
        if Subprocess.locate("iptables-nft-save") != nil, IptablesBackend.nftVariantHasTables() { out.append(.nft) }
        if Subprocess.locate("iptables-legacy-save") != nil, IptablesBackend.legacyHasTables() { out.append(.legacy) }
        return out
    }

    static func requireNetAdmin() throws {
        guard let caps = cap_get_proc() else { throw PrivilegeError() }
        defer { cap_free(UnsafeMutableRawPointer(caps)) }
        var value = CAP_CLEAR
        guard cap_get_flag(caps, CAP_NET_ADMIN, CAP_EFFECTIVE, &value) == 0, value == CAP_SET else {
            throw PrivilegeError()
        }
    }
}

extension IptablesBackend {
    /// Legacy tables exist in this namespace (x_tables lists them per namespace under /proc/net).
    static func legacyHasTables() -> Bool {
        ["/proc/thread-self/net/ip_tables_names", "/proc/thread-self/net/ip6_tables_names"].contains { path in
            (FileSystem.text(path) ?? "").contains { !$0.isWhitespace }
        }
    }

    /// iptables-nft keeps its rules in nftables tables named after iptables' tables (ip/ip6 nat, mangle, filter).
    static func nftVariantHasTables() -> Bool {
        guard let tables = try? NftablesBackend().readTables() else { return false }
        return tables.contains { t in
            (t.family == .ip || t.family == .ip6) && ["nat", "mangle", "filter", "raw"].contains(t.name)
        }
    }
}
