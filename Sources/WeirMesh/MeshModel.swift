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
    public init(file: String, line: Int, field: String) {
        self.file = file
        self.line = line
        self.field = field
    }
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
    /// `tls`: how the listener terminates TLS.
    public var tls: ListenerTLS?

    public init(
        portMapping: PortMapping, healthCheck: HealthCheck? = nil, perRequestTimeoutMilliseconds: Int? = nil,
        idleTimeoutMilliseconds: Int? = nil, outlierDetection: OutlierDetection? = nil,
        connectionPool: ConnectionPool? = nil,
        tls: ListenerTLS? = nil
    ) {
        self.portMapping = portMapping
        self.healthCheck = healthCheck
        self.perRequestTimeoutMilliseconds = perRequestTimeoutMilliseconds
        self.idleTimeoutMilliseconds = idleTimeoutMilliseconds
        self.outlierDetection = outlierDetection
        self.connectionPool = connectionPool
        self.tls = tls
    }
}

/// Where a certificate and its key come from.
public enum CertificateSource: Sendable, Hashable {
    /// `file`: PEM files on the Envoy's file system.
    case file(chain: String, privateKey: String)
    /// `sds`: a secret of this name from the SDS server.
    case sds(secretName: String)
}

/// Where the trusted certificate authorities come from.
public enum TrustSource: Sendable, Hashable {
    case file(chain: String)
    case sds(secretName: String)
}

/// `validation`: the peer's certificate must chain to `trust` and, when given, carry one of the names.
public struct TLSValidation: Sendable, Hashable {
    public var trust: TrustSource
    /// `subjectAlternativeNames.match.exact` (empty: not checked, except that a client checks the server's DNS name).
    public var subjectAlternativeNames: [String]
}

/// A listener's `tls`.
public struct ListenerTLS: Sendable, Hashable {
    public enum Mode: String, Sendable, Hashable {
        case strict = "STRICT"
        case permissive = "PERMISSIVE"
        case disabled = "DISABLED"
    }
    public var mode: Mode
    public var certificate: CertificateSource
    /// Given: a client certificate is required and validated (mutual TLS).
    public var validation: TLSValidation?
}

/// A client policy's `tls`: how a node or gateway originates TLS to its backends.
public struct ClientTLS: Sendable, Hashable {
    /// `enforce` (default true): false turns the policy off.
    public var enforce: Bool
    /// `ports` (empty: every port).
    public var ports: [UInt16]
    /// The client certificate, for mutual TLS.
    public var certificate: CertificateSource?
    public var validation: TLSValidation

    /// Whether the policy originates TLS to a backend port.
    public func applies(to port: UInt16) -> Bool { enforce && (ports.isEmpty || ports.contains(port)) }
}

/// `logging.accessLog.file`: where the access log goes and in what format.
public struct AccessLog: Sendable, Hashable {
    public enum Format: Sendable, Hashable {
        /// `format.text`: Envoy's text format, verbatim.
        case text(String)
        /// `format.json`: key and command-operator pairs, in order.
        case json([KeyValue])
    }
    public struct KeyValue: Sendable, Hashable {
        public var key: String
        public var value: String
    }
    public var path: String
    /// nil: Envoy's default format.
    public var format: Format?
}

/// A backend of a virtual node: the virtual service and, when given, its own client policy.
public struct Backend: Sendable, Hashable {
    public var service: ResourceRef
    /// `virtualServiceARN`, when the backend was named by ARN.
    public var arn: String?
    /// `virtualService.clientPolicy.tls` (nil: the node's `backendDefaults`).
    public var tls: ClientTLS?
    /// Where the reference is (`spec.backends[i].virtualService`).
    public var location: SourceLocation?
}

/// `serviceDiscovery.dns.responseType`: how callers resolve a virtual node's DNS name.
public enum DNSResponseType: String, Sendable, Hashable {
    /// Every address is an endpoint (STRICT_DNS).
    case endpoints = "ENDPOINTS"
    /// One address at a time, as behind a load balancer (LOGICAL_DNS).
    case loadBalancer = "LOADBALANCER"
}

/// `meshServiceDiscovery.ipPreference`.
public enum IPPreference: String, Sendable, Hashable {
    case ipv4Only = "IPv4_ONLY"
    case ipv6Only = "IPv6_ONLY"
}

