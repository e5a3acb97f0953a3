import CNetfilter
import WeirCapture

/// A netfilter family as nf_tables numbers it.
public enum NetfilterFamily: Sendable, Hashable, CustomStringConvertible {
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
    case accept, drop
    case other(UInt32)

    /// The policy of a kernel verdict number.
    public init(number: UInt32) {
        switch number {
        case UInt32(NF_ACCEPT): self = .accept
        case UInt32(NF_DROP): self = .drop
        default: self = .other(number)
        }
    }

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
    public let family: NetfilterFamily
    public let name: String
    /// The comment in its userdata (nft's `comment`).
    public let comment: String?

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
        public let hook: ChainHook
        public let priority: Int32
        /// `nat`, `filter` or `route`.
        public let type: String
        public let policy: ChainPolicy

        public init(hook: ChainHook, priority: Int32, type: String, policy: ChainPolicy) {
            self.hook = hook
            self.priority = priority
            self.type = type
            self.policy = policy
        }
    }

    public let family: NetfilterFamily
    public let table: String
    public let name: String
    /// nil for a regular chain.
    public let base: Base?

    public init(family: NetfilterFamily, table: String, name: String, base: Base?) {
        self.family = family
        self.table = table
        self.name = name
        self.base = base
    }
}

/// One expression of a rule: its kind (`payload`, `cmp`, `lookup`) and libnftnl's one-line text of it.
public struct RuleExpression: Sendable, Hashable, CustomStringConvertible {
    public let name: String
    public let text: String

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
    /// Whether it accepts the packet.
    public var accepts: Bool { name == "immediate" && text.hasSuffix("reg 0 accept") }
}

/// A rule, with its comment and expressions.
public struct LiveRule: Sendable, Hashable {
    public let family: NetfilterFamily
    public let table: String
    public let chain: String
    public let handle: UInt64
    public let comment: String?
    public let expressions: [RuleExpression]

    public init(family: NetfilterFamily, table: String, chain: String, handle: UInt64, comment: String?,
                expressions: [RuleExpression]) {
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
    public let family: NetfilterFamily
    public let table: String
    public let name: String
    /// The key length in bytes.
    public let keyLength: Int
    /// `flags interval`.
    public let isInterval: Bool
    /// The elements as big-endian intervals (an interval set's start and end elements joined up; a plain set's
    /// element as an interval of one).
    public let intervals: [KeyInterval]

    public init(family: NetfilterFamily, table: String, name: String, keyLength: Int, isInterval: Bool,
                intervals: [KeyInterval]) {
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
    public var tables: [LiveTable]
    public var chains: [LiveChain]
    public var rules: [LiveRule]
    public var sets: [LiveSet]

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
