import EnvoyAPI
import Foundation
import SwiftProtobuf
import Testing
@testable import WeirMesh

/// The fields App Mesh's walkthroughs use, compiled as App Mesh's control plane gave them to its Envoys.
@Suite("App Mesh walkthrough fields in Envoy's terms")
struct FidelityTests {
    /// A client calling `color` (a node) in mesh `demo`; `extra` is spliced into the color node's spec, `clientExtra`
    /// into the client's, `meshExtra` into the mesh's.
    static func mesh(color: String = "", client: String = "", meshSpec: String = "{}") -> String {
        """
        apiVersion: appmesh.k8s.aws/v1beta2
        kind: Mesh
        metadata: {name: demo}
        spec: \(meshSpec)
        ---
        apiVersion: appmesh.k8s.aws/v1beta2
        kind: VirtualNode
        metadata: {name: front, namespace: demo}
        spec:
          listeners: [{portMapping: {port: 8080, protocol: http}}]
          backends:
            - virtualService:
                virtualServiceRef: {name: color}
        \(client)
        ---
        apiVersion: appmesh.k8s.aws/v1beta2
        kind: VirtualNode
        metadata: {name: color, namespace: demo}
        spec:
          listeners:
            - portMapping: {port: 9080, protocol: http}
        \(color)
          serviceDiscovery: {dns: {hostname: color.demo.svc.cluster.local}}
        ---
        apiVersion: appmesh.k8s.aws/v1beta2
        kind: VirtualService
        metadata: {name: color, namespace: demo}
        spec:
          awsName: color.demo.svc.cluster.local
          provider: {virtualNode: {virtualNodeRef: {name: color}}}
        """
    }

    static func compile(_ text: String, _ node: String) throws -> EnvoyResources {
        try MeshCompiler(ManifestReader.read([("m.yaml", text)])).compile(nodeID: "mesh/demo/virtualNode/\(node)_demo")
    }

    static func decode<M: SwiftProtobuf.Message>(_ any: Google_Protobuf_Any, as _: M.Type) throws -> M {
        try M(serializedBytes: any.value)
    }

