import Logging
import Synchronization
import WeirCapture
import WeirNetns
import WeirSystem

#if canImport(Glibc)
    import Glibc
#endif

/// The transparent forwarder: listeners on the capture ports inside a namespace, and epoll workers that relay.
public final class Forwarder: Sendable {
    /// The ports, capture mode, target and limits the forwarder runs with.
    public let config: ForwarderConfig
    let logger: Logger
    let state = ForwarderState()
    let threads = Mutex<[OSThread]>([])
    /// The workers' inboxes, in a shared forwarder (empty otherwise).
    let inboxes = Mutex<[WorkerInbox]>([])
    let metrics = ForwarderMetrics()
    /// Pods served, in a shared forwarder: scope id to its ports.
    let scopes = Mutex<[UInt64: ListenerScope]>([:])

    /// A forwarder for `config`; nothing listens until `start(in:)`.
    public init(config: ForwarderConfig, logger: Logger = Logger(label: "weir.forward")) {
        self.config = config
        self.logger = logger
    }

    /// Active relayed connections.
    public var activeConnections: Int { state.active.load(ordering: .relaxed) }

    /// Whether the forwarder has stopped accepting (draining or stopped).
    public var isDraining: Bool { state.draining.load(ordering: .relaxed) }

    /// Opens the listeners inside `namespace` and starts the workers there. Throws if a port cannot be bound, or if a
    /// worker's thread cannot enter the namespace (then nothing is left running).
    public func start(in given: NetworkNamespace) throws {
        // Opened once: every listener and worker is in this one namespace, even if its path is reused meanwhile.
        let namespace = given.path == nil ? given : NetworkNamespace(handle: try given.open())
        let config = self.config
        var handoffs: [ListenerHandoff] = []
        for _ in 0..<max(1, config.workers) {
            handoffs.append(
                ListenerHandoff(
                    try namespace.run {
                        try Self.openListeners(
                            config, ports: (config.outboundPort, config.inboundPort), mode: config.mode, scope: nil)
                    }))
        }
        try startWorkers(in: namespace, handoffs: handoffs, shared: false)
        logger.info(
            "forwarding",
            metadata: [
                "outbound": "\(config.outboundPort)", "inbound": "\(config.inboundPort)",
                "mode": "\(config.mode.rawValue)",
            ])
    }

    /// Starts the workers of a shared forwarder, in the calling process's namespace, with no listeners: pods'
    /// listeners come and go with `attach` and `detach`, served by these same threads (none per pod).
    public func startShared() throws {
        var handoffs: [ListenerHandoff] = []
        for _ in 0..<max(1, config.workers) { handoffs.append(ListenerHandoff([])) }
        try startWorkers(in: .current, handoffs: handoffs, shared: true)
    }

    /// Opens a pod's listeners inside its namespace (one SO_REUSEPORT set per worker) and hands them to the shared
    /// workers. Returns once they listen: the kernel queues connections from then on.
    ///
    /// `adopting`: listening sockets an earlier process held for this pod (systemd's descriptor store); each one on a
    /// port of the pod's is used instead of a new one (connections queued in it while no process accepted are served
    /// now), the others close. `connections`: relayed connections an earlier process handed off, resumed by the
    /// workers. `onListening` sees every listener's descriptor number before the workers take them.
    @discardableResult
    public func attach(
        _ scope: ListenerScope, adopting: [DescriptorSlot] = [], connections: [AdoptedConnection] = [],
        onListening: ([Int32], AttachOutcome) -> Void = { _, _ in }
    ) async throws -> AttachOutcome {
        let boxes = inboxes.withLock { $0 }
        precondition(!boxes.isEmpty, "attach needs startShared")
        let config = self.config
        let (sets, outcome) = try await scope.namespace.run(name: "weir-fwd-listen") {
            () throws -> ([ListenerHandoff], AttachOutcome) in
            var spare = AdoptedListeners(adopting)
            let sets = try boxes.map { _ in
                ListenerHandoff(
                    try Self.openListeners(
                        config, ports: (scope.outboundPort, scope.inboundPort), mode: scope.mode, scope: scope,
                        adopted: &spare))
            }
            return (sets, AttachOutcome(adopted: spare.used, opened: spare.opened, unused: spare.closeRest()))
        }
        onListening(sets.flatMap { $0.numbers }, outcome)
        scopes.withLock { $0[scope.id] = scope }
        for (box, set) in zip(boxes, sets) { box.post(.add(set.take())) }
        // Spread over the workers, as accepted connections are.
        var shares = Array(repeating: [AdoptedConnection](), count: boxes.count)
        for (i, c) in connections.enumerated() { shares[i % boxes.count].append(c) }
        for (box, share) in zip(boxes, shares) where !share.isEmpty { box.post(.adopt(scope, share)) }
        return outcome
    }

