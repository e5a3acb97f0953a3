import CNetfilter
import Logging
import WeirCapture
import WeirSystem

#if canImport(Glibc)
    import Glibc
#endif

/// The kernel refused the transaction; nothing changed (nf_tables batches are all or nothing).
public struct ApplyError: Error, Sendable, CustomStringConvertible {
    /// Every refused message, with what it did.
    public let failures: [NetlinkError]

    /// Says the kernel rejected the transaction and nothing changed, then lists each refused message.
    public var description: String {
        "the kernel rejected the transaction, so nothing was changed:\n"
            + failures.map { "  - \($0)" }.joined(separator: "\n")
    }
}

/// One message of an nf_tables transaction: what it does, so that a refusal names it, and its bytes.
public struct NftMessage: Sendable, Hashable {
    /// What the message does (`rule "weir: out: only tcp is captured" in chain output`).
    public let what: String
    /// The netlink message, header first; its sequence number and ack flag are set when the batch is sent.
    public let bytes: [UInt8]

    /// The nf_tables message type (`NFT_MSG_NEWRULE`).
    public var type: UInt16 { UInt16(bytes[4]) }
}

/// An nf_tables batch as a value: built from a plan, read by tests (which may add a message the kernel must refuse,
/// to prove that nothing of the batch lands), and sent in one `sendmsg`.
public struct NftTransaction: Sendable {
    /// The messages, in order, between the batch's begin and end.
    public private(set) var messages: [NftMessage] = []

    /// An empty batch; `NftablesBackend.transaction(for:replacing:)` builds the ones a plan needs.
    public init() {}

    /// The biggest message: a netlink attribute's length is 16 bits, so no payload weir builds comes near it.
    static let maxMessage = 1 << 16

    /// Adds a message of `type` for `family` whose payload `payload` writes.
    mutating func add(
        _ type: nf_tables_msg_types, family: UInt16, flags: Int32, what: String,
        payload: (UnsafeMutablePointer<nlmsghdr>) -> Void
    ) {
        let bytes = withUnsafeTemporaryAllocation(byteCount: Self.maxMessage, alignment: 8) { raw -> [UInt8] in
            raw.initializeMemory(as: UInt8.self, repeating: 0)
            let nlh = nftnl_nlmsg_build_hdr(
                raw.baseAddress!.assumingMemoryBound(to: CChar.self), UInt16(type.rawValue),
                family, UInt16(flags), 0)!
            payload(nlh)
            return Array(UnsafeRawBufferPointer(rebasing: raw[0..<Int(nlh.pointee.nlmsg_len)]))
        }
        messages.append(NftMessage(what: what, bytes: bytes))
    }

    /// Puts a message built elsewhere at `index`.
    public mutating func insert(_ message: NftMessage, at index: Int) { messages.insert(message, at: index) }

    /// The batch's size on the wire, without its begin and end.
    public var byteCount: Int { messages.reduce(0) { $0 + $1.bytes.count } }

    /// `add table` (a no-op when present) then `delete table`: removes weir's table whether or not it exists.
    mutating func deleteTableIfPresent(family: NetfilterFamily) {
        let t = nftnl_table_alloc()!
        defer { nftnl_table_free(t) }
        nftnl_table_set_str(t, UInt16(NFTNL_TABLE_NAME.rawValue), RedirectPlan.tableName)
        nftnl_table_set_u32(t, UInt16(NFTNL_TABLE_FAMILY.rawValue), family.number)
        let number = UInt16(family.number)
        add(NFT_MSG_NEWTABLE, family: number, flags: NLM_F_CREATE, what: "creating table weir before replacing it") {
            nftnl_table_nlmsg_build_payload($0, t)
        }
        add(NFT_MSG_DELTABLE, family: number, flags: 0, what: "deleting the previous table weir") {
            nftnl_table_nlmsg_build_payload($0, t)
        }
    }
}

