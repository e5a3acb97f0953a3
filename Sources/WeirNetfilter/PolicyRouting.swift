import CNetfilter
import WeirCapture
import WeirSystem
#if canImport(Glibc)
    import Glibc
#endif

/// One of weir's policy-routing objects: a fwmark rule or a route of its table.
public struct PolicyRouteEntry: Sendable, Hashable {
    /// A routing-policy rule or a route.
    public enum Kind: Sendable, Hashable { case rule, route }

    /// The IP family of the rule or route.
    public let family: IPFamily
    /// Whether this is the fwmark rule or the local route.
    public let kind: Kind
    /// The routing table the rule sends marked packets to, or the route is in.
    public let table: UInt32
    /// The fwmark a rule matches (nil for a route).
    public let mark: UInt32?

    /// An entry of `kind` for `table`; `mark` only for a rule.
    public init(family: IPFamily, kind: Kind, table: UInt32, mark: UInt32? = nil) {
        self.family = family
        self.kind = kind
        self.table = table
        self.mark = mark
    }
}

/// TPROXY's fwmark rule and local route table, over rtnetlink. Every rule and route weir creates carries
/// protocol `RedirectPlan.routeProtocol`, which is how `clean` and re-apply find exactly weir's own.
struct PolicyRouting {
    /// Removes weir's rules and routes, then installs the plan's (if any).
    func apply(_ route: PolicyRoute?) throws {
        try removeAll()
        guard let route else { return }
        let lo = try UInt32(ProbeLink.index("lo"))
        for f in route.families {
            let family = UInt8(f == .ipv4 ? AF_INET : AF_INET6)
            try request(
                type: UInt16(RTM_NEWRULE), flags: NLM_F_CREATE | NLM_F_EXCL,
                what: "adding fwmark rule for table \(route.table)"
            ) { nlh in
                let h = mnl_nlmsg_put_extra_header(nlh, MemoryLayout<fib_rule_hdr>.size)!.assumingMemoryBound(
                    to: fib_rule_hdr.self)
                h.pointee.family = family
                h.pointee.action = UInt8(FR_ACT_TO_TBL)
                h.pointee.table = route.table < 256 ? UInt8(route.table) : UInt8(RT_TABLE_UNSPEC.rawValue)
                mnl_attr_put_u32(nlh, UInt16(FRA_FWMARK), route.mark)
                mnl_attr_put_u32(nlh, UInt16(FRA_FWMASK), 0xFFFF_FFFF)
                mnl_attr_put_u32(nlh, UInt16(FRA_TABLE), route.table)
                mnl_attr_put_u32(nlh, UInt16(FRA_PRIORITY), route.priority)
                mnl_attr_put_u8(nlh, UInt16(FRA_PROTOCOL), RedirectPlan.routeProtocol)
            }
            try request(
                type: UInt16(RTM_NEWROUTE), flags: NLM_F_CREATE | NLM_F_REPLACE,
                what: "adding local route in table \(route.table)"
            ) { nlh in
                let h = mnl_nlmsg_put_extra_header(nlh, MemoryLayout<rtmsg>.size)!.assumingMemoryBound(to: rtmsg.self)
                h.pointee.rtm_family = family
                h.pointee.rtm_table = route.table < 256 ? UInt8(route.table) : UInt8(RT_TABLE_UNSPEC.rawValue)
                h.pointee.rtm_protocol = RedirectPlan.routeProtocol
                h.pointee.rtm_scope = UInt8(RT_SCOPE_HOST.rawValue)
                h.pointee.rtm_type = UInt8(RTN_LOCAL)
                mnl_attr_put_u32(nlh, UInt16(RTA_TABLE.rawValue), route.table)
                mnl_attr_put_u32(nlh, UInt16(RTA_OIF.rawValue), lo)
            }
        }
    }

    /// weir's rules and routes now in the namespace.
    func list() throws -> [PolicyRouteEntry] {
        try dump(type: UInt16(RTM_GETRULE)).compactMap(\.entry) + dump(type: UInt16(RTM_GETROUTE)).compactMap(\.entry)
    }

