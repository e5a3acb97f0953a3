import EnvoyAPI
import Foundation
import Synchronization
import Testing
import WeirMesh
@testable import WeirXDS

typealias Request = Envoy_Service_Discovery_V3_DiscoveryRequest
typealias DeltaRequest = Envoy_Service_Discovery_V3_DeltaDiscoveryRequest

/// A snapshot from raw names: the bytes are the name plus a tag, so versions differ when the tag does.
func snap(_ entries: [ResourceType: [String: String]]) -> Snapshot {
    Snapshot(
        resources: entries.mapValues { byName in
            byName.reduce(into: [:]) {
                $0[$1.key] = VersionedResource(name: $1.key, bytes: Array("\($1.key)=\($1.value)".utf8))
            }
        })
}

func request(
    _ type: ResourceType, names: [String] = [], nonce: String = "", version: String = "", error: String? = nil,
    node: String = "n1"
) -> Request {
    var r = Request()
    r.typeURL = type.rawValue
    r.resourceNames = names
    r.responseNonce = nonce
    r.versionInfo = version
    r.node.id = node
    if let error {
        r.errorDetail.code = 3
        r.errorDetail.message = error
    }
    return r
}

func delta(
    _ type: ResourceType, subscribe: [String] = [], unsubscribe: [String] = [], nonce: String = "",
    error: String? = nil,
    initial: [String: String] = [:]
) -> DeltaRequest {
    var r = DeltaRequest()
    r.typeURL = type.rawValue
    r.resourceNamesSubscribe = subscribe
    r.resourceNamesUnsubscribe = unsubscribe
    r.responseNonce = nonce
    r.initialResourceVersions = initial
    r.node.id = "n1"
    if let error {
        r.errorDetail.code = 3
        r.errorDetail.message = error
    }
    return r
}

@Suite("state-of-the-world protocol")
struct SotWProtocolTests {
    let s1 = snap([.cluster: ["a": "1", "b": "1"], .endpoint: ["a": "1"], .listener: ["l": "1"], .route: ["r": "1"]])

    @Test(
        "the node comes from the first request; a wildcard (legacy empty) CDS request gets every cluster; the ACK is recorded"
    )
    func firstRequestAndAck() throws {
        var s = SotWStream()
        let out = s.receive(request(.cluster), snapshot: s1)
        #expect(s.nodeID == "n1")
        let r = try #require(out.first)
        #expect(r.resourceNames == ["a", "b"])
        _ = s.receive(request(.cluster, nonce: r.nonce, version: r.version), snapshot: s1)
        #expect(s.status(snapshot: s1)[.cluster]?.lastAckedVersion == r.version)
        #expect(s.status(snapshot: s1)[.cluster]?.wildcard == true)
    }

    @Test("a response's nonce is its content's (the same content, the same nonce) and short enough to be held inline")
    func nonceFromContent() throws {
        var a = SotWStream()
        var b = SotWStream()
        let r = try #require(a.receive(request(.cluster), snapshot: s1).first)
        #expect(try #require(b.receive(request(.cluster), snapshot: s1).first).nonce == r.nonce)
        #expect(r.version.hasPrefix(r.nonce) && r.nonce.utf8.count == 15, "\(r.nonce)")
        var d = DeltaStream()
        let dr = try #require(d.receive(delta(.cluster, subscribe: ["a"]), snapshot: s1).first)
        #expect(dr.nonce.utf8.count == 15, "\(dr.nonce)")
    }

