import Logging
import Synchronization
import WeirCapture
import WeirForwarder
import WeirNetfilter
import WeirNetns
import WeirSystem
import WeirXDS

#if canImport(Glibc)
    import Glibc
#endif

/// Where a sidecar pod's xDS endpoint is, inside the pod's namespace.
public struct PodXDSEndpoints: Sendable, Hashable {
    /// The loopback TCP port (`127.0.0.1:PORT` in the pod); 0 for none.
    public var port: UInt16 = 15010
    /// The abstract Unix socket name (`@weir/xds`: abstract names are per network namespace); empty for none
    /// (`none` in the config).
    public var socket: String = "@weir/xds"

    /// The defaults: 127.0.0.1:15010 and `@weir/xds`.
    public init(port: UInt16 = 15010, socket: String = "@weir/xds") {
        self.port = port
        self.socket = socket
    }
}

/// What the daemon holds for each pod besides its rules: the namespace handle (so the pod stays the same namespace
/// whatever happens at its path), the xDS endpoint of a sidecar pod, the forwarder listeners of a forwarder pod, and
/// the nftables notifications of its namespace. All of it is opened in the pod's namespace and released together.
public final class PodHost: PodServing, Sendable {
    struct Held: Sendable {
        var settings: PodSettings?
        var endpoints: [XDSEndpoint] = []
        var scope: UInt64?
    }

    let handles = Mutex<[NamespaceIdentity: NamespaceHandle]>([:])
    let held = Mutex<[NamespaceIdentity: Held]>([:])
    let nextScope = Atomic<UInt64>(0)
    let xds: XDSServer?
    let forwarder: Forwarder?
    let watcher: RulesetWatcher?
    let endpoints: PodXDSEndpoints
    let logger: Logger

    /// Serves sidecar pods from `xds` and forwarder pods from `forwarder` (started shared); `watcher` hears their
    /// rules change.
    public init(
        xds: XDSServer?, forwarder: Forwarder?, watcher: RulesetWatcher?, endpoints: PodXDSEndpoints = .init(),
        logger: Logger = Logger(label: "weir.daemon")
    ) {
        self.xds = xds
        self.forwarder = forwarder
        self.watcher = watcher
        self.endpoints = endpoints
        self.logger = logger
    }

    /// Keeps `handle` for the pod it names; a handle already kept for that namespace stays (this one closes).
    /// Returns the handle in force.
    @discardableResult
    public func keep(_ handle: NamespaceHandle) -> NamespaceHandle {
        handles.withLock { h in
            if let existing = h[handle.identity] { return existing }
            h[handle.identity] = handle
            return handle
        }
    }

    /// The handle kept for a pod.
    public func handle(_ id: NamespaceIdentity) -> NamespaceHandle? { handles.withLock { $0[id] } }

    /// The rules of a pod, on its kept handle (never reopened by path: the path may name another namespace now).
    public func capture(_ e: Enrollment, backend: BackendChoice = .nftables) -> any CaptureBackend {
        guard let handle = handle(e.identity) else { return UnheldNamespace(path: e.path) }
        return CaptureInstaller(namespace: NetworkNamespace(handle: handle), backend: backend)
    }

    /// What is open for a pod: xDS endpoint addresses, or forwarder ports.
    public func listeners(_ id: NamespaceIdentity) -> [String] {
        guard let h = held.withLock({ $0[id] }), let settings = h.settings else { return [] }
        switch settings.mode {
        case .sidecar: return h.endpoints.map { "xds " + $0.address }
        case .forwarder:
            return [
                "forwarder outbound :\(settings.spec.outboundPort)", "forwarder inbound :\(settings.spec.inboundPort)",
            ]
        }
    }

