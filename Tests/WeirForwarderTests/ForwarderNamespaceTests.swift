import CWeirShims
import Foundation
import Glibc
import Logging
import ServiceLifecycle
import Testing
import WeirAgent
@testable import WeirCapture
@testable import WeirNetfilter
import WeirForwarder
@testable import WeirNetns
import WeirSystem
import WeirTestSupport

@Suite("the forwarder and its namespace", .enabled(if: canRunNamespaceTests, "needs root (setns)"))
struct ForwarderNamespaceTests {
    @Test("a namespace its threads cannot enter makes Forwarder.start throw, and nothing is left running or listening")
    func unenterable() async throws {
        // /dev/null passes for a handle here, and every setns on it fails, as for a namespace weir may not enter.
        let handle = NamespaceHandle(
            descriptor: try FileDescriptor.open("/dev/null", O_RDONLY),
            identity: NamespaceIdentity(device: 0, inode: 0), path: "/dev/null")
        var config = ForwarderConfig()
        config.workers = 2
        let forwarder = Forwarder(config: config)
        #expect {
            try forwarder.start(in: NetworkNamespace(handle: handle))
        } throws: { "\($0)".contains("entering network namespace /dev/null") }
        #expect(forwarder.activeConnections == 0)
        // No worker runs: stop returns at once, with nothing to drain.
        await forwarder.stop()
    }

    @Test("listeners and every worker are in the one namespace opened at start, even if its path is reused")
    func oneNamespace() async throws {
        let name = "weirt-fwd-\(getpid())"
        defer { deleteNamespace(name) }
        try sh("ip", "netns", "add", name)
        try sh("ip", "-n", name, "link", "set", "lo", "up")
        let held = try NamespaceHandle.open("/run/netns/\(name)")
        var config = ForwarderConfig()
        config.workers = 2
        let forwarder = Forwarder(config: config)
        try forwarder.start(in: NetworkNamespace(path: "/run/netns/\(name)"))
        // The path now names a new, empty namespace; the forwarder's listeners stay in the first one.
        try sh("ip", "netns", "del", name)
        try sh("ip", "netns", "add", name)
        let listening = try NetworkNamespace(handle: held).run { () -> Bool in
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            defer { close(fd) }
            var sin = sockaddr_in()
            sin.sin_family = sa_family_t(AF_INET)
            sin.sin_port = UInt16(15001).bigEndian
            sin.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
            return withUnsafePointer(to: &sin) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            } == 0
        }
        #expect(listening, "the forwarder's outbound listener is not in the namespace it was started in")
        await forwarder.stop()
    }
}

@Suite("the forwarder as a service", .enabled(if: canRunNamespaceTests, "needs root (namespaces, nftables)"))
struct ForwarderServiceTests {
    @Test(
        "the group's graceful shutdown, without a signal: no new connections, the open one finishes, then the group ends"
    )
    func gracefulShutdown() async throws {
        _ = testMetrics
        try await TestNetwork.withAsync { net in
            try net.installer(.nftables).install(RedirectPlan(spec: try CaptureSpecInput().validate()))
            var config = ForwarderConfig()
            config.workers = 2
            config.drainTimeoutMilliseconds = 20_000
            let forwarder = Forwarder(config: config)
            let (started, announce) = AsyncStream<Int>.makeStream()
            let (draining, announceDrain) = AsyncStream<Int>.makeStream()
            let service = ForwarderService(
                forwarder: forwarder, namespace: net.podNamespace,
                onStarted: { announce.yield(1) }, onDraining: { announceDrain.yield($0) })
            let group = serviceGroup(
                [service], logger: Logger(label: "weir.test.fwd"), deadline: .seconds(30), signals: [])
            let running = Task { try await group.run() }
            var it = started.makeAsyncIterator()
            _ = await it.next()
            let r = try Relayed.outbound(net)
            defer { r.close() }
            await group.triggerGracefulShutdown()
            var drainIt = draining.makeAsyncIterator()
            #expect(await drainIt.next() == 1, "the drain did not start with the one open connection")
            #expect(forwarder.isDraining)
            #expect(throws: (any Error).self) { try blockingSocket(net.podNamespace, connectTo: server4) }
            // The open connection still carries data both ways, and the group waits for it.
            #expect(r.exchange("after shutdown", "reply") == (14, 5))
            #expect(!(await finishes(within: 0.5, running)), "the group ended while a connection was open")
            shutdown(r.client, Int32(SHUT_WR))
            shutdown(r.server, Int32(SHUT_WR))
            #expect(await finishes(within: 10, running), "the group did not end once the connection closed")
            #expect(forwarder.activeConnections == 0)
        }
    }
}
