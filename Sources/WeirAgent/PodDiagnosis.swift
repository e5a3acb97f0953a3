import EnvoyAPI
import WeirCapture
import WeirMesh
import WeirNetns

/// What `weir status POD` can see is wrong with a pod, in the words of the trouble it causes: rules drifted
/// (traffic bypasses the sidecar), no sidecar connected, a NACKed configuration, a node id the mesh does not have,
/// a virtual-node listener port on which nothing listens inside the pod (Envoy accepts and resets: "connection
/// reset by peer", 503 UF), a backend cluster without endpoints (503 UH). Pure: the daemon gathers the view, the
/// node's resources and the pod's listening sockets, and this decides.
public enum PodDiagnosis {
    /// The node ids to look at: those the pod's sidecars asked for, or, with none connected, those it may use.
    public static func nodes(of v: PodView) -> [String] {
        v.sidecars.isEmpty ? v.nodeIDs : Array(Set(v.sidecars.map(\.nodeID))).sorted()
    }

    /// The problems; `resources` holds the nodes the mesh has, `listening` is nil when the pod's sockets could
    /// not be read (then nothing is said of its ports).
    public static func problems(
        view v: PodView, sidecar: Bool, resources: [String: EnvoyResources], listening: [Endpoint]?
    ) -> [String] {
        var out: [String] = []
        if v.rules != "healthy" {
            out.append("rules: \(v.rules): the pod's traffic may bypass its proxy until the daemon repairs them")
        }
        guard sidecar else { return out }
        if v.sidecars.isEmpty {
            out.append(
                "no sidecar is connected to the pod's xDS endpoint (\(v.listeners.joined(separator: ", "))): Envoy is not running, or its bootstrap points elsewhere (weir bootstrap --node ID --xds 127.0.0.1:15010)"
            )
        }
        for s in v.sidecars {
            for (type, t) in s.types.sorted(by: { $0.key < $1.key }) {
                guard let nack = t.lastNackVersion, t.lastAckedVersion != t.lastSentVersion else { continue }
                let message = (t.lastNackMessage ?? "(no message)").trimmingWhitespace
                let kept = t.lastAckedVersion.map { "it keeps running on version \($0)" } ?? "it has no earlier version"
                out.append("\(s.nodeID) NACKed \(type) version \(nack): \(message); \(kept)")
            }
        }
        for node in nodes(of: v) {
            guard let resources = resources[node] else {
                if !v.sidecars.isEmpty {
                    out.append(
                        "node \(node): the mesh has no virtual node by this id, so its Envoy gets no listeners (weir mesh validate; the node id is mesh/MESH/virtualNode/NAME_NAMESPACE or NAMESPACE/NAME)"
                    )
                }
                continue
            }
            for c in resources.clusters {
                let addresses = c.loadAssignment.endpoints.flatMap(\.lbEndpoints).map(\.endpoint.address.socketAddress)
                if c.type == .static, c.name.hasPrefix(MeshCompiler.localAppClusterPrefix), let listening {
                    for a in addresses {
                        let port = UInt16(clamping: a.portValue)
                        // Envoy dials this address: a socket on it, on its family's wildcard, or on :: (dual
                        // stack) takes the connection.
                        let dialled = IPAddressText.parseIPv4(a.address) ?? IPAddressText.parseIPv6(a.address)
                        let reached = listening.contains { l in
                            l.port == port
                                && (l.address == dialled
                                    || l.address.allSatisfy { $0 == 0 }
                                        && (l.family == .ipv6 || dialled?.count == 4))
                        }
                        guard !reached else { continue }
                        let other = listening.filter { $0.port == port }.map(\.description)
                        out.append(
                            "virtual node listener \(port): nothing listens on \(a.address):\(port) inside the pod"
                                + (other.isEmpty ? "" : " (only on \(other.joined(separator: ", ")))")
                                + ": Envoy accepts the connection and resets it (callers see 'connection reset by peer' or 503 UF)"
                        )
                    }
                }
                if c.type == .eds {
                    let endpoints = resources.endpoints.first { $0.clusterName == c.name }
                    if endpoints?.endpoints.flatMap(\.lbEndpoints).isEmpty ?? true {
                        out.append("backend cluster \(c.name) has no endpoints: requests routed to it get 503 (UH)")
                    }
                }
            }
        }
        return out
    }
}
