import Foundation
import WeirMesh
import WeirNetns

/// Where Envoy reaches weir's ADS server: a Unix socket or loopback TCP.
public enum XDSAddress: Sendable, Hashable, CustomStringConvertible {
    case unix(path: String)
    case tcp(Endpoint)

    /// `unix:/run/weir/xds.sock` or `127.0.0.1:15010` / `[::1]:15010`; with `allowAbstract`, also `unix:@NAME` (an
    /// abstract socket, such as the daemon's endpoint inside a pod: where a client connects, not where weir listens).
    public static func parse(_ text: String, allowAbstract: Bool = false) -> XDSAddress? {
        if text.hasPrefix("unix:") {
            let path = String(text.dropFirst(5))
            let abstract = allowAbstract && path.hasPrefix("@") && path.utf8.count > 1
            return (path.hasPrefix("/") || abstract) && path.utf8.count < 108 ? .unix(path: path) : nil
        }
        return Endpoint.parse(text).map(XDSAddress.tcp)
    }

    public var description: String {
        switch self {
        case .unix(let path): return "unix:\(path)"
        case .tcp(let e): return e.description
        }
    }
}

/// An Envoy bootstrap that takes all its configuration from weir over ADS (gRPC, state of the world or delta).
public struct EnvoyBootstrap: Sendable {
    public var nodeID: String
    public var xds: XDSAddress
    public var delta: Bool
    public var adminPort: UInt16
    /// The cluster Envoy's stats and `node.cluster` use: the virtual node's name.
    public var cluster: String

    public init(nodeID: String, xds: XDSAddress, delta: Bool = false, adminPort: UInt16 = 9901) throws(NodeIdentity
        .ParseError)
    {
        self.nodeID = nodeID
        self.xds = xds
        self.delta = delta
        self.adminPort = adminPort
        switch try NodeIdentity.parse(nodeID) {
        case .appMesh(_, let awsName), .appMeshGateway(_, let awsName): cluster = awsName
        case .kubernetes(let ref): cluster = ref.name
        }
    }

    static let xdsCluster = "weir_xds"

    /// The bootstrap as a JSON object (Envoy reads JSON as YAML).
    public var object: [String: Any] {
        let address: [String: Any]
        switch xds {
        case .unix(let path): address = ["pipe": ["path": path]]
        case .tcp(let e): address = ["socket_address": ["address": e.host, "port_value": Int(e.port)]]
        }
        let ads: [String: Any] = ["ads": [String: Any](), "resource_api_version": "V3"]
        return [
            "node": ["id": nodeID, "cluster": cluster],
            "admin": ["address": ["socket_address": ["address": "127.0.0.1", "port_value": Int(adminPort)]]],
            "dynamic_resources": [
                "ads_config": [
                    "api_type": delta ? "DELTA_GRPC" : "GRPC",
                    "transport_api_version": "V3",
                    "set_node_on_first_message_only": true,
                    "grpc_services": [["envoy_grpc": ["cluster_name": Self.xdsCluster]]],
                ],
                "cds_config": ads,
                "lds_config": ads,
            ],
            "static_resources": [
                "clusters": [
                    [
                        "name": Self.xdsCluster,
                        "type": "STATIC",
                        "connect_timeout": "1s",
                        "typed_extension_protocol_options": [
                            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": [
                                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                                "explicit_http_config": ["http2_protocol_options": [String: Any]()],
                            ]
                        ],
                        "load_assignment": [
                            "cluster_name": Self.xdsCluster,
                            "endpoints": [["lb_endpoints": [["endpoint": ["address": address]]]]],
                        ],
                    ]
                ]
            ],
        ]
    }

    public func json() -> String {
        let data = try! JSONSerialization.data(
            withJSONObject: object, options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes])
        return String(decoding: data, as: UTF8.self) + "\n"
    }
}
