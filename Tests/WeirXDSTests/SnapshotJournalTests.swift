import EnvoyAPI
import Foundation
import Testing
import WeirMesh

@testable import WeirXDS

@Suite("snapshot journal")
struct SnapshotJournalTests {
    func withDirectory(_ body: (String) throws -> Void) rethrows {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("weir-journal-\(UUID().uuidString)")
        try? FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        try body(dir.path)
    }

    func size(_ path: String) -> Int {
        ((try? FileManager.default.attributesOfItem(atPath: path))?[.size] as? Int) ?? -1
    }

    /// A snapshot of `count` clusters of 1 KiB each, cluster `changed` (if any) with other content.
    func big(_ count: Int, changed: Int? = nil, tag: String = "b", base: String = "a") -> Snapshot {
        Snapshot(resources: [
            .cluster: (0..<count).reduce(into: [:]) { out, i in
                let fill = String(repeating: i == changed ? tag : base, count: 1024)
                out["c\(i)"] = VersionedResource(name: "c\(i)", bytes: Array("c\(i)=\(fill)".utf8))
            }
        ])
    }

    @Test("a batch appends only what changed, and a new reader replays each node's last snapshot")
    func deltas() throws {
        try withDirectory { dir in
            let j = SnapshotJournal(directory: dir)
            _ = j.load()
            try j.write([("n1", big(20)), ("n2", big(20))])
            let first = size(j.path)
            #expect(first > 40 * 1024, "the first write holds both nodes in full")
            try j.write([("n1", big(20, changed: 3)), ("n2", big(20, changed: 7))])
            let grown = size(j.path) - first
            #expect(grown > 2 * 1024 && grown < 6 * 1024, "two changed clusters and names only: \(grown) bytes")
            try j.write([("n1", big(20, changed: 3))])
            #expect(size(j.path) - first == grown, "a node whose snapshot did not change writes nothing")
            let (loaded, problems) = SnapshotJournal(directory: dir).load()
            #expect(problems.isEmpty)
            #expect(loaded == ["n1": big(20, changed: 3), "n2": big(20, changed: 7)])
        }
    }

    @Test("a torn last record is left out (its nodes keep the snapshot before), and the next write starts anew")
    func tornTail() throws {
        try withDirectory { dir in
            let j = SnapshotJournal(directory: dir)
            _ = j.load()
            try j.write([("n1", big(4)), ("n2", big(4))])
            try j.write([("n1", big(4, changed: 1))])
            let whole = size(j.path)
            #expect(truncate(j.path, off_t(whole - 10)) == 0)
            let again = SnapshotJournal(directory: dir)
            let (loaded, problems) = again.load()
            #expect(problems.count == 1 && problems[0].contains("torn"), "\(problems)")
            #expect(loaded == ["n1": big(4), "n2": big(4)], "n1 as it was before the torn record")
            try again.write([("n2", big(4, changed: 2))])
            let (after, clean) = SnapshotJournal(directory: dir).load()
            #expect(clean.isEmpty, "compacted: nothing torn is left \(clean)")
            #expect(after == ["n1": big(4), "n2": big(4, changed: 2)])
        }
    }

    @Test("a file that is not a journal is reported and replaced by the next write")
    func foreignFile() throws {
        try withDirectory { dir in
            try Data("{\"not\": \"a journal\"}".utf8).write(
                to: URL(fileURLWithPath: dir + "/" + SnapshotJournal.fileName))
            let j = SnapshotJournal(directory: dir)
            let (loaded, problems) = j.load()
            #expect(loaded.isEmpty && problems.count == 1)
            try j.write([("n1", big(2))])
            let (after, clean) = SnapshotJournal(directory: dir).load()
            #expect(after == ["n1": big(2)] && clean.isEmpty)
        }
    }

    @Test("the file is compacted once it holds more than twice its nodes in full (above a floor)")
    func compaction() throws {
        try withDirectory { dir in
            let j = SnapshotJournal(directory: dir)
            _ = j.load()
            // 20 nodes of 40 KiB: 0.8 MiB in full, twice that above the 1 MiB floor; each round changes every node entirely.
            var sizes: [Int] = []
            for round in 0..<8 {
                try j.write((0..<20).map { ("n\($0)", big(20, base: "r\(round)")) })
                sizes.append(size(j.path))
            }
            let live = (0..<20).reduce(SnapshotJournal.header.count) {
                $0 + SnapshotJournal.fullSize("n\($1)", big(20, base: "r0"))
            }
            #expect(sizes.max()! <= 2 * live + SnapshotJournal.header.count, "bounded: \(sizes) for \(live) live")
            #expect(zip(sizes, sizes.dropFirst()).contains { $1 < $0 }, "compacted: \(sizes)")
            let (loaded, problems) = SnapshotJournal(directory: dir).load()
            #expect(problems.isEmpty && loaded.count == 20 && loaded["n0"] == big(20, base: "r7"))
        }
    }

    @Test("the JSON files of earlier versions are served at start, and removed once the journal holds them")
    func legacyFiles() throws {
        try withDirectory { dir in
            let manifests = try ManifestReader.read([("m.yaml", meshFixture)])
            let node = "mesh/colors/virtualNode/front_apps"
            let s = try Snapshot(try MeshCompiler(manifests).compile(nodeID: node))
            let legacy = SnapshotCache.Persisted(
                node: node,
                resources: s.resources.reduce(into: [:]) { out, e in
                    out[e.key.rawValue] = e.value.mapValues {
                        SnapshotCache.PersistedResource(bytes: Data($0.bytes), namedOnly: $0.namedOnly)
                    }
                })
            let legacyPath = dir + "/mesh_colors_virtualNode_front_apps-0123456789ab.snapshot.json"
            try JSONEncoder().encode(legacy).write(to: URL(fileURLWithPath: legacyPath))
            let cache = SnapshotCache(stateDirectory: URL(fileURLWithPath: dir))
            #expect(cache.snapshot(for: node) == s)
            var r = EnvoyResources()
            var c = Envoy_Config_Cluster_V3_Cluster()
            c.name = "a"
            r.clusters = [c]
            let other = try Snapshot(r)
            try cache.set("other", other)
            #expect(cache.flush())
            #expect(!FileManager.default.fileExists(atPath: legacyPath))
            let restarted = SnapshotCache(stateDirectory: URL(fileURLWithPath: dir))
            #expect(restarted.snapshot(for: node) == s)
            #expect(restarted.snapshot(for: "other") == other)
        }
    }
}
