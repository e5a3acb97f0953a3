import Foundation
import Testing
@testable import WeirMesh

/// A manifest value the walk edits, and writes back as JSON (which is YAML).
indirect enum Val: Equatable, CustomStringConvertible {
    case s(String)
    case i(Int)
    case b(Bool)
    case m([(String, Val)])
    case l([Val])

    static func == (a: Val, b: Val) -> Bool { a.description == b.description }

    init(_ node: YAMLNode) {
        switch node.value {
        case .scalar(let s):
            switch s.resolved {
            case .int(let v): self = .i(Int(v))
            case .bool(let v): self = .b(v)
            default: self = .s(s.text)
            }
        case .sequence(let items): self = .l(items.map(Val.init))
        case .mapping(let pairs): self = .m(pairs.map { ($0.key.text ?? "", Val($0.value)) })
        }
    }

    subscript(key: String) -> Val? {
        get { if case .m(let pairs) = self { return pairs.first { $0.0 == key }?.1 } else { return nil } }
        set {
            guard case .m(var pairs) = self else { return }
            if let i = pairs.firstIndex(where: { $0.0 == key }) {
                if let newValue { pairs[i].1 = newValue } else { pairs.remove(at: i) }
            } else if let newValue {
                pairs.append((key, newValue))
            }
            self = .m(pairs)
        }
    }

    var description: String {
        switch self {
        case .s(let s):
            var out = ""
            YAMLNode.quote(s, into: &out)
            return out
        case .i(let v): return String(v)
        case .b(let v): return v ? "true" : "false"
        case .l(let items): return "[" + items.map(\.description).joined(separator: ", ") + "]"
        case .m(let pairs):
            // A key per line, so that the reader's line numbers mean something.
            return "{\n" + pairs.map { "\(Val.s($0.0)): \($0.1)" }.joined(separator: ",\n") + "\n}"
        }
    }
}

/// Values that give the same Envoy config on purpose, with why.
let sameOnPurpose: [(suffix: String, values: Set<String>, why: String)] = [
    (
        "portMapping.protocol", ["grpc", "http2"],
        "gRPC is HTTP/2 to Envoy: both get HTTP/2 filter chains and clusters; the protocol decides which routes (grpcRoute, http2Route) and health checks apply"
    )
]

