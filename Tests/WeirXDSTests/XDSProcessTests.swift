import Foundation
import Glibc
import Testing
import WeirTestSupport

/// CPU seconds (user + system) a process has used, from /proc/PID/stat.
func cpuSeconds(_ pid: Int32) -> Double? {
    guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
        let close = stat.lastIndex(of: ")")
    else { return nil }
    // Fields after the command name: state is field 3, utime 14, stime 15.
    let fields = stat[stat.index(after: close)...].split(separator: " ")
    guard fields.count > 13, let user = Double(fields[11]), let system = Double(fields[12]) else { return nil }
    return (user + system) / Double(sysconf(Int32(_SC_CLK_TCK)))
}

/// The first HTTP/2 frame's type a server sends after the client preface, or nil.
func firstFrameType(_ socketPath: String) -> UInt8? {
    guard let fd = unixConnect(socketPath) else { return nil }
    defer { close(fd) }
    sendBytes(fd, http2Preface)
    var head = [UInt8](repeating: 0, count: 9)
    guard recv(fd, &head, 9, Int32(MSG_WAITALL)) == 9 else { return nil }
    return head[3]
}

/// A `weir xds` on Unix sockets in a scratch directory, with an empty mesh.
final class XDSProcess {
    let root: URL
    let process: Spawned
    var ads: String { root.appendingPathComponent("ads.sock").path }
    var admin: String { root.appendingPathComponent("admin.sock").path }

    init(prefix: [String] = []) throws {
        root = URL(fileURLWithPath: "/tmp/weir-xdsproc-\(getpid())-\(UInt32.random(in: 0..<1_000_000))")
        try FileManager.default.createDirectory(
            at: root.appendingPathComponent("mesh"), withIntermediateDirectories: true)
        let args =
            prefix + [
                weirBinary, "xds", "--listen", "unix:\(root.path)/ads.sock", "--admin", "unix:\(root.path)/admin.sock",
                "--mesh", root.appendingPathComponent("mesh").path,
            ]
        process = try Spawned(args, log: root.appendingPathComponent("weir.log"))
        guard eventually(15, { unixHTTPGet(admin, "/ready") == "ready\n" }) else {
            process.stop()
            throw CommandError(description: "weir xds did not become ready: \(process.output)")
        }
    }

    func close() {
        process.stop()
        try? FileManager.default.removeItem(at: root)
    }
}

@Suite("weir xds as a process under pressure")
struct XDSProcessTests {
    @Test(
        "out of descriptors, ADS and the admin endpoint pause accepting without spinning, and both answer again once descriptors are free"
    )
    func descriptorExhaustion() throws {
        let xds = try XDSProcess(prefix: ["/usr/bin/prlimit", "--nofile=48:48", "--"])
        defer { xds.close() }
        let pid = xds.process.process.processIdentifier
        var clients: [Int32] = []
        defer { clients.forEach { Glibc.close($0) } }
        // More connections than the process has descriptors: the rest wait in the listen backlogs.
        for i in 0..<90 {
            guard let fd = unixConnect(i % 3 == 0 ? xds.admin : xds.ads) else { continue }
            clients.append(fd)
        }
        #expect(clients.count > 48, "only \(clients.count) connections were made; descriptors never ran out")
        usleep(500_000)
        let before = cpuSeconds(pid) ?? 0
        usleep(3_000_000)
        let spent = (cpuSeconds(pid) ?? 0) - before
        // A spinning accept loop burns a whole core: about 3 s here.
        #expect(spent < 1.0, "weir xds used \(spent) s of CPU in 3 s while out of descriptors")
        #expect(xds.process.process.isRunning, "weir xds ended: \(xds.process.output.suffix(2000))")
        for fd in clients { Glibc.close(fd) }
        clients.removeAll()
        #expect(
            eventually(15) { unixHTTPGet(xds.admin, "/ready") == "ready\n" }, "the admin endpoint never answered again")
        #expect(eventually(15) { firstFrameType(xds.ads) == 4 }, "ADS never answered again")
    }

    @Test(
        "a connection that breaks the HTTP/2 protocol is closed at its first error, and the warnings are rate-limited")
    func garbageFrames() throws {
        let xds = try XDSProcess()
        defer { xds.close() }
        // A DATA frame on stream 0 is a connection error; 4 KiB of more junk follows it on each of 32 connections.
        let junk = [UInt8](repeating: 0xAB, count: 4096)
        let bad: [UInt8] =
            http2Preface + [
                0, 0, 4, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4,
            ] + junk
        var closed = 0
        for _ in 0..<32 {
            guard let fd = unixConnect(xds.ads) else { continue }
            sendBytes(fd, bad)
            if readAll(fd).bytes.count < 1024 { closed += 1 }
            Glibc.close(fd)
        }
        #expect(closed == 32, "\(closed) of 32 broken connections were closed")
        #expect(firstFrameType(xds.ads) == 4, "a good client is not served after the garbage")
        let warnings = xds.process.output.split(separator: "\n").filter { $0.contains("ADS connection error") }
        #expect(!warnings.isEmpty && warnings.count <= 10, "\(warnings.count) warning lines for 32 broken connections")
    }
}
