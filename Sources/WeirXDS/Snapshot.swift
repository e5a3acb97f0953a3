import EnvoyAPI
import Foundation
import Synchronization
import SwiftProtobuf
import WeirMesh

/// One resource in a snapshot: its serialized message and a version that is a hash of those bytes, so the same
/// config has the same version in every weir process and across restarts.
public struct VersionedResource: Sendable, Hashable, Codable {
    public var name: String
    public var version: String
    public var bytes: [UInt8]
    /// Sent only to a client that names it (proxyless gRPC `api_listener`s), never to a wildcard subscriber.
    public var namedOnly: Bool

    public init(name: String, bytes: [UInt8], namedOnly: Bool = false) {
        self.name = name
        self.bytes = bytes
        self.namedOnly = namedOnly
        self.version = ContentHash.hex(bytes)
    }
}

/// The complete config of one node: every resource by type and name, and an overall version.
public struct Snapshot: Sendable, Hashable {
    public let resources: [ResourceType: [String: VersionedResource]]
    /// A hash over every type's version (see `typeVersions`).
    public let version: String
    /// Per type, a hash over that type's names and versions: a stream whose subscription did not change has nothing to
    /// send for a type whose hash did not change, without looking at the resources.
    public let typeVersions: [ResourceType: String]
    /// What state-of-the-world streams selected from this snapshot, shared by every stream of the node that selects
    /// the same (not part of the snapshot's value).
    let selections = SelectionMemo()

    public init(resources: [ResourceType: [String: VersionedResource]]) {
        self.init(resources: resources, typeVersions: [:])
    }

    /// With the per-type versions already known for some types (those of a snapshot whose resources of that type
    /// are the same): only the others are hashed again.
    init(resources: [ResourceType: [String: VersionedResource]], typeVersions known: [ResourceType: String]) {
        self.resources = resources
        var h = ContentHash()
        var perType: [ResourceType: String] = [:]
        for type in ResourceType.pushOrder {
            let v = known[type] ?? Self.typeVersion(resources[type] ?? [:])
            h.add(type.rawValue)
            h.add(v)
            perType[type] = v
        }
        version = h.hex
        typeVersions = perType
    }

    /// A hash over one type's names and versions, in name order.
    static func typeVersion(_ byName: [String: VersionedResource]) -> String {
        var t = ContentHash()
        for (name, r) in byName.sorted(by: { $0.key < $1.key }) {
            t.add(name)
            t.add(r.version)
        }
        return t.hex
    }

    public init(_ resources: EnvoyResources) throws {
        var out: [ResourceType: [String: VersionedResource]] = [:]
        for (type, byName) in try resources.encoded() {
            out[type] = byName.reduce(into: [:]) {
                $0[$1.key] = VersionedResource(name: $1.key, bytes: $1.value.bytes, namedOnly: $1.value.namedOnly)
            }
        }
        self.init(resources: out)
    }

    public static let empty = Snapshot(resources: [:])

    public func count(_ type: ResourceType) -> Int { resources[type]?.count ?? 0 }

    /// What a snapshot must satisfy before it is served: every route configuration a listener names over RDS and every
    /// endpoint set an EDS cluster names exists, and every resource decodes as its type.
    public func consistencyProblems() -> [String] {
        var problems: [String] = []
        var eds: [(cluster: String, names: [String])] = []
        var rds: [(listener: String, names: [String])] = []
        for (name, r) in resources[.cluster] ?? [:] {
            guard let c = try? Envoy_Config_Cluster_V3_Cluster(serializedBytes: r.bytes) else {
                problems.append("cluster \(name) does not decode")
                continue
            }
            eds.append((name, Self.endpointName(of: c).map { [$0] } ?? []))
        }
        for (name, r) in resources[.listener] ?? [:] {
            guard let l = try? Envoy_Config_Listener_V3_Listener(serializedBytes: r.bytes) else {
                problems.append("listener \(name) does not decode")
                continue
            }
            rds.append((name, Self.routeNames(of: l)))
        }
        return (problems + missingReferences(eds: eds, rds: rds)).sorted()
    }

    /// The references (EDS names of clusters, RDS names of listeners) that name nothing in this snapshot.
    func missingReferences(eds: [(cluster: String, names: [String])], rds: [(listener: String, names: [String])])
        -> [String]
    {
        let routes = resources[.route] ?? [:]
        let endpoints = resources[.endpoint] ?? [:]
        return eds.flatMap { c in
            c.names.filter { endpoints[$0] == nil }.map {
                "cluster \(c.cluster) uses EDS resource \($0), which the snapshot lacks"
            }
        }
            + rds.flatMap { l in
                l.names.filter { routes[$0] == nil }.map {
                    "listener \(l.listener) uses route configuration \($0), which the snapshot lacks"
                }
            }
    }

