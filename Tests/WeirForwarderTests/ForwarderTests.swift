import CWeirShims
import Dispatch
import Foundation
import Testing
@testable import WeirCapture
@testable import WeirForwarder
@testable import WeirNetfilter
import WeirNetns
import WeirTestSupport

/// A patterned byte stream: MiB `i` is a fixed random block with `i` in its first 8 bytes,
/// so loss, duplication and reordering of whole blocks are all caught, and checking costs one memcmp.
struct Pattern: Sendable {
    static let blockSize = 1 << 20
    let block: [UInt8]
    init(seed: UInt64) {
        var x = seed | 1
        var b = [UInt8](repeating: 0, count: Self.blockSize)
        for i in stride(from: 0, to: Self.blockSize, by: 8) {
            x ^= x << 13
            x ^= x >> 7
            x ^= x << 17
            withUnsafeBytes(of: x) { b.replaceSubrange(i..<i + 8, with: $0) }
        }
        block = b
    }
    func chunk(_ index: Int) -> [UInt8] {
        var c = block
        withUnsafeBytes(of: UInt64(index)) { c.replaceSubrange(0..<8, with: $0) }
        return c
    }
}

/// Sends `megabytes` of the pattern, then shuts down the write side.
func sendPattern(_ fd: Int32, _ p: Pattern, megabytes: Int) -> Bool {
    for i in 0..<megabytes {
        let c = p.chunk(i)
        var off = 0
        while off < c.count {
            let n = c.withUnsafeBytes { send(fd, $0.baseAddress! + off, $0.count - off, Int32(MSG_NOSIGNAL)) }
            if n <= 0 { return false }
            off += n
        }
    }
    shutdown(fd, Int32(SHUT_WR))
    return true
}

/// Receives until EOF, checking every byte against the pattern; returns the byte count, or -1 on a mismatch.
func receivePattern(_ fd: Int32, _ p: Pattern) -> Int {
    var block = [UInt8](repeating: 0, count: Pattern.blockSize)
    var filled = 0
    var total = 0
    var index = 0
    while true {
        let n = block.withUnsafeMutableBytes { recv(fd, $0.baseAddress! + filled, Pattern.blockSize - filled, 0) }
        if n < 0 { return -2 }
        if n == 0 { return filled == 0 ? total : -1 }
        filled += n
        total += n
        if filled == Pattern.blockSize {
            if block != p.chunk(index) { return -1 }
            index += 1
            filled = 0
        }
    }
}

/// A network with weir's rules and an in-process forwarder in the pod.
func withForwarder<T>(
    spec flags: [(CaptureSpecInput.Key, String)] = [], _ configure: (inout ForwarderConfig) -> Void = { _ in },
    _ body: (TestNetwork, Forwarder) throws -> T
) async throws -> T {
    _ = testMetrics
    let net = try TestNetwork()
    defer { net.close() }
    var input = CaptureSpecInput()
    for (k, v) in flags { input.add(k, v, from: k.flag) }
    let spec = try input.validate()
    try net.installer(.nftables).install(RedirectPlan(spec: spec))
    var config = ForwarderConfig()
    config.mode = spec.mode
    config.workers = 2
    configure(&config)
    let forwarder = Forwarder(config: config)
    try forwarder.start(in: net.podNamespace)
    do {
        let result = try body(net, forwarder)
        await forwarder.stop()
        return result
    } catch {
        await forwarder.stop()
        throw error
    }
}

/// A connection made through the forwarder: `client` dials `target` from one namespace, `server` is what the
/// listener in the other accepted. `close()` closes what the test did not `release` to close itself.
final class Relayed {
    let listener: Int32, client: Int32, server: Int32
    private var owned: Set<Int32>

