import Foundation
import Logging
import NIOCore
import NIOHPACK
import NIOHTTP2
import NIOPosix
import Synchronization
import WeirNetns
import WeirSystem

/// gRPC over HTTP/2, server side, for exactly the two ADS methods: on NIO's event loops, one stream handler per
/// HTTP/2 stream and no task per stream.
///
/// What it implements of gRPC (the HTTP/2 protocol document of grpc/grpc): `POST` with `content-type:
/// application/grpc[+proto|;…]` (anything else: HTTP 415); the path names the method (anything else: trailers-only
/// response with `UNIMPLEMENTED`); length-prefixed messages, uncompressed (a compressed one, or a `grpc-encoding`
/// other than `identity`, ends the call with `UNIMPLEMENTED`/`INTERNAL` and `grpc-accept-encoding: identity`); a
/// request larger than 16 MiB ends it with `RESOURCE_EXHAUSTED`; a `grpc-timeout` that expires ends it with
/// `DEADLINE_EXCEEDED` (a malformed one at once, with `INTERNAL`); the client's half-close ends it with `OK`; an error
/// ends it with `grpc-status` and a percent-encoded `grpc-message`. HTTP/2 itself (flow control, PING, SETTINGS,
/// RST_STREAM, GOAWAY) is NIOHTTP2's.
final class ADSTransport: Sendable {
    static let sotwPath = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
    static let deltaPath = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"
    static let maxRequestBytes = 16 << 20
    /// RST_STREAMs (and, apart, stream errors) a connection may send in any second: a client cancelling up to this
    /// many streams at once keeps its connection.
    static let resetsPerSecond = 256
    /// PING, SETTINGS and PRIORITY frames a connection may send in any second.
    static let controlFramesPerSecond = 128

    let service: ADSService
    let group: any EventLoopGroup
    /// Open connections, so a stop can say GOAWAY to each.
    let connections = Mutex<[ObjectIdentifier: (channel: any Channel, scope: String?)]>([:])

    init(service: ADSService, group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton) {
        self.service = service
        self.group = group
    }

    /// Binds and starts accepting; the returned channel is the listener.
    func bind(_ address: XDSAddress) async throws -> any Channel {
        let isTCP: Bool
        if case .tcp = address { isTCP = true } else { isTCP = false }
        let bootstrap = self.bootstrap(isTCP: isTCP, scope: nil)
        do {
            switch address {
            case .unix(let path):
                try UnixSocketPath.claim(path)
                let channel = try await bootstrap.bind(unixDomainSocketPath: path).get()
                // Sidecars run as their own uid (App Mesh's Envoy as 1337), and connecting takes write permission: the
                // socket is as open as a loopback port. Who reaches it is the directory's to decide.
                try? FileSystem.setMode(path, 0o666)
                return channel
            case .tcp(let e):
                return try await bootstrap.bind(host: e.host, port: Int(e.port)).get()
            }
        } catch let e as IOError {
            throw XDSBindError(address: address, reason: Posix.describe(e.errnoCode))
        }
    }

    /// Accepts on a socket already bound and listening (made inside a pod's namespace); NIO owns it from now on.
    /// Streams arriving on it are held to `scope`.
    func adopt(listening socket: Int32, isTCP: Bool, scope: XDSEndpointScope) async throws -> any Channel {
        try await bootstrap(isTCP: isTCP, scope: scope).withBoundSocket(socket).get()
    }

