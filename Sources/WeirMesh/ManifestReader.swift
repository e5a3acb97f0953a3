import Synchronization

/// Reads App Mesh manifests (multi-document YAML) into the model, with every problem located to file, line and field.
///
/// Each object is first checked against its kind's v1beta2 schema (`AppMeshSchema`), as Kubernetes' API server with
/// strict field validation would: an unknown field, a wrong type, a value outside its enum or range, or a missing
/// required field is an error, and so is a field weir cannot honour, by name. Then App Mesh's own rules (its
/// controller's webhooks) and weir's are checked on the values, and references across objects last.
public enum ManifestReader {
    static let apiVersion = "appmesh.k8s.aws/v1beta2"
    static let appMeshKinds: Set<String> = [
        "Mesh", "VirtualNode", "VirtualRouter", "VirtualService", "VirtualGateway", "GatewayRoute",
    ]

    /// Per-file parse results by path and text, so re-reading a directory where one file changed parses one file.
    public final class FileCache: Sendable {
        struct Entry {
            var text: String
            var out: MeshManifests
            var problems: [MeshProblem]
        }
        let entries = Mutex<[String: Entry]>([:])
        public init() {}
        func get(_ path: String, _ text: String) -> (MeshManifests, [MeshProblem])? {
            entries.withLock { e in e[path].flatMap { $0.text == text ? ($0.out, $0.problems) : nil } }
        }
        func set(_ path: String, _ text: String, _ out: MeshManifests, _ problems: [MeshProblem]) {
            entries.withLock { $0[path] = Entry(text: text, out: out, problems: problems) }
        }
        /// Forgets files that are gone.
        func keep(_ paths: Set<String>) { entries.withLock { $0 = $0.filter { paths.contains($0.key) } } }
    }

    /// Reads `files` (path and text, in the order given) and checks cross-references. Throws every problem at once.
    public static func read(
        _ files: [(path: String, text: String)], cache: FileCache? = nil,
        limits: YAMLLimits = .default
    ) throws(MeshError) -> MeshManifests {
        var reader = Reader()
        for (path, text) in files {
            if let cache, let (out, problems) = cache.get(path, text) {
                reader.merge(out, problems)
                continue
            }
            var one = Reader()
            one.readFile(path: path, text: text, limits: limits)
            cache?.set(path, text, one.out, one.problems)
            reader.merge(one.out, one.problems)
        }
        cache?.keep(Set(files.map(\.path)))
        // Objects with problems of their own were left out: references to them would only add noise.
        if reader.problems.isEmpty {
            reader.checkDuplicates()
            reader.checkMembership()
            reader.resolveARNs()
            reader.checkReferences()
        }
        if !reader.problems.isEmpty { throw MeshError(problems: reader.problems) }
        return reader.out
    }

    struct Reader {
        var out = MeshManifests()
        var problems: [MeshProblem] = []
        /// The file being read.
        var file = ""

        mutating func problem(_ node: YAMLNode?, _ field: String, _ message: String) {
            problems.append(
                MeshProblem(location: SourceLocation(file: file, line: node?.line ?? 0, field: field), message: message)
            )
        }

        mutating func problem(_ location: SourceLocation, _ message: String) {
            problems.append(MeshProblem(location: location, message: message))
        }

        mutating func merge(_ next: MeshManifests, _ nextProblems: [MeshProblem]) {
            namespacesTwice(next)
            out.append(next)
            problems += nextProblems
        }

        mutating func readFile(path: String, text: String, limits: YAMLLimits) {
            file = path
            let documents: [YAMLNode]
            do { documents = try YAMLNode.documents(text, limits: limits) } catch {
                problem(SourceLocation(file: path, line: error.line, field: "(yaml)"), error.message)
                return
            }
            for doc in documents where !doc.isNull { readDocument(doc) }
        }

        mutating func readDocument(_ doc: YAMLNode) {
            guard doc.mapping != nil else {
                problem(doc, "(document)", "expected a Kubernetes object (a mapping)")
                return
            }
            let kind = doc["kind"]?.text
            if kind == "Namespace", doc["apiVersion"]?.text == "v1" {
                readNamespace(doc)
                return
            }
            guard let api = doc["apiVersion"]?.text, api == ManifestReader.apiVersion else {
                // Other Kubernetes objects (Deployments, Services) may share the files: skip them quietly,
                // but an App Mesh kind with the wrong version is a mistake.
                if let kind, ManifestReader.appMeshKinds.contains(kind) {
                    problem(
                        doc["apiVersion"] ?? doc, "apiVersion",
                        "App Mesh \(kind) must be \(ManifestReader.apiVersion), found '\(doc["apiVersion"]?.text ?? "")'"
                    )
                }
                return
            }
            guard let kind, let schema = AppMeshSchema.object(kind) else {
                problem(
                    doc["kind"] ?? doc, "kind",
                    "unknown App Mesh kind '\(kind ?? "")'; expected Mesh, VirtualNode, VirtualRouter, VirtualService, VirtualGateway or GatewayRoute"
                )
                return
            }
            var checker = SchemaChecker(file: file)
            checker.check(doc, schema, path: "", use: nil)
            guard let name = doc["metadata"]?["name"]?.text, !name.isEmpty else {
                problems += checker.problems
                problem(doc["metadata"] ?? doc, "metadata.name", "every App Mesh object needs a name")
                return
            }
            guard checker.problems.isEmpty else {
                problems += checker.problems
                return
            }
            let namespace = doc["metadata"]?["namespace"]?.text ?? "default"
            var object = Object(
                ref: ResourceRef(name: name, namespace: namespace), spec: doc["spec"], metadata: doc["metadata"],
                location: SourceLocation(file: file, line: doc.line, field: "\(kind) \(namespace)/\(name)"))
            if kind == "Mesh" {
                // Meshes are cluster-scoped: a namespace means nothing for them.
                object.location.field = "Mesh \(name)"
            }
            switch kind {
            case "Mesh": readMesh(object)
            case "VirtualNode": readVirtualNode(object)
            case "VirtualRouter": readVirtualRouter(object)
            case "VirtualService": readVirtualService(object)
            case "VirtualGateway": readVirtualGateway(object)
            default: readGatewayRoute(object)
            }
        }

        /// An object that passed its schema: its identity, spec and where it is.
        struct Object {
            var ref: ResourceRef
            var spec: YAMLNode?
            var metadata: YAMLNode?
            var location: SourceLocation
            var name: String { ref.name }
            var namespace: String { ref.namespace }
        }

        // MARK: Namespace

        /// A `v1` Namespace, read for the labels a namespace selector matches.
        mutating func readNamespace(_ doc: YAMLNode) {
            guard let n = doc["metadata"]?["name"], let name = n.string, !name.isEmpty, !n.isNull else {
                // Its labels would belong to no namespace: say so rather than drop them.
                problem(doc["metadata"] ?? doc, "metadata.name", "a Namespace needs a name")
                return
            }
            var checker = SchemaChecker(file: file)
            if let labels = doc["metadata"]?["labels"] {
                checker.check(labels, .stringMap, path: "metadata.labels", use: nil)
            }
            guard checker.problems.isEmpty else {
                problems += checker.problems
                return
            }
            let here = SourceLocation(file: file, line: doc.line, field: "Namespace \(name)")
            if !namespaceTwice(name, at: here) {
                out.namespaces[name] = MeshManifests.Namespace(
                    labels: Self.labels(doc["metadata"]?["labels"]), location: here)
            }
        }

