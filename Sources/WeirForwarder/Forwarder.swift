import CWeirShims
import Logging
import Metrics
import Prometheus
import Synchronization
import WeirCapture
import WeirNetns
#if canImport(Glibc)
import Glibc
#endif

/// The transparent forwarder: listeners on the capture ports, epoll workers that relay, an admin endpoint.
public final class Forwarder: Sendable {
    public let config: ForwarderConfig
    let state = ForwarderState()
    let threads: Mutex<[NamespaceThread]> = Mutex([])
    let admin = Mutex<AdminEndpoint?>(nil)

    /// Prometheus registry the metrics go to; bootstrapped once per process.
    public static let registry = PrometheusCollectorRegistry()
    private static let bootstrap: Void = {
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
    }()

    public init(config: ForwarderConfig) {
        _ = Self.bootstrap
        self.config = config
    }

    /// Active relayed connections.
    public var activeConnections: Int { state.active.load(ordering: .relaxed) }

    /// Opens the listeners inside `namespace` and starts the workers there. Throws if a port cannot be bound.
    public func start(in namespace: NetworkNamespace, admin: String? = nil) throws {
        let config = self.config
        let logger = Logger(label: "weir.forward")
        let metrics = ForwarderMetrics()
        var accessLog: Int32 = -1
        if let path = config.accessLogPath {
            accessLog = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o644)
            guard accessLog >= 0 else { throw ForwarderError.system("open \(path)", weir_errno()) }
        }
        // Each worker gets its own SO_REUSEPORT listeners; the kernel spreads connections among them.
        var perWorker: [[Listener]] = []
        for _ in 0..<max(1, config.workers) {
            perWorker.append(try namespace.run { try Self.openListeners(config) })
        }
        let state = self.state
        let logFD = accessLog
        for (i, listeners) in perWorker.enumerated() {
            let box = UncheckedBox(listeners)
            let t = try NamespaceThread(namespace: namespace, name: "weir-fwd-\(i)") {
                do {
                    let worker = try Worker(config: config, state: state, metrics: metrics, listeners: box.value, accessLog: logFD, logger: logger)
                    worker.run()
                } catch {
                    // Its listeners would keep taking a share of new connections that nobody accepts.
                    for l in box.value { close(l.fd) }
                    logger.error("worker failed: \(error)")
                }
            }
            threads.withLock { $0.append(t) }
        }
        if let admin { try startAdmin(admin, namespace: namespace, logger: logger) }
        logger.info("forwarding", metadata: ["outbound": "\(config.outboundPort)", "inbound": "\(config.inboundPort)", "mode": "\(config.mode.rawValue)"])
    }

    static func openListeners(_ config: ForwarderConfig) throws -> [Listener] {
        var out: [Listener] = []
        for (port, direction) in [(config.outboundPort, FlowDirection.outbound), (config.inboundPort, .inbound)] {
            for family in config.families {
                let fd = socket(family == .ipv4 ? AF_INET : AF_INET6, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
                guard fd >= 0 else { throw ForwarderError.system("socket", weir_errno()) }
                var one: Int32 = 1
                if family == .ipv6 { setsockopt(fd, Int32(IPPROTO_IPV6), IPV6_V6ONLY, &one, 4) }
                _ = weir_set_reuse(fd)
                // Accepted sockets inherit TCP_NODELAY from their listener: set once here, not per connection.
                _ = weir_set_nodelay(fd)
                if config.mode == .tproxy && direction == .inbound { _ = weir_set_transparent(fd, family == .ipv4 ? AF_INET : AF_INET6) }
                let any = Endpoint(family: family, address: Array(repeating: 0, count: family == .ipv4 ? 4 : 16), port: port)
                var (addr, len) = SocketAddress.make(any)
                let rc = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) } }
                if rc != 0 || listen(fd, 4096) != 0 {
                    let e = weir_errno()
                    close(fd)
                    out.forEach { close($0.fd) }
                    throw ForwarderError.listen(any, e)
                }
                out.append(Listener(fd: fd, direction: direction, family: family))
            }
        }
        return out
    }

    /// Stops accepting, lets open connections finish for up to the drain timeout, then closes the rest.
    public func drain() {
        state.draining.store(true, ordering: .relaxed)
        let deadline = monotonicNanoseconds() + UInt64(config.drainTimeoutMilliseconds) * 1_000_000
        while state.active.load(ordering: .relaxed) > 0 && monotonicNanoseconds() < deadline {
            usleep(20_000)
        }
        state.stopping.store(true, ordering: .relaxed)
        wait()
        admin.withLock { $0?.close(); $0 = nil }
    }

    /// Closes everything now.
    public func stop() {
        state.draining.store(true, ordering: .relaxed)
        state.stopping.store(true, ordering: .relaxed)
        wait()
        admin.withLock { $0?.close(); $0 = nil }
    }

    /// Waits for the workers to end.
    public func wait() {
        let ts = threads.withLock { t -> [NamespaceThread] in let c = t; t = []; return c }
        ts.forEach { $0.join() }
    }

    // MARK: admin

    /// Serves `GET /metrics` (Prometheus text) and `GET /ready` on loopback TCP (`127.0.0.1:15090`) or a Unix socket (`unix:/path`).
    func startAdmin(_ address: String, namespace: NetworkNamespace, logger: Logger) throws {
        let state = self.state
        let endpoint = try AdminEndpoint(address, namespace: namespace) { path in
            if path.hasPrefix("/metrics") {
                var body: [UInt8] = []
                Forwarder.registry.emit(into: &body)
                return AdminEndpoint.Reply(contentType: "text/plain; version=0.0.4", body: body)
            }
            if path.hasPrefix("/ready") {
                let draining = state.draining.load(ordering: .relaxed)
                return .text(draining ? "draining\n" : "ready\n", status: draining ? "503 Service Unavailable" : "200 OK")
            }
            return .text("try /metrics or /ready\n", status: "404 Not Found")
        }
        admin.withLock { $0 = endpoint }
        logger.info("admin endpoint", metadata: ["address": "\(address)"])
    }
}

/// Hands listener descriptors to the one worker thread that owns them from then on.
struct UncheckedBox<T>: @unchecked Sendable {
    let value: T
    init(_ value: T) { self.value = value }
}
