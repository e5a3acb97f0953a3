import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import ServiceLifecycle
import Synchronization
import WeirNetns
import WeirSystem
import WeirXDS

/// A request to the admin API.
public struct AdminRequest: Sendable {
    /// The HTTP method; weir's admin routes answer 405 to anything but GET.
    public var method: HTTPMethod
    /// The path, without the query.
    public var path: String
    /// The query's parameters (`?node=a` → `["node": "a"]`).
    public var query: [String: String]
    /// The request body, at most `AdminServer.maxBodyBytes` (a larger one is answered 413 without the handler).
    public var body: [UInt8]

    /// A request as the server hands it to a handler (tests and other front ends build their own).
    public init(method: HTTPMethod, path: String, query: [String: String] = [:], body: [UInt8] = []) {
        self.method = method
        self.path = path
        self.query = query
        self.body = body
    }
}

/// An answer of the admin API.
public struct AdminReply: Sendable {
    /// The response status: 200 unless the route says otherwise.
    public var status: HTTPResponseStatus
    /// The `content-type` header: plain UTF-8 text unless the route sets JSON or Prometheus text.
    public var contentType: String
    /// The response body, sent with its `content-length`; the connection closes after it.
    public var body: [UInt8]

    /// A reply of `body` with `status` and `contentType` (200, plain UTF-8 text, unless given).
    public init(status: HTTPResponseStatus = .ok, contentType: String = "text/plain; charset=utf-8", body: [UInt8]) {
        self.status = status
        self.contentType = contentType
        self.body = body
    }

    /// Plain text.
    public static func text(_ s: String, status: HTTPResponseStatus = .ok) -> AdminReply {
        AdminReply(status: status, body: Array(s.utf8))
    }
    /// A JSON document.
    public static func json(_ s: String, status: HTTPResponseStatus = .ok) -> AdminReply {
        AdminReply(status: status, contentType: "application/json", body: Array(s.utf8))
    }
}

/// Where an admin API listens: loopback or any TCP address, a Unix socket path, or an abstract Unix name
/// (`unix:@name`, per network namespace).
public enum AdminAddress: Sendable, Hashable, CustomStringConvertible {
    /// A TCP address (`HOST:PORT`, `[V6]:PORT`), bound in the server's network namespace.
    case tcp(Endpoint)
    /// A Unix socket path (`/path`), or an abstract name (`@name`) that lives in the server's network namespace.
    case unix(String)

    /// Parses `HOST:PORT`, `[V6]:PORT`, `unix:/path` or `unix:@name`; nil when malformed.
    public static func parse(_ text: String) -> AdminAddress? {
        if text.hasPrefix("unix:") {
            let path = String(text.dropFirst(5))
            guard path.hasPrefix("/") || (path.hasPrefix("@") && path.count > 1),
                path.utf8.count <= SocketAddressBytes.maxUnixPath
            else { return nil }
            return .unix(path)
        }
        return Endpoint.parse(text).map(AdminAddress.tcp)
    }

    /// The address as `parse` reads it: `HOST:PORT`, `[V6]:PORT` or `unix:PATH`.
    public var description: String {
        switch self {
        case .tcp(let e): return "\(e)"
        case .unix(let p): return "unix:\(p)"
        }
    }
}

/// The admin HTTP/1.1 server, on SwiftNIO: concurrent connections, a read timeout (a client that says nothing is
/// closed, and holds up nobody meanwhile), a bounded request, accept paused and resumed when descriptors run out.
/// Its socket is opened inside a network namespace when asked (a forwarder's admin port inside the pod).
public final class AdminServer: Service, Sendable {
    /// Answers one admin request; it runs as a task, and its reply is written back on the connection's event loop.
    public typealias Handler = @Sendable (AdminRequest) async -> AdminReply

    let address: AdminAddress
    let namespace: NetworkNamespace
    let handler: Handler
    let logger: Logger
    let group: any EventLoopGroup
    /// The bound channel, once `start()` has run.
    let channel = Mutex<(any Channel)?>(nil)

