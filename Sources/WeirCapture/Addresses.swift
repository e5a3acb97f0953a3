/// An IP address family.
public enum IPFamily: String, Sendable, Hashable, Codable, CaseIterable {
    case ipv4, ipv6
}

/// An inclusive TCP/UDP port range; a single port has `first == last`.
public struct PortRange: Sendable, Hashable, Comparable, CustomStringConvertible {
    public let first: UInt16
    public let last: UInt16

    public init(_ port: UInt16) {
        first = port
        last = port
    }
    public init(first: UInt16, last: UInt16) {
        self.first = first
        self.last = last
    }

    public var isSinglePort: Bool { first == last }
    public func contains(_ port: UInt16) -> Bool { port >= first && port <= last }
    public func overlaps(_ other: PortRange) -> Bool { first <= other.last && other.first <= last }
    /// `80` or `8000-8080` (nft style).
    public var description: String { isSinglePort ? "\(first)" : "\(first)-\(last)" }
    public static func < (a: PortRange, b: PortRange) -> Bool { (a.first, a.last) < (b.first, b.last) }

    /// Parses `80`, `8000-8080` or `8000:8080`; nil when malformed.
    public static func parse(_ text: String) -> PortRange? {
        let parts = text.split(omittingEmptySubsequences: false, whereSeparator: { $0 == "-" || $0 == ":" })
        func port(_ s: Substring) -> UInt16? {
            guard !s.isEmpty, s.allSatisfy(\.isASCII), let v = Int(s), v >= 1, v <= 65535 else { return nil }
            return UInt16(v)
        }
        switch parts.count {
        case 1: return port(parts[0]).map { PortRange($0) }
        case 2:
            guard let a = port(parts[0]), let b = port(parts[1]), a <= b else { return nil }
            return PortRange(first: a, last: b)
        default: return nil
        }
    }
}

/// An IPv4 or IPv6 network in CIDR notation, with no host bits set.
public struct CIDR: Sendable, Hashable, Comparable, CustomStringConvertible {
    public let family: IPFamily
    /// Network address bytes in network order (4 or 16 bytes).
    public let address: [UInt8]
    public let prefixLength: Int

    public init(family: IPFamily, address: [UInt8], prefixLength: Int) {
        self.family = family
        self.address = address
        self.prefixLength = prefixLength
    }

    /// The mask bytes for the prefix length.
    public var mask: [UInt8] {
        (0..<address.count).map { i in
            let bits = max(0, min(8, prefixLength - i * 8))
            return bits == 0 ? 0 : UInt8(truncatingIfNeeded: 0xFF << (8 - bits))
        }
    }

    public var description: String {
        (family == .ipv4 ? IPAddressText.formatIPv4(address) : IPAddressText.formatIPv6(address)) + "/\(prefixLength)"
    }

    public static func < (a: CIDR, b: CIDR) -> Bool { a.description < b.description }

    public enum ParseError: Error, Equatable {
        case malformed
        case prefixTooLong(max: Int)
        case hostBitsSet(network: String)
        case mixedFamily
    }

    /// Parses `10.0.0.0/8`, `fd00::/8`, or a bare address (a host route).
    public static func parse(_ text: String) -> Result<CIDR, ParseError> {
        let pieces = text.split(separator: "/", omittingEmptySubsequences: false)
        guard pieces.count == 1 || pieces.count == 2 else { return .failure(.malformed) }
        let addrText = String(pieces[0])
        let family: IPFamily
        let bytes: [UInt8]
        if let v4 = IPAddressText.parseIPv4(addrText) {
            family = .ipv4
            bytes = v4
        } else if let v6 = IPAddressText.parseIPv6(addrText) {
            // An IPv4-mapped IPv6 address mixes the families: the kernel never sees such packets on the wire.
            if v6[0..<10].allSatisfy({ $0 == 0 }) && v6[10] == 0xFF && v6[11] == 0xFF && addrText.contains(".") {
                return .failure(.mixedFamily)
            }
            family = .ipv6
            bytes = v6
        } else {
            return .failure(.malformed)
        }
        let maxLen = bytes.count * 8
        var prefix = maxLen
        if pieces.count == 2 {
            guard !pieces[1].isEmpty, pieces[1].allSatisfy(\.isASCII), let p = Int(pieces[1]), p >= 0 else {
                return .failure(.malformed)
            }
            guard p <= maxLen else { return .failure(.prefixTooLong(max: maxLen)) }
            prefix = p
        }
        let candidate = CIDR(family: family, address: bytes, prefixLength: prefix)
        let masked = zip(bytes, candidate.mask).map { $0 & $1 }
        if masked != bytes {
            return .failure(
                .hostBitsSet(network: CIDR(family: family, address: masked, prefixLength: prefix).description))
        }
        return .success(candidate)
    }

