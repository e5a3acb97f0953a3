import EnvoyAPI
import Foundation
import NIOCore
import NIOEmbedded
import NIOHPACK
import NIOHTTP2
import SwiftProtobuf
import Testing
import WeirMesh
@testable import WeirXDS

/// One ADS stream handler in NIO's EmbeddedChannel: frames in, frames out, every byte boundary under the test's control.
struct HandlerRig {
    let cache = SnapshotCache(stateDirectory: nil)
    let service: ADSService
    let handler: ADSStreamHandler
    let channel: EmbeddedChannel

    init() throws {
        service = ADSService(cache: cache)
        handler = ADSStreamHandler(service: service, peer: "test")
        channel = EmbeddedChannel(handler: handler)
        try cache.set("n1", snap([.cluster: ["a": "1"], .listener: ["l": "1"]]), checked: true)
    }

    static func headers(
        path: String = ADSTransport.sotwPath, method: String = "POST", contentType: String = "application/grpc",
        extra: [(String, String)] = []
    ) -> HPACKHeaders {
        var h: HPACKHeaders = [
            ":method": method, ":scheme": "http", ":path": path, ":authority": "weir", "content-type": contentType,
            "te": "trailers",
        ]
        for (k, v) in extra { h.add(name: k, value: v) }
        return h
    }

    func open(_ h: HPACKHeaders = HandlerRig.headers(), endStream: Bool = false) throws {
        try channel.writeInbound(HTTP2Frame.FramePayload.headers(.init(headers: h, endStream: endStream)))
    }

    func send(_ bytes: [UInt8], endStream: Bool = false) throws {
        try channel.writeInbound(
            HTTP2Frame.FramePayload.data(.init(data: .byteBuffer(ByteBuffer(bytes: bytes)), endStream: endStream)))
    }

    /// Every frame written so far.
    func written() throws -> [HTTP2Frame.FramePayload] {
        var out: [HTTP2Frame.FramePayload] = []
        while let f = try channel.readOutbound(as: HTTP2Frame.FramePayload.self) { out.append(f) }
        return out
    }

    func finish() { _ = try? channel.finish() }
}

/// A message as gRPC frames it: flag, 4-byte length, bytes.
func grpcFramed(_ m: some SwiftProtobuf.Message, compressed: Bool = false) throws -> [UInt8] {
    let body: [UInt8] = try m.serializedBytes()
    let n = UInt32(body.count)
    return [compressed ? 1 : 0, UInt8(n >> 24), UInt8((n >> 16) & 0xFF), UInt8((n >> 8) & 0xFF), UInt8(n & 0xFF)] + body
}

/// What the frames say: "headers 200", "CDS", "LDS", "trailers 0", "rst", ...
func describe(_ frames: [HTTP2Frame.FramePayload]) -> [String] {
    frames.map { f in
        switch f {
        case .headers(let h):
            if let status = h.headers.first(name: "grpc-status") {
                return "trailers \(status)" + (h.endStream ? "" : " (open)")
            }
            return "headers \(h.headers.first(name: ":status") ?? "?")" + (h.endStream ? " end" : "")
        case .data(let d):
            guard case .byteBuffer(let b) = d.data,
                let r = try? Envoy_Service_Discovery_V3_DiscoveryResponse(
                    serializedBytes: Array(b.readableBytesView.dropFirst(5))),
                let t = ResourceType(rawValue: r.typeURL)
            else { return "data ?" }
            return t.shortName
        case .rstStream(let code): return code == .noError ? "rst noError" : "rst \(code)"
        default: return "other"
        }
    }
}

func trailerMessage(_ frames: [HTTP2Frame.FramePayload]) -> String? {
    for case .headers(let h) in frames { if let m = h.headers.first(name: "grpc-message") { return m } }
    return nil
}