public struct Mesh: Sendable, Hashable {
    public var name: String
    /// `spec.awsName` (default: the name): the mesh in node ids and ARNs.
    public var awsName: String
    /// `metadata.uid`, when given: what `meshRef.uid` must be.
    public var uid: String?
    /// `spec.meshOwner`: the account an ARN naming this mesh must carry.
    public var meshOwner: String?
    public var ipPreference: IPPreference?
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
    /// `meshRef.uid`.
    public var meshUID: String?
    /// Where `spec.meshRef.name` is, when the object names its mesh.
    public var meshRefAt: SourceLocation?
    public var listeners: [NodeListener]
    /// DNS hostname from `serviceDiscovery.dns.hostname`.
    public var hostname: String?
    /// `serviceDiscovery.dns.responseType` (nil: not given; a DNS name is then LOADBALANCER, App Mesh's default, and
    /// an IP address an EDS endpoint).
    public var responseType: DNSResponseType?
    public var backends: [Backend]
    /// `backendDefaults.clientPolicy.tls`.
    public var backendDefaults: ClientTLS?
    public var accessLog: AccessLog?
    /// `podSelector`: which pods are this node's (read and checked; the node agent will use it).
    public var podSelector: LabelSelector?
    public var location: SourceLocation

    /// The client policy for one backend: its own, else the node's defaults.
    public func clientTLS(for backend: Backend) -> ClientTLS? { backend.tls ?? backendDefaults }
}

public struct WeightedTarget: Sendable, Hashable {
    public var node: ResourceRef
    /// `virtualNodeARN`, when the target was named by ARN.
    public var arn: String?
    public var weight: Int
    public var port: UInt16?
    public var location: SourceLocation
}

/// How a header, path or query value is matched.
public enum StringMatch: Sendable, Hashable {
    case exact(String)
    case prefix(String)
    case suffix(String)
    case regex(String)
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
    /// `match.scheme`: http or https.
    public var scheme: String?
    /// `match.port`: the router listener the route belongs to (nil: every listener of its protocol).
    public var port: UInt16?
    /// Where `match.port` is.
    public var portAt: SourceLocation?
    public var retry: RetryPolicy?
    public var perRequestTimeoutMilliseconds: Int?
    public var idleTimeoutMilliseconds: Int?
    public var targets: [WeightedTarget]
    public var location: SourceLocation
}

public struct VirtualRouter: Sendable, Hashable {
    public var ref: ResourceRef
    /// `spec.awsName`, defaulting to `<name>_<namespace>`: the prefix of its routes' names.
    public var awsName: String
    public var meshName: String?
    public var meshUID: String?
    /// Where `spec.meshRef.name` is, when the object names its mesh.
    public var meshRefAt: SourceLocation?
    public var listeners: [PortMapping]
    public var routes: [RouteSpec]
    public var location: SourceLocation
}

extension VirtualRouter {
    /// The routes a router listener serves, in App Mesh's order (priority, then as written): those of its protocol,
    /// and of its port when a route names one.
    public func routes(for listener: PortMapping) -> [RouteSpec] {
        routes.enumerated()
            .filter {
                $0.element.kind == listener.protocol && ($0.element.port == nil || $0.element.port == listener.port)
            }
            .sorted { ($0.element.priority ?? 1001, $0.offset) < ($1.element.priority ?? 1001, $1.offset) }
            .map(\.element)
    }
}

public enum ServiceProvider: Sendable, Hashable {
    case virtualNode(ResourceRef)
    case virtualRouter(ResourceRef)
}

public struct VirtualService: Sendable, Hashable {
    public var ref: ResourceRef
    /// `spec.awsName`, defaulting to `<name>.<namespace>` as App Mesh's controller does.
    public var awsName: String
    public var meshName: String?
    public var meshUID: String?
    /// Where `spec.meshRef.name` is, when the object names its mesh.
    public var meshRefAt: SourceLocation?
    public var provider: ServiceProvider?
    /// `virtualNodeARN` / `virtualRouterARN`, when the provider was named by ARN.
    public var providerARN: String?
    /// Where the provider's reference is.
    public var providerAt: SourceLocation?
    public var location: SourceLocation
}