    @Test(
        "PERMISSIVE: the TLS inspector, a TLS chain and a plaintext chain; STRICT: one TLS chain; mTLS requires a client certificate"
    )
    func listenerTLS() throws {
        let permissive = Self.mesh(
            color: """
                      tls:
                        mode: PERMISSIVE
                        certificate: {file: {certificateChain: /certs/color.pem, privateKey: /certs/color-key.pem}}
                        validation:
                          trust: {file: {certificateChain: /certs/ca.pem}}
                          subjectAlternativeNames: {match: {exact: [front.demo.svc.cluster.local, "spiffe://demo/front"]}}
                """)
        let r = try Self.compile(permissive, "color")
        let ingress = try #require(r.listeners.first { $0.name == "ingress" })
        #expect(
            ingress.listenerFilters.map(\.name) == [
                "envoy.filters.listener.original_dst", "envoy.filters.listener.tls_inspector",
            ])
        #expect(ingress.continueOnListenerFiltersTimeout)
        #expect(ingress.filterChains.map(\.filterChainMatch.transportProtocol) == ["tls", "raw_buffer"])
        #expect(ingress.filterChains.allSatisfy { $0.filterChainMatch.destinationPort.value == 9080 })
        let tls = try Self.decode(
            ingress.filterChains[0].transportSocket.typedConfig,
            as: Envoy_Extensions_TransportSockets_Tls_V3_DownstreamTlsContext.self)
        #expect(tls.requireClientCertificate.value)
        #expect(tls.commonTlsContext.tlsCertificates.first?.certificateChain.filename == "/certs/color.pem")
        let v = tls.commonTlsContext.validationContext
        #expect(v.trustedCa.filename == "/certs/ca.pem")
        #expect(
            v.matchTypedSubjectAltNames.map { "\($0.sanType):\($0.matcher.exact)" } == [
                "dns:front.demo.svc.cluster.local", "uri:spiffe://demo/front",
            ])
        #expect(!ingress.filterChains[1].hasTransportSocket, "the plaintext chain")

        let strict = try Self.compile(permissive.replacingOccurrences(of: "PERMISSIVE", with: "STRICT"), "color")
        let s = try #require(strict.listeners.first { $0.name == "ingress" })
        #expect(
            s.filterChains.count == 1 && s.filterChains[0].hasTransportSocket
                && s.filterChains[0].filterChainMatch.transportProtocol.isEmpty)
        #expect(!s.listenerFilters.contains { $0.name == "envoy.filters.listener.tls_inspector" })
        let disabled = try Self.compile(permissive.replacingOccurrences(of: "PERMISSIVE", with: "DISABLED"), "color")
        #expect(disabled.listeners.first { $0.name == "ingress" }?.filterChains.map(\.hasTransportSocket) == [false])
    }

    @Test(
        "a client policy originates TLS on its ports, with its SANs (else the target's DNS name) and certificate; per backend over backendDefaults"
    )
    func clientPolicy() throws {
        let policy = """
              backendDefaults:
                clientPolicy:
                  tls:
                    ports: [9080]
                    validation: {trust: {file: {certificateChain: /certs/ca.pem}}}
            """
        let r = try Self.compile(Self.mesh(client: policy), "front")
        let cluster = try #require(
            r.clusters.first { $0.name.hasPrefix("vn_color_demo_9080_tls_") }, "\(r.clusters.map(\.name))")
        let u = try Self.decode(
            cluster.transportSocket.typedConfig, as: Envoy_Extensions_TransportSockets_Tls_V3_UpstreamTlsContext.self)
        #expect(u.sni == "color.demo.svc.cluster.local")
        #expect(u.commonTlsContext.validationContext.trustedCa.filename == "/certs/ca.pem")
        #expect(
            u.commonTlsContext.validationContext.matchTypedSubjectAltNames.map(\.matcher.exact) == [
                "color.demo.svc.cluster.local"
            ],
            "without SANs, the target's DNS hostname")
        #expect(u.commonTlsContext.tlsCertificates.isEmpty, "no client certificate: TLS, not mTLS")
        // The route uses the TLS cluster.
        #expect(
            r.routes.first { $0.name == "egress_9080" }?.virtualHosts.first?.routes.first?.route.cluster == cluster.name
        )

        // Another port: no TLS. enforce false: no TLS.
        for off in [
            policy.replacingOccurrences(of: "ports: [9080]", with: "ports: [9443]"),
            policy.replacingOccurrences(of: "ports: [9080]", with: "enforce: false"),
        ] {
            let plain = try Self.compile(Self.mesh(client: off), "front")
            #expect(
                plain.clusters.contains { $0.name == "vn_color_demo_9080" && !$0.hasTransportSocket },
                "\(plain.clusters.map(\.name))")
        }

        // A backend's own policy wins; SDS certificate and trust come over the SDS cluster, SANs beside the trust.
        let own = """
                    clientPolicy:
                      tls:
                        certificate: {sds: {secretName: "spiffe://demo/front"}}
                        validation:
                          trust: {sds: {secretName: "spiffe://demo"}}
                          subjectAlternativeNames: {match: {exact: ["spiffe://demo/color"]}}
            """
        var options = MeshCompiler.Options()
        options.sdsSocketPath = "/run/spire/agent.sock"
        let m = try ManifestReader.read([("m.yaml", Self.mesh(client: own + "\n" + policy))])
        let withSDS = try MeshCompiler(m, options: options).compile(nodeID: "mesh/demo/virtualNode/front_demo")
        let sdsCluster = try #require(withSDS.clusters.first { $0.name == "weir_sds" })
        #expect(
            sdsCluster.loadAssignment.endpoints.first?.lbEndpoints.first?.endpoint.address.pipe.path
                == "/run/spire/agent.sock")
        let c = try #require(withSDS.clusters.first { $0.name.hasPrefix("vn_color_demo_9080_tls_") })
        let t = try Self.decode(
            c.transportSocket.typedConfig, as: Envoy_Extensions_TransportSockets_Tls_V3_UpstreamTlsContext.self)
        #expect(t.commonTlsContext.tlsCertificateSdsSecretConfigs.map(\.name) == ["spiffe://demo/front"])
        #expect(
            t.commonTlsContext.tlsCertificateSdsSecretConfigs.first?.sdsConfig.apiConfigSource.grpcServices.first?
                .envoyGrpc.clusterName == "weir_sds")
        let combined = t.commonTlsContext.combinedValidationContext
        #expect(combined.validationContextSdsSecretConfig.name == "spiffe://demo")
        #expect(
            combined.defaultValidationContext.matchTypedSubjectAltNames.map { "\($0.sanType):\($0.matcher.exact)" } == [
                "uri:spiffe://demo/color"
            ])
    }

    @Test("access logs in App Mesh's text and json formats, verbatim")
    func accessLogFormats() throws {
        func log(_ format: String) throws -> Envoy_Extensions_AccessLoggers_File_V3_FileAccessLog {
            let r = try Self.compile(
                Self.mesh(client: "  logging: {accessLog: {file: {path: /dev/stdout, format: \(format)}}}"), "front")
            let hcm = try #require(r.listeners.first { $0.name == "ingress" }?.filterChains.first?.filters.first)
            let manager = try Self.decode(
                hcm.typedConfig,
                as: Envoy_Extensions_Filters_Network_HttpConnectionManager_V3_HttpConnectionManager.self)
            return try Self.decode(
                try #require(manager.accessLog.first).typedConfig,
                as: Envoy_Extensions_AccessLoggers_File_V3_FileAccessLog.self)
        }
        let text = try log(#"{text: "%START_TIME% %RESPONSE_CODE%\n"}"#)
        #expect(
            text.path == "/dev/stdout"
                && text.logFormat.textFormatSource.inlineString == "%START_TIME% %RESPONSE_CODE%\n")
        let json = try log("{json: [{key: code, value: \"%RESPONSE_CODE%\"}, {key: path, value: \"%REQ(:PATH)%\"}]}")
        #expect(
            json.logFormat.jsonFormat.fields.mapValues(\.stringValue) == [
                "code": "%RESPONSE_CODE%", "path": "%REQ(:PATH)%",
            ])
        #expect(throws: MeshError.self) { try log(#"{text: "a", json: [{key: k, value: v}]}"#) }
    }

    @Test(
        "dns.responseType: LOADBALANCER (the default) is LOGICAL_DNS, ENDPOINTS STRICT_DNS; ipPreference sets the lookup family and the listeners' address"
    )
    func discovery() throws {
        func cluster(_ text: String) throws -> Envoy_Config_Cluster_V3_Cluster {
            try #require(try Self.compile(text, "front").clusters.first { $0.name == "vn_color_demo_9080" })
        }
        let dns = "serviceDiscovery: {dns: {hostname: color.demo.svc.cluster.local}}"
        #expect(try cluster(Self.mesh()).type == .logicalDns)
        #expect(
            try cluster(
                Self.mesh().replacingOccurrences(
                    of: dns,
                    with: "serviceDiscovery: {dns: {hostname: color.demo.svc.cluster.local, responseType: ENDPOINTS}}")
            ).type == .strictDns)
        #expect(
            try cluster(
                Self.mesh().replacingOccurrences(
                    of: dns,
                    with:
                        "serviceDiscovery: {dns: {hostname: color.demo.svc.cluster.local, responseType: LOADBALANCER}}")
            ).type == .logicalDns)
        #expect(try cluster(Self.mesh()).dnsLookupFamily == .v4Preferred)
        let v6 = Self.mesh(meshSpec: "{meshServiceDiscovery: {ipPreference: IPv6_ONLY}}")
        #expect(try cluster(v6).dnsLookupFamily == .v6Only)
        #expect(
            try cluster(Self.mesh(meshSpec: "{meshServiceDiscovery: {ipPreference: IPv4_ONLY}}")).dnsLookupFamily
                == .v4Only)
        let r = try Self.compile(v6, "color")
        let ingress = try #require(r.listeners.first { $0.name == "ingress" })
        #expect(ingress.address.socketAddress.address == "::" && ingress.address.socketAddress.ipv4Compat)
        #expect(
            r.clusters.first { $0.name == "local_app_9080" }?.loadAssignment.endpoints.first?.lbEndpoints.first?
                .endpoint.address.socketAddress.address == "::1")
    }

    @Test(
        "references by ARN resolve to the object the ARN names, in the referrer's mesh; an ARN that names nothing is refused"
    )
    func arns() throws {
        let byARN = Self.mesh().replacingOccurrences(
            of: "virtualServiceRef: {name: color}",
            with:
                "virtualServiceARN: arn:aws:appmesh:eu-west-1:111122223333:mesh/demo/virtualService/color.demo.svc.cluster.local"
        )
        let m = try ManifestReader.read([("m.yaml", byARN)])
        #expect(
            m.virtualNodes.first { $0.ref.name == "front" }?.backends.map(\.service) == [
                ResourceRef(name: "color", namespace: "demo")
            ])
        #expect(try Self.compile(byARN, "front").clusters.contains { $0.name == "vn_color_demo_9080" })
        for (bad, mentions) in [
            ("virtualService/nothing", "no virtualService with awsName 'nothing' in mesh 'demo'"),
            ("virtualNode/color_demo", "names a virtualNode, not a virtualService"),
        ] {
            let text = byARN.replacingOccurrences(of: "virtualService/color.demo.svc.cluster.local", with: bad)
            let e = #expect(throws: MeshError.self) { try ManifestReader.read([("m.yaml", text)]) }
            #expect(e?.problems.first?.message.contains(mentions) == true, "\(String(describing: e))")
        }
        let otherMesh = byARN.replacingOccurrences(
            of: "mesh/demo/virtualService", with: "mesh/elsewhere/virtualService")
        let e = #expect(throws: MeshError.self) { try ManifestReader.read([("m.yaml", otherMesh)]) }
        #expect(
            e?.problems.first?.message.contains("App Mesh does not reach across meshes") == true,
            "\(String(describing: e))")
    }

    @Test(
        "what weir cannot honour is refused by name, with what to use instead",
        arguments: [
            (
                "  serviceDiscovery: {dns: {hostname: color.demo.svc.cluster.local}}",
                "  serviceDiscovery: {awsCloudMap: {namespaceName: demo.local, serviceName: color}}",
                "spec.serviceDiscovery.awsCloudMap", "use serviceDiscovery.dns"
            ),
            (
                "    - portMapping: {port: 9080, protocol: http}",
                "    - portMapping: {port: 9080, protocol: http}\n      tls: {mode: STRICT, certificate: {acm: {certificateARN: arn:aws:acm:x}}}",
                "spec.listeners[0].tls.certificate.acm", "give certificate.file or certificate.sds"
            ),
            (
                "    - portMapping: {port: 9080, protocol: http}",
                "    - portMapping: {port: 9080, protocol: http}\n      protcol: http", "spec.listeners[0].protcol",
                "unknown field 'protcol'"
            ),
        ])
    func refusedByName(_ from: String, _ to: String, _ field: String, _ mentions: String) {
        expectRefused(Self.mesh(), from, to, field: field, mentions: mentions)
    }

    @Test(
        "gateway rewrites: the Host to the target's name and the prefix to / by default; DISABLED keeps each; path.exact rewrites the path; match.scheme matches :scheme"
    )
    func rewrites() throws {
        func route(_ rewrite: String, match: String = "prefix: /cart") throws -> Envoy_Config_Route_V3_Route {
            let text = gateway.replacingOccurrences(of: "      rewrite:\n        prefix: {value: /}", with: rewrite)
                .replacingOccurrences(
                    of: "prefix: /cart\n      hostname: {suffix: .example.com}",
                    with: match + "\n      hostname: {suffix: .example.com}")
            let r = try MeshCompiler(ManifestReader.read([("m.yaml", text)])).compile(nodeID: "shop/ingress")
            return try #require(r.routes.first { $0.name == "gateway_8088" }?.virtualHosts.first?.routes.first)
        }
        let byDefault = try route("")
        #expect(
            byDefault.route.hostRewriteLiteral == "cart.shop" && byDefault.route.prefixRewrite == "/"
                && byDefault.match.prefix == "/cart/")
        let keep = try route(
            "      rewrite:\n        hostname: {defaultTargetHostname: DISABLED}\n        prefix: {defaultPrefix: DISABLED}"
        )
        #expect(
            keep.route.hostRewriteSpecifier == nil && keep.route.prefixRewrite.isEmpty && keep.match.prefix == "/cart")
        let path = try route("      rewrite:\n        path: {exact: /checkout}", match: "path: {exact: /cart}")
        #expect(
            path.match.path == "/cart" && path.route.regexRewrite.substitution == "/checkout"
                && path.route.regexRewrite.pattern.regex == "^.*$")

        let scheme = richRoutes.replacingOccurrences(
            of: "          method: GET\n", with: "          method: GET\n          scheme: https\n")
        let r = try MeshCompiler(ManifestReader.read([("m.yaml", scheme)])).compile(nodeID: "shop/front")
        let beta = try #require(r.routes.first { $0.name == "egress_9080" }?.virtualHosts.first?.routes.first)
        #expect(
            beta.match.headers.map { "\($0.name)=\($0.stringMatch.exact)" }.prefix(2) == [
                ":method=GET", ":scheme=https",
            ])
    }
}