/// A mesh in which every field of every kind has something to change: two meshes, a client calling a service of each
/// provider kind (a node; routers for http, http2, grpc and tcp), and a gateway with a route of each kind.
let walkMesh = """
    apiVersion: v1
    kind: Namespace
    metadata: {name: shop, labels: {mesh: shop}}
    ---
    apiVersion: v1
    kind: Namespace
    metadata: {name: lab, labels: {mesh: lab}}
    ---
    apiVersion: appmesh.k8s.aws/v1beta2
    kind: Mesh
    metadata: {name: shop, uid: shop-uid}
    spec: {namespaceSelector: {matchLabels: {mesh: shop}}}
    ---
    apiVersion: appmesh.k8s.aws/v1beta2
    kind: Mesh
    metadata: {name: lab, uid: lab-uid}
    spec: {namespaceSelector: {matchLabels: {mesh: lab}}, egressFilter: {type: ALLOW_ALL}}
    ---
    apiVersion: appmesh.k8s.aws/v1beta2
    kind: VirtualNode
    metadata: {name: client, namespace: shop}
    spec:
      listeners: [{portMapping: {port: 8080, protocol: http}}]
      serviceDiscovery: {dns: {hostname: client.shop.svc.cluster.local}}
      backends:
        - virtualService: {virtualServiceRef: {name: svc-web}}
        - virtualService: {virtualServiceRef: {name: svc-h2}}
        - virtualService: {virtualServiceRef: {name: svc-grpc}}
        - virtualService: {virtualServiceRef: {name: svc-tcp}}
    ---
    apiVersion: appmesh.k8s.aws/v1beta2
    kind: VirtualNode
    metadata: {name: loner, namespace: shop}
    spec:
      listeners: [{portMapping: {port: 8080, protocol: http}}]
    ---
    apiVersion: appmesh.k8s.aws/v1beta2
    kind: VirtualNode
    metadata: {name: web-v1, namespace: shop}
    spec:
      listeners: [{portMapping: {port: 9080, protocol: http}}]
      serviceDiscovery: {dns: {hostname: web-v1.shop.svc.cluster.local}}
    ---
    apiVersion: appmesh.k8s.aws/v1beta2
    kind: VirtualNode
    metadata: {name: web-v2, namespace: shop}
    spec:
      listeners: [{portMapping: {port: 9080, protocol: http}}]
      serviceDiscovery: {dns: {hostname: 10.0.0.2}}
    ---
    apiVersion: appmesh.k8s.aws/v1beta2
    kind: VirtualNode
    metadata: {name: h2, namespace: shop}
    spec:
      listeners: [{portMapping: {port: 9090, protocol: http2}}]
      serviceDiscovery: {dns: {hostname: h2.shop.svc.cluster.local}}
    ---
    apiVersion: appmesh.k8s.aws/v1beta2
    kind: VirtualNode
    metadata: {name: h2-b, namespace: shop}
    spec:
      listeners: [{portMapping: {port: 9090, protocol: http2}}]
      serviceDiscovery: {dns: {hostname: h2-b.shop.svc.cluster.local}}
    ---
    apiVersion: appmesh.k8s.aws/v1beta2
    kind: VirtualNode
    metadata: {name: grpc, namespace: shop}
    spec:
      listeners: [{portMapping: {port: 7070, protocol: grpc}}]
      serviceDiscovery: {dns: {hostname: grpc.shop.svc.cluster.local}}
    ---
    apiVersion: appmesh.k8s.aws/v1beta2
    kind: VirtualNode
    metadata: {name: grpc-b, namespace: shop}
    spec:
      listeners: [{portMapping: {port: 7070, protocol: grpc}}]
      serviceDiscovery: {dns: {hostname: grpc-b.shop.svc.cluster.local}}
    ---
    apiVersion: appmesh.k8s.aws/v1beta2
    kind: VirtualNode
    metadata: {name: tcp, namespace: shop}
    spec:
      listeners: [{portMapping: {port: 5432, protocol: tcp}}]
      serviceDiscovery: {dns: {hostname: tcp.shop.svc.cluster.local}}
    ---
    apiVersion: appmesh.k8s.aws/v1beta2
    kind: VirtualNode
    metadata: {name: tcp-b, namespace: shop}
    spec:
      listeners: [{portMapping: {port: 5432, protocol: tcp}}]
      serviceDiscovery: {dns: {hostname: tcp-b.shop.svc.cluster.local}}
    ---
    apiVersion: appmesh.k8s.aws/v1beta2
    kind: VirtualNode
    metadata: {name: lab-node, namespace: lab}
    spec:
      listeners: [{portMapping: {port: 8080, protocol: http}}]
      serviceDiscovery: {dns: {hostname: lab-node.lab.svc.cluster.local}}
    ---
    apiVersion: appmesh.k8s.aws/v1beta2
    kind: VirtualRouter
    metadata: {name: web, namespace: shop}
    spec:
      listeners: [{portMapping: {port: 9080, protocol: http}}]
      routes:
        - name: a
          priority: 10
          httpRoute:
            match: {prefix: /a}
            action: {weightedTargets: [{virtualNodeRef: {name: web-v1}, weight: 50}, {virtualNodeRef: {name: web-v2}, weight: 50}]}
        - name: b
          priority: 20
          httpRoute:
            match: {prefix: /}
            action: {weightedTargets: [{virtualNodeRef: {name: web-v2}, weight: 1}]}
    ---
    apiVersion: appmesh.k8s.aws/v1beta2
    kind: VirtualRouter
    metadata: {name: h2, namespace: shop}
    spec:
      listeners: [{portMapping: {port: 9090, protocol: http2}}]
      routes:
        - name: a
          http2Route:
            match: {prefix: /}
            action: {weightedTargets: [{virtualNodeRef: {name: h2}, weight: 1}, {virtualNodeRef: {name: h2-b}, weight: 1}]}
    ---
    apiVersion: appmesh.k8s.aws/v1beta2
    kind: VirtualRouter
    metadata: {name: grpc, namespace: shop}
    spec:
      listeners: [{portMapping: {port: 7070, protocol: grpc}}]
      routes:
        - name: a
          grpcRoute:
            match: {serviceName: walk.Svc}
            action: {weightedTargets: [{virtualNodeRef: {name: grpc}, weight: 1}, {virtualNodeRef: {name: grpc-b}, weight: 1}]}
    ---
    apiVersion: appmesh.k8s.aws/v1beta2
    kind: VirtualRouter
    metadata: {name: tcp, namespace: shop}
    spec:
      listeners: [{portMapping: {port: 5432, protocol: tcp}}]
      routes:
        - name: a
          tcpRoute:
            action: {weightedTargets: [{virtualNodeRef: {name: tcp}, weight: 1}, {virtualNodeRef: {name: tcp-b}, weight: 1}]}
    ---
    apiVersion: appmesh.k8s.aws/v1beta2
    kind: VirtualService
    metadata: {name: svc-web, namespace: shop}
    spec: {provider: {virtualRouter: {virtualRouterRef: {name: web}}}}
    ---
    apiVersion: appmesh.k8s.aws/v1beta2
    kind: VirtualService
    metadata: {name: svc-h2, namespace: shop}
    spec: {provider: {virtualRouter: {virtualRouterRef: {name: h2}}}}
    ---
    apiVersion: appmesh.k8s.aws/v1beta2
    kind: VirtualService
    metadata: {name: svc-grpc, namespace: shop}
    spec: {provider: {virtualRouter: {virtualRouterRef: {name: grpc}}}}
    ---
    apiVersion: appmesh.k8s.aws/v1beta2
    kind: VirtualService
    metadata: {name: svc-tcp, namespace: shop}
    spec: {provider: {virtualRouter: {virtualRouterRef: {name: tcp}}}}
    ---
    apiVersion: appmesh.k8s.aws/v1beta2
    kind: VirtualService
    metadata: {name: svc-direct, namespace: shop}
    spec: {provider: {virtualNode: {virtualNodeRef: {name: web-v1}}}}
    ---
    apiVersion: appmesh.k8s.aws/v1beta2
    kind: VirtualGateway
    metadata: {name: gw, namespace: shop, uid: gw-uid}
    spec:
      namespaceSelector: {matchLabels: {mesh: shop}}
      listeners:
        - portMapping: {port: 8088, protocol: http}
        - portMapping: {port: 8087, protocol: http}
        - portMapping: {port: 8089, protocol: http2}
        - portMapping: {port: 8090, protocol: grpc}
    ---
    apiVersion: appmesh.k8s.aws/v1beta2
    kind: GatewayRoute
    metadata: {name: gr-http, namespace: shop}
    spec:
      httpRoute:
        match: {prefix: /shop}
        action: {target: {virtualService: {virtualServiceRef: {name: svc-web}}}}
    ---
    apiVersion: appmesh.k8s.aws/v1beta2
    kind: GatewayRoute
    metadata: {name: gr-h2, namespace: shop}
    spec:
      http2Route:
        match: {prefix: /h2}
        action: {target: {virtualService: {virtualServiceRef: {name: svc-h2}}}}
    ---
    apiVersion: appmesh.k8s.aws/v1beta2
    kind: GatewayRoute
    metadata: {name: gr-other, namespace: shop}
    spec:
      priority: 10
      httpRoute:
        match: {prefix: /other}
        action: {target: {virtualService: {virtualServiceRef: {name: svc-direct}}}}
    ---
    apiVersion: appmesh.k8s.aws/v1beta2
    kind: GatewayRoute
    metadata: {name: gr-grpc, namespace: shop}
    spec:
      grpcRoute:
        match: {serviceName: walk.Svc}
        action: {target: {virtualService: {virtualServiceRef: {name: svc-grpc}}}}
    """

