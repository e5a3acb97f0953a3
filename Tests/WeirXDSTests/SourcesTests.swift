import EnvoyAPI
import Foundation
import SwiftProtobuf
import Testing
import WeirMesh
import WeirSystem
@testable import WeirXDS

@Suite("config sources")
struct SourcesTests {
    static let envoyFile = """
        resources:
        - "@type": type.googleapis.com/envoy.config.cluster.v3.Cluster
          name: legacy
          type: STATIC
          connect_timeout: 2s
          load_assignment:
            cluster_name: legacy
            endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 10.9.9.9, port_value: 80}}}}]}]
        - "@type": type.googleapis.com/envoy.config.listener.v3.Listener
          name: legacy_in
          address: {socket_address: {address: 0.0.0.0, port_value: 9000}}
          filter_chains:
          - filters:
            - name: envoy.filters.network.tcp_proxy
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
                stat_prefix: legacy
                cluster: legacy
        """

    @Test("Envoy-native files in Envoy's shape decode into typed resources")
    func envoyNative() throws {
        let r = try EnvoyResourceFiles.read([("legacy.yaml", Self.envoyFile)])
        #expect(r.clusters.map(\.name) == ["legacy"] && r.clusters[0].type == .static)
        #expect(r.listeners.first?.filterChains.first?.filters.first?.name == "envoy.filters.network.tcp_proxy")
        #expect(try Snapshot(r).consistencyProblems().isEmpty)
    }

    @Test(
        "a field outside weir's subset, or an unknown type, is an error naming the file, line and resource",
        arguments: [
            ("connect_timeout: 2s", "connect_timeot: 2s", "resources[0]"),
            ("envoy.config.cluster.v3.Cluster", "envoy.config.cluster.v3.Clusterr", "resources[0].@type"),
        ])
    func envoyNativeErrors(_ from: String, _ to: String, _ field: String) throws {
        do {
            _ = try EnvoyResourceFiles.read([("legacy.yaml", Self.envoyFile.replacingOccurrences(of: from, with: to))])
            Issue.record("accepted \(to)")
        } catch {
            let p = try #require(error.problems.first)
            #expect(p.location.file == "legacy.yaml" && p.location.field == field && p.location.line == 2, "\(error)")
        }
    }

    @Test(
        "an invalid change is refused as a whole and the last good snapshots stay; Envoy-native resources reach every node"
    )
    func refusedChange() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("weir-sources-\(UUID().uuidString)")
        let mesh = dir.appendingPathComponent("mesh")
        let envoy = dir.appendingPathComponent("envoy")
        try FileManager.default.createDirectory(at: mesh, withIntermediateDirectories: true)
        try FileManager.default.createDirectory(at: envoy, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        try meshFixture.write(to: mesh.appendingPathComponent("m.yaml"), atomically: true, encoding: .utf8)
        try Self.envoyFile.write(to: envoy.appendingPathComponent("legacy.yaml"), atomically: true, encoding: .utf8)
        let cache = SnapshotCache(stateDirectory: nil)
        let sources = ConfigSources(mesh: mesh.path, envoy: envoy.path, cache: cache)
        #expect(sources.reload() == nil)
        let node = "mesh/colors/virtualNode/front_apps"
        let good = try #require(cache.snapshot(for: node))
        #expect(good.resources[.cluster]?["legacy"] != nil && good.resources[.cluster]?["vn_blue_apps_9081"] != nil)

        try meshFixture.replacingOccurrences(of: "port: 9081", with: "port: 0").write(
            to: mesh.appendingPathComponent("m.yaml"), atomically: true, encoding: .utf8)
        let problems = try #require(sources.reload())
        #expect(problems.contains("m.yaml") && problems.contains("spec.listeners[0].portMapping.port"), "\(problems)")
        #expect(cache.snapshot(for: node) == good)
        #expect(sources.lastError != nil)
    }

    /// Writes the fixture (with a replacement) and reloads; returns the node's snapshot.
    func reloaded(_ sources: ConfigSources, _ cache: SnapshotCache, _ file: URL, _ text: String) throws -> Snapshot {
        try text.write(to: file, atomically: true, encoding: .utf8)
        #expect(sources.reload() == nil)
        return try #require(cache.snapshot(for: "mesh/colors/virtualNode/front_apps"))
    }

