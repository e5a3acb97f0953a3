import Foundation
import Yams

/// Reads App Mesh manifests (multi-document YAML) into the model, with every problem located to file, line and field.
public enum ManifestReader {
    static let apiVersion = "appmesh.k8s.aws/v1beta2"

    /// Per-file parse results by path and text, so re-reading a directory where one file changed parses one file.
    public final class FileCache: @unchecked Sendable {
        var entries: [String: (text: String, out: MeshManifests, problems: [MeshProblem])] = [:]
        let lock = NSLock()
        public init() {}
        func get(_ path: String, _ text: String) -> (MeshManifests, [MeshProblem])? {
            lock.lock(); defer { lock.unlock() }
            guard let e = entries[path], e.text == text else { return nil }
            return (e.out, e.problems)
        }
        func set(_ path: String, _ text: String, _ out: MeshManifests, _ problems: [MeshProblem]) {
            lock.lock(); defer { lock.unlock() }
            entries[path] = (text, out, problems)
        }
        /// Forgets files that are gone.
        func keep(_ paths: Set<String>) {
            lock.lock(); defer { lock.unlock() }
            entries = entries.filter { paths.contains($0.key) }
        }
    }

    /// Reads `files` (path and text, in the order given) and checks cross-references. Throws every problem at once.
    public static func read(_ files: [(path: String, text: String)], cache: FileCache? = nil) throws(MeshError) -> MeshManifests {
        var reader = Reader()
        for (path, text) in files {
            if let cache, let (out, problems) = cache.get(path, text) {
                reader.namespacesTwice(out); reader.out.append(out); reader.problems += problems; continue
            }
            var one = Reader()
            one.readFile(path: path, text: text)
            cache?.set(path, text, one.out, one.problems)
            reader.namespacesTwice(one.out); reader.out.append(one.out); reader.problems += one.problems
        }
        cache?.keep(Set(files.map(\.path)))
        reader.checkDuplicates()
        reader.checkReferences()
        if !reader.problems.isEmpty { throw MeshError(problems: reader.problems) }
        return reader.out
    }

    struct Reader {
        var out = MeshManifests()
        var problems: [MeshProblem] = []

        mutating func problem(_ file: String, _ node: Node?, _ field: String, _ message: String) {
            problems.append(MeshProblem(location: SourceLocation(file: file, line: (node?.mark?.line ?? 0), field: field), message: message))
        }

        mutating func readFile(path: String, text: String) {
            var documents: [Node] = []
            do {
                // The sequence stops at a parse error and keeps it; surface it rather than read half a file.
                var sequence = try Yams.compose_all(yaml: text)
                while let doc = sequence.next() { documents.append(doc) }
                if let error = sequence.error { throw error }
            } catch let e as YamlError {
                problems.append(MeshProblem(location: SourceLocation(file: path, line: Self.line(of: e), field: "(yaml)"), message: "not valid YAML: \(e)"))
                return
            } catch {
                problems.append(MeshProblem(location: SourceLocation(file: path, line: 0, field: "(yaml)"), message: "not valid YAML: \(error)"))
                return
            }
            for doc in documents { readDocument(path, doc) }
        }

        static func line(of e: YamlError) -> Int {
            switch e {
            case .scanner(_, _, let mark, _), .parser(_, _, let mark, _): return mark.line
            default: return 0
            }
        }

