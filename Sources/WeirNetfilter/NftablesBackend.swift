import CNetfilter
import CWeirShims
import Logging
import WeirCapture
import WeirNetns
#if canImport(Glibc)
import Glibc
#endif

/// The kernel refused the transaction; nothing changed (nf_tables batches are all or nothing).
public struct ApplyError: Error, Sendable, CustomStringConvertible {
    public let failures: [NetlinkError]
    public var description: String {
        "the kernel rejected the transaction, so nothing was changed:\n" + failures.map { "  - \($0)" }.joined(separator: "\n")
    }
}

/// nftables over netlink with libnftnl and libmnl, no `nft` process. Runs on the calling thread:
/// callers enter the target namespace first (`NetworkNamespace.run`).
public struct NftablesBackend: Sendable {
    public init() {}

    /// Replaces weir's table with the plan's, in one batch: create-if-missing, delete, recreate, chains, rules.
    public func apply(_ plan: RedirectPlan) throws {
        try apply(plan, failAfterRules: nil)
    }

    /// `failAfterRules`: tests append a rule the kernel must refuse after that many rules, to prove atomicity.
    func apply(_ plan: RedirectPlan, failAfterRules: Int?) throws {
        // Deleting objects makes the kernel free them after an RCU grace period, and closing the socket waits
        // for that (4–16 ms). So a first install creates the table exclusively instead of delete-and-recreate;
        // if another writer created it meanwhile, the exclusive create fails, nothing changes, and we replace.
        let present = try readTables().filter { $0.name == RedirectPlan.tableName }.map(\.family)
        let weirFamilies = [UInt32(NFPROTO_INET), UInt32(NFPROTO_IPV4)]
        if !present.contains(where: weirFamilies.contains) {
            do {
                return try apply(plan, failAfterRules: failAfterRules, replacing: [])
            } catch let error as ApplyError where error.failures.contains(where: { $0.errno == EEXIST }) {
                // Raced with another writer: fall through to a replace.
            }
        }
        try apply(plan, failAfterRules: failAfterRules, replacing: weirFamilies.map { UInt16($0) })
    }

    private func apply(_ plan: RedirectPlan, failAfterRules: Int?, replacing: [UInt16]) throws {
        let socket = try NetlinkSocket(bus: NETLINK_NETFILTER)
        var batch = NftBatch(socket: socket)
        // Both table families: a spec that turns IPv6 off moves the table from inet to ip in the same transaction.
        for family in replacing {
            batch.deleteTableIfPresent(family: family)
        }
        let table = NftablesObjects.table(plan, withComment: true)
        batch.add(NFT_MSG_NEWTABLE, family: NftablesObjects.family(plan), flags: NLM_F_CREATE | (replacing.isEmpty ? NLM_F_EXCL : 0),
                  what: "table \(plan.familyName) weir") {
            nftnl_table_nlmsg_build_payload($0, table)
        }
        nftnl_table_free(table)
        var rulesAdded = 0
        for c in plan.chains {
            let ch = NftablesObjects.chain(plan, c)
            batch.add(NFT_MSG_NEWCHAIN, family: NftablesObjects.family(plan), flags: NLM_F_CREATE, what: "chain \(c.name)") {
                nftnl_chain_nlmsg_build_payload($0, ch)
            }
            nftnl_chain_free(ch)
        }
        for c in plan.chains {
            for r in c.rules {
                let rule = NftablesObjects.rule(plan, chain: c.name, r)
                batch.add(NFT_MSG_NEWRULE, family: NftablesObjects.family(plan), flags: NLM_F_CREATE | NLM_F_APPEND,
                          what: "rule \"\(r.comment)\" in chain \(c.name)") { nftnl_rule_nlmsg_build_payload($0, rule) }
                nftnl_rule_free(rule)
                rulesAdded += 1
                if let n = failAfterRules, n == rulesAdded {
                    let bad = Self.ruleJumpingToMissingChain(plan, chain: c.name)
                    batch.add(NFT_MSG_NEWRULE, family: NftablesObjects.family(plan), flags: NLM_F_CREATE | NLM_F_APPEND,
                              what: "injected failing rule in chain \(c.name)") { nftnl_rule_nlmsg_build_payload($0, bad) }
                    nftnl_rule_free(bad)
                }
            }
        }
        try batch.commit()
    }