    /// The RDS names a listener refers to (HTTP connection managers in its filter chains or its `api_listener`).
    public static func routeNames(of l: Envoy_Config_Listener_V3_Listener) -> [String] {
        typealias HCM = Envoy_Extensions_Filters_Network_HttpConnectionManager_V3_HttpConnectionManager
        var anys: [Google_Protobuf_Any] = []
        for chain in l.filterChains + (l.hasDefaultFilterChain ? [l.defaultFilterChain] : []) {
            for f in chain.filters where f.typedConfig.typeURL.hasSuffix("/" + HCM.protoMessageName) {
                anys.append(f.typedConfig)
            }
        }
        if l.hasApiListener, l.apiListener.apiListener.typeURL.hasSuffix("/" + HCM.protoMessageName) {
            anys.append(l.apiListener.apiListener)
        }
        return anys.compactMap { a in
            guard let hcm = try? HCM(serializedBytes: a.value), case .rds(let rds)? = hcm.routeSpecifier else {
                return nil
            }
            return rds.routeConfigName
        }
    }

    /// The EDS names a cluster refers to.
    public static func endpointName(of c: Envoy_Config_Cluster_V3_Cluster) -> String? {
        guard c.type == .eds else { return nil }
        return c.edsClusterConfig.serviceName.isEmpty ? c.name : c.edsClusterConfig.serviceName
    }
}

/// The resources of one type a subscription selects, sorted by name, and the version of that list: computed once per
/// snapshot and subscription, and shared (the streams of one node, ten Envoys or a thousand gRPC clients, mostly
/// subscribe alike).
struct Selection: Sendable {
    let resources: [VersionedResource]
    let version: String

    init(_ type: ResourceType, _ resources: [VersionedResource]) {
        self.resources = resources
        var h = ContentHash()
        h.add(type.rawValue)
        for r in resources {
            h.add(r.name)
            h.add(r.version)
        }
        version = h.hex
    }
}

/// A snapshot's selections by subscription. Bounded: past `limit` distinct subscriptions (a client inventing name
/// sets), selections are computed and not kept.
final class SelectionMemo: Sendable, Hashable {
    struct Key: Hashable {
        let type: ResourceType
        let wildcard: Bool
        let names: Set<String>
    }
    static let limit = 256
    private let memo = Mutex<[Key: Selection]>([:])

    func selection(_ key: Key, compute: () -> Selection) -> Selection {
        if let s = memo.withLock({ $0[key] }) { return s }
        let s = compute()
        memo.withLock { if $0.count < Self.limit { $0[key] = s } }
        return s
    }

    /// How many selections are kept (for tests).
    var count: Int { memo.withLock { $0.count } }

    // Not part of the snapshot's value: any two memos are alike.
    static func == (a: SelectionMemo, b: SelectionMemo) -> Bool { true }
    func hash(into hasher: inout Hasher) {}
}

/// FNV-1a over 128 bits (two 64-bit lanes with different offsets): stable, fast, and not a security boundary.
struct ContentHash {
    var a: UInt64 = 0xcbf2_9ce4_8422_2325
    var b: UInt64 = 0x6c62_272e_07bb_0142

    mutating func add<S: Sequence>(bytes: S) where S.Element == UInt8 {
        for x in bytes { add(byte: x) }
    }
    mutating func add(_ s: String) {
        // Over the contiguous UTF-8 (native strings are): iterating a UTF8View byte by byte is several times slower.
        if s.utf8.withContiguousStorageIfAvailable({ add(bytes: $0) }) == nil { add(bytes: s.utf8) }
        add(byte: 0)
    }
    mutating func add(byte x: UInt8) {
        a = (a ^ UInt64(x)) &* 0x0000_0100_0000_01b3
        b = (b ^ UInt64(x)) &* 0x0000_0100_0000_01b3 &+ 0x9e37
    }

    var hex: String {
        func lane(_ x: UInt64) -> String {
            let s = String(x, radix: 16)
            return String(repeating: "0", count: 16 - s.count) + s
        }
        return lane(a) + lane(b)
    }

    static func hex(_ bytes: [UInt8]) -> String {
        var h = ContentHash()
        h.add(bytes: bytes)
        return h.hex
    }
}
