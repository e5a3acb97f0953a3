import CNetfilter
import WeirCapture
#if canImport(Glibc)
    import Glibc
#endif

/// Builds libnftnl objects from plan values. The only place plan rules become netlink expressions.
enum NftablesObjects {
    /// nft's userdata type for comments (tables and rules alike).
    static let commentUserdataType: UInt8 = 0

    static func family(_ plan: RedirectPlan) -> UInt16 {
        plan.tableFamily == nil ? UInt16(NFPROTO_INET) : UInt16(NFPROTO_IPV4)
    }

    static func table(_ plan: RedirectPlan, withComment: Bool) -> OpaquePointer {
        let t = nftnl_table_alloc()!
        nftnl_table_set_str(t, UInt16(NFTNL_TABLE_NAME.rawValue), RedirectPlan.tableName)
        nftnl_table_set_u32(t, UInt16(NFTNL_TABLE_FAMILY.rawValue), UInt32(family(plan)))
        nftnl_table_set_u32(t, UInt16(NFTNL_TABLE_FLAGS.rawValue), 0)
        if withComment {
            let ud = userdata(comment: RedirectPlan.tableComment)
            ud.withUnsafeBytes {
                _ = nftnl_table_set_data(t, UInt16(NFTNL_TABLE_USERDATA.rawValue), $0.baseAddress, UInt32($0.count))
            }
        }
        return t
    }

    static func chain(_ plan: RedirectPlan, _ c: PlanChain) -> OpaquePointer {
        let ch = nftnl_chain_alloc()!
        nftnl_chain_set_str(ch, UInt16(NFTNL_CHAIN_TABLE.rawValue), RedirectPlan.tableName)
        nftnl_chain_set_str(ch, UInt16(NFTNL_CHAIN_NAME.rawValue), c.name)
        nftnl_chain_set_u32(ch, UInt16(NFTNL_CHAIN_FAMILY.rawValue), UInt32(family(plan)))
        if let b = c.base {
            nftnl_chain_set_u32(ch, UInt16(NFTNL_CHAIN_HOOKNUM.rawValue), hookNumber(b.hook))
            nftnl_chain_set_s32(ch, UInt16(NFTNL_CHAIN_PRIO.rawValue), b.priority)
            nftnl_chain_set_str(ch, UInt16(NFTNL_CHAIN_TYPE.rawValue), b.type.rawValue)
            nftnl_chain_set_u32(ch, UInt16(NFTNL_CHAIN_POLICY.rawValue), UInt32(NF_ACCEPT))
        }
        return ch
    }

    static func hookNumber(_ h: Hook) -> UInt32 { ChainHook(h).number }

    // MARK: sets

    /// The set's id inside a transaction: rules and element messages name a set created in the same batch by it.
    static func setID(_ plan: RedirectPlan, _ name: String) -> UInt32 {
        UInt32((plan.sets.firstIndex { $0.name == name } ?? 0) + 1)
    }

    /// nft's numbers for the key types (its `enum datatypes`), so that `nft list` prints the elements right.
    static func keyTypeNumber(_ t: SetKeyType) -> UInt32 {
        switch t {
        case .ipv4Address: return 7
        case .ipv6Address: return 8
        case .port: return 13
        case .uid: return 24
        case .gid: return 25
        }
    }

    /// uid and gid keys are in host order (meta skuid loads them so); addresses and ports in network order.
    static func keyBytes(_ t: SetKeyType, bigEndian: [UInt8]) -> [UInt8] {
        t == .uid || t == .gid ? Array(bigEndian.reversed()) : bigEndian
    }

    static func setObject(_ plan: RedirectPlan, _ set: PlanSet) -> OpaquePointer {
        let s = nftnl_set_alloc()!
        nftnl_set_set_str(s, UInt16(NFTNL_SET_TABLE.rawValue), RedirectPlan.tableName)
        nftnl_set_set_str(s, UInt16(NFTNL_SET_NAME.rawValue), set.name)
        nftnl_set_set_u32(s, UInt16(NFTNL_SET_FAMILY.rawValue), UInt32(family(plan)))
        nftnl_set_set_u32(s, UInt16(NFTNL_SET_ID.rawValue), setID(plan, set.name))
        return s
    }