    func bootstrap(isTCP: Bool, scope: XDSEndpointScope?) -> ServerBootstrap {
        ServerBootstrap(group: group)
            // Out of descriptors, accept pauses for a second instead of spinning.
            .serverChannelInitializer { [service] channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(AcceptPause(logger: service.logger))
                }
            }
            .serverChannelOption(.backlog, value: 1024)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            // Small reads: an ADS connection is mostly idle and its requests (ACKs) are a few hundred bytes. The
            // channel keeps its read buffer at the largest size it ever grew to, and NIOHTTP2's frame parser keeps
            // what it accumulated from one read: an Envoy's first request (its node lists every extension, 61 KB
            // in Envoy 1.40) read 64 KiB at a time left ~65 KiB of both per sidecar (heaptrack). Read at most 2 KiB
            // at a time (10 streams' ACKs), that request takes 30 reads, once.
            .childChannelOption(
                .recvAllocator, value: AdaptiveRecvByteBufferAllocator(minimum: 64, initial: 256, maximum: 2048)
            )
            .childChannelInitializer { [self] channel in
                channel.eventLoop.makeCompletedFuture {
                    if isTCP { try channel.syncOptions?.setOption(.socketOption(.tcp_nodelay), value: 1) }
                    try self.configure(channel, scope: scope)
                }
            }
    }

    func configure(_ channel: any Channel, scope: XDSEndpointScope? = nil) throws {
        var connection = NIOHTTP2Handler.ConnectionConfiguration()
        // Many proxyless clients (or a relay) multiplex their streams on one connection; NIO's own default is 100,
        // and a client that opens the 101st before it has read the server's SETTINGS is refused.
        connection.initialSettings = [
            HTTP2Setting(parameter: .maxConcurrentStreams, value: 16384),
            HTTP2Setting(parameter: .maxHeaderListSize, value: HPACKDecoder.defaultMaxHeaderListSize),
        ]
        // Requests are small (ACKs, subscriptions). Streams start at HTTP/2's 64 KiB window; once a client sends,
        // NIOHTTP2's WINDOW_UPDATEs take the connection and its streams to 1 MiB, so a burst of many streams'
        // requests does not wait for window.
        connection.targetWindowSize = 1 << 20
        // NIOHTTP2's abuse limits (200 of each per 30 s) are for servers on the open internet. Here they cut
        // legitimate clients off with GOAWAY ENHANCE_YOUR_CALM: a grpcio process that exits resets all its streams at
        // once, and grpc clients send a BDP PING with each burst of data. weir listens on a Unix socket or loopback,
        // for the node's own sidecars: the limits stay, sized for that. Each limit is a count per window, and
        // NIOHTTP2 reserves one timestamp (8 bytes) per count for every connection when it opens: counts of 65536
        // cost 1.2 MiB of address space and ~12 KiB of resident memory per sidecar connection (heaptrack, 1000
        // idle connections). So the windows are short and the counts small: a burst as large as a client's
        // streams on one connection is legitimate (the sidecar's one, a proxyless client's few, 250 of the
        // load generator's), a flood sustained for a second is not.
        connection.controlFrameRateLimit.maximumCount = Self.controlFramesPerSecond
        connection.controlFrameRateLimit.windowLength = .seconds(1)
        // Frames for a stream the client has just reset (our trailers crossing its RST_STREAM) are stream errors, and
        // NIOHTTP2 counts them for the connection's whole life: the default of 200 ends a sidecar's long-lived
        // connection after 200 such races. This count is switched off (the per-second stream error limit below stays).
        connection.maximumConnectionGlitches = 1 << 30
        var stream = NIOHTTP2Handler.StreamConfiguration()
        stream.targetWindowSize = 1 << 20
        stream.streamResetFrameRateLimit.maximumCount = Self.resetsPerSecond
        stream.streamResetFrameRateLimit.windowLength = .seconds(1)
        stream.streamErrorRateLimit.maximumCount = Self.resetsPerSecond
        stream.streamErrorRateLimit.windowLength = .seconds(1)
        let peer = Self.peerName(channel.remoteAddress)
        // Between the socket and NIOHTTP2: a publish wakes every stream of the connection, each flushing its own
        // response; the socket is written once for all of them.
        try channel.pipeline.syncOperations.addHandler(FlushCoalescer())
        _ = try channel.pipeline.syncOperations.configureHTTP2Pipeline(
            mode: .server, connectionConfiguration: connection, streamConfiguration: stream
        ) { [service] streamChannel in
            streamChannel.eventLoop.makeCompletedFuture {
                try streamChannel.pipeline.syncOperations.addHandler(
                    ADSStreamHandler(service: service, peer: peer, scope: scope))
            }
        }
        try channel.pipeline.syncOperations.addHandler(ConnectionErrorLogger(logger: service.logger, peer: peer))
        let id = ObjectIdentifier(channel)
        connections.withLock { $0[id] = (channel, scope?.name) }
        channel.closeFuture.whenComplete { [self] _ in self.connections.withLock { _ = $0.removeValue(forKey: id) } }
    }

    /// Stops listening, tells every connection GOAWAY, and closes them once the frames are out, or after 2 s for a
    /// client that does not read.
    func stop(listener: any Channel, scope: String? = nil, all: Bool = true) async {
        try? await listener.close()
        let open = connections.withLock { $0.values.filter { all || $0.scope == scope }.map(\.channel) }
        for c in open {
            let goAway = HTTP2Frame(
                streamID: .rootStream, payload: .goAway(lastStreamID: .maxID, errorCode: .noError, opaqueData: nil))
            c.writeAndFlush(goAway).whenComplete { _ in c.close(promise: nil) }
            c.eventLoop.scheduleTask(in: .seconds(2)) { c.close(promise: nil) }
        }
        for c in open { try? await c.closeFuture.get() }
    }

    /// The peer as grpc names it: `ipv4:ADDRESS:PORT`, `ipv6:[ADDRESS]:PORT`, `unix:PATH`.
    static func peerName(_ address: NIOCore.SocketAddress?) -> String {
        guard let address else { return "unknown" }
        switch address.protocol {
        case .inet: return "ipv4:" + hostPort(address)
        case .inet6: return "ipv6:" + hostPort(address)
        default: return hostPort(address)
        }
    }

    /// `ADDRESS:PORT`, `[ADDRESS]:PORT`, or `unix:PATH`: how weir writes addresses (`--listen`, logs).
    static func hostPort(_ address: NIOCore.SocketAddress) -> String {
        switch address.protocol {
        case .inet: return "\(address.ipAddress ?? ""):\(address.port ?? 0)"
        case .inet6: return "[\(address.ipAddress ?? "")]:\(address.port ?? 0)"
        default: return "unix:\(address.pathname ?? "")"
        }
    }
}

