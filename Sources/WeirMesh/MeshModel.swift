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

/// An ingress gateway: Envoy at the edge of the mesh.
public struct VirtualGateway: Sendable, Hashable {
    public var ref: ResourceRef
    /// `spec.awsName`, defaulting to `<name>_<namespace>` as App Mesh's controller does.
    public var awsName: String
    public var meshName: String?
    public var listeners: [NodeListener]
    public var accessLogPath: String?
    public var location: SourceLocation
}

/// A route from a virtual gateway to a virtual service.
public struct GatewayRoute: Sendable, Hashable {
    public var ref: ResourceRef
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
    public init() {}

    mutating func append(_ other: MeshManifests) {
        meshes += other.meshes; virtualNodes += other.virtualNodes; virtualRouters += other.virtualRouters
        virtualServices += other.virtualServices; virtualGateways += other.virtualGateways; gatewayRoutes += other.gatewayRoutes
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
