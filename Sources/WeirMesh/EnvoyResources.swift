import EnvoyAPI
import Foundation
import SwiftProtobuf

/// The Envoy v3 type URLs weir serves, in make-before-break order: clusters before the endpoints they use,
/// listeners before the route configurations they name (Envoy warms them in that order).
public enum ResourceType: String, Sendable, Hashable, CaseIterable, Codable, Comparable {
    case cluster = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
    case endpoint = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
    case listener = "type.googleapis.com/envoy.config.listener.v3.Listener"
    case route = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"

    /// Order of pushes: CDS, EDS, LDS, RDS.
    public var order: Int {
        switch self {
        case .cluster: 0
        case .endpoint: 1
        case .listener: 2
        case .route: 3
        }
    }
    public static func < (a: ResourceType, b: ResourceType) -> Bool { a.order < b.order }
    /// Every type in push order (`allCases.sorted()`, made once: streams walk it on every push).
    public static let pushOrder = allCases.sorted()
    // By case, not by the long type URL (RawRepresentable's defaults would hash and compare the raw strings, and these
    // are dictionary keys on every push).
    public static func == (a: ResourceType, b: ResourceType) -> Bool { a.order == b.order }
    public func hash(into hasher: inout Hasher) { hasher.combine(order) }

    /// In state-of-the-world, LDS and CDS responses carry the full set: a missing resource is deleted.
    public var isFullState: Bool { self == .cluster || self == .listener }

    public var shortName: String {
        switch self {
        case .cluster: "CDS"
        case .endpoint: "EDS"
        case .listener: "LDS"
        case .route: "RDS"
        }
    }
}

/// The Envoy resources one node gets, as typed messages.
public struct EnvoyResources: Sendable, Equatable {
    public var listeners: [Envoy_Config_Listener_V3_Listener] = []
    public var routes: [Envoy_Config_Route_V3_RouteConfiguration] = []
    public var clusters: [Envoy_Config_Cluster_V3_Cluster] = []
    public var endpoints: [Envoy_Config_Endpoint_V3_ClusterLoadAssignment] = []
    /// Resources sent only to a client that asks for them by name (proxyless gRPC `api_listener`s and the
    /// LOGICAL_DNS clusters their routes use): a wildcard subscriber (an Envoy sidecar) does not get them.
    public var namedOnly: Set<String> = []
    /// For a route configuration that has nothing but its name and virtual hosts, by name: each virtual host
    /// serialized, in order. The compiler encodes a backend's hosts once for every node with that backend; the xDS
    /// memo composes the configuration's bytes from them (the same bytes as serializing it) and compares bytes,
    /// rather than comparing and serializing the messages per node. A cache of `routes`, not part of the value:
    /// whoever changes a route configuration after the compiler removes its entry. Within the package only.
    package var routeEncodings: [String: [[UInt8]]] = [:]
    /// Listeners, clusters and endpoints serialized, by name, where the compiler encoded them once for every node (or
    /// every reload) that has them: the xDS memo compares these bytes with what the node had rather than the messages.
    /// A cache of the messages like `routeEncodings`, with the same rule. Within the package only.
    package var encodings = Encodings()
    package struct Encodings: Sendable {
        package var listeners: [String: [UInt8]] = [:]
        package var clusters: [String: [UInt8]] = [:]
        package var endpoints: [String: [UInt8]] = [:]
        package init() {}
    }

    public init() {}

    /// Every field but `routeEncodings` and `encodings` (caches of the messages).
    public static func == (a: EnvoyResources, b: EnvoyResources) -> Bool {
        a.listeners == b.listeners && a.routes == b.routes && a.clusters == b.clusters && a.endpoints == b.endpoints
            && a.namedOnly == b.namedOnly
    }

