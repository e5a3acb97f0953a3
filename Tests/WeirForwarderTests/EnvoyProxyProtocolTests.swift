import Foundation
import Testing
@testable import WeirCapture
@testable import WeirForwarder
import WeirNetns
import WeirTestSupport

/// Envoy with a proxy_protocol + original_dst listener and a tcp_proxy to an ORIGINAL_DST cluster: it connects
/// wherever the PROXY header says the client was going. It runs as uid 1337, which weir's rules never capture.
func envoyConfig(listenPort: UInt16, adminPort: UInt16) -> String {
    """
    admin:
      address: {socket_address: {address: 127.0.0.1, port_value: \(adminPort)}}
    static_resources:
      listeners:
      - name: proxy_protocol_in
        address: {socket_address: {address: 127.0.0.1, port_value: \(listenPort)}}
        listener_filters:
        - name: envoy.filters.listener.original_dst
          typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst}
        - name: envoy.filters.listener.proxy_protocol
          typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol}
        filter_chains:
        - filters:
          - name: envoy.filters.network.tcp_proxy
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
              stat_prefix: weir_test
              cluster: original_dst
      clusters:
      - name: original_dst
        type: ORIGINAL_DST
        lb_policy: CLUSTER_PROVIDED
        connect_timeout: 2s
    """
}

@Suite("PROXY protocol into a real Envoy", .enabled(if: canRunNamespaceTests))
struct EnvoyProxyProtocolTests {
    @Test(
        "Envoy accepts weir's PROXY header and reaches the original destination",
        arguments: ProxyProtocolVersion.allCases, IPFamily.allCases)
    func proxyProtocol(_ version: ProxyProtocolVersion, _ family: IPFamily) async throws {
        let envoy = try #require(envoyBinary, "Envoy is not installed in .venv; run scripts/install-deps")
        try await TestNetwork.withAsync { net in
            var input = CaptureSpecInput()
            input.add(.proxyUID, "1337", from: "--proxy-uid")
            try net.installer(.nftables).install(RedirectPlan(spec: try input.validate()))
            let dir = FileManager.default.temporaryDirectory.appendingPathComponent("weir-envoy-\(net.pod)")
            try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(at: dir) }
            let cfg = dir.appendingPathComponent("envoy.yaml")
            try envoyConfig(listenPort: 15100, adminPort: 15901).write(to: cfg, atomically: true, encoding: .utf8)
            try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: dir.path)
            try FileManager.default.setAttributes([.posixPermissions: 0o644], ofItemAtPath: cfg.path)
            let p = Process()
            p.executableURL = URL(fileURLWithPath: "/usr/sbin/ip")
            p.arguments = [
                "netns", "exec", net.pod, "/usr/bin/setpriv", "--reuid=1337", "--regid=1337", "--clear-groups",
                envoy, "-c", cfg.path, "--disable-hot-restart", "-l", "warning", "--concurrency", "1",
            ]
            let log = Pipe()
            p.standardOutput = log
            p.standardError = log
            try p.run()
            defer {
                // SIGKILL: a child spawned from a Dispatch thread inherits a mask that blocks SIGTERM.
                if p.isRunning { kill(p.processIdentifier, SIGKILL) }
                p.waitUntilExit()
            }
            var ready = false
            for _ in 0..<200 where !ready {
                ready =
                    (try? httpGet(
                        net.podNamespace, Endpoint(family: .ipv4, address: [127, 0, 0, 1], port: 15901), "/ready"))?
                    .contains("LIVE") == true
                if !ready { usleep(50_000) }
            }
            #expect(ready, "Envoy did not start")

            var config = ForwarderConfig()
            config.target = .proxy(
                upstream: Endpoint(family: .ipv4, address: [127, 0, 0, 1], port: 15100), proxyProtocol: version)
            let forwarder = Forwarder(config: config)
            try forwarder.start(in: net.podNamespace)
            // Relayed fails unless Envoy reaches the original destination.
            let exchanged = Result { () throws -> (Int, Int) in
                let r = try Relayed.outbound(net, family)
                defer { r.close() }
                return r.exchange("through envoy", "back")
            }
            await forwarder.stop()
            #expect(try exchanged.get() == (13, 4))
        }
    }
}