    /// Hands the relayed connections to the next process instead of closing them: stops accepting (the listeners'
    /// other holders keep the kernel queueing connections), stops reading, and gives `export` each connection once no
    /// byte of it is left in the forwarder (written on, or still in its sockets). After `timeout`, what could not be
    /// given away is closed. Returns how many were closed so.
    public func handOff(
        timeout: Duration, export: @escaping @Sendable (HandedOffConnection) -> Bool
    ) async -> Int {
        state.exporter.withLock { $0 = export }
        state.handingOff.store(true, ordering: .relaxed)
        let handed = AsyncSignal()
        state.onDrained.withLock { $0 = { handed.fire() } }
        await stopAccepting()
        for box in inboxes.withLock({ $0 }) { box.wake.signalEvent() }
        if state.active.load(ordering: .relaxed) == 0 { handed.fire() }
        await handed.wait(timeout: timeout)
        let left = state.active.load(ordering: .relaxed)
        await stop()
        return left
    }

    /// Closes a pod's listeners and resets its relayed connections (its namespace is gone, or it was unenrolled).
    public func detach(scope id: UInt64) {
        scopes.withLock { _ = $0.removeValue(forKey: id) }
        for box in inboxes.withLock({ $0 }) { box.post(.remove(scope: id)) }
    }

    /// Pods whose listeners the shared forwarder serves.
    public var servedPods: Int { scopes.withLock { $0.count } }

    func startWorkers(in namespace: NetworkNamespace, handoffs: [ListenerHandoff], shared: Bool) throws {
        let config = self.config
        let logger = self.logger
        let metrics = self.metrics
        let accessLog = try config.accessLogPath.map { path throws(SystemCallError) in
            do throws(SystemCallError) { return try AccessLogFile(path: path) } catch {
                throw error.context("opening the access log")
            }
        }
        let boxes = shared ? try handoffs.map { _ in try WorkerInbox() } : []
        inboxes.withLock { $0 = boxes }
        let state = self.state
        state.running.store(handoffs.count, ordering: .relaxed)
        state.accepting.store(handoffs.count, ordering: .relaxed)
        do {
            for (i, handoff) in handoffs.enumerated() {
                let t = try namespace.thread(name: "weir-fwd-\(i)") {
                    // The worker owns the listeners from now on: closing them is its alone (no local keeps them).
                    do {
                        let worker = try Worker(
                            config: config, state: state, metrics: metrics, listeners: handoff.take(),
                            accessLog: accessLog, inbox: boxes.isEmpty ? nil : boxes[i], logger: logger)
                        worker.run()
                    } catch {
                        // Its listeners (released here) would keep taking a share of new connections that nobody accepts.
                        logger.error("worker failed", metadata: ["error": "\(error)"])
                        state.listenersClosed()
                    }
                    state.workerEnded()
                }
                threads.withLock { $0.append(t) }
            }
        } catch {
            // Workers already started end; listeners never handed over close with their handoff.
            for h in handoffs { _ = h.take() }
            let started = threads.withLock { $0.count }
            for _ in started..<handoffs.count {
                state.listenersClosed()
                state.workerEnded()
            }
            state.draining.store(true, ordering: .relaxed)
            state.stopping.store(true, ordering: .relaxed)
            join()
            throw error
        }
    }

    /// One listener per port and family; `scope` names the pod they serve in a shared forwarder.
    static func openListeners(
        _ config: ForwarderConfig, ports: (UInt16, UInt16), mode: CaptureMode, scope: ListenerScope?
    ) throws -> [Listener] {
        var none = AdoptedListeners([])
        return try openListeners(config, ports: ports, mode: mode, scope: scope, adopted: &none)
    }

