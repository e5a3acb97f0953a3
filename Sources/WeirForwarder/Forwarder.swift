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
    let adminFD = Atomic<Int32>(-1)

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
        let fd = adminFD.exchange(-1, ordering: .relaxed)
        if fd >= 0 { shutdown(fd, Int32(SHUT_RDWR)); close(fd) }
    }

    /// Closes everything now.
    public func stop() {
        state.draining.store(true, ordering: .relaxed)
        state.stopping.store(true, ordering: .relaxed)
        wait()
        let fd = adminFD.exchange(-1, ordering: .relaxed)
        if fd >= 0 { shutdown(fd, Int32(SHUT_RDWR)); close(fd) }
    }

    /// Waits for the workers to end.
    public func wait() {
        let ts = threads.withLock { t -> [NamespaceThread] in let c = t; t = []; return c }
        ts.forEach { $0.join() }
    }

    // MARK: admin

    /// Serves `GET /metrics` (Prometheus text) and `GET /ready` on loopback TCP (`127.0.0.1:15090`) or a Unix socket (`unix:/path`).
    func startAdmin(_ address: String, namespace: NetworkNamespace, logger: Logger) throws {
        let fd: Int32 = try namespace.run {
            if address.hasPrefix("unix:") {
                let path = String(address.dropFirst(5))
                unlink(path)
                let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
                var sun = sockaddr_un()
                sun.sun_family = sa_family_t(AF_UNIX)
                let bytes = Array(path.utf8.prefix(107)) + [0]
                withUnsafeMutableBytes(of: &sun.sun_path) { $0.copyBytes(from: bytes) }
                let rc = withUnsafePointer(to: &sun) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
                guard rc == 0, listen(fd, 64) == 0 else { throw ForwarderError.system("bind \(address)", weir_errno()) }
                return fd
            }
            guard let ep = Endpoint.parse(address) else { throw ForwarderError.system("admin address \(address)", EINVAL) }
            let fd = socket(ep.family == .ipv4 ? AF_INET : AF_INET6, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            _ = weir_set_reuse(fd)
            var (addr, len) = SocketAddress.make(ep)
            let rc = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) } }
            guard rc == 0, listen(fd, 64) == 0 else { let e = weir_errno(); close(fd); throw ForwarderError.listen(ep, e) }
            return fd
        }
        adminFD.store(fd, ordering: .relaxed)
        let state = self.state
        let t = try NamespaceThread(namespace: .current, name: "weir-admin") {
            // Bounded by the listener: closing it ends accept with an error.
            while true {
                let c = accept(fd, nil, nil)
                if c < 0 { if weir_errno() == EINTR { continue }; return }
                var request = [UInt8](repeating: 0, count: 4096)
                let n = recv(c, &request, request.count, 0)
                let line = n > 0 ? String(decoding: request[0..<n], as: UTF8.self).split(separator: "\r\n").first.map(String.init) ?? "" : ""
                var body: [UInt8] = []
                var status = "200 OK"
                var type = "text/plain; version=0.0.4"
                if line.hasPrefix("GET /metrics") {
                    Forwarder.registry.emit(into: &body)
                } else if line.hasPrefix("GET /ready") {
                    body = Array((state.draining.load(ordering: .relaxed) ? "draining\n" : "ready\n").utf8)
                    if state.draining.load(ordering: .relaxed) { status = "503 Service Unavailable" }
                } else {
                    status = "404 Not Found"; type = "text/plain"; body = Array("try /metrics or /ready\n".utf8)
                }
                let head = Array("HTTP/1.1 \(status)\r\nContent-Type: \(type)\r\nContent-Length: \(body.count)\r\nConnection: close\r\n\r\n".utf8)
                _ = (head + body).withUnsafeBytes { send(c, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                close(c)
            }
        }
        _ = t
        logger.info("admin endpoint", metadata: ["address": "\(address)"])
    }
}

/// Hands listener descriptors to the one worker thread that owns them from then on.
struct UncheckedBox<T>: @unchecked Sendable {
    let value: T
    init(_ value: T) { self.value = value }
}