    /// Deletes every rule and route carrying weir's protocol. Returns how many.
    @discardableResult
    func removeAll() throws -> Int {
        var n = 0
        for (get, del) in [(RTM_GETRULE, RTM_DELRULE), (RTM_GETROUTE, RTM_DELROUTE)] {
            for m in try dump(type: UInt16(get)) where m.entry != nil {
                try request(
                    type: UInt16(del), flags: 0, what: "removing weir's \(m.entry!.kind == .rule ? "rule" : "route")"
                ) { nlh in
                    // Send back what the kernel dumped, as a delete.
                    let payload = mnl_nlmsg_put_extra_header(nlh, m.bytes.count - MemoryLayout<nlmsghdr>.size)!
                    m.bytes.withUnsafeBytes { src in
                        payload.copyMemory(
                            from: src.baseAddress! + MemoryLayout<nlmsghdr>.size,
                            byteCount: m.bytes.count - MemoryLayout<nlmsghdr>.size)
                    }
                }
                n += 1
            }
        }
        return n
    }

    private struct Dumped {
        let bytes: [UInt8]
        let entry: PolicyRouteEntry?
    }

    private func dump(type: UInt16) throws -> [Dumped] {
        var out: [Dumped] = []
        try Netlink.dump(
            NETLINK_ROUTE, what: "the routing policy",
            build: { raw in
                let nlh = mnl_nlmsg_put_header(raw)!
                nlh.pointee.nlmsg_type = type
                let h = mnl_nlmsg_put_extra_header(nlh, MemoryLayout<rtmsg>.size)!.assumingMemoryBound(to: rtmsg.self)
                h.pointee.rtm_family = UInt8(AF_UNSPEC)
                return nlh
            }
        ) { msg in
            let bytes = Array(UnsafeRawBufferPointer(start: UnsafeRawPointer(msg), count: Int(msg.pointee.nlmsg_len)))
            out.append(Dumped(bytes: bytes, entry: Self.weirEntry(msg)))
        }
        return out
    }

    /// Attributes of a rule or route message, when it is one of weir's.
    private static func weirEntry(_ msg: UnsafePointer<nlmsghdr>) -> PolicyRouteEntry? {
        let isRule = msg.pointee.nlmsg_type == UInt16(RTM_NEWRULE)
        let headerSize = isRule ? MemoryLayout<fib_rule_hdr>.size : MemoryLayout<rtmsg>.size
        let payload = mnl_nlmsg_get_payload(msg)!
        let family = payload.load(as: UInt8.self)
        var table: UInt32 = 0
        var mark: UInt32?
        var proto: UInt8 = 0
        if isRule {
            table = UInt32(payload.assumingMemoryBound(to: fib_rule_hdr.self).pointee.table)
        } else {
            let r = payload.assumingMemoryBound(to: rtmsg.self).pointee
            table = UInt32(r.rtm_table)
            proto = r.rtm_protocol
        }
        var attr = mnl_nlmsg_get_payload_offset(msg, headerSize)!.assumingMemoryBound(to: nlattr.self)
        let tail = mnl_nlmsg_get_payload_tail(msg)!
        var remaining = Int32(tail - UnsafeMutableRawPointer(attr))
        while mnl_attr_ok(attr, remaining) {
            let t = mnl_attr_get_type(attr)
            if isRule {
                if t == UInt16(FRA_TABLE) { table = mnl_attr_get_u32(attr) }
                if t == UInt16(FRA_FWMARK) { mark = mnl_attr_get_u32(attr) }
                if t == UInt16(FRA_PROTOCOL) { proto = mnl_attr_get_u8(attr) }
            } else if t == UInt16(RTA_TABLE.rawValue) {
                table = mnl_attr_get_u32(attr)
            }
            remaining -= Int32((Int(attr.pointee.nla_len) + 3) & ~3)
            attr = mnl_attr_next(attr)
        }
        guard proto == RedirectPlan.routeProtocol, family == UInt8(AF_INET) || family == UInt8(AF_INET6) else {
            return nil
        }
        return PolicyRouteEntry(
            family: family == UInt8(AF_INET) ? .ipv4 : .ipv6, kind: isRule ? .rule : .route, table: table, mark: mark)
    }

    private func request(type: UInt16, flags: Int32, what: String, build: (UnsafeMutablePointer<nlmsghdr>) -> Void)
        throws
    {
        try rtnetlinkRequest(
            type: type, flags: flags, what: what, tolerate: type == UInt16(RTM_NEWRULE) ? [EEXIST] : [], build: build)
    }
}

/// One rtnetlink request with an ack; errors in `tolerate` count as success.
func rtnetlinkRequest(
    type: UInt16, flags: Int32, what: String, tolerate: Set<Int32> = [],
    build: (UnsafeMutablePointer<nlmsghdr>) -> Void
) throws {
    try Netlink.request(NETLINK_ROUTE, type: type, flags: flags, what: what, tolerate: tolerate, build: build)
}
