import Glibc
import WeirMesh
import WeirSystem

/// The last good snapshot of every node, in one append-only file: `snapshots.journal` in the state directory.
///
/// A change to a mesh gives many nodes a new snapshot in which few resources differ. Each batch of changed nodes is
/// one append (one `write`): per node, its resources by type and name, with the bytes of those whose version differs
/// from what the file already holds for the node and a mark for the rest. When the file has grown to more than twice
/// what its nodes' snapshots take written out in full, it is compacted: written anew, in full, beside itself, flushed
/// to disk and renamed over itself. Replaying the file gives each node's last snapshot.
///
/// Each record carries its length and a content hash: a record torn by a crash in the middle of an append, and
/// anything after it, is left out at load (those nodes keep the snapshot before), and cut off before the next append.
/// The format is weir's own and versioned by the header; the JSON files of earlier versions
/// (`*.snapshot.json`) are read at start for the nodes the journal does not hold, and removed once it holds them.
final class SnapshotJournal: @unchecked Sendable {  // loaded at start, then used by the writer thread alone
    static let fileName = "snapshots.journal"
    static let header: [UInt8] = Array("weir-snapshots\u{1}\n".utf8)
    // A record: its length (u32), content hash (two u64), node id, resource count (u32); per resource, its type
    // (ResourceType.order, u8), name, flags (u8: named-only, same as before) and, unless the same, its bytes.
    // Strings and bytes are a u32 length and the bytes; integers little-endian.
    /// A compacted file's size below which the journal is never compacted (appends stay cheap, the file small).
    static let compactFloor = 1 << 20

    let directory: String
    var path: String { directory + "/" + Self.fileName }
    /// Per node, what the file holds.
    private(set) var nodes: [String: Snapshot] = [:]
    /// Per node, the size of its record written in full.
    var fullSize: [String: Int] = [:]
    /// The file's size, up to the end of its last whole record (0: no file yet).
    var size = 0
    /// Whether the next write must compact: the file could not be read back whole, or an append failed halfway.
    var mustCompact = false
    /// Earlier versions' files, removed once a compaction holds their nodes.
    var legacyFiles: [String] = []

    init(directory: String) { self.directory = directory }

    // MARK: reading

    /// Reads the file, if any: each node's last snapshot, and the problems met (a torn tail, an unknown format).
    func load() -> (snapshots: [String: Snapshot], problems: [String]) {
        guard let fd = try? FileDescriptor.open(path, O_RDONLY), let bytes = try? fd.readAll(limit: Int(Int32.max))
        else { return ([:], []) }
        var problems: [String] = []
        guard bytes.starts(with: Self.header) else {
            mustCompact = true
            return ([:], ["\(path): not a weir snapshot journal of this version; it will be written anew"])
        }
        var r = ByteReader(data: bytes, at: Self.header.count)
        var snapshots: [[ResourceType: [String: VersionedResource]]] = []
        var index: [String: Int] = [:]
        // Bounded by the file: each pass consumes one record or stops.
        while r.remaining > 0 {
            let start = r.at
            guard let record = r.record() else {
                problems.append("\(path): a torn or damaged record at byte \(start) and what follows are left out")
                mustCompact = true
                break
            }
            var p = ByteReader(data: record, at: 0)
            guard let node = p.string(), let count = p.u32() else {
                problems.append("\(path): a malformed record at byte \(start) and what follows are left out")
                mustCompact = true
                break
            }
            let before = index[node].map { snapshots[$0] } ?? [:]
            var now: [ResourceType: [String: VersionedResource]] = [:]
            var ok = true
            for _ in 0..<count {
                guard let code = p.u8(), let type = ResourceType.allCases.first(where: { $0.order == Int(code) }),
                    let name = p.string(), let flags = p.u8()
                else {
                    ok = false
                    break
                }
                if flags & Self.sameFlag != 0 {
                    guard let had = before[type]?[name] else {
                        ok = false
                        break
                    }
                    now[type, default: [:]][name] = had
                } else {
                    guard let b = p.bytes() else {
                        ok = false
                        break
                    }
                    now[type, default: [:]][name] = VersionedResource(
                        name: name, bytes: b, namedOnly: flags & Self.namedOnlyFlag != 0)
                }
            }
            guard ok else {
                problems.append("\(path): a malformed record at byte \(start) and what follows are left out")
                mustCompact = true
                break
            }
            if let i = index[node] {
                snapshots[i] = now
            } else {
                index[node] = snapshots.count
                snapshots.append(now)
            }
            size = r.at
        }
        if size == 0 { size = Self.header.count }
        for (node, i) in index {
            let s = Snapshot(resources: snapshots[i])
            nodes[node] = s
            fullSize[node] = Self.fullSize(node, s)
        }
        return (nodes, problems)
    }

    /// What the cache took from what was loaded (a snapshot that fails its consistency check is not kept).
    func adopt(_ snapshots: [String: Snapshot]) {
        nodes = snapshots
        fullSize = snapshots.reduce(into: [:]) { $0[$1.key] = Self.fullSize($1.key, $1.value) }
    }

    // MARK: writing

    static let namedOnlyFlag: UInt8 = 1
    static let sameFlag: UInt8 = 2

    /// The size of a node's record written in full (what `record(node, s, against: nil)` gives), without writing it.
    static func fullSize(_ node: String, _ s: Snapshot) -> Int {
        var n = 20 + 4 + node.utf8.count + 4
        for byName in s.resources.values {
            for (name, r) in byName { n += 1 + 4 + name.utf8.count + 1 + 4 + r.bytes.count }
        }
        return n
    }

