/// The packet field a set is looked up with.
public enum SetField: Sendable, Hashable {
    /// `ip daddr` / `ip6 daddr`.
    case destination(IPFamily)
    /// `ip saddr` / `ip6 saddr`.
    case source(IPFamily)
    /// `tcp dport` / `udp dport`.
    case destinationPort(TransportProtocol)
    /// `meta skuid`.
    case socketUID
    /// `meta skgid`.
    case socketGID

    /// The address family a lookup on this field pins, if any.
    public var family: IPFamily? {
        switch self {
        case .destination(let f), .source(let f): return f
        default: return nil
        }
    }
}

/// What a set holds: the elements as the user gave them (sorted, without repeats).
public enum SetElements: Sendable, Hashable {
    /// Networks (CIDRs), for a source or destination address set.
    case networks([CIDR])
    /// Port ranges, for a destination port set.
    case ports([PortRange])
    /// User or group IDs, for a socket owner set.
    case ids([UInt32])

    /// How many elements the user listed.
    public var count: Int {
        switch self {
        case .networks(let n): return n.count
        case .ports(let p): return p.count
        case .ids(let i): return i.count
        }
    }
}

/// nftables' name for a set's key type, as `nft list` shows it.
public enum SetKeyType: String, Sendable, Hashable {
    /// IPv4 addresses, 4 bytes each.
    case ipv4Address = "ipv4_addr"
    /// IPv6 addresses, 16 bytes each.
    case ipv6Address = "ipv6_addr"
    /// TCP or UDP ports, 2 bytes each.
    case port = "inet_service"
    /// User IDs of a socket's owner (`meta skuid`), 4 bytes each.
    case uid
    /// Group IDs of a socket's owner (`meta skgid`), 4 bytes each.
    case gid

    /// The key's length in bytes.
    public var length: Int {
        switch self {
        case .ipv4Address, .uid, .gid: return 4
        case .ipv6Address: return 16
        case .port: return 2
        }
    }
}

/// An inclusive interval of big-endian key bytes: one address range, port range, or id.
public struct KeyInterval: Sendable, Hashable, Comparable, CustomStringConvertible {
    /// The interval's lowest key, big-endian.
    public let first: [UInt8]
    /// The interval's highest key (included), big-endian; equal to `first` for a single key.
    public let last: [UInt8]

    /// The keys from `first` to `last`, both included; the caller keeps `first` at or below `last`.
    public init(first: [UInt8], last: [UInt8]) {
        self.first = first
        self.last = last
    }

    /// Orders by first key, then last key, byte by byte: numeric order, as a set's keys are big-endian of one length.
    public static func < (a: KeyInterval, b: KeyInterval) -> Bool {
        a.first.lexicographicallyPrecedes(b.first) || (a.first == b.first && a.last.lexicographicallyPrecedes(b.last))
    }

    /// Both keys in hex, joined by a dash (`0a000000-0affffff`).
    public var description: String { "\(first.hex)-\(last.hex)" }

    /// The key after `bytes` (big-endian + 1); nil at the largest key.
    public static func successor(_ bytes: [UInt8]) -> [UInt8]? {
        var out = bytes
        for i in out.indices.reversed() {
            if out[i] == 0xFF {
                out[i] = 0
            } else {
                out[i] += 1
                return out
            }
        }
        return nil
    }

    /// The key before `bytes` (big-endian - 1); nil at zero.
    public static func predecessor(_ bytes: [UInt8]) -> [UInt8]? {
        var out = bytes
        for i in out.indices.reversed() {
            if out[i] == 0 {
                out[i] = 0xFF
            } else {
                out[i] -= 1
                return out
            }
        }
        return nil
    }