    public func open(_ e: Enrollment) async throws {
        let id = e.identity
        guard let handle = handle(id) else { throw UnheldNamespace(path: e.path) }
        if let current = held.withLock({ $0[id] }), current.settings == e.settings { return }
        // Settings changed (a re-enrollment): what was open for the old ones goes first.
        await closeServing(id)
        await watcher?.add(handle)
        var h = Held(settings: e.settings)
        switch e.settings.mode {
        case .sidecar:
            guard let xds else { break }
            let scope = XDSEndpointScope(name: e.name, nodeIDs: Set(e.settings.nodeIDs))
            let (port, socket) = (endpoints.port, endpoints.socket)
            let slots = try await handle.run(name: "weir-pod-xds") { () -> [(DescriptorSlot, Bool, String)] in
                var out: [(DescriptorSlot, Bool, String)] = []
                if port != 0 {
                    let fd = try FileDescriptor.tcp(ipv6: false, nonBlocking: true)
                    try fd.setReuseAddress()
                    try fd.bind(.ipv4([127, 0, 0, 1], port: port), describedAs: "127.0.0.1:\(port) in the pod")
                    try fd.listen(backlog: 128)
                    out.append((DescriptorSlot(fd), true, "127.0.0.1:\(port)"))
                }
                if !socket.isEmpty {
                    let fd = try FileDescriptor.unixStream(nonBlocking: true)
                    try fd.bind(.unix(socket), describedAs: "unix:\(socket) in the pod")
                    try fd.listen(backlog: 128)
                    out.append((DescriptorSlot(fd), false, "unix:\(socket)"))
                }
                return out
            }
            do {
                for (slot, isTCP, address) in slots {
                    h.endpoints.append(
                        try await xds.attach(listening: slot.take(), isTCP: isTCP, address: address, scope: scope))
                }
            } catch {
                for endpoint in h.endpoints { await xds.detach(endpoint) }
                watcher?.remove(id)
                throw error
            }
        case .forwarder:
            guard let forwarder else { break }
            let scope = nextScope.add(1, ordering: .relaxed).newValue
            let spec = e.settings.spec
            try await forwarder.attach(
                ListenerScope(
                    id: scope, namespace: handle, outboundPort: spec.outboundPort, inboundPort: spec.inboundPort,
                    mode: spec.mode, bypassMark: spec.bypassMark))
            h.scope = scope
        }
        held.withLock { $0[id] = h }
    }

    public func close(_ id: NamespaceIdentity) async {
        await closeServing(id)
        watcher?.remove(id)
        // The namespace goes with its last holder: a deleted pod's namespace is freed here.
        handles.withLock { _ = $0.removeValue(forKey: id) }
    }

    func closeServing(_ id: NamespaceIdentity) async {
        guard let h = held.withLock({ $0.removeValue(forKey: id) }) else { return }
        for endpoint in h.endpoints { await xds?.detach(endpoint) }
        if let scope = h.scope { forwarder?.detach(scope: scope) }
    }
}

/// A pod whose namespace the daemon does not hold (released meanwhile): nothing is done by path.
struct UnheldNamespace: CaptureBackend, Error, CustomStringConvertible {
    var path: String
    var description: String { "\(path): the daemon holds no handle on this namespace" }
    func install(_ plan: RedirectPlan) throws { throw self }
    func clean() throws -> Bool { throw self }
    func observe() throws -> CheckInput { throw self }
}

extension Enrollment {
    /// The pod's name: its namespace's name in the netns directory, `pid-N` for `/proc/N/ns/net`.
    public var name: String { Self.name(ofPath: path) }

    /// The pod name a namespace path gives.
    public static func name(ofPath path: String) -> String {
        let parts = path.split(separator: "/")
        if parts.count == 4, parts[0] == "proc", parts[2] == "ns" { return "pid-\(parts[1])" }
        return parts.last.map(String.init) ?? path
    }
}

