import Foundation
import Glibc
import Logging
import ServiceLifecycle
import Testing
import WeirAgent
import WeirNetns
import WeirTestSupport
import WeirXDS

/// The names of this process's threads.
func threadNames() -> [String] {
    let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task")) ?? []
    return tasks.compactMap { try? String(contentsOfFile: "/proc/self/task/\($0)/comm", encoding: .utf8) }
        .map { $0.trimmingCharacters(in: .whitespacesAndNewlines) }
}

/// HTTP/2 frames read from `fd` until the peer closes: their types in order.
func frameTypes(_ fd: Int32) -> (types: [UInt8], closed: Bool) {
    var buffer: [UInt8] = []
    var types: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 16384)
    for _ in 0..<10_000 {
        let n = recv(fd, &chunk, chunk.count, 0)
        if n <= 0 { return (types, n == 0 || errno == ECONNRESET) }
        buffer += chunk[0..<n]
        while buffer.count >= 9 {
            let length = Int(buffer[0]) << 16 | Int(buffer[1]) << 8 | Int(buffer[2])
            guard buffer.count >= 9 + length else { break }
            types.append(buffer[3])
            buffer.removeFirst(9 + length)
        }
    }
    return (types, false)
}

@Suite("services under one group")
struct ServiceGroupTests {
    @Test(
        "a graceful shutdown of the group, without a signal: ADS says GOAWAY and closes, the watcher and the writer end"
    )
    func xdsShutdown() async throws {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent(
            "weir-group-\(UUID().uuidString.prefix(8))")
        let mesh = root.appendingPathComponent("mesh")
        let state = root.appendingPathComponent("state")
        try FileManager.default.createDirectory(at: mesh, withIntermediateDirectories: true)
        try FileManager.default.createDirectory(at: state, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: root) }
        let socketPath = root.appendingPathComponent("ads.sock").path
        let logger = Logger(label: "weir.test.group")
        let cache = SnapshotCache(stateDirectory: state, logger: logger)
        let sources = ConfigSources(mesh: mesh.path, envoy: nil, cache: cache, logger: logger)
        #expect(sources.reload() == nil)
        cache.setSource(sources)
        let server = XDSServer(listen: .unix(path: socketPath), cache: cache, logger: logger)
        let (listening, announce) = AsyncStream<String>.makeStream()
        let watchersBefore = threadNames().filter { $0 == "weir-xds-watch" }.count
        let group = serviceGroup(
            [
                SnapshotPersistenceService(cache: cache), ConfigWatchService(sources: sources),
                XDSService(server: server) { announce.yield($0) },
            ],
            logger: logger, deadline: .seconds(10), signals: [])
        let running = Task { try await group.run() }
        var it = listening.makeAsyncIterator()
        #expect(await it.next() == "unix:\(socketPath)")
        #expect(threadNames().filter { $0 == "weir-xds-watch" }.count == watchersBefore + 1, "\(threadNames())")

        guard let fd = unixConnect(socketPath) else {
            Issue.record("cannot connect to ADS")
            running.cancel()
            return
        }
        defer { close(fd) }
        sendBytes(fd, http2Preface)
        // The server's SETTINGS first: the connection is established before the shutdown starts.
        var head = [UInt8](repeating: 0, count: 9)
        #expect(recv(fd, &head, 9, Int32(MSG_WAITALL)) == 9 && head[3] == 4, "no SETTINGS from the server: \(head)")
        var payload = [UInt8](repeating: 0, count: Int(head[0]) << 16 | Int(head[1]) << 8 | Int(head[2]))
        if !payload.isEmpty { _ = recv(fd, &payload, payload.count, Int32(MSG_WAITALL)) }
        await group.triggerGracefulShutdown()
        let (types, closed) = frameTypes(fd)
        #expect(types.contains(7), "no GOAWAY before the close: \(types)")
        #expect(closed)
        #expect(await finishes(within: 10, running), "the group did not end after its graceful shutdown")
        #expect((try? await running.value) != nil, "the group ended with an error")
        #expect(
            threadNames().filter { $0 == "weir-xds-watch" }.count == watchersBefore, "the watcher outlived the group")
        #expect(
            !FileManager.default.fileExists(atPath: socketPath) || unixConnect(socketPath) == nil, "ADS still accepts")
    }

    @Test("a service that fails ends the group and the others shut down with it")
    func failureEndsGroup() async throws {
        let file = "/tmp/weir-group-file-\(getpid())"
        _ = FileManager.default.createFile(atPath: file, contents: Data("x".utf8))
        defer { unlink(file) }
        let socketPath = "/tmp/weir-group-admin-\(UUID().uuidString.prefix(8)).sock"
        defer { unlink(socketPath) }
        let logger = Logger(label: "weir.test.group")
        let good = AdminServer(address: .unix(socketPath)) { _ in .text("ready\n") }
        let bad = AdminServer(address: .unix(file)) { _ in .text("") }
        let group = serviceGroup([good, bad], logger: logger, deadline: .seconds(5), signals: [])
        let running = Task { try await group.run() }
        #expect(await finishes(within: 10, running))
        await #expect { try await running.value } throws: { "\($0)".contains(file) }
        #expect(unixHTTPGet(socketPath, "/ready") == nil, "the healthy service kept serving after the group ended")
    }
}