/// ADS cannot listen on its address.
public struct XDSBindError: Error, Sendable, CustomStringConvertible {
    public let address: XDSAddress
    public let reason: String
    public var description: String { "cannot listen on \(address): \(reason)" }
}

/// Turns the flushes of one pass through the event loop's queued tasks into one: the first flush is deferred to a
/// task queued behind the work already waiting (the other streams' drains after a publish), and the flushes before it
/// runs ride along. A connection's streams are each woken by a task of their own, and each flushes: without this,
/// 10 streams on a connection cost 10 writes to the socket and 10 wake-ups of the client.
final class FlushCoalescer: ChannelOutboundHandler {
    typealias OutboundIn = Any
    var scheduled = false

    func flush(context: ChannelHandlerContext) {
        guard !scheduled else { return }
        scheduled = true
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        context.eventLoop.execute {
            let (handler, context) = bound.value
            guard handler.scheduled else { return }
            handler.scheduled = false
            context.flush()
        }
    }

    /// What was written goes out before the close (a GOAWAY NIOHTTP2 writes and then closes on).
    func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        if scheduled {
            scheduled = false
            context.flush()
        }
        context.close(mode: mode, promise: promise)
    }
}

/// Logs the errors NIOHTTP2 reports on a connection. It handles them itself: a stream error (a frame for a stream
/// already reset, say) costs only that stream; a connection error is answered with GOAWAY and the connection closes.
final class ConnectionErrorLogger: ChannelInboundHandler {
    typealias InboundIn = Any
    let logger: Logger
    let peer: String
    init(logger: Logger, peer: String) {
        self.logger = logger
        self.peer = peer
    }

    /// At most this many warnings per peer a minute: a peer sending garbage cannot flood the log.
    static let warnings = RateLimiter(perMinute: 10)

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // A frame for a stream that has just ended is the usual race of a client cancelling; anything else is news,
        // and the end of the connection: a peer that breaks the protocol once is not read further.
        let benign = error is NIOHTTP2Errors.NoSuchStream || error is NIOHTTP2Errors.StreamClosed
        if benign {
            logger.debug("ADS connection error", metadata: ["peer": "\(peer)", "error": "\(error)"])
            return
        }
        switch Self.warnings.admit(peer) {
        case .log:
            logger.warning("ADS connection error; closing it", metadata: ["peer": "\(peer)", "error": "\(error)"])
        case .logSuppressed(let n):
            logger.warning(
                "ADS connection error; closing it",
                metadata: ["peer": "\(peer)", "error": "\(error)", "suppressed": "\(n)"])
        case .drop: break
        }
        context.close(promise: nil)
    }
}

/// Admits at most `perMinute` events per key each minute; says how many were dropped when it admits again.
final class RateLimiter: Sendable {
    enum Verdict: Equatable {
        case log
        case logSuppressed(Int)
        case drop
    }
    struct Window {
        var start: UInt64
        var count: Int
        var dropped: Int
    }
    let perMinute: Int
    let windows = Mutex<[String: Window]>([:])

    init(perMinute: Int) { self.perMinute = perMinute }