/// For every leaf field of every kind's v1beta2 schema: a manifest that sets it, compiled against one that sets it
/// otherwise (another value; every value, for an enum), must give other Envoy resources, or be refused with a
/// message naming the field. Fields weir refuses must be refused by name; meta fields are the short list's.
@Suite("App Mesh schema walk: every field changes Envoy's config or is refused by name")
struct SchemaWalkTests {
    struct Doc {
        var kind: String
        var name: String
        var namespace: String
        var value: Val
    }

    static let docs: [Doc] = {
        var limits = YAMLLimits()
        limits.maxDepth = 64
        return (try! YAMLNode.documents(walkMesh, limits: limits)).map { node in
            let v = Val(node)
            return Doc(
                kind: v["kind"]!.description.trimmingCharacters(in: ["\""]),
                name: v["metadata"]!["name"]!.description.trimmingCharacters(in: ["\""]),
                namespace: (v["metadata"]!["namespace"]?.description ?? "\"\"").trimmingCharacters(in: ["\""]), value: v
            )
        }
    }()

    /// The object whose field a leaf sets: one where the field's effect can show.
    static func subject(_ kind: String, _ path: String) -> String {
        func under(_ p: String) -> Bool { path.hasPrefix(p) }
        switch kind {
        case "Mesh": return "shop"
        case "VirtualNode":
            if under("spec.meshRef") { return "loner" }
            if under("spec.backends") || under("spec.backendDefaults") { return "client" }
            for (proto, node) in [("grpc", "grpc"), ("http2", "h2"), ("tcp", "tcp")]
            where under("spec.listeners[].timeout.\(proto)") || under("spec.listeners[].connectionPool.\(proto)") {
                return node
            }
            return "web-v1"
        case "VirtualService": return under("spec.provider.virtualNode") ? "svc-direct" : "svc-web"
        case "VirtualRouter":
            if under("spec.routes[].grpcRoute") { return "grpc" }
            if under("spec.routes[].http2Route") { return "h2" }
            if under("spec.routes[].tcpRoute") { return "tcp" }
            return "web"
        case "VirtualGateway": return "gw"
        default:
            if under("spec.grpcRoute") { return "gr-grpc" }
            if under("spec.http2Route") { return "gr-h2" }
            return "gr-http"
        }
    }