    /// Each resource serialized once, by type and name.
    public func encoded() throws -> [ResourceType: [String: EncodedResource]] {
        var out: [ResourceType: [String: EncodedResource]] = [:]
        func add<M: SwiftProtobuf.Message>(_ type: ResourceType, _ name: String, _ m: M) throws {
            out[type, default: [:]][name] = EncodedResource(
                bytes: try m.serializedBytes(), namedOnly: namedOnly.contains(name))
        }
        for l in listeners { try add(.listener, l.name, l) }
        for r in routes { try add(.route, r.name, r) }
        for c in clusters { try add(.cluster, c.name, c) }
        for e in endpoints { try add(.endpoint, e.clusterName, e) }
        return out
    }

    /// Envoy's JSON shape (snake_case field names, `@type` in Any), one array per type; keys sorted.
    public func json() -> String {
        EnvoyTypes.register()
        var o = JSONEncodingOptions()
        o.preserveProtoFieldNames = true
        func arr<M: SwiftProtobuf.Message>(_ ms: [M]) -> [Any] {
            ms.map { m in
                // Every type weir emits is registered; a message that cannot print says why rather than print as {}.
                do {
                    return try JSONSerialization.jsonObject(with: Data(try m.jsonString(options: o).utf8))
                } catch {
                    return ["weir_cannot_print": "\(error)"]
                }
            }
        }
        let object: [String: Any] = [
            "listeners": arr(listeners), "routes": arr(routes), "clusters": arr(clusters), "endpoints": arr(endpoints),
        ]
        let data = try! JSONSerialization.data(
            withJSONObject: object, options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes])
        return String(decoding: data, as: UTF8.self) + "\n"
    }
}

/// One serialized resource: the bytes of the message (what goes in `Any.value`).
public struct EncodedResource: Sendable, Hashable, Codable {
    public var bytes: [UInt8]
    public var namedOnly: Bool
    public init(bytes: [UInt8], namedOnly: Bool = false) {
        self.bytes = bytes
        self.namedOnly = namedOnly
    }
}

/// Registers weir's Envoy message types so `Any` values print as JSON and parse from JSON.
public enum EnvoyTypes {
    nonisolated(unsafe) private static var done = false
    private static let lock = NSLock()
    public static let all: [any SwiftProtobuf.Message.Type] = [
        Envoy_Config_Listener_V3_Listener.self, Envoy_Config_Route_V3_RouteConfiguration.self,
        Envoy_Config_Cluster_V3_Cluster.self, Envoy_Config_Endpoint_V3_ClusterLoadAssignment.self,
        Envoy_Extensions_Filters_Network_HttpConnectionManager_V3_HttpConnectionManager.self,
        Envoy_Extensions_Filters_Network_TcpProxy_V3_TcpProxy.self,
        Envoy_Extensions_Filters_Http_Router_V3_Router.self,
        Envoy_Extensions_Filters_Listener_OriginalDst_V3_OriginalDst.self,
        Envoy_Extensions_AccessLoggers_File_V3_FileAccessLog.self,
        Envoy_Extensions_Upstreams_Http_V3_HttpProtocolOptions.self,
        Envoy_Extensions_TransportSockets_Tls_V3_DownstreamTlsContext.self,
        Envoy_Extensions_TransportSockets_Tls_V3_UpstreamTlsContext.self,
        Envoy_Extensions_TransportSockets_Tls_V3_Secret.self,
        Envoy_Extensions_Filters_Listener_TlsInspector_V3_TlsInspector.self,
    ]
    public static func register() {
        lock.lock()
        defer { lock.unlock() }
        guard !done else { return }
        for t in all { _ = Google_Protobuf_Any.register(messageType: t) }
        done = true
    }
}

func anyOf<M: SwiftProtobuf.Message>(_ m: M) -> Google_Protobuf_Any {
    // Serialized now, once: an Any built from a message re-serializes it every time the outer message is sized or
    // encoded, at every level of nesting. Encoding a proto3 message with no required fields cannot fail.
    var a = Google_Protobuf_Any()
    a.typeURL = "type.googleapis.com/" + M.protoMessageName
    a.value = try! m.serializedData()
    return a
}

func duration(milliseconds ms: Int) -> Google_Protobuf_Duration {
    Google_Protobuf_Duration(seconds: Int64(ms / 1000), nanos: Int32((ms % 1000) * 1_000_000))
}