    func admit(_ key: String, now: UInt64 = DispatchTime.now().uptimeNanoseconds) -> Verdict {
        // `now` is read before the lock, so another thread may have started a window after it: time since a start
        // in the future is zero, not an unsigned underflow.
        func since(_ start: UInt64) -> UInt64 { now > start ? now - start : 0 }
        return windows.withLock { w in
            if w.count > 10_000 { w = w.filter { since($0.value.start) < 60_000_000_000 } }
            var window = w[key] ?? Window(start: now, count: 0, dropped: 0)
            if since(window.start) >= 60_000_000_000 { window = Window(start: now, count: 0, dropped: window.dropped) }
            defer { w[key] = window }
            guard window.count < perMinute else {
                window.dropped += 1
                return .drop
            }
            window.count += 1
            if window.dropped > 0 {
                let n = window.dropped
                window.dropped = 0
                return .logSuppressed(n)
            }
            return .log
        }
    }
}

/// One HTTP/2 stream: one ADS call. Lives on the connection's event loop; only `wake` is called from elsewhere, and
/// it hops onto the loop.
final class ADSStreamHandler: ChannelInboundHandler {
    typealias InboundIn = HTTP2Frame.FramePayload
    typealias OutboundOut = HTTP2Frame.FramePayload

    let service: ADSService
    let peer: String
    let scope: XDSEndpointScope?
    var context: ChannelHandlerContext?
    var call: (any ADSCall)?
    /// Bytes of a request message not yet whole; `nil` between messages, so an idle stream holds no buffer.
    var partial: ByteBuffer?
    var sentHeaders = false
    var finished = false
    /// The client ended its side (END_STREAM): the call ends with OK once what is queued is written.
    var halfClosed = false
    /// END_STREAM has arrived, even if the messages of its frame are still being read: no RST_STREAM is needed to end
    /// the stream.
    var clientEnded = false
    /// `drain` is running: a flush that makes the stream writable again re-enters it, and that call only asks for
    /// another pass.
    var draining = false
    var drainAgain = false
    /// The end the client's `grpc-timeout` set, when it sent one.
    var deadline: Scheduled<Void>?