    /// A request head and body over these many bytes is refused with 431 / 413.
    public static let maxHeadBytes = 8192, maxBodyBytes = 1 << 20
    /// By default, a connection that sends nothing for this long is closed.
    public static let defaultReadTimeout = TimeAmount.seconds(10)
    let readTimeout: TimeAmount

    /// A server for `address`, bound inside `namespace`, answering each request with `handler`; nothing listens yet.
    public init(
        address: AdminAddress, namespace: NetworkNamespace = .current, logger: Logger = Logger(label: "weir.admin"),
        group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        readTimeout: TimeAmount = AdminServer.defaultReadTimeout, handler: @escaping Handler
    ) {
        self.address = address
        self.readTimeout = readTimeout
        self.namespace = namespace
        self.handler = handler
        self.logger = logger
        self.group = group
    }

    /// The listening socket, opened in the namespace (an abstract name or a TCP port lives in the namespace that
    /// opened it).
    static func listeningSocket(_ address: AdminAddress, in namespace: NetworkNamespace) throws -> DescriptorSlot {
        try namespace.run { () throws -> DescriptorSlot in
            let fd: WeirSystem.FileDescriptor
            switch address {
            case .unix(let path):
                do throws(UnixSocketPath.Failure) { try UnixSocketPath.claim(path) } catch {
                    throw AdminServerError.address(address, "\(error)")
                }
                fd = try WeirSystem.FileDescriptor.unixStream()
                try fd.bind(.unix(path), describedAs: "unix:\(path)")
            case .tcp(let e):
                fd = try WeirSystem.FileDescriptor.tcp(ipv6: e.family == .ipv6)
                try fd.setReuseAddress()
                try fd.bind(SocketAddress.make(e), describedAs: "\(e)")
            }
            try fd.listen(backlog: 128)
            try fd.setNonBlocking(true)
            return DescriptorSlot(fd)
        }
    }

    /// Binds and starts serving; returns once the socket listens.
    public func start() async throws {
        let slot: DescriptorSlot
        do { slot = try Self.listeningSocket(address, in: namespace) } catch let e as SystemCallError {
            throw AdminServerError.bind(address, e)
        }
        let handler = self.handler
        let logger = self.logger
        let readTimeout = self.readTimeout
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelInitializer { channel in
                // Out of descriptors: accept pauses for a second instead of spinning.
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(AcceptPause(logger: logger))
                }
            }
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let sync = channel.pipeline.syncOperations
                    try sync.addHandler(IdleStateHandler(readTimeout: readTimeout))
                    try sync.addHandler(RequestSizeGuard(maxHead: Self.maxHeadBytes))
                    try sync.configureHTTPServerPipeline(withErrorHandling: true)
                    try sync.addHandler(AdminRequestHandler(handler: handler, logger: logger))
                }
            }
        let bound = try await bootstrap.withBoundSocket(slot.take().releaseToOwner()).get()
        channel.withLock { $0 = bound }
        logger.info("admin API listening", metadata: ["address": "\(address)"])
    }

    /// Stops listening and closes the open connections.
    public func stop() async {
        guard
            let c = channel.withLock({ c in
                let out = c
                c = nil
                return out
            })
        else { return }
        try? await c.close()
        if case .unix(let path) = address, !path.hasPrefix("@") { try? FileSystem.unlinkIfPresent(path) }
    }

    /// Serves until the group shuts down.
    public func run() async throws {
        try await start()
        try? await gracefulShutdown()
        await stop()
    }
}

/// The admin server cannot start.
public enum AdminServerError: Error, CustomStringConvertible {
    /// The Unix socket path cannot be taken (not a socket, served by another process, too long), with why.
    case address(AdminAddress, String)
    /// A system call failed while opening the listener (entering the namespace, socket, bind or listen).
    case bind(AdminAddress, SystemCallError)
    /// `cannot listen on ADDRESS: WHY`, for the user.
    public var description: String {
        switch self {
        case .address(let a, let why): return "cannot listen on \(a): \(why)"
        case .bind(let a, let e): return "cannot listen on \(a): \(e.reason)"
        }
    }
}

