import CWeirShims
import Foundation
import Testing
@testable import WeirCapture
@testable import WeirForwarder
import WeirNetns
import WeirTestSupport

/// `weir forward` as its own process: signals, descriptor limits, the admin endpoint.
final class ForwardProcess {
    let process = Process()
    let output = Pipe()

    init(_ arguments: [String], prefix: [String] = []) throws {
        process.executableURL = URL(fileURLWithPath: prefix.first ?? weirBinary)
        process.arguments = Array(prefix.dropFirst()) + (prefix.isEmpty ? [] : [weirBinary]) + ["forward"] + arguments
        process.standardOutput = output
        process.standardError = output
        try process.run()
    }

    /// Waits (bounded) until the admin endpoint answers, i.e. the listeners are open.
    func waitReady(_ ns: NetworkNamespace, admin: Endpoint) throws {
        for _ in 0..<100 {
            if (try? httpGet(ns, admin, "/ready"))?.contains("ready") == true { return }
            usleep(50_000)
        }
        throw CommandError(description: "weir forward did not become ready")
    }

    func terminate() { if process.isRunning { kill(process.processIdentifier, SIGTERM) } }

    /// Waits up to `seconds` for the exit; kills it (only this process) if it overstays.
    func waitExit(seconds: Double) -> Int32? {
        let deadline = Date().addingTimeInterval(seconds)
        while process.isRunning && Date() < deadline { usleep(20_000) }
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
            return nil
        }
        return process.terminationStatus
    }
}

func httpGet(_ ns: NetworkNamespace, _ ep: Endpoint, _ path: String) throws -> String {
    let fd = try blockingSocket(ns, connectTo: ep)
    defer { close(fd) }
    sendAll(fd, "GET \(path) HTTP/1.1\r\nHost: weir\r\nConnection: close\r\n\r\n")
    return String(decoding: readAll(fd).bytes, as: UTF8.self)
}

let admin = Endpoint(family: .ipv4, address: [127, 0, 0, 1], port: 15090)

@Suite("weir forward process", .enabled(if: canRunNamespaceTests))
struct ForwardProcessTests {
    @Test("SIGTERM drains: no new connections, open ones finish, then the process exits 0")
    func drain() throws {
        try TestNetwork.with { net in
            try net.installer(.nftables).install(RedirectPlan(spec: try CaptureSpecInput().validate()))
            let fwd = try ForwardProcess([
                "--netns", "/run/netns/\(net.pod)", "--admin", admin.description, "--drain-timeout", "5000",
            ])
            defer { _ = fwd.waitExit(seconds: 0) }
            try fwd.waitReady(net.podNamespace, admin: admin)
            let r = try Relayed.outbound(net)
            defer { r.close() }
            let (client, server) = (r.client, r.server)
            fwd.terminate()
            usleep(300_000)
            // New connections find no listener; the open one still carries data both ways.
            #expect(throws: (any Error).self) { try blockingSocket(net.podNamespace, connectTo: server4) }
            sendAll(client, "after SIGTERM")
            var buf = [UInt8](repeating: 0, count: 64)
            #expect(recv(server, &buf, buf.count, 0) == 13)
            sendAll(server, "reply")
            #expect(recv(client, &buf, buf.count, 0) == 5)
            #expect(fwd.process.isRunning)
            shutdown(client, Int32(SHUT_WR))
            shutdown(server, Int32(SHUT_WR))
            #expect(fwd.waitExit(seconds: 4) == 0)
        }
    }

