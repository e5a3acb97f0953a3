import EnvoyAPI
import Foundation
import Synchronization
import NIOCore
import SwiftProtobuf
import WeirMesh

/// One response an ADS stream must send: built (and serialized) once per distinct content, shared by every stream
/// that sends the same thing. The nonce is derived from the content, which is what makes sharing possible.
public struct OutgoingResponse: Sendable, Equatable {
    public enum Body: Sendable, Equatable {
        case sotw(version: String, resources: [VersionedResource])
        case delta(systemVersion: String, resources: [VersionedResource], removed: [String])
    }
    public var type: ResourceType
    public var nonce: String
    public var body: Body

    /// The nonce of a response with this content hash (hex): its first 15 characters, 60 bits. Swift keeps a string
    /// of at most 15 UTF-8 bytes inline, so the nonces a stream remembers cost no allocation (heaptrack: 20
    /// characters cost ~200 bytes per idle stream).
    static func nonce(_ hex: String) -> String { String(hex.prefix(15)) }

    public var resourceNames: [String] {
        switch body {
        case .sotw(_, let r), .delta(_, let r, _): return r.map(\.name)
        }
    }
    public var removed: [String] {
        if case .delta(_, _, let removed) = body { return removed }
        return []
    }
    public var version: String {
        switch body {
        case .sotw(let v, _): return v
        case .delta(let v, _, _): return v
        }
    }
}

/// What operators see of a stream's state for one type.
public struct TypeStatus: Sendable, Codable, Equatable {
    public var subscribedNames: [String]
    public var wildcard: Bool
    public var lastSentVersion: String?
    public var lastSentNonce: String?
    public var lastAckedVersion: String?
    public var lastNackVersion: String?
    public var lastNackMessage: String?
    /// Names asked for that the config does not have (yet).
    public var pendingNames: [String]
}

/// The state of one state-of-the-world ADS stream, as a pure state machine: requests and snapshots in,
/// responses out. Follows the xDS protocol: ACK/NACK by `error_detail`, stale nonces ignored, full state for LDS and
/// CDS, a NACKed version never re-pushed until the config changes, remembered names, make-before-break updates.
public struct SotWStream: Sendable {
    struct TypeState: Sendable {
        var requested = false
        var wildcard = false
        var explicitEver = false
        var names: Set<String> = []
        var lastSentVersion: String?
        var lastSentNonce: String?
        /// What the last response carried, sorted by name (shared with the snapshot's selection).
        var lastSent: [VersionedResource] = []
        var ackedVersion: String?
        var nackedVersion: String?
        var nackMessage: String?
        var mustAnswer = false
        /// What the last push decision was computed from: the type's resources (their hash) and the subscription.
        /// The same inputs give the same decision, so ACKs and unrelated config changes cost no selection.
        var decidedFrom: (typeVersion: String, wildcard: Bool, names: Set<String>)?

        func unchanged(in snapshot: Snapshot, _ type: ResourceType) -> Bool {
            guard !mustAnswer, let d = decidedFrom, let v = snapshot.typeVersions[type] else { return false }
            return d.typeVersion == v && d.wildcard == wildcard && d.names == names
        }

        mutating func decide(_ typeVersion: String) { decidedFrom = (typeVersion, wildcard, names) }
    }

    /// The node the stream's first request named. Only its id is kept: an Envoy's `Node` lists every extension it
    /// was built with (516 of them, 61 KB, in Envoy 1.40), and kept whole it would cost that much per sidecar.
    public private(set) var nodeID: String?
    var types = PerType<TypeState>()

    public init() {}

