import Foundation
import Glibc
import NIOCore
import Synchronization
import Testing
import WeirAgent
import WeirNetns
import WeirTestSupport

/// An admin server on a fresh Unix socket, stopped after `body`.
func withAdmin<T>(
    readTimeout: TimeAmount = AdminServer.defaultReadTimeout,
    _ body: (String) async throws -> T
) async throws -> T {
    let path = "/tmp/weir-admin-test-\(UUID().uuidString.prefix(8)).sock"
    let server = AdminServer(address: .unix(path), readTimeout: readTimeout) { request in
        request.path == "/ready" ? .text("ready\n") : .text("echo \(request.body.count)\n")
    }
    try await server.start()
    do {
        let r = try await body(path)
        await server.stop()
        return r
    } catch {
        await server.stop()
        throw error
    }
}

/// The raw HTTP response to `request`, read until the server closes.
func exchange(_ path: String, _ request: [UInt8]) -> String? {
    guard let fd = unixConnect(path) else { return nil }
    defer { close(fd) }
    sendBytes(fd, request)
    return String(decoding: readAll(fd).bytes, as: UTF8.self)
}

@Suite("the admin endpoint")
struct AdminServerTests {
    @Test("a client that connects and says nothing does not hold up another client's /ready")
    func silentClient() async throws {
        try await withAdmin { path in
            guard let silent = unixConnect(path), let halfHead = unixConnect(path) else {
                Issue.record("cannot connect to \(path)")
                return
            }
            defer {
                close(silent)
                close(halfHead)
            }
            sendAll(halfHead, "GET /ready HTTP/1.1\r\nHost: a")
            let started = ContinuousClock.now
            let body = unixHTTPGet(path, "/ready")
            let took = ContinuousClock.now - started
            #expect(body == "ready\n", "no answer while two clients hang (took \(took))")
            // Both are still connected: nothing was closed to make room.
            var pfd = [
                pollfd(fd: silent, events: Int16(POLLIN), revents: 0),
                pollfd(fd: halfHead, events: Int16(POLLIN), revents: 0),
            ]
            #expect(poll(&pfd, 2, 0) == 0, "a hanging client was closed early")
        }
    }

    @Test("a silent connection is closed after the read timeout")
    func readTimeout() async throws {
        try await withAdmin(readTimeout: .milliseconds(300)) { path in
            guard let silent = unixConnect(path) else {
                Issue.record("cannot connect")
                return
            }
            defer { close(silent) }
            var pfd = pollfd(fd: silent, events: Int16(POLLIN), revents: 0)
            // Bounded: 5 s, far over the 300 ms timeout.
            #expect(poll(&pfd, 1, 5000) == 1, "the server never closed a connection that sent nothing")
            var byte: UInt8 = 0
            #expect(recv(silent, &byte, 1, 0) == 0)
        }
    }

    @Test("a request head over 8 KiB is 431 and a body over 1 MiB 413; the server goes on serving")
    func boundedRequest() async throws {
        try await withAdmin { path in
            let head = "GET /ready HTTP/1.1\r\nHost: a\r\nX-Big: " + String(repeating: "a", count: 9000) + "\r\n\r\n"
            let big = exchange(path, Array(head.utf8))
            #expect(big?.hasPrefix("HTTP/1.1 431") == true, "\(String(describing: big?.prefix(200)))")
            let size = (1 << 20) + 1
            let post =
                Array("POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: \(size)\r\n\r\n".utf8)
                + [UInt8](repeating: 0x61, count: size)
            #expect(exchange(path, post)?.hasPrefix("HTTP/1.1 413") == true)
            let small = Array("POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello".utf8)
            #expect(exchange(path, small)?.hasSuffix("echo 5\n") == true)
            #expect(unixHTTPGet(path, "/ready") == "ready\n")
        }
    }

    @Test("50 concurrent clients are all answered")
    func concurrent() async throws {
        try await withAdmin { path in
            // Blocking clients on their own threads: the cooperative pool stays free for the server's handlers.
            let answers = Mutex(0)
            DispatchQueue.concurrentPerform(iterations: 50) { _ in
                if unixHTTPGet(path, "/ready") == "ready\n" { answers.withLock { $0 += 1 } }
            }
            #expect(answers.withLock { $0 } == 50)
        }
    }

    @Test("a bad address is refused by name: a taken port, a path that is a file")
    func badAddress() async throws {
        let file = "/tmp/weir-admin-file-\(getpid())"
        _ = FileManager.default.createFile(atPath: file, contents: Data("keep".utf8))
        defer { unlink(file) }
        await #expect {
            try await AdminServer(address: .unix(file)) { _ in .text("") }.start()
        } throws: { "\($0)".contains("cannot listen on unix:\(file)") }
        #expect(try String(contentsOfFile: file, encoding: .utf8) == "keep")
        #expect(
            AdminAddress.parse("unix:") == nil && AdminAddress.parse("unix:@") == nil
                && AdminAddress.parse("127.0.0.1") == nil)
        #expect(AdminAddress.parse("unix:@weir-admin") != nil && AdminAddress.parse("127.0.0.1:9") != nil)
    }
}