    @Test("an ACK gets no response, and an identical config is never resent")
    func noResend() throws {
        var s = SotWStream()
        let r = try #require(s.receive(request(.cluster), snapshot: s1).first)
        #expect(s.receive(request(.cluster, nonce: r.nonce, version: r.version), snapshot: s1).isEmpty)
        #expect(s.update(s1).isEmpty)
        #expect(
            s.update(snap([.cluster: ["a": "1", "b": "1"], .endpoint: ["a": "1"]])).isEmpty,
            "same clusters, same version")
    }

    @Test("a NACK keeps its error text, and the NACKed version is not pushed again until the config changes")
    func nack() throws {
        var s = SotWStream()
        let r = try #require(s.receive(request(.listener), snapshot: s1).first)
        #expect(s.receive(request(.listener, nonce: r.nonce, error: "bad listener"), snapshot: s1).isEmpty)
        let st = try #require(s.status(snapshot: s1)[.listener])
        #expect(st.lastNackMessage == "bad listener" && st.lastNackVersion == r.version && st.lastAckedVersion == nil)
        #expect(s.update(s1).isEmpty, "the rejected version is not re-pushed")
        let s2 = snap([.listener: ["l": "2"], .route: ["r": "1"]])
        #expect(s.update(s2).first?.resourceNames == ["l"], "a changed config is pushed")
    }

    @Test("a request with a stale nonce is ignored")
    func staleNonce() throws {
        var s = SotWStream()
        let r1 = try #require(s.receive(request(.cluster), snapshot: s1).first)
        let r2 = try #require(s.update(snap([.cluster: ["a": "2"], .endpoint: ["a": "2"]])).first)
        #expect(r1.nonce != r2.nonce)
        // The client's answer to the first response arrives after the second was sent: ignored, even if it NACKs.
        #expect(s.receive(request(.cluster, nonce: r1.nonce, error: "old"), snapshot: nil).isEmpty)
        #expect(s.status(snapshot: nil)[.cluster]?.lastNackMessage == nil)
    }

    @Test("names asked for before they exist are remembered and sent when they appear; RDS carries only what is asked")
    func pendingNames() throws {
        var s = SotWStream()
        let empty = snap([.route: ["other": "1"]])
        let first = s.receive(request(.route, names: ["r"]), snapshot: empty)
        #expect(first.first?.resourceNames == [], "the initial request is answered, with nothing")
        #expect(s.status(snapshot: empty)[.route]?.pendingNames == ["r"])
        let later = s.update(snap([.route: ["other": "1", "r": "1"]]))
        #expect(later.first?.resourceNames == ["r"])
    }

    @Test("a re-subscribed name is sent again")
    func resubscribe() throws {
        var s = SotWStream()
        let r1 = try #require(s.receive(request(.route, names: ["r"]), snapshot: s1).first)
        #expect(
            s.receive(request(.route, names: ["r"], nonce: r1.nonce, version: r1.version), snapshot: s1).isEmpty,
            "an ACK")
        let dropped = try #require(
            s.receive(request(.route, names: [], nonce: r1.nonce, version: r1.version), snapshot: s1).first)
        #expect(dropped.resourceNames == [])
        let again = s.receive(
            request(.route, names: ["r"], nonce: dropped.nonce, version: dropped.version), snapshot: s1)
        #expect(again.first?.resourceNames == ["r"])
    }

    @Test("'*' subscribes to everything, explicit names add to it; named-only resources go only to those who name them")
    func wildcardAndNamedOnly() throws {
        var s = SotWStream()
        var snapshot = Snapshot(resources: [
            .listener: [
                "egress": VersionedResource(name: "egress", bytes: [1]),
                "svc:80": VersionedResource(name: "svc:80", bytes: [2], namedOnly: true),
            ]
        ])
        #expect(s.receive(request(.listener, names: ["*"]), snapshot: snapshot).first?.resourceNames == ["egress"])
        var grpc = SotWStream()
        #expect(
            grpc.receive(request(.listener, names: ["svc:80"]), snapshot: snapshot).first?.resourceNames == ["svc:80"])
        snapshot = Snapshot(resources: snapshot.resources)
        #expect(
            s.receive(
                request(.listener, names: ["*", "svc:80"], nonce: s.status(snapshot: nil)[.listener]!.lastSentNonce!),
                snapshot: snapshot
            )
            .first?.resourceNames == ["egress", "svc:80"])
    }

    @Test("updates go make-before-break: CDS, EDS, LDS, RDS with stale clusters kept, then CDS without them")
    func makeBeforeBreak() throws {
        var s = SotWStream()
        for t in [ResourceType.route, .listener, .endpoint, .cluster] {
            let names: [String] = t == .route ? ["r"] : t == .endpoint ? ["a"] : []
            let r = try #require(s.receive(request(t, names: names), snapshot: s1).first)
            _ = s.receive(request(t, names: names, nonce: r.nonce, version: r.version), snapshot: s1)
        }
        let s2 = snap([
            .cluster: ["a": "1", "c": "1"], .endpoint: ["a": "2"], .listener: ["l": "2"], .route: ["r": "2"],
        ])
        let out = s.update(s2)
        #expect(out.map(\.type) == [.cluster, .endpoint, .listener, .route, .cluster])
        #expect(out.first?.resourceNames == ["a", "b", "c"], "the stale cluster b stays until routes moved")
        #expect(out.last?.resourceNames == ["a", "c"], "then b goes: full state means missing is deleted")
    }
}

@Suite("delta protocol")
struct DeltaProtocolTests {
    let s1 = snap([.cluster: ["a": "1", "b": "1"], .endpoint: ["a": "1"], .listener: ["l": "1"], .route: ["r": "1"]])