    init(service: ADSService, peer: String, scope: XDSEndpointScope? = nil) {
        self.service = service
        self.peer = peer
        self.scope = scope
    }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !finished else { return }
        let payload = unwrapInboundIn(data)
        switch payload {
        case .headers(let h) where h.endStream: clientEnded = true
        case .data(let d) where d.endStream: clientEnded = true
        default: break
        }
        switch payload {
        case .headers(let h):
            if call == nil {
                start(context, h.headers)
            }
            if h.endStream { clientFinished(context) }
        case .data(let d):
            guard call != nil else { return }
            // END_STREAM often comes on an empty frame.
            if case .byteBuffer(let bytes) = d.data, bytes.readableBytes > 0 {
                if partial == nil { partial = bytes } else { partial!.writeImmutableBuffer(bytes) }
                readMessages(context)
            }
            if d.endStream { clientFinished(context) }
        default:
            break
        }
    }

    /// The client's END_STREAM: the call ends once the responses already queued are out (or at once, with INTERNAL,
    /// when it ended in the middle of a message).
    func clientFinished(_ context: ChannelHandlerContext) {
        guard !finished else { return }
        halfClosed = true
        if (partial?.readableBytes ?? 0) > 0 {
            finish(
                context, status: ADSCallFailure.Status.internal.rawValue,
                message: "the request stream ended inside a message")
            return
        }
        drain()
    }

    /// `application/grpc`, alone or followed by `+codec` or `;parameters` (not `application/grpc-web`).
    static func isGRPC(contentType: String) -> Bool {
        guard contentType.hasPrefix("application/grpc") else { return false }
        let rest = contentType.dropFirst("application/grpc".count)
        return rest.isEmpty || rest.hasPrefix("+") || rest.hasPrefix(";")
    }

    /// The request's headers: which method, and whether we can serve it.
    func start(_ context: ChannelHandlerContext, _ headers: HPACKHeaders) {
        let post = headers.first(name: ":method") == "POST"
        guard post, Self.isGRPC(contentType: headers.first(name: "content-type") ?? "") else {
            // Not gRPC at all: plain HTTP says so (405 for the method, 415 for the content type), and the stream ends.
            sentHeaders = true
            finished = true
            let h: HPACKHeaders = [":status": post ? "415" : "405", "content-type": "text/plain"]
            context.write(wrapOutboundOut(.headers(.init(headers: h, endStream: true))), promise: nil)
            if !clientEnded { context.write(wrapOutboundOut(.rstStream(.noError)), promise: nil) }
            context.flush()
            return
        }
        if let encoding = headers.first(name: "grpc-encoding"), encoding != "identity" {
            finish(
                context, status: ADSCallFailure.Status.unimplemented.rawValue,
                message: "compression \(encoding) is not supported; send identity")
            return
        }
        let wake = Self.waker(self, context)
        switch headers.first(name: ":path") {
        case ADSTransport.sotwPath?:
            call = StreamSession(machine: SotWMachine(), peer: peer, scope: scope, wake: wake)
        case ADSTransport.deltaPath?:
            call = StreamSession(machine: DeltaMachine(), peer: peer, scope: scope, wake: wake)
        case let path:
            finish(
                context, status: ADSCallFailure.Status.unimplemented.rawValue,
                message: "unknown method \(path ?? "(none)")")
            return
        }
        if let timeout = headers.first(name: "grpc-timeout") {
            guard let nanoseconds = Self.timeoutNanoseconds(timeout) else {
                finish(
                    context, status: ADSCallFailure.Status.internal.rawValue,
                    message: "malformed grpc-timeout '\(timeout)'")
                return
            }
            let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
            // A deadline years away is as good as none, and would overflow the loop's clock.
            if nanoseconds < Self.longestDeadline {
                deadline = context.eventLoop.scheduleTask(in: .nanoseconds(nanoseconds)) {
                    let handler = bound.value
                    guard let context = handler.context else { return }
                    handler.finish(
                        context, status: ADSCallFailure.Status.deadlineExceeded.rawValue,
                        message: "deadline exceeded (grpc-timeout \(timeout))")
                }
            }
        }
        call?.opened(in: service)
        // Response headers now: grpc clients (Envoy's among them) consider the call established once they arrive.
        sentHeaders = true
        let h: HPACKHeaders = [":status": "200", "content-type": "application/grpc"]
        context.writeAndFlush(wrapOutboundOut(.headers(.init(headers: h))), promise: nil)
    }

    static let longestDeadline: Int64 = 365 * 24 * 3_600_000_000_000

    /// `grpc-timeout`: at most 8 digits and a unit (H, M, S, m, u, n), in nanoseconds; nil when malformed.
    static func timeoutNanoseconds(_ value: String) -> Int64? {
        let digits = value.utf8.dropLast()
        guard let unit = value.utf8.last, (1...8).contains(digits.count), digits.allSatisfy({ (48...57).contains($0) }),
            let amount = Int64(String(decoding: digits, as: UTF8.self))
        else { return nil }
        let scale: Int64
        switch unit {
        case UInt8(ascii: "H"): scale = 3_600_000_000_000
        case UInt8(ascii: "M"): scale = 60_000_000_000
        case UInt8(ascii: "S"): scale = 1_000_000_000
        case UInt8(ascii: "m"): scale = 1_000_000
        case UInt8(ascii: "u"): scale = 1_000
        case UInt8(ascii: "n"): scale = 1
        default: return nil
        }
        // 99999999 hours does not fit in 64 bits of nanoseconds: such a deadline is as good as none.
        let (product, overflow) = amount.multipliedReportingOverflow(by: scale)
        return overflow ? Int64.max : product
    }

    static func waker(_ handler: ADSStreamHandler, _ context: ChannelHandlerContext) -> @Sendable () -> Void {
        let bound = NIOLoopBound(handler, eventLoop: context.eventLoop)
        let loop = context.eventLoop
        return { loop.execute { bound.value.drain() } }
    }

    /// Every whole message in `partial`, in order.
    func readMessages(_ context: ChannelHandlerContext) {
        while var buffer = partial, !finished, let call {
            guard buffer.readableBytes >= 5,
                let compressed = buffer.getInteger(at: buffer.readerIndex, as: UInt8.self),
                let length = buffer.getInteger(at: buffer.readerIndex + 1, as: UInt32.self)
            else { return }
            if compressed != 0 {
                finish(
                    context, status: ADSCallFailure.Status.internal.rawValue,
                    message: "compressed message without grpc-encoding")
                return
            }
            if length > ADSTransport.maxRequestBytes {
                finish(
                    context, status: ADSCallFailure.Status.resourceExhausted.rawValue,
                    message: "request of \(length) bytes is larger than \(ADSTransport.maxRequestBytes)")
                return
            }
            guard buffer.readableBytes >= 5 + Int(length) else { return }
            buffer.moveReaderIndex(forwardBy: 5)
            let message = buffer.readSlice(length: Int(length))!
            if buffer.readableBytes == 0 {
                partial = nil
            } else {
                // Keep only what is left: a buffer whose read bytes stay would grow with every message.
                buffer.discardReadBytes()
                partial = buffer
            }
            do {
                if try call.receive(message, in: service) { drain() }
            } catch {
                finish(context, status: error.status.rawValue, message: error.message)
                return
            }
        }
    }

    /// Writes what the session has queued while the stream can take it; the rest waits for writability. After the
    /// client's half-close, an empty queue ends the call with OK.
    func drain() {
        if draining {
            drainAgain = true
            return
        }
        draining = true
        defer { draining = false }
        repeat {
            drainAgain = false
            guard let context, let call, !finished else { return }
            var wrote = false
            var empty = false
            while context.channel.isWritable {
                guard let response = call.next() else {
                    empty = true
                    break
                }
                let framed = ResponseEncoder.shared.framed(response)
                context.write(wrapOutboundOut(.data(.init(data: .byteBuffer(framed)))), promise: nil)
                wrote = true
            }
            if wrote { context.flush() }
            if empty, halfClosed {
                finish(context, status: 0, message: nil)
                return
            }
        } while drainAgain
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { drain() }
        context.fireChannelWritabilityChanged()
    }

    /// Ends the call with a gRPC status: trailers after the response headers, or a trailers-only response.
    func finish(_ context: ChannelHandlerContext, status: Int, message: String?) {
        guard !finished else { return }
        finished = true
        partial = nil
        var h: HPACKHeaders = sentHeaders ? [:] : [":status": "200", "content-type": "application/grpc"]
        h.add(name: "grpc-status", value: String(status))
        if let message { h.add(name: "grpc-message", value: Self.percentEncoded(message)) }
        if status == ADSCallFailure.Status.unimplemented.rawValue || status == ADSCallFailure.Status.internal.rawValue {
            h.add(name: "grpc-accept-encoding", value: "identity")
        }
        sentHeaders = true
        if clientEnded {
            context.writeAndFlush(wrapOutboundOut(.headers(.init(headers: h, endStream: true))), promise: nil)
        } else {
            // The client may still be sending: RST_STREAM(NO_ERROR) after the trailers frees the stream now.
            context.write(wrapOutboundOut(.headers(.init(headers: h, endStream: true))), promise: nil)
            context.writeAndFlush(wrapOutboundOut(.rstStream(.noError)), promise: nil)
        }
        deadline?.cancel()
        deadline = nil
        call?.closed(in: service)
        call = nil
    }

    func channelInactive(context: ChannelHandlerContext) {
        // The stream is gone: reset by the client, or its connection closed.
        finished = true
        partial = nil
        deadline?.cancel()
        deadline = nil
        call?.closed(in: service)
        call = nil
        self.context = nil
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }

    /// grpc-message is percent-encoded UTF-8: bytes outside printable ASCII, and `%`, become `%XX`.
    static func percentEncoded(_ s: String) -> String {
        var out = ""
        for b in s.utf8 {
            if b >= 0x20, b <= 0x7E, b != UInt8(ascii: "%") {
                out.unicodeScalars.append(Unicode.Scalar(b))
            } else {
                out += "%" + String(format: "%02X", b)
            }
        }
        return out
    }
}

/// A stream's session as the transport sees it, whatever its protocol.
protocol ADSCall: AnyObject {
    func opened(in service: ADSService)
    /// Decodes one request and runs it; returns whether the caller must drain.
    func receive(_ message: ByteBuffer, in service: ADSService) throws(ADSCallFailure) -> Bool
    func next() -> OutgoingResponse?
    func closed(in service: ADSService)
}

extension StreamSession: ADSCall {
    func opened(in service: ADSService) { service.opened(self) }

    func receive(_ message: ByteBuffer, in service: ADSService) throws(ADSCallFailure) -> Bool {
        let request: M.Request
        do {
            request = try M.Request(serializedBytes: Array(message.readableBytesView))
        } catch {
            throw ADSCallFailure(status: .internal, message: "cannot decode \(M.Request.protoMessageName): \(error)")
        }
        return try service.received(request, session: self)
    }

    func closed(in service: ADSService) { service.closed(self) }
}
