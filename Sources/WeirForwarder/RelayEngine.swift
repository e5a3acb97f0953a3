import Logging
import Metrics
import Synchronization
import WeirCapture
import WeirNetns
import WeirSystem

#if canImport(Glibc)
    import Glibc
#endif

/// Which capture port a connection came in on.
enum FlowDirection: String, Sendable { case outbound, inbound }

/// Shared between the workers and the control thread; every field is atomic.
final class ForwarderState: Sendable {
    let active = Atomic<Int>(0)
    let draining = Atomic<Bool>(false)
    let stopping = Atomic<Bool>(false)
    /// Handing connections off to the next process: nothing more is read; each connection with no bytes left in
    /// the forwarder's hands goes to `exporter`.
    let handingOff = Atomic<Bool>(false)
    let exporter = Mutex<(@Sendable (HandedOffConnection) -> Bool)?>(nil)
    /// Workers still running; the last to end reports it.
    let running = Atomic<Int>(0)
    /// Called (once) when the last worker has ended.
    let onAllEnded = Mutex<(@Sendable () -> Void)?>(nil)
    /// Called when the last open connection of a draining forwarder closed.
    let onDrained = Mutex<(@Sendable () -> Void)?>(nil)
    /// Workers whose listeners are still open; the last to close them (or to end) reports it.
    let accepting = Atomic<Int>(0)
    let onListenersClosed = Mutex<(@Sendable () -> Void)?>(nil)

    func workerEnded() {
        if running.subtract(1, ordering: .acquiringAndReleasing).newValue == 0 { Self.callOnce(onAllEnded) }
    }

    /// Takes the callback out of its slot and calls it: whoever gets there first calls it, once.
    static func callOnce(_ slot: borrowing Mutex<(@Sendable () -> Void)?>) {
        slot.withLock { f in
            let call = f
            f = nil
            return call
        }?()
    }

    /// Called once per worker: when it has closed its listeners, or when it ends with them.
    func listenersClosed() {
        if accepting.subtract(1, ordering: .acquiringAndReleasing).newValue == 0 { Self.callOnce(onListenersClosed) }
    }

    func connectionClosed() {
        if active.subtract(1, ordering: .relaxed).newValue == 0 && draining.load(ordering: .relaxed) {
            Self.callOnce(onDrained)
        }
    }
}

/// The access log file, shared by every worker: one JSON line per write (O_APPEND keeps lines whole).
final class AccessLogFile: Sendable {
    let file: FileDescriptor
    init(path: String) throws(SystemCallError) {
        file = try FileDescriptor.open(path, O_WRONLY | O_CREAT | O_APPEND, mode: 0o644)
    }
    func append(_ line: String) { try? file.write(line) }
}

/// Why a connection ended, for the access log and metrics.
enum CloseReason: String {
    case done = "closed"
    case clientReset = "client_reset"
    case upstreamReset = "upstream_reset"
    case
        connectFailed = "connect_failed"
    case connectTimeout = "connect_timeout"
    case idleTimeout = "idle_timeout"
    case
        shutdown = "shutdown"
    case handedOff = "handed_off"
}

/// One direction of a relayed connection: bytes read from one socket and not yet written to the other.
struct Flow: ~Copyable {
    /// The splice pipe, once bulk data flows (closed until then).
    var pipeRead = FileDescriptor.closed
    var pipeWrite = FileDescriptor.closed
    var inPipe = 0
    /// Copy-mode bytes the destination did not take yet; allocated only while data waits.
    var pending: [UInt8] = []
    var pendingOffset = 0
    var eof = false
    var shutDown = false
    var bytes = 0
    var done: Bool { shutDown && inPipe == 0 && pending.isEmpty }
    /// Bytes wait for the destination to take them.
    var waiting: Bool { inPipe > 0 || !pending.isEmpty }

    mutating func releasePipe() {
        pipeRead = .closed
        pipeWrite = .closed
    }
}

/// A relayed connection: the accepted client socket and the upstream socket.
final class Connection {
    let client: FileDescriptor
    var upstream = FileDescriptor.closed
    var connecting = true
    let direction: FlowDirection
    let source: Endpoint
    let destination: Endpoint
    var up = Flow()
    var down = Flow()
    let started: UInt64
    var lastActivity: UInt64
    var greeting: [UInt8] = []
    /// The pod whose listener accepted it, in a shared forwarder (0: none).
    var scope: UInt64 = 0
    /// The hand-off tried to give it away and could not (it is not tried again).
    var handOffFailed = false
    /// This connection's byte counters, looked up once at accept rather than per event.
    let bytesUpstream: Counter
    let bytesDownstream: Counter