/// Refuses a request whose head is larger than `maxHead` bytes, before NIO's decoder buffers it.
final class RequestSizeGuard: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    let maxHead: Int
    var seen = 0
    var headDone = false
    var lastFour: [UInt8] = []

    init(maxHead: Int) { self.maxHead = maxHead }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = unwrapInboundIn(data)
        if !headDone {
            // The head ends at the first CRLFCRLF; count bytes until then.
            let bytes = buffer.readableBytesView
            var tooLarge = false
            for b in bytes {
                seen += 1
                if seen > maxHead {
                    tooLarge = true
                    break
                }
                lastFour.append(b)
                if lastFour.count > 4 { lastFour.removeFirst() }
                if lastFour == [13, 10, 13, 10] {
                    headDone = true
                    break
                }
            }
            if tooLarge {
                let reply =
                    "HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                context.writeAndFlush(wrapInboundOut(ByteBuffer(string: reply)), promise: nil)
                context.close(promise: nil)
                return
            }
        }
        context.fireChannelRead(data)
    }
}

/// Collects a request, runs the handler, writes the reply, and closes (one request per connection).
final class AdminRequestHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    let handler: AdminServer.Handler
    let logger: Logger
    var head: HTTPRequestHead?
    var body: [UInt8] = []
    var tooLarge = false

    init(handler: @escaping AdminServer.Handler, logger: Logger) {
        self.handler = handler
        self.logger = logger
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let idle = event as? IdleStateHandler.IdleStateEvent, idle == .read {
            context.close(promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let h):
            head = h
            body = []
        case .body(var b):
            if body.count + b.readableBytes > AdminServer.maxBodyBytes {
                tooLarge = true
            } else {
                body += b.readBytes(length: b.readableBytes) ?? []
            }
        case .end:
            guard let head else { return }
            self.head = nil
            if tooLarge {
                Self.respond(
                    context,
                    AdminReply.text("request body over \(AdminServer.maxBodyBytes) bytes\n", status: .payloadTooLarge))
                return
            }
            let (path, query) = Self.split(head.uri)
            let request = AdminRequest(method: head.method, path: path, query: query, body: body)
            let handler = self.handler
            let loop = context.eventLoop
            let bound = NIOLoopBound(context, eventLoop: loop)
            // The handler runs as a task; the reply is written back on the channel's loop.
            loop.makeFutureWithTask { await handler(request) }.whenSuccess { reply in Self.respond(bound.value, reply) }
        }
    }

    /// Writes the reply and closes: called on the channel's event loop.
    static func respond(_ context: ChannelHandlerContext, _ reply: AdminReply) {
        var headers = HTTPHeaders()
        headers.add(name: "content-type", value: reply.contentType)
        headers.add(name: "content-length", value: "\(reply.body.count)")
        headers.add(name: "connection", value: "close")
        let head = HTTPResponseHead(version: .http1_1, status: reply.status, headers: headers)
        context.write(NIOAny(HTTPServerResponsePart.head(head)), promise: nil)
        context.write(NIOAny(HTTPServerResponsePart.body(.byteBuffer(ByteBuffer(bytes: reply.body)))), promise: nil)
        // Closed once the reply is out; the completion runs on the channel's loop, where the context lives.
        let bound = NIOLoopBound(context, eventLoop: context.eventLoop)
        context.writeAndFlush(NIOAny(HTTPServerResponsePart.end(nil))).whenComplete { _ in
            bound.value.close(promise: nil)
        }
    }

    /// `/path?a=b&c` → ("/path", ["a": "b", "c": ""]), percent-decoded.
    static func split(_ uri: String) -> (String, [String: String]) {
        guard let q = uri.firstIndex(of: "?") else { return (uri, [:]) }
        var query: [String: String] = [:]
        for pair in uri[uri.index(after: q)...].split(separator: "&") {
            let kv = pair.split(separator: "=", maxSplits: 1).map {
                String($0).replacingOccurrences(of: "+", with: " ").removingPercentEncoding ?? String($0)
            }
            if let k = kv.first, !k.isEmpty { query[k] = kv.count > 1 ? kv[1] : "" }
        }
        return (String(uri[..<q]), query)
    }
}
