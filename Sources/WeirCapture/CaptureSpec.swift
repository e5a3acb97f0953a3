/// How inbound TCP reaches the proxy.
public enum CaptureMode: String, Sendable, Hashable, CaseIterable {
    /// nat REDIRECT: the proxy reads the original destination with SO_ORIGINAL_DST.
    case redirect
    /// TPROXY in the mangle stage plus a fwmark policy route: the original destination is the socket's local address.
    case tproxy
}

/// Which inbound ports are sent to the inbound capture port.
public enum InboundPorts: Sendable, Hashable {
    case all
    case none
    case only([PortRange])
}

/// Everything weir needs to know to capture a pod's traffic. Built only through `CaptureSpecInput.validate()`.
public struct CaptureSpec: Sendable, Hashable {
    public var outboundPort: UInt16 = 15001
    public var inboundPort: UInt16 = 15006
    public var proxyUIDs: [UInt32] = []
    public var proxyGIDs: [UInt32] = []
    /// Packets carrying all bits of this mark are never captured (weir's forwarder sets it on its upstream sockets).
    public var bypassMark: UInt32 = 0x539
    public var inboundPorts: InboundPorts = .all
    public var inboundExcludePorts: [PortRange] = []
    public var inboundExcludeSources: [CIDR] = []
    public var outboundIncludeCIDRs: [CIDR] = []
    public var outboundExcludeCIDRs: [CIDR] = []
    public var outboundIncludePorts: [PortRange] = []
    public var outboundExcludePorts: [PortRange] = []
    public var mode: CaptureMode = .redirect
    public var ipv6: Bool = true
    /// When set, UDP and TCP port 53 from non-proxy processes go to this port.
    public var dnsPort: UInt16? = nil
    /// Extra proxy ports (admin, health, stats) that are never captured.
    public var proxyPorts: [UInt16] = []
    /// Connections from the pod to its own non-loopback address go through the outbound capture port.
    public var captureOwnAddress: Bool = false
    /// TPROXY mode: the mark put on diverted packets and the routing table that delivers them locally.
    public var tproxyMark: UInt32 = 0x53a
    public var tproxyTable: UInt32 = 133

    public init() {}

    /// The capture ports and the listed proxy ports: never captured, in either direction.
    public var neverCapturedPorts: [UInt16] {
        var seen = Set<UInt16>()
        var ports: [UInt16] = []
        for p in [outboundPort, inboundPort] + (dnsPort.map { [$0] } ?? []) + proxyPorts where seen.insert(p).inserted {
            ports.append(p)
        }
        return ports
    }

    public var families: [IPFamily] { ipv6 ? [.ipv4, .ipv6] : [.ipv4] }
}