    init(
        client: consuming FileDescriptor, direction: FlowDirection, source: Endpoint, destination: Endpoint,
        now: UInt64, metrics: ForwarderMetrics
    ) {
        self.client = client
        self.direction = direction
        self.source = source
        self.destination = destination
        started = now
        lastActivity = now
        bytesUpstream = metrics.bytesUpstream[direction]!
        bytesDownstream = metrics.bytesDownstream[direction]!
    }
}

/// What a pump left to do.
enum PumpOutcome { case idle, blocked, readReset, writeReset }

func monotonicNanoseconds() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

/// The metrics the forwarder exports (swift-metrics; Prometheus text on the admin endpoint).
final class ForwarderMetrics: Sendable {
    let accepted: [FlowDirection: Counter]
    let active: [FlowDirection: Meter]
    let bytesUpstream: [FlowDirection: Counter]
    let bytesDownstream: [FlowDirection: Counter]
    let refusedLoops = Counter(label: "weir_forward_refused_loops_total")
    let refusedLimit = Counter(label: "weir_forward_refused_over_limit_total")
    let acceptPaused = Counter(label: "weir_forward_accept_paused_total")
    let connectFailures = Mutex<[String: Counter]>([:])
    let byPort = Mutex<[UInt16: Counter]>([:])

    init() {
        var a: [FlowDirection: Counter] = [:]
        var m: [FlowDirection: Meter] = [:]
        var u: [FlowDirection: Counter] = [:]
        var d: [FlowDirection: Counter] = [:]
        for dir in [FlowDirection.outbound, .inbound] {
            let dims = [("direction", dir.rawValue)]
            a[dir] = Counter(label: "weir_forward_connections_total", dimensions: dims)
            m[dir] = Meter(label: "weir_forward_active_connections", dimensions: dims)
            u[dir] = Counter(label: "weir_forward_bytes_upstream_total", dimensions: dims)
            d[dir] = Counter(label: "weir_forward_bytes_downstream_total", dimensions: dims)
        }
        accepted = a
        active = m
        bytesUpstream = u
        bytesDownstream = d
    }

    func connectFailed(_ reason: String) {
        connectFailures.withLock { c in
            (c[reason]
                ?? {
                    let n = Counter(label: "weir_forward_connect_failures_total", dimensions: [("reason", reason)])
                    c[reason] = n
                    return n
                }()).increment()
        }
    }

    func destinationPort(_ port: UInt16) {
        byPort.withLock { c in
            (c[port]
                ?? {
                    let n = Counter(label: "weir_forward_connections_by_port_total", dimensions: [("port", "\(port)")])
                    c[port] = n
                    return n
                }()).increment()
        }
    }
}

/// A listening socket a worker accepts on (a class: the worker's list holds it, and its descriptor has one owner).
final class Listener: @unchecked Sendable {
    // Made on the thread that opens the listeners and handed whole to the one worker that uses it (its `paused`
    // flag is that worker's alone).
    /// Set to `.closed` when the worker stops accepting.
    var socket: FileDescriptor
    let direction: FlowDirection
    let family: IPFamily
    /// The pod it serves, in a shared forwarder (nil: the forwarder's own namespace and config).
    let scope: ListenerScope?
    var paused = false
    init(socket: consuming FileDescriptor, direction: FlowDirection, family: IPFamily, scope: ListenerScope? = nil) {
        self.socket = socket
        self.direction = direction
        self.family = family
        self.scope = scope
    }
}

/// Work for a worker from the control thread: a pod's listeners to serve, or a pod to let go.
enum WorkerCommand {
    case add([Listener])
    case remove(scope: UInt64)
    case adopt(ListenerScope, [AdoptedConnection])
}

/// A worker's inbox: commands, and an eventfd in its epoll set that wakes it for them.
final class WorkerInbox: Sendable {
    let wake: FileDescriptor
    let commands = Mutex<[WorkerCommand]>([])
    init() throws(SystemCallError) { wake = try FileDescriptor.eventCounter() }
    func post(_ command: WorkerCommand) {
        commands.withLock { $0.append(command) }
        wake.signalEvent()
    }
    func take() -> [WorkerCommand] {
        commands.withLock { c in
            let out = c
            c = []
            return out
        }
    }
}

