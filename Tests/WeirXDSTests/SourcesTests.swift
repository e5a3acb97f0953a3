import EnvoyAPI
import Foundation
import Testing
import WeirMesh
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

    @Test("a field outside weir's subset, or an unknown type, is an error naming the file, line and resource", arguments: [
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

    @Test("an invalid change is refused as a whole and the last good snapshots stay; Envoy-native resources reach every node")
    func refusedChange() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("weir-sources-\(UUID().uuidString)")
        let mesh = dir.appendingPathComponent("mesh"), envoy = dir.appendingPathComponent("envoy")
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

        try meshFixture.replacingOccurrences(of: "port: 9081", with: "port: 0").write(to: mesh.appendingPathComponent("m.yaml"), atomically: true, encoding: .utf8)
        let problems = try #require(sources.reload())
        #expect(problems.contains("m.yaml") && problems.contains("spec.listeners[0].portMapping.port"), "\(problems)")
        #expect(cache.snapshot(for: node) == good)
        #expect(sources.lastError != nil)
    }
}
