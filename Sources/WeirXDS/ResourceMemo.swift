import EnvoyAPI
import SwiftProtobuf
import Synchronization
import WeirMesh

/// Serialized resources remembered across reloads.
///
/// A change to a mesh touches few of the resources each node gets. The memo keeps, per type, name and content version,
/// the typed message with its bytes and the names it refers to (EDS names of a cluster, RDS names of a listener), and
/// per node which version it got last time: a resource equal to the one the node had is neither serialized, hashed nor
/// decoded again for the consistency check. Resources with the same content share one entry (and one copy of the
/// bytes) across nodes. What the last reload did not use is dropped.
public final class ResourceMemo: Sendable {
    struct Key: Hashable {
        var type: ResourceType
        var name: String
    }
    struct Entry: @unchecked Sendable {  // the message is a value; `any Message` only hides its type
        let message: any SwiftProtobuf.Message
        let resource: VersionedResource
        let references: [String]
    }
    struct Generation {
        /// Per node, what it got: the hit path needs only this (one lookup, no global lock per resource).
        var nodes: [String: [Key: Entry]] = [:]
        /// Per type, name and version, what was serialized: new resources with the same content share one entry (and
        /// one copy of the bytes) across nodes.
        var shared: [Key: [String: Entry]] = [:]
    }
    struct Generations {
        var current = Generation()
        var previous = Generation()
    }
    let state = Mutex(Generations())

    public init() {}

    /// Starts a reload: what the previous one did not use is forgotten.
    public func beginGeneration() {
        state.withLock { g in
            g.previous = g.current
            // Sized as the last reload's: filling them again does not rehash as they grow.
            g.current = Generation(
                nodes: Dictionary(minimumCapacity: g.previous.nodes.count),
                shared: Dictionary(minimumCapacity: g.previous.shared.count))
        }
    }

    /// One node's resources: what it had is looked up once, and what it has now is stored once.
    struct NodeScope {
        let node: String
        let had: [Key: Entry]
        var now: [Key: Entry] = [:]
        var fresh: [(Key, Entry)] = []
    }

    func entry<M: SwiftProtobuf.Message>(
        _ scope: inout NodeScope, _ type: ResourceType, _ name: String, _ message: M, namedOnly: Bool,
        references: (M) -> [String]
    ) throws -> Entry {
        let key = Key(type: type, name: name)
        if let had = scope.had[key], had.resource.namedOnly == namedOnly, had.message.isEqualTo(message: message) {
            scope.now[key] = had
            return had
        }
        return fresh(
            &scope, key,
            Entry(
                message: message,
                resource: VersionedResource(name: name, bytes: try message.serializedBytes(), namedOnly: namedOnly),
                references: references(message)))
    }

    /// A new entry for the node: the same content from another node is one entry, and one copy of the bytes.
    func fresh(_ scope: inout NodeScope, _ key: Key, _ new: Entry) -> Entry {
        var e = new
        let version = e.resource.version
        state.withLock { g in
            // The same content from another node: keep one entry, and one copy of the bytes.
            if let shared = g.current.shared[key]?[version] ?? g.previous.shared[key]?[version],
                shared.resource.namedOnly == e.resource.namedOnly
            {
                e = shared
            }
        }
        scope.now[key] = e
        scope.fresh.append((key, e))
        return e
    }

    /// An entry for a resource whose bytes are already known (composed from encodings the compiler shares across
    /// nodes): equal bytes are the resource the node had, without comparing or serializing the message.
    func entry(
        _ scope: inout NodeScope, _ type: ResourceType, _ name: String, _ message: any SwiftProtobuf.Message,
        bytes: [UInt8], namedOnly: Bool
    ) -> Entry {
        let key = Key(type: type, name: name)
        if let had = scope.had[key], had.resource.namedOnly == namedOnly, had.resource.bytes == bytes {
            scope.now[key] = had
            return had
        }
        return fresh(
            &scope, key,
            Entry(
                message: message, resource: VersionedResource(name: name, bytes: bytes, namedOnly: namedOnly),
                references: []))
    }

    /// A route configuration's bytes from its virtual hosts' encodings (nil: the compiler gave none, or not for this
    /// configuration). SwiftProtobuf writes fields in number order: `name` (1), then each of `virtual_hosts` (2).
    static func composed(_ rc: Envoy_Config_Route_V3_RouteConfiguration, _ hosts: [[UInt8]]?) -> [UInt8]? {
        guard let hosts, hosts.count == rc.virtualHosts.count else { return nil }
        var out: [UInt8] = []
        out.reserveCapacity(hosts.reduce(rc.name.utf8.count + 6) { $0 + $1.count + 6 })
        func field(_ tag: UInt8, _ length: Int) {
            out.append(tag)
            var n = UInt64(length)
            while n >= 0x80 {
                out.append(UInt8(n & 0x7f) | 0x80)
                n >>= 7
            }
            out.append(UInt8(n))
        }
        if !rc.name.isEmpty {
            field(0x0a, rc.name.utf8.count)
            out += rc.name.utf8
        }
        for h in hosts {
            field(0x12, h.count)
            out += h
        }
        return out
    }

    func begin(_ node: String) -> NodeScope {
        let had = state.withLock { $0.current.nodes[node] ?? $0.previous.nodes[node] ?? [:] }
        return NodeScope(node: node, had: had, now: Dictionary(minimumCapacity: had.count))
    }

    func end(_ scope: NodeScope) {
        state.withLock { g in
            g.current.nodes[scope.node] = scope.now
            for (key, e) in scope.fresh { g.current.shared[key, default: [:]][e.resource.version] = e }
        }
    }

    /// A node's snapshot from its typed resources, with the consistency problems found from the remembered references.
    public func snapshot(node: String, _ r: EnvoyResources) throws -> (Snapshot, problems: [String]) {
        var scope = begin(node)
        defer { end(scope) }
        var out: [ResourceType: [String: VersionedResource]] = [:]
        var rds: [(listener: String, names: [String])] = []
        var eds: [(cluster: String, names: [String])] = []
        for l in r.listeners {
            let e = try entry(&scope, .listener, l.name, l, namedOnly: r.namedOnly.contains(l.name)) {
                Snapshot.routeNames(of: $0)
            }
            out[.listener, default: [:]][l.name] = e.resource
            rds.append((l.name, e.references))
        }
        for c in r.clusters {
            let e = try entry(&scope, .cluster, c.name, c, namedOnly: r.namedOnly.contains(c.name)) {
                Snapshot.endpointName(of: $0).map { [$0] } ?? []
            }
            out[.cluster, default: [:]][c.name] = e.resource
            eds.append((c.name, e.references))
        }
        for x in r.routes {
            let namedOnly = r.namedOnly.contains(x.name)
            if let bytes = Self.composed(x, r.routeEncodings[x.name]) {
                assert(
                    bytes == (try? x.serializedBytes()), "route configuration \(x.name) composed unlike its encoding")
                out[.route, default: [:]][x.name] =
                    entry(&scope, .route, x.name, x, bytes: bytes, namedOnly: namedOnly)
                    .resource
                continue
            }
            out[.route, default: [:]][x.name] = try entry(&scope, .route, x.name, x, namedOnly: namedOnly) { _ in [] }
                .resource
        }
        for x in r.endpoints {
            out[.endpoint, default: [:]][x.clusterName] = try entry(
                &scope, .endpoint, x.clusterName, x, namedOnly: r.namedOnly.contains(x.clusterName)
            ) { _ in [] }.resource
        }
        let snapshot = Snapshot(resources: out)
        return (snapshot, snapshot.missingReferences(eds: eds, rds: rds).sorted())
    }
}