    /// Sorts and merges overlapping and adjacent intervals: what an nftables interval set holds, since the kernel
    /// refuses overlapping elements.
    public static func merged(_ intervals: [KeyInterval]) -> [KeyInterval] {
        var out: [KeyInterval] = []
        for next in intervals.sorted() {
            guard let previous = out.last else {
                out.append(next)
                continue
            }
            let touches = successor(previous.last).map { !$0.lexicographicallyPrecedes(next.first) } ?? true
            if touches {
                let last = previous.last.lexicographicallyPrecedes(next.last) ? next.last : previous.last
                out[out.count - 1] = KeyInterval(first: previous.first, last: last)
            } else {
                out.append(next)
            }
        }
        return out
    }
}

extension CIDR {
    /// The first and last address of the network.
    public var interval: KeyInterval {
        KeyInterval(first: address, last: zip(address, mask).map { $0 | ~$1 })
    }
}

extension [UInt8] {
    var hex: String { map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined() }
}

/// A named nftables set of weir's table: a long list compiled into one lookup instead of one rule per element.
public struct PlanSet: Sendable, Hashable {
    /// The set's name in table weir.
    public let name: String
    /// The field a rule looks it up with.
    public let field: SetField
    /// The elements as listed.
    public let elements: SetElements

    /// A set named `name` in table weir, looked up with `field`, holding `elements`.
    public init(name: String, field: SetField, elements: SetElements) {
        self.name = name
        self.field = field
        self.elements = elements
    }

    /// nftables' key type.
    public var keyType: SetKeyType {
        switch field {
        case .destination(let f), .source(let f): return f == .ipv4 ? .ipv4Address : .ipv6Address
        case .destinationPort: return .port
        case .socketUID: return .uid
        case .socketGID: return .gid
        }
    }

    /// Whether the set holds ranges (`flags interval`): addresses and ports do, ids do not.
    public var isInterval: Bool { keyType != .uid && keyType != .gid }

    /// What the kernel holds: merged big-endian intervals (a single id is an interval of one).
    public var intervals: [KeyInterval] {
        switch elements {
        case .networks(let n): return KeyInterval.merged(n.map(\.interval))
        case .ports(let p):
            return KeyInterval.merged(
                p.map { KeyInterval(first: Self.bigEndian($0.first), last: Self.bigEndian($0.last)) })
        case .ids(let ids):
            return Set(ids).sorted().map { KeyInterval(first: Self.bigEndian($0), last: Self.bigEndian($0)) }
        }
    }

    static func bigEndian(_ v: UInt16) -> [UInt8] { [UInt8(v >> 8), UInt8(v & 0xFF)] }
    static func bigEndian(_ v: UInt32) -> [UInt8] {
        [UInt8(v >> 24), UInt8((v >> 16) & 0xFF), UInt8((v >> 8) & 0xFF), UInt8(v & 0xFF)]
    }

    /// An interval in nft's syntax: `10.0.0.0/8`, `198.18.0.1`, `10.0.0.0-12.255.255.255`, `80`, `1000-2000`.
    public func text(of interval: KeyInterval) -> String {
        func value(_ bytes: [UInt8]) -> String {
            switch keyType {
            case .ipv4Address: return IPAddressText.formatIPv4(bytes)
            case .ipv6Address: return IPAddressText.formatIPv6(bytes)
            case .port, .uid, .gid: return String(bytes.reduce(UInt64(0)) { $0 << 8 | UInt64($1) })
            }
        }
        if interval.first == interval.last { return value(interval.first) }
        if keyType == .ipv4Address || keyType == .ipv6Address, let prefix = Self.prefixLength(interval) {
            return value(interval.first) + "/\(prefix)"
        }
        return value(interval.first) + "-" + value(interval.last)
    }

    /// The prefix length when the interval is exactly one network.
    static func prefixLength(_ interval: KeyInterval) -> Int? {
        let bits = interval.first.count * 8
        for prefix in 0...bits {
            let network = CIDR(
                family: interval.first.count == 4 ? .ipv4 : .ipv6, address: interval.first, prefixLength: prefix)
            let masked = zip(interval.first, network.mask).map { $0 & $1 }
            if masked == interval.first && network.interval.last == interval.last { return prefix }
        }
        return nil
    }
}
