import WeirCapture
import WeirNetns

/// PROXY protocol header versions (HAProxy's spec), written before the relayed bytes.
public enum ProxyProtocolVersion: String, Sendable, CaseIterable { case v1, v2 }

/// Where accepted connections are relayed.
public enum ForwardTarget: Sendable, Equatable {
    /// To the original destination (inbound: the local application).
    case direct
    /// To one upstream (an Envoy listener, say), optionally announcing the original endpoints with PROXY protocol.
    case proxy(upstream: Endpoint, proxyProtocol: ProxyProtocolVersion?)
}

/// Everything `weir forward` needs.
public struct ForwarderConfig: Sendable {
    /// The capture port outbound connections are redirected to.
    public var outboundPort: UInt16 = 15001
    /// The capture port inbound connections are redirected to.
    public var inboundPort: UInt16 = 15006
    /// The rules' capture mode; `.tproxy` makes the inbound listeners transparent (outbound is REDIRECT in both).
    public var mode: CaptureMode = .redirect
    /// Where accepted connections go: their original destination, or one upstream (with PROXY protocol if asked).
    public var target: ForwardTarget = .direct
    /// The IP families listened on: each gets a listener per capture port (IPv6 ones IPV6_V6ONLY).
    public var families: [IPFamily] = [.ipv4, .ipv6]
    /// Mark on upstream sockets; weir's capture rules never capture it, so the forwarder cannot loop.
    public var bypassMark: UInt32 = 0x539
    /// How long an upstream connect may stay in progress before the relayed connection is reset.
    public var connectTimeoutMilliseconds: Int = 5_000
    /// A connection with no bytes either way for this long is closed (0: never).
    public var idleTimeoutMilliseconds: Int = 3_600_000
    /// The most relayed connections at once, over all workers; one more is reset as soon as it is accepted.
    public var maxConnections: Int = 65_536
    /// How long `drain()` waits for open connections to finish before it closes the rest.
    public var drainTimeoutMilliseconds: Int = 10_000
    /// How many epoll worker threads relay, each with its own SO_REUSEPORT listeners (at least one).
    public var workers: Int = 1
    /// A direction that has carried this much and whose read fills the 64 KiB buffer (bulk data queued)
    /// switches to splice through a pipe; request/response traffic stays on plain copies.
    public var spliceThreshold: Int = 128 * 1024
    /// Busy-poll this long after activity before sleeping in epoll_wait (0: never). Trades CPU for latency.
    public var busyPollMicroseconds: Int = 0
    /// JSON-lines access log path (nil: none).
    public var accessLogPath: String?

    /// The defaults: ports 15001 and 15006, REDIRECT, relay to the original destination, IPv4 and IPv6, one worker.
    public init() {}
}
