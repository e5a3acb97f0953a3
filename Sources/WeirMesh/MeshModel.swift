/// App Mesh `appmesh.k8s.aws/v1beta2` resources, as weir reads them from manifests.

/// A reference to another resource by name, in a namespace (the referrer's when omitted).
public struct ResourceRef: Sendable, Hashable, CustomStringConvertible {
    public var name: String
    public var namespace: String
    public var description: String { "\(namespace)/\(name)" }
}

/// Where a problem was found: file, line (1-based), and the field path.
public struct SourceLocation: Sendable, Hashable, CustomStringConvertible {
    public var file: String
    public var line: Int
    public var field: String
    public var description: String { "\(file):\(line): \(field)" }
    public init(file: String, line: Int, field: String) { self.file = file; self.line = line; self.field = field }
}

public enum PortProtocol: String, Sendable, Hashable, CaseIterable { case http, http2, grpc, tcp }

public struct PortMapping: Sendable, Hashable {
    public var port: UInt16
    public var `protocol`: PortProtocol
}

public struct HealthCheck: Sendable, Hashable {
    public var `protocol`: PortProtocol
    public var path: String?
    public var port: UInt16?
    public var healthyThreshold: Int
    public var unhealthyThreshold: Int
    public var intervalMilliseconds: Int
    public var timeoutMilliseconds: Int
}

public struct OutlierDetection: Sendable, Hashable {
    public var maxServerErrors: Int
    public var intervalMilliseconds: Int
    public var baseEjectionMilliseconds: Int
    public var maxEjectionPercent: Int
}

public struct ConnectionPool: Sendable, Hashable {
    public var maxConnections: Int?
    public var maxPendingRequests: Int?
    public var maxRequests: Int?
}

/// A virtual node's listener: the application port and how inbound traffic to it is handled.
public struct NodeListener: Sendable, Hashable {
    public var portMapping: PortMapping
    public var healthCheck: HealthCheck?
    public var perRequestTimeoutMilliseconds: Int?
    public var idleTimeoutMilliseconds: Int?
    public var outlierDetection: OutlierDetection?
    public var connectionPool: ConnectionPool?

    public init(portMapping: PortMapping, healthCheck: HealthCheck? = nil, perRequestTimeoutMilliseconds: Int? = nil,
                idleTimeoutMilliseconds: Int? = nil, outlierDetection: OutlierDetection? = nil, connectionPool: ConnectionPool? = nil) {
        self.portMapping = portMapping; self.healthCheck = healthCheck
        self.perRequestTimeoutMilliseconds = perRequestTimeoutMilliseconds; self.idleTimeoutMilliseconds = idleTimeoutMilliseconds
        self.outlierDetection = outlierDetection; self.connectionPool = connectionPool
    }
}

public struct Mesh: Sendable, Hashable {
    public var name: String
    public var egressDropAll: Bool
    /// `spec.namespaceSelector`: the namespaces whose objects belong to this mesh when they name none
    /// (absent selects none, empty all).
    public var namespaceSelector: LabelSelector?
    public var location: SourceLocation
}

public struct VirtualNode: Sendable, Hashable {
    public var ref: ResourceRef
    /// `spec.awsName`, defaulting to `<name>_<namespace>` as App Mesh's controller does.
    public var awsName: String
    public var meshName: String?
    public var listeners: [NodeListener]
    /// DNS hostname from `serviceDiscovery.dns.hostname`.
    public var hostname: String?
    public var backends: [ResourceRef]
    public var accessLogPath: String?
    public var location: SourceLocation
}

public struct WeightedTarget: Sendable, Hashable {
    public var node: ResourceRef
    public var weight: Int
    public var port: UInt16?
    public var location: SourceLocation
}

/// How a header, path or query value is matched.
public enum StringMatch: Sendable, Hashable {
    case exact(String), prefix(String), suffix(String), regex(String)
    case range(start: Int, end: Int)
}

public struct HeaderMatch: Sendable, Hashable {
    public var name: String
    /// nil: the header must be present.
    public var match: StringMatch?
    public var invert: Bool
}

public struct QueryMatch: Sendable, Hashable {
    public var name: String
    /// nil: the parameter must be present.
    public var exact: String?
}

public struct RetryPolicy: Sendable, Hashable {
    public var maxRetries: Int
    public var perRetryTimeoutMilliseconds: Int
    public var httpRetryEvents: [String]
    public var tcpRetryEvents: [String]
    public var grpcRetryEvents: [String]
}

public struct RouteSpec: Sendable, Hashable {
    public var name: String
    public var kind: PortProtocol
    public var priority: Int?
    public var prefix: String?
    /// `match.path` (exact or regex).
    public var path: StringMatch?
    public var method: String?
    public var headers: [HeaderMatch] = []
    public var query: [QueryMatch] = []
    /// gRPC routes: `match.serviceName` and `match.methodName`.
    public var grpcService: String?
    public var grpcMethod: String?
    public var retry: RetryPolicy?
    public var perRequestTimeoutMilliseconds: Int?
    public var idleTimeoutMilliseconds: Int?
    public var targets: [WeightedTarget]
    public var location: SourceLocation
}

public struct VirtualRouter: Sendable, Hashable {
    public var ref: ResourceRef
    public var listeners: [PortMapping]
    public var routes: [RouteSpec]
    public var location: SourceLocation
}

public enum ServiceProvider: Sendable, Hashable {
    case virtualNode(ResourceRef)
    case virtualRouter(ResourceRef)
}

public struct VirtualService: Sendable, Hashable {
    public var ref: ResourceRef
    /// `spec.awsName`, defaulting to `<name>.<namespace>` as App Mesh's controller does.
    public var awsName: String
    public var provider: ServiceProvider?
    public var location: SourceLocation
}