/// One epoll event loop on its own OS thread. Connections stay on the worker that accepted them.
final class Worker {
    let config: ForwarderConfig
    let state: ForwarderState
    let metrics: ForwarderMetrics
    let accessLog: AccessLogFile?
    let logger: Logger
    let epoll: Epoll
    /// By epoll tag index; a pod's listeners leave a hole when the pod goes, filled by the next pod's.
    var listeners: [Listener?]
    var freeListenerSlots: [Int] = []
    let inbox: WorkerInbox?
    /// The worker's own namespace, to come back to after making a pod's upstream socket inside the pod.
    let home: FileDescriptor
    var slots: [Connection?] = []
    var freeSlots: [Int] = []
    var freedThisRound: [Int] = []
    let buffer: UnsafeMutableRawPointer
    let bufferSize = 64 * 1024
    let spliceChunk = 1 << 20
    var resumeAcceptAt: UInt64 = 0
    /// Read from the state once per round: while handing off, nothing is read from any socket.
    var handingOff = false
    /// Ticks every 100 ms: timeouts, resuming accept, noticing a drain or stop request.
    let ticker: FileDescriptor

    static let kindListener: UInt64 = 0, kindClient: UInt64 = 1, kindUpstream: UInt64 = 2, kindTicker: UInt64 = 3

    init(
        config: ForwarderConfig, state: ForwarderState, metrics: ForwarderMetrics, listeners: [Listener],
        accessLog: AccessLogFile?, inbox: WorkerInbox? = nil,
        logger: Logger
    ) throws(SystemCallError) {
        self.config = config
        self.state = state
        self.metrics = metrics
        self.listeners = listeners
        self.accessLog = accessLog
        self.inbox = inbox
        self.logger = logger
        // Only a shared worker enters pods; a forwarder of one namespace spends no descriptor on it.
        home = inbox == nil ? .closed : try FileDescriptor.open("/proc/thread-self/ns/net", O_RDONLY)
        epoll = try Epoll()
        // The loop sleeps in epoll_wait without a timeout and wakes for this timer instead: a timeout
        // arms and cancels a kernel timer around every wait, which in a virtual machine added about
        // 12 µs to sockperf's p50 through the forwarder.
        ticker = try FileDescriptor.periodicTimer(milliseconds: 100)
        try epoll.add(ticker, events: Epoll.readable, tag: Self.kindTicker)
        buffer = UnsafeMutableRawPointer.allocate(byteCount: bufferSize, alignment: 64)
        for (i, l) in listeners.enumerated() {
            try epoll.add(l.socket, events: Epoll.readable, tag: UInt64(i) << 2 | Self.kindListener)
        }
        if let inbox { try epoll.add(inbox.wake, events: Epoll.readable, tag: 1 << 2 | Self.kindTicker) }
    }

    /// Runs the control thread's commands: a pod's listeners join the epoll set, or a pod's listeners and
    /// connections go.
    func runCommands() {
        guard let inbox else { return }
        inbox.wake.acknowledgeTimer()
        for command in inbox.take() {
            switch command {
            case .add(let added):
                for l in added {
                    if state.draining.load(ordering: .relaxed) {
                        l.socket = .closed
                        continue
                    }
                    let i =
                        freeListenerSlots.popLast()
                        ?? {
                            listeners.append(nil)
                            return listeners.count - 1
                        }()
                    listeners[i] = l
                    if (try? epoll.add(l.socket, events: Epoll.readable, tag: UInt64(i) << 2 | Self.kindListener))
                        == nil
                    {
                        logger.error("cannot watch a pod's listener; it is closed")
                        l.socket = .closed
                        listeners[i] = nil
                        freeListenerSlots.append(i)
                    }
                }
            case .remove(let scope):
                for (i, l) in listeners.enumerated() where l?.scope?.id == scope {
                    if !l!.paused { epoll.remove(l!.socket) }
                    l!.socket = .closed
                    listeners[i] = nil
                    freeListenerSlots.append(i)
                }
                for (i, c) in slots.enumerated() where c?.scope == scope {
                    finish(c!, slot: i, reason: .shutdown, reset: true)
                }
            case .adopt(let scope, let connections):
                for a in connections { adopt(a, scope: scope) }
            }
        }
    }

