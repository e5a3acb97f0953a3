import Foundation
import Glibc
import Testing
import WeirTestSupport

/// One bad input as a new user would type it, and what the answer must say.
struct BadInput: CustomStringConvertible, Sendable {
    let args: [String]
    var environment: [String: String] = [:]
    let mentions: String
    var description: String { (environment.map { "\($0)=\($1)" }.sorted() + args).joined(separator: " ") }
}

let scratch = "/tmp/weir-badinput-\(getpid())"
let aFile = "\(scratch)/file"
/// A namespace path that does not exist: a command that wrongly got past validation fails there, and touches
/// no namespace's rules.
let absent = "/run/netns/weir-badinput-absent"
let listen = ["--listen", "unix:\(scratch)/ads.sock"]

let badInputs: [BadInput] = [
    BadInput(args: ["xds", "--listen", "0.0.0.0:19000", "--state", "\(scratch)/state"], mentions: "--allow-remote"),
    BadInput(
        args: ["xds", "--listen", "[::]:19000", "--state", "\(scratch)/state"], mentions: "not a loopback address"),
    BadInput(args: ["xds"] + listen + ["--allow-remote", "--mesh", scratch], mentions: "--allow-remote is for"),
    BadInput(
        args: ["xds", "--listen", "127.0.0.1:19001", "--allow-remote", "--mesh", scratch], mentions: "local already"),
    BadInput(args: ["init", "--netns", "/proc/self/ns/mnt"], mentions: "not a network namespace"),
    BadInput(args: ["check", "--netns", "/proc/self/ns/mnt"], mentions: "not a network namespace"),
    BadInput(args: ["forward", "--netns", "/proc/self/ns/mnt"], mentions: "not a network namespace"),
    BadInput(args: ["forward", "--admin", "unix:"], mentions: "--admin 'unix:'"),
    BadInput(args: ["forward", "--admin", "localhost"], mentions: "--admin 'localhost'"),
    BadInput(args: ["xds"] + listen + ["--mesh", scratch, "--admin", "unix:"], mentions: "--admin 'unix:'"),
    BadInput(args: ["forward"], environment: ["WEIR_PROXYUID": "1337"], mentions: "WEIR_PROXYUID"),
    BadInput(
        args: ["init", "--netns", absent], environment: ["WEIR_OUTBOUND_PORTT": "1"], mentions: "WEIR_OUTBOUND_PORTT"),
    BadInput(
        args: ["check", "--netns", absent], environment: ["WEIR_INBOUND_PORTZ": "1"], mentions: "WEIR_INBOUND_PORTZ"),
    BadInput(
        args: ["xds", "--listen", "unix:\(scratch)/a.sock", "--listen", "unix:\(scratch)/b.sock", "--mesh", scratch],
        mentions: "--listen is given twice"),
    BadInput(args: ["forward", "--mode", "redirect", "--mode", "tproxy"], mentions: "--mode is given twice"),
    BadInput(args: ["xds"] + listen + ["--mesh", "/nonexistent"], mentions: "--mesh /nonexistent: no such directory"),
    BadInput(args: ["xds"] + listen + ["--mesh", aFile], mentions: "not a directory"),
    BadInput(
        args: ["xds"] + listen + ["--envoy-resources", "/nonexistent"], mentions: "--envoy-resources /nonexistent"),
    BadInput(args: ["xds"] + listen + ["--envoy-resources", aFile], mentions: "not a directory"),
    BadInput(args: ["xds"] + listen + ["--mesh", scratch, "--state", aFile], mentions: "--state \(aFile)"),
    BadInput(args: ["xds"] + listen + ["--mesh", scratch, "--ingress-port", "0"], mentions: "from 1 to 65535"),
    BadInput(args: ["mesh", "render", scratch, "--node", "x", "--ingress-port", "0"], mentions: "from 1 to 65535"),
    BadInput(args: ["mesh", "render", scratch, "--node", "x", "--ingress-port", "15001"], mentions: "both 15001"),
    BadInput(args: ["init", "--netns", absent, "--iptables-mode", "bogus"], mentions: "'bogus'"),
    BadInput(args: ["clean", "--netns", absent, "--iptables-mode", "bogus"], mentions: "'bogus'"),
    BadInput(args: ["clean", "--netns", absent], environment: ["WEIR_IPTABLES_MODE": "bogus"], mentions: "'bogus'"),
    BadInput(
        args: ["xds"] + listen + ["--mesh", scratch], environment: ["WEIR_LOG_LEVEL": "bogus"],
        mentions: "WEIR_LOG_LEVEL=bogus"),
    BadInput(args: ["forward"], environment: ["WEIR_LOG_LEVEL": "loud"], mentions: "WEIR_LOG_LEVEL=loud"),
]