        mutating func readDocument(_ file: String, _ doc: Node) {
            guard doc.mapping != nil else { problem(file, doc, "(document)", "expected a Kubernetes object (a mapping)"); return }
            let kind = doc["kind"]?.string
            if kind == "Namespace", doc["apiVersion"]?.string == "v1" {
                guard let n = doc["metadata"]?["name"], !Self.isNull(n), let name = n.string, !name.isEmpty else {
                    // Its labels would belong to no namespace: say so rather than drop them.
                    problem(file, doc["metadata"] ?? doc, "metadata.name", "a Namespace needs a name"); return
                }
                // Read for the labels a virtual gateway's namespaceSelector matches.
                let l = labels(file, doc["metadata"]?["labels"], "metadata.labels")
                let here = SourceLocation(file: file, line: doc.mark?.line ?? 0, field: "Namespace \(name)")
                if !namespaceTwice(name, at: here) { out.namespaces[name] = MeshManifests.Namespace(labels: l, location: here) }
                return
            }
            guard let api = doc["apiVersion"]?.string, api == ManifestReader.apiVersion else {
                // Other Kubernetes objects (Deployments, Services) may share the files: skip them quietly,
                // but an App Mesh kind with the wrong version is a mistake.
                if let kind, ["Mesh", "VirtualNode", "VirtualRouter", "VirtualService", "VirtualGateway", "GatewayRoute"].contains(kind) {
                    problem(file, doc["apiVersion"] ?? doc, "apiVersion", "App Mesh \(kind) must be \(ManifestReader.apiVersion), found '\(doc["apiVersion"]?.string ?? "")'")
                }
                return
            }
            guard let n = doc["metadata"]?["name"], !Self.isNull(n), let name = n.string, !name.isEmpty else {
                problem(file, doc["metadata"] ?? doc, "metadata.name", "every App Mesh object needs a name"); return
            }
            let namespace = doc["metadata"]?["namespace"]?.string ?? "default"
            let ref = ResourceRef(name: name, namespace: namespace)
            let spec = doc["spec"]
            let loc = SourceLocation(file: file, line: doc.mark?.line ?? 0, field: "\(kind ?? "?") \(ref)")
            switch kind {
            case "Mesh":
                let egress = spec?["egressFilter"]?["type"]?.string ?? "DROP_ALL"
                if !["ALLOW_ALL", "DROP_ALL"].contains(egress) {
                    problem(file, spec?["egressFilter"]?["type"], "spec.egressFilter.type", "must be ALLOW_ALL or DROP_ALL, found '\(egress)'")
                }
                var mesh = Mesh(name: name, egressDropAll: egress != "ALLOW_ALL", location: loc)
                if let s = spec?["namespaceSelector"] { mesh.namespaceSelector = labelSelector(file, s, "spec.namespaceSelector") }
                out.meshes.append(mesh)
            case "VirtualNode":
                var node = VirtualNode(ref: ref, awsName: spec?["awsName"]?.string ?? "\(name)_\(namespace)", meshName: spec?["meshRef"]?["name"]?.string, listeners: [], hostname: nil, backends: [], accessLogPath: nil, location: loc)
                for (i, l) in (spec?["listeners"]?.sequence ?? []).enumerated() {
                    if let listener = nodeListener(file, l, "spec.listeners[\(i)]") { node.listeners.append(listener) }
                }
                if node.listeners.count > 1 {
                    problem(file, spec?["listeners"], "spec.listeners", "App Mesh virtual nodes have at most one listener")
                }
                if let dns = spec?["serviceDiscovery"]?["dns"] {
                    guard let h = dns["hostname"]?.string, !h.isEmpty else {
                        problem(file, dns, "spec.serviceDiscovery.dns.hostname", "a DNS service discovery needs a hostname"); break
                    }
                    node.hostname = h
                }
                for (i, b) in (spec?["backends"]?.sequence ?? []).enumerated() {
                    let field = "spec.backends[\(i)].virtualService.virtualServiceRef"
                    guard let r = b["virtualService"]?["virtualServiceRef"], let n = r["name"]?.string else {
                        problem(file, b, field, "a backend names a virtual service with virtualServiceRef.name"); continue
                    }
                    node.backends.append(ResourceRef(name: n, namespace: r["namespace"]?.string ?? namespace))
                }
                node.accessLogPath = spec?["logging"]?["accessLog"]?["file"]?["path"]?.string
                out.virtualNodes.append(node)
            case "VirtualRouter":
                var router = VirtualRouter(ref: ref, listeners: [], routes: [], location: loc)
                for (i, l) in (spec?["listeners"]?.sequence ?? []).enumerated() {
                    if let pm = portMapping(file, l["portMapping"], "spec.listeners[\(i)].portMapping") { router.listeners.append(pm) }
                }
                if router.listeners.isEmpty { problem(file, spec ?? doc, "spec.listeners", "a virtual router needs one listener") }
                for (i, r) in (spec?["routes"]?.sequence ?? []).enumerated() {
                    if let route = route(file, r, "spec.routes[\(i)]", namespace: namespace) { router.routes.append(route) }
                }
                out.virtualRouters.append(router)
            case "VirtualService":
                var service = VirtualService(ref: ref, awsName: spec?["awsName"]?.string ?? "\(name).\(namespace)", provider: nil, location: loc)
                if let vn = spec?["provider"]?["virtualNode"]?["virtualNodeRef"], let n = vn["name"]?.string {
                    service.provider = .virtualNode(ResourceRef(name: n, namespace: vn["namespace"]?.string ?? namespace))
                } else if let vr = spec?["provider"]?["virtualRouter"]?["virtualRouterRef"], let n = vr["name"]?.string {
                    service.provider = .virtualRouter(ResourceRef(name: n, namespace: vr["namespace"]?.string ?? namespace))
                } else if spec?["provider"] != nil {
                    problem(file, spec?["provider"], "spec.provider", "name a virtualNode.virtualNodeRef or a virtualRouter.virtualRouterRef")
                }
                out.virtualServices.append(service)
            case "VirtualGateway":
                var gw = VirtualGateway(ref: ref, awsName: spec?["awsName"]?.string ?? "\(name)_\(namespace)", meshName: spec?["meshRef"]?["name"]?.string, listeners: [], accessLogPath: spec?["logging"]?["accessLog"]?["file"]?["path"]?.string, location: loc)
                if let s = spec?["namespaceSelector"] { gw.namespaceSelector = labelSelector(file, s, "spec.namespaceSelector") }
                if let s = spec?["gatewayRouteSelector"] { gw.gatewayRouteSelector = labelSelector(file, s, "spec.gatewayRouteSelector") }
                for (i, l) in (spec?["listeners"]?.sequence ?? []).enumerated() {
                    if let listener = nodeListener(file, l, "spec.listeners[\(i)]") {
                        if listener.portMapping.protocol == .tcp {
                            problem(file, l["portMapping"]?["protocol"], "spec.listeners[\(i)].portMapping.protocol", "a virtual gateway listens for http, http2 or grpc, not tcp")
                        }
                        gw.listeners.append(listener)
                    }
                }
                if gw.listeners.isEmpty { problem(file, spec ?? doc, "spec.listeners", "a virtual gateway needs a listener") }
                out.virtualGateways.append(gw)
            case "GatewayRoute":
                if var route = gatewayRoute(file, spec, ref: ref, loc: loc) {
                    route.labels = labels(file, doc["metadata"]?["labels"], "metadata.labels")
                    if let g = spec?["virtualGatewayRef"], !Self.isNull(g) {
                        if let n = g["name"]?.string, !n.isEmpty { route.virtualGatewayRef = ResourceRef(name: n, namespace: g["namespace"]?.string ?? namespace) }
                        else { problem(file, g, "spec.virtualGatewayRef.name", "a virtualGatewayRef names a virtual gateway") }
                    }
                    out.gatewayRoutes.append(route)
                }
            default:
                problem(file, doc["kind"] ?? doc, "kind", "unknown App Mesh kind '\(kind ?? "")'; expected Mesh, VirtualNode, VirtualRouter, VirtualService, VirtualGateway or GatewayRoute")
            }
        }