    deinit { buffer.deallocate() }

    /// Runs until stopped: accepts, relays, sweeps timeouts, drains on request.
    func run() {
        var data = [UInt64](repeating: 0, count: 256)
        var events = [UInt32](repeating: 0, count: 256)
        var listenersClosed = false
        var spinUntil: UInt64 = 0
        let spin = UInt64(config.busyPollMicroseconds) * 1000
        while true {
            // After activity, poll without sleeping for a few microseconds: the next message of a
            // request/response exchange usually arrives sooner than a sleeping thread would wake.
            var n = 0
            do {
                if spin > 0 { n = try epoll.wait(tags: &data, events: &events, timeout: 0) }
                if n == 0 {
                    if spin > 0 && monotonicNanoseconds() < spinUntil { continue }
                    n = try epoll.wait(tags: &data, events: &events, timeout: -1)
                }
            } catch {
                logger.error("epoll_wait failed", metadata: ["error": "\(error)"])
                break
            }
            // Only traffic starts a spin: the 100 ms tick alone would keep an idle worker spinning.
            if n > 0 && spin > 0 && (n > 1 || data[0] & 3 != Self.kindTicker) {
                spinUntil = monotonicNanoseconds() + spin
            }
            var tick = false
            for i in 0..<n {
                let kind = data[i] & 3
                let index = Int(data[i] >> 2)
                if kind == Self.kindTicker {
                    if index == 1 { runCommands() } else { tick = true }
                } else if kind == Self.kindListener {
                    accept(index, budget: Int(n) / 2)
                } else if index < slots.count, let c = slots[index] {
                    handle(c, slot: index, upstreamEvent: kind == Self.kindUpstream, events: events[i])
                }
            }
            freeSlots += freedThisRound
            freedThisRound.removeAll(keepingCapacity: true)
            if tick {
                ticker.acknowledgeTimer()
                sweep(monotonicNanoseconds())
            }
            if state.stopping.load(ordering: .relaxed) {
                for (i, c) in slots.enumerated() { if let c { finish(c, slot: i, reason: .shutdown, reset: true) } }
                break
            }
            handingOff = state.handingOff.load(ordering: .relaxed)
            if handingOff { handOffQuiet() }
            if state.draining.load(ordering: .relaxed) {
                if !listenersClosed {
                    // Closed now (whoever else holds a listener): new connections are refused by the kernel.
                    for case let l? in listeners {
                        if !l.paused { epoll.remove(l.socket) }
                        l.socket = .closed
                    }
                    listeners = []
                    listenersClosed = true
                    state.listenersClosed()
                }
                if slots.allSatisfy({ $0 == nil }) { break }
            }
        }
        listeners = []
        if !listenersClosed { state.listenersClosed() }
    }

    // MARK: accepting

    /// Takes up to `budget` connections: about as many as this round serves (half its events; a relayed
    /// connection has two sockets). Listeners are level-triggered, so stopping before EAGAIN loses nothing: while
    /// the backlog holds more, the next `epoll_wait` reports the listener again. A quiet worker takes one connection
    /// and skips the accept that would only fail with EAGAIN; a busy one takes new connections in proportion to the
    /// traffic it serves, so a burst does not overflow the backlog while open connections keep the rounds full.
    func accept(_ index: Int, budget: Int) {
        guard index < listeners.count, let listener = listeners[index] else { return }
        // Bounded: at most `budget` (≤ 128: half the events a round can hold); EAGAIN ends it sooner.
        for _ in 0..<max(1, budget) {
            switch listener.socket.accept() {
            case .ok(let a):
                accepted(a.socket, peer: a.peer, listener: listener)
            case .failed(let e):
                if e == EMFILE || e == ENFILE || e == ENOBUFS || e == ENOMEM {
                    // Out of descriptors: stop accepting for a moment; established connections keep flowing.
                    pauseAccepting()
                    metrics.acceptPaused.increment()
                    logger.warning(
                        "out of file descriptors; accept paused", metadata: ["error": "\(Posix.describe(e))"])
                }
                return
            }
            if listener.paused { return }
        }
    }