/// A Kubernetes label selector (`matchLabels` and `matchExpressions`; all of them must hold).
public struct LabelSelector: Sendable, Hashable {
    public enum Operator: String, Sendable, Hashable { case `in` = "In", notIn = "NotIn", exists = "Exists", doesNotExist = "DoesNotExist" }
    public struct Requirement: Sendable, Hashable {
        public var key: String
        public var op: Operator
        public var values: [String]
    }
    public var matchLabels: [String: String] = [:]
    public var matchExpressions: [Requirement] = []
    public init(matchLabels: [String: String] = [:], matchExpressions: [Requirement] = []) {
        self.matchLabels = matchLabels; self.matchExpressions = matchExpressions
    }

    /// An empty selector matches everything.
    public func matches(_ labels: [String: String]) -> Bool {
        for (k, v) in matchLabels where labels[k] != v { return false }
        for r in matchExpressions {
            let value = labels[r.key]
            switch r.op {
            case .in: guard let value, r.values.contains(value) else { return false }
            case .notIn: if let value, r.values.contains(value) { return false }
            case .exists: if value == nil { return false }
            case .doesNotExist: if value != nil { return false }
            }
        }
        return true
    }
}

/// An ingress gateway: Envoy at the edge of the mesh.
public struct VirtualGateway: Sendable, Hashable {
    public var ref: ResourceRef
    /// `spec.awsName`, defaulting to `<name>_<namespace>` as App Mesh's controller does.
    public var awsName: String
    public var meshName: String?
    public var listeners: [NodeListener]
    public var accessLogPath: String?
    /// `spec.namespaceSelector`: the namespaces whose gateway routes it takes. Absent selects none, empty all.
    public var namespaceSelector: LabelSelector?
    /// `spec.gatewayRouteSelector`: which gateway routes of those namespaces (absent or empty: all).
    public var gatewayRouteSelector: LabelSelector?
    public var location: SourceLocation
}

/// A route from a virtual gateway to a virtual service.
public struct GatewayRoute: Sendable, Hashable {
    public var ref: ResourceRef
    /// `metadata.labels`, for a gateway's `gatewayRouteSelector`.
    public var labels: [String: String] = [:]
    /// `spec.virtualGatewayRef`: the gateway named outright, instead of chosen by the gateways' selectors.
    public var virtualGatewayRef: ResourceRef?
    public var kind: PortProtocol
    public var priority: Int?
    public var prefix: String?
    /// `match.hostname`: exact or suffix.
    public var hostname: StringMatch?
    public var headers: [HeaderMatch] = []
    public var method: String?
    public var target: ResourceRef
    public var targetPort: UInt16?
    /// `action.rewrite.prefix.value` (nil: App Mesh's default prefix rewrite).
    public var rewritePrefix: String?
    public var location: SourceLocation
}

/// Everything read from a manifest directory.
public struct MeshManifests: Sendable, Hashable {
    public var meshes: [Mesh] = []
    public var virtualNodes: [VirtualNode] = []
    public var virtualRouters: [VirtualRouter] = []
    public var virtualServices: [VirtualService] = []
    public var virtualGateways: [VirtualGateway] = []
    public var gatewayRoutes: [GatewayRoute] = []
    /// A `v1` `Namespace` object found beside the App Mesh ones: its labels, and where it is.
    public struct Namespace: Sendable, Hashable {
        public var labels: [String: String]
        public var location: SourceLocation
    }
    /// The Namespace objects, by name.
    public var namespaces: [String: Namespace] = [:]
    public init() {}

    mutating func append(_ other: MeshManifests) {
        meshes += other.meshes; virtualNodes += other.virtualNodes; virtualRouters += other.virtualRouters
        virtualServices += other.virtualServices; virtualGateways += other.virtualGateways; gatewayRoutes += other.gatewayRoutes
        namespaces.merge(other.namespaces) { a, _ in a }
    }

    /// A namespace's labels as Kubernetes gives them: those of its `Namespace` object, if the manifests have
    /// one, and always `kubernetes.io/metadata.name: <name>`.
    public func labels(ofNamespace name: String) -> [String: String] {
        var l = namespaces[name]?.labels ?? [:]
        l["kubernetes.io/metadata.name"] = name
        return l
    }

    /// The gateways a gateway route belongs to, as App Mesh's controller chose them: the one its
    /// `virtualGatewayRef` names, or else every gateway whose `namespaceSelector` takes the route's
    /// namespace and whose `gatewayRouteSelector` takes the route's labels. One is right; none or
    /// several is an error the reader reports.
    public func gateways(of route: GatewayRoute) -> [VirtualGateway] {
        if let ref = route.virtualGatewayRef { return virtualGateways.filter { $0.ref == ref } }
        let nsLabels = labels(ofNamespace: route.ref.namespace)
        return virtualGateways.filter { gw in
            guard let ns = gw.namespaceSelector, ns.matches(nsLabels) else { return false }
            return gw.gatewayRouteSelector?.matches(route.labels) ?? true
        }
    }
}

/// One problem in the manifests, located to the field.
public struct MeshProblem: Sendable, Hashable, CustomStringConvertible {
    public var location: SourceLocation
    public var message: String
    public var description: String { "\(location): \(message)" }
    public init(location: SourceLocation, message: String) { self.location = location; self.message = message }
}

public struct MeshError: Error, Sendable, CustomStringConvertible {
    public var problems: [MeshProblem]
    public var description: String { problems.map(\.description).joined(separator: "\n") }
    public init(problems: [MeshProblem]) { self.problems = problems }
}