        /// YAML null (`field:` with no value, `~`, `null`): Kubernetes reads it as the field left out.
        static func isNull(_ node: Node?) -> Bool {
            guard let s = node?.scalar else { return false }
            return s.style == .plain && ["", "~", "null", "Null", "NULL"].contains(s.string)
        }

        /// A string-to-string map such as `metadata.labels`.
        mutating func labels(_ file: String, _ node: Node?, _ field: String) -> [String: String] {
            guard let node, !Self.isNull(node) else { return [:] }
            guard let mapping = node.mapping else { problem(file, node, field, "expected a map of label names to values"); return [:] }
            var out: [String: String] = [:]
            for (k, v) in mapping {
                guard let key = k.string, let value = labelString(file, v, "\(field).\(k.string ?? "?")") else { continue }
                out[key] = value
            }
            return out
        }

        /// A label value (or a selector's value) as Kubernetes reads it: a string; null is the empty string. Kubernetes
        /// decodes `version: 1` or `canary: yes` as a number or a boolean and refuses it, so weir does too, rather than
        /// take "1" and accept what the cluster never would. Quoting (or `!!str`) makes it a string.
        mutating func labelString(_ file: String, _ v: Node, _ field: String) -> String? {
            guard let scalar = v.scalar else { problem(file, v, field, "a label value is a string"); return nil }
            if Self.isNull(v) { return "" }
            let tag = Tag.Name(rawValue: v.tag.description)  // the explicit tag, else what the text resolves to
            // Kubernetes' YAML reader (YAML 1.1) also takes y, Y, n and N for booleans.
            let shortBool = tag == .str && scalar.style == .plain && ["y", "Y", "n", "N"].contains(scalar.string)
            if [Tag.Name.int, .float, .bool].contains(tag) || shortBool {
                problem(file, v, field, "a label value is a string; YAML reads '\(scalar.string)' as a \(tag == .int || tag == .float ? "number" : "boolean"), so quote it")
                return nil
            }
            return scalar.string
        }