    /// Sibling fields of which a manifest gives one: setting one drops the others.
    static let exclusive: [Set<String>] = [
        ["virtualServiceRef", "virtualServiceARN"], ["virtualNodeRef", "virtualNodeARN"],
        ["virtualRouterRef", "virtualRouterARN"],
        ["file", "sds", "acm"], ["exact", "prefix", "suffix", "regex", "range"], ["prefix", "path"],
        ["httpRoute", "http2Route", "grpcRoute", "tcpRoute"], ["virtualNode", "virtualRouter"], ["text", "json"],
        ["dns", "awsCloudMap"],
    ]

    /// Values for a leaf, by the end of its path, where a generic value would not do; two or more, compiled against
    /// each other.
    static let hints: [String: [Val]] = [
        "awsName": [.s("walk-a"), .s("walk-b")],
        "meshRef.name": [.s("shop"), .s("lab")],
        "virtualServiceRef.name": [.s("svc-web"), .s("svc-direct")],
        "virtualServiceRef.namespace": [.s("shop"), .s("lab")],
        "virtualNodeRef.name": [.s("web-v1"), .s("web-v2")],
        "virtualNodeRef.namespace": [.s("shop"), .s("lab")],
        "virtualRouterRef.name": [.s("web"), .s("h2")],
        "virtualRouterRef.namespace": [.s("shop"), .s("lab")],
        "virtualServiceARN": [
            .s("arn:aws:appmesh:us-west-2:111122223333:mesh/shop/virtualService/svc-web.shop"),
            .s("arn:aws:appmesh:us-west-2:111122223333:mesh/shop/virtualService/svc-direct.shop"),
        ],
        "virtualNodeARN": [
            .s("arn:aws:appmesh:us-west-2:111122223333:mesh/shop/virtualNode/web-v1_shop"),
            .s("arn:aws:appmesh:us-west-2:111122223333:mesh/shop/virtualNode/web-v2_shop"),
        ],
        "virtualRouterARN": [
            .s("arn:aws:appmesh:us-west-2:111122223333:mesh/shop/virtualRouter/web_shop"),
            .s("arn:aws:appmesh:us-west-2:111122223333:mesh/shop/virtualRouter/h2_shop"),
        ],
        "certificateChain": [.s("/certs/a.pem"), .s("/certs/b.pem")],
        "privateKey": [.s("/certs/a-key.pem"), .s("/certs/b-key.pem")],
        "secretName": [.s("spiffe://walk/a"), .s("spiffe://walk/b")],
        "exact[]": [.l([.s("spiffe://walk/a")]), .l([.s("b.shop.svc.cluster.local")])],
        "ports[]": [.l([.i(9080)]), .l([.i(9090)])],
        "hostname": [.s("a.shop.svc.cluster.local"), .s("b.shop.svc.cluster.local")],
        "dns.hostname": [.s("a.shop.svc.cluster.local"), .s("10.0.0.9")],
        "port": [.i(9080), .i(9081)],
        "portMapping.port": [.i(9080), .i(9081)],
        "path": [.s("/a"), .s("/b")],
        "prefix": [.s("/a/"), .s("/b/")],
        "value": [.s("/a/"), .s("/b/")],
        "text": [.s("%START_TIME% a\n"), .s("%START_TIME% b\n")],
        "json[].key": [.s("a"), .s("b")],
        "json[].value": [.s("%START_TIME%"), .s("%DURATION%")],
        "name": [.s("x-a"), .s("x-b")],
        "routes[].name": [.s("walk-a"), .s("walk-b")],
        "serviceName": [.s("walk.A"), .s("walk.B")],
        "methodName": [.s("A"), .s("B")],
        "regex": [.s("/a.*"), .s("/b.*")],
        "weight": [.i(40), .i(60)],
        "priority": [.i(5), .i(30)],
        "maxRetries": [.i(1), .i(2)],
        "healthyThreshold": [.i(2), .i(3)],
        "unhealthyThreshold": [.i(2), .i(3)],
        "intervalMillis": [.i(5000), .i(6000)],
        "timeoutMillis": [.i(2000), .i(3000)],
        "healthCheck.port": [.i(9080), .i(9081)],
        "maxEjectionPercent": [.i(10), .i(20)],
        "maxServerErrors": [.i(1), .i(2)],
        "start": [.i(1), .i(2)],
        "end": [.i(10), .i(20)],
        "queryParameters[].name": [.s("qa"), .s("qb")],
        "match.exact": [.s("va"), .s("vb")],
        "hostname.exact": [.s("a.example.com"), .s("b.example.com")],
        "hostname.suffix": [.s(".a.example.com"), .s(".b.example.com")],
        "path.exact": [.s("/a"), .s("/b")],
        "path.regex": [.s("/a.*"), .s("/b.*")],
        "routes[].httpRoute.match.port": [.i(9080), .i(9081)],
        "routes[].http2Route.match.port": [.i(9090), .i(9091)],
        "routes[].grpcRoute.match.port": [.i(7070), .i(7071)],
        "routes[].tcpRoute.match.port": [.i(5432), .i(5433)],
        "spec.httpRoute.match.port": [.i(8088), .i(8087)],
        "spec.http2Route.match.port": [.i(8089), .i(8099)],
        "spec.grpcRoute.match.port": [.i(8090), .i(8099)],
        "spec.httpRoute.action.target.port": [.i(9080), .i(9081)],
        "spec.http2Route.action.target.port": [.i(9090), .i(9091)],
        "spec.grpcRoute.action.target.port": [.i(7070), .i(7071)],
        "virtualGatewayRef.name": [.s("gw"), .s("nope")],
        "virtualGatewayRef.namespace": [.s("shop"), .s("lab")],
    ]

