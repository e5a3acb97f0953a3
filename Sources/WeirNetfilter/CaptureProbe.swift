import WeirCapture
import WeirNetns
import WeirSystem

#if canImport(Glibc)
    import Glibc
#endif

/// One end-to-end probe: a real connection and where it landed.
public struct ProbeCheck: Sendable, Codable, Hashable {
    /// What was probed: `outbound` or `inbound`, with the family when it is per family (`outbound ipv4`).
    public let name: String
    /// passed, failed or skipped.
    public let outcome: String
    /// What happened: where the connection landed, or why the probe failed or was skipped.
    public let detail: String
}

/// The end-to-end probes `weir check --probe` ran in the namespace, each passed, failed or skipped.
public struct ProbeReport: Sendable, Codable {
    /// Every probe run: the outbound ones, then the inbound ones.
    public var checks: [ProbeCheck] = []
    /// The probes that failed; a skipped probe is no problem.
    public var problems: [ProbeCheck] { checks.filter { $0.outcome == "failed" } }
}

/// Proves the capture with real connections inside the namespace: a temporary listener on the capture port
/// (when it is free) must receive an outbound connection to an address that exists nowhere, with that
/// address as its original destination (SO_ORIGINAL_DST / IP6T_SO_ORIGINAL_DST).
struct CaptureProbe {
    let spec: CaptureSpec
    let timeoutMilliseconds: Int32 = 2000

    func run() -> ProbeReport {
        var report = ProbeReport()
        report.checks += outboundChecks()
        report.checks += inboundChecks()
        return report
    }

    func outboundChecks() -> [ProbeCheck] {
        if spec.proxyUIDs.contains(getuid()) || spec.proxyGIDs.contains(getgid()) {
            return [
                .init(
                    name: "outbound", outcome: "skipped",
                    detail:
                        "weir runs as uid \(getuid()) gid \(getgid()), which the spec never captures; probe from another identity"
                )
            ]
        }
        guard let port = capturedPort() else {
            return [
                .init(name: "outbound", outcome: "skipped", detail: "no outbound TCP port is captured by this spec")
            ]
        }
        return spec.families.map { family in
            guard let target = capturedAddress(family) else {
                return .init(
                    name: "outbound \(family.rawValue)", outcome: "skipped",
                    detail: "no \(family.rawValue) destination is captured by this spec")
            }
            return probeOutbound(family: family, address: target, port: port)
        }
    }

    // MARK: inbound

    /// Addresses of the temporary link: the pod side, and the peer in a scratch namespace (198.18.0.0/15, fd00::/8).
    static let inboundPod: [IPFamily: [UInt8]] = [
        .ipv4: [198, 19, 255, 249], .ipv6: IPAddressText.parseIPv6("fd00:5765:6972:ffff::1")!,
    ]
    static let inboundPeer: [IPFamily: [UInt8]] = [
        .ipv4: [198, 19, 255, 250], .ipv6: IPAddressText.parseIPv6("fd00:5765:6972:ffff::2")!,
    ]

    /// An inbound port the spec captures and nothing in the pod listens on.
    func inboundPort() -> UInt16? {
        let candidates: [UInt16]
        switch spec.inboundPorts {
        case .none: return nil
        case .all: candidates = [80, 8080, 9080, 5000, 3000, 1080, 30080]
        case .only(let rs): candidates = rs.flatMap { r in [r.first, r.last] }
        }
        return candidates.first { p in
            !spec.neverCapturedPorts.contains(p) && !spec.inboundExcludePorts.contains { $0.contains(p) }
                && spec.families.allSatisfy { f in (try? ProbeSocket.listen(family: f, port: p)) != nil }
        }
    }