        /// A Kubernetes label selector: `matchLabels` and `matchExpressions` (In, NotIn, Exists, DoesNotExist).
        mutating func labelSelector(_ file: String, _ node: Node, _ field: String) -> LabelSelector? {
            guard node.mapping != nil else {
                // `field:` with no value is null: the same as leaving the selector out.
                if Self.isNull(node) { return nil }
                problem(file, node, field, "expected a label selector (matchLabels, matchExpressions)"); return nil
            }
            // A misspelt key (`matchlabels`) ignored would leave an empty selector, which takes everything.
            guard unknownKeys(file, node, field, allowed: ["matchLabels", "matchExpressions"]) else { return nil }
            var s = LabelSelector(matchLabels: labels(file, node["matchLabels"], field + ".matchLabels"))
            let expressions = node["matchExpressions"]
            if let expressions, !Self.isNull(expressions), expressions.sequence == nil {
                // Ignoring it would widen the selector.
                problem(file, expressions, field + ".matchExpressions", "expected a list of {key, operator, values}"); return nil
            }
            for (i, e) in (expressions?.sequence ?? []).enumerated() {
                let f = "\(field).matchExpressions[\(i)]"
                guard e.mapping != nil else { problem(file, e, f, "expected {key, operator, values}"); continue }
                guard unknownKeys(file, e, f, allowed: ["key", "operator", "values"]) else { continue }
                guard let key = e["key"]?.string, !key.isEmpty else { problem(file, e, f + ".key", "a match expression needs a key"); continue }
                guard let op = LabelSelector.Operator(rawValue: e["operator"]?.string ?? "") else {
                    problem(file, e["operator"] ?? e, f + ".operator", "must be In, NotIn, Exists or DoesNotExist, found '\(e["operator"]?.string ?? "")'"); continue
                }
                let items = e["values"].flatMap { Self.isNull($0) ? [] : $0.sequence.map(Array.init) } ?? []
                if let v = e["values"], !Self.isNull(v), v.sequence == nil || items.contains(where: { $0.scalar == nil }) {
                    problem(file, v, f + ".values", "expected a list of strings"); continue
                }
                let values = items.enumerated().compactMap { j, item in labelString(file, item, f + ".values[\(j)]") }
                guard values.count == items.count else { continue }
                if (op == .in || op == .notIn) && values.isEmpty { problem(file, e, f + ".values", "\(op.rawValue) needs at least one value"); continue }
                if (op == .exists || op == .doesNotExist) && !values.isEmpty { problem(file, e["values"], f + ".values", "\(op.rawValue) takes no values"); continue }
                s.matchExpressions.append(LabelSelector.Requirement(key: key, op: op, values: values))
            }
            return s
        }

        /// Reports each key of `node` outside `allowed`; returns whether there was none.
        mutating func unknownKeys(_ file: String, _ node: Node, _ field: String, allowed: Set<String>) -> Bool {
            let unknown = (node.mapping ?? [:]).compactMap { k, _ in k.string.flatMap { allowed.contains($0) ? nil : $0 } ?? nil }
            for k in unknown {
                problem(file, node[k] ?? node, "\(field).\(k)", "unknown field '\(k)'; a label selector has \(allowed.sorted().joined(separator: ", "))")
            }
            return unknown.isEmpty
        }

        mutating func portMapping(_ file: String, _ node: Node?, _ field: String) -> PortMapping? {
            guard let node else { problem(file, nil, field, "a listener needs a portMapping"); return nil }
            guard let port = node["port"]?.int, port >= 1, port <= 65535 else {
                problem(file, node["port"] ?? node, field + ".port", "must be a port from 1 to 65535, found '\(node["port"]?.string ?? "")'"); return nil
            }
            let p = node["protocol"]?.string ?? ""
            guard let proto = PortProtocol(rawValue: p) else {
                problem(file, node["protocol"] ?? node, field + ".protocol", "must be one of http, http2, grpc, tcp; found '\(p)'"); return nil
            }
            return PortMapping(port: UInt16(port), protocol: proto)
        }

