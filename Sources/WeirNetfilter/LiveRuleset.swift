import CNetfilter
import WeirCapture

/// A netfilter family as nf_tables numbers it.
public enum NetfilterFamily: Sendable, Hashable, CustomStringConvertible {
    /// The named families: inet (IPv4 and IPv6), ip (IPv4), ip6 (IPv6), arp, bridge, netdev (per device).
    case inet, ip, ip6, arp, bridge, netdev
    /// A number weir has no name for.
    case other(UInt32)

    /// The family of a kernel number.
    public init(number: UInt32) {
        switch Int(number) {
        case NFPROTO_INET: self = .inet
        case NFPROTO_IPV4: self = .ip
        case NFPROTO_IPV6: self = .ip6
        case NFPROTO_ARP: self = .arp
        case NFPROTO_BRIDGE: self = .bridge
        case NFPROTO_NETDEV: self = .netdev
        default: self = .other(number)
        }
    }

    /// The kernel's number.
    public var number: UInt32 {
        switch self {
        case .inet: return UInt32(NFPROTO_INET)
        case .ip: return UInt32(NFPROTO_IPV4)
        case .ip6: return UInt32(NFPROTO_IPV6)
        case .arp: return UInt32(NFPROTO_ARP)
        case .bridge: return UInt32(NFPROTO_BRIDGE)
        case .netdev: return UInt32(NFPROTO_NETDEV)
        case .other(let n): return n
        }
    }

    /// Whether IP packets traverse it (the families whose chains can bypass weir's).
    public var carriesIP: Bool { self == .inet || self == .ip || self == .ip6 }

    /// The families weir's table lives in: inet, or ip when IPv6 is off.
    public static let weirFamilies: [NetfilterFamily] = [.inet, .ip]

    /// The family of a plan's table.
    public init(plan: RedirectPlan) { self = plan.tableFamily == nil ? .inet : .ip }

    /// nft's name of the family (`inet`, `ip6`), or `familyN` for a number weir has no name for.
    public var description: String {
        switch self {
        case .inet: return "inet"
        case .ip: return "ip"
        case .ip6: return "ip6"
        case .arp: return "arp"
        case .bridge: return "bridge"
        case .netdev: return "netdev"
        case .other(let n): return "family\(n)"
        }
    }
}

/// The netfilter hook of a base chain.
public enum ChainHook: Sendable, Hashable, CustomStringConvertible {
    /// The IP hooks: before routing, local delivery, forwarding, locally generated packets, after routing.
    case prerouting, input, forward, output, postrouting
    /// A hook number of another family (ingress, egress).
    case other(UInt32)

    /// The hook of a kernel number.
    public init(number: UInt32) {
        switch number {
        case UInt32(NF_INET_PRE_ROUTING.rawValue): self = .prerouting
        case UInt32(NF_INET_LOCAL_IN.rawValue): self = .input
        case UInt32(NF_INET_FORWARD.rawValue): self = .forward
        case UInt32(NF_INET_LOCAL_OUT.rawValue): self = .output
        case UInt32(NF_INET_POST_ROUTING.rawValue): self = .postrouting
        default: self = .other(number)
        }
    }

    /// The hook a plan chain hangs from.
    public init(_ hook: Hook) {
        switch hook {
        case .prerouting: self = .prerouting
        case .output: self = .output
        }
    }

    /// The kernel's number.
    public var number: UInt32 {
        switch self {
        case .prerouting: return UInt32(NF_INET_PRE_ROUTING.rawValue)
        case .input: return UInt32(NF_INET_LOCAL_IN.rawValue)
        case .forward: return UInt32(NF_INET_FORWARD.rawValue)
        case .output: return UInt32(NF_INET_LOCAL_OUT.rawValue)
        case .postrouting: return UInt32(NF_INET_POST_ROUTING.rawValue)
        case .other(let n): return n
        }
    }

    /// nft's name of the hook (`prerouting`, `output`), or `hookN` for another number.
    public var description: String {
        switch self {
        case .prerouting: return "prerouting"
        case .input: return "input"
        case .forward: return "forward"
        case .output: return "output"
        case .postrouting: return "postrouting"
        case .other(let n): return "hook\(n)"
        }
    }
}

/// A base chain's default verdict.
public enum ChainPolicy: Sendable, Hashable, CustomStringConvertible {
    /// Packets that leave the chain without a verdict are accepted, or dropped.
    case accept, drop
    /// A verdict number weir has no name for.
    case other(UInt32)

    /// The policy of a kernel verdict number.
    public init(number: UInt32) {
        switch number {
        case UInt32(NF_ACCEPT): self = .accept
        case UInt32(NF_DROP): self = .drop
        default: self = .other(number)
        }
    }

    /// nft's name of the policy (`accept`, `drop`), or `verdictN` for another number.
    public var description: String {
        switch self {
        case .accept: return "accept"
        case .drop: return "drop"
        case .other(let n): return "verdict\(n)"
        }
    }
}

/// A table, as read over netlink.
public struct LiveTable: Sendable, Hashable {
    /// The netfilter family the table belongs to.
    public let family: NetfilterFamily
    /// The table's name, unique within its family (weir's is `RedirectPlan.tableName`).
    public let name: String
    /// The comment in its userdata (nft's `comment`).
    public let comment: String?

    /// A table of `family` named `name`, with the comment of its userdata if it has one.
    public init(family: NetfilterFamily, name: String, comment: String? = nil) {
        self.family = family
        self.name = name
        self.comment = comment
    }

    /// Whether this is weir's table.
    public var isWeir: Bool { name == RedirectPlan.tableName && NetfilterFamily.weirFamilies.contains(family) }
}

