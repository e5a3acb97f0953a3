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
        /// What is in systemd's descriptor store for the pod's endpoints or listeners.
        var stored: [String] = []
    }

    let handles = Mutex<[NamespaceIdentity: NamespaceHandle]>([:])
    let held = Mutex<[NamespaceIdentity: Held]>([:])
    let nextScope = Atomic<UInt64>(0)
    let xds: XDSServer?
    let forwarder: Forwarder?
    let watcher: RulesetWatcher?
    let endpoints: PodXDSEndpoints
    let logger: Logger
    /// Where the pods' descriptors are kept across restarts (systemd's store), and what an earlier process left.
    public let store: PodDescriptorStore
    /// Pods by forwarder scope, for the connections the forwarder hands off at a restart.
    let scopePods = Mutex<[UInt64: NamespaceIdentity]>([:])
    let nextConnection = Atomic<UInt64>(0)

    /// Serves sidecar pods from `xds` and forwarder pods from `forwarder` (started shared); `watcher` hears their
    /// rules change.
    public init(
        xds: XDSServer?, forwarder: Forwarder?, watcher: RulesetWatcher?, endpoints: PodXDSEndpoints = .init(),
        store: PodDescriptorStore = .none, logger: Logger = Logger(label: "weir.daemon")
    ) {
        self.store = store
        self.xds = xds
        self.forwarder = forwarder
        self.watcher = watcher
        self.endpoints = endpoints
        self.logger = logger
    }

    /// Keeps `handle` for the pod it names; a handle already kept for that namespace stays (this one closes).
    /// Returns the handle in force. A new one goes into the descriptor store too, unless it came from there (`stored`).
    @discardableResult
    public func keep(_ handle: NamespaceHandle, stored: Bool = false) -> NamespaceHandle {
        let (kept, new) = handles.withLock { h -> (NamespaceHandle, Bool) in
            if let existing = h[handle.identity] { return (existing, false) }
            h[handle.identity] = handle
            return (handle, true)
        }
        // Kept across a restart too (a handle taken back from the store is there already).
        if new && !stored {
            store.keep(StoredName.namespace(kept.identity), [kept.descriptor.number], poll: false)
        }
        return kept
    }

    /// The namespace handle an earlier process stored for the pod `id`, if it is still that namespace.
    public func storedHandle(_ id: NamespaceIdentity, path: String) -> NamespaceHandle? {
        let name = StoredName.namespace(id)
        let slots = store.take(name)
        for slot in slots {
            if let h = try? NamespaceHandle.adopt(slot.take(), path: path), h.identity == id { return h }
        }
        // Something else under the name: out of the store.
        if !slots.isEmpty { store.forget(name) }
        return nil
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
            // Each endpoint taken over from an earlier process if it stored one at this address.
            let tcpName = StoredName.xds(id, address: "127.0.0.1:\(port)")
            let unixName = StoredName.xds(id, address: "unix:" + socket)
            let storedTCP = port == 0 ? [] : store.take(tcpName)
            let storedUnix = socket.isEmpty ? [] : store.take(unixName)
            let slots = try await handle.run(name: "weir-pod-xds") { () -> [(DescriptorSlot, Bool, String, Bool)] in
                var out: [(DescriptorSlot, Bool, String, Bool)] = []
                if port != 0 {
                    let address = SocketAddressBytes.ipv4([127, 0, 0, 1], port: port)
                    if let slot = Self.listening(storedTCP, at: address) {
                        out.append((slot, true, "127.0.0.1:\(port)", true))
                    } else {
                        let fd = try FileDescriptor.tcp(ipv6: false, nonBlocking: true)
                        try fd.setReuseAddress()
                        try fd.bind(address, describedAs: "127.0.0.1:\(port) in the pod")
                        try fd.listen(backlog: 128)
                        out.append((DescriptorSlot(fd), true, "127.0.0.1:\(port)", false))
                    }
                }
                if !socket.isEmpty {
                    let address = SocketAddressBytes.unix(socket)
                    if let slot = Self.listening(storedUnix, at: address) {
                        out.append((slot, false, "unix:\(socket)", true))
                    } else {
                        let fd = try FileDescriptor.unixStream(nonBlocking: true)
                        try fd.bind(address, describedAs: "unix:\(socket) in the pod")
                        try fd.listen(backlog: 128)
                        out.append((DescriptorSlot(fd), false, "unix:\(socket)", false))
                    }
                }
                return out
            }
            // New ones go into the store (replacing what was there), before the server takes them.
            for (slot, isTCP, _, adopted) in slots where !adopted {
                let name = isTCP ? tcpName : unixName
                store.forget(name)
                store.keep(name, [slot.peek { $0.number }])
            }
            if port != 0 { h.stored.append(tcpName) }
            if !socket.isEmpty { h.stored.append(unixName) }
            do {
                for (slot, isTCP, address, _) in slots {
                    h.endpoints.append(
                        try await xds.attach(listening: slot.take(), isTCP: isTCP, address: address, scope: scope))
                }
            } catch {
                for endpoint in h.endpoints { await xds.detach(endpoint) }
                for name in h.stored { store.forget(name) }
                watcher?.remove(id)
                throw error
            }
        case .forwarder:
            guard let forwarder else { break }
            let scope = nextScope.add(1, ordering: .relaxed).newValue
            let spec = e.settings.spec
            let name = StoredName.forwarder(
                id, outbound: spec.outboundPort, inbound: spec.inboundPort, mode: spec.mode.rawValue)
            let stored = store.take(name)
            // Connections an earlier process handed off: resumed, and out of the store (else closing them here
            // would not close them).
            var resumed: [AdoptedConnection] = []
            for (connection, slots) in store.take(prefix: StoredName.connectionPrefix(id)) {
                store.forget(connection)
                guard slots.count == 2, let state = StoredName.connectionState(connection) else { continue }
                resumed.append(
                    AdoptedConnection(
                        client: slots[0], upstream: slots[1], inbound: state.inbound, upstreamShut: state.upstreamShut,
                        downstreamShut: state.downstreamShut))
            }
            scopePods.withLock { $0[scope] = id }
            let store = self.store
            let outcome = try await forwarder.attach(
                ListenerScope(
                    id: scope, namespace: handle, outboundPort: spec.outboundPort, inboundPort: spec.inboundPort,
                    mode: spec.mode, bypassMark: spec.bypassMark),
                adopting: stored, connections: resumed
            ) { numbers, outcome in
                // Stored again unless they are exactly the set the store holds.
                if outcome.opened > 0 || outcome.unused > 0 || stored.isEmpty {
                    if !stored.isEmpty { store.forget(name) }
                    store.keep(name, numbers)
                }
            }
            if !stored.isEmpty || !resumed.isEmpty {
                logger.info(
                    "forwarder pod taken over",
                    metadata: [
                        "netns": "\(e.path)", "listeners": "\(outcome.adopted)", "opened": "\(outcome.opened)",
                        "connections": "\(resumed.count)",
                    ])
            }
            h.scope = scope
            h.stored.append(name)
        }
        held.withLock { $0[id] = h }
    }

    public func close(_ id: NamespaceIdentity) async {
        await closeServing(id)
        watcher?.remove(id)
        // The namespace goes with its last holder: a deleted pod's namespace is freed here (and from the store).
        store.forget(StoredName.namespace(id))
        handles.withLock { _ = $0.removeValue(forKey: id) }
    }

    func closeServing(_ id: NamespaceIdentity) async {
        guard let h = held.withLock({ $0.removeValue(forKey: id) }) else { return }
        for name in h.stored { store.forget(name) }
        for endpoint in h.endpoints { await xds?.detach(endpoint) }
        if let scope = h.scope {
            scopePods.withLock { _ = $0.removeValue(forKey: scope) }
            forwarder?.detach(scope: scope)
        }
    }

    /// Puts a relayed connection the forwarder hands off in the store, under its pod; whether it is there.
    func keep(_ c: HandedOffConnection) -> Bool {
        guard let id = scopePods.withLock({ $0[c.scope] }) else { return false }
        let serial = nextConnection.add(1, ordering: .relaxed).newValue
        let state = HandedOffState(inbound: c.inbound, upstreamShut: c.upstreamShut, downstreamShut: c.downstreamShut)
        return store.keep(StoredName.connection(id, serial: serial, state), [c.client, c.upstream])
    }

    /// The stored listener bound to `address`, if one is (the others close).
    static func listening(_ slots: [DescriptorSlot], at address: SocketAddressBytes) -> DescriptorSlot? {
        var found: DescriptorSlot?
        for slot in slots {
            if found == nil, slot.peek({ $0.localAddress()?.sameAs(address) ?? false }) {
                found = slot
            } else {
                _ = slot.take()
            }
        }
        return found
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