        mutating func gatewayRoute(_ file: String, _ spec: Node?, ref: ResourceRef, loc: SourceLocation) -> GatewayRoute? {
            let kinds: [(String, PortProtocol)] = [("httpRoute", .http), ("http2Route", .http2), ("grpcRoute", .grpc)]
            let present = kinds.filter { spec?[$0.0] != nil }
            guard present.count == 1, let (key, kind) = present.first, let body = spec?[key] else {
                problem(file, spec, "spec", "a gateway route has exactly one of httpRoute, http2Route, grpcRoute"); return nil
            }
            let f = "spec.\(key)"
            guard let t = body["action"]?["target"]?["virtualService"]?["virtualServiceRef"], let name = t["name"]?.string else {
                problem(file, body["action"] ?? body, f + ".action.target.virtualService.virtualServiceRef.name", "a gateway route targets a virtual service"); return nil
            }
            var route = GatewayRoute(ref: ref, kind: kind, priority: spec?["priority"]?.int, prefix: body["match"]?["prefix"]?.string,
                                     hostname: nil, method: body["match"]?["method"]?.string,
                                     target: ResourceRef(name: name, namespace: t["namespace"]?.string ?? ref.namespace),
                                     targetPort: body["action"]?["target"]?["port"]?.int.map { UInt16(clamping: $0) },
                                     rewritePrefix: body["action"]?["rewrite"]?["prefix"]?["value"]?.string, location: loc)
            if let h = body["match"]?["hostname"] {
                if let e = h["exact"]?.string { route.hostname = .exact(e) }
                else if let s = h["suffix"]?.string { route.hostname = .suffix(s) }
                else { problem(file, h, f + ".match.hostname", "give exact or suffix") }
            }
            if let m = route.method, !Self.methods.contains(m) {
                problem(file, body["match"]?["method"], f + ".match.method", "must be one of \(Self.methods.sorted().joined(separator: ", ")), found '\(m)'")
            }
            for (i, h) in (body["match"]?["headers"]?.sequence ?? []).enumerated() {
                guard let n = h["name"]?.string else { problem(file, h, "\(f).match.headers[\(i)].name", "a header match names the header"); continue }
                route.headers.append(HeaderMatch(name: n, match: stringMatch(file, h["match"], "\(f).match.headers[\(i)].match"), invert: h["invert"]?.bool ?? false))
            }
            if kind != .grpc && route.prefix == nil && route.hostname == nil && body["match"]?["path"] == nil {
                problem(file, body["match"] ?? body, f + ".match", "match a prefix, a path or a hostname")
            }
            return route
        }

        mutating func nodeListener(_ file: String, _ l: Node, _ field: String) -> NodeListener? {
            guard let pm = portMapping(file, l["portMapping"], field + ".portMapping") else { return nil }
            var listener = NodeListener(portMapping: pm)
            if let h = l["healthCheck"] {
                let hf = field + ".healthCheck"
                let proto = h["protocol"]?.string.flatMap(PortProtocol.init(rawValue:))
                if proto == nil { problem(file, h["protocol"] ?? h, hf + ".protocol", "must be one of http, http2, grpc, tcp") }
                func int(_ key: String, _ range: ClosedRange<Int>) -> Int? {
                    guard let v = h[key]?.int, range.contains(v) else {
                        problem(file, h[key] ?? h, "\(hf).\(key)", "must be a whole number from \(range.lowerBound) to \(range.upperBound)"); return nil
                    }
                    return v
                }
                let healthy = int("healthyThreshold", 2...10), unhealthy = int("unhealthyThreshold", 2...10)
                let interval = int("intervalMillis", 5000...300_000), timeout = int("timeoutMillis", 2000...60_000)
                if (proto == .http || proto == .http2) && h["path"]?.string == nil {
                    problem(file, h, hf + ".path", "an HTTP health check needs a path")
                }
                if let proto, let healthy, let unhealthy, let interval, let timeout {
                    listener.healthCheck = HealthCheck(protocol: proto, path: h["path"]?.string, port: h["port"]?.int.map { UInt16(clamping: $0) },
                                                       healthyThreshold: healthy, unhealthyThreshold: unhealthy,
                                                       intervalMilliseconds: interval, timeoutMilliseconds: timeout)
                }
            }
            if let t = l["timeout"]?[pm.protocol.rawValue] {
                listener.perRequestTimeoutMilliseconds = duration(file, t["perRequest"], "\(field).timeout.\(pm.protocol.rawValue).perRequest")
                listener.idleTimeoutMilliseconds = duration(file, t["idle"], "\(field).timeout.\(pm.protocol.rawValue).idle")
            }
            if let o = l["outlierDetection"] {
                let of = field + ".outlierDetection"
                let errors = o["maxServerErrors"]?.int, percent = o["maxEjectionPercent"]?.int
                let interval = duration(file, o["interval"], of + ".interval"), base = duration(file, o["baseEjectionDuration"], of + ".baseEjectionDuration")
                if errors == nil || errors! < 1 { problem(file, o["maxServerErrors"] ?? o, of + ".maxServerErrors", "must be a whole number ≥ 1") }
                if percent == nil || !(0...100).contains(percent!) { problem(file, o["maxEjectionPercent"] ?? o, of + ".maxEjectionPercent", "must be from 0 to 100") }
                if let errors, errors >= 1, let percent, (0...100).contains(percent), let interval, let base {
                    listener.outlierDetection = OutlierDetection(maxServerErrors: errors, intervalMilliseconds: interval,
                                                                 baseEjectionMilliseconds: base, maxEjectionPercent: percent)
                }
            }
            if let p = l["connectionPool"]?[pm.protocol.rawValue] {
                listener.connectionPool = ConnectionPool(maxConnections: p["maxConnections"]?.int, maxPendingRequests: p["maxPendingRequests"]?.int,
                                                         maxRequests: p["maxRequests"]?.int)
            }
            return listener
        }