    /// A real connection from outside the pod: a scratch namespace joined to the pod by a temporary veth pair.
    func inboundChecks() -> [ProbeCheck] {
        guard let port = inboundPort() else {
            return [.init(name: "inbound", outcome: "skipped", detail: "no free inbound port is captured by this spec")]
        }
        let excluded = spec.families.filter { f in
            let peer = CIDR(family: f, address: Self.inboundPeer[f]!, prefixLength: f == .ipv4 ? 32 : 128)
            return spec.inboundExcludeSources.contains { $0.contains(peer) }
        }
        let name = "wprobe\(getpid() % 100_000)"
        do {
            let scratch = try ScratchNamespace()
            try ProbeLink.createVethPair(name: name + "a", peer: name + "b", peerNamespace: scratch.handle)
            defer { try? ProbeLink.delete(name + "a") }
            try ProbeLink.setUp(name + "a")
            for f in spec.families {
                try ProbeLink.addAddress(name + "a", address: Self.inboundPod[f]!, prefixLength: f == .ipv4 ? 30 : 126)
            }
            let families = spec.families
            try scratch.handle.run {
                try ProbeLink.setUp(name + "b")
                for f in families {
                    try ProbeLink.addAddress(
                        name + "b", address: Self.inboundPeer[f]!, prefixLength: f == .ipv4 ? 30 : 126)
                }
            }
            return spec.families.map { f in
                if excluded.contains(f) {
                    return .init(
                        name: "inbound \(f.rawValue)", outcome: "skipped",
                        detail: "the probe's source address is in --inbound-exclude-source")
                }
                return probeInbound(family: f, port: port, from: scratch.handle)
            }
        } catch {
            return [
                .init(name: "inbound", outcome: "failed", detail: "could not set up the inbound probe link: \(error)")
            ]
        }
    }

    func probeInbound(family: IPFamily, port: UInt16, from peer: NamespaceHandle) -> ProbeCheck {
        let name = "inbound \(family.rawValue)"
        let address = Self.inboundPod[family]!
        let target =
            family == .ipv4
            ? "\(IPAddressText.formatIPv4(address)):\(port)" : "[\(IPAddressText.formatIPv6(address))]:\(port)"
        var listener = FileDescriptor.closed
        var listenError: SystemCallError?
        do throws(SystemCallError) {
            listener = try ProbeSocket.listen(family: family, port: spec.inboundPort, transparent: spec.mode == .tproxy)
        } catch { listenError = error }
        let timeout = timeoutMilliseconds
        // The client connects from the peer namespace; its socket stays there, whichever thread holds it.
        let client: SharedDescriptor
        do {
            client = try peer.run {
                SharedDescriptor(
                    try ProbeSocket.connect(family: family, address: address, port: port, timeoutMilliseconds: timeout))
            }
        } catch {
            if let e = error as? SystemCallError,
                let held = heldPortReset(listenError, e, port: spec.inboundPort, target: target, name: name)
            {
                return held
            }
            return .init(
                name: name, outcome: "failed",
                detail: "connection from outside to \(target) was not redirected to port \(spec.inboundPort): \(error)")
        }
        defer { withExtendedLifetime(client) {} }
        return onCapturePort(
            listener, listenError: listenError, port: spec.inboundPort, target: target, name: name,
            held: "(a port nothing else listens on): the redirect works"
        ) { accepted in
            inboundVerdict(accepted, family: family, address: address, port: port, target: target, name: name)
        }
    }

    /// Where an inbound probe's accepted connection was headed (TPROXY: its local address).
    func inboundVerdict(
        _ accepted: borrowing FileDescriptor, family: IPFamily, address: [UInt8], port: UInt16, target: String,
        name: String
    ) -> ProbeCheck {
        let seen =
            spec.mode == .tproxy
            ? SocketAddress.local(accepted) : SocketAddress.originalDestination(accepted, family: family)
        guard let seen else {
            return .init(
                name: name, outcome: "failed",
                detail: "a connection arrived on port \(spec.inboundPort) without its original destination")
        }
        let how = spec.mode == .tproxy ? "local address (TPROXY)" : "original destination"
        if seen.address == address && seen.port == port {
            return .init(
                name: name, outcome: "passed",
                detail: "connection from outside to \(target) landed on port \(spec.inboundPort) with \(how) \(target)")
        }
        return .init(
            name: name, outcome: "failed",
            detail: "connection to \(target) landed on port \(spec.inboundPort) with \(how) \(seen.description)")
    }