    /// Required fields a created object needs, by the end of their path, where the generic value would not do.
    static let fills: [String: Val] = [
        "healthCheck": .m([
            ("protocol", .s("http")), ("path", .s("/health")), ("healthyThreshold", .i(2)),
            ("unhealthyThreshold", .i(2)),
            ("intervalMillis", .i(5000)), ("timeoutMillis", .i(2000)),
        ]),
        "json[].key": .s("start"), "json[].value": .s("%START_TIME%"),
        "retryPolicy": .m([
            ("maxRetries", .i(1)), ("perRetryTimeout", .m([("unit", .s("s")), ("value", .i(1))])),
            ("httpRetryEvents", .l([.s("server-error")])),
        ]),
        "tcpRoute.match": .m([]),
        "grpcRoute.match": .m([("serviceName", .s("walk.Svc"))]),
        "virtualGatewayRef.name": .s("gw"),
        "portMapping": .m([("port", .i(9081)), ("protocol", .s("http"))]),
        "healthCheck.protocol": .s("http"),
        "unit": .s("s"), "value": .i(5),
        "trust": .m([("file", .m([("certificateChain", .s("/certs/ca.pem"))]))]),
        "certificate": .m([
            ("file", .m([("certificateChain", .s("/certs/c.pem")), ("privateKey", .s("/certs/c-key.pem"))]))
        ]),
        "mode": .s("STRICT"),
        "weightedTargets": .l([.m([("virtualNodeRef", .m([("name", .s("web-v1"))])), ("weight", .i(1))])]),
        "virtualService": .m([("virtualServiceRef", .m([("name", .s("svc-direct"))]))]),
        "action": .m([("target", .m([("virtualService", .m([("virtualServiceRef", .m([("name", .s("svc-web"))]))]))]))]
        ),
        "match": .m([("prefix", .s("/"))]),
        "match.exact[]": .l([.s("spiffe://walk/a")]),
        "maxRetries": .i(1),
        "perRetryTimeout": .m([("unit", .s("s")), ("value", .i(1))]),
        "name": .s("x-walk"),
        "key": .s("walk"), "operator": .s("Exists"),
        "namespaceName": .s("walk"), "serviceName": .s("walk"),
        "hostname": .s("walk.shop.svc.cluster.local"),
        "secretName": .s("spiffe://walk/fill"),
        "certificateChain": .s("/certs/fill.pem"), "privateKey": .s("/certs/fill-key.pem"),
        "path": .s("/walk"),
    ]