/// nftables over netlink with libnftnl and libmnl, no `nft` process. Runs on the calling thread: callers enter
/// the target namespace first (`NamespaceHandle.run`).
public struct NftablesBackend: Sendable {
    /// Whether a committed transaction's socket is closed on a background queue (a long-lived process need not wait
    /// for the kernel's RCU grace period) or at once (an init step that exits next would wait at its exit anyway,
    /// and a closing thread would only add to its start-up).
    public let closesInBackground: Bool

    /// The backend; it holds no state, and each call opens its own netlink socket.
    public init(closesInBackground: Bool = true) { self.closesInBackground = closesInBackground }

    /// Replaces weir's table with the plan's, in one batch: create-if-missing, delete, recreate, sets, chains,
    /// rules.
    public func apply(_ plan: RedirectPlan) throws {
        // Deleting objects makes the kernel free them after an RCU grace period, and closing the socket waits
        // for that (4–16 ms). So a first install creates the table exclusively instead of delete-and-recreate;
        // if another writer created it meanwhile, the exclusive create fails, nothing changes, and we replace.
        if !(try readTables().contains(where: \.isWeir)) {
            do {
                return try commit(transaction(for: plan, replacing: []))
            } catch let error as ApplyError where error.failures.contains(where: { $0.errno == EEXIST }) {
                // Raced with another writer: fall through to a replace.
            }
        }
        try commit(transaction(for: plan, replacing: NetfilterFamily.weirFamilies))
    }

    /// The batch that installs `plan`, first removing weir's tables of the `replacing` families (both, when
    /// replacing: a spec that turns IPv6 off moves the table from inet to ip in the same transaction). With none
    /// to replace, the table is created exclusively.
    public func transaction(for plan: RedirectPlan, replacing: [NetfilterFamily]) -> NftTransaction {
        var batch = NftTransaction()
        for family in replacing { batch.deleteTableIfPresent(family: family) }
        let family = NftablesObjects.family(plan)
        let table = NftablesObjects.table(plan, withComment: true)
        batch.add(
            NFT_MSG_NEWTABLE, family: family, flags: NLM_F_CREATE | (replacing.isEmpty ? NLM_F_EXCL : 0),
            what: "table \(plan.familyName) weir"
        ) { nftnl_table_nlmsg_build_payload($0, table) }
        nftnl_table_free(table)
        for set in plan.sets {
            let s = NftablesObjects.set(plan, set)
            batch.add(NFT_MSG_NEWSET, family: family, flags: NLM_F_CREATE, what: "set \(set.name)") {
                nftnl_set_nlmsg_build_payload($0, s)
            }
            nftnl_set_free(s)
            for (i, chunk) in NftablesObjects.elementChunks(plan, set).enumerated() {
                batch.add(
                    NFT_MSG_NEWSETELEM, family: family, flags: NLM_F_CREATE,
                    what: "elements of set \(set.name) (part \(i + 1))"
                ) { nftnl_set_elems_nlmsg_build_payload($0, chunk) }
                nftnl_set_free(chunk)
            }
        }
        for c in plan.chains {
            let ch = NftablesObjects.chain(plan, c)
            batch.add(NFT_MSG_NEWCHAIN, family: family, flags: NLM_F_CREATE, what: "chain \(c.name)") {
                nftnl_chain_nlmsg_build_payload($0, ch)
            }
            nftnl_chain_free(ch)
        }
        for c in plan.chains {
            for r in c.rules {
                let rule = NftablesObjects.rule(plan, chain: c.name, r)
                batch.add(
                    NFT_MSG_NEWRULE, family: family, flags: NLM_F_CREATE | NLM_F_APPEND,
                    what: "rule \"\(r.comment)\" in chain \(c.name)"
                ) { nftnl_rule_nlmsg_build_payload($0, rule) }
                nftnl_rule_free(rule)
            }
        }
        return batch
    }

    /// Removes weir's tables (both families) in one batch. Succeeds when there is nothing to remove.
    /// Returns whether a table was there.
    @discardableResult
    public func clean() throws -> Bool {
        let existed = try readTables().contains(where: \.isWeir)
        var batch = NftTransaction()
        for family in NetfilterFamily.weirFamilies { batch.deleteTableIfPresent(family: family) }
        try commit(batch)
        return existed
    }