    /// The same, taking one from `adopted` on the same port and family instead of opening a new one.
    static func openListeners(
        _ config: ForwarderConfig, ports: (UInt16, UInt16), mode: CaptureMode, scope: ListenerScope?,
        adopted: inout AdoptedListeners
    ) throws -> [Listener] {
        var out: [Listener] = []
        for (port, direction) in [(ports.0, FlowDirection.outbound), (ports.1, .inbound)] {
            for family in config.families {
                let any = Endpoint(
                    family: family, address: Array(repeating: 0, count: family == .ipv4 ? 4 : 16), port: port)
                if let fd = adopted.take(port: port, family: family) {
                    out.append(Listener(socket: fd, direction: direction, family: family, scope: scope))
                    continue
                }
                adopted.opened += 1
                do {
                    let fd = try FileDescriptor.tcp(ipv6: family == .ipv6, nonBlocking: true)
                    if family == .ipv6 { try fd.setIPv6Only() }
                    try fd.setReuse()
                    // Accepted sockets inherit TCP_NODELAY from their listener: set once here, not per connection.
                    try fd.setNoDelay()
                    if mode == .tproxy && direction == .inbound { try fd.setTransparent(ipv6: family == .ipv6) }
                    try fd.bind(SocketAddress.make(any), describedAs: "\(any)")
                    try fd.listen(backlog: 4096)
                    out.append(Listener(socket: fd, direction: direction, family: family, scope: scope))
                } catch {
                    // Those opened so far close as `out` goes.
                    throw ForwarderError.listen(any, error)
                }
            }
        }
        return out
    }

    /// Stops accepting and waits (without blocking a thread) until the open connections have finished or the drain
    /// timeout passed; then closes the rest and waits for the workers to end.
    public func drain() async {
        await stopAccepting()
        let drained = AsyncSignal()
        state.onDrained.withLock { $0 = { drained.fire() } }
        if state.active.load(ordering: .relaxed) == 0 { drained.fire() }
        await drained.wait(timeout: .milliseconds(config.drainTimeoutMilliseconds))
        await stop()
    }

    /// Stops accepting: returns once every worker has closed its listeners, so the kernel refuses new connections
    /// (within a worker's tick, 100 ms). Open connections go on.
    public func stopAccepting() async {
        let closed = AsyncSignal()
        state.onListenersClosed.withLock { $0 = { closed.fire() } }
        state.draining.store(true, ordering: .relaxed)
        if state.accepting.load(ordering: .acquiring) <= 0 { closed.fire() }
        await closed.wait(timeout: .seconds(2))
    }

    /// Closes everything now and waits for the workers to end.
    public func stop() async {
        let ended = AsyncSignal()
        state.onAllEnded.withLock { $0 = { ended.fire() } }
        state.draining.store(true, ordering: .relaxed)
        state.stopping.store(true, ordering: .relaxed)
        if state.running.load(ordering: .acquiring) == 0 { ended.fire() }
        // The workers notice within a tick (100 ms); a worker that never started counts as ended.
        await ended.wait(timeout: .seconds(5))
        join()
    }

    /// Joins the worker threads (they have ended, or end within a tick).
    func join() {
        let ts = threads.withLock { t -> [OSThread] in
            let c = t
            t = []
            return c
        }
        ts.forEach { $0.join() }
    }
}

/// A pod served by a shared forwarder: its namespace (held open), capture ports, mode and bypass mark.
public final class ListenerScope: Sendable {
    /// Unique among the forwarder's pods.
    public let id: UInt64
    /// The pod's namespace: listeners are opened in it, and upstream sockets made in it.
    public let namespace: NamespaceHandle
    /// The pod's outbound and inbound capture ports.
    public let outboundPort: UInt16, inboundPort: UInt16
    /// How the pod's inbound traffic is captured (the original destination's source).
    public let mode: CaptureMode
    /// The mark on the pod's upstream sockets, which its rules never capture.
    public let bypassMark: UInt32