        mutating func route(_ file: String, _ r: Node, _ field: String, namespace: String) -> RouteSpec? {
            guard let name = r["name"]?.string else { problem(file, r, field + ".name", "every route needs a name"); return nil }
            let kinds: [(String, PortProtocol)] = [("httpRoute", .http), ("http2Route", .http2), ("grpcRoute", .grpc), ("tcpRoute", .tcp)]
            let present = kinds.filter { r[$0.0] != nil }
            guard present.count == 1, let (key, kind) = present.first, let body = r[key] else {
                problem(file, r, field, "a route has exactly one of httpRoute, http2Route, grpcRoute, tcpRoute"); return nil
            }
            var route = RouteSpec(name: name, kind: kind, priority: r["priority"]?.int, prefix: body["match"]?["prefix"]?.string, targets: [],
                                  location: SourceLocation(file: file, line: r.mark?.line ?? 0, field: field))
            let f = "\(field).\(key)"
            readMatch(file, body["match"], f + ".match", into: &route)
            if let retry = body["retryPolicy"] { route.retry = retryPolicy(file, retry, f + ".retryPolicy", kind: kind) }
            if let t = body["timeout"] {
                route.perRequestTimeoutMilliseconds = duration(file, t["perRequest"], f + ".timeout.perRequest")
                route.idleTimeoutMilliseconds = duration(file, t["idle"], f + ".timeout.idle")
            }
            if let p = route.priority, p < 0 || p > 1000 {
                problem(file, r["priority"], field + ".priority", "must be from 0 to 1000, found \(p)")
            }
            let targets = body["action"]?["weightedTargets"]?.sequence ?? []
            if targets.isEmpty { problem(file, body["action"] ?? body, "\(field).\(key).action.weightedTargets", "a route needs at least one weighted target") }
            for (i, t) in targets.enumerated() {
                let tf = "\(field).\(key).action.weightedTargets[\(i)]"
                guard let n = t["virtualNodeRef"]?["name"]?.string else { problem(file, t, tf + ".virtualNodeRef.name", "a target names a virtual node"); continue }
                guard let w = t["weight"]?.int, w >= 0, w <= 100 else {
                    problem(file, t["weight"] ?? t, tf + ".weight", "must be a weight from 0 to 100, found '\(t["weight"]?.string ?? "")'"); continue
                }
                route.targets.append(WeightedTarget(node: ResourceRef(name: n, namespace: t["virtualNodeRef"]?["namespace"]?.string ?? namespace),
                                                    weight: w, port: t["port"]?.int.map { UInt16(clamping: $0) },
                                                    location: SourceLocation(file: file, line: t.mark?.line ?? 0, field: tf)))
            }
            if !route.targets.isEmpty && route.targets.allSatisfy({ $0.weight == 0 }) {
                problem(file, body["action"], "\(field).\(key).action.weightedTargets", "the weights add up to 0, so no request could be routed")
            }
            return route
        }

        static let methods: Set<String> = ["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"]
        static let httpRetryEvents: Set<String> = ["server-error", "gateway-error", "client-error", "stream-error"]
        static let tcpRetryEvents: Set<String> = ["connection-error"]
        static let grpcRetryEvents: Set<String> = ["cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable"]

        mutating func readMatch(_ file: String, _ m: Node?, _ field: String, into route: inout RouteSpec) {
            guard let m else { return }
            if let p = m["path"] {
                if let e = p["exact"]?.string { route.path = .exact(e) }
                else if let r = p["regex"]?.string { route.path = .regex(r) }
                else { problem(file, p, field + ".path", "give exact or regex") }
            }
            if let method = m["method"]?.string {
                if Self.methods.contains(method) { route.method = method }
                else { problem(file, m["method"], field + ".method", "must be one of \(Self.methods.sorted().joined(separator: ", ")), found '\(method)'") }
            }
            for (i, h) in (m["headers"]?.sequence ?? []).enumerated() {
                let hf = "\(field).headers[\(i)]"
                guard let name = h["name"]?.string, !name.isEmpty else { problem(file, h, hf + ".name", "a header match names the header"); continue }
                route.headers.append(HeaderMatch(name: name, match: stringMatch(file, h["match"], hf + ".match"), invert: h["invert"]?.bool ?? false))
            }
            for (i, q) in (m["queryParameters"]?.sequence ?? []).enumerated() {
                guard let name = q["name"]?.string, !name.isEmpty else { problem(file, q, "\(field).queryParameters[\(i)].name", "a query match names the parameter"); continue }
                route.query.append(QueryMatch(name: name, exact: q["match"]?["exact"]?.string))
            }
            route.grpcService = m["serviceName"]?.string
            route.grpcMethod = m["methodName"]?.string
            if route.grpcMethod != nil && route.grpcService == nil {
                problem(file, m["methodName"], field + ".methodName", "a gRPC method match needs serviceName too")
            }
        }