        /// A string map that passed the schema; null values are the empty string, as Kubernetes reads them.
        static func labels(_ node: YAMLNode?) -> [String: String] {
            var out: [String: String] = [:]
            for p in node?.mapping ?? [] {
                if let k = p.key.text { out[k] = p.value.isNull ? "" : p.value.text ?? "" }
            }
            return out
        }

        // MARK: Mesh

        mutating func readMesh(_ o: Object) {
            let spec = o.spec
            let egress = spec?["egressFilter"]?["type"]?.text ?? "DROP_ALL"
            var mesh = Mesh(
                name: o.name, awsName: spec?["awsName"]?.text ?? o.name, uid: o.metadata?["uid"]?.text,
                meshOwner: spec?["meshOwner"]?.text,
                ipPreference: spec?["meshServiceDiscovery"]?["ipPreference"]?.text.flatMap(
                    IPPreference.init(rawValue:)),
                egressDropAll: egress != "ALLOW_ALL", location: o.location)
            if let s = spec?["namespaceSelector"] {
                mesh.namespaceSelector = labelSelector(s, "spec.namespaceSelector")
            }
            out.meshes.append(mesh)
        }

        // MARK: VirtualNode

        mutating func readVirtualNode(_ o: Object) {
            let spec = o.spec
            var node = VirtualNode(
                ref: o.ref, awsName: spec?["awsName"]?.text ?? "\(o.name)_\(o.namespace)",
                meshName: spec?["meshRef"]?["name"]?.text, meshUID: spec?["meshRef"]?["uid"]?.text,
                meshRefAt: meshRefAt(spec),
                listeners: [], hostname: nil, backends: [], location: o.location)
            for (i, l) in (spec?["listeners"]?.sequence ?? []).enumerated() {
                if let listener = listener(l, "spec.listeners[\(i)]", gateway: false) {
                    node.listeners.append(listener)
                }
            }
            if node.listeners.count > 1 {
                problem(spec?["listeners"], "spec.listeners", "App Mesh virtual nodes have at most one listener")
            }
            if let dns = spec?["serviceDiscovery"]?["dns"], let h = dns["hostname"]?.text {
                if h.isEmpty { problem(dns["hostname"], "spec.serviceDiscovery.dns.hostname", "must not be empty") }
                node.hostname = h
                node.responseType = dns["responseType"]?.text.flatMap(DNSResponseType.init(rawValue:))
            }
            var seen = Set<ResourceRef>()
            var seenARNs = Set<String>()
            for (i, b) in (spec?["backends"]?.sequence ?? []).enumerated() {
                let field = "spec.backends[\(i)].virtualService"
                guard let vs = b["virtualService"] else { continue }
                guard
                    let (ref, arn) = reference(
                        vs, field, refKey: "virtualServiceRef", arnKey: "virtualServiceARN", namespace: o.namespace)
                else { continue }
                if let arn, !seenARNs.insert(arn).inserted {
                    problem(
                        vs, field + ".virtualServiceARN",
                        "VirtualNode-\(o.name) has duplicate VirtualServiceReferenceARNs \(arn)")
                } else if arn == nil, !seen.insert(ref).inserted {
                    problem(
                        vs, field + ".virtualServiceRef",
                        "VirtualNode-\(o.name) has duplicate VirtualServiceReferences \(ref.name)")
                }
                let tls = vs["clientPolicy"]?["tls"].flatMap { clientTLS($0, field + ".clientPolicy.tls") }
                let refField = field + (arn == nil ? ".virtualServiceRef" : ".virtualServiceARN")
                node.backends.append(
                    Backend(
                        service: ref, arn: arn, tls: tls,
                        location: at(vs[arn == nil ? "virtualServiceRef" : "virtualServiceARN"], refField)))
            }
            node.backendDefaults = spec?["backendDefaults"]?["clientPolicy"]?["tls"].flatMap {
                clientTLS($0, "spec.backendDefaults.clientPolicy.tls")
            }
            node.accessLog = accessLog(spec?["logging"]?["accessLog"]?["file"], "spec.logging.accessLog.file")
            if let s = spec?["podSelector"] { node.podSelector = labelSelector(s, "spec.podSelector") }
            out.virtualNodes.append(node)
        }

        func at(_ node: YAMLNode?, _ field: String) -> SourceLocation? {
            node.map { SourceLocation(file: file, line: $0.line, field: field) }
        }

        /// Where `spec.meshRef.name` is, if given.
        func meshRefAt(_ spec: YAMLNode?) -> SourceLocation? {
            spec?["meshRef"]?["name"].map { SourceLocation(file: file, line: $0.line, field: "spec.meshRef.name") }
        }

        /// A `…Ref` or a `…ARN`, exactly one. An ARN comes back with a placeholder reference, resolved once every file
        /// is read.
        mutating func reference(_ node: YAMLNode, _ field: String, refKey: String, arnKey: String, namespace: String)
            -> (ResourceRef, String?)?
        {
            switch (node[refKey], node[arnKey]?.text) {
            case (let r?, nil):
                return (ResourceRef(name: r["name"]?.text ?? "", namespace: r["namespace"]?.text ?? namespace), nil)
            case (nil, let arn?):
                return (ResourceRef(name: "", namespace: ""), arn)
            case (nil, nil):
                problem(node, field, "give \(refKey) or \(arnKey)")
            default:
                problem(node, "\(field).\(arnKey)", "give \(refKey) or \(arnKey), not both")
            }
            return nil
        }

        mutating func listener(_ l: YAMLNode, _ field: String, gateway: Bool) -> NodeListener? {
            guard let pm = portMapping(l["portMapping"]) else { return nil }
            var listener = NodeListener(portMapping: pm)
            let proto = pm.protocol.rawValue
            if let h = l["healthCheck"] {
                let hf = field + ".healthCheck"
                let hp = PortProtocol(rawValue: h["protocol"]?.text ?? "") ?? .http
                if (hp == .http || hp == .http2) && h["path"] == nil {
                    problem(h, hf + ".path", "an HTTP health check needs a path")
                } else if hp == .tcp || hp == .grpc, let p = h["path"] {
                    problem(
                        p, hf + ".path",
                        "a \(hp.rawValue) health check has no path; the path is for http and http2 health checks")
                }
                listener.healthCheck = HealthCheck(
                    protocol: hp, path: h["path"]?.text, port: h["port"]?.int.map { UInt16($0) },
                    healthyThreshold: h["healthyThreshold"]?.int ?? 2,
                    unhealthyThreshold: h["unhealthyThreshold"]?.int ?? 2,
                    intervalMilliseconds: h["intervalMillis"]?.int ?? 5000,
                    timeoutMilliseconds: h["timeoutMillis"]?.int ?? 2000)
            }
            if let t = l["timeout"] {
                for p in t.mapping ?? [] where !p.value.isNull {
                    guard let key = p.key.text, key != proto else { continue }
                    problem(
                        p.key, "\(field).timeout.\(key)",
                        "applies to a \(key) listener; this listener's protocol is \(proto): give timeout.\(proto)")
                }
                if let own = t[proto] {
                    listener.perRequestTimeoutMilliseconds = duration(own["perRequest"])
                    listener.idleTimeoutMilliseconds = duration(own["idle"])
                }
            }
            if let o = l["outlierDetection"] {
                listener.outlierDetection = OutlierDetection(
                    maxServerErrors: o["maxServerErrors"]?.int ?? 1, intervalMilliseconds: duration(o["interval"]) ?? 0,
                    baseEjectionMilliseconds: duration(o["baseEjectionDuration"]) ?? 0,
                    maxEjectionPercent: o["maxEjectionPercent"]?.int ?? 0)
            }
            if let c = l["connectionPool"] {
                let given = (c.mapping ?? []).filter { !$0.value.isNull }.compactMap { $0.key.text }
                if given.count > 1 {
                    problem(
                        c, field + ".connectionPool",
                        "Only one type of Virtual \(gateway ? "Gateway" : "Node") Connection Pool is allowed")
                } else if let key = given.first, key != proto {
                    problem(
                        c[key], "\(field).connectionPool.\(key)",
                        "applies to a \(key) listener; this listener's protocol is \(proto): give connectionPool.\(proto)"
                    )
                } else if let p = c[proto] {
                    listener.connectionPool = ConnectionPool(
                        maxConnections: p["maxConnections"]?.int, maxPendingRequests: p["maxPendingRequests"]?.int,
                        maxRequests: p["maxRequests"]?.int)
                }
            }
            if let t = l["tls"] { listener.tls = listenerTLS(t, field + ".tls") }
            return listener
        }