    /// The NEWSET message's set: name, key type and length, and `flags interval` for ranges.
    static func set(_ plan: RedirectPlan, _ set: PlanSet) -> OpaquePointer {
        let s = setObject(plan, set)
        nftnl_set_set_u32(s, UInt16(NFTNL_SET_KEY_TYPE.rawValue), keyTypeNumber(set.keyType))
        nftnl_set_set_u32(s, UInt16(NFTNL_SET_KEY_LEN.rawValue), UInt32(set.keyType.length))
        nftnl_set_set_u32(s, UInt16(NFTNL_SET_FLAGS.rawValue), set.isInterval ? UInt32(NFT_SET_INTERVAL.rawValue) : 0)
        // nft's userdata for the key's byte order (1 host, 2 big endian): without it nft prints ids byte-swapped.
        let order: UInt32 = set.keyType == .uid || set.keyType == .gid ? 1 : 2
        let userdata: [UInt8] = [0, 4] + withUnsafeBytes(of: order) { Array($0) }
        userdata.withUnsafeBytes {
            _ = nftnl_set_set_data(s, UInt16(NFTNL_SET_USERDATA.rawValue), $0.baseAddress, UInt32($0.count))
        }
        return s
    }

    /// The kernel's elements of a set, as nft writes them: an interval set has a start element per interval and an
    /// end element (flag INTERVAL_END) at the key after its last, none after the largest key, and one end element
    /// at zero when the first interval starts above it.
    static func elementKeys(_ set: PlanSet) -> [(key: [UInt8], end: Bool)] {
        let intervals = set.intervals
        guard set.isInterval else { return intervals.map { (keyBytes(set.keyType, bigEndian: $0.first), false) } }
        var out: [(key: [UInt8], end: Bool)] = []
        if let first = intervals.first, first.first.contains(where: { $0 != 0 }) {
            out.append((Array(repeating: 0, count: set.keyType.length), true))
        }
        for i in intervals {
            out.append((i.first, false))
            if let after = KeyInterval.successor(i.last) { out.append((after, true)) }
        }
        return out
    }

    /// Elements per NEWSETELEM message: a netlink attribute's length is 16 bits, so the nest of elements must
    /// stay under 64 KiB (an element takes at most about 48 bytes).
    static let elementsPerMessage = 512

    /// The NEWSETELEM messages' sets, each holding one chunk of the elements.
    static func elementChunks(_ plan: RedirectPlan, _ set: PlanSet) -> [OpaquePointer] {
        let keys = elementKeys(set)
        return stride(from: 0, to: keys.count, by: elementsPerMessage).map { start in
            let s = setObject(plan, set)
            for (key, end) in keys[start..<min(keys.count, start + elementsPerMessage)] {
                let e = nftnl_set_elem_alloc()!
                key.withUnsafeBytes {
                    _ = nftnl_set_elem_set(e, UInt16(NFTNL_SET_ELEM_KEY), $0.baseAddress, UInt32($0.count))
                }
                if end {
                    nftnl_set_elem_set_u32(e, UInt16(NFTNL_SET_ELEM_FLAGS), UInt32(NFT_SET_ELEM_INTERVAL_END.rawValue))
                }
                nftnl_set_elem_add(s, e)
            }
            return s
        }
    }

    /// Joins the elements read back from an interval set into intervals (the inverse of `elementKeys`).
    /// Keys of a host-order type (uid, gid) are turned back to network order first.
    static func intervals(fromElements kernel: [(key: [UInt8], end: Bool)], interval: Bool, hostOrder: Bool)
        -> [KeyInterval]
    {
        let elements = hostOrder ? kernel.map { (key: Array($0.key.reversed()), end: $0.end) } : kernel
        guard interval else { return elements.map { KeyInterval(first: $0.key, last: $0.key) }.sorted() }
        var out: [KeyInterval] = []
        var start: [UInt8]?
        // A dump that spans several messages may repeat the element at a boundary: each (key, end) counts once.
        var seen = Set<[UInt8]>()
        let unique = elements.filter { seen.insert($0.key + [$0.end ? 1 : 0]).inserted }
        // At an equal key an end comes first: it closes the interval before, and a start there opens the next.
        let ordered = unique.sorted { a, b in
            a.key == b.key ? (a.end && !b.end) : a.key.lexicographicallyPrecedes(b.key)
        }
        for (key, end) in ordered {
            if end {
                if let s = start, let last = KeyInterval.predecessor(key) {
                    out.append(KeyInterval(first: s, last: last))
                }
                start = nil
            } else {
                if let s = start, let last = KeyInterval.predecessor(key) {
                    out.append(KeyInterval(first: s, last: last))
                }
                start = key
            }
        }
        if let s = start { out.append(KeyInterval(first: s, last: Array(repeating: 0xFF, count: s.count))) }
        return out
    }