/// A Kubernetes label selector (`matchLabels` and `matchExpressions`; all of them must hold).
public struct LabelSelector: Sendable, Hashable {
    public enum Operator: String, Sendable, Hashable {
        case `in` = "In"
        case notIn = "NotIn"
        case exists = "Exists"
        case doesNotExist = "DoesNotExist"
    }
    public struct Requirement: Sendable, Hashable {
        public var key: String
        public var op: Operator
        public var values: [String]
    }
    public var matchLabels: [String: String] = [:]
    public var matchExpressions: [Requirement] = []
    public init(matchLabels: [String: String] = [:], matchExpressions: [Requirement] = []) {
        self.matchLabels = matchLabels
        self.matchExpressions = matchExpressions
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
    /// `metadata.uid`, when given: what a gateway route's `virtualGatewayRef.uid` must be.
    public var uid: String?
    public var meshName: String?
    public var meshUID: String?
    /// Where `spec.meshRef.name` is, when the object names its mesh.
    public var meshRefAt: SourceLocation?
    public var listeners: [NodeListener]
    public var accessLog: AccessLog?
    /// `backendDefaults.clientPolicy.tls`: how the gateway originates TLS to every target.
    public var backendDefaults: ClientTLS?
    /// `spec.namespaceSelector`: the namespaces whose gateway routes it takes. Absent selects none, empty all.
    public var namespaceSelector: LabelSelector?
    /// `spec.gatewayRouteSelector`: which gateway routes of those namespaces (absent or empty: all).
    public var gatewayRouteSelector: LabelSelector?
    /// `spec.podSelector`: which pods are this gateway's (read and checked; the node agent will use it).
    public var podSelector: LabelSelector?
    public var location: SourceLocation
}

/// A route from a virtual gateway to a virtual service.
public struct GatewayRoute: Sendable, Hashable {
    public var ref: ResourceRef
    /// `spec.awsName`, defaulting to `<name>_<namespace>`.
    public var awsName: String
    public var meshName: String?
    public var meshUID: String?
    /// Where `spec.meshRef.name` is, when the object names its mesh.
    public var meshRefAt: SourceLocation?
    /// `metadata.labels`, for a gateway's `gatewayRouteSelector`.
    public var labels: [String: String] = [:]
    /// `spec.virtualGatewayRef`: the gateway named outright, instead of chosen by the gateways' selectors.
    public var virtualGatewayRef: ResourceRef?
    /// `spec.virtualGatewayRef.uid`.
    public var virtualGatewayUID: String?
    /// Where `spec.virtualGatewayRef` is.
    public var virtualGatewayRefAt: SourceLocation?
    public var kind: PortProtocol
    public var priority: Int?
    public var prefix: String?
    /// `match.hostname`: exact or suffix.
    public var hostname: StringMatch?
    /// `match.path`: exact or regex.
    public var path: StringMatch?
    public var headers: [HeaderMatch] = []
    public var query: [QueryMatch] = []
    public var method: String?
    /// gRPC: `match.serviceName`.
    public var grpcService: String?
    /// `match.port`: the gateway listener the route belongs to (nil: every listener of its protocol).
    public var port: UInt16?
    public var portAt: SourceLocation?
    public var target: ResourceRef
    /// `virtualServiceARN`, when the target was named by ARN.
    public var targetARN: String?
    public var targetPort: UInt16?
    /// Where the target's reference and port are.
    public var targetAt: SourceLocation?
    public var targetPortAt: SourceLocation?
    /// `action.rewrite.hostname.defaultTargetHostname` (default ENABLED): the Host becomes the target service's name.
    public var rewriteHostname = true
    /// `action.rewrite.prefix`: what the matched prefix becomes.
    public var rewritePrefix: PrefixRewrite = .root
    /// `action.rewrite.path.exact`: the whole path becomes this.
    public var rewritePath: String?
    public var location: SourceLocation

    /// A gateway route's prefix rewrite.
    public enum PrefixRewrite: Sendable, Hashable {
        /// `defaultPrefix: ENABLED` (the default): the matched prefix becomes `/`.
        case root
        /// `defaultPrefix: DISABLED`: the path is kept.
        case none
        /// `value`: the matched prefix becomes this.
        case value(String)
    }
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
        meshes += other.meshes
        virtualNodes += other.virtualNodes
        virtualRouters += other.virtualRouters
        virtualServices += other.virtualServices
        virtualGateways += other.virtualGateways
        gatewayRoutes += other.gatewayRoutes
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
    public init(location: SourceLocation, message: String) {
        self.location = location
        self.message = message
    }
}

public struct MeshError: Error, Sendable, CustomStringConvertible {
    public var problems: [MeshProblem]
    public var description: String { problems.map(\.description).joined(separator: "\n") }
    public init(problems: [MeshProblem]) { self.problems = problems }
}