    /// Parent objects given whole for leaves whose valid values depend on their siblings.
    static let parents: [String: [Val]] = [
        "healthCheck.protocol": ["grpc", "http", "http2", "tcp"].map { p in
            .m(
                [
                    ("protocol", .s(p)), ("healthyThreshold", .i(2)), ("unhealthyThreshold", .i(2)),
                    ("intervalMillis", .i(5000)), ("timeoutMillis", .i(2000)),
                ]
                    + (p == "http" || p == "http2" ? [("path", .s("/health"))] : []))
        }
    ]

    static func lookup<T>(_ table: [String: T], _ path: String) -> T? {
        // The longest suffix of the path (by dotted components) that the table knows.
        let parts = path.split(separator: ".").map(String.init)
        for n in stride(from: parts.count, through: 1, by: -1) {
            if let v = table[parts.suffix(n).joined(separator: ".")] { return v }
        }
        return nil
    }

    /// A value for a required field of a created object.
    static func fill(_ type: SchemaType, _ path: String) -> Val {
        if let v = lookup(fills, path) { return v }
        switch type {
        case .string(let values, _, _): return .s(values?.first ?? "walk")
        case .integer(let minimum, _): return .i(Int(max(minimum ?? 1, 1)))
        case .boolean: return .b(true)
        case .stringMap: return .m([("walk", .s("yes"))])
        case .any: return .m([])
        case .array(let items, _, _): return .l([fill(items, path + "[]")])
        case .object(let fields):
            return .m(fields.filter(\.required).map { ($0.name, fill($0.type, "\(path).\($0.name)")) })
        }
    }