    /// Removes weir's tables (both families) in one batch. Succeeds when there is nothing to remove.
    /// Returns whether a table was there.
    @discardableResult
    public func clean() throws -> Bool {
        let existed = try readTables().contains { $0.name == RedirectPlan.tableName && ($0.family == UInt32(NFPROTO_INET) || $0.family == UInt32(NFPROTO_IPV4)) }
        let socket = try NetlinkSocket(bus: NETLINK_NETFILTER)
        var batch = NftBatch(socket: socket)
        for family in [NFPROTO_INET, NFPROTO_IPV4] { batch.deleteTableIfPresent(family: UInt16(family)) }
        try batch.commit()
        return existed
    }

    static func ruleJumpingToMissingChain(_ plan: RedirectPlan, chain: String) -> OpaquePointer {
        let rule = nftnl_rule_alloc()!
        nftnl_rule_set_str(rule, UInt16(NFTNL_RULE_TABLE.rawValue), RedirectPlan.tableName)
        nftnl_rule_set_str(rule, UInt16(NFTNL_RULE_CHAIN.rawValue), chain)
        nftnl_rule_set_u32(rule, UInt16(NFTNL_RULE_FAMILY.rawValue), UInt32(NftablesObjects.family(plan)))
        let e = nftnl_expr_alloc("immediate")!
        nftnl_expr_set_u32(e, UInt16(NFTNL_EXPR_IMM_DREG), UInt32(NFT_REG_VERDICT.rawValue))
        nftnl_expr_set_u32(e, UInt16(NFTNL_EXPR_IMM_VERDICT), UInt32(bitPattern: NFT_JUMP.rawValue))
        nftnl_expr_set_str(e, UInt16(NFTNL_EXPR_IMM_CHAIN), "no-such-chain")
        nftnl_rule_add_expr(rule, e)
        return rule
    }

    // MARK: reading back

    /// Every table of every family in the namespace.
    public func readTables() throws -> [LiveTable] {
        var tables: [LiveTable] = []
        try dump(NFT_MSG_GETTABLE) { nlh in
            let t = nftnl_table_alloc()!
            defer { nftnl_table_free(t) }
            guard nftnl_table_nlmsg_parse(nlh, t) >= 0 else { return }
            var comment: String?
            var len: UInt32 = 0
            if let p = nftnl_table_get_data(t, UInt16(NFTNL_TABLE_USERDATA.rawValue), &len) {
                comment = NftablesObjects.comment(fromUserdata: Array(UnsafeRawBufferPointer(start: p, count: Int(len))))
            }
            tables.append(LiveTable(family: nftnl_table_get_u32(t, UInt16(NFTNL_TABLE_FAMILY.rawValue)),
                                    name: String(cString: nftnl_table_get_str(t, UInt16(NFTNL_TABLE_NAME.rawValue))),
                                    comment: comment))
        }
        return tables
    }

