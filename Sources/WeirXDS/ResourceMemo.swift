import EnvoyAPI
import SwiftProtobuf
import Synchronization
import WeirMesh

/// Serialized resources remembered across reloads.
///
/// A change to a mesh touches few of the resources each node gets. The memo keeps, per node, type and name, the
/// typed message with its bytes and the names it refers to (EDS names of a cluster, RDS names of a listener), and the
/// node's last snapshot: a resource equal to the one the node had is neither serialized, hashed nor decoded again for
/// the consistency check, and a type whose resources are all the ones the node had keeps its part of the last snapshot
/// (its name-to-resource table and its version) without building or hashing it again. Resources with the same content
/// share one entry (and one copy of the bytes) across nodes. What the last reload did not use is dropped.
public final class ResourceMemo: Sendable {
    struct Key: Hashable {
        var type: ResourceType
        var name: String
    }
    /// A class: an entry is looked up, kept and handed on per resource, per node and reload, for one retain each.
    final class Entry: @unchecked Sendable {  // immutable; the message is a value, `any Message` only hides its type
        let message: any SwiftProtobuf.Message
        let resource: VersionedResource
        let references: [String]
        init(message: any SwiftProtobuf.Message, resource: VersionedResource, references: [String]) {
            self.message = message
            self.resource = resource
            self.references = references
        }
    }
    /// What a node got: its entries by type and name, and the snapshot made of them.
    struct NodeRecord {
        var entries: [ResourceType: [String: Entry]] = [:]
        var snapshot: Snapshot?
        /// Whether every RDS and EDS name the snapshot's listeners and clusters give is in it.
        var consistent = false
    }
    struct Generation {
        /// Per node, what it got: the hit path needs only this (one lookup, no global lock per resource).
        var nodes: [String: NodeRecord] = [:]
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
        let had: NodeRecord
        var now = NodeRecord()
        var fresh: [(Key, Entry)] = []
    }

    /// One type's resources of a node, as they are resolved in order.
    struct TypeScope {
        let type: ResourceType
        let had: [String: Entry]
        var entries: [(name: String, entry: Entry)] = []
        /// Whether every resource so far is one the node had.
        var allHad = true
        /// Whether every name so far is one the node had.
        var namesHad = true
        /// Whether the names are the ones the node had, each once.
        var sameNames: Bool { namesHad && entries.count == had.count && distinct }
        /// Whether no name is given twice (most lists come sorted: then without hashing).
        var distinct: Bool {
            var sorted = true
            for i in entries.indices.dropFirst() where !(entries[i - 1].name < entries[i].name) {
                sorted = false
                break
            }
            return sorted || Set(entries.lazy.map(\.name)).count == entries.count
        }
    }

    /// The entry for a resource: the node's own if equal (by bytes when the compiler gave them, else as messages),
    /// else a new one.
    func entry<M: SwiftProtobuf.Message>(
        _ scope: inout NodeScope, _ t: inout TypeScope, _ name: String, _ message: M, bytes: [UInt8]?,
        namedOnly: Bool, references: (M) -> [String]
    ) throws -> Entry {
        let had = t.had[name]
        if let had, had.resource.namedOnly == namedOnly,
            bytes.map({ $0 == had.resource.bytes }) ?? had.message.isEqualTo(message: message)
        {
            t.entries.append((name, had))
            return had
        }
        t.allHad = false
        if had == nil { t.namesHad = false }
        let e = fresh(
            &scope, Key(type: t.type, name: name),
            Entry(
                message: message,
                resource: VersionedResource(
                    name: name, bytes: try bytes ?? message.serializedBytes(), namedOnly: namedOnly),
                references: references(message)))
        t.entries.append((name, e))
        return e
    }

    /// A new entry for the node: the same content from another node is one entry, and one copy of the bytes.
    func fresh(_ scope: inout NodeScope, _ key: Key, _ new: Entry) -> Entry {
        var e = new
        let version = e.resource.version
        state.withLock { g in
            if let shared = g.current.shared[key]?[version] ?? g.previous.shared[key]?[version],
                shared.resource.namedOnly == e.resource.namedOnly
            {
                e = shared
            }
        }
        scope.fresh.append((key, e))
        return e
    }