    /// nft's comment userdata TLV: type, length, NUL-terminated text.
    static func userdata(comment: String) -> [UInt8] {
        var bytes = Array(comment.utf8.prefix(Int(NFT_USERDATA_MAXLEN) - 3))
        bytes.append(0)
        return [commentUserdataType, UInt8(bytes.count)] + bytes
    }

    /// Reads the comment back from userdata written by weir or by nft.
    static func comment(fromUserdata data: [UInt8]) -> String? {
        var i = 0
        while i + 2 <= data.count {
            let type = data[i]
            let len = Int(data[i + 1])
            guard i + 2 + len <= data.count else { return nil }
            if type == commentUserdataType {
                let value = data[(i + 2)..<(i + 2 + len)].prefix { $0 != 0 }
                return String(decoding: value, as: UTF8.self)
            }
            i += 2 + len
        }
        return nil
    }

    static func rule(_ plan: RedirectPlan, chain: String, _ r: PlanRule) -> OpaquePointer {
        let rule = nftnl_rule_alloc()!
        nftnl_rule_set_str(rule, UInt16(NFTNL_RULE_TABLE.rawValue), RedirectPlan.tableName)
        nftnl_rule_set_str(rule, UInt16(NFTNL_RULE_CHAIN.rawValue), chain)
        nftnl_rule_set_u32(rule, UInt16(NFTNL_RULE_FAMILY.rawValue), UInt32(family(plan)))
        let ud = userdata(comment: r.comment)
        ud.withUnsafeBytes {
            _ = nftnl_rule_set_data(rule, UInt16(NFTNL_RULE_USERDATA.rawValue), $0.baseAddress, UInt32($0.count))
        }
        for e in expressions(r, inet: plan.tableFamily == nil, setID: { setID(plan, $0) }) {
            nftnl_rule_add_expr(rule, e)
        }
        return rule
    }

    // MARK: expressions

    static let reg1 = UInt32(NFT_REG_1.rawValue)
    /// NF_NAT_RANGE_PROTO_SPECIFIED from <linux/netfilter/nf_nat.h>.
    static let natRangeProtoSpecified: UInt32 = 0x2

    static func expr(_ name: String) -> OpaquePointer { nftnl_expr_alloc(name)! }

    static func setData(_ e: OpaquePointer, _ attr: Int32, _ bytes: [UInt8]) {
        bytes.withUnsafeBytes { _ = nftnl_expr_set(e, UInt16(attr), $0.baseAddress, UInt32($0.count)) }
    }

    static func metaLoad(_ key: UInt32) -> OpaquePointer {
        let e = expr("meta")
        nftnl_expr_set_u32(e, UInt16(NFTNL_EXPR_META_KEY), key)
        nftnl_expr_set_u32(e, UInt16(NFTNL_EXPR_META_DREG), reg1)
        return e
    }

    static func cmp(_ op: nft_cmp_ops, _ bytes: [UInt8]) -> OpaquePointer {
        let e = expr("cmp")
        nftnl_expr_set_u32(e, UInt16(NFTNL_EXPR_CMP_SREG), reg1)
        nftnl_expr_set_u32(e, UInt16(NFTNL_EXPR_CMP_OP), op.rawValue)
        setData(e, Int32(NFTNL_EXPR_CMP_DATA), bytes)
        return e
    }

    static func payloadLoad(_ base: nft_payload_bases, offset: UInt32, length: UInt32) -> OpaquePointer {
        let e = expr("payload")
        nftnl_expr_set_u32(e, UInt16(NFTNL_EXPR_PAYLOAD_DREG), reg1)
        nftnl_expr_set_u32(e, UInt16(NFTNL_EXPR_PAYLOAD_BASE), base.rawValue)
        nftnl_expr_set_u32(e, UInt16(NFTNL_EXPR_PAYLOAD_OFFSET), offset)
        nftnl_expr_set_u32(e, UInt16(NFTNL_EXPR_PAYLOAD_LEN), length)
        return e
    }

    static func bitwise(mask: [UInt8]) -> OpaquePointer {
        let e = expr("bitwise")
        nftnl_expr_set_u32(e, UInt16(NFTNL_EXPR_BITWISE_SREG), reg1)
        nftnl_expr_set_u32(e, UInt16(NFTNL_EXPR_BITWISE_DREG), reg1)
        nftnl_expr_set_u32(e, UInt16(NFTNL_EXPR_BITWISE_LEN), UInt32(mask.count))
        setData(e, Int32(NFTNL_EXPR_BITWISE_MASK), mask)
        setData(e, Int32(NFTNL_EXPR_BITWISE_XOR), Array(repeating: 0, count: mask.count))
        return e
    }