    @Test("running out of file descriptors pauses accept, and it resumes when descriptors free up")
    func descriptorExhaustion() throws {
        try TestNetwork.with { net in
            try net.installer(.nftables).install(RedirectPlan(spec: try CaptureSpecInput().validate()))
            // 48 descriptors: the listeners, epoll and a few others leave room for about 15 relayed connections.
            let fwd = try ForwardProcess(
                ["--netns", "/run/netns/\(net.pod)", "--admin", admin.description, "--workers", "1"],
                prefix: ["/usr/bin/prlimit", "--nofile=48:48", "--"])
            defer {
                fwd.terminate()
                _ = fwd.waitExit(seconds: 5)
            }
            try fwd.waitReady(net.podNamespace, admin: admin)
            let listener = try TestSockets.listen(net.serverNamespace, .ipv4, port: 9000)
            defer { close(listener) }
            var open: [(Int32, Int32)] = []
            defer {
                for (c, s) in open {
                    close(c)
                    close(s)
                }
            }
            var refused = 0
            for _ in 0..<40 {
                guard let c = try? blockingSocket(net.podNamespace, connectTo: server4) else {
                    refused += 1
                    continue
                }
                if let s = acceptOne(listener, timeoutMilliseconds: 300) {
                    open.append((c, s))
                } else {
                    close(c)
                    refused += 1
                }
            }
            #expect(open.count >= 5 && open.count < 40, "relayed \(open.count)")
            #expect(refused > 0, "every connection was relayed; the limit was not reached")
            let metrics = try httpGet(net.podNamespace, admin, "/metrics")
            let paused =
                metrics.split(separator: "\n")
                .first { $0.hasPrefix("weir_forward_accept_paused_total ") }.flatMap {
                    Double($0.split(separator: " ")[1])
                } ?? 0
            let descriptors =
                (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(fwd.process.processIdentifier)/fd"))?
                .count ?? -1
            #expect(
                paused > 0,
                "open \(open.count), refused \(refused), descriptors \(descriptors): \(metrics.split(separator: "\n").filter { $0.hasPrefix("weir_forward") && !$0.contains("bucket") })"
            )
            // The relayed ones still work.
            sendAll(open[0].0, "ping")
            var buf = [UInt8](repeating: 0, count: 16)
            #expect(recv(open[0].1, &buf, buf.count, 0) == 4)
            for (c, s) in open {
                close(c)
                close(s)
            }
            open.removeAll()
            usleep(300_000)
            // The clients given up on above sat in the forwarder's backlog; once accept resumes they are
            // relayed too, each ending with the EOF of its closed client. Their upstream halves wait in
            // this listener and hold the forwarder's descriptors until they are taken and closed.
            for _ in 0..<200 {
                guard let stale = acceptOne(listener, timeoutMilliseconds: 300) else { break }
                close(stale)
            }
            // Descriptors are free again: a new connection is relayed. A stale relay that still arrives
            // ends in EOF without a byte; the new one carries the client's bytes.
            let c = try blockingSocket(net.podNamespace, connectTo: server4)
            defer { close(c) }
            sendAll(c, "again")
            var relayed = false
            for _ in 0..<50 {
                guard let s = acceptOne(listener, timeoutMilliseconds: 3000) else { break }
                defer { close(s) }
                if recv(s, &buf, buf.count, 0) == 5 {
                    relayed = String(decoding: buf[0..<5], as: UTF8.self) == "again"
                    break
                }
            }
            #expect(relayed, "no relayed connection carried the new client's bytes")
        }
    }

    @Test("metrics on the admin endpoint and a JSON access-log line per connection")
    func observability() throws {
        try TestNetwork.with { net in
            try net.installer(.nftables).install(RedirectPlan(spec: try CaptureSpecInput().validate()))
            let log = FileManager.default.temporaryDirectory.appendingPathComponent("weir-access-\(net.pod).jsonl")
            defer { try? FileManager.default.removeItem(at: log) }
            let fwd = try ForwardProcess([
                "--netns", "/run/netns/\(net.pod)", "--admin", admin.description, "--access-log", log.path,
            ])
            defer {
                fwd.terminate()
                _ = fwd.waitExit(seconds: 5)
            }
            try fwd.waitReady(net.podNamespace, admin: admin)
            let r = try Relayed.outbound(net)
            #expect(r.exchange("12345", "abc") == (5, 3))
            r.close()
            usleep(300_000)
            let metrics = try httpGet(net.podNamespace, admin, "/metrics")
            #expect(metrics.contains("weir_forward_connections_total{direction=\"outbound\"} 1"))
            #expect(metrics.contains("weir_forward_connections_by_port_total{port=\"9000\"} 1"))
            #expect(metrics.contains("weir_forward_bytes_upstream_total{direction=\"outbound\"} 5"))
            let lines = try String(contentsOf: log, encoding: .utf8).split(separator: "\n")
            #expect(lines.count == 1)
            let entry = try JSONSerialization.jsonObject(with: Data(lines[0].utf8)) as? [String: Any]
            #expect(entry?["original_destination"] as? String == "198.18.0.2:9000")
            #expect(entry?["bytes_sent"] as? Int == 5)
            #expect(entry?["bytes_received"] as? Int == 3)
            #expect(entry?["direction"] as? String == "outbound")
        }
    }

    @Test(
        "weir init --mode tproxy && weir forward --mode tproxy: inbound reaches the application",
        arguments: IPFamily.allCases)
    func tproxyCLI(_ family: IPFamily) throws {
        try TestNetwork.with { net in
            let ns = "/run/netns/\(net.pod)"
            #expect(try sh(weirBinary, "init", "--netns", ns, "--mode", "tproxy").status == 0)
            let fwd = try ForwardProcess(["--netns", ns, "--mode", "tproxy", "--admin", admin.description])
            defer {
                fwd.terminate()
                _ = fwd.waitExit(seconds: 5)
            }
            try fwd.waitReady(net.podNamespace, admin: admin)
            let r = try Relayed.inbound(net, family)
            defer { r.close() }
            #expect(r.exchange("tproxied", "ok") == (8, 2))
            #expect(
                try httpGet(net.podNamespace, admin, "/metrics").contains(
                    "weir_forward_connections_total{direction=\"inbound\"} 1"))
        }
    }

    @Test(
        "bad flags exit 2",
        arguments: [
            ["--mode", "nat"], ["--upstream", "nowhere"], ["--proxy-protocol", "v2"], ["--bypass-mark", "0"],
            ["--admin", "somewhere"],
        ])
    func badFlags(_ args: [String]) throws {
        let r = try sh([weirBinary, "forward"] + args, allowFailure: true)
        #expect(r.status == 2, "\(r.output)")
    }
}