    /// True when every address of `other` is inside this network.
    public func contains(_ other: CIDR) -> Bool {
        guard family == other.family, other.prefixLength >= prefixLength else { return false }
        return zip(other.address, mask).map { $0 & $1 } == address
    }
}

/// Text forms of IP addresses, written here so the pure core needs no libc.
public enum IPAddressText {
    public static func parseIPv4(_ s: String) -> [UInt8]? {
        let parts = s.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4 else { return nil }
        var out: [UInt8] = []
        for p in parts {
            guard !p.isEmpty, p.count <= 3, p.allSatisfy({ $0.isASCII && $0.isNumber }), let v = Int(p), v <= 255 else {
                return nil
            }
            out.append(UInt8(v))
        }
        return out
    }

    public static func parseIPv6(_ s: String) -> [UInt8]? {
        guard !s.isEmpty, s.allSatisfy({ $0.isHexDigit || $0 == ":" || $0 == "." }) else { return nil }
        var text = Substring(s)
        var tailV4: [UInt8] = []
        if let lastColon = text.lastIndex(of: ":"), text[text.index(after: lastColon)...].contains(".") {
            guard let v4 = parseIPv4(String(text[text.index(after: lastColon)...])) else { return nil }
            tailV4 = v4
            text = text[...lastColon]
            if text.hasSuffix(":") && !text.hasSuffix("::") { text = text.dropLast() }
        }
        let halves = text.split(separator: "::", omittingEmptySubsequences: false).map(String.init)
        guard halves.count <= 2 else { return nil }
        func groups(_ h: String) -> [UInt16]? {
            if h.isEmpty { return [] }
            var g: [UInt16] = []
            for part in h.split(separator: ":", omittingEmptySubsequences: false) {
                guard !part.isEmpty, part.count <= 4, let v = UInt16(part, radix: 16) else { return nil }
                g.append(v)
            }
            return g
        }
        guard let head = groups(halves[0]) else { return nil }
        let tail = halves.count == 2 ? groups(halves[1]) : []
        guard let tail else { return nil }
        let want = tailV4.isEmpty ? 8 : 6
        var all: [UInt16]
        if halves.count == 2 {
            let missing = want - head.count - tail.count
            guard missing >= 1 else { return nil }
            all = head + Array(repeating: 0, count: missing) + tail
        } else {
            guard head.count == want else { return nil }
            all = head
        }
        var bytes = all.flatMap { [UInt8($0 >> 8), UInt8($0 & 0xFF)] }
        bytes += tailV4
        return bytes.count == 16 ? bytes : nil
    }

    public static func formatIPv4(_ b: [UInt8]) -> String { b.map(String.init).joined(separator: ".") }

    /// RFC 5952 text: lowercase, longest run of zero groups (length ≥ 2) compressed.
    public static func formatIPv6(_ b: [UInt8]) -> String {
        let g = stride(from: 0, to: 16, by: 2).map { UInt16(b[$0]) << 8 | UInt16(b[$0 + 1]) }
        var bestStart = -1
        var bestLen = 0
        var i = 0
        while i < 8 {
            if g[i] == 0 {
                var j = i
                while j < 8 && g[j] == 0 { j += 1 }
                if j - i > bestLen {
                    bestStart = i
                    bestLen = j - i
                }
                i = j
            } else {
                i += 1
            }
        }
        let hex = g.map { String($0, radix: 16) }
        if bestLen < 2 { return hex.joined(separator: ":") }
        let head = hex[0..<bestStart].joined(separator: ":")
        let tail = hex[(bestStart + bestLen)...].joined(separator: ":")
        return head + "::" + tail
    }
}