    static func immediate(_ bytes: [UInt8]) -> OpaquePointer {
        let e = expr("immediate")
        nftnl_expr_set_u32(e, UInt16(NFTNL_EXPR_IMM_DREG), reg1)
        setData(e, Int32(NFTNL_EXPR_IMM_DATA), bytes)
        return e
    }

    static func verdict(_ v: Verdict) -> OpaquePointer {
        let e = expr("immediate")
        nftnl_expr_set_u32(e, UInt16(NFTNL_EXPR_IMM_DREG), UInt32(NFT_REG_VERDICT.rawValue))
        let code: Int32 = v == .accept ? Int32(NF_ACCEPT) : NFT_RETURN.rawValue
        nftnl_expr_set_u32(e, UInt16(NFTNL_EXPR_IMM_VERDICT), UInt32(bitPattern: code))
        return e
    }

    static func hostOrder(_ v: UInt32) -> [UInt8] { withUnsafeBytes(of: v) { Array($0) } }
    static func networkOrder(_ v: UInt16) -> [UInt8] { [UInt8(v >> 8), UInt8(v & 0xFF)] }
    static func interfaceName(_ n: String) -> [UInt8] {
        var b = Array(n.utf8.prefix(Int(IFNAMSIZ) - 1))
        b += Array(repeating: 0, count: Int(IFNAMSIZ) - b.count)
        return b
    }