    /// A request arrived. Returns what to send now (possibly nothing).
    public mutating func receive(_ req: Envoy_Service_Discovery_V3_DiscoveryRequest, snapshot: Snapshot?)
        -> [OutgoingResponse]
    {
        if nodeID == nil, req.hasNode { nodeID = req.node.id }
        guard let type = ResourceType(rawValue: req.typeURL) else { return [] }
        var st = types[type] ?? TypeState()
        if !req.responseNonce.isEmpty {
            // A request whose nonce is not the latest we sent on this type is stale: the client has not yet seen our
            // newest response. Ignore it entirely; it will answer that response.
            guard req.responseNonce == st.lastSentNonce else { return [] }
            if req.hasErrorDetail {
                st.nackedVersion = st.lastSentVersion
                st.nackMessage = req.errorDetail.message
            } else {
                st.ackedVersion = req.versionInfo
            }
        } else {
            st.mustAnswer = true  // an initial request (or a reconnect) is always answered
        }
        let names = Set(req.resourceNames)
        let explicit = names.subtracting(["*"])
        if !explicit.isEmpty { st.explicitEver = true }
        // The legacy empty request means "everything" for LDS and CDS until the client names something.
        st.wildcard = names.contains("*") || (names.isEmpty && type.isFullState && !st.explicitEver)
        // New or re-subscribed names are sent again.
        if !explicit.subtracting(st.names).isEmpty { st.mustAnswer = true }
        st.names = explicit
        st.requested = true
        types[type] = st
        guard let snapshot else { return [] }
        if st.unchanged(in: snapshot, type) { return [] }  // an ACK of what is current
        return push(type, snapshot).map { [$0] } ?? []
    }

    /// The node's config changed: push every requested type, make-before-break (CDS, EDS, LDS, RDS with the old
    /// clusters and listeners kept, then CDS and LDS again without what is stale).
    public mutating func update(_ snapshot: Snapshot) -> [OutgoingResponse] {
        var out: [OutgoingResponse] = []
        var shrink: [ResourceType] = []
        for type in ResourceType.pushOrder where types[type]?.requested == true {
            if types[type]?.unchanged(in: snapshot, type) == true { continue }
            let selected = select(type, snapshot)
            if type.isFullState, let st = types[type] {
                let stale = st.lastSent.filter { !Self.selects(st, snapshot.resources[type]?[$0.name]) }
                if !stale.isEmpty {
                    let union = Selection(type, (selected.resources + stale).sorted { $0.name < $1.name })
                    if let r = push(type, union) { out.append(r) }
                    shrink.append(type)
                    continue
                }
            }
            if let r = push(type, selected) { out.append(r) }
        }
        for type in shrink {
            if let r = push(type, select(type, snapshot)) { out.append(r) }
        }
        for type in ResourceType.pushOrder where types[type]?.requested == true {
            if let v = snapshot.typeVersions[type] { types[type]!.decide(v) }
        }
        return out
    }

    /// Whether the subscription takes this resource (a wildcard never takes one sent only by name).
    static func selects(_ st: TypeState, _ r: VersionedResource?) -> Bool {
        guard let r else { return false }
        return (st.wildcard && !r.namedOnly) || st.names.contains(r.name)
    }

    func select(_ type: ResourceType, _ snapshot: Snapshot) -> Selection {
        guard let st = types[type] else { return Selection(type, []) }
        return snapshot.selections.selection(.init(type: type, wildcard: st.wildcard, names: st.names)) {
            let all = snapshot.resources[type] ?? [:]
            var chosen: [VersionedResource]
            if st.wildcard {
                chosen = all.values.filter { Self.selects(st, $0) }
            } else {
                // Named subscriptions are usually far smaller than the type: look the names up.
                chosen = st.names.compactMap { all[$0] }
            }
            chosen.sort { $0.name < $1.name }
            return Selection(type, chosen)
        }
    }

    mutating func push(_ type: ResourceType, _ snapshot: Snapshot) -> OutgoingResponse? {
        let r = push(type, select(type, snapshot))
        if let v = snapshot.typeVersions[type], types[type] != nil { types[type]!.decide(v) }
        return r
    }

