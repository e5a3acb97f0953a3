import EnvoyAPI
import SwiftProtobuf

typealias TLSContext = Envoy_Extensions_TransportSockets_Tls_V3_CommonTlsContext

extension MeshCompiler.Builder {
    /// One listener port's filter chains under its TLS mode: STRICT, one TLS chain; PERMISSIVE, a TLS chain and a
    /// plaintext one told apart by the TLS inspector; DISABLED or none, the plaintext chain.
    mutating func addChains(
        _ chain: Envoy_Config_Listener_V3_FilterChain, tls: ListenerTLS?, protocol proto: PortProtocol,
        to listener: inout Envoy_Config_Listener_V3_Listener
    ) {
        guard let tls, tls.mode != .disabled else {
            listener.filterChains.append(chain)
            return
        }
        if tls.usesSDS { usesSDS = true }
        var secure = chain
        secure.transportSocket = downstreamTLS(tls, protocol: proto)
        guard tls.mode == .permissive else {
            listener.filterChains.append(secure)
            return
        }
        secure.name = chain.name + "_tls"
        secure.filterChainMatch.transportProtocol = "tls"
        var plain = chain
        plain.filterChainMatch.transportProtocol = "raw_buffer"
        listener.filterChains += [secure, plain]
        let inspector = "envoy.filters.listener.tls_inspector"
        if !listener.listenerFilters.contains(where: { $0.name == inspector }) {
            var f = Envoy_Config_Listener_V3_ListenerFilter()
            f.name = inspector
            f.typedConfig = anyOf(Envoy_Extensions_Filters_Listener_TlsInspector_V3_TlsInspector())
            listener.listenerFilters.append(f)
            // A client that speaks first in plaintext is found at once; one that waits for the server (a
            // server-first protocol) reaches the plaintext chain when the inspector gives up, instead of being closed.
            listener.continueOnListenerFiltersTimeout = true
        }
    }

    /// The listener side: the listener's certificate, and with `validation` a required, validated client certificate.
    func downstreamTLS(_ tls: ListenerTLS, protocol proto: PortProtocol) -> Envoy_Config_Core_V3_TransportSocket {
        var d = Envoy_Extensions_TransportSockets_Tls_V3_DownstreamTlsContext()
        var common = TLSContext()
        set(tls.certificate, in: &common)
        switch proto {
        case .http: common.alpnProtocols = ["http/1.1"]
        case .http2, .grpc: common.alpnProtocols = ["h2", "http/1.1"]
        case .tcp: break
        }
        if let v = tls.validation {
            set(v.trust, names: v.subjectAlternativeNames, in: &common)
            d.requireClientCertificate = Google_Protobuf_BoolValue(true)
        }
        d.commonTlsContext = common
        return transportSocket(d)
    }

    /// The client side: the backend's trust and names (its DNS hostname when the policy names none), and the client
    /// certificate for mutual TLS.
    func upstreamTLS(_ tls: ClientTLS, target: VirtualNode, protocol proto: PortProtocol)
        -> Envoy_Config_Core_V3_TransportSocket
    {
        var u = Envoy_Extensions_TransportSockets_Tls_V3_UpstreamTlsContext()
        var common = TLSContext()
        if let c = tls.certificate { set(c, in: &common) }
        var names = tls.validation.subjectAlternativeNames
        if names.isEmpty, let host = target.hostname { names = [host] }
        set(tls.validation.trust, names: names, in: &common)
        switch proto {
        case .http: common.alpnProtocols = ["http/1.1"]
        case .http2, .grpc: common.alpnProtocols = ["h2"]
        case .tcp: break
        }
        if let host = target.hostname, !IPAddressLiteral.isLiteral(host) { u.sni = host }
        u.commonTlsContext = common
        return transportSocket(u)
    }

    /// A gateway's health check of its own STRICT listener: TLS, presenting the listener's certificate, not validating
    /// the server (it is the gateway itself).
    func selfTLS(_ tls: ListenerTLS) -> Envoy_Config_Core_V3_TransportSocket {
        var u = Envoy_Extensions_TransportSockets_Tls_V3_UpstreamTlsContext()
        set(tls.certificate, in: &u.commonTlsContext)
        return transportSocket(u)
    }

    func set(_ c: CertificateSource, in common: inout TLSContext) {
        switch c {
        case .file(let chain, let key):
            var cert = Envoy_Extensions_TransportSockets_Tls_V3_TlsCertificate()
            cert.certificateChain.filename = chain
            cert.privateKey.filename = key
            common.tlsCertificates = [cert]
        case .sds(let name):
            common.tlsCertificateSdsSecretConfigs = [sdsSecret(name)]
        }
    }