    /// The values a leaf is compiled with (a list of one, for a list of scalars).
    static func choices(_ leaf: SchemaLeaf) -> [Val] {
        if let v = lookup(hints, leaf.path) { return v }
        if leaf.path.hasSuffix("[]") { return scalarChoices(leaf).map { .l([$0]) } }
        return scalarChoices(leaf)
    }

    static func scalarChoices(_ leaf: SchemaLeaf) -> [Val] {
        switch leaf.type {
        case .string(let values?, _, _): return values.map(Val.s)
        case .string: return [.s("walk-a"), .s("walk-b")]
        case .integer(let minimum, _):
            let lo = Int(max(minimum ?? 1, 1))
            return [.i(lo), .i(lo + 1)]
        case .boolean: return [.b(true), .b(false)]
        case .stringMap: return [.m([("walk", .s("a"))]), .m([("walk", .s("b"))])]
        default: return []
        }
    }

    /// `doc` with the leaf at `path` (in the schema `type`) set to `value`; containers created as needed, with their
    /// required fields.
    static func put(
        _ value: Val?, at segments: ArraySlice<String>, in v: Val, type: SchemaType, path: String, parentVariant: Val?
    ) -> Val {
        guard let name = segments.first, case .object(let fields) = type,
            let f = fields.first(where: { $0.name == name.replacingOccurrences(of: "[]", with: "") })
        else {
            return value ?? v
        }
        var object = v
        if case .m = object {} else { object = .m([]) }
        let key = f.name
        for group in exclusive where group.contains(key) {
            for other in group where other != key { object[other] = nil }
        }
        let here = "\(path).\(key)"
        if segments.count == 2, let parentVariant, case .object = f.type {
            object[key] = parentVariant
            return object
        }
        var childType = f.type
        var child = object[key] ?? fill(f.type, here)
        if segments.count == 1 {
            object[key] = value
            return object
        }
        if case .array(let items, _, _) = childType {
            childType = items
            var list: [Val] = []
            if case .l(let existing) = child { list = existing }
            if list.isEmpty { list = [fill(items, here + "[]")] }
            list[0] = put(
                value, at: segments.dropFirst(), in: list[0], type: childType, path: here + "[]",
                parentVariant: parentVariant)
            child = .l(list)
        } else {
            child = put(
                value, at: segments.dropFirst(), in: child, type: childType, path: here, parentVariant: parentVariant)
        }
        object[key] = child
        return object
    }

    /// Every node's resources, as JSON by node id; or the problems.
    static func compile(_ docs: [Doc]) -> Result<[String: String], MeshError> {
        let text = docs.map(\.value.description).joined(separator: "\n---\n")
        do {
            let m = try ManifestReader.read([("walk.yaml", text)])
            let compiler = MeshCompiler(m)
            var out: [String: String] = [:]
            for id in compiler.nodeIDs { out[id] = try compiler.compile(nodeID: id).json() }
            return .success(out)
        } catch let e as MeshError {
            return .failure(e)
        } catch {
            return .failure(
                MeshError(problems: [
                    MeshProblem(location: SourceLocation(file: "?", line: 0, field: "?"), message: "\(error)")
                ]))
        }
    }

    /// The leaf's path with `[0]` for each list.
    static func concrete(_ path: String) -> String { path.replacingOccurrences(of: "[]", with: "[0]") }

    /// Whether a problem names the leaf: the leaf itself or a field under it, the object or reference it is a part
    /// of (at most two levels up), or any object above it that weir refuses as a whole.
    static func namesField(_ e: MeshError, _ path: String) -> Bool {
        let target = concrete(path)
        let depth = target.split(separator: ".").count
        return e.problems.contains { p in
            let field = p.location.field
            guard field.hasPrefix("spec.") else { return false }
            if field == target || field.hasPrefix(target + ".") || field.hasPrefix(target + "[") { return true }
            guard target.hasPrefix(field + ".") || target.hasPrefix(field + "[") else { return false }
            return depth - field.split(separator: ".").count <= 2 || p.message.contains("weir does not honour")
        }
    }