    @Test(
        "a file at rest is not read again while its status is the same; one just written is, and so is one written in place with the same size"
    )
    func readCache() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("weir-read-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("a.yaml").path
        try "kind: one\n".write(toFile: path, atomically: false, encoding: .utf8)
        let cache = ConfigDirectory.ReadCache()
        // Just written: read, and not kept (a write in the same tick would leave the status as it is).
        #expect(try ConfigDirectory.files(dir.path, cache: cache).map(\.text) == ["kind: one\n"])
        #expect(cache.text(path, try FileStatus.of(path)) == nil)
        // At rest for over a second before the read: kept, and given again for the same status.
        Thread.sleep(forTimeInterval: 1.2)
        #expect(try ConfigDirectory.files(dir.path, cache: cache).map(\.text) == ["kind: one\n"])
        #expect(cache.text(path, try FileStatus.of(path)) == "kind: one\n")
        // Written in place, the same size, same inode: its ctime moved, so it is read again.
        let handle = try #require(FileHandle(forWritingAtPath: path))
        handle.write(Data("kind: two\n".utf8))
        try handle.close()
        #expect(try ConfigDirectory.files(dir.path, cache: cache).map(\.text) == ["kind: two\n"])
        // A file gone is forgotten.
        try FileManager.default.removeItem(atPath: path)
        #expect(try ConfigDirectory.files(dir.path, cache: cache).isEmpty)
        #expect(cache.entries.withLock { $0.isEmpty })
    }

    @Test(
        "reloads reuse what did not change and rebuild what did: a target's health check reaches its cluster, the same config gives the same bytes"
    )
    func memoizedReloads() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("weir-memo-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let file = dir.appendingPathComponent("m.yaml")
        let cache = SnapshotCache(stateDirectory: nil)
        let sources = ConfigSources(mesh: dir.path, envoy: nil, cache: cache)

        let first = try reloaded(sources, cache, file, meshFixture)
        let cluster = try #require(first.resources[.cluster]?["vn_blue_apps_9081"])
        #expect(try Envoy_Config_Cluster_V3_Cluster(serializedBytes: cluster.bytes).healthChecks.isEmpty)

        // The target virtual node changes: its cluster (compiled once, shared by every node that calls it) must follow.
        let withCheck = meshFixture.replacingOccurrences(
            of: "listeners: [{portMapping: {port: 9081, protocol: http}}]",
            with: """
                listeners:
                    - portMapping: {port: 9081, protocol: http}
                      healthCheck: {protocol: http, path: /ping, healthyThreshold: 2, unhealthyThreshold: 3, timeoutMillis: 2000, intervalMillis: 5000}
                """)
        #expect(withCheck != meshFixture)
        let second = try reloaded(sources, cache, file, withCheck)
        let changed = try #require(second.resources[.cluster]?["vn_blue_apps_9081"])
        #expect(changed.version != cluster.version)
        #expect(
            try Envoy_Config_Cluster_V3_Cluster(serializedBytes: changed.bytes).healthChecks.first?.httpHealthCheck.path
                == "/ping")
        // What did not change is the very same resource.
        #expect(second.resources[.listener] == first.resources[.listener])

