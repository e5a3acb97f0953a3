import CWeirShims
import Foundation
import WeirCapture
import WeirNetns

/// One end-to-end probe: a real connection and where it landed.
public struct ProbeCheck: Sendable, Codable, Hashable {
    public let name: String
    /// passed, failed or skipped.
    public let outcome: String
    public let detail: String
}

public struct ProbeReport: Sendable, Codable {
    public var checks: [ProbeCheck] = []
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
            return [.init(name: "outbound", outcome: "skipped",
                          detail: "weir runs as uid \(getuid()) gid \(getgid()), which the spec never captures; probe from another identity")]
        }
        guard let port = capturedPort() else {
            return [.init(name: "outbound", outcome: "skipped", detail: "no outbound TCP port is captured by this spec")]
        }
        return spec.families.map { family in
            guard let target = capturedAddress(family) else {
                return .init(name: "outbound \(family.rawValue)", outcome: "skipped", detail: "no \(family.rawValue) destination is captured by this spec")
            }
            return probeOutbound(family: family, address: target, port: port)
        }
    }

    // MARK: inbound

    /// Addresses of the temporary link: the pod side, and the peer in a scratch namespace (198.18.0.0/15, fd00::/8).
    static let inboundPod: [IPFamily: [UInt8]] = [.ipv4: [198, 19, 255, 249], .ipv6: IPAddressText.parseIPv6("fd00:5765:6972:ffff::1")!]
    static let inboundPeer: [IPFamily: [UInt8]] = [.ipv4: [198, 19, 255, 250], .ipv6: IPAddressText.parseIPv6("fd00:5765:6972:ffff::2")!]

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
                && spec.families.allSatisfy { f in
                    if case .success(let fd) = ProbeSocket.listen(family: f, port: p) { close(fd); return true }
                    return false
                }
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
            try ProbeLink.createVethPair(name: name + "a", peer: name + "b", peerNamespaceFD: scratch.fd)
            defer { try? ProbeLink.delete(name + "a") }
            try ProbeLink.setUp(name + "a")
            for f in spec.families { try ProbeLink.addAddress(name + "a", address: Self.inboundPod[f]!, prefixLength: f == .ipv4 ? 30 : 126) }
            let families = spec.families
            try scratch.namespace.run {
                try ProbeLink.setUp(name + "b")
                for f in families { try ProbeLink.addAddress(name + "b", address: Self.inboundPeer[f]!, prefixLength: f == .ipv4 ? 30 : 126) }
            }
            return spec.families.map { f in
                if excluded.contains(f) {
                    return .init(name: "inbound \(f.rawValue)", outcome: "skipped", detail: "the probe's source address is in --inbound-exclude-source")
                }
                return probeInbound(family: f, port: port, from: scratch.namespace)
            }
        } catch {
            return [.init(name: "inbound", outcome: "failed", detail: "could not set up the inbound probe link: \(error)")]
        }
    }

    func probeInbound(family: IPFamily, port: UInt16, from peer: NetworkNamespace) -> ProbeCheck {
        let name = "inbound \(family.rawValue)"
        let address = Self.inboundPod[family]!
        let target = family == .ipv4 ? "\(IPAddressText.formatIPv4(address)):\(port)" : "[\(IPAddressText.formatIPv6(address))]:\(port)"
        let listener = ProbeSocket.listen(family: family, port: spec.inboundPort, transparent: spec.mode == .tproxy)
        defer { if case .success(let fd) = listener { close(fd) } }
        let timeout = timeoutMilliseconds
        let client = (try? peer.run { ProbeSocket.connect(family: family, address: address, port: port, timeoutMilliseconds: timeout) })
            ?? .failure(SystemCallError("setns", errno: EINVAL))
        switch client {
        case .failure(let e):
            if let held = heldPortReset(listener, e, port: spec.inboundPort, target: target, name: name) { return held }
            return .init(name: name, outcome: "failed", detail: "connection from outside to \(target) was not redirected to port \(spec.inboundPort): \(e)")
        case .success(let fd):
            defer { close(fd) }
            switch listener {
            case .failure(let e) where e.errno == EADDRINUSE:
                return .init(name: name, outcome: "passed", detail: "port \(spec.inboundPort) is held by a running proxy, which accepted a connection to \(target) (a port nothing else listens on): the redirect works")
            case .failure(let e):
                return .init(name: name, outcome: "failed", detail: "could not listen on port \(spec.inboundPort) to probe: \(e)")
            case .success(let lfd):
                guard let accepted = ProbeSocket.accept(lfd, timeoutMilliseconds: timeoutMilliseconds) else {
                    return .init(name: name, outcome: "failed", detail: "connected to \(target), but nothing arrived on capture port \(spec.inboundPort)")
                }
                defer { close(accepted) }
                let seen = spec.mode == .tproxy ? ProbeSocket.localAddress(accepted, family: family) : ProbeSocket.originalDestination(accepted, family: family)
                guard let seen else {
                    return .init(name: name, outcome: "failed", detail: "a connection arrived on port \(spec.inboundPort) without its original destination")
                }
                let how = spec.mode == .tproxy ? "local address (TPROXY)" : "original destination"
                if seen.address == address && seen.port == port {
                    return .init(name: name, outcome: "passed", detail: "connection from outside to \(target) landed on port \(spec.inboundPort) with \(how) \(target)")
                }
                return .init(name: name, outcome: "failed", detail: "connection to \(target) landed on port \(spec.inboundPort) with \(how) \(seen.description)")
            }
        }
    }

    func capturedPort() -> UInt16? {
        let candidates: [UInt16] = spec.outboundIncludePorts.isEmpty ? [80, 8080, 443, 5000, 9, 1024, 30000] : spec.outboundIncludePorts.map(\.first)
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
            candidates = family == .ipv4
                ? [CIDR(family: .ipv4, address: [198, 19, 255, 254], prefixLength: 32), CIDR(family: .ipv4, address: [198, 18, 255, 254], prefixLength: 32)]
                : [CIDR(family: .ipv6, address: [0xfd, 0, 0x57, 0x65, 0x69, 0x72] + Array(repeating: 0, count: 9) + [0xfe], prefixLength: 128)]
        } else {
            for inc in includes {
                var a = inc.address
                if inc.prefixLength < a.count * 8 { a[a.count - 1] |= 1 }
                candidates.append(CIDR(family: family, address: a, prefixLength: a.count * 8))
            }
        }
        return candidates.first { c in !spec.outboundExcludeCIDRs.contains { $0.contains(c) } }
    }

    /// A running proxy on the capture port completes the handshake and then resets when its own upstream
    /// refuses (nothing listens at the probe's destination): a reset after the handshake proves the redirect.
    func heldPortReset(_ listener: Result<Int32, SystemCallError>, _ e: SystemCallError, port: UInt16, target: String, name: String) -> ProbeCheck? {
        guard case .failure(let l) = listener, l.errno == EADDRINUSE, e.errno == ECONNRESET else { return nil }
        return .init(name: name, outcome: "passed", detail: "port \(port) is held by a running proxy, which accepted a connection to \(target) and then reset it (nothing answers there): the redirect works")
    }

    func probeOutbound(family: IPFamily, address: CIDR, port: UInt16) -> ProbeCheck {
        let name = "outbound \(family.rawValue)"
        let target = family == .ipv4 ? "\(address.description.dropLast(3)):\(port)" : "[\(address.description.dropLast(4))]:\(port)"
        let listener = ProbeSocket.listen(family: family, port: spec.outboundPort)
        defer { if case .success(let fd) = listener { close(fd) } }
        let client: Int32
        switch ProbeSocket.connect(family: family, address: address.address, port: port, timeoutMilliseconds: timeoutMilliseconds) {
        case .success(let fd): client = fd
        case .failure(let e):
            if let held = heldPortReset(listener, e, port: spec.outboundPort, target: target, name: name) { return held }
            // Only a refusal by connect() itself means there is no local route; an unreachable reported later
            // came back from the network, i.e. the SYN left the pod uncaptured.
            if e.call == "connect" && e.errno == ENETUNREACH {
                return .init(name: name, outcome: "skipped", detail: "no route to \(target) in this namespace; capture happens after the routing decision, so nothing can be proven without a route")
            }
            return .init(name: name, outcome: "failed", detail: "connection to \(target) was not redirected to port \(spec.outboundPort): \(e)")
        }
        defer { close(client) }
        switch listener {
        case .failure(let e) where e.errno == EADDRINUSE:
            return .init(name: name, outcome: "passed", detail: "port \(spec.outboundPort) is held by a running proxy, which accepted a connection to \(target) (an address no host has): the redirect works; the original destination is only visible to that proxy")
        case .failure(let e):
            return .init(name: name, outcome: "failed", detail: "could not listen on port \(spec.outboundPort) to probe: \(e)")
        case .success(let fd):
            guard let accepted = ProbeSocket.accept(fd, timeoutMilliseconds: timeoutMilliseconds) else {
                return .init(name: name, outcome: "failed", detail: "connected to \(target), but nothing arrived on capture port \(spec.outboundPort)")
            }
            defer { close(accepted) }
            guard let original = ProbeSocket.originalDestination(accepted, family: family) else {
                return .init(name: name, outcome: "failed", detail: "a connection arrived on port \(spec.outboundPort) without an original destination (not redirected by nat)")
            }
            if original.address == address.address && original.port == port {
                return .init(name: name, outcome: "passed", detail: "connection to \(target) landed on port \(spec.outboundPort) with original destination \(target)")
            }
            return .init(name: name, outcome: "failed", detail: "connection to \(target) landed on port \(spec.outboundPort) with original destination \(original.description)")
        }
    }
}