        mutating func portMapping(_ node: YAMLNode?) -> PortMapping? {
            guard let node, let port = node["port"]?.int,
                let proto = PortProtocol(rawValue: node["protocol"]?.text ?? "")
            else { return nil }
            return PortMapping(port: UInt16(port), protocol: proto)
        }

        /// `{unit: ms|s, value: N}` in milliseconds (the schema has checked both).
        func duration(_ d: YAMLNode?) -> Int? {
            guard let d, let value = d["value"]?.int else { return nil }
            return d["unit"]?.text == "s" ? value * 1000 : value
        }

        // MARK: TLS

        mutating func certificate(_ c: YAMLNode, _ field: String) -> CertificateSource? {
            switch (c["file"], c["sds"]) {
            case (let f?, nil):
                return .file(chain: f["certificateChain"]?.text ?? "", privateKey: f["privateKey"]?.text ?? "")
            case (nil, let s?):
                return .sds(secretName: s["secretName"]?.text ?? "")
            case (nil, nil):
                problem(c, field, "give certificate.file or certificate.sds")
            default:
                problem(c, field, "give certificate.file or certificate.sds, not both")
            }
            return nil
        }

        mutating func validation(_ v: YAMLNode, _ field: String) -> TLSValidation? {
            guard let t = v["trust"] else { return nil }
            let trust: TrustSource
            switch (t["file"], t["sds"]) {
            case (let f?, nil): trust = .file(chain: f["certificateChain"]?.text ?? "")
            case (nil, let s?): trust = .sds(secretName: s["secretName"]?.text ?? "")
            case (nil, nil):
                problem(t, field + ".trust", "give trust.file or trust.sds")
                return nil
            default:
                problem(t, field + ".trust", "give trust.file or trust.sds, not both")
                return nil
            }
            let sans = (v["subjectAlternativeNames"]?["match"]?["exact"]?.sequence ?? []).compactMap(\.text)
            if v["subjectAlternativeNames"] != nil && sans.isEmpty {
                problem(
                    v["subjectAlternativeNames"], field + ".subjectAlternativeNames.match.exact",
                    "name at least one subject alternative name")
            }
            return TLSValidation(trust: trust, subjectAlternativeNames: sans)
        }

        mutating func listenerTLS(_ t: YAMLNode, _ field: String) -> ListenerTLS? {
            guard let mode = ListenerTLS.Mode(rawValue: t["mode"]?.text ?? ""), let c = t["certificate"],
                let cert = certificate(c, field + ".certificate")
            else { return nil }
            var tls = ListenerTLS(mode: mode, certificate: cert)
            if let v = t["validation"] {
                guard let validation = validation(v, field + ".validation") else { return nil }
                tls.validation = validation
            }
            return tls
        }

        mutating func clientTLS(_ t: YAMLNode, _ field: String) -> ClientTLS? {
            guard let v = t["validation"], let validation = validation(v, field + ".validation") else { return nil }
            var tls = ClientTLS(
                enforce: t["enforce"]?.bool ?? true,
                ports: (t["ports"]?.sequence ?? []).compactMap { $0.int.map { UInt16($0) } },
                validation: validation)
            if let c = t["certificate"] {
                guard let cert = certificate(c, field + ".certificate") else { return nil }
                tls.certificate = cert
            }
            return tls
        }

        // MARK: logging

        mutating func accessLog(_ f: YAMLNode?, _ field: String) -> AccessLog? {
            guard let f, let path = f["path"]?.text else { return nil }
            var log = AccessLog(path: path)
            if let format = f["format"] {
                switch (format["text"]?.text, format["json"]?.sequence) {
                case (let text?, nil):
                    log.format = .text(text)
                case (nil, let pairs?):
                    if pairs.isEmpty {
                        problem(format["json"], field + ".format.json", "give at least one key and value")
                        return nil
                    }
                    var keys = Set<String>()
                    var kv: [AccessLog.KeyValue] = []
                    for (i, p) in pairs.enumerated() {
                        let key = p["key"]?.text ?? ""
                        if !keys.insert(key).inserted {
                            problem(p, "\(field).format.json[\(i)].key", "'\(key)' is given twice")
                        }
                        kv.append(AccessLog.KeyValue(key: key, value: p["value"]?.text ?? ""))
                    }
                    log.format = .json(kv)
                case (nil, nil):
                    problem(format, field + ".format", "give format.text or format.json")
                default:
                    problem(format, field + ".format", "give format.text or format.json, not both")
                }
            }
            return log
        }

        // MARK: VirtualRouter

        mutating func readVirtualRouter(_ o: Object) {
            let spec = o.spec
            var router = VirtualRouter(
                ref: o.ref, awsName: spec?["awsName"]?.text ?? "\(o.name)_\(o.namespace)",
                meshName: spec?["meshRef"]?["name"]?.text, meshUID: spec?["meshRef"]?["uid"]?.text,
                meshRefAt: meshRefAt(spec),
                listeners: [], routes: [], location: o.location)
            for l in spec?["listeners"]?.sequence ?? [] {
                if let pm = portMapping(l["portMapping"]) { router.listeners.append(pm) }
            }
            if router.listeners.isEmpty {
                problem(spec ?? o.metadata, "spec.listeners", "a virtual router needs one listener")
            }
            var names = Set<String>()
            for (i, r) in (spec?["routes"]?.sequence ?? []).enumerated() {
                let field = "spec.routes[\(i)]"
                if let n = r["name"]?.text, !names.insert(n).inserted {
                    problem(r["name"], field + ".name", "VirtualRouter-\(o.name) has duplicate route entries for \(n)")
                }
                guard let route = route(r, field, namespace: o.namespace) else { continue }
                // App Mesh takes a route on listeners of its own protocol: httpRoute on http, grpcRoute on grpc.
                let fits = router.listeners.filter { $0.protocol == route.kind }
                let family = route.kind.rawValue
                if let port = route.port {
                    if !fits.contains(where: { $0.port == port }) {
                        problem(
                            route.portAt ?? route.location,
                            "\(port) is not a \(family) listener port of virtual router \(o.ref) (its listeners: \(router.listeners.map { "\($0.port)/\($0.protocol.rawValue)" }.joined(separator: ", ")))"
                        )
                    }
                } else if fits.isEmpty, let first = spec?["listeners"]?.sequence?.first {
                    problem(
                        first["portMapping"]?["protocol"], "spec.listeners[0].portMapping.protocol",
                        "route '\(route.name)' is a \(route.kind.rawValue) route, and no listener of this router is \(family)"
                    )
                }
                router.routes.append(route)
            }
            out.virtualRouters.append(router)
        }