    func capturedPort() -> UInt16? {
        let candidates: [UInt16] =
            spec.outboundIncludePorts.isEmpty
            ? [80, 8080, 443, 5000, 9, 1024, 30000] : spec.outboundIncludePorts.map(\.first)
        return candidates.first { p in
            !spec.neverCapturedPorts.contains(p) && !spec.outboundExcludePorts.contains { $0.contains(p) }
                && (spec.outboundIncludePorts.isEmpty || spec.outboundIncludePorts.contains { $0.contains(p) })
        }
    }

    /// An address that no host has (198.18.0.0/15 and fd00::/8 test ranges) unless the spec only captures others.
    func capturedAddress(_ family: IPFamily) -> CIDR? {
        let includes = spec.outboundIncludeCIDRs.filter { $0.family == family }
        var candidates: [CIDR] = []
        if spec.outboundIncludeCIDRs.isEmpty {
            candidates =
                family == .ipv4
                ? [
                    CIDR(family: .ipv4, address: [198, 19, 255, 254], prefixLength: 32),
                    CIDR(family: .ipv4, address: [198, 18, 255, 254], prefixLength: 32),
                ]
                : [
                    CIDR(
                        family: .ipv6,
                        address: [0xfd, 0, 0x57, 0x65, 0x69, 0x72] + Array(repeating: 0, count: 9) + [0xfe],
                        prefixLength: 128)
                ]
        } else {
            for inc in includes {
                var a = inc.address
                if inc.prefixLength < a.count * 8 { a[a.count - 1] |= 1 }
                candidates.append(CIDR(family: family, address: a, prefixLength: a.count * 8))
            }
        }
        return candidates.first { c in !spec.outboundExcludeCIDRs.contains { $0.contains(c) } }
    }

    /// After the probe's client connected: a capture port held by a running proxy is a pass (`held` says why), a
    /// listener that could not be opened or that got nothing is a failure, and an accepted connection goes to `verdict`.
    func onCapturePort(
        _ listener: borrowing FileDescriptor, listenError: SystemCallError?, port: UInt16, target: String, name: String,
        held: String, _ verdict: (borrowing FileDescriptor) -> ProbeCheck
    ) -> ProbeCheck {
        if let e = listenError {
            if e.errno == EADDRINUSE {
                return .init(
                    name: name, outcome: "passed",
                    detail: "port \(port) is held by a running proxy, which accepted a connection to \(target) \(held)")
            }
            return .init(name: name, outcome: "failed", detail: "could not listen on port \(port) to probe: \(e)")
        }
        guard let accepted = ProbeSocket.accept(listener, timeoutMilliseconds: timeoutMilliseconds) else {
            return .init(
                name: name, outcome: "failed",
                detail: "connected to \(target), but nothing arrived on capture port \(port)")
        }
        return verdict(accepted)
    }

    /// A running proxy on the capture port completes the handshake and then resets when its own upstream
    /// refuses (nothing listens at the probe's destination): a reset after the handshake proves the redirect.
    func heldPortReset(
        _ listenError: SystemCallError?, _ e: SystemCallError, port: UInt16, target: String, name: String
    ) -> ProbeCheck? {
        guard listenError?.errno == EADDRINUSE, e.errno == ECONNRESET else { return nil }
        return .init(
            name: name, outcome: "passed",
            detail:
                "port \(port) is held by a running proxy, which accepted a connection to \(target) and then reset it (nothing answers there): the redirect works"
        )
    }