    /// Trust from a file (with the names in the same validation context) or from SDS (the names beside it, in a
    /// combined context: Envoy merges the two).
    func set(_ trust: TrustSource, names: [String], in common: inout TLSContext) {
        var v = Envoy_Extensions_TransportSockets_Tls_V3_CertificateValidationContext()
        v.matchTypedSubjectAltNames = names.map(Self.sanMatcher)
        switch trust {
        case .file(let chain):
            v.trustedCa.filename = chain
            common.validationContext = v
        case .sds(let name) where names.isEmpty:
            common.validationContextSdsSecretConfig = sdsSecret(name)
        case .sds(let name):
            var combined = TLSContext.CombinedCertificateValidationContext()
            combined.defaultValidationContext = v
            combined.validationContextSdsSecretConfig = sdsSecret(name)
            common.combinedValidationContext = combined
        }
    }

    /// An exact subject alternative name: a URI (`spiffe://…`), an IP address, or a DNS name.
    static func sanMatcher(_ name: String) -> Envoy_Extensions_TransportSockets_Tls_V3_SubjectAltNameMatcher {
        var m = Envoy_Extensions_TransportSockets_Tls_V3_SubjectAltNameMatcher()
        m.sanType = name.contains("://") ? .uri : IPAddressLiteral.isLiteral(name) ? .ipAddress : .dns
        m.matcher.exact = name
        return m
    }

    /// A secret from the SDS server over its Unix socket (the `weir_sds` cluster).
    func sdsSecret(_ name: String) -> Envoy_Extensions_TransportSockets_Tls_V3_SdsSecretConfig {
        var s = Envoy_Extensions_TransportSockets_Tls_V3_SdsSecretConfig()
        s.name = name
        var api = Envoy_Config_Core_V3_ApiConfigSource()
        api.apiType = .grpc
        api.transportApiVersion = .v3
        var grpc = Envoy_Config_Core_V3_GrpcService()
        grpc.envoyGrpc.clusterName = MeshCompiler.sdsCluster
        api.grpcServices = [grpc]
        s.sdsConfig.apiConfigSource = api
        s.sdsConfig.resourceApiVersion = .v3
        return s
    }

    /// The SDS server (the SPIRE agent, as App Mesh's Envoys used it) as a cluster: HTTP/2 over its Unix socket.
    mutating func addSDSCluster() {
        var c = Envoy_Config_Cluster_V3_Cluster()
        c.name = MeshCompiler.sdsCluster
        c.type = .static
        c.connectTimeout = duration(milliseconds: 1000)
        var endpoint = Envoy_Config_Endpoint_V3_LbEndpoint()
        endpoint.endpoint.address.pipe.path = compiler.options.sdsSocketPath
        var locality = Envoy_Config_Endpoint_V3_LocalityLbEndpoints()
        locality.lbEndpoints = [endpoint]
        c.loadAssignment.clusterName = c.name
        c.loadAssignment.endpoints = [locality]
        c.typedExtensionProtocolOptions = http2Options()
        out.clusters.append(c)
        clusterNames.insert(c.name)
    }

    func transportSocket<M: SwiftProtobuf.Message>(_ context: M) -> Envoy_Config_Core_V3_TransportSocket {
        var t = Envoy_Config_Core_V3_TransportSocket()
        t.name = "envoy.transport_sockets.tls"
        t.typedConfig = anyOf(context)
        return t
    }
}

extension CertificateSource {
    var usesSDS: Bool { if case .sds = self { return true } else { return false } }
    var canonical: String {
        switch self {
        case .file(let chain, let key): "file:\(chain.count):\(chain):\(key.count):\(key)"
        case .sds(let name): "sds:\(name.count):\(name)"
        }
    }
}

extension TLSValidation {
    var usesSDS: Bool { if case .sds = trust { return true } else { return false } }
    var canonical: String {
        let trust: String
        switch self.trust {
        case .file(let chain): trust = "file:\(chain.count):\(chain)"
        case .sds(let name): trust = "sds:\(name.count):\(name)"
        }
        return trust + "|" + subjectAlternativeNames.map { "\($0.count):\($0)" }.joined(separator: ",")
    }
}

extension ListenerTLS {
    var usesSDS: Bool { certificate.usesSDS || validation?.usesSDS == true }
}

extension ClientTLS {
    var usesSDS: Bool { certificate?.usesSDS == true || validation.usesSDS }

    /// 8 hex digits that tell one policy from another in cluster names (FNV-1a of the policy's fields).
    var fingerprint: String {
        let text = (certificate?.canonical ?? "-") + "|" + validation.canonical
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in text.utf8 { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
        let v = UInt32(truncatingIfNeeded: h ^ (h >> 32))
        let hex = String(v, radix: 16)
        return String(repeating: "0", count: 8 - hex.count) + hex
    }
}