    /// The whole ruleset: tables, chains (with hooks) and rules (with comments and expression texts).
    public func readRuleset() throws -> LiveRuleset {
        var chains: [LiveChain] = []
        try dump(NFT_MSG_GETCHAIN) { nlh in
            let c = nftnl_chain_alloc()!
            defer { nftnl_chain_free(c) }
            guard nftnl_chain_nlmsg_parse(nlh, c) >= 0 else { return }
            func str(_ a: nftnl_chain_attr) -> String? {
                nftnl_chain_is_set(c, UInt16(a.rawValue)) ? String(cString: nftnl_chain_get_str(c, UInt16(a.rawValue))) : nil
            }
            let isBase = nftnl_chain_is_set(c, UInt16(NFTNL_CHAIN_HOOKNUM.rawValue))
            chains.append(LiveChain(
                family: nftnl_chain_get_u32(c, UInt16(NFTNL_CHAIN_FAMILY.rawValue)),
                table: str(NFTNL_CHAIN_TABLE) ?? "",
                name: str(NFTNL_CHAIN_NAME) ?? "",
                hook: isBase ? nftnl_chain_get_u32(c, UInt16(NFTNL_CHAIN_HOOKNUM.rawValue)) : nil,
                priority: isBase ? nftnl_chain_get_s32(c, UInt16(NFTNL_CHAIN_PRIO.rawValue)) : nil,
                type: str(NFTNL_CHAIN_TYPE),
                policy: nftnl_chain_is_set(c, UInt16(NFTNL_CHAIN_POLICY.rawValue)) ? nftnl_chain_get_u32(c, UInt16(NFTNL_CHAIN_POLICY.rawValue)) : nil))
        }
        var rules: [LiveRule] = []
        try dump(NFT_MSG_GETRULE) { nlh in
            let r = nftnl_rule_alloc()!
            defer { nftnl_rule_free(r) }
            guard nftnl_rule_nlmsg_parse(nlh, r) >= 0 else { return }
            var comment: String?
            var len: UInt32 = 0
            if let p = nftnl_rule_get_data(r, UInt16(NFTNL_RULE_USERDATA.rawValue), &len) {
                comment = NftablesObjects.comment(fromUserdata: Array(UnsafeRawBufferPointer(start: p, count: Int(len))))
            }
            rules.append(LiveRule(
                family: nftnl_rule_get_u32(r, UInt16(NFTNL_RULE_FAMILY.rawValue)),
                table: String(cString: nftnl_rule_get_str(r, UInt16(NFTNL_RULE_TABLE.rawValue))),
                chain: String(cString: nftnl_rule_get_str(r, UInt16(NFTNL_RULE_CHAIN.rawValue))),
                handle: nftnl_rule_get_u64(r, UInt16(NFTNL_RULE_HANDLE.rawValue)),
                comment: comment,
                expressions: NftablesObjects.expressionTexts(r)))
        }
        return LiveRuleset(tables: try readTables(), chains: chains, rules: rules)
    }

    /// The expression texts weir's plan would produce, chain by chain, for comparing with the live ruleset.
    public func expectedRules(_ plan: RedirectPlan) -> [String: [(comment: String, expressions: [String])]] {
        var out: [String: [(comment: String, expressions: [String])]] = [:]
        for c in plan.chains {
            out[c.name] = c.rules.map { r in
                let rule = NftablesObjects.rule(plan, chain: c.name, r)
                defer { nftnl_rule_free(rule) }
                return (r.comment, NftablesObjects.expressionTexts(rule))
            }
        }
        return out
    }

    private func dump(_ type: nf_tables_msg_types, _ each: (UnsafePointer<nlmsghdr>) -> Void) throws {
        let socket = try NetlinkSocket(bus: NETLINK_NETFILTER)
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: mnlBufferSize, alignment: 8)
        defer { buffer.deallocate() }
        let seq = socket.nextSequence()
        let nlh = nftnl_nlmsg_build_hdr(buffer.assumingMemoryBound(to: CChar.self), UInt16(type.rawValue), UInt16(NFPROTO_UNSPEC),
                                        UInt16(NLM_F_DUMP), seq)!
        try socket.send(buffer, Int(nlh.pointee.nlmsg_len))
        var failure: Int32 = 0
        try socket.receive(expectedSequence: seq) { msg in
            if msg.pointee.nlmsg_type == UInt16(NLMSG_DONE) { return false }
            if msg.pointee.nlmsg_type == UInt16(NLMSG_ERROR) { failure = msg.ackErrno; return false }
            each(msg)
            return true
        }
        if failure != 0 { throw NetlinkError(errno: failure, what: "reading the ruleset") }
    }
}

/// A netfilter batch under construction, with what each message does so a refusal names it.
struct NftBatch {
    let socket: NetlinkSocket
    let batch: OpaquePointer
    var descriptions: [UInt32: String] = [:]
    var beginSequence: UInt32

    init(socket: NetlinkSocket) {
        self.socket = socket
        batch = nftnl_batch_alloc(UInt32(getpagesize()), UInt32(mnlBufferSize))!
        beginSequence = socket.nextSequence()
        nftnl_batch_begin(buffer, beginSequence)
        nftnl_batch_update(batch)
    }

    var buffer: UnsafeMutablePointer<CChar> { nftnl_batch_buffer(batch).assumingMemoryBound(to: CChar.self) }