/// A chain; a base chain has its hook, priority, type and policy.
public struct LiveChain: Sendable, Hashable {
    /// Where a base chain hangs.
    public struct Base: Sendable, Hashable {
        /// The netfilter hook the base chain is attached to.
        public let hook: ChainHook
        /// The chain's priority at its hook: a lower one runs first.
        public let priority: Int32
        /// `nat`, `filter` or `route`.
        public let type: String
        /// The verdict for packets that leave the chain without one.
        public let policy: ChainPolicy

        /// A base chain's hook, priority, type and policy.
        public init(hook: ChainHook, priority: Int32, type: String, policy: ChainPolicy) {
            self.hook = hook
            self.priority = priority
            self.type = type
            self.policy = policy
        }
    }

    /// The family of the chain's table.
    public let family: NetfilterFamily
    /// The name of the table that holds the chain.
    public let table: String
    /// The chain's name, unique within its table.
    public let name: String
    /// nil for a regular chain.
    public let base: Base?

    /// A chain of `table`, with `base` for a base chain or nil for a regular one.
    public init(family: NetfilterFamily, table: String, name: String, base: Base?) {
        self.family = family
        self.table = table
        self.name = name
        self.base = base
    }
}

/// One expression of a rule: its kind (`payload`, `cmp`, `lookup`) and libnftnl's one-line text of it.
public struct RuleExpression: Sendable, Hashable, CustomStringConvertible {
    /// The expression's kind as libnftnl names it (`payload`, `cmp`, `immediate`, `lookup`, `redir`).
    public let name: String
    /// libnftnl's text of the expression's arguments, without the kind (`eq reg 1 0x00000006`).
    public let text: String

    /// An expression of kind `name` with libnftnl's text of its arguments.
    public init(name: String, text: String) {
        self.name = name
        self.text = text
    }

    /// `[ cmp eq reg 1 0x00000006 ]`, as `nft --debug=netlink` prints it.
    public var description: String { "[ \(name) \(text) ]" }

    /// Whether the expression rewrites the destination (nat, redirect, tproxy, masquerade).
    public var rewritesDestination: Bool { ["nat", "redir", "tproxy", "masq"].contains(name) }
    /// Whether it ends the packet (a drop verdict or a reject).
    public var drops: Bool { name == "reject" || (name == "immediate" && text.hasSuffix("reg 0 drop")) }
    /// Whether it sets the packet's mark (a mark carrying weir's bypass mark skips weir's capture).
    public var setsMark: Bool { name == "meta" && text.contains("set mark") }
    /// Whether it accepts the packet.
    public var accepts: Bool { name == "immediate" && text.hasSuffix("reg 0 accept") }
}

/// A rule, with its comment and expressions.
public struct LiveRule: Sendable, Hashable {
    /// The family of the rule's table.
    public let family: NetfilterFamily
    /// The name of the table that holds the rule.
    public let table: String
    /// The name of the chain that holds the rule.
    public let chain: String
    /// The kernel's handle for the rule, unique within its table (what `nft -a` shows).
    public let handle: UInt64
    /// The comment in the rule's userdata (weir matches its own rules by it); nil when there is none.
    public let comment: String?
    /// The rule's expressions, in the order the kernel evaluates them.
    public let expressions: [RuleExpression]

    /// A rule at `handle` in `table` and `chain`, with its comment and expressions.
    public init(
        family: NetfilterFamily, table: String, chain: String, handle: UInt64, comment: String?,
        expressions: [RuleExpression]
    ) {
        self.family = family
        self.table = table
        self.chain = chain
        self.handle = handle
        self.comment = comment
        self.expressions = expressions
    }
}

/// A named set and its elements.
public struct LiveSet: Sendable, Hashable {
    /// The family of the set's table.
    public let family: NetfilterFamily
    /// The name of the table that holds the set.
    public let table: String
    /// The set's name in its table, by which rules look it up.
    public let name: String
    /// The key length in bytes.
    public let keyLength: Int
    /// `flags interval`.
    public let isInterval: Bool
    /// The elements as big-endian intervals (an interval set's start and end elements joined up; a plain set's
    /// element as an interval of one).
    public let intervals: [KeyInterval]

    /// A set with its key length, interval flag, and elements as big-endian intervals.
    public init(
        family: NetfilterFamily, table: String, name: String, keyLength: Int, isInterval: Bool,
        intervals: [KeyInterval]
    ) {
        self.family = family
        self.table = table
        self.name = name
        self.keyLength = keyLength
        self.isInterval = isInterval
        self.intervals = intervals
    }
}

/// What the kernel holds, as read over netlink: a value `check` decides on without privileges.
public struct LiveRuleset: Sendable, Hashable {
    /// Every table in the namespace, of every family.
    public var tables: [LiveTable]
    /// The chains of those tables, base and regular.
    public var chains: [LiveChain]
    /// The rules of those chains, each chain's in order.
    public var rules: [LiveRule]
    /// The named sets of weir's table, with their elements (the reader reads no other table's sets).
    public var sets: [LiveSet]

    /// A ruleset of these parts (empty by default), as the netlink reader or a test builds it.
    public init(tables: [LiveTable] = [], chains: [LiveChain] = [], rules: [LiveRule] = [], sets: [LiveSet] = []) {
        self.tables = tables
        self.chains = chains
        self.rules = rules
        self.sets = sets
    }

    /// weir's table, if installed.
    public var weirTable: LiveTable? { tables.first(where: \.isWeir) }

    /// The rules of one chain, in order.
    public func rules(of table: LiveTable, chain: String) -> [LiveRule] {
        rules.filter { $0.family == table.family && $0.table == table.name && $0.chain == chain }
    }
}