    init(listenIn: NetworkNamespace, port: UInt16, family: IPFamily, dialFrom: NetworkNamespace, target: Endpoint)
        throws
    {
        listener = try TestSockets.listen(listenIn, family, port: port)
        do {
            client = try blockingSocket(dialFrom, connectTo: target)
        } catch {
            Glibc.close(listener)
            throw error
        }
        guard let s = acceptOne(listener) else {
            Glibc.close(client)
            Glibc.close(listener)
            throw CommandError(description: "nothing arrived at the listener for \(target)")
        }
        server = s
        owned = [listener, client, server]
    }

    /// Outbound: the pod dials the server namespace on port 9000.
    static func outbound(_ net: TestNetwork, _ family: IPFamily = .ipv4) throws -> Relayed {
        try Relayed(
            listenIn: net.serverNamespace, port: 9000, family: family, dialFrom: net.podNamespace,
            target: family == .ipv4 ? server4 : server6)
    }

    /// Inbound: the server namespace dials the pod's application on port 9080.
    static func inbound(_ net: TestNetwork, _ family: IPFamily) throws -> Relayed {
        try Relayed(
            listenIn: net.podNamespace, port: 9080, family: family, dialFrom: net.serverNamespace,
            target: Endpoint(family: family, address: TestNetwork.podAddress(family), port: 9080))
    }

    /// The test closes `fd` itself.
    func release(_ fd: Int32) { owned.remove(fd) }

    /// Sends `request` from the client and `reply` from the server; returns the byte counts each side received.
    func exchange(_ request: String, _ reply: String) -> (server: Int, client: Int) {
        var buf = [UInt8](repeating: 0, count: 256)
        sendAll(client, request)
        let atServer = recv(server, &buf, buf.count, 0)
        sendAll(server, reply)
        let atClient = recv(client, &buf, buf.count, 0)
        return (atServer, atClient)
    }

    func close() {
        owned.forEach { Glibc.close($0) }
        owned = []
    }
}

let server4 = Endpoint(family: .ipv4, address: TestNetwork.serverV4, port: 9000)
let server6 = Endpoint(family: .ipv6, address: TestNetwork.serverV6, port: 9000)

// Serialized: several tests compare process-wide counters before and after.
@Suite("Forwarder in namespaces", .enabled(if: canRunNamespaceTests), .serialized)
struct ForwarderTests {
    static let megabytes = 100

    @Test("every listener the forwarder opens has TCP_NODELAY, which its accepted connections inherit")
    func listenersNoDelay() throws {
        try TestNetwork.with { net in
            let values: [Int32] = try net.podNamespace.run {
                let c = ForwarderConfig()
                let listeners = try Forwarder.openListeners(
                    c, ports: (c.outboundPort, c.inboundPort), mode: c.mode, scope: nil)
                return listeners.map { l in
                    var value: Int32 = 0
                    var size = socklen_t(4)
                    return getsockopt(l.socket.number, Int32(IPPROTO_TCP), TCP_NODELAY, &value, &size) == 0 ? value : -1
                }
            }
            #expect(values.count == 4, "outbound and inbound, IPv4 and IPv6")
            #expect(values.allSatisfy { $0 > 0 }, "\(values)")
        }
    }

    @Test("100 MB each way arrive byte-exact through the forwarder (outbound, redirect)", arguments: IPFamily.allCases)
    func bulkOutbound(_ family: IPFamily) async throws {
        try await withForwarder { net, _ in
            let r = try Relayed.outbound(net, family)
            defer { r.close() }
            try exchange(client: r.client, server: r.server)
        }
    }

    @Test("100 MB each way arrive byte-exact through the forwarder (inbound, TPROXY)", arguments: IPFamily.allCases)
    func bulkInboundTproxy(_ family: IPFamily) async throws {
        try await withForwarder(spec: [(.mode, "tproxy")]) { net, _ in
            let r = try Relayed.inbound(net, family)
            defer { r.close() }
            try exchange(client: r.client, server: r.server)
        }
    }

