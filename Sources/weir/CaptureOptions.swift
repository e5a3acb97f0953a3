import ArgumentParser
import Foundation
import WeirCapture
import WeirInit
import WeirNetfilter
import WeirNetns

/// The capture spec as flags: the spec flags and `--mode`. Every flag also reads from WEIR_<NAME> and, for App Mesh
/// users, APPMESH_*.
struct CaptureOptions: ParsableArguments {
    @OptionGroup var spec: SpecOptions
    @Option(help: "redirect (nat REDIRECT, default) or tproxy (inbound by TPROXY with a fwmark policy route).")
    var mode: String?

    /// True when no capture flag was given (check then recovers the spec from the live table).
    var isEmpty: Bool { flagInput().values.isEmpty }

    func flagInput() -> CaptureSpecInput { spec.flagInput(mode: mode, modeFlag: "--mode") }

    /// Flags over WEIR_* over APPMESH_* over defaults, validated before anything is touched.
    func resolve() throws -> CaptureSpec {
        do {
            return try CaptureSpecInput.resolve(flags: flagInput(), environment: ProcessInfo.processInfo.environment)
        } catch {
            throw CommandFailure(status: .badInput, message: error.description)
        }
    }
}

/// The spec flags other than the capture mode (`weir enroll`'s `--mode` is the pod's; it takes `--capture-mode`).
struct SpecOptions: ParsableArguments {
    @Option(help: "Port the proxy listens on for captured outbound TCP (default 15001).")
    var outboundPort: String?
    @Option(help: "Port the proxy listens on for captured inbound TCP (default 15006).")
    var inboundPort: String?
    @Option(help: "UID whose traffic is never captured (the proxy's). Repeat or separate with commas.")
    var proxyUid: [String] = []
    @Option(help: "GID whose traffic is never captured. Repeat or separate with commas.")
    var proxyGid: [String] = []
    @Option(help: "Packets carrying this mark are never captured (default 0x539; weir's forwarder sets it).")
    var bypassMark: String?
    @Option(help: "Inbound ports to capture: * (all, default), none, or a list such as 8080,9000-9100.")
    var inboundPorts: String?
    @Option(help: "Inbound port or range never captured. Repeat or separate with commas.")
    var inboundExcludePort: [String] = []
    @Option(help: "Source CIDR whose inbound connections are never captured. Repeat or separate with commas.")
    var inboundExcludeSource: [String] = []
    @Option(help: "Capture outbound TCP only to these CIDRs (default: all). Repeat or separate with commas.")
    var outboundIncludeCidr: [String] = []
    @Option(help: "Never capture outbound TCP to these CIDRs. Repeat or separate with commas.")
    var outboundExcludeCidr: [String] = []
    @Option(help: "Capture outbound TCP only to these ports or ranges (default: all).")
    var outboundIncludePort: [String] = []
    @Option(help: "Never capture outbound TCP to these ports or ranges.")
    var outboundExcludePort: [String] = []
    @Option(help: "Capture IPv6 too (true, default) or IPv4 only (false).")
    var ipv6: String?
    @Option(help: "Send DNS (UDP and TCP port 53) from non-proxy processes to this port.")
    var dnsPort: String?
    @Option(help: "A proxy port (admin, stats) that is never captured. Repeat or separate with commas.")
    var proxyPort: [String] = []
    @Option(help: "true: connections to the pod's own non-loopback address go through the outbound capture too.")
    var captureOwnAddress: String?
    @Option(help: "TPROXY mode: mark on diverted inbound packets (default 0x53a).")
    var tproxyMark: String?
    @Option(help: "TPROXY mode: routing table that delivers marked packets locally (default 133).")
    var tproxyTable: String?

    func flagInput(mode: String?, modeFlag: String) -> CaptureSpecInput {
        var input = CaptureSpecInput()
        typealias K = CaptureSpecInput.Key
        func one(_ k: K, _ v: String?) { if let v { input.add(k, v, from: k.flag) } }
        func many(_ k: K, _ vs: [String]) { for v in vs { input.add(k, v, from: k.flag) } }
        one(.outboundPort, outboundPort)
        one(.inboundPort, inboundPort)
        many(.proxyUID, proxyUid)
        many(.proxyGID, proxyGid)
        one(.bypassMark, bypassMark)
        one(.inboundPorts, inboundPorts)
        many(.inboundExcludePort, inboundExcludePort)
        many(.inboundExcludeSource, inboundExcludeSource)
        many(.outboundIncludeCIDR, outboundIncludeCidr)
        many(.outboundExcludeCIDR, outboundExcludeCidr)
        many(.outboundIncludePort, outboundIncludePort)
        many(.outboundExcludePort, outboundExcludePort)
        if let mode { input.add(.mode, mode, from: modeFlag) }
        one(.ipv6, ipv6)
        one(.dnsPort, dnsPort)
        many(.proxyPort, proxyPort)
        one(.captureOwnAddress, captureOwnAddress)
        one(.tproxyMark, tproxyMark)
        one(.tproxyTable, tproxyTable)
        return input
    }
}

/// Where and how rules are installed.
struct TargetOptions: ParsableArguments {
    @Option(help: "Network namespace file to work in (/run/netns/NAME or /proc/PID/ns/net); default: the current one.")
    var netns: String?
    @Option(help: "nftables (netlink, default) or iptables (iptables-restore fallback).")
    var backend: String = ProcessInfo.processInfo.environment["WEIR_BACKEND"] ?? "nftables"
    @Option(help: "With --backend iptables: auto (the variant that already holds rules), nft or legacy.")
    var iptablesMode: String = ProcessInfo.processInfo.environment["WEIR_IPTABLES_MODE"] ?? "auto"

    func namespace() throws -> NetworkNamespace {
        do { return try InitStep.namespace(netns ?? ProcessInfo.processInfo.environment["WEIR_NETNS"]) } catch {
            throw failure(from: error)
        }
    }

    /// The backend, with every value checked whatever the others are (a bad --iptables-mode is refused under
    /// nftables too: it would bite the day the backend changes).
    func backendChoice() throws -> BackendChoice {
        do { return try InitStep.backendChoice(backend, iptablesMode: iptablesMode) } catch {
            throw failure(from: error)
        }
    }
}
