import CWeirShims
import Foundation
import Metrics
import Prometheus
import Testing
@testable import WeirCapture
@testable import WeirNetfilter
@_exported import WeirNetns
@_exported import WeirCapture
@_exported import WeirSystem

extension SystemCallError {
    /// The error of the libc call that just failed (tests call libc directly; weir's sources go through Posix).
    public static func last(_ call: String) -> SystemCallError { SystemCallError(call, errno: weir_errno()) }
}

/// The metrics registry of the test process, bootstrapped once (the CLI bootstraps its own in `main`).
public let testMetrics: PrometheusCollectorRegistry = {
    let registry = PrometheusCollectorRegistry()
    MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
    return registry
}()

/// Namespace tests need root; under scripts/test (WEIRTEST_REQUIRE_ROOT=1) they run, and fail, even without it.
public let canRunNamespaceTests = getuid() == 0 || ProcessInfo.processInfo.environment["WEIRTEST_REQUIRE_ROOT"] == "1"

public struct CommandError: Error, CustomStringConvertible {
    public let description: String
    public init(description: String) { self.description = description }
}

/// Runs a command to completion; throws with its output when it fails.
@discardableResult
public func sh(_ args: String..., input: String? = nil, allowFailure: Bool = false) throws -> (
    status: Int32, output: String
) {
    try sh(args, input: input, allowFailure: allowFailure)
}

@discardableResult
public func sh(_ args: [String], input: String? = nil, allowFailure: Bool = false) throws -> (
    status: Int32, output: String
) {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    p.arguments = args
    let out = Pipe()
    p.standardOutput = out
    p.standardError = out
    let inPipe = Pipe()
    p.standardInput = inPipe
    try p.run()
    if let input { inPipe.fileHandleForWriting.write(Data(input.utf8)) }
    try inPipe.fileHandleForWriting.close()
    let data = out.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    let text = String(decoding: data, as: UTF8.self)
    if p.terminationStatus != 0 && !allowFailure {
        throw CommandError(description: "\(args.joined(separator: " ")) exited \(p.terminationStatus): \(text)")
    }
    return (p.terminationStatus, text)
}

/// The weir executable built beside the tests.
public let weirBinary: String = {
    let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()
    return root.appendingPathComponent(".build/debug/weir").path
}()

/// The small init-container executable built beside the tests.
public let weirInitBinary: String = URL(fileURLWithPath: weirBinary).deletingLastPathComponent()
    .appendingPathComponent("weir-init").path

/// Deletes a test's named namespace (`ip netns del`), tried again while `/run/netns/NAME` is still there (5 tries,
/// 200 ms apart): one failed attempt (a spawn refused, a mount busy for a moment) must not leave a namespace behind.
/// If it stays, the last error is printed. `attempt` runs one deletion (tests give a failing one).
public func deleteNamespace(_ name: String, attempt: (String) throws -> String = defaultNamespaceDelete) {
    let path = "/run/netns/\(name)"
    var last = ""
    for i in 0..<5 {
        if i > 0 { usleep(200_000) }
        do { last = try attempt(name) } catch { last = "\(error)" }
        if !FileManager.default.fileExists(atPath: path) { return }
    }
    FileHandle.standardError.write(Data("could not delete namespace \(name): \(last)\n".utf8))
}

/// One `ip netns del`: its exit status and output.
public func defaultNamespaceDelete(_ name: String) throws -> String {
    let r = try sh("ip", "netns", "del", name, allowFailure: true)
    return "exit \(r.status): \(r.output)"
}

/// A pod namespace and a server namespace joined by a veth pair, deleted on `close()`.
/// pod: 198.18.0.1/24, fd00:1::1/64, default routes via the server; server: 198.18.0.2/24, fd00:1::2/64.
public final class TestNetwork: @unchecked Sendable {
    // Written once in init, read-only afterwards.
    public let pod: String
    public let server: String

    public static let podV4: [UInt8] = [198, 18, 0, 1]
    public static let serverV4: [UInt8] = [198, 18, 0, 2]
    public static let podV6: [UInt8] = IPAddressText.parseIPv6("fd00:0:0:1::1")!
    public static let serverV6: [UInt8] = IPAddressText.parseIPv6("fd00:0:0:1::2")!

    public static func podAddress(_ f: IPFamily) -> [UInt8] { f == .ipv4 ? podV4 : podV6 }
    public static func serverAddress(_ f: IPFamily) -> [UInt8] { f == .ipv4 ? serverV4 : serverV6 }