    @Test("inbound under redirect reaches the local application on its own port", arguments: IPFamily.allCases)
    func inboundRedirect(_ family: IPFamily) async throws {
        try await withForwarder { net, _ in
            let r = try Relayed.inbound(net, family)
            defer { r.close() }
            #expect(r.exchange("hello app", "hi") == (9, 2))
            #expect(metric("weir_forward_connections_total{direction=\"inbound\"}") >= 1)
        }
    }

    func exchange(client: Int32, server: Int32) throws {
        let a = Pattern(seed: 0x5745_4952)
        let b = Pattern(seed: 0xC0FFEE)
        let group = DispatchGroup()
        let results = ResultBox()
        let mb = Self.megabytes
        DispatchQueue.global().async(group: group) {
            results.set("clientSent", sendPattern(client, a, megabytes: mb) ? 1 : 0)
        }
        DispatchQueue.global().async(group: group) { results.set("serverGot", receivePattern(server, a)) }
        DispatchQueue.global().async(group: group) {
            results.set("serverSent", sendPattern(server, b, megabytes: mb) ? 1 : 0)
        }
        DispatchQueue.global().async(group: group) { results.set("clientGot", receivePattern(client, b)) }
        #expect(group.wait(timeout: .now() + 120) == .success)
        #expect(results.get("clientSent") == 1 && results.get("serverSent") == 1)
        #expect(results.get("serverGot") == mb * Pattern.blockSize)
        #expect(results.get("clientGot") == mb * Pattern.blockSize)
    }

    @Test("half-close: a client that shuts down its write side still receives the full reply")
    func halfClose() async throws {
        try await withForwarder { net, _ in
            let r = try Relayed.outbound(net)
            defer { r.close() }
            let (client, server) = (r.client, r.server)
            sendAll(client, "request")
            shutdown(client, Int32(SHUT_WR))
            // The server sees EOF after the request, then answers at length and closes.
            let (request, reset) = readAll(server)
            #expect(String(decoding: request, as: UTF8.self) == "request" && !reset)
            let reply = String(repeating: "reply-", count: 100_000)
            sendAll(server, reply)
            shutdown(server, Int32(SHUT_WR))
            let (got, clientReset) = readAll(client)
            #expect(got.count == reply.utf8.count && !clientReset)
        }
    }

    @Test("a reset from the server becomes a reset to the client")
    func resetFromServer() async throws {
        try await withForwarder { net, _ in
            let r = try Relayed.outbound(net)
            defer { r.close() }
            r.release(r.server)
            _ = weir_set_linger_reset(r.server)
            close(r.server)
            #expect(readAll(r.client).reset)
        }
    }

    @Test("a reset from the client becomes a reset to the server")
    func resetFromClient() async throws {
        try await withForwarder { net, _ in
            let r = try Relayed.outbound(net)
            defer { r.close() }
            r.release(r.client)
            _ = weir_set_linger_reset(r.client)
            close(r.client)
            #expect(readAll(r.server).reset)
        }
    }

    @Test("connecting to a closed port gives the client a reset, not a hang")
    func closedPort() async throws {
        try await withForwarder { net, _ in
            let before = metricLine("weir_forward_connect_failures_total{reason=\"refused\"}")
            let client = try blockingSocket(
                net.podNamespace, connectTo: Endpoint(family: .ipv4, address: TestNetwork.serverV4, port: 9999))
            defer { close(client) }
            #expect(readAll(client).reset)
            // The failed connect is counted by its reason, which the kernel gave (SO_ERROR).
            #expect(metricLine("weir_forward_connect_failures_total{reason=\"refused\"}") == before + 1)
        }
    }

    @Test(
        "a connection made straight to the capture port is refused as a loop, and counted",
        arguments: [[UInt8]([127, 0, 0, 1]), TestNetwork.podV4])
    func loop(address: [UInt8]) async throws {
        try await withForwarder { net, _ in
            let before = metric("weir_forward_refused_loops_total")
            let client = try blockingSocket(
                net.podNamespace, connectTo: Endpoint(family: .ipv4, address: address, port: 15001))
            defer { close(client) }
            #expect(readAll(client).reset)
            #expect(metric("weir_forward_refused_loops_total") == before + 1)
        }
    }