    func pauseAccepting() {
        for case let l? in listeners where !l.paused {
            epoll.remove(l.socket)
            l.paused = true
        }
        resumeAcceptAt = monotonicNanoseconds() + 100_000_000
    }

    func resumeAccepting() {
        for (i, l) in listeners.enumerated() where l?.paused == true {
            let l = l!
            // Re-adding a listener with a full backlog reports it readable at once.
            if (try? epoll.add(l.socket, events: Epoll.readable, tag: UInt64(i) << 2 | Self.kindListener)) != nil {
                l.paused = false
            }
        }
    }

    /// Resets and closes a connection weir will not relay.
    func refuse(_ fd: consuming FileDescriptor) {
        fd.setResetOnClose()
    }

    func accepted(_ fd: consuming FileDescriptor, peer: SocketAddressBytes, listener: Listener) {
        if state.active.load(ordering: .relaxed) >= config.maxConnections {
            metrics.refusedLimit.increment()
            refuse(fd)
            return
        }
        guard let source = SocketAddress.endpoint(peer) else {
            refuse(fd)
            return
        }
        // Outbound capture is nat REDIRECT in both modes; only inbound uses TPROXY in tproxy mode, where the
        // original destination is the accepted socket's own address.
        let scope = listener.scope
        let tproxied = (scope?.mode ?? config.mode) == .tproxy && listener.direction == .inbound
        let original =
            tproxied ? SocketAddress.local(fd) : SocketAddress.originalDestination(fd, family: listener.family)
        guard let destination = original else {
            refuse(fd)
            return
        }
        // A connection nobody redirected (made straight to a capture port) has its own local address as original
        // destination, and would be relayed to the forwarder itself; so would one redirected to a capture port
        // of this host. Both are a capture port on a local address.
        let ports = scope.map { [$0.outboundPort, $0.inboundPort] } ?? [config.outboundPort, config.inboundPort]
        if ports.contains(destination.port) && SocketAddress.isLocal(destination) {
            metrics.refusedLoops.increment()
            logger.notice(
                "refused a connection whose original destination is the forwarder itself",
                metadata: ["destination": "\(destination)"])
            refuse(fd)
            return
        }
        let now = monotonicNanoseconds()
        // TCP_NODELAY comes from the listener.
        let c = Connection(
            client: fd, direction: listener.direction, source: source, destination: destination, now: now,
            metrics: metrics)
        c.scope = scope?.id ?? 0
        let slot = occupy(c)
        metrics.accepted[c.direction]!.increment()
        metrics.destinationPort(destination.port)

        let target: Endpoint
        switch config.target {
        case .direct: target = destination
        case .proxy(let upstream, let version):
            target = upstream
            if let version {
                c.greeting = ProxyProtocolHeader.encode(version, source: source, destination: destination)
            }
        }
        do {
            c.upstream = try makeUpstreamSocket(ipv6: target.family == .ipv6, in: scope)
        } catch {
            if error.errno == EMFILE || error.errno == ENFILE {
                // No descriptor for the upstream side: stop taking new connections until some close.
                pauseAccepting()
                metrics.acceptPaused.increment()
                logger.warning("out of file descriptors for upstream sockets; accept paused")
            }
            metrics.connectFailed(SocketAddress.reason(error.errno))
            finish(c, slot: slot, reason: .connectFailed, reset: true)
            return
        }
        // The mark keeps weir's own rules from capturing the upstream connection again.
        do { try c.upstream.setMark(scope?.bypassMark ?? config.bypassMark) } catch {
            metrics.connectFailed(SocketAddress.reason(error.errno))
            finish(c, slot: slot, reason: .connectFailed, reset: true)
            return
        }
        try? c.upstream.setNoDelay()
        let progress: ConnectProgress
        switch c.upstream.startConnect(SocketAddress.make(target)) {
        case .ok(let p): progress = p
        case .failed(let e):
            metrics.connectFailed(SocketAddress.reason(e))
            finish(c, slot: slot, reason: .connectFailed, reset: true)
            return
        }
        guard watch(c, slot: slot) else {
            finish(c, slot: slot, reason: .connectFailed, reset: true)
            return
        }
        if case .connected = progress { connected(c, slot: slot) }
    }