    public var podNamespace: NetworkNamespace { NetworkNamespace(path: "/run/netns/\(pod)") }
    public var serverNamespace: NetworkNamespace { NetworkNamespace(path: "/run/netns/\(server)") }

    public init() throws {
        guard getuid() == 0 else { throw CommandError(description: "namespace tests need root") }
        let id = "\(getpid() % 100000)-\(UInt32.random(in: 0..<1_000_000))"
        pod = "weirt-\(id)-p"
        server = "weirt-\(id)-s"
        do {
            try sh("ip", "netns", "add", pod)
            try sh("ip", "netns", "add", server)
            let vp = "wp\(id.suffix(6))"
            let vs = "ws\(id.suffix(6))"
            try sh("ip", "link", "add", vp, "netns", pod, "type", "veth", "peer", "name", vs, "netns", server)
            for (ns, dev, v4, v6) in [
                (pod, vp, "198.18.0.1/24", "fd00:0:0:1::1/64"), (server, vs, "198.18.0.2/24", "fd00:0:0:1::2/64"),
            ] {
                try sh("ip", "-n", ns, "link", "set", "lo", "up")
                try sh("ip", "-n", ns, "link", "set", dev, "up")
                try sh("ip", "-n", ns, "addr", "add", v4, "dev", dev)
                try sh("ip", "-n", ns, "addr", "add", v6, "dev", dev, "nodad")
            }
            try sh("ip", "-n", pod, "route", "add", "default", "via", "198.18.0.2")
            try sh("ip", "-n", pod, "-6", "route", "add", "default", "via", "fd00:0:0:1::2")
            try sh("ip", "-n", server, "route", "add", "default", "via", "198.18.0.1")
            try sh("ip", "-n", server, "-6", "route", "add", "default", "via", "fd00:0:0:1::1")
        } catch {
            close()
            throw error
        }
    }

    /// Deletes both namespaces (and with them the veth pair and every rule inside).
    public func close() {
        for name in [pod, server] { deleteNamespace(name) }
    }

    /// Runs a test body with a fresh network, always deleting it afterwards.
    public static func with<T>(_ body: (TestNetwork) throws -> T) throws -> T {
        let net = try TestNetwork()
        defer { net.close() }
        return try body(net)
    }

    /// Runs an async test body with a fresh network, always deleting it afterwards.
    public static func withAsync<T>(_ body: (TestNetwork) async throws -> T) async throws -> T {
        let net = try TestNetwork()
        defer { net.close() }
        return try await body(net)
    }

    public func installer(_ backend: BackendChoice) -> CaptureInstaller {
        CaptureInstaller(namespace: podNamespace, backend: backend)
    }

    /// weir's table as comparable text: chains with hooks, rules with comments and expressions (handles left out).
    public func weirRuleset() throws -> [String] {
        try podNamespace.run {
            let live = try NftablesBackend().readRuleset()
            let chains = live.chains.filter { $0.table == "weir" }.map { c in
                "chain \(c.family) \(c.name) " + (c.base.map { "\($0.hook) \($0.priority) \($0.type)" } ?? "regular")
            }
            let rules = live.rules.filter { $0.table == "weir" }.map {
                "rule \($0.family) \($0.chain) \($0.comment ?? "") \($0.expressions.map(\.description).joined(separator: " "))"
            }
            let sets = live.sets.filter { $0.table == "weir" }.map {
                "set \($0.family) \($0.name) \($0.intervals.map(\.description).joined(separator: ","))"
            }
            return chains + rules + sets
        }
    }

    public func iptablesSave(_ family: IPFamily = .ipv4) throws -> String {
        try sh("ip", "netns", "exec", pod, family == .ipv4 ? "iptables-nft-save" : "ip6tables-nft-save").output
            .split(separator: "\n").filter { !$0.hasPrefix("#") }.joined(separator: "\n")
    }
}

/// A connection attempt's outcome as seen by both ends.
public enum Landing: Equatable, CustomStringConvertible {
    /// Arrived on the pod's capture listener; original destination (SO_ORIGINAL_DST) or local address under TPROXY.
    case captured(address: [UInt8], port: UInt16)
    /// Arrived on the server's own listener.
    case direct
    case nowhere(String)
    public var description: String {
        switch self {
        case .captured(let a, let p):
            return "captured(\(a.count == 4 ? IPAddressText.formatIPv4(a) : IPAddressText.formatIPv6(a)):\(p))"
        case .direct: return "direct"
        case .nowhere(let why): return "nowhere(\(why))"
        }
    }
}