    func probeOutbound(family: IPFamily, address: CIDR, port: UInt16) -> ProbeCheck {
        let name = "outbound \(family.rawValue)"
        let target =
            family == .ipv4
            ? "\(address.description.dropLast(3)):\(port)" : "[\(address.description.dropLast(4))]:\(port)"
        var listener = FileDescriptor.closed
        var listenError: SystemCallError?
        do throws(SystemCallError) { listener = try ProbeSocket.listen(family: family, port: spec.outboundPort) } catch
        { listenError = error }
        var client = FileDescriptor.closed
        do throws(SystemCallError) {
            client = try ProbeSocket.connect(
                family: family, address: address.address, port: port, timeoutMilliseconds: timeoutMilliseconds)
        } catch {
            if let held = heldPortReset(listenError, error, port: spec.outboundPort, target: target, name: name) {
                return held
            }
            // Only a refusal by connect() itself means there is no local route; an unreachable reported later
            // came back from the network, i.e. the SYN left the pod uncaptured.
            if error.call == "connect" && error.errno == ENETUNREACH {
                return .init(
                    name: name, outcome: "skipped",
                    detail:
                        "no route to \(target) in this namespace; capture happens after the routing decision, so nothing can be proven without a route"
                )
            }
            return .init(
                name: name, outcome: "failed",
                detail: "connection to \(target) was not redirected to port \(spec.outboundPort): \(error)")
        }
        // The client stays open while the listener accepts its connection.
        defer { _ = client.isOpen }
        return onCapturePort(
            listener, listenError: listenError, port: spec.outboundPort, target: target, name: name,
            held: "(an address no host has): the redirect works; the original destination is only visible to that proxy"
        ) { accepted in
            outboundVerdict(accepted, family: family, address: address, port: port, target: target, name: name)
        }
    }

    /// The original destination of an outbound probe's accepted connection, against the one it dialled.
    func outboundVerdict(
        _ accepted: borrowing FileDescriptor, family: IPFamily, address: CIDR, port: UInt16, target: String,
        name: String
    ) -> ProbeCheck {
        guard let original = SocketAddress.originalDestination(accepted, family: family) else {
            return .init(
                name: name, outcome: "failed",
                detail:
                    "a connection arrived on port \(spec.outboundPort) without an original destination (not redirected by nat)"
            )
        }
        if original.address == address.address && original.port == port {
            return .init(
                name: name, outcome: "passed",
                detail:
                    "connection to \(target) landed on port \(spec.outboundPort) with original destination \(target)")
        }
        return .init(
            name: name, outcome: "failed",
            detail:
                "connection to \(target) landed on port \(spec.outboundPort) with original destination \(original.description)"
        )
    }
}

/// The few socket calls the probe needs.
enum ProbeSocket {
    static func listen(family: IPFamily, port: UInt16, transparent: Bool = false) throws(SystemCallError)
        -> FileDescriptor
    {
        let fd = try FileDescriptor.tcp(ipv6: family == .ipv6)
        if transparent { try fd.setTransparent(ipv6: family == .ipv6) }
        try fd.setReuseAddress()
        if family == .ipv6 { try fd.setIPv6Only() }
        let any = Endpoint(family: family, address: Array(repeating: 0, count: family == .ipv4 ? 4 : 16), port: port)
        try fd.bind(SocketAddress.make(any), describedAs: any.description)
        try fd.listen(backlog: 16)
        return fd
    }

    /// Connects within the timeout. A refusal by `connect` itself is named `connect`; one that came back from the
    /// network later is named `connect (reply from the network)`.
    static func connect(
        family: IPFamily, address: [UInt8], port: UInt16,
        timeoutMilliseconds: Int32
    ) throws(SystemCallError) -> FileDescriptor {
        let fd = try FileDescriptor.tcp(ipv6: family == .ipv6, nonBlocking: true)
        let target = SocketAddress.make(Endpoint(family: family, address: address, port: port))
        switch fd.startConnect(target) {
        case .ok(.connected): return fd
        case .ok(.inProgress):
            guard try fd.wait(writable: true, timeout: timeoutMilliseconds) else {
                throw SystemCallError("connect", errno: ETIMEDOUT)
            }
            let err = fd.pendingError()
            if err != 0 { throw SystemCallError("connect (reply from the network)", errno: err) }
            return fd
        case .failed(let e): throw SystemCallError("connect", errno: e)
        }
    }

    static func accept(_ fd: borrowing FileDescriptor, timeoutMilliseconds: Int32) -> FileDescriptor? {
        guard (try? fd.wait(timeout: timeoutMilliseconds)) == true else { return nil }
        switch fd.accept() {
        case .ok(let accepted): return accepted.intoSocket()
        case .failed: return nil
        }
    }
}