    /// A pod to serve.
    public init(
        id: UInt64, namespace: NamespaceHandle, outboundPort: UInt16, inboundPort: UInt16, mode: CaptureMode,
        bypassMark: UInt32
    ) {
        self.id = id
        self.namespace = namespace
        self.outboundPort = outboundPort
        self.inboundPort = inboundPort
        self.mode = mode
        self.bypassMark = bypassMark
    }
}

/// Listener sockets on their way to the worker thread that owns them from then on.
final class ListenerHandoff: Sendable {
    let listeners: Mutex<[Listener]>
    init(_ listeners: [Listener]) { self.listeners = Mutex(listeners) }
    /// The descriptor numbers, while the listeners are still here.
    var numbers: [Int32] { listeners.withLock { $0.map { $0.socket.number } } }
    func take() -> [Listener] {
        listeners.withLock { l in
            let out = l
            l = []
            return out
        }
    }
}

/// A one-time event a task can await, with a timeout, fired from any thread.
final class AsyncSignal: Sendable {
    let state = Mutex<(fired: Bool, waiter: CheckedContinuation<Void, Never>?)>((false, nil))

    func fire() {
        let waiter = state.withLock { s -> CheckedContinuation<Void, Never>? in
            if s.fired { return nil }
            s.fired = true
            let w = s.waiter
            s.waiter = nil
            return w
        }
        waiter?.resume()
    }

    /// Returns when fired, or after `timeout`.
    func wait(timeout: Duration) async {
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
                    let resumeNow = self.state.withLock { s -> Bool in
                        if s.fired { return true }
                        s.waiter = c
                        return false
                    }
                    if resumeNow { c.resume() }
                }
            }
            group.addTask { try? await Task.sleep(for: timeout) }
            await group.next()
            // The other child: a timeout fires the signal so that its waiter returns; a fired signal ends the
            // sleep by cancellation.
            self.fire()
            group.cancelAll()
        }
    }
}

/// Listening sockets an earlier process held, by the port and family they are bound to.
struct AdoptedListeners {
    var byAddress: [String: [DescriptorSlot]] = [:]
    var used = 0
    var opened = 0

    init(_ slots: [DescriptorSlot]) {
        for slot in slots {
            guard let ep = slot.peek({ SocketAddress.local($0) }) else { continue }
            byAddress["\(ep.family)/\(ep.port)", default: []].append(slot)
        }
    }

    mutating func take(port: UInt16, family: IPFamily) -> FileDescriptor? {
        guard let slot = byAddress["\(family)/\(port)"]?.popLast() else { return nil }
        used += 1
        return slot.take()
    }

    /// Closes those no port took; how many.
    mutating func closeRest() -> Int {
        let n = byAddress.values.map(\.count).reduce(0, +)
        for slots in byAddress.values { for s in slots { _ = s.take() } }
        byAddress = [:]
        return n
    }
}

/// How a pod's listeners were made: taken over from an earlier process, or opened now.
public struct AttachOutcome: Sendable {
    /// Listeners taken over.
    public var adopted: Int
    /// Listeners opened new.
    public var opened: Int
    /// Listeners handed over that fit no port of the pod (closed).
    public var unused: Int
}

/// A relayed connection given to the next process: both sockets (their numbers, valid during the call) and how far
/// each direction got.
public struct HandedOffConnection: Sendable {
    /// The pod it belongs to (its listener scope).
    public var scope: UInt64
    /// The accepted socket and the upstream socket.
    public var client: Int32, upstream: Int32
    /// Came in on the inbound capture port.
    public var inbound: Bool
    /// The client's end was passed on (upstream shut for writing), and the upstream's (client shut for writing).
    public var upstreamShut: Bool, downstreamShut: Bool
}

/// A relayed connection an earlier process handed off, to resume.
public final class AdoptedConnection: Sendable {
    let client: DescriptorSlot
    let upstream: DescriptorSlot
    let inbound: Bool
    let upstreamShut: Bool
    let downstreamShut: Bool

    /// Both sockets and the state `HandedOffConnection` gave.
    public init(
        client: DescriptorSlot, upstream: DescriptorSlot, inbound: Bool, upstreamShut: Bool, downstreamShut: Bool
    ) {
        self.client = client
        self.upstream = upstream
        self.inbound = inbound
        self.upstreamShut = upstreamShut
        self.downstreamShut = downstreamShut
    }
}