    @Test("a wildcard subscription gets everything, then only what changed, and removals")
    func incremental() throws {
        var d = DeltaStream()
        let r1 = try #require(d.receive(delta(.cluster), snapshot: s1).first)
        #expect(r1.resourceNames == ["a", "b"] && r1.removed.isEmpty)
        #expect(d.receive(delta(.cluster, nonce: r1.nonce), snapshot: s1).isEmpty)
        let out = d.update(snap([.cluster: ["a": "2"], .endpoint: ["a": "1"]]))
        #expect(out.map(\.resourceNames) == [["a"], []])
        #expect(out.map(\.removed) == [[], ["b"]], "the removal comes after the update (make before break)")
    }

    @Test("initial_resource_versions on reconnect: what the client already holds is not sent again")
    func reconnect() throws {
        var d = DeltaStream()
        let versions = Dictionary(uniqueKeysWithValues: s1.resources[.cluster]!.map { ($0.key, $0.value.version) })
        #expect(d.receive(delta(.cluster, initial: versions), snapshot: s1).isEmpty)
        var stale = versions
        stale["a"] = "old"
        stale["gone"] = "x"
        var d2 = DeltaStream()
        let r = try #require(d2.receive(delta(.cluster, initial: stale), snapshot: s1).first)
        #expect(r.resourceNames == ["a"] && r.removed == ["gone"])
    }

    @Test("a name that does not exist is reported in removed_resources once, and sent when it appears")
    func absentNames() throws {
        var d = DeltaStream()
        let r = try #require(d.receive(delta(.route, subscribe: ["nope"]), snapshot: s1).first)
        #expect(r.removed == ["nope"] && r.resourceNames.isEmpty)
        #expect(d.receive(delta(.route, nonce: r.nonce), snapshot: s1).isEmpty, "reported once")
        let later = d.update(snap([.route: ["nope": "1"]]))
        #expect(later.first?.resourceNames == ["nope"])
    }

    @Test("a NACKed resource version is not resent; unsubscribe and re-subscribe sends it again")
    func nackAndResubscribe() throws {
        var d = DeltaStream()
        let r = try #require(d.receive(delta(.route, subscribe: ["r"]), snapshot: s1).first)
        #expect(d.receive(delta(.route, nonce: r.nonce, error: "no"), snapshot: s1).isEmpty)
        #expect(d.status(snapshot: s1)[.route]?.lastNackMessage == "no")
        #expect(d.update(s1).isEmpty)
        _ = d.receive(delta(.route, unsubscribe: ["r"]), snapshot: s1)
        #expect(d.receive(delta(.route, subscribe: ["r"]), snapshot: s1).first?.resourceNames == ["r"])
    }
}