    /// Sends the batch in one `sendmsg` and reads the kernel's answer: an error for every refused message, and an
    /// ack for the last one, which only the last message asks for, so that the answer stays small however long
    /// the batch. Throws with every refused message named.
    public func commit(_ transaction: NftTransaction) throws {
        let messages = transaction.messages
        guard !messages.isEmpty else { return }
        // Sequence numbers: the begin is 1, message i is i + 2, the end follows the last.
        var wire = batchMarker(begin: true, sequence: 1)
        wire.reserveCapacity(transaction.byteCount + 64)
        for (i, message) in messages.enumerated() {
            var bytes = message.bytes
            withUnsafeBytes(of: UInt32(i + 2)) { bytes.replaceSubrange(8..<12, with: $0) }
            if i == messages.count - 1 {
                let flags = (UInt16(bytes[6]) | UInt16(bytes[7]) << 8) | UInt16(NLM_F_ACK)
                withUnsafeBytes(of: flags) { bytes.replaceSubrange(6..<8, with: $0) }
            }
            wire += bytes
        }
        wire += batchMarker(begin: false, sequence: UInt32(messages.count + 2))
        let socket = try Netlink.open(NETLINK_NETFILTER)
        // The whole batch must fit one send; the answer holds at most one small error per message.
        socket.growBuffers(to: max(1 << 20, wire.count + 4096, messages.count * 1024))
        try socket.setReceiveTimeout(seconds: 30)
        let raw = UnsafeMutableRawBufferPointer.allocate(byteCount: wire.count, alignment: 8)
        defer { raw.deallocate() }
        raw.copyBytes(from: wire)
        do throws(SystemCallError) {
            try socket.send([UnsafeRawBufferPointer(raw)])
        } catch {
            throw error.context("sending a transaction of \(messages.count) messages (\(wire.count) bytes)")
        }
        let last = UInt32(messages.count + 1)
        var failures: [NetlinkError] = []
        try Netlink.receive(socket, context: "reading the kernel's answer to the transaction") { msg in
            guard msg.pointee.nlmsg_type == UInt16(NLMSG_ERROR) else { return true }
            let sequence = msg.acknowledgedSequence
            let index = Int(sequence) - 2
            let known = messages.indices.contains(index)
            if msg.ackErrno != 0 {
                failures.append(
                    NetlinkError(errno: msg.ackErrno, what: known ? messages[index].what : "the transaction"))
            }
            // A refusal of the batch itself (no permission, no nf_tables) comes alone, on the begin message.
            return known && sequence != last
        }
        if closesInBackground { socket.closeInBackground() } else { socket.close() }
        if !failures.isEmpty { throw ApplyError(failures: failures) }
    }

    /// NFNL_MSG_BATCH_BEGIN or _END for the nf_tables subsystem.
    private func batchMarker(begin: Bool, sequence: UInt32) -> [UInt8] {
        withUnsafeTemporaryAllocation(byteCount: 64, alignment: 8) { raw -> [UInt8] in
            raw.initializeMemory(as: UInt8.self, repeating: 0)
            let buffer = raw.baseAddress!.assumingMemoryBound(to: CChar.self)
            let nlh = begin ? nftnl_batch_begin(buffer, sequence)! : nftnl_batch_end(buffer, sequence)!
            return Array(UnsafeRawBufferPointer(rebasing: raw[0..<Int(nlh.pointee.nlmsg_len)]))
        }
    }

    // MARK: reading back