/// The few socket calls the probe needs, errno turned into SystemCallError.
enum ProbeSocket {
    static func socketAddress(family: IPFamily, address: [UInt8], port: UInt16) -> (sockaddr_storage, socklen_t) {
        SocketAddress.make(Endpoint(family: family, address: address, port: port))
    }

    static func listen(family: IPFamily, port: UInt16, transparent: Bool = false) -> Result<Int32, SystemCallError> {
        let fd = socket(family == .ipv4 ? AF_INET : AF_INET6, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return .failure(SystemCallError("socket")) }
        if transparent && weir_set_transparent(fd, family == .ipv4 ? AF_INET : AF_INET6) != 0 {
            let e = SystemCallError("setsockopt(IP_TRANSPARENT)"); close(fd); return .failure(e)
        }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        if family == .ipv6 { setsockopt(fd, Int32(IPPROTO_IPV6), IPV6_V6ONLY, &one, socklen_t(MemoryLayout<Int32>.size)) }
        var (ss, len) = socketAddress(family: family, address: Array(repeating: 0, count: family == .ipv4 ? 4 : 16), port: port)
        let rc = withUnsafePointer(to: &ss) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) } }
        guard rc == 0, Glibc.listen(fd, 16) == 0 else { let e = SystemCallError("bind"); close(fd); return .failure(e) }
        return .success(fd)
    }

    static func connect(family: IPFamily, address: [UInt8], port: UInt16, timeoutMilliseconds: Int32) -> Result<Int32, SystemCallError> {
        let fd = socket(family == .ipv4 ? AF_INET : AF_INET6, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        guard fd >= 0 else { return .failure(SystemCallError("socket")) }
        var (ss, len) = socketAddress(family: family, address: address, port: port)
        let rc = withUnsafePointer(to: &ss) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, len) } }
        if rc != 0 {
            let e = weir_errno()
            guard e == EINPROGRESS else { close(fd); return .failure(SystemCallError("connect", errno: e)) }
            var p = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
            let n = poll(&p, 1, timeoutMilliseconds)
            if n == 0 { close(fd); return .failure(SystemCallError("connect", errno: ETIMEDOUT)) }
            var err: Int32 = 0
            var l = socklen_t(MemoryLayout<Int32>.size)
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &l)
            if err != 0 { close(fd); return .failure(SystemCallError("connect (reply from the network)", errno: err)) }
        }
        return .success(fd)
    }

    static func accept(_ fd: Int32, timeoutMilliseconds: Int32) -> Int32? {
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&p, 1, timeoutMilliseconds) == 1 else { return nil }
        let c = Glibc.accept(fd, nil, nil)
        return c >= 0 ? c : nil
    }

    static func originalDestination(_ fd: Int32, family: IPFamily) -> Endpoint? { SocketAddress.originalDestination(fd, family: family) }

    /// The accepted socket's local address: under TPROXY, the original destination.
    static func localAddress(_ fd: Int32, family: IPFamily) -> Endpoint? { SocketAddress.local(fd, family: family) }
}