        mutating func route(_ r: YAMLNode, _ field: String, namespace: String) -> RouteSpec? {
            let kinds: [(String, PortProtocol)] = [
                ("httpRoute", .http), ("http2Route", .http2), ("grpcRoute", .grpc), ("tcpRoute", .tcp),
            ]
            let present = kinds.filter { r[$0.0] != nil }
            guard present.count == 1, let (key, kind) = present.first, let body = r[key] else {
                problem(r, field, "a route has exactly one of httpRoute, http2Route, grpcRoute, tcpRoute")
                return nil
            }
            let f = "\(field).\(key)"
            var route = RouteSpec(
                name: r["name"]?.text ?? "", kind: kind, priority: r["priority"]?.int, prefix: nil, targets: [],
                location: SourceLocation(file: file, line: r.line, field: field))
            let match = body["match"]
            switch kind {
            case .http, .http2:
                if let m = match {
                    route.prefix = m["prefix"]?.text
                    route.path = pathMatch(m, f + ".match", prefix: route.prefix, gateway: false)
                    if route.prefix == nil && m["path"] == nil {
                        problem(m, f + ".match", "Either Prefix or Path must be specified")
                    }
                    route.method = m["method"]?.text
                    route.scheme = m["scheme"]?.text
                    route.headers = headerMatches(m["headers"], f + ".match.headers", what: "header")
                    route.query = queryMatches(m["queryParameters"], f + ".match.queryParameters")
                }
            case .grpc:
                route.grpcService = match?["serviceName"]?.text
                route.grpcMethod = match?["methodName"]?.text
                if route.grpcMethod != nil && route.grpcService == nil {
                    problem(match?["methodName"], f + ".match.methodName", "a gRPC method match needs serviceName too")
                }
                route.headers = headerMatches(match?["metadata"], f + ".match.metadata", what: "metadata")
            case .tcp:
                break
            }
            route.port = match?["port"]?.int.map { UInt16(clamping: $0) }
            route.portAt = at(match?["port"], f + ".match.port")
            if let retry = body["retryPolicy"] { route.retry = retryPolicy(retry, f + ".retryPolicy", kind: kind) }
            if let t = body["timeout"] {
                route.perRequestTimeoutMilliseconds = duration(t["perRequest"])
                route.idleTimeoutMilliseconds = duration(t["idle"])
            }
            let targets = body["action"]?["weightedTargets"]?.sequence ?? []
            for (i, t) in targets.enumerated() {
                let tf = "\(f).action.weightedTargets[\(i)]"
                guard
                    let (ref, arn) = reference(
                        t, tf, refKey: "virtualNodeRef", arnKey: "virtualNodeARN", namespace: namespace)
                else { continue }
                route.targets.append(
                    WeightedTarget(
                        node: ref, arn: arn, weight: t["weight"]?.int ?? 0,
                        port: t["port"]?.int.map { UInt16(clamping: $0) },
                        location: SourceLocation(file: file, line: t.line, field: tf)))
            }
            if !route.targets.isEmpty && route.targets.allSatisfy({ $0.weight == 0 }) {
                problem(
                    body["action"], "\(f).action.weightedTargets",
                    "the weights add up to 0, so no request could be routed")
            }
            return route
        }

        /// `match.path`: exact or regex, and never beside a prefix.
        mutating func pathMatch(_ m: YAMLNode, _ field: String, prefix: String?, gateway: Bool) -> StringMatch? {
            guard let p = m["path"] else { return nil }
            if prefix != nil {
                problem(
                    p, field + ".path",
                    gateway
                        ? "Both prefix and path cannot be specified. Only 1 allowed"
                        : "Both Prefix and Path cannot be specified, only 1 allowed")
                return nil
            }
            switch (p["exact"]?.text, p["regex"]?.text) {
            case (let e?, nil): return .exact(e)
            case (nil, let r?): return .regex(r)
            case (nil, nil): problem(p, field + ".path", "Either exact or regex for path must be specified")
            default:
                problem(p, field + ".path", "Both exact and regex for path are not allowed. Only one must be specified")
            }
            return nil
        }

        /// Header (or gRPC metadata) matches: at most one way to match each; none means the header must be present.
        mutating func headerMatches(_ list: YAMLNode?, _ field: String, what: String) -> [HeaderMatch] {
            var out: [HeaderMatch] = []
            for (i, h) in (list?.sequence ?? []).enumerated() {
                let hf = "\(field)[\(i)]"
                var match: StringMatch?
                if let m = h["match"] {
                    let given = (m.mapping ?? []).filter { !$0.value.isNull }.compactMap { $0.key.text }
                    if given.count > 1 {
                        problem(m, hf + ".match", "Too many Match Filters specified, only 1 allowed per \(what)")
                        continue
                    }
                    if given.isEmpty {
                        problem(
                            m, hf + ".match",
                            "Missing Match criteria for one or more \(what) match block, don't specify match block if you dont need it"
                        )
                        continue
                    }
                    match = stringMatch(m, hf + ".match")
                    if match == nil { continue }
                }
                out.append(HeaderMatch(name: h["name"]?.text ?? "", match: match, invert: h["invert"]?.bool ?? false))
            }
            return out
        }

        mutating func stringMatch(_ m: YAMLNode, _ field: String) -> StringMatch? {
            if let v = m["exact"]?.text { return .exact(v) }
            if let v = m["prefix"]?.text { return .prefix(v) }
            if let v = m["suffix"]?.text { return .suffix(v) }
            if let v = m["regex"]?.text { return .regex(v) }
            if let r = m["range"], let a = r["start"]?.int, let b = r["end"]?.int {
                guard a < b else {
                    problem(r, field + ".range", "Invalid Match Range specified, end has to be greater than start")
                    return nil
                }
                return .range(start: a, end: b)
            }
            return nil
        }

        mutating func queryMatches(_ list: YAMLNode?, _ field: String) -> [QueryMatch] {
            var out: [QueryMatch] = []
            for (i, q) in (list?.sequence ?? []).enumerated() {
                if let m = q["match"], m["exact"] == nil {
                    problem(
                        m, "\(field)[\(i)].match",
                        "Missing Match criteria for one or more exact query match block, don't specify match block if you dont need it"
                    )
                    continue
                }
                out.append(QueryMatch(name: q["name"]?.text ?? "", exact: q["match"]?["exact"]?.text))
            }
            return out
        }

        static let httpRetryEvents: Set<String> = ["server-error", "gateway-error", "client-error", "stream-error"]

        mutating func retryPolicy(_ r: YAMLNode, _ field: String, kind: PortProtocol) -> RetryPolicy? {
            guard let max = r["maxRetries"]?.int, let per = duration(r["perRetryTimeout"]) else { return nil }
            let events = { (key: String) in (r[key]?.sequence ?? []).compactMap(\.text) }
            let policy = RetryPolicy(
                maxRetries: max, perRetryTimeoutMilliseconds: per, httpRetryEvents: events("httpRetryEvents"),
                tcpRetryEvents: events("tcpRetryEvents"),
                grpcRetryEvents: kind == .grpc ? events("grpcRetryEvents") : [])
            if policy.httpRetryEvents.isEmpty && policy.tcpRetryEvents.isEmpty && policy.grpcRetryEvents.isEmpty {
                problem(
                    r, field,
                    "name at least one retry event (httpRetryEvents, tcpRetryEvents\(kind == .grpc ? ", grpcRetryEvents" : ""))"
                )
            }
            return policy
        }