@Suite(
    "bad input is exit 2, says what is wrong, and changes nothing", .serialized,
    .enabled(if: canRunNamespaceTests, "needs root (namespaces)"))
final class BadInputTests {
    init() throws {
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
        _ = FileManager.default.createFile(atPath: aFile, contents: Data("keep\n".utf8))
    }

    // Each test makes the scratch directory afresh; none leaves it in /tmp.
    deinit { try? FileManager.default.removeItem(atPath: scratch) }

    @Test("each bad input", arguments: badInputs)
    func refused(_ input: BadInput) throws {
        let env = input.environment.map { "\($0)=\($1)" }
        let r = try sh(["timeout", "10", "env"] + env + [weirBinary] + input.args, allowFailure: true)
        #expect(r.status == 2, "exit \(r.status): \(r.output.prefix(400))")
        #expect(r.output.contains(input.mentions), "\(r.output.prefix(400))")
        #expect(try String(contentsOfFile: aFile, encoding: .utf8) == "keep\n", "a bad input wrote to \(aFile)")
        #expect(!FileManager.default.fileExists(atPath: "\(scratch)/ads.sock"), "a refused weir xds left its socket")
    }

    @Test("--allow-remote is the explicit way to serve ADS beyond loopback")
    func allowRemote() throws {
        // Inside a throwaway namespace: nothing listens beyond loopback on the machine itself.
        let ns = "weirt-remote-\(getpid())"
        try sh("ip", "netns", "add", ns)
        defer { deleteNamespace(ns) }
        let r = try sh(
            [
                "ip", "netns", "exec", ns, "timeout", "-s", "TERM", "2", weirBinary, "xds", "--listen", "0.0.0.0:19000",
                "--allow-remote", "--state", "\(scratch)/state",
            ], allowFailure: true)
        // It ran (and was ended by the timeout), serving on a port the kernel chose.
        #expect(r.status == 0 || r.status == 124, "exit \(r.status): \(r.output.prefix(400))")
        #expect(r.output.contains("serving ADS on 0.0.0.0:19000"), "\(r.output.prefix(400))")
    }

    @Test("a bind failure says which address and why")
    func bindFailure() throws {
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(listener) }
        var sin = sockaddr_in()
        sin.sin_family = sa_family_t(AF_INET)
        sin.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &sin) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(listener, $0, len) == 0 && getsockname(listener, $0, &len) == 0
            }
        }
        #expect(Glibc.listen(listener, 1) == 0)
        let port = UInt16(bigEndian: sin.sin_port)
        let r = try sh(
            ["timeout", "10", weirBinary, "xds", "--listen", "127.0.0.1:\(port)", "--mesh", scratch], allowFailure: true
        )
        #expect(r.status == 1, "exit \(r.status): \(r.output.prefix(400))")
        #expect(
            r.output.contains("127.0.0.1:\(port)") && r.output.contains("Address already in use"),
            "\(r.output.prefix(400))")
        #expect(!r.output.contains("bind(descriptor:"), "\(r.output.prefix(400))")
    }
}