    mutating func push(_ type: ResourceType, _ selected: Selection) -> OutgoingResponse? {
        guard types[type] != nil else { return nil }
        // In place: the type's state is not copied out and back.
        return Self.push(type, selected, &types[type]!)
    }

    static func push(_ type: ResourceType, _ selected: Selection, _ st: inout TypeState) -> OutgoingResponse? {
        let resources = selected.resources
        let version = selected.version
        // A NACKed version stays rejected until the config changes; an identical response is never resent,
        // unless the client is owed an answer (initial request, new names).
        if version == st.nackedVersion {
            st.mustAnswer = false
            return nil
        }
        if version == st.lastSentVersion && !st.mustAnswer { return nil }
        st.mustAnswer = false
        st.lastSentVersion = version
        let nonce = OutgoingResponse.nonce(version)
        st.lastSentNonce = nonce
        st.lastSent = resources
        return OutgoingResponse(type: type, nonce: nonce, body: .sotw(version: version, resources: resources))
    }

    public func status(snapshot: Snapshot?) -> [ResourceType: TypeStatus] {
        types.all.reduce(into: [:]) { out, entry in
            let (type, st) = entry
            let have = snapshot?.resources[type] ?? [:]
            out[type] = TypeStatus(
                subscribedNames: st.names.sorted(), wildcard: st.wildcard, lastSentVersion: st.lastSentVersion,
                lastSentNonce: st.lastSentNonce, lastAckedVersion: st.ackedVersion, lastNackVersion: st.nackedVersion,
                lastNackMessage: st.nackMessage, pendingNames: st.names.filter { have[$0] == nil }.sorted())
        }
    }
}

/// The state of one incremental (delta) ADS stream: per type, the versions the client holds, its subscriptions, and
/// what it rejected. Sends only what changed; names asked for that do not exist are reported in `removed_resources`.
public struct DeltaStream: Sendable {
    struct TypeState: Sendable {
        var requested = false
        var wildcard = false
        var names: Set<String> = []
        /// What the client holds: name → version.
        var known: [String: String] = [:]
        /// Versions the client rejected: not sent again until they change.
        var nacked: [String: String] = [:]
        /// Names reported absent, so they are reported once.
        var reportedAbsent: Set<String> = []
        /// Responses awaiting an ACK: nonce → what they carried.
        var outstanding: [String: [String: String]] = [:]
        var lastSentNonce: String?
        var lastSentVersion: String?
        var ackedVersion: String?
        var nackVersion: String?
        var nackMessage: String?
    }

    /// The node the stream's first request named (only its id: see `SotWStream.nodeID`).
    public private(set) var nodeID: String?
    var types: [ResourceType: TypeState] = [:]

    public init() {}

    public mutating func receive(_ req: Envoy_Service_Discovery_V3_DeltaDiscoveryRequest, snapshot: Snapshot?)
        -> [OutgoingResponse]
    {
        if nodeID == nil, req.hasNode { nodeID = req.node.id }
        guard let type = ResourceType(rawValue: req.typeURL) else { return [] }
        var st = types[type] ?? TypeState()
        let first = !st.requested
        if first {
            // On reconnect the client says what it already has; it is not sent again.
            st.known = req.initialResourceVersions
        }
        if !req.responseNonce.isEmpty, let carried = st.outstanding.removeValue(forKey: req.responseNonce) {
            if req.hasErrorDetail {
                st.nackMessage = req.errorDetail.message
                st.nackVersion = st.lastSentVersion
                for (name, version) in carried {
                    st.nacked[name] = version
                    st.known.removeValue(forKey: name)
                }
            } else {
                st.ackedVersion = st.lastSentVersion
            }
        }
        let subscribe = Set(req.resourceNamesSubscribe)
        let unsubscribe = Set(req.resourceNamesUnsubscribe)
        if subscribe.contains("*") || (first && subscribe.isEmpty && type.isFullState) { st.wildcard = true }
        if unsubscribe.contains("*") { st.wildcard = false }
        for name in subscribe.subtracting(["*"]) where !st.names.contains(name) {
            st.names.insert(name)
            // A (re-)subscribed name is sent again, unless the client just told us it holds it.
            if !(first && req.initialResourceVersions[name] != nil) { st.known.removeValue(forKey: name) }
            st.reportedAbsent.remove(name)
        }
        for name in unsubscribe.subtracting(["*"]) {
            st.names.remove(name)
            st.known.removeValue(forKey: name)
            st.reportedAbsent.remove(name)
            st.nacked.removeValue(forKey: name)
        }
        st.requested = true
        types[type] = st
        guard let snapshot else { return [] }
        return push(type, snapshot, removals: true).map { [$0] } ?? []
    }

