import EnvoyAPI
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import GRPCProtobuf
import NIOCore
import NIOHPACK
import NIOHTTP2
import NIOPosix
import Synchronization
import Testing
import WeirNetns
import WeirMesh
import WeirTestSupport
@testable import WeirXDS

typealias Response = Envoy_Service_Discovery_V3_DiscoveryResponse
typealias ADSClient = Envoy_Service_Discovery_V3_AggregatedDiscoveryService.Client<HTTP2ClientTransport.Posix>

/// weir's xDS server in this process, on a Unix socket of its own, and a grpc-swift-2 client connected to it (one
/// HTTP/2 connection). The server stops when `body` returns. (Loopback TCP is what the Envoy tests use.)
func withServedADS<T: Sendable>(
    _ body: @Sendable (SnapshotCache, XDSServer, ADSClient, GRPCClient<HTTP2ClientTransport.Posix>) async throws -> T
) async throws -> T {
    let cache = SnapshotCache(stateDirectory: nil)
    let path = "/tmp/weir-ads-test-\(UUID().uuidString.prefix(8)).sock"
    defer { unlink(path) }
    let server = XDSServer(listen: .unix(path: path), cache: cache)
    let (bound, announce) = AsyncStream<String>.makeStream()
    let serving = Task {
        defer { announce.finish() }  // a server that fails to bind ends the wait below
        try await server.serve { announce.yield($0) }
    }
    var addresses = bound.makeAsyncIterator()
    guard let address = await addresses.next() else {
        try await serving.value
        throw CancellationError()
    }
    #expect(address == "unix:\(path)")
    let result: Result<T, any Error>
    do {
        let transport = try HTTP2ClientTransport.Posix(
            target: .unixDomainSocket(path: path), transportSecurity: .plaintext)
        result = .success(
            try await withGRPCClient(transport: transport) { client in
                try await body(cache, server, ADSClient(wrapping: client), client)
            })
    } catch {
        result = .failure(error)
    }
    serving.cancel()
    try await serving.value
    return try result.get()
}

/// Whether every stream the server opened is gone again, with its cache watch.
func noStreamsLeft(_ server: XDSServer, _ cache: SnapshotCache) async -> Bool {
    await until(5) { server.service.streams.withLock { $0.isEmpty } && cache.state.withLock { $0.watchers.isEmpty } }
}

/// Set once, read later: whether something happened inside a concurrently running closure.
final class Flag: Sendable {
    let value = Mutex(false)
    func set() { value.withLock { $0 = true } }
    var isSet: Bool { value.withLock { $0 } }
}

/// Polls `condition` every 20 ms for at most `seconds`, without blocking a thread of the concurrency pool.
func until(_ seconds: Double, _ condition: () -> Bool) async -> Bool {
    for _ in 0..<Int(seconds * 50) {
        if condition() { return true }
        try? await Task.sleep(for: .milliseconds(20))
    }
    return condition()
}

/// A StreamAggregatedResources call that sends `first` and keeps its request stream open. Returns the error the server
/// ended it with, and whether it ended while the client was still sending (the server did not wait for a half-close).
func sendAndHold<Message: Sendable, S: MessageSerializer>(
    _ client: GRPCClient<HTTP2ClientTransport.Posix>, _ first: Message, _ serializer: S,
    at here: Testing.SourceLocation = #_sourceLocation
) async -> (RPCError?, Bool) where S.Message == Message {
    let stillSending = Flag()
    let error = await #expect(throws: RPCError.self, sourceLocation: here) {
        try await client.bidirectionalStreaming(
            request: StreamingClientRequest(of: Message.self) { w in
                try await w.write(first)
                // The server ends the call without waiting for the client's half-close, which cancels this.
                do { try await Task.sleep(for: .seconds(30)) } catch { stillSending.set() }
            },
            descriptor: Envoy_Service_Discovery_V3_AggregatedDiscoveryService.Method.StreamAggregatedResources
                .descriptor,
            serializer: serializer, deserializer: ProtobufDeserializer<Response>(), options: .defaults
        ) { response in
            for try await _ in response.messages {}
        }
    }
    return (error, stillSending.isSet)
}

/// Bytes sent as they are: a request that is not a valid message.
struct RawBytesSerializer: MessageSerializer {
    func serialize<Bytes: GRPCContiguousBytes>(_ message: [UInt8]) throws -> Bytes { Bytes(message) }
}