    @Test("beyond the connection limit new connections are reset and existing ones are unharmed")
    func maxConnections() async throws {
        try await withForwarder({
            $0.maxConnections = 2
            $0.workers = 1
        }) { net, _ in
            let listener = try TestSockets.listen(net.serverNamespace, .ipv4, port: 9000)
            defer { close(listener) }
            let c1 = try blockingSocket(net.podNamespace, connectTo: server4)
            defer { close(c1) }
            let s1 = try #require(acceptOne(listener))
            defer { close(s1) }
            let c2 = try blockingSocket(net.podNamespace, connectTo: server4)
            defer { close(c2) }
            let s2 = try #require(acceptOne(listener))
            defer { close(s2) }
            let c3 = try blockingSocket(net.podNamespace, connectTo: server4)
            defer { close(c3) }
            #expect(readAll(c3).reset)
            for (c, s) in [(c1, s1), (c2, s2)] {
                sendAll(c, "still here")
                var buf = [UInt8](repeating: 0, count: 64)
                let n = recv(s, &buf, buf.count, 0)
                #expect(n == 10)
            }
        }
    }

    @Test("an idle connection is closed after the idle timeout")
    func idleTimeout() async throws {
        try await withForwarder({ $0.idleTimeoutMilliseconds = 300 }) { net, forwarder in
            let r = try Relayed.outbound(net)
            defer { r.close() }
            let started = Date()
            let (bytes, _) = readAll(r.client)
            #expect(bytes.isEmpty)
            #expect(Date().timeIntervalSince(started) < 5)
            // The count drops just after the sockets close; give it a bounded moment.
            for _ in 0..<50 where forwarder.activeConnections != 0 { usleep(10_000) }
            #expect(forwarder.activeConnections == 0)
        }
    }

    @Test("upstream connections carry the bypass mark, so the forwarder's own traffic is never captured again")
    func bypassMark() async throws {
        // Without the mark the forwarder's connect to the original destination would be redirected to itself.
        try await withForwarder { net, _ in
            let r = try Relayed.outbound(net, .ipv6)
            defer { r.close() }
            var peer = sockaddr_storage()
            var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
            _ = withUnsafeMutablePointer(to: &peer) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getpeername(r.server, $0, &len) }
            }
            #expect(SocketAddress.endpoint(SocketAddressBytes(storage: peer, length: len))?.host == "fd00:0:0:1::1")
        }
    }
}

/// Reads one metric's value from the process-wide registry.
/// One labelled series, e.g. `name{reason="refused"}`; 0 when absent.
func metricLine(_ series: String) -> Int {
    var out: [UInt8] = []
    testMetrics.emit(into: &out)
    return String(decoding: out, as: UTF8.self).split(separator: "\n").filter { $0.hasPrefix(series + " ") }
        .compactMap { Double($0.split(separator: " ").last ?? "") }.map { Int($0) }.reduce(0, +)
}

func metric(_ name: String) -> Int {
    var out: [UInt8] = []
    testMetrics.emit(into: &out)
    let text = String(decoding: out, as: UTF8.self)
    return text.split(separator: "\n").filter { $0.hasPrefix(name + " ") || $0.hasPrefix(name + "{") }
        .compactMap { Double($0.split(separator: " ").last ?? "") }.map { Int($0) }.reduce(0, +)
}

final class ResultBox: @unchecked Sendable {
    // Guarded by `lock`.
    private var values: [String: Int] = [:]
    private let lock = NSLock()
    func set(_ k: String, _ v: Int) {
        lock.lock()
        values[k] = v
        lock.unlock()
    }
    func get(_ k: String) -> Int? {
        lock.lock()
        defer { lock.unlock() }
        return values[k]
    }
}