    /// One node's record: its resources, in full, or with a mark for those `against` holds at the same version.
    static func record(_ node: String, _ s: Snapshot, against had: Snapshot?) -> [UInt8] {
        var w = ByteWriter()
        w.string(node)
        w.u32(UInt32(s.resources.values.reduce(0) { $0 + $1.count }))
        for type in s.resources.keys.sorted() {
            for (name, r) in s.resources[type]!.sorted(by: { $0.key < $1.key }) {
                w.u8(UInt8(type.order))  // one byte: a type URL per resource would be most of a change's append
                w.string(name)
                let same = had?.resources[type]?[name].map { $0.version == r.version && $0.namedOnly == r.namedOnly }
                if same == true {
                    w.u8(sameFlag)
                } else {
                    w.u8(r.namedOnly ? namedOnlyFlag : 0)
                    w.bytes(r.bytes)
                }
            }
        }
        return w.framed()
    }

    /// Writes a batch of nodes' snapshots: one append, or a compaction when the file has grown too large. The bytes
    /// written, and whether the file was written anew.
    @discardableResult
    func write(_ batch: [(node: String, snapshot: Snapshot)]) throws(SystemCallError) -> (bytes: Int, compacted: Bool) {
        var appended: [UInt8] = []
        for (node, s) in batch where nodes[node]?.version != s.version {
            appended += Self.record(node, s, against: nodes[node])
        }
        for (node, s) in batch { fullSize[node] = Self.fullSize(node, s) }
        let live = Self.header.count + fullSize.values.reduce(0, +)
        if mustCompact || size == 0 || !legacyFiles.isEmpty || size + appended.count > max(2 * live, Self.compactFloor)
        {
            var all = nodes
            for (node, s) in batch { all[node] = s }
            return (try compact(all), true)
        }
        guard !appended.isEmpty else { return (0, false) }
        let fd = try FileDescriptor.open(path, O_WRONLY | O_APPEND)
        var failure: SystemCallError?
        appended.withUnsafeBytes { b in
            do throws(SystemCallError) { try fd.write(b) } catch { failure = error }
        }
        if let failure {
            // A part of the batch may be in the file: cut it off, or have the next write start the file anew.
            if case .failed = Posix.attempt({ truncate(path, off_t(size)) }) { mustCompact = true }
            throw failure
        }
        size += appended.count
        for (node, s) in batch { nodes[node] = s }
        return (appended.count, false)
    }

    /// Writes the file anew with every node in full (atomically: the old file or the new one, never a torn one).
    func compact(_ all: [String: Snapshot]) throws(SystemCallError) -> Int {
        var out = Self.header
        for (node, s) in all.sorted(by: { $0.key < $1.key }) { out += Self.record(node, s, against: nil) }
        // The state directory may be gone (or never made): made again, as the daemon's pods.json would be.
        try FileSystem.makeDirectories(directory)
        try FileSystem.writeAtomically(path, out)
        nodes = all
        size = out.count
        mustCompact = false
        for f in legacyFiles { try? FileSystem.unlinkIfPresent(f) }
        legacyFiles = []
        return out.count
    }
}

/// Little-endian fields, length-prefixed strings and bytes; a record is its length, a content hash, and its bytes.
struct ByteWriter {
    var out: [UInt8] = []
    mutating func u8(_ v: UInt8) { out.append(v) }
    mutating func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { out += $0 } }
    mutating func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { out += $0 } }
    mutating func bytes(_ b: [UInt8]) {
        u32(UInt32(b.count))
        out += b
    }
    mutating func string(_ s: String) {
        u32(UInt32(s.utf8.count))
        out += s.utf8
    }
    /// This writer's bytes as one record.
    func framed() -> [UInt8] {
        var h = ContentHash()
        h.add(bytes: out)
        var w = ByteWriter()
        w.u32(UInt32(out.count))
        w.u64(h.a)
        w.u64(h.b)
        return w.out + out
    }
}

struct ByteReader {
    let data: [UInt8]
    var at: Int
    var remaining: Int { data.count - at }
    mutating func u8() -> UInt8? {
        guard remaining >= 1 else { return nil }
        defer { at += 1 }
        return data[at]
    }
    mutating func u32() -> UInt32? {
        guard remaining >= 4 else { return nil }
        defer { at += 4 }
        return (0..<4).reduce(UInt32(0)) { $0 | UInt32(data[at + $1]) << (8 * $1) }
    }
    mutating func u64() -> UInt64? {
        guard remaining >= 8 else { return nil }
        defer { at += 8 }
        return (0..<8).reduce(UInt64(0)) { $0 | UInt64(data[at + $1]) << (8 * $1) }
    }
    mutating func bytes() -> [UInt8]? {
        guard let n = u32().map(Int.init), remaining >= n else { return nil }
        defer { at += n }
        return Array(data[at..<at + n])
    }
    mutating func string() -> String? { bytes().map { String(decoding: $0, as: UTF8.self) } }
    /// A whole record whose hash matches, or nil (torn, damaged).
    mutating func record() -> [UInt8]? {
        guard let n = u32().map(Int.init), let a = u64(), let b = u64(), remaining >= n else { return nil }
        let body = Array(data[at..<at + n])
        var h = ContentHash()
        h.add(bytes: body)
        guard h.a == a && h.b == b else { return nil }
        at += n
        return body
    }
}