/// Collects one HTTP/2 stream's response header blocks.
final class ResponseCollector: ChannelInboundHandler, @unchecked Sendable {
    // Sendable: NIO calls a handler on its channel's event loop only; its state is touched nowhere else.
    typealias InboundIn = HTTP2Frame.FramePayload
    let done: EventLoopPromise<[HPACKHeaders]>
    var blocks: [HPACKHeaders] = []
    init(done: EventLoopPromise<[HPACKHeaders]>) { self.done = done }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if case .headers(let h) = unwrapInboundIn(data) {
            blocks.append(h.headers)
            if h.endStream { done.succeed(blocks) }
        }
    }

    func channelInactive(context: ChannelHandlerContext) { done.succeed(blocks) }  // a no-op once succeeded
    func errorCaught(context: ChannelHandlerContext, error: any Error) { done.fail(error) }
}

/// Requests on one new HTTP/2 connection to a Unix socket, one stream each and one after the other, made with NIOHTTP2
/// itself: a gRPC client cannot send a GET or a wrong content type. Returns each response's header blocks.
func plainHTTP2Requests(unixPath: String, _ requests: [HPACKHeaders]) async throws -> [[HPACKHeaders]] {
    let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    do {
        // The HTTP/2 handler goes in before the connection is active, so it sends the client preface at once.
        let channel = try await ClientBootstrap(group: group)
            .channelInitializer { $0.configureHTTP2Pipeline(mode: .client, inboundStreamInitializer: nil).map { _ in } }
            .connect(unixDomainSocketPath: unixPath).get()
        let loop = channel.eventLoop
        var responses: [[HPACKHeaders]] = []
        for request in requests {
            let done = loop.makePromise(of: [HPACKHeaders].self)
            let stream = try await channel.pipeline.handler(type: HTTP2StreamMultiplexer.self).flatMap { multiplexer in
                let stream = loop.makePromise(of: Channel.self)
                multiplexer.createStreamChannel(promise: stream) {
                    $0.pipeline.addHandler(ResponseCollector(done: done))
                }
                return stream.futureResult
            }.get()
            try await stream.writeAndFlush(HTTP2Frame.FramePayload.headers(.init(headers: request, endStream: true)))
            // Bounded: a server that never answers fails the test instead of hanging it (a fulfilled promise ignores this).
            loop.scheduleTask(in: .seconds(10)) { done.fail(ChannelError.ioOnClosedChannel) }
            responses.append(try await done.futureResult.get())
        }
        try? await channel.close()
        try await group.shutdownGracefully()
        return responses
    } catch {
        try? await group.shutdownGracefully()
        throw error
    }
}