    /// The upstream socket, made inside the pod's namespace for a pod's listener (a socket belongs to the
    /// namespace it was made in): the thread enters the pod for the one `socket` call and comes back.
    func makeUpstreamSocket(ipv6: Bool, in scope: ListenerScope?) throws(SystemCallError) -> FileDescriptor {
        guard let scope else { return try FileDescriptor.tcp(ipv6: ipv6, nonBlocking: true) }
        try NamespaceCalls.enter(scope.namespace.descriptor)
        let made = Result { () throws(SystemCallError) in try FileDescriptor.tcp(ipv6: ipv6, nonBlocking: true) }
        do { try NamespaceCalls.enter(home) } catch {
            // A worker that cannot return would serve every other pod from inside this one.
            fatalError("weir forwarder: cannot return to its own network namespace: \(error)")
        }
        return try made.get()
    }

    // MARK: relaying

    func handle(_ c: Connection, slot: Int, upstreamEvent: Bool, events: UInt32) {
        if c.connecting {
            guard upstreamEvent else { return }
            // A TCP socket in SYN-SENT polls as nothing: writable means established, and a failed connect shows
            // as an error or hang-up, whose reason SO_ERROR gives. A success costs no system call.
            if events & (Epoll.error | Epoll.hangUp) == 0 {
                if events & Epoll.writable != 0 { connected(c, slot: slot) }
                return
            }
            let err = c.upstream.pendingError()
            metrics.connectFailed(SocketAddress.reason(err == 0 ? ECONNRESET : err))
            finish(c, slot: slot, reason: .connectFailed, reset: true)
            return
        }
        // Readable (or closed, or failed): move bytes away from this side. Writable: move bytes toward it.
        let readable = events & (Epoll.readable | Epoll.peerClosed | Epoll.hangUp | Epoll.error) != 0
        let writable = events & (Epoll.writable | Epoll.hangUp | Epoll.error) != 0
        // A peer's FIN may have come with the data of this same event: then read on to the EOF.
        let closing = events & (Epoll.peerClosed | Epoll.hangUp | Epoll.error) != 0
        // Epoll reports a socket writable with every wakeup; it only matters when bytes wait for it.
        relay(
            c, slot: slot,
            up: upstreamEvent ? writable && c.up.waiting : readable,
            down: upstreamEvent ? readable : writable && c.down.waiting, drain: closing)
    }

    func connected(_ c: Connection, slot: Int) {
        c.connecting = false
        if !c.greeting.isEmpty {
            c.up.pending = c.greeting
            c.greeting = []
        }
        relay(c, slot: slot, up: true, down: true, drain: true)
    }

    func relay(_ c: Connection, slot: Int, up: Bool, down: Bool, drain: Bool) {
        c.lastActivity = monotonicNanoseconds()
        let before = (c.up.bytes, c.down.bytes)
        let upOutcome = up ? pump(&c.up, from: c.client, to: c.upstream, drain: drain, last: c.down.done) : .idle
        let downOutcome = down ? pump(&c.down, from: c.upstream, to: c.client, drain: drain, last: c.up.done) : .idle
        if c.up.bytes != before.0 { c.bytesUpstream.increment(by: Int64(c.up.bytes - before.0)) }
        if c.down.bytes != before.1 { c.bytesDownstream.increment(by: Int64(c.down.bytes - before.1)) }
        // A reset read from one side, or a write the other side refused, becomes a reset to the other side.
        switch (upOutcome, downOutcome) {
        case (.readReset, _), (_, .writeReset):
            finish(c, slot: slot, reason: .clientReset, reset: true)
            return
        case (_, .readReset), (.writeReset, _):
            finish(c, slot: slot, reason: .upstreamReset, reset: true)
            return
        default: break
        }
        if c.up.done && c.down.done { finish(c, slot: slot, reason: .done, reset: false) }
    }