    /// The expressions of a rule, in the order nft itself would emit them.
    static func expressions(_ r: PlanRule, inet: Bool, setID: (String) -> UInt32) -> [OpaquePointer] {
        var out: [OpaquePointer] = []
        for m in r.matches {
            switch m {
            case .l4proto(let p, let neg):
                out.append(metaLoad(UInt32(NFT_META_L4PROTO.rawValue)))
                out.append(cmp(neg ? NFT_CMP_NEQ : NFT_CMP_EQ, [p.number]))
            case .mark(let value, let mask):
                out.append(metaLoad(UInt32(NFT_META_MARK.rawValue)))
                out.append(bitwise(mask: hostOrder(mask)))
                out.append(cmp(NFT_CMP_EQ, hostOrder(value)))
            case .socketUID(let u):
                out.append(metaLoad(UInt32(NFT_META_SKUID.rawValue)))
                out.append(cmp(NFT_CMP_EQ, hostOrder(u)))
            case .socketGID(let g):
                out.append(metaLoad(UInt32(NFT_META_SKGID.rawValue)))
                out.append(cmp(NFT_CMP_EQ, hostOrder(g)))
            case .outputInterface(let n):
                out.append(metaLoad(UInt32(NFT_META_OIFNAME.rawValue)))
                out.append(cmp(NFT_CMP_EQ, interfaceName(n)))
            case .inputInterface(let n):
                out.append(metaLoad(UInt32(NFT_META_IIFNAME.rawValue)))
                out.append(cmp(NFT_CMP_EQ, interfaceName(n)))
            case .destination(let c), .source(let c):
                var isSource = false
                if case .source = m { isSource = true }
                if inet {
                    out.append(metaLoad(UInt32(NFT_META_NFPROTO.rawValue)))
                    out.append(cmp(NFT_CMP_EQ, [UInt8(c.family == .ipv4 ? NFPROTO_IPV4 : NFPROTO_IPV6)]))
                }
                let offset: UInt32 = c.family == .ipv4 ? (isSource ? 12 : 16) : (isSource ? 8 : 24)
                // As nft does: load only the bytes the prefix covers, mask the last one if the prefix ends inside it.
                let bytes = (c.prefixLength + 7) / 8
                if bytes > 0 {
                    out.append(payloadLoad(NFT_PAYLOAD_NETWORK_HEADER, offset: offset, length: UInt32(bytes)))
                    if c.prefixLength % 8 != 0 { out.append(bitwise(mask: Array(c.mask.prefix(bytes)))) }
                    out.append(cmp(NFT_CMP_EQ, Array(c.address.prefix(bytes))))
                }
            case .destinationPort(_, let range):
                out.append(payloadLoad(NFT_PAYLOAD_TRANSPORT_HEADER, offset: 2, length: 2))
                if range.isSinglePort {
                    out.append(cmp(NFT_CMP_EQ, networkOrder(range.first)))
                } else {
                    out.append(cmp(NFT_CMP_GTE, networkOrder(range.first)))
                    out.append(cmp(NFT_CMP_LTE, networkOrder(range.last)))
                }
            case .member(let field, let set):
                switch field {
                case .destination(let f), .source(let f):
                    if inet {
                        out.append(metaLoad(UInt32(NFT_META_NFPROTO.rawValue)))
                        out.append(cmp(NFT_CMP_EQ, [UInt8(f == .ipv4 ? NFPROTO_IPV4 : NFPROTO_IPV6)]))
                    }
                    var isSource = false
                    if case .source = field { isSource = true }
                    let offset: UInt32 = f == .ipv4 ? (isSource ? 12 : 16) : (isSource ? 8 : 24)
                    out.append(payloadLoad(NFT_PAYLOAD_NETWORK_HEADER, offset: offset, length: f == .ipv4 ? 4 : 16))
                case .destinationPort:
                    out.append(payloadLoad(NFT_PAYLOAD_TRANSPORT_HEADER, offset: 2, length: 2))
                case .socketUID:
                    out.append(metaLoad(UInt32(NFT_META_SKUID.rawValue)))
                case .socketGID:
                    out.append(metaLoad(UInt32(NFT_META_SKGID.rawValue)))
                }
                let e = expr("lookup")
                nftnl_expr_set_u32(e, UInt16(NFTNL_EXPR_LOOKUP_SREG), reg1)
                nftnl_expr_set_str(e, UInt16(NFTNL_EXPR_LOOKUP_SET), set)
                nftnl_expr_set_u32(e, UInt16(NFTNL_EXPR_LOOKUP_SET_ID), setID(set))
                // The kernel reports the flags back (0: not inverted); set them so that expected and live compare equal.
                nftnl_expr_set_u32(e, UInt16(NFTNL_EXPR_LOOKUP_FLAGS), 0)
                out.append(e)
            case .transparentSocket:
                let e = expr("socket")
                nftnl_expr_set_u32(e, UInt16(NFTNL_EXPR_SOCKET_KEY), UInt32(NFT_SOCKET_TRANSPARENT.rawValue))
                nftnl_expr_set_u32(e, UInt16(NFTNL_EXPR_SOCKET_DREG), reg1)
                out.append(e)
                out.append(cmp(NFT_CMP_EQ, [1]))
            }
        }
        for s in r.statements {
            switch s {
            case .redirect(let port):
                out.append(immediate(networkOrder(port)))
                let e = expr("redir")
                nftnl_expr_set_u32(e, UInt16(NFTNL_EXPR_REDIR_REG_PROTO_MIN), reg1)
                // As nft writes it: a single port is min = max, with the port range marked as given.
                nftnl_expr_set_u32(e, UInt16(NFTNL_EXPR_REDIR_REG_PROTO_MAX), reg1)
                nftnl_expr_set_u32(e, UInt16(NFTNL_EXPR_REDIR_FLAGS), natRangeProtoSpecified)
                out.append(e)
            case .tproxy(let port):
                out.append(immediate(networkOrder(port)))
                let e = expr("tproxy")
                nftnl_expr_set_u32(e, UInt16(NFTNL_EXPR_TPROXY_FAMILY), UInt32(NFPROTO_UNSPEC))
                nftnl_expr_set_u32(e, UInt16(NFTNL_EXPR_TPROXY_REG_PORT), reg1)
                out.append(e)
            case .setMark(let mark):
                out.append(immediate(hostOrder(mark)))
                let e = expr("meta")
                nftnl_expr_set_u32(e, UInt16(NFTNL_EXPR_META_KEY), UInt32(NFT_META_MARK.rawValue))
                nftnl_expr_set_u32(e, UInt16(NFTNL_EXPR_META_SREG), reg1)
                out.append(e)
            }
        }
        if let v = r.verdict { out.append(verdict(v)) }
        return out
    }

    /// libnftnl's one-line text of each expression: the form `check` compares, expected against live.
    static func expressions(of rule: OpaquePointer) -> [RuleExpression] {
        var out: [RuleExpression] = []
        guard let it = nftnl_expr_iter_create(rule) else { return out }
        defer { nftnl_expr_iter_destroy(it) }
        var buf = [CChar](repeating: 0, count: 512)
        while let e = nftnl_expr_iter_next(it) {
            let n = nftnl_expr_snprintf(&buf, buf.count, e, UInt32(NFTNL_OUTPUT_DEFAULT.rawValue), 0)
            let name = nftnl_expr_get_str(e, UInt16(NFTNL_EXPR_NAME)).map { String(cString: $0) } ?? "?"
            out.append(
                RuleExpression(
                    name: name,
                    text: n > 0
                        ? String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
                            .trimmingSpaces : "?"))
        }
        return out
    }
}
