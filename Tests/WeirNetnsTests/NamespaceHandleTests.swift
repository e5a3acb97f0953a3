import Foundation
import Glibc
import Synchronization
import Testing
@testable import WeirNetns
import WeirSystem
import WeirTestSupport

/// A handle whose descriptor is not a namespace (`/dev/null`): every `setns` on it fails with EINVAL, as it would
/// for a namespace the process may not enter.
func unenterableHandle() throws -> NamespaceHandle {
    NamespaceHandle(
        descriptor: try FileDescriptor.open("/dev/null", O_RDONLY),
        identity: NamespaceIdentity(device: 0, inode: 0), path: "/dev/null")
}

@Suite("namespace handles", .enabled(if: canRunNamespaceTests, "needs root (setns)"))
struct NamespaceHandleTests {
    /// The blocking `run` (an async caller would pick the async one).
    static func runSync<T: Sendable>(
        _ handle: NamespaceHandle, name: String = "weir-t-run",
        _ body: @escaping @Sendable () throws -> T
    ) throws -> T {
        try handle.run(name: name, body)
    }

    @Test("a namespace file that is not a network namespace is refused by name, before anything enters it")
    func notNetwork() {
        #expect {
            _ = try NamespaceHandle.open("/proc/self/ns/mnt")
        } throws: { "\($0)".contains("not a network namespace") }
        #expect {
            _ = try NamespaceHandle.open("/etc/hostname")
        } throws: { "\($0)".contains("not a namespace file") }
        #expect {
            _ = try NamespaceHandle.open("/nonexistent/ns")
        } throws: { "\($0)".contains("/nonexistent/ns") }
    }

    @Test("a failed setns is the caller's error, sync, async and for a long-running thread, and the body never runs")
    func setnsFailure() async throws {
        let handle = try unenterableHandle()
        let ran = Mutex(false)
        #expect {
            try Self.runSync(handle) { ran.withLock { $0 = true } }
        } throws: { "\($0)".contains("entering network namespace /dev/null") }
        await #expect {
            try await handle.run(name: "weir-t-async") { ran.withLock { $0 = true } }
        } throws: { "\($0)".contains("entering network namespace /dev/null") }
        #expect {
            _ = try handle.thread(name: "weir-t-thread") { ran.withLock { $0 = true } }
        } throws: { "\($0)".contains("entering network namespace /dev/null") }
        #expect {
            _ = try NetworkNamespace(handle: handle).thread(name: "weir-t-ns") { ran.withLock { $0 = true } }
        } throws: { _ in true }
        #expect(!ran.withLock { $0 }, "a body ran although its thread never entered the namespace")
    }

    @Test("work runs inside the namespace, on a thread with its name, sync and async")
    func runsInside() async throws {
        let scratch = try ScratchNamespace()
        let host = try NamespaceHandle.current()
        #expect(scratch.handle.identity != host.identity)
        let inside = try Self.runSync(scratch.handle, name: "weir-t-inside") { () throws -> String in
            let id = try NamespaceHandle.open("/proc/thread-self/ns/net").identity
            let comm = try String(contentsOfFile: "/proc/thread-self/comm", encoding: .utf8)
            return "\(id) \(comm.trimmingCharacters(in: .whitespacesAndNewlines))"
        }
        #expect(inside == "\(scratch.handle.identity) weir-t-inside")
        let asyncInside = try await scratch.handle.run(name: "weir-t-async2") { () throws -> NamespaceIdentity in
            try NamespaceHandle.open("/proc/thread-self/ns/net").identity
        }
        #expect(asyncInside == scratch.handle.identity)
        // The caller's own thread never moved.
        #expect(try NamespaceHandle.open("/proc/thread-self/ns/net").identity == host.identity)
    }

    @Test("a test namespace whose first deletion fails is deleted by the next try, and one already gone is no error")
    func cleanupRetries() throws {
        let name = "weirt-del-\(getpid())"
        try sh("ip", "netns", "add", name)
        defer { _ = try? sh(["ip", "netns", "del", name], allowFailure: true) }
        var calls = 0
        // The first attempt fails as a refused spawn would; the second is the real one.
        deleteNamespace(name) { n in
            calls += 1
            if calls == 1 { throw CommandError(description: "spawn refused") }
            return try defaultNamespaceDelete(n)
        }
        #expect(calls == 2)
        #expect(!FileManager.default.fileExists(atPath: "/run/netns/\(name)"))
        // Gone already: one attempt, which finds nothing to delete, and no retries.
        calls = 0
        deleteNamespace(name) { n in
            calls += 1
            return try defaultNamespaceDelete(n)
        }
        #expect(calls == 1)
    }

    @Test("a namespace recreated at the same path is a different namespace; a held handle keeps the old one")
    func identityAcrossRecreation() throws {
        let name = "weirt-id-\(getpid())"
        defer { deleteNamespace(name) }
        try sh("ip", "netns", "add", name)
        let first = try NamespaceHandle.open("/run/netns/\(name)")
        try sh("ip", "netns", "del", name)
        try sh("ip", "netns", "add", name)
        let second = try NamespaceHandle.open("/run/netns/\(name)")
        #expect(first.identity != second.identity)
        // Work given the first handle goes into the first namespace, not the one now at the path.
        let seen = try NetworkNamespace(handle: first).run { () throws -> NamespaceIdentity in
            try NamespaceHandle.open("/proc/thread-self/ns/net").identity
        }
        #expect(seen == first.identity)
    }
}

@Suite("listening sockets")
struct ListeningSocketsTests {
    @Test("the LISTEN rows of /proc/net/tcp and tcp6, addresses in network order")
    func parse() {
        let v4 = """
              sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
               0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1
               1: 0B0A12C6:1F91 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1
               2: 0100007F:1F92 0100007F:D3A2 01 00000000:00000000 00:00000000 00000000     0        0 3 1
               3: 0100ZZ7F:1F93 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4 1
               4: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5 1
            """
        let found = ListeningSockets.parse(v4, family: .ipv4)
        // A row that does not read is skipped, and the rows after it still read.
        #expect(found.map(\.description) == ["127.0.0.1:8080", "198.18.10.11:8081", "0.0.0.0:80"])
        let v6 = """
              sl  local_address                         remote_address                        st
               0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A
               1: 000000FD000000000000000001000000:0050 00000000000000000000000000000000:0000 0A
               2: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A
            """
        #expect(
            ListeningSockets.parse(v6, family: .ipv6).map(\.description) == ["[::1]:8080", "[fd00::1]:80", "[::]:8080"])
    }

    @Test("inside a fresh namespace: only what listens there", .enabled(if: canRunNamespaceTests))
    func inNamespace() throws {
        let scratch = try ScratchNamespace()
        let (before, after) = try scratch.handle.run { () -> ([Endpoint]?, [Endpoint]?) in
            let before = ListeningSockets.tcp()
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            defer { close(fd) }
            var a = sockaddr_in()
            a.sin_family = sa_family_t(AF_INET)
            a.sin_port = UInt16(18080).bigEndian
            _ = withUnsafePointer(to: &a) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
            listen(fd, 1)
            return (before, ListeningSockets.tcp())
        }
        #expect(before?.isEmpty == true)
        #expect(after?.map(\.description) == ["0.0.0.0:18080"])
    }
}