    /// Moves bytes `from` → `to` until `from` has nothing more or `to` takes nothing more. `last`: the other
    /// direction is finished, so this one's EOF ends the connection and the close that follows sends the FIN.
    func pump(_ f: inout Flow, from: borrowing FileDescriptor, to: borrowing FileDescriptor, drain: Bool, last: Bool)
        -> PumpOutcome
    {
        // Bounded: each pass moves data or returns; a 64 KiB chunk per pass covers far more than one event's worth.
        for _ in 0..<100_000 {
            if f.inPipe > 0 {
                switch FileDescriptor.splice(from: f.pipeRead, to: to, count: f.inPipe) {
                case .ok(let n) where n > 0:
                    f.inPipe -= n
                    continue
                case .failed(let e) where e == EAGAIN: return .blocked
                default: return .writeReset
                }
            }
            if !f.pending.isEmpty {
                let offset = f.pendingOffset
                let w = f.pending.withUnsafeBytes { to.send($0.baseAddress! + offset, count: $0.count - offset) }
                switch w {
                case .ok(let n) where n > 0:
                    f.pendingOffset += n
                    if f.pendingOffset == f.pending.count {
                        f.pending = []
                        f.pendingOffset = 0
                    }
                    continue
                case .failed(let e) where e == EAGAIN: return .blocked
                default: return .writeReset
                }
            }
            if f.eof {
                if !f.shutDown {
                    if !last { to.shutdownWrite() }
                    f.shutDown = true
                    f.releasePipe()
                }
                return .idle
            }
            // Handing off: what the sockets hold stays in them, for the next process to read.
            if handingOff { return .idle }
            if f.pipeRead.isOpen {
                switch FileDescriptor.splice(from: from, to: f.pipeWrite, count: spliceChunk) {
                case .ok(let n) where n > 0:
                    f.inPipe += n
                    f.bytes += n
                    continue
                case .ok:
                    f.eof = true
                    continue
                case .failed(let e) where e == EAGAIN: return .idle
                case .failed: return .readReset
                }
            }
            switch from.receive(into: buffer, count: bufferSize) {
            case .ok(let n) where n > 0:
                f.bytes += n
                let w = to.send(buffer, count: n)
                // A read that filled the buffer means bulk data is queued: from now on this direction
                // splices through a pipe and never copies through user space.
                if n == bufferSize && f.bytes >= config.spliceThreshold && !f.pipeRead.isOpen { openPipe(&f) }
                var sent = 0
                switch w {
                case .ok(let k) where k == n:
                    // A short read drained the socket: Linux signals the next arrival as a new edge, so the
                    // confirming read that would only return EAGAIN is skipped.
                    if n < bufferSize && !drain { return .idle }
                    continue
                case .ok(let k): sent = k
                case .failed(let e) where e == EAGAIN: sent = 0
                case .failed: return .writeReset
                }
                f.pending = Array(UnsafeRawBufferPointer(start: buffer + sent, count: n - sent))
                f.pendingOffset = 0
                continue
            case .ok:
                f.eof = true
                continue
            case .failed(let e) where e == EAGAIN: return .idle
            case .failed: return .readReset
            }
        }
        return .idle
    }

    // MARK: handing off across a restart

    /// Gives away every connection with no bytes in the forwarder's hands (established, nothing in a pipe or a
    /// pending buffer): the exporter keeps both sockets (systemd's descriptor store), this process closes its copies.
    func handOffQuiet() {
        guard let export = state.exporter.withLock({ $0 }) else { return }
        for (i, c) in slots.enumerated() {
            guard let c, !c.connecting, !c.handOffFailed, !c.up.waiting, !c.down.waiting, c.greeting.isEmpty else {
                continue
            }
            let handed = HandedOffConnection(
                scope: c.scope, client: c.client.number, upstream: c.upstream.number, inbound: c.direction == .inbound,
                upstreamShut: c.up.shutDown, downstreamShut: c.down.shutDown)
            guard export(handed) else {
                c.handOffFailed = true
                continue
            }
            // Out of the epoll set first: the stored copies keep the sockets (and so their registrations) alive.
            epoll.remove(c.client)
            epoll.remove(c.upstream)
            finish(c, slot: i, reason: .handedOff, reset: false)
        }
    }

    /// Resumes relaying a connection an earlier process handed off, in the state it left it.
    func adopt(_ a: AdoptedConnection, scope: ListenerScope) {
        let client = a.client.take()
        let upstream = a.upstream.take()
        // A connection whose peer reset it meanwhile has no peer address: it is gone (closed here).
        guard client.isOpen, upstream.isOpen, let source = client.peerAddress().flatMap(SocketAddress.endpoint),
            let destination = upstream.peerAddress().flatMap(SocketAddress.endpoint)
        else { return }
        let c = Connection(
            client: client, direction: a.inbound ? .inbound : .outbound, source: source, destination: destination,
            now: monotonicNanoseconds(), metrics: metrics)
        c.upstream = upstream
        c.connecting = false
        c.scope = scope.id
        c.up.eof = a.upstreamShut
        c.up.shutDown = a.upstreamShut
        c.down.eof = a.downstreamShut
        c.down.shutDown = a.downstreamShut
        let slot = occupy(c)
        guard watch(c, slot: slot) else {
            finish(c, slot: slot, reason: .shutdown, reset: true)
            return
        }
        // What arrived while no process relayed it is read now (an edge-triggered registration may report it once).
        relay(c, slot: slot, up: true, down: true, drain: true)
    }

