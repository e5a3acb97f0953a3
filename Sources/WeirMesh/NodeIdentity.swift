/// The identities an Envoy may present as `node.id`, resolved to a virtual node of the manifests.
///
/// App Mesh's Envoys used `mesh/<mesh>/virtualNode/<awsName>`, also as a full ARN
/// (`arn:aws:appmesh:<region>:<account>:mesh/<mesh>/virtualNode/<awsName>`); weir also accepts
/// `<namespace>/<name>`, as App Mesh's Kubernetes controller names virtual nodes.
public enum NodeIdentity: Sendable, Hashable {
    case appMesh(mesh: String, awsName: String)
    /// `mesh/<mesh>/virtualGateway/<awsName>`: an Envoy running as a virtual gateway.
    case appMeshGateway(mesh: String, awsName: String)
    case kubernetes(ResourceRef)

    public enum ParseError: Error, Sendable, Equatable, CustomStringConvertible {
        case malformed(String)
        public var description: String {
            switch self {
            case .malformed(let id):
                return
                    "node id '\(id)' is not mesh/<mesh>/virtualNode/<name>, mesh/<mesh>/virtualGateway/<name>, an App Mesh ARN, or <namespace>/<name>"
            }
        }
    }

    public static func parse(_ id: String) throws(ParseError) -> NodeIdentity {
        var path = Substring(id)
        if path.hasPrefix("arn:") {
            // arn:partition:appmesh:region:account:resource — the resource part holds the path.
            let parts = path.split(separator: ":", maxSplits: 5, omittingEmptySubsequences: false)
            guard parts.count == 6, parts[2] == "appmesh" else { throw .malformed(id) }
            path = parts[5]
        }
        let pieces = path.split(separator: "/", omittingEmptySubsequences: false)
        if pieces.count == 4, pieces[0] == "mesh", pieces[2] == "virtualNode", !pieces[1].isEmpty, !pieces[3].isEmpty {
            return .appMesh(mesh: String(pieces[1]), awsName: String(pieces[3]))
        }
        if pieces.count == 4, pieces[0] == "mesh", pieces[2] == "virtualGateway", !pieces[1].isEmpty, !pieces[3].isEmpty
        {
            return .appMeshGateway(mesh: String(pieces[1]), awsName: String(pieces[3]))
        }
        if !id.hasPrefix("arn:"), pieces.count == 2, !pieces[0].isEmpty, !pieces[1].isEmpty {
            return .kubernetes(ResourceRef(name: String(pieces[1]), namespace: String(pieces[0])))
        }
        throw .malformed(id)
    }
}

extension MeshManifests {
    /// The virtual node an Envoy with this identity serves, if the manifests define it.
    /// An App Mesh identity matches `spec.awsName` (or the controller's default `<name>_<namespace>`) in the
    /// node's mesh: its `meshRef`, or the only mesh the manifests define.
    public func virtualNode(for identity: NodeIdentity) -> VirtualNode? {
        switch identity {
        case .kubernetes(let ref):
            return virtualNodes.first { $0.ref == ref }
        case .appMesh(let mesh, let awsName):
            return virtualNodes.first { n in meshAWSName(of: n) == mesh && n.awsName == awsName }
        case .appMeshGateway:
            return nil
        }
    }

    /// The virtual gateway an Envoy with this identity runs as (`<namespace>/<name>` names a gateway when no
    /// virtual node has that name).
    public func virtualGateway(for identity: NodeIdentity) -> VirtualGateway? {
        switch identity {
        case .kubernetes(let ref):
            return virtualNodes.contains { $0.ref == ref } ? nil : virtualGateways.first { $0.ref == ref }
        case .appMeshGateway(let mesh, let awsName):
            return virtualGateways.first { g in meshAWSName(of: g) == mesh && g.awsName == awsName }
        case .appMesh:
            return nil
        }
    }

    /// The mesh a virtual node belongs to.
    public func meshName(of node: VirtualNode) -> String? {
        meshName(meshRef: node.meshName, namespace: node.ref.namespace)
    }

    /// The mesh a virtual gateway belongs to.
    public func meshName(of gateway: VirtualGateway) -> String? {
        meshName(meshRef: gateway.meshName, namespace: gateway.ref.namespace)
    }

    /// The App Mesh name (`spec.awsName`) of a virtual node's mesh, as node ids and ARNs give it.
    public func meshAWSName(of node: VirtualNode) -> String? { meshName(of: node).map(awsName(ofMesh:)) }

    /// The App Mesh name of a virtual gateway's mesh.
    public func meshAWSName(of gateway: VirtualGateway) -> String? { meshName(of: gateway).map(awsName(ofMesh:)) }

    func awsName(ofMesh name: String) -> String { meshes.first { $0.name == name }?.awsName ?? name }

    /// Its `meshRef`; else the only mesh; else, as App Mesh's controller chose, the one mesh whose
    /// `namespaceSelector` takes the object's namespace (nil when none or several do).
    func meshName(meshRef: String?, namespace: String) -> String? {
        if let meshRef { return meshRef }
        if meshes.count == 1 { return meshes[0].name }
        let selecting = meshes(selecting: namespace)
        return selecting.count == 1 ? selecting[0].name : nil
    }

    /// The meshes whose `namespaceSelector` takes this namespace.
    func meshes(selecting namespace: String) -> [Mesh] {
        let labels = labels(ofNamespace: namespace)
        return meshes.filter { $0.namespaceSelector?.matches(labels) ?? false }
    }
}