    mutating func add(_ type: nf_tables_msg_types, family: UInt16, flags: Int32, what: String, payload: (UnsafeMutablePointer<nlmsghdr>) -> Void) {
        let seq = socket.nextSequence()
        let nlh = nftnl_nlmsg_build_hdr(buffer, UInt16(type.rawValue), family, UInt16(flags | NLM_F_ACK), seq)!
        payload(nlh)
        nftnl_batch_update(batch)
        descriptions[seq] = what
    }

    /// `add table` (no-op when present) then `delete table`: removes weir's table whether or not it exists.
    mutating func deleteTableIfPresent(family: UInt16) {
        let t = nftnl_table_alloc()!
        defer { nftnl_table_free(t) }
        nftnl_table_set_str(t, UInt16(NFTNL_TABLE_NAME.rawValue), RedirectPlan.tableName)
        nftnl_table_set_u32(t, UInt16(NFTNL_TABLE_FAMILY.rawValue), UInt32(family))
        add(NFT_MSG_NEWTABLE, family: family, flags: NLM_F_CREATE, what: "creating table weir before replacing it") {
            nftnl_table_nlmsg_build_payload($0, t)
        }
        add(NFT_MSG_DELTABLE, family: family, flags: 0, what: "deleting the previous table weir") {
            nftnl_table_nlmsg_build_payload($0, t)
        }
    }

    /// Sends the batch and reads one ack per message; throws with every refused message named.
    func commit() throws {
        defer { nftnl_batch_free(batch) }
        nftnl_batch_end(buffer, socket.nextSequence())
        nftnl_batch_update(batch)
        var iov = [iovec](repeating: iovec(), count: Int(nftnl_batch_iovec_len(batch)))
        nftnl_batch_iovec(batch, &iov, UInt32(iov.count))
        var timeout = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(mnl_socket_get_fd(socket.socket), SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        try socket.send(iovecs: &iov)
        socket.closeInBackground = true
        var pending = Set(descriptions.keys)
        var failures: [NetlinkError] = []
        try socket.receive(expectedSequence: nil) { msg in
            guard msg.pointee.nlmsg_type == UInt16(NLMSG_ERROR) else { return true }
            let errno = msg.ackErrno
            let seq = mnl_nlmsg_get_payload(msg)!.assumingMemoryBound(to: nlmsgerr.self).pointee.msg.nlmsg_seq
            if errno != 0 {
                failures.append(NetlinkError(errno: errno, what: descriptions[seq] ?? "the transaction"))
                // A refusal of the batch itself (no permission, no nf_tables) comes alone.
                if descriptions[seq] == nil { return false }
            }
            pending.remove(seq)
            return !pending.isEmpty
        }
        if !failures.isEmpty { throw ApplyError(failures: failures) }
    }
}

public struct LiveTable: Sendable, Hashable {
    public let family: UInt32
    public let name: String
    public let comment: String?
}

public struct LiveChain: Sendable, Hashable {
    public let family: UInt32
    public let table: String
    public let name: String
    public let hook: UInt32?
    public let priority: Int32?
    public let type: String?
    public let policy: UInt32?
}

public struct LiveRule: Sendable, Hashable {
    public let family: UInt32
    public let table: String
    public let chain: String
    public let handle: UInt64
    public let comment: String?
    public let expressions: [String]
}

/// What the kernel holds, as read over netlink.
public struct LiveRuleset: Sendable {
    public let tables: [LiveTable]
    public let chains: [LiveChain]
    public let rules: [LiveRule]
}

/// Netfilter family numbers as names.
public func familyName(_ f: UInt32) -> String {
    switch Int(f) {
    case NFPROTO_INET: return "inet"
    case NFPROTO_IPV4: return "ip"
    case NFPROTO_IPV6: return "ip6"
    case NFPROTO_ARP: return "arp"
    case NFPROTO_BRIDGE: return "bridge"
    case NFPROTO_NETDEV: return "netdev"
    default: return "family\(f)"
    }
}

/// libmnl's MNL_SOCKET_BUFFER_SIZE (a macro Swift cannot import): 8 KiB, or the page size if larger.
let mnlBufferSize = max(8192, Int(getpagesize()))