/// Hears nftables change notifications from every pod's namespace, on one thread: a netlink socket subscribed to
/// NFNLGRP_NFTABLES in each namespace, all in one epoll set. Each burst of changes in a pod is reported once.
public final class RulesetWatcher: Sendable {
    enum Command {
        case add(NamespaceIdentity, DescriptorSlot)
        case remove(NamespaceIdentity)
    }
    let commands = Mutex<[Command]>([])
    let wake: SharedDescriptor
    let stopping = Atomic<Bool>(false)
    let thread = Mutex<OSThread?>(nil)
    let onChange: @Sendable (NamespaceIdentity) -> Void
    let logger: Logger
    /// Subscribers that could not be made (the pod is then checked only on the timer).
    public let failures = Atomic<Int>(0)

    /// NETLINK_NETFILTER and its nftables group.
    static let bus: Int32 = 12, group: UInt32 = 7

    /// Starts the watcher thread; `onChange` is called from it with the pod whose rules changed.
    public init(logger: Logger, onChange: @escaping @Sendable (NamespaceIdentity) -> Void) throws {
        self.onChange = onChange
        self.logger = logger
        wake = SharedDescriptor(try FileDescriptor.eventCounter())
        let t = try OSThread.start(name: "weir-nft-watch") { [self] in loop() }
        thread.withLock { $0 = t }
    }

    /// Subscribes to the pod's changes (in its namespace, from a thread that enters it).
    func add(_ handle: NamespaceHandle) async {
        do {
            let slot = try await handle.run(name: "weir-nft-sub") {
                DescriptorSlot(try FileDescriptor.netlinkSubscriber(bus: Self.bus, group: Self.group))
            }
            post(.add(handle.identity, slot))
        } catch {
            _ = failures.add(1, ordering: .relaxed)
            logger.warning(
                "cannot hear nftables changes in a pod; it is checked on the timer only",
                metadata: ["netns": "\(handle)", "error": "\(error)"])
        }
    }

    func remove(_ id: NamespaceIdentity) { post(.remove(id)) }

    func post(_ c: Command) {
        commands.withLock { $0.append(c) }
        wake.descriptor.signalEvent()
    }

    /// Ends the thread.
    public func stop() {
        stopping.store(true, ordering: .relaxed)
        wake.descriptor.signalEvent()
        thread.withLock { t in
            let out = t
            t = nil
            return out
        }?.join()
    }

    func loop() {
        guard let epoll = try? Epoll() else {
            logger.error("the nftables watcher cannot start (epoll); pods are checked on the timer only")
            return
        }
        guard (try? epoll.add(wake.descriptor, events: Epoll.readable, tag: 0)) != nil else { return }
        var sockets: [UInt64: (NamespaceIdentity, SharedDescriptor)] = [:]
        var byPod: [NamespaceIdentity: UInt64] = [:]
        var nextTag: UInt64 = 1
        var tags = [UInt64](repeating: 0, count: 64)
        var events = [UInt32](repeating: 0, count: 64)
        while !stopping.load(ordering: .relaxed) {
            guard let n = try? epoll.wait(tags: &tags, events: &events, timeout: -1) else {
                logger.error("the nftables watcher stopped (epoll_wait failed); pods are checked on the timer only")
                return
            }
            var changed: [NamespaceIdentity] = []
            for i in 0..<n {
                if tags[i] == 0 {
                    wake.descriptor.acknowledgeTimer()
                    for c in commands.withLock({ c in
                        let out = c
                        c = []
                        return out
                    }) {
                        switch c {
                        case .add(let id, let slot):
                            if let old = byPod.removeValue(forKey: id) { sockets[old] = nil }
                            let fd = SharedDescriptor(slot.take())
                            guard (try? epoll.add(fd.descriptor, events: Epoll.readable, tag: nextTag)) != nil else {
                                continue
                            }
                            sockets[nextTag] = (id, fd)
                            byPod[id] = nextTag
                            nextTag += 1
                        case .remove(let id):
                            // Closing the socket takes it out of the epoll set.
                            if let tag = byPod.removeValue(forKey: id) { sockets[tag] = nil }
                        }
                    }
                } else if let (id, fd) = sockets[tags[i]] {
                    if fd.descriptor.drainNotifications() { changed.append(id) }
                }
            }
            for id in changed { onChange(id) }
        }
    }
}
