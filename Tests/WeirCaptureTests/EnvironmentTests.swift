import Testing
@testable import WeirCapture

@Suite("Environment: WEIR_* and the App Mesh proxy route manager's APPMESH_*")
struct EnvironmentTests {
    @Test(
        "App Mesh defaults: ingress 15000, egress 15001, metadata IP and port 22 ignored, no app ports means no inbound capture"
    )
    func appMeshDefaults() throws {
        let spec = try CaptureSpecInput.resolve(flags: .init(), environment: ["APPMESH_IGNORE_UID": "1337"])
        #expect(spec.inboundPort == 15000)
        #expect(spec.outboundPort == 15001)
        #expect(spec.proxyUIDs == [1337])
        #expect(spec.outboundExcludeCIDRs.map(\.description) == ["169.254.169.254/32"])
        #expect(spec.outboundExcludePorts == [PortRange(22)])
        #expect(spec.inboundPorts == .none)
        #expect(spec.ipv6)
    }

    @Test("App Mesh variables map one to one")
    func appMeshFull() throws {
        let env = [
            "APPMESH_IGNORE_UID": "1337", "APPMESH_IGNORE_GID": "1338", "APPMESH_APP_PORTS": "8080,9090",
            "APPMESH_ENVOY_INGRESS_PORT": "15100", "APPMESH_ENVOY_EGRESS_PORT": "15101",
            "APPMESH_EGRESS_IGNORED_IP": "169.254.169.254,169.254.170.2,fd00:ec2::254",
            "APPMESH_EGRESS_IGNORED_PORTS": "5432",
            "APPMESH_ENABLE_IPV6": "0", "APPMESH_VIRTUAL_NODE_NAME": "mesh/m/virtualNode/n",
        ]
        var e = env
        e["APPMESH_EGRESS_IGNORED_IP"] = "169.254.169.254,169.254.170.2"
        let spec = try CaptureSpecInput.resolve(flags: .init(), environment: e)
        #expect(spec.proxyGIDs == [1338])
        #expect(spec.inboundPorts == .only([PortRange(8080), PortRange(9090)]))
        #expect(spec.inboundPort == 15100 && spec.outboundPort == 15101)
        #expect(spec.outboundExcludePorts == [PortRange(22), PortRange(5432)])
        #expect(!spec.ipv6)
        // An IPv6 ignored IP while IPv6 is off is a contradiction, named by its variable.
        #expect {
            _ = try CaptureSpecInput.resolve(flags: .init(), environment: env)
        } throws: { error in
            (error as? CaptureSpecError)?.problems.contains { $0.option == "APPMESH_EGRESS_IGNORED_IP" } == true
        }
    }

    @Test("an unknown APPMESH_ENABLE_IPV6 value is refused")
    func appMeshBadValue() {
        #expect {
            _ = try CaptureSpecInput.resolve(flags: .init(), environment: ["APPMESH_ENABLE_IPV6": "maybe"])
        } throws: { error in
            (error as? CaptureSpecError)?.problems.first?.option == "APPMESH_ENABLE_IPV6"
        }
    }

    @Test("flags beat WEIR_* which beat APPMESH_*")
    func precedence() throws {
        var flags = CaptureSpecInput()
        flags.add(.outboundPort, "16001", from: "--outbound-port")
        let spec = try CaptureSpecInput.resolve(
            flags: flags,
            environment: [
                "APPMESH_ENVOY_EGRESS_PORT": "15101", "WEIR_OUTBOUND_PORT": "17001",
                "APPMESH_ENVOY_INGRESS_PORT": "15100", "WEIR_INBOUND_PORT": "17006",
            ])
        #expect(spec.outboundPort == 16001)
        #expect(spec.inboundPort == 17006)
    }

    @Test("a misspelt WEIR_ variable is an error, not silently ignored")
    func unknownWeirVariable() {
        #expect {
            _ = try CaptureSpecInput.resolve(flags: .init(), environment: ["WEIR_OUTBOUND_PROT": "1"])
        } throws: { error in
            (error as? CaptureSpecError)?.problems.first?.option == "WEIR_OUTBOUND_PROT"
        }
    }
}