        // Back to the first config: the same versions and bytes as a fresh compile (nothing stale survives the memo).
        let third = try reloaded(sources, cache, file, meshFixture)
        #expect(third == first)
        let manifests = try ManifestReader.read([(file.path, meshFixture)])
        let fresh = try #require(
            try ConfigSources.build(
                "mesh/colors/virtualNode/front_apps",
                compiler: ConfigSources.compiler(manifests, options: MeshCompiler.Options(), memo: CompileMemo()),
                envoy: nil, memo: ResourceMemo()
            ).get())
        #expect(fresh == third)
    }

    @Test(
        "route configurations composed from their units' host encodings are the bytes serializing gives, in the memo's snapshot as in a plain one"
    )
    func composedRoutes() throws {
        let manifests = try ManifestReader.read([("m.yaml", meshFixture)])
        let compiler = ConfigSources.compiler(manifests, options: MeshCompiler.Options(), memo: CompileMemo())
        let memo = ResourceMemo()
        var composed = 0
        for node in compiler.nodeIDs {
            let r = try compiler.compile(nodeID: node)
            for x in r.routes {
                guard let bytes = ResourceMemo.composed(x, r.routeEncodings[x.name]) else { continue }
                #expect(bytes == (try x.serializedBytes()), "\(node) \(x.name)")
                composed += 1
            }
            for _ in 0..<2 {  // the second time each resource is the one the node had
                let (snapshot, problems) = try memo.snapshot(node: node, r)
                #expect(problems.isEmpty)
                #expect(snapshot == (try Snapshot(r)))
            }
        }
        // Each node's egress configuration and each backend's proxyless one.
        #expect(composed >= compiler.nodeIDs.count)
        // Hosts that are not the configuration's: not composed.
        var r = try compiler.compile(nodeID: compiler.nodeIDs[0])
        let name = try #require(r.routes.first { r.routeEncodings[$0.name] != nil }?.name)
        r.routeEncodings[name]?.removeLast()
        #expect(ResourceMemo.composed(r.routes.first { $0.name == name }!, r.routeEncodings[name]) == nil)
    }

    @Test(
        "a route configuration from Envoy files named like a compiled one is served as the file gives it, not composed")
    func fileRouteOverCompiled() throws {
        let manifests = try ManifestReader.read([("m.yaml", meshFixture)])
        let compiler = ConfigSources.compiler(manifests, options: MeshCompiler.Options(), memo: CompileMemo())
        let node = try #require(
            compiler.nodeIDs.first { (try? compiler.compile(nodeID: $0))?.routeEncodings.isEmpty == false })
        let compiled = try compiler.compile(nodeID: node)
        // As many hosts as the compiled one (the composition checks the count), one of them different.
        var file = try #require(compiled.routes.first { compiled.routeEncodings[$0.name] != nil })
        file.virtualHosts[0].domains = ["from-the-file"]
        var envoy = EnvoyResources()
        envoy.routes = [file]
        let snapshot = try ConfigSources.build(node, compiler: compiler, envoy: envoy, memo: ResourceMemo()).get()
        #expect(snapshot?.resources[.route]?[file.name]?.bytes == (try file.serializedBytes()))
    }

    @Test("the compiler's indexed node lookup finds what the manifests' linear one does, for every id form")
    func indexedNodeLookup() throws {
        let manifests = try ManifestReader.read([("m.yaml", meshFixture)])
        let compiler = MeshCompiler(manifests)
        var ids = compiler.nodeIDs + manifests.virtualNodes.map { "\($0.ref.namespace)/\($0.ref.name)" }
        ids += ["mesh/colors/virtualNode/nobody", "mesh/other/virtualNode/front_apps", "apps/nobody"]
        #expect(ids.count > 3)
        for id in ids {
            let identity = try NodeIdentity.parse(id)
            #expect(compiler.virtualNode(for: identity) == manifests.virtualNode(for: identity), "\(id)")
        }
        #expect(compiler.virtualNode(for: try NodeIdentity.parse("mesh/colors/virtualNode/front_apps")) != nil)
    }

    @Test("a listener naming a route configuration the node lacks is found from the remembered references")
    func memoConsistency() throws {
        var r = EnvoyResources()
        var l = Envoy_Config_Listener_V3_Listener()
        l.name = "in"
        var hcm = Envoy_Extensions_Filters_Network_HttpConnectionManager_V3_HttpConnectionManager()
        hcm.statPrefix = "in"
        var rds = Envoy_Extensions_Filters_Network_HttpConnectionManager_V3_Rds()
        rds.routeConfigName = "missing"
        hcm.rds = rds
        var f = Envoy_Config_Listener_V3_Filter()
        f.name = "envoy.filters.network.http_connection_manager"
        f.typedConfig = try Google_Protobuf_Any(message: hcm)
        var chain = Envoy_Config_Listener_V3_FilterChain()
        chain.filters = [f]
        l.filterChains = [chain]
        r.listeners = [l]
        let memo = ResourceMemo()
        for _ in 0..<2 {  // the second time from the memo
            let (_, problems) = try memo.snapshot(node: "n", r)
            #expect(problems == ["listener in uses route configuration missing, which the snapshot lacks"])
        }
        var route = Envoy_Config_Route_V3_RouteConfiguration()
        route.name = "missing"
        r.routes = [route]
        #expect(try memo.snapshot(node: "n", r).problems.isEmpty)
        #expect(try memo.snapshot(node: "n", r).problems.isEmpty, "consistent, and the same again")
        // The listener unchanged, its route configuration renamed, then gone: found again each time.
        r.routes[0].name = "other"
        #expect(try memo.snapshot(node: "n", r).problems.count == 1)
        r.routes = []
        #expect(try memo.snapshot(node: "n", r).problems.count == 1)
    }

    @Test(
        "a type whose resources are all the node had keeps its part of the snapshot; a name given twice or gone is not taken from before"
    )
    func memoPerType() throws {
        func cluster(_ name: String, _ timeout: Int64 = 1) -> Envoy_Config_Cluster_V3_Cluster {
            var c = Envoy_Config_Cluster_V3_Cluster()
            c.name = name
            c.connectTimeout = Google_Protobuf_Duration(seconds: timeout)
            return c
        }
        let memo = ResourceMemo()
        var r = EnvoyResources()
        r.clusters = [cluster("a"), cluster("b")]
        let first = try memo.snapshot(node: "n", r).0
        let again = try memo.snapshot(node: "n", r).0
        #expect(again == first)
        #expect(again.typeVersions == first.typeVersions)
        // Each step against a snapshot made without the memo: the same resources and versions.
        for clusters in [
            [cluster("a"), cluster("a")], [cluster("a"), cluster("b")], [cluster("b"), cluster("a", 2)], [cluster("b")],
            [],
        ] {
            r.clusters = clusters
            let s = try memo.snapshot(node: "n", r).0
            #expect(s == (try Snapshot(r)), "\(clusters.map(\.name))")
            #expect(s.typeVersions == (try Snapshot(r)).typeVersions)
        }
        // Another node with the same content shares the bytes, and has its own part.
        r.clusters = [cluster("a")]
        let other = try memo.snapshot(node: "m", r).0
        #expect(other == (try Snapshot(r)))
    }
}