        // MARK: VirtualService

        mutating func readVirtualService(_ o: Object) {
            let spec = o.spec
            var service = VirtualService(
                ref: o.ref, awsName: spec?["awsName"]?.text ?? "\(o.name).\(o.namespace)",
                meshName: spec?["meshRef"]?["name"]?.text, meshUID: spec?["meshRef"]?["uid"]?.text,
                meshRefAt: meshRefAt(spec),
                provider: nil, location: o.location)
            if let p = spec?["provider"] {
                switch (p["virtualNode"], p["virtualRouter"]) {
                case (let vn?, nil):
                    if let (ref, arn) = reference(
                        vn, "spec.provider.virtualNode", refKey: "virtualNodeRef", arnKey: "virtualNodeARN",
                        namespace: o.namespace)
                    {
                        service.provider = .virtualNode(ref)
                        service.providerARN = arn
                        service.providerAt =
                            arn == nil
                            ? at(vn["virtualNodeRef"], "spec.provider.virtualNode.virtualNodeRef")
                            : at(vn["virtualNodeARN"], "spec.provider.virtualNode.virtualNodeARN")
                    }
                case (nil, let vr?):
                    if let (ref, arn) = reference(
                        vr, "spec.provider.virtualRouter", refKey: "virtualRouterRef", arnKey: "virtualRouterARN",
                        namespace: o.namespace)
                    {
                        service.provider = .virtualRouter(ref)
                        service.providerARN = arn
                        service.providerAt =
                            arn == nil
                            ? at(vr["virtualRouterRef"], "spec.provider.virtualRouter.virtualRouterRef")
                            : at(vr["virtualRouterARN"], "spec.provider.virtualRouter.virtualRouterARN")
                    }
                case (nil, nil):
                    problem(p, "spec.provider", "name a virtualNode.virtualNodeRef or a virtualRouter.virtualRouterRef")
                default:
                    problem(p, "spec.provider", "give provider.virtualNode or provider.virtualRouter, not both")
                }
            }
            out.virtualServices.append(service)
        }

        // MARK: VirtualGateway

        mutating func readVirtualGateway(_ o: Object) {
            let spec = o.spec
            var gw = VirtualGateway(
                ref: o.ref, awsName: spec?["awsName"]?.text ?? "\(o.name)_\(o.namespace)",
                uid: o.metadata?["uid"]?.text,
                meshName: spec?["meshRef"]?["name"]?.text, meshUID: spec?["meshRef"]?["uid"]?.text,
                meshRefAt: meshRefAt(spec), listeners: [],
                accessLog: accessLog(spec?["logging"]?["accessLog"]?["file"], "spec.logging.accessLog.file"),
                location: o.location)
            if let s = spec?["namespaceSelector"] { gw.namespaceSelector = labelSelector(s, "spec.namespaceSelector") }
            if let s = spec?["gatewayRouteSelector"] {
                gw.gatewayRouteSelector = labelSelector(s, "spec.gatewayRouteSelector")
            }
            if let s = spec?["podSelector"] { gw.podSelector = labelSelector(s, "spec.podSelector") }
            gw.backendDefaults = spec?["backendDefaults"]?["clientPolicy"]?["tls"].flatMap {
                clientTLS($0, "spec.backendDefaults.clientPolicy.tls")
            }
            var ports = Set<UInt16>()
            for (i, l) in (spec?["listeners"]?.sequence ?? []).enumerated() {
                guard let listener = listener(l, "spec.listeners[\(i)]", gateway: true) else { continue }
                if !ports.insert(listener.portMapping.port).inserted {
                    problem(
                        l, "spec.listeners[\(i)].portMapping.port",
                        "port \(listener.portMapping.port) is the port of an earlier listener")
                }
                gw.listeners.append(listener)
            }
            if gw.listeners.isEmpty {
                problem(spec ?? o.metadata, "spec.listeners", "a virtual gateway needs a listener")
            }
            out.virtualGateways.append(gw)
        }

        // MARK: GatewayRoute

        mutating func readGatewayRoute(_ o: Object) {
            guard let spec = o.spec else {
                problem(o.location, "Missing GatewayRoute Type in GatewayRoute Spec")
                return
            }
            let kinds: [(String, PortProtocol)] = [("httpRoute", .http), ("http2Route", .http2), ("grpcRoute", .grpc)]
            let present = kinds.filter { spec[$0.0] != nil }
            guard present.count == 1, let (key, kind) = present.first, let body = spec[key] else {
                problem(
                    spec, "spec",
                    present.isEmpty
                        ? "Missing GatewayRoute Type in GatewayRoute Spec"
                        : "Found multiple types in GatewayRoute Spec. Only 1 (GRPC/HTTP/HTTP2) allowed")
                return
            }
            let f = "spec.\(key)"
            guard let target = body["action"]?["target"], let vs = target["virtualService"],
                let (ref, arn) = reference(
                    vs, f + ".action.target.virtualService", refKey: "virtualServiceRef", arnKey: "virtualServiceARN",
                    namespace: o.namespace)
            else { return }
            var route = GatewayRoute(
                ref: o.ref, awsName: spec["awsName"]?.text ?? "\(o.name)_\(o.namespace)",
                meshName: spec["meshRef"]?["name"]?.text, meshUID: spec["meshRef"]?["uid"]?.text,
                meshRefAt: meshRefAt(spec),
                kind: kind, priority: spec["priority"]?.int, prefix: nil, target: ref, targetARN: arn,
                targetPort: target["port"]?.int.map { UInt16(clamping: $0) }, location: o.location)
            route.labels = Self.labels(o.metadata?["labels"])
            let targetField =
                f + ".action.target.virtualService." + (arn == nil ? "virtualServiceRef" : "virtualServiceARN")
            route.targetAt = at(vs[arn == nil ? "virtualServiceRef" : "virtualServiceARN"], targetField)
            route.targetPortAt = at(target["port"], f + ".action.target.port")
            route.virtualGatewayRefAt = at(spec["virtualGatewayRef"], "spec.virtualGatewayRef")
            if let g = spec["virtualGatewayRef"] {
                route.virtualGatewayRef = ResourceRef(
                    name: g["name"]?.text ?? "", namespace: g["namespace"]?.text ?? o.namespace)
                route.virtualGatewayUID = g["uid"]?.text
            }
            let m = body["match"]
            if let h = m?["hostname"] {
                switch (h["exact"]?.text, h["suffix"]?.text) {
                case (let e?, nil): route.hostname = .exact(e)
                case (nil, let s?): route.hostname = .suffix(s)
                case (nil, nil):
                    problem(h, f + ".match.hostname", "Either exact or suffix match for hostname must be specified")
                default:
                    problem(
                        h, f + ".match.hostname",
                        "Both exact and suffix match for hostname are not allowed. Only one must be specified")
                }
            }
            route.port = m?["port"]?.int.map { UInt16(clamping: $0) }
            route.portAt = at(m?["port"], f + ".match.port")
            if kind == .grpc {
                route.grpcService = m?["serviceName"]?.text
                if route.grpcService == nil && m?["hostname"] == nil {
                    problem(m, f + ".match", "Either servicename or hostname must be specified")
                }
                route.headers = headerMatches(m?["metadata"], f + ".match.metadata", what: "metadata")
                if let h = body["action"]?["rewrite"]?["hostname"]?["defaultTargetHostname"]?.text {
                    route.rewriteHostname = h == "ENABLED"
                }
            } else if let m {
                route.prefix = m["prefix"]?.text
                route.path = pathMatch(m, f + ".match", prefix: route.prefix, gateway: true)
                if route.prefix == nil && m["path"] == nil && m["hostname"] == nil {
                    problem(m, f + ".match", "Either prefix or path or hostname must be specified")
                }
                route.method = m["method"]?.text
                route.headers = headerMatches(m["headers"], f + ".match.headers", what: "header")
                route.query = queryMatches(m["queryParameters"], f + ".match.queryParameters")
                if let rw = body["action"]?["rewrite"] { readRewrite(rw, f + ".action.rewrite", into: &route) }
            }
            out.gatewayRoutes.append(route)
        }