        mutating func stringMatch(_ file: String, _ m: Node?, _ field: String) -> StringMatch? {
            guard let m else { return nil }
            if let v = m["exact"]?.string { return .exact(v) }
            if let v = m["prefix"]?.string { return .prefix(v) }
            if let v = m["suffix"]?.string { return .suffix(v) }
            if let v = m["regex"]?.string { return .regex(v) }
            if let r = m["range"] {
                guard let a = r["start"]?.int, let b = r["end"]?.int, a < b else {
                    problem(file, r, field + ".range", "needs integer start < end"); return nil
                }
                return .range(start: a, end: b)
            }
            problem(file, m, field, "give one of exact, prefix, suffix, regex, range")
            return nil
        }

        /// `{unit: ms|s, value: N}` in milliseconds.
        mutating func duration(_ file: String, _ d: Node?, _ field: String) -> Int? {
            guard let d else { return nil }
            guard let value = d["value"]?.int, value >= 0 else {
                problem(file, d["value"] ?? d, field + ".value", "must be a whole number ≥ 0"); return nil
            }
            switch d["unit"]?.string {
            case "ms": return value
            case "s": return value * 1000
            default:
                problem(file, d["unit"] ?? d, field + ".unit", "must be ms or s, found '\(d["unit"]?.string ?? "")'"); return nil
            }
        }

        mutating func retryPolicy(_ file: String, _ r: Node, _ field: String, kind: PortProtocol) -> RetryPolicy? {
            guard let max = r["maxRetries"]?.int, max >= 0 else {
                problem(file, r["maxRetries"] ?? r, field + ".maxRetries", "must be a whole number ≥ 0"); return nil
            }
            guard let per = duration(file, r["perRetryTimeout"], field + ".perRetryTimeout") else {
                if r["perRetryTimeout"] == nil { problem(file, r, field + ".perRetryTimeout", "a retry policy needs perRetryTimeout") }
                return nil
            }
            func events(_ key: String, _ allowed: Set<String>) -> [String] {
                var out: [String] = []
                for (i, e) in (r[key]?.sequence ?? []).enumerated() {
                    guard let v = e.string, allowed.contains(v) else {
                        problem(file, e, "\(field).\(key)[\(i)]", "must be one of \(allowed.sorted().joined(separator: ", ")), found '\(e.string ?? "")'"); continue
                    }
                    out.append(v)
                }
                return out
            }
            let policy = RetryPolicy(maxRetries: max, perRetryTimeoutMilliseconds: per,
                                     httpRetryEvents: events("httpRetryEvents", Self.httpRetryEvents),
                                     tcpRetryEvents: events("tcpRetryEvents", Self.tcpRetryEvents),
                                     grpcRetryEvents: kind == .grpc ? events("grpcRetryEvents", Self.grpcRetryEvents) : [])
            if policy.httpRetryEvents.isEmpty && policy.tcpRetryEvents.isEmpty && policy.grpcRetryEvents.isEmpty {
                problem(file, r, field, "name at least one retry event (httpRetryEvents, tcpRetryEvents\(kind == .grpc ? ", grpcRetryEvents" : ""))")
            }
            return policy
        }

        /// The Namespace objects in `next` (one file's) that an earlier file already defined.
        mutating func namespacesTwice(_ next: MeshManifests) {
            for (name, here) in next.namespaces.mapValues(\.location).sorted(by: { $0.key < $1.key }) { _ = namespaceTwice(name, at: here) }
        }

        /// Reports a Namespace object already read (in this file or an earlier one); returns whether it was.
        mutating func namespaceTwice(_ name: String, at here: SourceLocation) -> Bool {
            guard let first = out.namespaces[name]?.location else { return false }
            problems.append(MeshProblem(location: here, message: "Namespace \(name) is defined twice (first at \(first.file):\(first.line))"))
            return true
        }

        static func show(_ labels: [String: String]) -> String {
            "{" + labels.sorted { $0.key < $1.key }.map { "\($0.key): \($0.value)" }.joined(separator: ", ") + "}"
        }