    /// The node's config changed: CDS, EDS, LDS, RDS updates first, then removal of stale clusters and listeners.
    public mutating func update(_ snapshot: Snapshot) -> [OutgoingResponse] {
        var out: [OutgoingResponse] = []
        for type in ResourceType.pushOrder where types[type]?.requested == true {
            if let r = push(type, snapshot, removals: !type.isFullState) { out.append(r) }
        }
        for type in ResourceType.pushOrder where types[type]?.requested == true && type.isFullState {
            if let r = push(type, snapshot, removals: true) { out.append(r) }
        }
        return out
    }

    mutating func push(_ type: ResourceType, _ snapshot: Snapshot, removals: Bool) -> OutgoingResponse? {
        guard var st = types[type] else { return nil }
        let have = snapshot.resources[type] ?? [:]
        var updates: [VersionedResource] = []
        for (name, r) in have.sorted(by: { $0.key < $1.key })
        where (st.wildcard && !r.namedOnly) || st.names.contains(name) {
            if st.known[name] == r.version || st.nacked[name] == r.version { continue }
            updates.append(r)
        }
        var removed: [String] = []
        if removals {
            for name in st.known.keys.sorted() where have[name] == nil { removed.append(name) }
            for name in st.names.sorted()
            where have[name] == nil && st.known[name] == nil && !st.reportedAbsent.contains(name) {
                removed.append(name)
            }
        }
        // A nacked resource that changed in the new config may be tried again.
        for (name, version) in st.nacked where have[name]?.version != version { st.nacked.removeValue(forKey: name) }
        guard !updates.isEmpty || !removed.isEmpty else {
            types[type] = st
            return nil
        }
        var h = ContentHash()
        h.add(type.rawValue)
        h.add(snapshot.version)
        for r in updates {
            h.add(r.name)
            h.add(r.version)
        }
        h.add("-")
        for n in removed { h.add(n) }
        let nonce = OutgoingResponse.nonce(h.hex)
        var carried: [String: String] = [:]
        for r in updates {
            st.known[r.name] = r.version
            carried[r.name] = r.version
        }
        for n in removed {
            st.known.removeValue(forKey: n)
            st.reportedAbsent.insert(n)
        }
        st.outstanding[nonce] = carried
        if st.outstanding.count > 64 { st.outstanding.removeAll() }  // a client that never answers does not grow this
        st.lastSentNonce = nonce
        st.lastSentVersion = snapshot.version
        types[type] = st
        return OutgoingResponse(
            type: type, nonce: nonce,
            body: .delta(systemVersion: snapshot.version, resources: updates, removed: removed))
    }

    public func status(snapshot: Snapshot?) -> [ResourceType: TypeStatus] {
        types.reduce(into: [:]) { out, entry in
            let (type, st) = entry
            let have = snapshot?.resources[type] ?? [:]
            out[type] = TypeStatus(
                subscribedNames: st.names.sorted(), wildcard: st.wildcard, lastSentVersion: st.lastSentVersion,
                lastSentNonce: st.lastSentNonce, lastAckedVersion: st.ackedVersion, lastNackVersion: st.nackVersion,
                lastNackMessage: st.nackMessage, pendingNames: st.names.filter { have[$0] == nil }.sorted())
        }
    }
}