        mutating func readRewrite(_ rw: YAMLNode, _ field: String, into route: inout GatewayRoute) {
            let prefix = rw["prefix"]
            let path = rw["path"]
            let host = rw["hostname"]
            if prefix == nil && path == nil && host == nil {
                problem(rw, field, "Either prefix, path or hostname for rewrite must be specified")
                return
            }
            if prefix != nil && path != nil {
                problem(rw, field, "Both prefix and path for rewrites cannot be specified. Only 1 allowed")
                return
            }
            if let h = host?["defaultTargetHostname"]?.text { route.rewriteHostname = h == "ENABLED" }
            if let e = path?["exact"]?.text {
                if !e.hasPrefix("/") {
                    problem(path?["exact"], field + ".path.exact", "the new path must start with '/'")
                }
                route.rewritePath = e
            }
            if let p = prefix {
                if let mp = route.prefix, !mp.hasPrefix("/") {
                    problem(p, field + ".prefix", "Prefix to be matched on must start with '/'")
                }
                if route.prefix == nil && (p["value"] != nil || p["defaultPrefix"] != nil) {
                    problem(
                        p, field + ".prefix",
                        "a prefix rewrite needs match.prefix: the matched prefix is what it rewrites")
                }
                switch (p["defaultPrefix"]?.text, p["value"]?.text) {
                case (let d?, nil): route.rewritePrefix = d == "ENABLED" ? .root : .none
                case (nil, let v?):
                    if !(v.hasPrefix("/") && v.hasSuffix("/")) {
                        problem(p["value"], field + ".prefix.value", "New Rewrite Prefix must start and end with '/'")
                    }
                    route.rewritePrefix = .value(v)
                case (nil, nil): break
                default:
                    problem(
                        p, field + ".prefix", "Cannot specify both defaultPrefix and prefix for rewrite, only 1 allowed"
                    )
                }
            }
        }

        // MARK: label selectors

        /// A Kubernetes label selector: `matchLabels` and `matchExpressions` (In, NotIn, Exists, DoesNotExist).
        mutating func labelSelector(_ node: YAMLNode, _ field: String) -> LabelSelector? {
            var s = LabelSelector(matchLabels: Self.labels(node["matchLabels"]))
            for (i, e) in (node["matchExpressions"]?.sequence ?? []).enumerated() {
                let f = "\(field).matchExpressions[\(i)]"
                guard let key = e["key"]?.text, !key.isEmpty else {
                    problem(e, f + ".key", "a match expression needs a key")
                    continue
                }
                guard let op = LabelSelector.Operator(rawValue: e["operator"]?.text ?? "") else {
                    problem(
                        e["operator"] ?? e, f + ".operator",
                        "must be In, NotIn, Exists or DoesNotExist, found '\(e["operator"]?.text ?? "")'")
                    continue
                }
                let items = e["values"]?.sequence ?? []
                let values = items.compactMap(\.string)
                guard values.count == items.count else {
                    for (j, item) in items.enumerated() where item.string == nil {
                        problem(
                            item, "\(f).values[\(j)]",
                            "a label value is a string; YAML reads '\(item.text ?? "")' as \(SchemaChecker.shape(item)), so quote it"
                        )
                    }
                    continue
                }
                if (op == .in || op == .notIn) && values.isEmpty {
                    problem(e, f + ".values", "\(op.rawValue) needs at least one value")
                    continue
                }
                if (op == .exists || op == .doesNotExist) && !values.isEmpty {
                    problem(e["values"], f + ".values", "\(op.rawValue) takes no values")
                    continue
                }
                s.matchExpressions.append(LabelSelector.Requirement(key: key, op: op, values: values))
            }
            return s
        }

        // MARK: across objects

        /// The Namespace objects in `next` (one file's) that an earlier file already defined.
        mutating func namespacesTwice(_ next: MeshManifests) {
            for (name, here) in next.namespaces.mapValues(\.location).sorted(by: { $0.key < $1.key }) {
                _ = namespaceTwice(name, at: here)
            }
        }

        /// Reports a Namespace object already read (in this file or an earlier one); returns whether it was.
        mutating func namespaceTwice(_ name: String, at here: SourceLocation) -> Bool {
            guard let first = out.namespaces[name]?.location else { return false }
            problems.append(
                MeshProblem(
                    location: here, message: "Namespace \(name) is defined twice (first at \(first.file):\(first.line))"
                ))
            return true
        }

        static func show(_ labels: [String: String]) -> String {
            "{" + labels.sorted { $0.key < $1.key }.map { "\($0.key): \($0.value)" }.joined(separator: ", ") + "}"
        }

        /// Every object defined twice, with where it was first. Runs before the other checks: a second Mesh also
        /// makes "several meshes", and the duplicate is the cause to name.
        mutating func checkDuplicates() {
            var first: [String: SourceLocation] = [:]
            let objects: [(String, String, SourceLocation)] =
                out.meshes.map { ("Mesh", $0.name, $0.location) }
                + out.virtualNodes.map { ("VirtualNode", "\($0.ref)", $0.location) }
                + out.virtualRouters.map { ("VirtualRouter", "\($0.ref)", $0.location) }
                + out.virtualServices.map { ("VirtualService", "\($0.ref)", $0.location) }
                + out.virtualGateways.map { ("VirtualGateway", "\($0.ref)", $0.location) }
                + out.gatewayRoutes.map { ("GatewayRoute", "\($0.ref)", $0.location) }
            for (kind, name, loc) in objects {
                if let f = first["\(kind) \(name)"] {
                    problems.append(
                        MeshProblem(
                            location: loc, message: "\(kind) \(name) is defined twice (first at \(f.file):\(f.line))"))
                } else {
                    first["\(kind) \(name)"] = loc
                }
            }
            var awsNames: [String: SourceLocation] = [:]
            for m in out.meshes {
                if let f = awsNames[m.awsName] {
                    problems.append(
                        MeshProblem(
                            location: m.location,
                            message:
                                "mesh awsName '\(m.awsName)' is also the awsName of the mesh at \(f.file):\(f.line)"))
                }
                awsNames[m.awsName] = m.location
            }
        }