    static func isRequired(_ path: String, in type: SchemaType) -> Bool {
        let parts = path.split(separator: ".").dropFirst().map {
            Substring($0.replacingOccurrences(of: "[]", with: ""))
        }
        return type.field(at: parts)?.required ?? false
    }

    @Test("the fixture mesh is valid and compiles")
    func fixture() throws {
        guard case .success(let out) = Self.compile(Self.docs) else {
            if case .failure(let e) = Self.compile(Self.docs) { Issue.record("fixture refused: \(e)") }
            return
        }
        #expect(out.count >= 8)
    }

    @Test("every leaf of the kind's spec", arguments: AppMeshSchema.kinds)
    func walk(_ kind: String) throws {
        guard case .success(let base) = Self.compile(Self.docs), let spec = AppMeshSchema.spec(kind) else {
            Issue.record("the fixture does not compile")
            return
        }
        var failures: [String] = []
        for leaf in AppMeshSchema.specLeaves(kind) {
            if case .meta = leaf.use { continue }
            let subject = Self.subject(kind, leaf.path)
            guard let index = Self.docs.firstIndex(where: { $0.kind == kind && $0.name == subject }) else {
                failures.append("\(leaf.path): no subject \(subject)")
                continue
            }
            let segments = leaf.path.split(separator: ".").dropFirst().map(String.init)
            let parents = Self.lookup(Self.parents, leaf.path)
            let values = Self.choices(leaf)
            var variants: [(Val?, Val?)] =
                parents.map { ps in ps.map { (values.first ?? .s(""), $0) } } ?? values.map { ($0, nil) }
            // One value only (an enum of one): compare it with the field left out.
            if variants.count == 1 && !Self.isRequired(leaf.path, in: spec) { variants.append((nil, nil)) }
            guard variants.count >= 2 else {
                failures.append("\(leaf.path): fewer than two values to compare")
                continue
            }
            var outputs: [String] = []
            var refusedByName = false
            var wrongRefusal: String?
            for (value, parent) in variants {
                var docs = Self.docs
                let spec0 = docs[index].value["spec"] ?? .m([])
                docs[index].value["spec"] = Self.put(
                    value, at: segments[...], in: spec0, type: spec, path: "spec", parentVariant: parent)
                switch Self.compile(docs) {
                case .success(let out):
                    outputs.append(
                        out.sorted { $0.key < $1.key }.map { "\($0.key)\n\($0.value)" }.joined(separator: "\n"))
                case .failure(let e):
                    if Self.namesField(e, leaf.path) {
                        refusedByName = true
                    } else {
                        wrongRefusal = "\(value.map(\.description) ?? "(left out)"): \(e)"
                    }
                }
            }
            switch leaf.use {
            case .refused:
                if !refusedByName {
                    failures.append(
                        "\(leaf.path): weir refuses it, but a manifest setting it was not refused by name (\(wrongRefusal ?? "accepted"))"
                    )
                }
            default:
                if let wrongRefusal {
                    failures.append("\(leaf.path): refused without naming the field: \(wrongRefusal)")
                    continue
                }
                if refusedByName { continue }
                // Pairs of values with the same resources, unless sameOnPurpose says why.
                let names = variants.map { $0.0.map { $0.description.trimmingCharacters(in: ["\""]) } ?? "(left out)" }
                let equivalent = sameOnPurpose.first { leaf.path.hasSuffix($0.suffix) }?.values ?? []
                var same = false
                for i in outputs.indices {
                    for j in outputs.indices where i < j && outputs[i] == outputs[j] {
                        if !(equivalent.contains(names[i]) && equivalent.contains(names[j])) { same = true }
                    }
                }
                if same {
                    failures.append(
                        "\(leaf.path): two values (of \(variants.map { "\($0.1 ?? $0.0)" })) give the same Envoy resources"
                    )
                }
            }
        }
        _ = base
        #expect(failures.isEmpty, "\(kind): \(failures.count) field(s):\n\(failures.joined(separator: "\n"))")
    }
}