@Suite("ADS stream handler: gRPC framing and call endings, frame by frame")
struct ADSStreamHandlerTests {
    @Test(
        "messages split across DATA frames byte by byte, and two in one frame, are each decoded in order; no read bytes are kept"
    )
    func framing() throws {
        let rig = try HandlerRig()
        defer { rig.finish() }
        try rig.open()
        let cds = try grpcFramed(request(.cluster))
        for b in cds { try rig.send([b]) }
        #expect(describe(try rig.written()) == ["headers 200", "CDS"])
        #expect(rig.handler.partial == nil, "no buffer held between messages")

        // Two messages in one frame, then a third split across it and the next frame.
        var later = [request(.listener), request(.route, names: ["r"]), request(.endpoint, names: ["e"])]
        for i in later.indices { later[i].clearNode() }
        let lds = try grpcFramed(later[0])
        let rds = try grpcFramed(later[1])
        let eds = try grpcFramed(later[2])
        try rig.send(lds + rds + eds.prefix(3))
        let answered = describe(try rig.written())
        #expect(answered == ["LDS", "RDS"], "both whole messages answered, in order")
        #expect(rig.handler.partial?.readerIndex == 0, "the bytes already read are let go")
        #expect(rig.handler.partial?.readableBytes == 3)
        #expect(rig.service.status.first?.types["RDS"]?.pendingNames == ["r"], "the RDS request arrived whole")
        try rig.send(Array(eds.dropFirst(3)))
        #expect(describe(try rig.written()) == ["EDS"])
        #expect(rig.handler.partial == nil)
        #expect(rig.service.status.first?.types["EDS"]?.pendingNames == ["e"], "the EDS request arrived whole")
    }

    @Test(
        "END_STREAM on an empty DATA frame ends the call with OK after what is queued; a change queued before it is written first"
    )
    func halfClose() throws {
        let rig = try HandlerRig()
        defer { rig.finish() }
        try rig.open()
        try rig.send(try grpcFramed(request(.cluster)))
        #expect(describe(try rig.written()) == ["headers 200", "CDS"])
        // A change arrives (its write waits for the event loop), then the client half-closes before the loop runs.
        try rig.cache.set("n1", snap([.cluster: ["a": "2"], .listener: ["l": "1"]]), checked: true)
        try rig.send([], endStream: true)
        rig.channel.embeddedEventLoop.run()
        #expect(describe(try rig.written()) == ["CDS", "trailers 0"])
        #expect(rig.service.streams.withLock { $0.isEmpty })
        #expect(rig.cache.state.withLock { $0.watchers.isEmpty })
    }

    @Test("a request stream that ends inside a message is INTERNAL")
    func endsInsideMessage() throws {
        let rig = try HandlerRig()
        defer { rig.finish() }
        try rig.open()
        try rig.send(Array(try grpcFramed(request(.cluster)).prefix(7)), endStream: true)
        let frames = try rig.written()
        #expect(describe(frames) == ["headers 200", "trailers 13"])
        #expect(trailerMessage(frames) == "the request stream ended inside a message")
    }

    @Test(
        "what is not a gRPC call to ADS gets HTTP 405 or 415, or a trailers-only UNIMPLEMENTED, and the stream is reset",
        arguments: [
            (HandlerRig.headers(method: "GET"), ["headers 405 end", "rst noError"]),
            (HandlerRig.headers(contentType: "application/grpc-web"), ["headers 415 end", "rst noError"]),
            (HandlerRig.headers(contentType: "application/json"), ["headers 415 end", "rst noError"]),
            (
                HandlerRig.headers(path: "/envoy.service.discovery.v3.AggregatedDiscoveryService/Nope"),
                ["trailers 12", "rst noError"]
            ),
            (HandlerRig.headers(extra: [("grpc-encoding", "gzip")]), ["trailers 12", "rst noError"]),
        ])
    func notADS(headers: HPACKHeaders, expected: [String]) throws {
        let rig = try HandlerRig()
        defer { rig.finish() }
        try rig.open(headers)
        #expect(describe(try rig.written()) == expected)
        #expect(rig.service.streams.withLock { $0.isEmpty })
    }