        /// Every object's mesh: its meshRef (which must name a Mesh, with that Mesh's uid when both are given), or
        /// with several meshes the one whose namespaceSelector takes its namespace. App Mesh's webhook refused an
        /// object that no mesh or several meshes took.
        mutating func checkMembership() {
            let members:
                [(ref: ResourceRef, meshRef: String?, uid: String?, at: SourceLocation?, location: SourceLocation)] =
                    out.virtualNodes.map { ($0.ref, $0.meshName, $0.meshUID, $0.meshRefAt, $0.location) }
                    + out.virtualGateways.map { ($0.ref, $0.meshName, $0.meshUID, $0.meshRefAt, $0.location) }
                    + out.virtualServices.map { ($0.ref, $0.meshName, $0.meshUID, $0.meshRefAt, $0.location) }
                    + out.virtualRouters.map { ($0.ref, $0.meshName, $0.meshUID, $0.meshRefAt, $0.location) }
                    + out.gatewayRoutes.map { ($0.ref, $0.meshName, $0.meshUID, $0.meshRefAt, $0.location) }
            for m in members {
                if let name = m.meshRef {
                    guard let mesh = out.meshes.first(where: { $0.name == name }) else {
                        problem(m.at ?? m.location, "names mesh '\(name)', which the manifests do not define")
                        continue
                    }
                    if let uid = m.uid, let want = mesh.uid, uid != want {
                        var at = m.at ?? m.location
                        at.field = "spec.meshRef.uid"
                        problem(at, "'\(uid)' is not the uid of mesh \(name) ('\(want)')")
                    }
                } else if out.meshes.count > 1 {
                    let meshes = out.meshes(selecting: m.ref.namespace).map(\.name)
                    if meshes.count != 1 {
                        problem(
                            m.location,
                            meshes.isEmpty
                                ? "no mesh takes namespace '\(m.ref.namespace)' (labels \(Self.show(out.labels(ofNamespace: m.ref.namespace)))): with several meshes, give spec.meshRef or a Mesh spec.namespaceSelector that matches"
                                : "several meshes take namespace '\(m.ref.namespace)' (\(meshes.sorted().joined(separator: ", "))): give spec.meshRef or narrow their namespaceSelectors"
                        )
                    }
                }
            }
        }

        /// An App Mesh ARN (`arn:<partition>:appmesh:<region>:<account>:mesh/<mesh>/<kind>/<awsName>`) resolved in
        /// the referrer's mesh; nil after reporting why it names nothing here.
        mutating func resolve(
            _ arn: String, kind: String, in meshName: String?, at location: SourceLocation, field: String,
            candidates: [(ref: ResourceRef, awsName: String, mesh: String?)]
        ) -> ResourceRef? {
            let parts = arn.split(separator: ":", maxSplits: 5, omittingEmptySubsequences: false)
            let path = parts.count == 6 ? parts[5].split(separator: "/", omittingEmptySubsequences: false) : []
            guard parts.count == 6, parts[0] == "arn", parts[2] == "appmesh", path.count == 4, path[0] == "mesh",
                !path[3].isEmpty
            else {
                problem(
                    location,
                    "\(field) '\(arn)' is not an App Mesh ARN (arn:aws:appmesh:<region>:<account>:mesh/<mesh>/\(kind)/<name>)"
                )
                return nil
            }
            guard path[2] == kind else {
                problem(location, "\(field) '\(arn)' names a \(path[2]), not a \(kind)")
                return nil
            }
            let mesh = out.meshes.first { $0.name == meshName }
            if let mesh, path[1] != mesh.awsName {
                problem(
                    location,
                    "\(field) '\(arn)' is in mesh '\(path[1])'; this object is in mesh '\(mesh.awsName)', and App Mesh does not reach across meshes"
                )
                return nil
            }
            if let owner = mesh?.meshOwner, !parts[4].isEmpty, parts[4] != owner {
                problem(
                    location,
                    "\(field) '\(arn)' carries account \(parts[4]); mesh \(mesh!.name)'s meshOwner is \(owner)")
                return nil
            }
            guard let found = candidates.first(where: { $0.awsName == path[3] && $0.mesh == meshName }) else {
                problem(location, "\(field) '\(arn)': no \(kind) with awsName '\(path[3])' in mesh '\(path[1])'")
                return nil
            }
            return found.ref
        }

        /// Replaces each reference given by ARN with the object it names.
        mutating func resolveARNs() {
            let m = out
            let nodes = m.virtualNodes.map { ($0.ref, $0.awsName, m.meshName(of: $0)) }
            let services = m.virtualServices.map {
                ($0.ref, $0.awsName, m.meshName(meshRef: $0.meshName, namespace: $0.ref.namespace))
            }
            let routers = m.virtualRouters.map {
                ($0.ref, $0.awsName, m.meshName(meshRef: $0.meshName, namespace: $0.ref.namespace))
            }
            for i in out.virtualNodes.indices {
                let node = out.virtualNodes[i]
                for j in node.backends.indices {
                    guard let arn = node.backends[j].arn else { continue }
                    if let r = resolve(
                        arn, kind: "virtualService", in: m.meshName(of: node), at: node.location,
                        field: "spec.backends[\(j)].virtualService.virtualServiceARN", candidates: services)
                    {
                        out.virtualNodes[i].backends[j].service = r
                    }
                }
            }
            for i in out.virtualRouters.indices {
                let router = out.virtualRouters[i]
                let mesh = m.meshName(meshRef: router.meshName, namespace: router.ref.namespace)
                for j in router.routes.indices {
                    for k in router.routes[j].targets.indices {
                        let t = router.routes[j].targets[k]
                        guard let arn = t.arn else { continue }
                        if let r = resolve(
                            arn, kind: "virtualNode", in: mesh, at: t.location, field: "virtualNodeARN",
                            candidates: nodes)
                        {
                            out.virtualRouters[i].routes[j].targets[k].node = r
                        }
                    }
                }
            }
            for i in out.virtualServices.indices {
                let s = out.virtualServices[i]
                guard let arn = s.providerARN else { continue }
                let mesh = m.meshName(meshRef: s.meshName, namespace: s.ref.namespace)
                switch s.provider {
                case .virtualNode?:
                    if let r = resolve(
                        arn, kind: "virtualNode", in: mesh, at: s.location,
                        field: "spec.provider.virtualNode.virtualNodeARN", candidates: nodes)
                    {
                        out.virtualServices[i].provider = .virtualNode(r)
                    }
                case .virtualRouter?:
                    if let r = resolve(
                        arn, kind: "virtualRouter", in: mesh, at: s.location,
                        field: "spec.provider.virtualRouter.virtualRouterARN", candidates: routers)
                    {
                        out.virtualServices[i].provider = .virtualRouter(r)
                    }
                case nil: break
                }
            }
            for i in out.gatewayRoutes.indices {
                let g = out.gatewayRoutes[i]
                guard let arn = g.targetARN else { continue }
                let mesh = m.meshName(meshRef: g.meshName, namespace: g.ref.namespace)
                if let r = resolve(
                    arn, kind: "virtualService", in: mesh, at: g.location,
                    field: "action.target.virtualService.virtualServiceARN", candidates: services)
                {
                    out.gatewayRoutes[i].target = r
                }
            }
        }

