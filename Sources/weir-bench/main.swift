// weir-bench: measurements for scripts/bench. Not installed; run by scripts/bench only.
import Foundation
import WeirCapture
import WeirNetfilter
import WeirNetns
import WeirSystem

func now() -> UInt64 { DispatchTime.now().uptimeNanoseconds }

/// Runs a program to its end (posix_spawn and waitpid, as Subprocess does; Foundation's Process polls for exit and
/// would blur millisecond timings). Its exit status.
@discardableResult
func run(_ args: [String], input: String? = nil) -> Int32 {
    guard let r = try? Subprocess.run(args[0], Array(args.dropFirst()), input: input ?? "") else {
        fatalError("cannot run \(args[0])")
    }
    return r.status
}

func which(_ name: String) -> String {
    for d in ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
    where FileManager.default.isExecutableFile(atPath: "\(d)/\(name)") { return "\(d)/\(name)" }
    fatalError("\(name) not found")
}

func median(_ xs: [UInt64]) -> Double {
    let s = xs.sorted()
    return s.isEmpty ? 0 : Double(s[s.count / 2]) / 1e6
}

func percentile(_ xs: [UInt64], _ p: Double) -> Double {
    let s = xs.sorted()
    return s.isEmpty ? 0 : Double(s[min(s.count - 1, Int(Double(s.count) * p))]) / 1e6
}

/// Runs `apply` once in each of `count` fresh namespaces, timing only the apply; namespaces are deleted after.
func measure(_ label: String, count: Int, _ apply: (String) -> Bool) -> [UInt64] {
    let ip = which("ip")
    var times: [UInt64] = []
    for i in 0..<count {
        let ns = "weirb-\(getpid())-\(i)"
        run([ip, "netns", "add", ns])
        let t0 = now()
        let ok = apply(ns)
        let t1 = now()
        run([ip, "netns", "del", ns])
        guard ok else {
            FileHandle.standardError.write(Data("\(label): apply failed in namespace \(i)\n".utf8))
            exit(1)
        }
        times.append(t1 - t0)
    }
    return times
}

let arguments = CommandLine.arguments
guard arguments.count >= 4, arguments[1] == "rules" else {
    FileHandle.standardError.write(Data("usage: weir-bench rules WEIR_BINARY WEIR_INIT_BINARY [NAMESPACES]\n".utf8))
    exit(2)
}
func absolute(_ path: String) -> String {
    path.hasPrefix("/") ? path : FileManager.default.currentDirectoryPath + "/" + path
}
let weirBinary = absolute(arguments[2])
let initBinary = absolute(arguments[3])
let count = arguments.count > 4 ? Int(arguments[4]) ?? 200 : 200

// A realistic sidecar spec: proxy uid, a few exclusions, dual stack.
var input = CaptureSpecInput()
for (k, v) in [
    (CaptureSpecInput.Key.proxyUID, "1337"), (.proxyGID, "1337"),
    (.outboundExcludeCIDR, "169.254.169.254,fd00:ec2::254"),
    (.outboundExcludePort, "22,15090"), (.inboundExcludePort, "15020,15021"), (.proxyPort, "15000"),
] {
    input.add(k, v, from: "bench")
}
let spec = try input.validate()
let plan = RedirectPlan(spec: spec)
let nftText = NftRendering.render(plan)
let ipt4 = IptablesRendering.render(plan, family: .ipv4)
let ipt6 = IptablesRendering.render(plan, family: .ipv6)
let ruleCount = plan.chains.map(\.rules.count).reduce(0, +)
let ip = which("ip")
let nft = which("nft")
let iptRestore = which("iptables-nft-restore")
let ip6tRestore = which("ip6tables-nft-restore")
print(
    "weir bench rules: \(count) fresh namespaces per method, \(ruleCount) rules (dual stack, \(plan.chains.count) chains)"
)

let inProcess = measure("weir in-process", count: count) { ns in
    (try? NetworkNamespace(path: "/run/netns/\(ns)").run { try NftablesBackend().apply(plan) }) != nil
}
let nftFile = measure("ip netns exec nft -f -", count: count) { ns in
    run([ip, "netns", "exec", ns, nft, "-f", "-"], input: nftText) == 0
}
let iptables = measure("ip netns exec iptables-restore", count: count) { ns in
    run([ip, "netns", "exec", ns, iptRestore, "--noflush"], input: ipt4) == 0
        && run([ip, "netns", "exec", ns, ip6tRestore, "--noflush"], input: ipt6) == 0
}
// The same spec as flags, for the two executables.
func initArguments(_ ns: String) -> [String] {
    [
        "--quiet", "--netns", "/run/netns/\(ns)", "--proxy-uid", "1337", "--proxy-gid", "1337",
        "--outbound-exclude-cidr", "169.254.169.254,fd00:ec2::254", "--outbound-exclude-port", "22,15090",
        "--inbound-exclude-port", "15020,15021", "--proxy-port", "15000",
    ]
}
let weirProcess = measure("weir init --netns", count: count) { ns in
    run([weirBinary, "init"] + initArguments(ns)) == 0
}
let initProcess = measure("weir-init --netns", count: count) { ns in run([initBinary] + initArguments(ns)) == 0 }

/// A binary's size as built and stripped (what an image ships), in MB.
func sizes(_ path: String) -> (built: Double, stripped: Double) {
    let built = (try? FileManager.default.attributesOfItem(atPath: path)[.size] as? Int) ?? 0
    let tmp = "/tmp/weirb-strip-\(getpid())"
    defer { try? FileManager.default.removeItem(atPath: tmp) }
    run([which("strip"), "-o", tmp, path])
    let stripped = (try? FileManager.default.attributesOfItem(atPath: tmp)[.size] as? Int) ?? 0
    return (Double(built) / 1e6, Double(stripped) / 1e6)
}

func row(_ name: String, _ xs: [UInt64]) {
    print(String(format: "  %-46@ median %8.3f ms   p90 %8.3f ms", name as NSString, median(xs), percentile(xs, 0.9)))
}
row("weir in-process netlink apply", inProcess)
row("ip netns exec NS nft -f -", nftFile)
row("ip netns exec NS iptables-restore (+ip6tables)", iptables)
row("weir init --netns (whole process)", weirProcess)
row("weir-init --netns (whole process)", initProcess)
let r1 = median(nftFile) / median(inProcess)
let r2 = median(weirProcess) / median(nftFile)
let r3 = median(iptables) / median(inProcess)
print(String(format: "ratio: nft -f / weir in-process = %.1fx   (goal >= 10x: %@)", r1, r1 >= 10 ? "met" : "NOT met"))
print(String(format: "ratio: iptables-restore / weir in-process = %.1fx", r3))
let r4 = median(initProcess) / median(nftFile)
print(
    String(format: "ratio: weir init process / nft -f = %.2f   (goal <= 1.00: %@)", r2, r2 <= 1.0 ? "met" : "NOT met"))
print(
    String(
        format: "ratio: weir-init process / nft -f = %.2f   (goal <= 0.33: %@)", r4, r4 <= 1.0 / 3 ? "met" : "NOT met"))
let (weirBuilt, weirStripped) = sizes(weirBinary)
let (initBuilt, initStripped) = sizes(initBinary)
print(String(format: "binary: weir %.1f MB as built, %.1f MB stripped", weirBuilt, weirStripped))
print(
    String(
        format: "binary: weir-init %.1f MB as built, %.1f MB stripped   (goal <= 40 MB stripped: %@)", initBuilt,
        initStripped, initStripped <= 40 ? "met" : "NOT met"))