    /// Puts a connection in a free slot and counts it active; its slot.
    func occupy(_ c: Connection) -> Int {
        let slot =
            freeSlots.popLast()
            ?? {
                slots.append(nil)
                return slots.count - 1
            }()
        slots[slot] = c
        _ = state.active.add(1, ordering: .relaxed)
        metrics.active[c.direction]!.increment()
        return slot
    }

    /// Adds both sockets to the epoll set, edge-triggered; whether it could.
    func watch(_ c: Connection, slot: Int) -> Bool {
        let events = Epoll.readable | Epoll.writable | Epoll.peerClosed | Epoll.edgeTriggered
        do {
            try epoll.add(c.client, events: events, tag: UInt64(slot) << 2 | Self.kindClient)
            try epoll.add(c.upstream, events: events, tag: UInt64(slot) << 2 | Self.kindUpstream)
            return true
        } catch { return false }
    }

    func openPipe(_ f: inout Flow) {
        guard let pipe = try? Pipe.open(nonBlocking: true) else { return }
        // A larger pipe moves more per splice; the kernel caps it at fs.pipe-max-size.
        pipe.grow(to: spliceChunk)
        f.pipeRead = pipe.read
        f.pipeWrite = pipe.write
    }

    /// Closes both sockets, with RST when `reset`; frees the slot at the end of this round of events.
    /// Closes both sockets, with RST when `reset`; frees the slot at the end of this round of events. The
    /// connection's descriptors close when it is released (the slot was its only owner).
    func finish(_ c: Connection, slot: Int, reason: CloseReason, reset: Bool) {
        guard slots[slot] === c else { return }
        if reset {
            c.client.setResetOnClose()
            if c.upstream.isOpen { c.upstream.setResetOnClose() }
        }
        // Closing a registered descriptor removes it from epoll; the pipes close with the flows.
        c.upstream = .closed
        c.up.releasePipe()
        c.down.releasePipe()
        slots[slot] = nil
        freedThisRound.append(slot)
        metrics.active[c.direction]!.decrement()
        if let accessLog { log(c, reason: reason, to: accessLog) }
        state.connectionClosed()
    }

    func log(_ c: Connection, reason: CloseReason, to file: AccessLogFile) {
        let ms = Double(monotonicNanoseconds() - c.started) / 1e6
        file.append(
            "{\"direction\":\"\(c.direction.rawValue)\",\"source\":\"\(c.source)\",\"original_destination\":\"\(c.destination)\",\"bytes_sent\":\(c.up.bytes),\"bytes_received\":\(c.down.bytes),\"duration_ms\":\((ms * 1000).rounded() / 1000),\"close\":\"\(reason.rawValue)\"}\n"
        )
    }

    // MARK: timers

    func sweep(_ now: UInt64) {
        if resumeAcceptAt != 0 && now >= resumeAcceptAt && !state.draining.load(ordering: .relaxed) {
            resumeAcceptAt = 0
            resumeAccepting()
        }
        let connectLimit = UInt64(config.connectTimeoutMilliseconds) * 1_000_000
        let idleLimit = UInt64(config.idleTimeoutMilliseconds) * 1_000_000
        for (i, c) in slots.enumerated() {
            guard let c else { continue }
            if c.connecting && now - c.started > connectLimit {
                metrics.connectFailed("timeout")
                finish(c, slot: i, reason: .connectTimeout, reset: true)
            } else if !c.connecting && idleLimit > 0 && now - c.lastActivity > idleLimit {
                finish(c, slot: i, reason: .idleTimeout, reset: false)
            }
        }
    }
}

enum ForwarderError: Error, CustomStringConvertible {
    case listen(Endpoint, SystemCallError)
    var description: String {
        switch self {
        case .listen(let ep, let e): return "cannot listen on \(ep): \(e.reason)"
        }
    }
}