    /// Ends a type: its part of the snapshot, with its version when it is the part the node had.
    func finish(_ scope: inout NodeScope, _ t: TypeScope) -> (byName: [String: VersionedResource], version: String?) {
        // Each of the node's entries once: a name given twice would leave one of them out of the new part.
        if t.allHad, let before = scope.had.snapshot, let version = before.typeVersions[t.type], t.sameNames {
            if !t.had.isEmpty { scope.now.entries[t.type] = t.had }
            return (before.resources[t.type] ?? [:], version)
        }
        var entries: [String: Entry] = Dictionary(minimumCapacity: t.entries.count)
        var byName: [String: VersionedResource] = Dictionary(minimumCapacity: t.entries.count)
        for (name, e) in t.entries {
            entries[name] = e
            byName[name] = e.resource
        }
        if !entries.isEmpty { scope.now.entries[t.type] = entries }
        return (byName, nil)
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
        let had = state.withLock { $0.current.nodes[node] ?? $0.previous.nodes[node] ?? NodeRecord() }
        return NodeScope(node: node, had: had)
    }

    func end(_ scope: NodeScope) {
        state.withLock { g in
            g.current.nodes[scope.node] = scope.now
            for (key, e) in scope.fresh { g.current.shared[key, default: [:]][e.resource.version] = e }
        }
    }

    /// A node's snapshot from its typed resources, with the consistency problems found from the remembered references.
    /// Encodings the compiler gave (`EnvoyResources.encodings`, `routeEncodings`) are the resources' bytes.
    public func snapshot(node: String, _ r: EnvoyResources) throws -> (Snapshot, problems: [String]) {
        var scope = begin(node)
        var out: [ResourceType: [String: VersionedResource]] = [:]
        var known: [ResourceType: String] = [:]
        func scopeOf(_ type: ResourceType) -> TypeScope { TypeScope(type: type, had: scope.had.entries[type] ?? [:]) }
        func close(_ t: TypeScope) {
            let (byName, version) = finish(&scope, t)
            if !byName.isEmpty { out[t.type] = byName }
            known[t.type] = version
        }
        var listeners = scopeOf(.listener)
        for l in r.listeners {
            _ = try entry(
                &scope, &listeners, l.name, l, bytes: r.encodings.listeners[l.name],
                namedOnly: r.namedOnly.contains(l.name)
            ) { Snapshot.routeNames(of: $0) }
        }
        close(listeners)
        var clusters = scopeOf(.cluster)
        for c in r.clusters {
            _ = try entry(
                &scope, &clusters, c.name, c, bytes: r.encodings.clusters[c.name],
                namedOnly: r.namedOnly.contains(c.name)
            ) { Snapshot.endpointName(of: $0).map { [$0] } ?? [] }
        }
        close(clusters)
        var routes = scopeOf(.route)
        for x in r.routes {
            let bytes = Self.composed(x, r.routeEncodings[x.name])
            _ = try entry(&scope, &routes, x.name, x, bytes: bytes, namedOnly: r.namedOnly.contains(x.name)) { _ in [] }
        }
        close(routes)
        var endpoints = scopeOf(.endpoint)
        for x in r.endpoints {
            _ = try entry(
                &scope, &endpoints, x.clusterName, x, bytes: r.encodings.endpoints[x.clusterName],
                namedOnly: r.namedOnly.contains(x.clusterName)
            ) { _ in [] }
        }
        close(endpoints)
        #if DEBUG
            checkEncodings(r)
        #endif
        let snapshot = Snapshot(resources: out, typeVersions: known)
        // The references hold as they did when the listeners, clusters and endpoints are the node's own and the route
        // configurations have the names they had.
        let problems: [String]
        if scope.had.consistent, known[.listener] != nil, known[.cluster] != nil, known[.endpoint] != nil,
            known[.route] != nil || routes.sameNames
        {
            problems = []
        } else {
            problems = snapshot.missingReferences(
                eds: clusters.entries.map { ($0.name, $0.entry.references) },
                rds: listeners.entries.map { ($0.name, $0.entry.references) }
            ).sorted()
        }
        scope.now.snapshot = snapshot
        scope.now.consistent = problems.isEmpty
        end(scope)
        return (snapshot, problems)
    }

    #if DEBUG
        /// Every encoding the compiler gave is its message serialized (checked in debug builds, so in the tests).
        func checkEncodings(_ r: EnvoyResources) {
            for l in r.listeners {
                if let b = r.encodings.listeners[l.name] {
                    assert(b == (try? l.serializedBytes()), "listener \(l.name)")
                }
            }
            for c in r.clusters {
                if let b = r.encodings.clusters[c.name] { assert(b == (try? c.serializedBytes()), "cluster \(c.name)") }
            }
            for x in r.routes {
                if let b = Self.composed(x, r.routeEncodings[x.name]) {
                    assert(
                        b == (try? x.serializedBytes()), "route configuration \(x.name) composed unlike its encoding")
                }
            }
            for x in r.endpoints {
                if let b = r.encodings.endpoints[x.clusterName] {
                    assert(b == (try? x.serializedBytes()), "endpoints \(x.clusterName)")
                }
            }
        }
    #endif
}