/// Socket helpers for tests: raw libc sockets, so that a test can hold, pass and close them freely.
public enum TestSockets {
    static func address(_ family: IPFamily, _ address: [UInt8], _ port: UInt16) -> SocketAddressBytes {
        family == .ipv4 ? .ipv4(address, port: port) : .ipv6(address, port: port)
    }

    public static func listen(_ ns: NetworkNamespace, _ family: IPFamily, port: UInt16, transparent: Bool = false)
        throws -> Int32
    {
        try ns.run {
            let fd = socket(
                family == .ipv4 ? AF_INET : AF_INET6, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0 else { throw SystemCallError.last("socket") }
            var one: Int32 = 1
            setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, 4)
            if family == .ipv6 { setsockopt(fd, Int32(IPPROTO_IPV6), IPV6_V6ONLY, &one, 4) }
            if transparent {
                guard weir_set_transparent(fd, family == .ipv4 ? AF_INET : AF_INET6) == 0 else {
                    throw SystemCallError.last("setsockopt(IP_TRANSPARENT)")
                }
            }
            let a = address(family, Array(repeating: 0, count: family == .ipv4 ? 4 : 16), port)
            let rc = withUnsafeBytes(of: a.storage) {
                bind(fd, $0.baseAddress!.assumingMemoryBound(to: sockaddr.self), a.length)
            }
            guard rc == 0, Glibc.listen(fd, 64) == 0 else { throw SystemCallError.last("bind/listen port \(port)") }
            return fd
        }
    }

    /// A connection within the timeout, or the error.
    static func connect(_ family: IPFamily, _ address: [UInt8], _ port: UInt16, mark: UInt32?) -> Result<
        Int32, SystemCallError
    > {
        let fd = socket(
            family == .ipv4 ? AF_INET : AF_INET6, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return .failure(.last("socket")) }
        var tv = timeval(tv_sec: 2, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        if let mark, weir_set_mark(fd, mark) != 0 {
            let e = SystemCallError.last("setsockopt(SO_MARK)")
            close(fd)
            return .failure(e)
        }
        let a = Self.address(family, address, port)
        let rc = withUnsafeBytes(of: a.storage) {
            Glibc.connect(fd, $0.baseAddress!.assumingMemoryBound(to: sockaddr.self), a.length)
        }
        if rc != 0 {
            let e = SystemCallError.last("connect")
            close(fd)
            return .failure(e)
        }
        return .success(fd)
    }

    /// Accepts within the timeout.
    public static func accept(_ fd: Int32, timeoutMilliseconds: Int32) -> Int32? {
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&p, 1, timeoutMilliseconds) == 1 else { return nil }
        let c = Glibc.accept(fd, nil, nil)
        return c >= 0 ? c : nil
    }

    /// SO_ORIGINAL_DST of an accepted socket.
    public static func originalDestination(_ fd: Int32, family: IPFamily) -> (address: [UInt8], port: UInt16)? {
        var ss = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        guard weir_original_dst(fd, family == .ipv4 ? AF_INET : AF_INET6, &ss, &len) == 0 else { return nil }
        return SocketAddressBytes(storage: ss, length: len).ip
    }

    /// Connects from `ns`, optionally as another uid/gid or with a socket mark, and reports where it landed.
    public static func connect(
        from ns: NetworkNamespace, _ family: IPFamily, to address: [UInt8], port: UInt16,
        capture: Int32?, server: Int32?, uid: UInt32? = nil, gid: UInt32? = nil, mark: UInt32? = nil,
        tproxy: Bool = false
    ) throws -> Landing {
        let client: Result<Int32, SystemCallError> = try ns.run {
            if let uid {
                guard weir_thread_set_ids(uid, gid ?? uid) == 0 else { throw SystemCallError.last("setresuid") }
            }
            return connect(family, address, port, mark: mark)
        }
        guard case .success(let fd) = client else {
            if case .failure(let e) = client { return .nowhere("\(e)") }
            return .nowhere("?")
        }
        defer { close(fd) }
        if let capture, let a = accept(capture, timeoutMilliseconds: server == nil ? 2000 : 300) {
            defer { close(a) }
            if tproxy {
                var ss = sockaddr_storage()
                var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
                _ = withUnsafeMutablePointer(to: &ss) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(a, $0, &len) }
                }
                guard let local = SocketAddressBytes(storage: ss, length: len).ip else {
                    return .nowhere("no local address")
                }
                return .captured(address: local.address, port: local.port)
            }
            guard let o = originalDestination(a, family: family) else { return .nowhere("no original destination") }
            return .captured(address: o.address, port: o.port)
        }
        if let server, let a = accept(server, timeoutMilliseconds: 2000) {
            close(a)
            return .direct
        }
        return .nowhere("no listener got the connection")
    }
}