@Suite("ADS over gRPC: weir's HTTP/2 transport with a real gRPC client")
struct ADSTransportTests {
    @Test(
        "a SotW stream gets the config, its ACK gets no answer, a change is pushed, and the client's half-close ends the call with OK"
    )
    func sotwOverTheWire() async throws {
        try await withServedADS { cache, server, ads, _ in
            try cache.set("n1", snap([.cluster: ["a": "1"]]), checked: true)
            let (requests, send) = AsyncStream<Request>.makeStream()
            send.yield(request(.cluster))
            try await ads.streamAggregatedResources(
                requestProducer: { w in
                    for await r in requests { try await w.write(r) }
                },
                onResponse: { response in
                    var messages = response.messages.makeAsyncIterator()
                    let first = try #require(try await messages.next())
                    #expect(first.typeURL == ResourceType.cluster.rawValue)
                    #expect(first.resources.map { Array($0.value) } == [Array("a=1".utf8)])
                    #expect(first.controlPlane.identifier == "weir")
                    send.yield(request(.cluster, nonce: first.nonce, version: first.versionInfo))
                    #expect(
                        await until(5) {
                            server.service.status.first?.types["CDS"]?.lastAckedVersion == first.versionInfo
                        },
                        "\(server.service.status)")
                    #expect(server.service.status.first?.peer == "unix:", "a Unix socket client has no address")
                    try cache.set("n1", snap([.cluster: ["a": "1", "b": "2"]]), checked: true)
                    let second = try #require(try await messages.next())
                    #expect(
                        second.resources.count == 2,
                        "the change is the next message: the ACK got no response of its own")
                    #expect(second.versionInfo != first.versionInfo)
                    send.finish()
                    #expect(try await messages.next() == nil, "the call ends, with OK (an error status would throw)")
                })
            #expect(await noStreamsLeft(server, cache), "the ended stream is gone, and its watch")
        }
    }

    @Test("a delta stream gets the config and the names that do not exist in removed_resources")
    func deltaOverTheWire() async throws {
        try await withServedADS { cache, server, ads, _ in
            try cache.set("n1", snap([.cluster: ["a": "1"]]), checked: true)
            let (requests, send) = AsyncStream<DeltaRequest>.makeStream()
            send.yield(delta(.cluster, subscribe: ["a", "ghost"]))
            try await ads.deltaAggregatedResources(
                requestProducer: { w in
                    for await r in requests { try await w.write(r) }
                },
                onResponse: { response in
                    var messages = response.messages.makeAsyncIterator()
                    let first = try #require(try await messages.next())
                    #expect(first.resources.map(\.name) == ["a"])
                    #expect(first.removedResources == ["ghost"])
                    send.finish()
                    #expect(try await messages.next() == nil)
                })
        }
    }

    @Test(
        "over a real connection, a GET is HTTP 405 and a JSON request 415, and the connection then serves a gRPC call")
    func notGRPCOverTheWire() async throws {
        try await withServedADS { cache, server, _, _ in
            guard case .unix(let path) = server.listen else {
                Issue.record("not a unix socket")
                return
            }
            func request(_ method: String, _ contentType: String) -> HPACKHeaders {
                [
                    ":method": method, ":scheme": "http", ":path": ADSTransport.sotwPath, ":authority": "weir",
                    "content-type": contentType,
                ]
            }
            let r = try await plainHTTP2Requests(
                unixPath: path,
                [
                    request("GET", "application/grpc"), request("POST", "application/json"),
                    request("POST", "application/grpc"),
                ])
            #expect(r.count == 3)
            #expect(r.first?.map { $0.first(name: ":status") } == ["405"], "\(r)")
            #expect(r.dropFirst().first?.map { $0.first(name: ":status") } == ["415"], "\(r)")
            #expect(
                r.last?.first?.first(name: ":status") == "200",
                "a gRPC call after them on the same connection is served: \(r)")
            #expect(r.last?.last?.first(name: "grpc-status") == "0", "\(r)")
            #expect(await noStreamsLeft(server, cache))
        }
    }

    @Test("a first request without node.id ends the call with INVALID_ARGUMENT, saying why")
    func missingNode() async throws {
        try await withServedADS { cache, server, _, client in
            var noNode = request(.cluster)
            noNode.clearNode()
            let (error, stillSending) = await sendAndHold(client, noNode, ProtobufSerializer<Request>())
            #expect(error?.code == .invalidArgument)
            #expect(error?.message.contains("node.id") == true, "\(String(describing: error))")
            #expect(stillSending, "the call ended while the client was still sending")
            #expect(await noStreamsLeft(server, cache))
        }
    }

    @Test("a method weir does not serve is UNIMPLEMENTED; bytes that are not a request are INTERNAL")
    func badCalls() async throws {
        try await withServedADS { cache, server, _, client in
            try cache.set("n1", snap([.cluster: ["a": "1"]]), checked: true)
            let unknown = await #expect(throws: RPCError.self) {
                try await client.unary(
                    request: ClientRequest(message: Request()),
                    descriptor: MethodDescriptor(
                        fullyQualifiedService: "envoy.service.discovery.v3.AggregatedDiscoveryService",
                        method: "FetchEverything"),
                    serializer: ProtobufSerializer<Request>(), deserializer: ProtobufDeserializer<Response>(),
                    options: .defaults
                ) { try $0.message }
            }
            #expect(unknown?.code == .unimplemented)
            #expect(unknown?.message.contains("FetchEverything") == true)

            // Field 1, with a length that runs past the end.
            let (garbage, stillSending) = await sendAndHold(client, [0x0A, 0xFF, 0xFF, 0xFF], RawBytesSerializer())
            #expect(garbage?.code == .internalError)
            #expect(garbage?.message.contains("DiscoveryRequest") == true, "\(String(describing: garbage))")
            #expect(stillSending, "the call ended while the client was still sending")
            #expect(await noStreamsLeft(server, cache))
        }
    }

    @Test(
        "250 streams cancelled at once on one grpcio connection do not cost the connection: its other stream still gets pushes"
    )
    func cancellationStorm() async throws {
        // 250 RST_STREAMs, more than NIOHTTP2's default limit of 200 per 30 s (and its 200 stream errors a life).
        let (left, text) = try await storm(250)
        #expect(left == 1, "the first stream outlived the storm")
        #expect(text.contains("PUSHED"), "\(text)")
    }

    @Test("a flood of 600 RST_STREAMs within a second is more than a client's cancel: the connection is ended")
    func resetFlood() async throws {
        let (left, text) = try await storm(600)
        #expect(left == 0, "the connection outlived the flood")
        #expect(text.contains("FAILED"), "\(text)")
    }

    /// `ads_storm.py`: one stream and `n` more on one connection; the `n` cancelled at once, then a push. The streams
    /// left once the resets have settled, and the helper's output.
    func storm(_ n: Int) async throws -> (Int, String) {
        try await withServedADS { cache, server, _, _ in
            try cache.set("n1", snap([.cluster: ["a": "1"]]), checked: true)
            guard case .unix(let socket) = server.listen else {
                Issue.record("not on a Unix socket")
                return (-1, "")
            }
            // grpcio (C core, as in proxyless clients): grpc-swift's own client ends a connection that receives frames
            // for more than 32 streams it reset, so it cannot be the peer here.
            let p = Process()
            p.executableURL = URL(fileURLWithPath: venvPython)
            p.arguments = [helperScript("ads_storm.py"), socket, "\(n)"]
            let out = Pipe()
            let go = Pipe()
            p.standardOutput = out
            p.standardError = out
            p.standardInput = go
            try p.run()
            defer {
                if p.isRunning { kill(p.processIdentifier, SIGKILL) }
                p.waitUntilExit()
            }
            let output = { String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self) }
            guard await until(60, { server.service.status.count == n + 1 }) else {
                if p.isRunning { kill(p.processIdentifier, SIGKILL) }
                Issue.record("\(server.service.status.count) streams open: \(output())")
                return (-1, "")
            }
            go.fileHandleForWriting.write(Data("cancel\n".utf8))
            let settled = await until(15) { server.service.status.count <= 1 }
            #expect(settled, "\(server.service.status.count) streams left")
            // Settled for a moment: the flood's GOAWAY may still be on its way to the first stream.
            try await Task.sleep(for: .milliseconds(300))
            let left = server.service.status.count
            try cache.set("n1", snap([.cluster: ["a": "2"]]), checked: true)
            #expect(await until(20) { !p.isRunning })
            if p.isRunning { kill(p.processIdentifier, SIGKILL) }
            return (left, output())
        }
    }

    @Test(
        "the listen path: a file is refused and left as it is, a served socket is refused, a stale socket is replaced")
    func listenPath() async throws {
        let path = "/tmp/weir-ads-path-\(UUID().uuidString.prefix(8))"
        defer { unlink(path) }
        let cache = SnapshotCache(stateDirectory: nil)

        try "keep me\n".write(toFile: path, atomically: false, encoding: .utf8)
        await #expect(throws: UnixSocketPath.Failure.notASocket(path)) {
            try await XDSServer(listen: .unix(path: path), cache: cache).serve()
        }
        #expect(try String(contentsOfFile: path, encoding: .utf8) == "keep me\n")
        unlink(path)

        // A stale socket: bound, then its process gone (here: the descriptor closed), the file left behind.
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var sun = sockaddr_un()
        sun.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &sun.sun_path) { $0.copyBytes(from: Array(path.utf8) + [0]) }
        let rc = withUnsafePointer(to: &sun) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        #expect(rc == 0)
        close(fd)

        let first = XDSServer(listen: .unix(path: path), cache: cache)
        let (bound, announce) = AsyncStream<String>.makeStream()
        let serving = Task {
            defer { announce.finish() }
            try await first.serve { announce.yield($0) }
        }
        var addresses = bound.makeAsyncIterator()
        #expect(await addresses.next() == "unix:\(path)", "the stale socket was replaced")
        await #expect(throws: UnixSocketPath.Failure.inUse(path)) {
            try await XDSServer(listen: .unix(path: path), cache: cache).serve()
        }
        serving.cancel()
        try await serving.value
    }
}

@Suite("rate-limited warnings")
struct RateLimiterTests {
    @Test("a key is admitted perMinute times a minute, then dropped, and the next window says how many were dropped")
    func window() {
        let limiter = RateLimiter(perMinute: 2)
        let t0: UInt64 = 1_000_000_000_000
        #expect(limiter.admit("k", now: t0) == .log)
        #expect(limiter.admit("k", now: t0 + 1) == .log)
        #expect(limiter.admit("k", now: t0 + 2) == .drop)
        #expect(limiter.admit("other", now: t0 + 3) == .log)
        #expect(limiter.admit("k", now: t0 + 61_000_000_000) == .logSuppressed(1))
    }

    @Test(
        "a time read before another thread started the window (so earlier than its start) counts in that window, without a trap"
    )
    func earlierNow() {
        // Two listeners out of descriptors at once share one limiter: each reads the clock, then takes the lock.
        let limiter = RateLimiter(perMinute: 1)
        let t0: UInt64 = 1_000_000_000_000
        #expect(limiter.admit("accept", now: t0 + 5) == .log)
        #expect(limiter.admit("accept", now: t0) == .drop)
    }
}