    @Test("content types: application/grpc alone, with +codec or ;parameters")
    func contentTypes() {
        #expect(ADSStreamHandler.isGRPC(contentType: "application/grpc"))
        #expect(ADSStreamHandler.isGRPC(contentType: "application/grpc+proto"))
        #expect(ADSStreamHandler.isGRPC(contentType: "application/grpc;charset=utf-8"))
        #expect(!ADSStreamHandler.isGRPC(contentType: "application/grpc-web+proto"))
        #expect(!ADSStreamHandler.isGRPC(contentType: "text/plain"))
    }

    @Test(
        "a compressed message is INTERNAL, a length over 16 MiB RESOURCE_EXHAUSTED, a first request without node INVALID_ARGUMENT"
    )
    func badMessages() throws {
        let compressed = try HandlerRig()
        defer { compressed.finish() }
        try compressed.open()
        try compressed.send(try grpcFramed(request(.cluster), compressed: true))
        #expect(describe(try compressed.written()) == ["headers 200", "trailers 13", "rst noError"])

        let huge = try HandlerRig()
        defer { huge.finish() }
        try huge.open()
        try huge.send([0, 0x01, 0x00, 0x00, 0x01])
        let frames = try huge.written()
        #expect(describe(frames) == ["headers 200", "trailers 8", "rst noError"])
        #expect(trailerMessage(frames)?.contains("16777217 bytes") == true)

        let noNode = try HandlerRig()
        defer { noNode.finish() }
        try noNode.open()
        var r = request(.cluster)
        r.clearNode()
        try noNode.send(try grpcFramed(r), endStream: true)
        let nf = try noNode.written()
        #expect(describe(nf) == ["headers 200", "trailers 3"])
        #expect(noNode.service.streams.withLock { $0.isEmpty })
    }

    @Test(
        "grpc-timeout ends the call with DEADLINE_EXCEEDED when it expires and not before; a malformed one is INTERNAL")
    func deadline() throws {
        let rig = try HandlerRig()
        defer { rig.finish() }
        try rig.open(HandlerRig.headers(extra: [("grpc-timeout", "250m")]))
        try rig.send(try grpcFramed(request(.cluster)))
        #expect(describe(try rig.written()) == ["headers 200", "CDS"])
        rig.channel.embeddedEventLoop.advanceTime(by: .milliseconds(249))
        #expect(try rig.written().isEmpty)
        #expect(rig.service.streams.withLock { $0.count } == 1)
        rig.channel.embeddedEventLoop.advanceTime(by: .milliseconds(1))
        let frames = try rig.written()
        #expect(describe(frames) == ["trailers 4", "rst noError"])
        #expect(trailerMessage(frames) == "deadline exceeded (grpc-timeout 250m)")
        #expect(rig.service.streams.withLock { $0.isEmpty })
        #expect(rig.cache.state.withLock { $0.watchers.isEmpty })

        // A call that ends first leaves nothing for its deadline to do.
        let early = try HandlerRig()
        defer { early.finish() }
        try early.open(HandlerRig.headers(extra: [("grpc-timeout", "1S")]))
        try early.send(try grpcFramed(request(.cluster)), endStream: true)
        #expect(describe(try early.written()) == ["headers 200", "CDS", "trailers 0"])
        #expect(early.handler.deadline == nil, "the deadline is cancelled when the call ends")
        early.channel.embeddedEventLoop.advanceTime(by: .seconds(2))
        #expect(try early.written().isEmpty)

        // So does a stream the client resets (or whose connection goes) before the deadline.
        let reset = try HandlerRig()
        try reset.open(HandlerRig.headers(extra: [("grpc-timeout", "1S")]))
        #expect(reset.handler.deadline != nil)
        try reset.channel.close().wait()
        #expect(reset.handler.deadline == nil)
        #expect(reset.service.streams.withLock { $0.isEmpty })
        reset.finish()

        for bad in ["", "5", "123456789S", "10x", "-1S", "1.5S", "S"] {
            let malformed = try HandlerRig()
            defer { malformed.finish() }
            try malformed.open(HandlerRig.headers(extra: [("grpc-timeout", bad)]))
            let f = try malformed.written()
            #expect(describe(f) == ["trailers 13", "rst noError"], "grpc-timeout '\(bad)'")
            #expect(trailerMessage(f) == "malformed grpc-timeout '\(bad)'")
            #expect(malformed.service.streams.withLock { $0.isEmpty })
        }
    }