        /// Every name a resource refers to must exist.
        mutating func checkReferences() {
            let nodes = Set(out.virtualNodes.map(\.ref)), routers = Set(out.virtualRouters.map(\.ref)), services = Set(out.virtualServices.map(\.ref))
            for n in out.virtualNodes {
                for b in n.backends where !services.contains(b) {
                    problems.append(MeshProblem(location: n.location, message: "backend virtual service \(b) does not exist"))
                }
            }
            for r in out.virtualRouters {
                for route in r.routes {
                    for t in route.targets where !nodes.contains(t.node) {
                        problems.append(MeshProblem(location: t.location, message: "target virtual node \(t.node) does not exist"))
                    }
                }
            }
            for g in out.gatewayRoutes where !services.contains(g.target) {
                problems.append(MeshProblem(location: g.location, message: "target virtual service \(g.target) does not exist"))
            }
            for g in out.gatewayRoutes {
                let gateways = out.gateways(of: g)
                if let ref = g.virtualGatewayRef, gateways.isEmpty {
                    problems.append(MeshProblem(location: g.location, message: "virtual gateway \(ref) named by spec.virtualGatewayRef does not exist"))
                } else if gateways.isEmpty {
                    problems.append(MeshProblem(location: g.location, message: "no virtual gateway selects this gateway route: a VirtualGateway's spec.namespaceSelector must match namespace '\(g.ref.namespace)' (labels \(Self.show(out.labels(ofNamespace: g.ref.namespace)))) and its spec.gatewayRouteSelector, if any, the route's labels \(Self.show(g.labels)); or name one in spec.virtualGatewayRef"))
                } else if gateways.count > 1 {
                    problems.append(MeshProblem(location: g.location, message: "several virtual gateways select this gateway route (\(gateways.map(\.ref.description).sorted().joined(separator: ", "))); App Mesh takes one: narrow their selectors or name one in spec.virtualGatewayRef"))
                }
            }
            // With several meshes, an object that names none joins the one mesh whose namespaceSelector takes
            // its namespace; App Mesh's webhook refused an object that no mesh or several meshes took.
            if out.meshes.count > 1 {
                let members = out.virtualNodes.filter { $0.meshName == nil }.map { ($0.ref, $0.location) }
                    + out.virtualGateways.filter { $0.meshName == nil }.map { ($0.ref, $0.location) }
                for (ref, loc) in members {
                    let meshes = out.meshes(selecting: ref.namespace).map(\.name)
                    if meshes.count != 1 {
                        problems.append(MeshProblem(location: loc, message: meshes.isEmpty
                            ? "no mesh takes namespace '\(ref.namespace)' (labels \(Self.show(out.labels(ofNamespace: ref.namespace)))): with several meshes, give spec.meshRef or a Mesh spec.namespaceSelector that matches"
                            : "several meshes take namespace '\(ref.namespace)' (\(meshes.sorted().joined(separator: ", "))): give spec.meshRef or narrow their namespaceSelectors"))
                    }
                }
            }
            for s in out.virtualServices {
                switch s.provider {
                case .virtualNode(let n) where !nodes.contains(n):
                    problems.append(MeshProblem(location: s.location, message: "provider virtual node \(n) does not exist"))
                case .virtualRouter(let r) where !routers.contains(r):
                    problems.append(MeshProblem(location: s.location, message: "provider virtual router \(r) does not exist"))
                default: break
                }
            }
        }

        /// Every object defined twice, with where it was first. Runs before the other checks: a second Mesh also
        /// makes "several meshes", and the duplicate is the cause to name.
        mutating func checkDuplicates() {
            var first: [String: SourceLocation] = [:]
            let objects: [(String, String, SourceLocation)] = out.meshes.map { ("Mesh", $0.name, $0.location) }
                + out.virtualNodes.map { ("VirtualNode", "\($0.ref)", $0.location) }
                + out.virtualRouters.map { ("VirtualRouter", "\($0.ref)", $0.location) }
                + out.virtualServices.map { ("VirtualService", "\($0.ref)", $0.location) }
                + out.virtualGateways.map { ("VirtualGateway", "\($0.ref)", $0.location) }
                + out.gatewayRoutes.map { ("GatewayRoute", "\($0.ref)", $0.location) }
            for (kind, name, loc) in objects {
                if let f = first["\(kind) \(name)"] {
                    problems.append(MeshProblem(location: loc, message: "\(kind) \(name) is defined twice (first at \(f.file):\(f.line))"))
                } else {
                    first["\(kind) \(name)"] = loc
                }
            }
        }
    }
}