    /// Every table of every family in the namespace.
    public func readTables() throws -> [LiveTable] {
        var tables: [LiveTable] = []
        try dump(NFT_MSG_GETTABLE, what: "the tables") { nlh in
            let t = nftnl_table_alloc()!
            defer { nftnl_table_free(t) }
            guard nftnl_table_nlmsg_parse(nlh, t) >= 0 else { return }
            var comment: String?
            var len: UInt32 = 0
            if let p = nftnl_table_get_data(t, UInt16(NFTNL_TABLE_USERDATA.rawValue), &len) {
                comment = NftablesObjects.comment(
                    fromUserdata: Array(UnsafeRawBufferPointer(start: p, count: Int(len))))
            }
            tables.append(
                LiveTable(
                    family: NetfilterFamily(number: nftnl_table_get_u32(t, UInt16(NFTNL_TABLE_FAMILY.rawValue))),
                    name: String(cString: nftnl_table_get_str(t, UInt16(NFTNL_TABLE_NAME.rawValue))),
                    comment: comment))
        }
        return tables
    }

    /// The whole ruleset: tables, chains (with hooks), rules (with comments and expressions), and the sets of
    /// weir's table with their elements.
    public func readRuleset() throws -> LiveRuleset {
        var ruleset = LiveRuleset(tables: try readTables())
        try dump(NFT_MSG_GETCHAIN, what: "the chains") { nlh in
            let c = nftnl_chain_alloc()!
            defer { nftnl_chain_free(c) }
            guard nftnl_chain_nlmsg_parse(nlh, c) >= 0 else { return }
            func str(_ a: nftnl_chain_attr) -> String? {
                nftnl_chain_is_set(c, UInt16(a.rawValue))
                    ? String(cString: nftnl_chain_get_str(c, UInt16(a.rawValue))) : nil
            }
            func u32(_ a: nftnl_chain_attr) -> UInt32? {
                nftnl_chain_is_set(c, UInt16(a.rawValue)) ? nftnl_chain_get_u32(c, UInt16(a.rawValue)) : nil
            }
            var base: LiveChain.Base?
            if let hook = u32(NFTNL_CHAIN_HOOKNUM) {
                base = LiveChain.Base(
                    hook: ChainHook(number: hook), priority: nftnl_chain_get_s32(c, UInt16(NFTNL_CHAIN_PRIO.rawValue)),
                    type: str(NFTNL_CHAIN_TYPE) ?? "",
                    policy: ChainPolicy(number: u32(NFTNL_CHAIN_POLICY) ?? UInt32(NF_ACCEPT)))
            }
            ruleset.chains.append(
                LiveChain(
                    family: NetfilterFamily(number: u32(NFTNL_CHAIN_FAMILY) ?? 0), table: str(NFTNL_CHAIN_TABLE) ?? "",
                    name: str(NFTNL_CHAIN_NAME) ?? "", base: base))
        }
        try dump(NFT_MSG_GETRULE, what: "the rules") { nlh in
            let r = nftnl_rule_alloc()!
            defer { nftnl_rule_free(r) }
            guard nftnl_rule_nlmsg_parse(nlh, r) >= 0 else { return }
            var comment: String?
            var len: UInt32 = 0
            if let p = nftnl_rule_get_data(r, UInt16(NFTNL_RULE_USERDATA.rawValue), &len) {
                comment = NftablesObjects.comment(
                    fromUserdata: Array(UnsafeRawBufferPointer(start: p, count: Int(len))))
            }
            ruleset.rules.append(
                LiveRule(
                    family: NetfilterFamily(number: nftnl_rule_get_u32(r, UInt16(NFTNL_RULE_FAMILY.rawValue))),
                    table: String(cString: nftnl_rule_get_str(r, UInt16(NFTNL_RULE_TABLE.rawValue))),
                    chain: String(cString: nftnl_rule_get_str(r, UInt16(NFTNL_RULE_CHAIN.rawValue))),
                    handle: nftnl_rule_get_u64(r, UInt16(NFTNL_RULE_HANDLE.rawValue)),
                    comment: comment,
                    expressions: NftablesObjects.expressions(of: r)))
        }
        if let table = ruleset.weirTable { ruleset.sets = try readSets(of: table) }
        return ruleset
    }