    @Test(
        "grpc-timeout units, and a timeout too long for 64 bits of nanoseconds",
        arguments: [
            ("2H", Int64(7_200_000_000_000)), ("3M", 180_000_000_000), ("12345678S", 12_345_678_000_000_000),
            ("7m", 7_000_000),
            ("7u", 7_000), ("99999999n", 99_999_999), ("0n", 0), ("99999999H", Int64.max),
        ])
    func timeoutUnits(_ text: String, _ nanoseconds: Int64) {
        #expect(ADSStreamHandler.timeoutNanoseconds(text) == nanoseconds)
    }

    @Test("grpc-message is percent-encoded: non-ASCII bytes and % become %XX")
    func percentEncoding() {
        #expect(ADSStreamHandler.percentEncoded("regex 'a[' missing ]") == "regex 'a[' missing ]")
        #expect(ADSStreamHandler.percentEncoded("100% ü\n") == "100%25 %C3%BC%0A")
    }
}

/// Counts the flushes that reach the socket side of the pipeline.
final class FlushCounter: ChannelOutboundHandler {
    typealias OutboundIn = Any
    var flushes = 0
    func flush(context: ChannelHandlerContext) {
        flushes += 1
        context.flush()
    }
}

@Suite("a connection's flushes")
struct FlushCoalescerTests {
    /// A channel with a FlushCoalescer, and the counter of the flushes that pass it on the socket's side.
    static func coalescing() throws -> (EmbeddedChannel, FlushCounter) {
        let counter = FlushCounter()
        let channel = EmbeddedChannel()
        try channel.pipeline.syncOperations.addHandler(counter)
        try channel.pipeline.syncOperations.addHandler(FlushCoalescer())
        return (channel, counter)
    }

    @Test("the flushes of one pass through the loop's tasks reach the socket as one, with every write before them")
    func coalesced() throws {
        let (channel, counter) = try Self.coalescing()
        for text in ["a", "b", "c"] {
            channel.write(ByteBuffer(string: text), promise: nil)
            channel.flush()
        }
        #expect(counter.flushes == 0)
        #expect(try channel.readOutbound(as: ByteBuffer.self) == nil, "nothing is out before the deferred flush")
        channel.embeddedEventLoop.run()
        #expect(counter.flushes == 1)
        var out = ""
        while let b = try channel.readOutbound(as: ByteBuffer.self) { out += String(buffer: b) }
        #expect(out == "abc")
        // A later flush is deferred again.
        channel.write(ByteBuffer(string: "d"), promise: nil)
        channel.flush()
        channel.embeddedEventLoop.run()
        #expect(counter.flushes == 2)
        #expect(try channel.readOutbound(as: ByteBuffer.self).map { String(buffer: $0) } == "d")
        _ = try channel.finish()
    }

    @Test("a close flushes what waits first, as it passes: a GOAWAY written just before it goes out ahead of it")
    func closeFlushes() throws {
        let (channel, counter) = try Self.coalescing()
        channel.write(ByteBuffer(string: "goaway"), promise: nil)
        channel.flush()
        #expect(counter.flushes == 0)
        // The loop does not run between the flush and the close: only the close can have flushed.
        channel.close(promise: nil)
        #expect(counter.flushes == 1)
        #expect(try channel.readOutbound(as: ByteBuffer.self).map { String(buffer: $0) } == "goaway")
        channel.embeddedEventLoop.run()
        #expect(counter.flushes == 1, "the deferred flush, once the close has flushed, does nothing")
    }
}