@Suite("check --probe beside a running forwarder", .enabled(if: canRunNamespaceTests))
struct ProbeWithForwarderTests {
    @Test("when a proxy holds the capture ports, the probe says so and still proves the redirect")
    func probeWhilePortsAreHeld() async throws {
        try await withForwarder { net, _ in
            let report = try net.installer(.nftables).check(spec: nil, probe: true)
            #expect(report.healthy, "\(report.problems) \(String(describing: report.probe))")
            let outbound = report.probe?.checks.filter { $0.name.hasPrefix("outbound") } ?? []
            #expect(outbound.count == 2)
            #expect(
                outbound.allSatisfy { $0.outcome == "passed" && $0.detail.contains("held by a running proxy") },
                "\(outbound)")
            let inbound = report.probe?.checks.filter { $0.name.hasPrefix("inbound") } ?? []
            #expect(
                inbound.count == 2
                    && inbound.allSatisfy { $0.outcome == "passed" && $0.detail.contains("held by a running proxy") },
                "\(inbound)")
        }
    }
}

/// What the relay engine takes from the kernel without asking each time; no namespace needed.
@Suite("kernel behaviour the relay engine relies on")
struct KernelFactsTests {
    @Test(
        "the loop guard's locality test: loopback is local, an unassigned address is not, an unprovable one counts as local"
    )
    func locality() {
        #expect(SocketAddress.isLocal(Endpoint(family: .ipv4, address: [127, 0, 0, 1], port: 15001)))
        #expect(
            SocketAddress.isLocal(Endpoint(family: .ipv6, address: Array(repeating: 0, count: 15) + [1], port: 15001)))
        // TEST-NET-2 (RFC 5737) is assigned nowhere: the bind fails with EADDRNOTAVAIL.
        #expect(!SocketAddress.isLocal(Endpoint(family: .ipv4, address: [198, 51, 100, 7], port: 15001)))
        // A link-local address without its interface cannot be bound (EINVAL): not provably foreign, so local.
        #expect(
            SocketAddress.isLocal(
                Endpoint(family: .ipv6, address: [0xfe, 0x80] + Array(repeating: 0, count: 13) + [1], port: 15001)))
    }

    @Test("accepted sockets inherit TCP_NODELAY from their listener (the forwarder sets it once, on the listener)")
    func nodelayInherited() throws {
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(listener) }
        #expect(weir_set_nodelay(listener) == 0)
        let any = SocketAddressBytes.ipv4([127, 0, 0, 1], port: 0)
        let bound = withUnsafeBytes(of: any.storage) {
            bind(listener, $0.baseAddress!.assumingMemoryBound(to: sockaddr.self), any.length)
        }
        #expect(bound == 0 && listen(listener, 4) == 0)
        var ss = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        _ = withUnsafeMutablePointer(to: &ss) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(listener, $0, &len) }
        }
        let port = try #require(SocketAddressBytes(storage: ss, length: len).ip).port
        let client = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(client) }
        let target = SocketAddressBytes.ipv4([127, 0, 0, 1], port: port)
        #expect(
            withUnsafeBytes(of: target.storage) {
                connect(client, $0.baseAddress!.assumingMemoryBound(to: sockaddr.self), target.length)
            } == 0)
        let accepted = accept(listener, nil, nil)
        defer { close(accepted) }
        var value: Int32 = 0
        var size = socklen_t(4)
        #expect(getsockopt(accepted, Int32(IPPROTO_TCP), TCP_NODELAY, &value, &size) == 0)
        #expect(value != 0)
        // And the client, which did not ask, does not have it: the value is not just a default.
        #expect(getsockopt(client, Int32(IPPROTO_TCP), TCP_NODELAY, &value, &size) == 0)
        #expect(value == 0)
    }
}