    /// The sets of a table, each with its elements.
    func readSets(of table: LiveTable) throws -> [LiveSet] {
        var headers: [(name: String, keyLength: Int, keyType: UInt32, interval: Bool)] = []
        try dump(NFT_MSG_GETSET, what: "the sets", family: table.family) { nlh in
            let s = nftnl_set_alloc()!
            defer { nftnl_set_free(s) }
            guard nftnl_set_nlmsg_parse(nlh, s) >= 0,
                String(cString: nftnl_set_get_str(s, UInt16(NFTNL_SET_TABLE.rawValue))) == table.name
            else { return }
            let flags = nftnl_set_get_u32(s, UInt16(NFTNL_SET_FLAGS.rawValue))
            guard flags & UInt32(NFT_SET_ANONYMOUS.rawValue) == 0 else { return }
            headers.append(
                (
                    String(cString: nftnl_set_get_str(s, UInt16(NFTNL_SET_NAME.rawValue))),
                    Int(nftnl_set_get_u32(s, UInt16(NFTNL_SET_KEY_LEN.rawValue))),
                    nftnl_set_get_u32(s, UInt16(NFTNL_SET_KEY_TYPE.rawValue)),
                    flags & UInt32(NFT_SET_INTERVAL.rawValue) != 0
                ))
        }
        return try headers.map { header in
            var elements: [(key: [UInt8], end: Bool)] = []
            let hostOrder =
                header.keyType == NftablesObjects.keyTypeNumber(.uid)
                || header.keyType == NftablesObjects.keyTypeNumber(.gid)
            try Netlink.dump(
                NETLINK_NETFILTER, what: "the elements of set \(header.name)",
                build: { raw in
                    let nlh = nftnl_nlmsg_build_hdr(
                        raw.assumingMemoryBound(to: CChar.self), UInt16(NFT_MSG_GETSETELEM.rawValue),
                        UInt16(table.family.number), 0, 0)!
                    let s = nftnl_set_alloc()!
                    nftnl_set_set_str(s, UInt16(NFTNL_SET_TABLE.rawValue), table.name)
                    nftnl_set_set_str(s, UInt16(NFTNL_SET_NAME.rawValue), header.name)
                    nftnl_set_elems_nlmsg_build_payload(nlh, s)
                    nftnl_set_free(s)
                    return nlh
                }
            ) { nlh in
                let s = nftnl_set_alloc()!
                defer { nftnl_set_free(s) }
                guard nftnl_set_elems_nlmsg_parse(nlh, s) >= 0, let it = nftnl_set_elems_iter_create(s) else { return }
                defer { nftnl_set_elems_iter_destroy(it) }
                var e = nftnl_set_elems_iter_cur(it)
                while let element = e {
                    var len: UInt32 = 0
                    if let key = nftnl_set_elem_get(element, UInt16(NFTNL_SET_ELEM_KEY), &len) {
                        let bytes = Array(UnsafeRawBufferPointer(start: key, count: Int(len)))
                        let flagged = nftnl_set_elem_is_set(element, UInt16(NFTNL_SET_ELEM_FLAGS))
                        let flags = flagged ? nftnl_set_elem_get_u32(element, UInt16(NFTNL_SET_ELEM_FLAGS)) : 0
                        elements.append((bytes, flags & UInt32(NFT_SET_ELEM_INTERVAL_END.rawValue) != 0))
                    }
                    e = nftnl_set_elems_iter_next(it)
                }
            }
            return LiveSet(
                family: table.family, table: table.name, name: header.name, keyLength: header.keyLength,
                isInterval: header.interval,
                intervals: NftablesObjects.intervals(
                    fromElements: elements, interval: header.interval,
                    hostOrder: hostOrder))
        }
    }

    private func dump(
        _ type: nf_tables_msg_types, what: String, family: NetfilterFamily? = nil,
        _ each: (UnsafePointer<nlmsghdr>) -> Void
    ) throws {
        try Netlink.dump(
            NETLINK_NETFILTER, what: what,
            build: { raw in
                nftnl_nlmsg_build_hdr(
                    raw.assumingMemoryBound(to: CChar.self), UInt16(type.rawValue),
                    UInt16(family?.number ?? UInt32(NFPROTO_UNSPEC)), 0, 0)!
            }, each)
    }
}
