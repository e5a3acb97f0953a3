import CNetfilter
import WeirNetns
import WeirSystem
#if canImport(Glibc)
    import Glibc
#endif

/// The temporary veth pair the inbound probe uses to send a connection into the pod from outside it.
/// Created over rtnetlink; deleting one end deletes both.
enum ProbeLink {
    static func createVethPair(name: String, peer: String, peerNamespace: NamespaceHandle) throws {
        let peerNamespaceFD = peerNamespace.descriptor.number
        try rtnetlinkRequest(
            type: UInt16(RTM_NEWLINK), flags: NLM_F_CREATE | NLM_F_EXCL, what: "creating probe veth \(name)"
        ) { nlh in
            _ = mnl_nlmsg_put_extra_header(nlh, MemoryLayout<ifinfomsg>.size)
            mnl_attr_put_strz(nlh, UInt16(IFLA_IFNAME), name)
            let info = mnl_attr_nest_start(nlh, UInt16(IFLA_LINKINFO))
            mnl_attr_put_strz(nlh, UInt16(IFLA_INFO_KIND), "veth")
            let data = mnl_attr_nest_start(nlh, UInt16(IFLA_INFO_DATA))
            let peerNest = mnl_attr_nest_start(nlh, UInt16(VETH_INFO_PEER))
            _ = mnl_nlmsg_put_extra_header(nlh, MemoryLayout<ifinfomsg>.size)
            mnl_attr_put_strz(nlh, UInt16(IFLA_IFNAME), peer)
            mnl_attr_put_u32(nlh, UInt16(IFLA_NET_NS_FD), UInt32(bitPattern: peerNamespaceFD))
            mnl_attr_nest_end(nlh, peerNest)
            mnl_attr_nest_end(nlh, data)
            mnl_attr_nest_end(nlh, info)
        }
    }

    static func index(_ name: String) throws -> Int32 {
        let i = try Posix.call("if_nametoindex \(name)") { () -> Int32 in
            let index = if_nametoindex(name)
            return index == 0 ? -1 : Int32(index)
        }
        return i
    }

    static func setUp(_ name: String) throws {
        let idx = try index(name)
        try rtnetlinkRequest(type: UInt16(RTM_NEWLINK), flags: 0, what: "bringing \(name) up") { nlh in
            let h = mnl_nlmsg_put_extra_header(nlh, MemoryLayout<ifinfomsg>.size)!.assumingMemoryBound(
                to: ifinfomsg.self)
            h.pointee.ifi_index = idx
            h.pointee.ifi_flags = UInt32(IFF_UP)
            h.pointee.ifi_change = UInt32(IFF_UP)
        }
    }

    static func addAddress(_ name: String, address: [UInt8], prefixLength: UInt8) throws {
        let idx = try index(name)
        let v6 = address.count == 16
        try rtnetlinkRequest(
            type: UInt16(RTM_NEWADDR), flags: NLM_F_CREATE | NLM_F_REPLACE, what: "adding a probe address to \(name)"
        ) { nlh in
            let h = mnl_nlmsg_put_extra_header(nlh, MemoryLayout<ifaddrmsg>.size)!.assumingMemoryBound(
                to: ifaddrmsg.self)
            h.pointee.ifa_family = UInt8(v6 ? AF_INET6 : AF_INET)
            h.pointee.ifa_prefixlen = prefixLength
            h.pointee.ifa_index = UInt32(idx)
            address.withUnsafeBytes { raw in
                if !v6 { mnl_attr_put(nlh, UInt16(IFA_LOCAL), raw.count, raw.baseAddress) }
                mnl_attr_put(nlh, UInt16(IFA_ADDRESS), raw.count, raw.baseAddress)
            }
            // No duplicate address detection: the address must be usable at once.
            if v6 { mnl_attr_put_u32(nlh, UInt16(IFA_FLAGS), UInt32(IFA_F_NODAD)) }
        }
    }

    static func delete(_ name: String) throws {
        let idx = try index(name)
        try rtnetlinkRequest(type: UInt16(RTM_DELLINK), flags: 0, what: "deleting probe veth \(name)") { nlh in
            let h = mnl_nlmsg_put_extra_header(nlh, MemoryLayout<ifinfomsg>.size)!.assumingMemoryBound(
                to: ifinfomsg.self)
            h.pointee.ifi_index = idx
        }
    }
}