@Suite("responses and snapshots")
struct SnapshotTests {
    @Test("the same response is serialized once and shared by every stream")
    func sharedEncoding() throws {
        let s = snap([.cluster: ["shared-a": "1"]])
        var a = SotWStream()
        var b = SotWStream()
        let ra = try #require(a.receive(request(.cluster), snapshot: s).first)
        let rb = try #require(b.receive(request(.cluster, node: "n2"), snapshot: s).first)
        #expect(ra == rb, "two streams of the same config get the same response (and nonce)")
        let bytes = ResponseEncoder.shared.bytes(ra)
        let count = ResponseEncoder.shared.encodedCount
        #expect(ResponseEncoder.shared.bytes(rb) == bytes)
        #expect(ResponseEncoder.shared.encodedCount == count, "the second stream reused the first encoding")
        let decoded = try Envoy_Service_Discovery_V3_DiscoveryResponse(serializedBytes: bytes)
        #expect(
            decoded.nonce == ra.nonce && decoded.resources.count == 1
                && decoded.typeURL == ResourceType.cluster.rawValue)
    }

    @Test("versions are content hashes: the same config has the same version in any process")
    func stableVersions() throws {
        #expect(snap([.cluster: ["a": "1"]]).version == snap([.cluster: ["a": "1"]]).version)
        #expect(snap([.cluster: ["a": "1"]]).version != snap([.cluster: ["a": "2"]]).version)
        #expect(VersionedResource(name: "x", bytes: [1, 2, 3]).version == "\(ContentHash.hex([1, 2, 3]))")
    }

    @Test("an inconsistent snapshot (a listener naming a missing route configuration) is refused and the old one stays")
    func consistency() throws {
        let manifests = try ManifestReader.read([("m.yaml", meshFixture)])
        var resources = try MeshCompiler(manifests).compile(nodeID: "mesh/colors/virtualNode/front_apps")
        let cache = SnapshotCache(stateDirectory: nil)
        let good = try Snapshot(resources)
        #expect(try cache.set("n", good))
        resources.routes.removeAll()
        let bad = try Snapshot(resources)
        #expect(bad.consistencyProblems().contains { $0.contains("route configuration egress_9081") })
        #expect(throws: SnapshotCache.Failure.self) { try cache.set("n", bad) }
        #expect(cache.snapshot(for: "n")?.version == good.version)
    }

    @Test(
        "a published change reaches every node before the work its watchers defer runs; outside a publish it runs at once"
    )
    func publishThenWrite() throws {
        let cache = SnapshotCache(stateDirectory: nil)
        let seen = Mutex<[String]>([])
        for node in ["a", "b"] {
            _ = cache.watch(node) { [cache] s in
                cache.afterPublish {
                    // Deferred work sees the whole change in force: both nodes already carry their new snapshot.
                    let both = ["a", "b"].allSatisfy { cache.snapshot(for: $0)?.version == s.version }
                    seen.withLock { $0.append("\(node):\(both)") }
                }
            }
        }
        let next = snap([.cluster: ["c": "2"]])
        cache.publish(["a": next, "b": next])
        #expect(seen.withLock { $0 }.sorted() == ["a:true", "b:true"])
        let ranNow = Mutex(false)
        cache.afterPublish { ranNow.withLock { $0 = true } }
        #expect(ranNow.withLock { $0 })
    }

    @Test(
        "with the per-type decision shortcut, unchanged types still send nothing and a changed type or subscription is still answered"
    )
    func unchangedTypesCostNothing() throws {
        var s = SotWStream()
        let first = snap([.cluster: ["c": "1"], .route: ["r": "1"]])
        let c = try #require(s.receive(request(.cluster), snapshot: first).first)
        let r = try #require(s.receive(request(.route, names: ["r"]), snapshot: first).first)
        #expect(s.receive(request(.cluster, nonce: c.nonce, version: c.version), snapshot: first).isEmpty)
        #expect(s.receive(request(.route, names: ["r"], nonce: r.nonce, version: r.version), snapshot: first).isEmpty)
        let second = snap([.cluster: ["c": "1"], .route: ["r": "2"]])
        #expect(
            first.typeVersions[.cluster] == second.typeVersions[.cluster]
                && first.typeVersions[.route] != second.typeVersions[.route])
        #expect(s.update(second).map(\.type) == [.route])
        // The subscription changes while the resources do not: the stream is answered again.
        let third = snap([.cluster: ["c": "1"], .route: ["r": "2", "q": "1"]])
        _ = s.update(third)
        #expect(
            s.receive(request(.route, names: ["r", "q"], nonce: r.nonce), snapshot: third).isEmpty,
            "a stale nonce is ignored")
        let latest = try #require(s.status(snapshot: third)[.route]?.lastSentNonce)
        let again = s.receive(request(.route, names: ["r", "q"], nonce: latest), snapshot: third)
        #expect(again.first?.resourceNames.sorted() == ["q", "r"])
    }

    @Test(
        "streams that subscribe alike share one selection of a snapshot; distinct subscriptions are kept up to the bound, and still answered right past it"
    )
    func sharedSelections() throws {
        let names = (0..<300).map { "r\($0)" }
        let snapshot = snap([
            .cluster: ["a": "1", "b": "1"], .route: Dictionary(uniqueKeysWithValues: names.map { ($0, "1") }),
        ])
        var one = SotWStream()
        var two = SotWStream()
        let c1 = try #require(one.receive(request(.cluster), snapshot: snapshot).first)
        let c2 = try #require(two.receive(request(.cluster), snapshot: snapshot).first)
        #expect(c1 == c2 && c1.resourceNames == ["a", "b"])
        #expect(snapshot.selections.count == 1, "the second stream's wildcard CDS came from the first one's selection")
        // A client inventing subscriptions: each one answered with exactly what it named, the memo bounded.
        for (i, name) in names.enumerated() {
            var s = SotWStream()
            let r = try #require(s.receive(request(.route, names: [name]), snapshot: snapshot).first)
            #expect(r.resourceNames == [name], "subscription \(i)")
        }
        #expect(snapshot.selections.count == SelectionMemo.limit)
    }

    @Test("the last good snapshot is persisted and served by a new cache")
    func persistence() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("weir-cache-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: dir) }
        let manifests = try ManifestReader.read([("m.yaml", meshFixture)])
        let s = try Snapshot(try MeshCompiler(manifests).compile(nodeID: "mesh/colors/virtualNode/front_apps"))
        let cache = SnapshotCache(stateDirectory: dir)
        try cache.set("mesh/colors/virtualNode/front_apps", s)
        cache.flush()
        let restarted = SnapshotCache(stateDirectory: dir)
        #expect(restarted.snapshot(for: "mesh/colors/virtualNode/front_apps") == s)
    }

    /// What a test writer was asked to write, in order.
    final class WriteLog: Sendable {
        let lines = Mutex<[String]>([])
    }

    @Test(
        "changes made while a write is under way are written once, as the last one; flush waits for them, or gives up at its deadline"
    )
    func writerCoalesces() {
        let gate = DispatchSemaphore(value: 0)
        let started = DispatchSemaphore(value: 0)
        let log = WriteLog()
        let writer = SnapshotWriter { batch in
            if log.lines.withLock({ $0.isEmpty }) {
                started.signal()
                gate.wait()
            }  // the first write hangs until let go
            log.lines.withLock { $0 += batch.map { "\($0.node) \($0.snapshot.version)" } }
        }
        let v = (1...4).map { snap([.cluster: ["a": "\($0)"]]) }
        writer.submit("n1", v[0])
        #expect(started.wait(timeout: .now() + 5) == .success)
        for s in v.dropFirst() { writer.submit("n1", s) }
        writer.submit("n2", v[0])
        #expect(!writer.flush(until: Date(timeIntervalSinceNow: 0.1)), "the first write still hangs")
        gate.signal()
        #expect(writer.flush(until: Date(timeIntervalSinceNow: 5)))
        #expect(log.lines.withLock { $0 } == ["n1 \(v[0].version)", "n1 \(v[3].version)", "n2 \(v[0].version)"])
    }

    @Test("the nodes a publish hands over one by one are written as one batch (one append)")
    func writerGathersAPublish() {
        let batches = WriteLog()
        let writer = SnapshotWriter { batch in
            batches.lines.withLock { $0.append(batch.map(\.node).joined(separator: ",")) }
        }
        // The first node starts the writer thread; the rest come while it would already be writing.
        writer.submit("n1", snap([.cluster: ["a": "1"]]))
        usleep(5000)
        for i in 2...5 { writer.submit("n\(i)", snap([.cluster: ["a": "\(i)"]])) }
        #expect(writer.flush(until: Date(timeIntervalSinceNow: 5)))
        #expect(batches.lines.withLock { $0 } == ["n1,n2,n3,n4,n5"])
        writer.stop()
    }

    @Test("a rejected snapshot goes back to the previous one on disk; after changes in a row the last one is there")
    func persistenceAfterNack() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("weir-cache-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: dir) }
        let cache = SnapshotCache(stateDirectory: dir)
        let versions = try (1...5).map { i in
            var r = EnvoyResources()
            var c = Envoy_Config_Cluster_V3_Cluster()
            c.name = "a"
            c.connectTimeout = .init(seconds: Int64(i))
            r.clusters = [c]
            return try Snapshot(r)
        }
        for v in versions { try cache.set("n1", v) }
        cache.flush()
        #expect(SnapshotCache(stateDirectory: dir).snapshot(for: "n1") == versions[4])
        #expect(cache.snapshot(for: "n1") == versions[4])
        cache.rejected("n1")
        cache.flush()
        #expect(
            SnapshotCache(stateDirectory: dir).snapshot(for: "n1") == versions[3], "the one before the rejected one")
        #expect(cache.snapshot(for: "n1") == versions[4], "still served: Envoy keeps its last good config anyway")
        let files = try FileManager.default.contentsOfDirectory(atPath: dir.path)
        #expect(files == [SnapshotJournal.fileName], "one journal, no temporary file left: \(files)")
    }
}

let meshFixture = """
    apiVersion: appmesh.k8s.aws/v1beta2
    kind: Mesh
    metadata: {name: colors}
    ---
    apiVersion: appmesh.k8s.aws/v1beta2
    kind: VirtualNode
    metadata: {name: front, namespace: apps}
    spec:
      listeners: [{portMapping: {port: 8080, protocol: http}}]
      backends: [{virtualService: {virtualServiceRef: {name: color}}}]
    ---
    apiVersion: appmesh.k8s.aws/v1beta2
    kind: VirtualNode
    metadata: {name: blue, namespace: apps}
    spec:
      listeners: [{portMapping: {port: 9081, protocol: http}}]
      serviceDiscovery: {dns: {hostname: 198.18.0.2}}
    ---
    apiVersion: appmesh.k8s.aws/v1beta2
    kind: VirtualService
    metadata: {name: color, namespace: apps}
    spec:
      awsName: color.apps.svc.cluster.local
      provider: {virtualNode: {virtualNodeRef: {name: blue}}}
    """