/// Serialized responses by content key (the nonce), so a response sent to many streams is encoded once. What is kept
/// is the gRPC message as it goes on the wire (5-byte prefix, then the protobuf), in one buffer every stream's write
/// shares (NIO's `ByteBuffer` is copy-on-write; writing it copies nothing).
public final class ResponseEncoder: Sendable {
    let cache = SynchronizedDictionary<String, ByteBuffer>()
    public static let shared = ResponseEncoder()
    let identifier = "weir"

    /// The serialized `DiscoveryResponse` or `DeltaDiscoveryResponse`.
    public func bytes(_ r: OutgoingResponse) -> [UInt8] {
        Array(framed(r).readableBytesView.dropFirst(5))
    }

    /// The response as one gRPC length-prefixed message.
    func framed(_ r: OutgoingResponse) -> ByteBuffer {
        let key = "\(r.type.order)|\(r.nonce)"
        if let hit = cache.get(key) { return hit }
        let bytes: [UInt8]
        switch r.body {
        case .sotw(let version, let resources):
            var m = Envoy_Service_Discovery_V3_DiscoveryResponse()
            m.versionInfo = version
            m.typeURL = r.type.rawValue
            m.nonce = r.nonce
            m.controlPlane.identifier = identifier
            m.resources = resources.map { v in
                var a = Google_Protobuf_Any()
                a.typeURL = r.type.rawValue
                a.value = Data(v.bytes)
                return a
            }
            bytes = (try? m.serializedBytes()) ?? []
        case .delta(let version, let resources, let removed):
            var m = Envoy_Service_Discovery_V3_DeltaDiscoveryResponse()
            m.systemVersionInfo = version
            m.typeURL = r.type.rawValue
            m.nonce = r.nonce
            m.controlPlane.identifier = identifier
            m.removedResources = removed
            m.resources = resources.map { v in
                var res = Envoy_Service_Discovery_V3_Resource()
                res.name = v.name
                res.version = v.version
                res.resource.typeURL = r.type.rawValue
                res.resource.value = Data(v.bytes)
                return res
            }
            bytes = (try? m.serializedBytes()) ?? []
        }
        var framed = ByteBuffer()
        framed.reserveCapacity(5 + bytes.count)
        framed.writeInteger(UInt8(0))
        framed.writeInteger(UInt32(bytes.count))
        framed.writeBytes(bytes)
        cache.set(key, framed, limit: 4096)
        return framed
    }

    public var encodedCount: Int { cache.count }
}

/// A lock-protected dictionary, bounded by clearing when it grows past a limit.
final class SynchronizedDictionary<K: Hashable & Sendable, V: Sendable>: Sendable {
    private let storage = Mutex<[K: V]>([:])
    func get(_ k: K) -> V? { storage.withLock { $0[k] } }
    func set(_ k: K, _ v: V, limit: Int) {
        storage.withLock { d in
            if d.count >= limit { d.removeAll(keepingCapacity: true) }
            d[k] = v
        }
    }
    var count: Int { storage.withLock { $0.count } }
}

/// A value per resource type, in a slot of its own: a field of one type's state is read and written in place (a
/// dictionary's getter copies the whole value out, with a retain for each of its strings and sets, on every look).
struct PerType<Value: Sendable>: Sendable {
    private var slots = [Value?](repeating: nil, count: ResourceType.pushOrder.count)

    subscript(type: ResourceType) -> Value? {
        _read { yield slots[type.order] }
        _modify { yield &slots[type.order] }
    }

    /// The types that have a value, in push order.
    var all: [(ResourceType, Value)] { ResourceType.pushOrder.compactMap { t in slots[t.order].map { (t, $0) } } }
}