        /// Every name a resource refers to must exist, in the referrer's mesh.
        mutating func checkReferences() {
            let m = out
            let nodes = Dictionary(m.virtualNodes.map { ($0.ref, $0) }, uniquingKeysWith: { a, _ in a })
            let routers = Dictionary(m.virtualRouters.map { ($0.ref, $0) }, uniquingKeysWith: { a, _ in a })
            let services = Dictionary(m.virtualServices.map { ($0.ref, $0) }, uniquingKeysWith: { a, _ in a })
            func meshOf(_ s: VirtualService) -> String? { m.meshName(meshRef: s.meshName, namespace: s.ref.namespace) }
            func meshOf(_ r: VirtualRouter) -> String? { m.meshName(meshRef: r.meshName, namespace: r.ref.namespace) }
            /// Reports a reference to an object of another mesh (App Mesh's controller: "didn't belong to mesh"), at the
            /// meshRef that says so when one does: the target's, else the referrer's.
            func crossMesh(
                _ what: String, _ ref: ResourceRef, theirs: String?, theirAt: SourceLocation?, ours: String?,
                ourAt: SourceLocation?,
                at loc: SourceLocation
            ) {
                guard let theirs, let ours, theirs != ours else { return }
                let blame = theirAt ?? ourAt ?? loc
                problem(
                    blame,
                    "\(what) \(ref) is in mesh \(theirs) and its user \(loc.field) in mesh \(ours): App Mesh does not reach across meshes"
                )
            }
            for n in m.virtualNodes {
                for b in n.backends where !(b.arn != nil && b.service.name.isEmpty) {
                    guard let s = services[b.service] else {
                        problem(b.location ?? n.location, "backend virtual service \(b.service) does not exist")
                        continue
                    }
                    crossMesh(
                        "virtual service", b.service, theirs: meshOf(s), theirAt: s.meshRefAt, ours: m.meshName(of: n),
                        ourAt: n.meshRefAt, at: n.location)
                }
            }
            for r in m.virtualRouters {
                for route in r.routes {
                    for t in route.targets where !(t.arn != nil && t.node.name.isEmpty) {
                        guard let node = nodes[t.node] else {
                            problem(t.location, "target virtual node \(t.node) does not exist")
                            continue
                        }
                        crossMesh(
                            "virtual node", t.node, theirs: m.meshName(of: node), theirAt: node.meshRefAt,
                            ours: meshOf(r), ourAt: r.meshRefAt, at: r.location)
                        if let port = t.port, !node.listeners.contains(where: { $0.portMapping.port == port }) {
                            problem(
                                t.location,
                                "port \(port) is not a listener port of virtual node \(t.node) (its listeners: \(node.listeners.map { String($0.portMapping.port) }.joined(separator: ", ")))"
                            )
                        }
                    }
                }
            }
            for s in m.virtualServices {
                switch s.provider {
                case .virtualNode(let n) where !(s.providerARN != nil && n.name.isEmpty):
                    if let node = nodes[n] {
                        crossMesh(
                            "virtual node", n, theirs: m.meshName(of: node), theirAt: node.meshRefAt, ours: meshOf(s),
                            ourAt: s.meshRefAt, at: s.location)
                    } else {
                        problem(s.providerAt ?? s.location, "provider virtual node \(n) does not exist")
                    }
                case .virtualRouter(let r) where !(s.providerARN != nil && r.name.isEmpty):
                    if let router = routers[r] {
                        crossMesh(
                            "virtual router", r, theirs: meshOf(router), theirAt: router.meshRefAt, ours: meshOf(s),
                            ourAt: s.meshRefAt, at: s.location)
                    } else {
                        problem(s.providerAt ?? s.location, "provider virtual router \(r) does not exist")
                    }
                default: break
                }
            }
            for g in m.gatewayRoutes {
                let targetKnown = services[g.target] != nil
                if !targetKnown && !(g.targetARN != nil && g.target.name.isEmpty) {
                    problem(g.targetAt ?? g.location, "target virtual service \(g.target) does not exist")
                }
                let gateways = m.gateways(of: g)
                if let ref = g.virtualGatewayRef, gateways.isEmpty {
                    problem(
                        g.virtualGatewayRefAt ?? g.location,
                        "virtual gateway \(ref) named by spec.virtualGatewayRef does not exist")
                } else if gateways.isEmpty {
                    problem(
                        g.location,
                        "no virtual gateway selects this gateway route: a VirtualGateway's spec.namespaceSelector must match namespace '\(g.ref.namespace)' (labels \(Self.show(m.labels(ofNamespace: g.ref.namespace)))) and its spec.gatewayRouteSelector, if any, the route's labels \(Self.show(g.labels)); or name one in spec.virtualGatewayRef"
                    )
                } else if gateways.count > 1 {
                    problem(
                        g.location,
                        "several virtual gateways select this gateway route (\(gateways.map(\.ref.description).sorted().joined(separator: ", "))); App Mesh takes one: narrow their selectors or name one in spec.virtualGatewayRef"
                    )
                } else {
                    let gw = gateways[0]
                    if let uid = g.virtualGatewayUID, let want = gw.uid, uid != want {
                        problem(
                            g.location,
                            "spec.virtualGatewayRef.uid '\(uid)' is not the uid of virtual gateway \(gw.ref) ('\(want)')"
                        )
                    }
                    let gwMesh = m.meshName(of: gw)
                    let routeMesh = m.meshName(meshRef: g.meshName, namespace: g.ref.namespace)
                    if let a = gwMesh, let b = routeMesh, a != b {
                        problem(
                            gw.meshRefAt ?? g.meshRefAt ?? g.location,
                            "virtualGateway referenced does not belong to the mesh referenced in GatewayRoute (gateway \(gw.ref) is in mesh \(a), gateway route \(g.ref) in mesh \(b))"
                        )
                    }
                    if let port = g.port,
                        !gw.listeners.contains(where: {
                            $0.portMapping.port == port && $0.portMapping.protocol == g.kind
                        })
                    {
                        problem(
                            g.portAt ?? g.location,
                            "\(port) is not a \(g.kind.rawValue) listener of virtual gateway \(gw.ref) (its listeners: \(gw.listeners.map { "\($0.portMapping.port)/\($0.portMapping.protocol.rawValue)" }.joined(separator: ", ")))"
                        )
                    } else if g.port == nil && !gw.listeners.contains(where: { $0.portMapping.protocol == g.kind }) {
                        problem(
                            g.location,
                            "virtual gateway \(gw.ref) has no \(g.kind.rawValue) listener for this \(g.kind.rawValue) gateway route"
                        )
                    }
                }
                if let s = services[g.target], let port = g.targetPort {
                    let ports: [UInt16]
                    switch s.provider {
                    case .virtualRouter(let r)?:
                        ports = routers[r]?.listeners.filter { $0.protocol != .tcp }.map(\.port) ?? []
                    case .virtualNode(let n)?:
                        ports =
                            nodes[n]?.listeners.filter { $0.portMapping.protocol != .tcp }.map(\.portMapping.port) ?? []
                    case nil: ports = []
                    }
                    if !ports.isEmpty && !ports.contains(port) {
                        problem(
                            g.targetPortAt ?? g.location,
                            "\(port) is not a port of virtual service \(g.target) (its ports: \(ports.map(String.init).joined(separator: ", ")))"
                        )
                    }
                }
                if let s = services[g.target] {
                    crossMesh(
                        "virtual service", g.target, theirs: meshOf(s), theirAt: s.meshRefAt,
                        ours: m.meshName(meshRef: g.meshName, namespace: g.ref.namespace), ourAt: g.meshRefAt,
                        at: g.location)
                }
            }
        }
    }
}
