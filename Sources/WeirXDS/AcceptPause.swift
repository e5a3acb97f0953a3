import Logging
import NIOCore
#if canImport(Glibc)
    import Glibc
#endif

/// On a listening channel: when accept fails for want of descriptors or memory, stop reading the listener for a
/// while, then resume. NIO's `AcceptBackoffHandler` only delays the next `read()`, but after a failed accept the
/// read stays pending and the listener stays registered, so a level-triggered epoll reports it again at once and
/// the loop spins. Turning `autoRead` off takes the listener out of epoll; turning it on puts it back.
public final class AcceptPause: ChannelInboundHandler, Sendable {
    /// What a listening channel reads: each accepted connection's channel.
    public typealias InboundIn = any Channel

    let pause: TimeAmount
    let logger: Logger
    let onPause: @Sendable () -> Void

    /// A listener out of descriptors pauses every second: a few lines a minute say so.
    static let warnings = RateLimiter(perMinute: 4)

    /// Stops accepting for `pause` when accept fails for want of descriptors or memory; `onPause` runs as it stops.
    public init(pause: TimeAmount = .seconds(1), logger: Logger, onPause: @escaping @Sendable () -> Void = {}) {
        self.pause = pause
        self.logger = logger
        self.onPause = onPause
    }

    /// On EMFILE, ENFILE, ENOBUFS or ENOMEM turns autoRead off and back on after `pause`; passes other errors on.
    public func errorCaught(context: ChannelHandlerContext, error: any Error) {
        guard let io = error as? IOError, [EMFILE, ENFILE, ENOBUFS, ENOMEM].contains(io.errnoCode) else {
            context.fireErrorCaught(error)
            return
        }
        let channel = context.channel
        guard (try? channel.syncOptions?.getOption(.autoRead)) == true else { return }
        try? channel.syncOptions?.setOption(.autoRead, value: false)
        onPause()
        switch Self.warnings.admit("accept") {
        case .log: logger.warning("accept paused", metadata: ["error": "\(io)", "resume_in": "\(pause)"])
        case .logSuppressed(let n):
            logger.warning(
                "accept paused", metadata: ["error": "\(io)", "resume_in": "\(pause)", "suppressed": "\(n)"])
        case .drop: break
        }
        context.eventLoop.scheduleTask(in: pause) {
            try? channel.syncOptions?.setOption(.autoRead, value: true)
        }
    }
}