/// Envoy 1.40 from the project's .venv (scripts/install-deps installs it).
public let envoyBinary: String? = {
    let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()
    let lib = root.appendingPathComponent(".venv/lib")
    let pythons = (try? FileManager.default.contentsOfDirectory(atPath: lib.path)) ?? []
    return pythons.map { lib.appendingPathComponent("\($0)/site-packages/envoy/_bin/envoy").path }
        .first { FileManager.default.isExecutableFile(atPath: $0) }
}()

/// The project's root directory (for scripts and test helpers).
public let projectRoot: URL = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent()

/// The project's Python (with grpcio and xds-protos; scripts/install-deps makes it).
public let venvPython: String = projectRoot.appendingPathComponent(".venv/bin/python").path

/// A test helper script under Tests/helpers.
public func helperScript(_ name: String) -> String { projectRoot.appendingPathComponent("Tests/helpers/\(name)").path }

/// A process a test started (optionally inside a namespace, optionally as uid 1337), its output in a log file.
/// `stop()` kills it with SIGKILL and waits: a child spawned from a Dispatch thread may block SIGTERM.
public final class Spawned: @unchecked Sendable {
    // Sendable: `process` and `log` are set in init; Process itself is thread-safe for isRunning, kill and wait.
    public let process = Process()
    public let log: URL

    public init(
        _ args: [String], namespace: String? = nil, asProxyUser: Bool = false, environment: [String: String] = [:],
        log: URL
    ) throws {
        self.log = log
        _ = FileManager.default.createFile(atPath: log.path, contents: nil)
        var argv = args
        if asProxyUser { argv = ["/usr/bin/setpriv", "--reuid=1337", "--regid=1337", "--clear-groups"] + argv }
        if let namespace { argv = ["/usr/sbin/ip", "netns", "exec", namespace] + argv }
        process.executableURL = URL(fileURLWithPath: argv[0])
        process.arguments = Array(argv.dropFirst())
        var env = ProcessInfo.processInfo.environment
        for (k, v) in environment { env[k] = v }
        process.environment = env
        let handle = try FileHandle(forWritingTo: log)
        process.standardOutput = handle
        process.standardError = handle
        try process.run()
    }

    public var output: String { (try? String(contentsOf: log, encoding: .utf8)) ?? "" }

    public func stop() {
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
    }
}

/// Polls `condition` every 50 ms for at most `seconds`; returns whether it became true.
public func eventually(_ seconds: Double = 10, _ condition: () -> Bool) -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
        if condition() { return true }
        usleep(50_000)
    }
    return condition()
}

/// Whether `task` ends within `seconds` (it is left running otherwise; the caller records the failure).
public func finishes(within seconds: Double, _ task: Task<Void, any Error>) async -> Bool {
    await withTaskGroup(of: Bool.self) { group in
        group.addTask {
            _ = await task.result
            return true
        }
        group.addTask {
            try? await Task.sleep(for: .seconds(seconds))
            return false
        }
        let first = await group.next() ?? false
        group.cancelAll()
        return first
    }
}

/// `GET http://host:port/path` from inside a namespace, with curl-free Python; nil on any failure.
public func httpText(_ namespace: String, _ url: String) -> String? {
    let code =
        "import urllib.request,sys; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())"
    guard let r = try? sh(["ip", "netns", "exec", namespace, "python3", "-c", code, url], allowFailure: true),
        r.status == 0
    else { return nil }
    return r.output
}

/// `GET target` over HTTP/1.1 on a Unix socket (an admin endpoint); the body, or nil on any failure.
public func unixHTTPGet(_ socketPath: String, _ target: String) -> String? {
    guard let fd = unixConnect(socketPath) else { return nil }
    defer { close(fd) }
    var tv = timeval(tv_sec: 5, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    let request = Array("GET \(target) HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n".utf8)
    guard request.withUnsafeBytes({ send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }) == request.count else {
        return nil
    }
    var response: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = recv(fd, &buffer, buffer.count, 0)
        if n <= 0 { break }
        response += buffer[0..<n]
    }
    let text = String(decoding: response, as: UTF8.self)
    guard text.hasPrefix("HTTP/1.1 200"), let split = text.range(of: "\r\n\r\n") else { return nil }
    return String(text[split.upperBound...])
}

/// A process's resident memory in KiB, from /proc.
public func residentKiB(_ pid: Int32) -> Int? {
    guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return nil }
    for line in status.split(separator: "\n") where line.hasPrefix("VmRSS:") {
        return Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "")
    }
    return nil
}
