import EnvoyAPI
import Foundation
import SwiftProtobuf

/// An HTTP request as `weir mesh explain` takes it: `METHOD URL` and `name: value` headers, seen as Envoy sees them
/// (`:method`, `:scheme`, `:authority`, `:path` and lower-cased header names).
public struct ExplainRequest: Sendable, Hashable {
    public var method: String
    public var scheme: String
    /// The Host header as a client sends it: the URL's host, with `:port` unless it is the scheme's default.
    public var authority: String
    /// The port the client connects to: the original destination port Envoy's listener sees.
    public var port: UInt16
    /// The path with its query string.
    public var path: String
    /// Headers by lower-cased name, in the order given (a repeated header is joined with "," as Envoy matches it).
    public var headers: [String: String]

    /// Parses `GET http://color:8080/path?q=1` and `name: value` headers; a `host` header replaces the authority.
    public static func parse(_ line: String, headers given: [String]) throws(ExplainProblem) -> ExplainRequest {
        let parts = line.split(separator: " ", omittingEmptySubsequences: true)
        guard parts.count == 2 else {
            throw ExplainProblem("--request '\(line)': give a method and a URL, as 'GET http://color:8080/path'")
        }
        let method = String(parts[0])
        guard method.allSatisfy({ $0.isLetter && $0.isUppercase }) else {
            throw ExplainProblem("--request '\(line)': '\(method)' is not an HTTP method (GET, POST, …)")
        }
        let url = String(parts[1])
        guard let schemeEnd = url.range(of: "://") else {
            throw ExplainProblem("--request '\(line)': the URL needs a scheme and a host, as http://color:8080/")
        }
        let scheme = url[..<schemeEnd.lowerBound].lowercased()
        // An application sends its sidecar plain HTTP (the sidecar originates any TLS); a TLS client is not modelled.
        guard scheme == "http" else {
            throw ExplainProblem(
                "--request '\(line)': scheme '\(scheme)': explain follows plain http, as an application sends it to its sidecar"
            )
        }
        let rest = url[schemeEnd.upperBound...]
        let slash = rest.firstIndex { $0 == "/" || $0 == "?" || $0 == "#" } ?? rest.endIndex
        let hostPort = String(rest[..<slash])
        var path = String(rest[slash...])
        if path.hasPrefix("#") { path = "" }
        if path.isEmpty { path = "/" } else if path.hasPrefix("?") { path = "/" + path }
        if let hash = path.firstIndex(of: "#") { path = String(path[..<hash]) }
        let defaultPort: UInt16 = 80
        var host = hostPort
        var port = defaultPort
        // host, host:port, [v6], [v6]:port
        func number(_ s: Substring) -> UInt16? { s.allSatisfy { $0.isASCII && $0.isNumber } ? UInt16(s) : nil }
        if let close = hostPort.lastIndex(of: "]") {
            let after = hostPort[hostPort.index(after: close)...]
            host = String(hostPort[...close])
            guard hostPort.hasPrefix("["), after.isEmpty || after.hasPrefix(":") else {
                throw ExplainProblem("--request '\(line)': '\(hostPort)' is not a host: give [IPv6]:port")
            }
            if after.hasPrefix(":") {
                guard let p = number(after.dropFirst()), p > 0 else {
                    throw ExplainProblem("--request '\(line)': port '\(after.dropFirst())' is not from 1 to 65535")
                }
                port = p
            }
        } else if let colon = hostPort.lastIndex(of: ":") {
            host = String(hostPort[..<colon])
            guard !host.contains(":") else {
                throw ExplainProblem("--request '\(line)': put an IPv6 address in brackets, as http://[fd00::1]:8080/")
            }
            guard let p = number(hostPort[hostPort.index(after: colon)...]), p > 0 else {
                throw ExplainProblem(
                    "--request '\(line)': port '\(hostPort[hostPort.index(after: colon)...])' is not from 1 to 65535")
            }
            port = p
        }
        guard !host.isEmpty, !host.contains(where: { $0 == " " || $0 == "@" }) else {
            throw ExplainProblem("--request '\(line)': the URL has no host")
        }
        var headers: [String: String] = [:]
        var authority = port == defaultPort ? host : "\(host):\(port)"
        for h in given {
            if h.hasPrefix(":") {
                throw ExplainProblem("-H '\(h)': pseudo-headers (:method, :path, :authority) come from --request")
            }
            guard let colon = h.firstIndex(of: ":"), colon != h.startIndex else {
                throw ExplainProblem("-H '\(h)': give a header as 'name: value'")
            }
            let name = h[..<colon].trimmingCharacters(in: .whitespaces).lowercased()
            let value = h[h.index(after: colon)...].trimmingCharacters(in: .whitespaces)
            guard !name.hasPrefix(":"), name.allSatisfy({ $0.isLetter || $0.isNumber || "-_.".contains($0) }) else {
                throw ExplainProblem("-H '\(h)': '\(name)' is not a header name")
            }
            if name == "host" {
                authority = value
                continue
            }
            headers[name] = headers[name].map { $0 + "," + value } ?? value
        }
        return ExplainRequest(
            method: method, scheme: scheme, authority: authority, port: port, path: path, headers: headers)
    }

    /// A header as Envoy's matchers see it, pseudo-headers included; nil when absent.
    func header(_ name: String) -> String? {
        switch name.lowercased() {
        case ":method": method
        case ":scheme": scheme
        case ":authority", "host": authority
        case ":path": path
        case let n: headers[n]
        }
    }

    var pathWithoutQuery: String { String(path[..<(path.firstIndex(of: "?") ?? path.endIndex)]) }

    /// The query parameters, first value of each name, as Envoy's query matchers take them (not decoded).
    var query: [String: String] {
        guard let q = path.firstIndex(of: "?") else { return [:] }
        var out: [String: String] = [:]
        for pair in path[path.index(after: q)...].split(separator: "&") {
            let kv = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            let name = String(kv[0])
            let value = kv.count > 1 ? String(kv[1]) : ""
            if out[name] == nil { out[name] = value }
        }
        return out
    }
}

/// A request `explain` cannot take, with what to give instead.
public struct ExplainProblem: Error, Sendable, CustomStringConvertible {
    public let description: String
    init(_ d: String) { description = d }
}

/// One target of a route or TCP proxy and its weight (1 for a single cluster).
public struct RouteTarget: Sendable, Hashable {
    public var cluster: String
    public var weight: UInt32
}

/// What Envoy does with the request: the listener, filter chain, virtual host and route it picks, each step in
/// words, and the outcome.
public struct RouteExplanation: Sendable {
    public enum Outcome: Sendable, Hashable, CustomStringConvertible {
        /// An HTTP route matched: its name and the clusters Envoy picks from, by weight.
        case routed(route: String, targets: [RouteTarget])
        /// The port carries TCP: Envoy proxies the connection, without HTTP routing.
        case tcp(targets: [RouteTarget])
        /// A route answers itself (status).
        case direct(route: String, status: UInt32)
        /// Envoy answers 404 (`NR`: no route): no virtual host or no route matches.
        case notFound
        /// Envoy has no listener or filter chain for the connection and closes it.
        case closed

        /// One line: `route NAME -> CLUSTER WEIGHT, …`, `tcp -> CLUSTER`, `route NAME answers STATUS`, `404`, `closed`.
        public var description: String {
            func list(_ t: [RouteTarget]) -> String {
                t.count == 1 ? t[0].cluster : t.map { "\($0.cluster) \($0.weight)" }.joined(separator: ", ")
            }
            switch self {
            case .routed(let route, let targets): return "route \(route) -> \(list(targets))"
            case .tcp(let targets): return "tcp -> \(list(targets))"
            case .direct(let route, let status): return "route \(route) answers \(status)"
            case .notFound: return "404"
            case .closed: return "closed"
            }
        }
    }

    /// The steps, label and text, in Envoy's order.
    public var steps: [(label: String, text: String)] = []
    public var outcome: Outcome = .closed

    /// The explanation as lines, labels aligned.
    public var text: String {
        let width = (steps.map(\.label.count).max() ?? 0) + 2
        return steps.map { s in
            s.label.padding(toLength: width, withPad: " ", startingAt: 0) + s.text
        }.joined(separator: "\n") + "\n"
    }
}

/// Follows a request through one node's Envoy resources as Envoy 1.40 would: the listener at the request's port, or
/// the egress listener where redirected outbound traffic arrives; its filter chain by destination port; the route
/// configuration; the virtual host by domain (exact, then the longest `*suffix`, then the longest `prefix*`, then
/// `*`); the first route whose every condition holds. Pure: no I/O.
public struct RouteExplainer: Sendable {
    let resources: EnvoyResources
    let egressPort: UInt16

    public init(_ resources: EnvoyResources, egressPort: UInt16) {
        self.resources = resources
        self.egressPort = egressPort
    }

    public func explain(_ request: ExplainRequest) -> RouteExplanation {
        var e = RouteExplanation()
        func step(_ label: String, _ text: String) { e.steps.append((label, text)) }
        step(
            "request",
            "\(request.method) \(request.scheme)://\(request.authority)\(request.path) (port \(request.port))")
        let bound = resources.listeners.filter { !$0.hasApiListener }
        let direct = bound.first { $0.address.socketAddress.portValue == UInt32(request.port) }
        guard let listener = direct ?? bound.first(where: { $0.address.socketAddress.portValue == UInt32(egressPort) })
        else {
            step("listener", "none: this node has no listener on port \(request.port) and no egress listener")
            step("answer", "the connection is not Envoy's to handle")
            return e
        }
        let at = "\(listener.address.socketAddress.address):\(listener.address.socketAddress.portValue)"
        step(
            "listener",
            direct != nil
                ? "\(listener.name) (\(at))"
                : "\(listener.name) (\(at)): the pod's rules redirect outbound TCP here; the original destination port is \(request.port)"
        )
        // Envoy's order: the chains for the destination port if any has it, else those for any port; among them
        // one that takes plaintext (a TLS-only chain does not); else the default chain.
        let forPort = listener.filterChains.filter {
            $0.filterChainMatch.hasDestinationPort && $0.filterChainMatch.destinationPort.value == UInt32(request.port)
        }
        let candidates =
            forPort.isEmpty ? listener.filterChains.filter { !$0.filterChainMatch.hasDestinationPort } : forPort
        let chain =
            candidates.first { c in
                let m = c.filterChainMatch
                let plaintext =
                    m.transportProtocol == "raw_buffer" || (m.transportProtocol.isEmpty && !c.hasTransportSocket)
                return plaintext && m.prefixRanges.isEmpty && m.applicationProtocols.isEmpty
            } ?? (listener.hasDefaultFilterChain ? listener.defaultFilterChain : nil)
        guard let chain else {
            let ports = listener.filterChains.compactMap {
                $0.filterChainMatch.hasDestinationPort ? "\($0.filterChainMatch.destinationPort.value)" : nil
            }
            step("filter chain", "none for port \(request.port) (chains for ports \(ports.joined(separator: ", ")))")
            step("answer", "Envoy closes the connection: the node has no backend on port \(request.port)")
            return e
        }
        let chainName = chain.name.isEmpty ? "(unnamed)" : chain.name
        for filter in chain.filters {
            if let tcp = try? Envoy_Extensions_Filters_Network_TcpProxy_V3_TcpProxy(unpackingAny: filter.typedConfig),
                filter.name == "envoy.filters.network.tcp_proxy"
            {
                step("filter chain", "\(chainName): TCP proxy (no HTTP routing on this port)")
                let targets = Self.targets(tcp)
                step("targets", describeTargets(targets))
                for t in targets { step("cluster", describeCluster(t.cluster)) }
                step(
                    "answer",
                    "Envoy proxies the connection's bytes to \(targets.map(\.cluster).joined(separator: " or "))")
                e.outcome = .tcp(targets: targets)
                return e
            }
            guard filter.name == "envoy.filters.network.http_connection_manager",
                let hcm = try? Envoy_Extensions_Filters_Network_HttpConnectionManager_V3_HttpConnectionManager(
                    unpackingAny: filter.typedConfig)
            else { continue }
            let config: Envoy_Config_Route_V3_RouteConfiguration?
            let configName: String
            switch hcm.routeSpecifier {
            case .rds(let rds)?:
                configName = rds.routeConfigName
                config = resources.routes.first { $0.name == rds.routeConfigName }
            case .routeConfig(let inline)?:
                configName = inline.name + " (inline)"
                config = inline
            case nil:
                configName = "(none)"
                config = nil
            }
            step("filter chain", "\(chainName): HTTP, route configuration \(configName)")
            guard let config else {
                step("answer", "Envoy has no route configuration \(configName) yet and answers 404 (NR)")
                e.outcome = .notFound
                return e
            }
            route(request, in: config, into: &e)
            return e
        }
        step("answer", "filter chain \(chainName) has no TCP proxy or HTTP connection manager: Envoy closes it")
        return e
    }

    // MARK: HTTP

    func route(
        _ request: ExplainRequest, in config: Envoy_Config_Route_V3_RouteConfiguration, into e: inout RouteExplanation
    ) {
        func step(_ label: String, _ text: String) { e.steps.append((label, text)) }
        let host = request.authority.lowercased()
        guard let (vhost, how) = Self.virtualHost(host, in: config.virtualHosts) else {
            let all = config.virtualHosts.flatMap(\.domains)
            step("virtual host", "none: no domain matches Host '\(request.authority)'")
            step("domains", all.isEmpty ? "(none)" : all.joined(separator: ", "))
            step(
                "answer",
                "Envoy answers 404 (server: envoy, response flag NR): call the service by a name in the domains above (a virtual service's awsName, with or without :port)"
            )
            e.outcome = .notFound
            return
        }
        step("virtual host", "\(vhost.name) (domains \(vhost.domains.joined(separator: ", "))): '\(host)' \(how)")
        for (i, r) in vhost.routes.enumerated() {
            let label = "route \(i + 1)/\(vhost.routes.count)"
            if let failed = Self.failure(of: r.match, request) {
                step(label, "\(r.name): no: \(failed)")
                continue
            }
            step(label, "\(r.name): matches (\(Self.describe(r.match)))")
            switch r.action {
            case .route(let action)?:
                let targets = Self.targets(action)
                step("targets", describeTargets(targets))
                var details: [String] = []
                if action.hasTimeout { details.append("timeout \(Self.seconds(action.timeout))") }
                if action.hasIdleTimeout { details.append("idle timeout \(Self.seconds(action.idleTimeout))") }
                if action.hasRetryPolicy {
                    let p = action.retryPolicy
                    details.append(
                        "retries: \(p.hasNumRetries ? p.numRetries.value : 1) on \(p.retryOn)"
                            + (p.hasPerTryTimeout ? ", \(Self.seconds(p.perTryTimeout)) each" : ""))
                }
                if !details.isEmpty { step("policy", details.joined(separator: "; ")) }
                for t in targets { step("cluster", describeCluster(t.cluster)) }
                step("answer", "Envoy sends the request to \(targets.map(\.cluster).joined(separator: " or "))")
                e.outcome = .routed(route: r.name, targets: targets)
            case .directResponse(let d)?:
                step("answer", "Envoy answers \(d.status) itself (direct response)")
                e.outcome = .direct(route: r.name, status: d.status)
            case nil:
                step("answer", "the route has no action: Envoy answers 404 (NR)")
                e.outcome = .notFound
            }
            return
        }
        step(
            "answer",
            vhost.routes.isEmpty
                ? "the virtual host has no routes: Envoy answers 404 (server: envoy, response flag NR)"
                : "no route matched: Envoy answers 404 (server: envoy, response flag NR)")
        e.outcome = .notFound
    }

    /// Envoy's virtual host choice for a lower-cased Host: exact, longest `*suffix`, longest `prefix*`, then `*`.
    static func virtualHost(_ host: String, in hosts: [Envoy_Config_Route_V3_VirtualHost])
        -> (Envoy_Config_Route_V3_VirtualHost, String)?
    {
        if let v = hosts.first(where: { $0.domains.contains { $0.lowercased() == host } }) {
            return (v, "matches a domain exactly")
        }
        // The longest wildcard of one kind that matches at least one character of the host.
        func longest(suffix: Bool) -> (Envoy_Config_Route_V3_VirtualHost, String)? {
            var best: (Envoy_Config_Route_V3_VirtualHost, Int, String)?
            for v in hosts {
                for d in v.domains.map({ $0.lowercased() })
                where d.count > 1 && (suffix ? d.hasPrefix("*") : d.hasSuffix("*")) {
                    let fixed = suffix ? d.dropFirst() : d.dropLast()
                    let fits = suffix ? host.hasSuffix(fixed) : host.hasPrefix(fixed)
                    if host.count > fixed.count, fits, fixed.count > (best?.1 ?? -1) { best = (v, fixed.count, d) }
                }
            }
            return best.map { ($0.0, "matches the wildcard domain \($0.2)") }
        }
        if let found = longest(suffix: true) ?? longest(suffix: false) { return found }
        if let v = hosts.first(where: { $0.domains.contains("*") }) { return (v, "falls to the catch-all domain *") }
        return nil
    }

    /// Why a route's match fails for the request, or nil when every condition holds.
    static func failure(of m: Envoy_Config_Route_V3_RouteMatch, _ r: ExplainRequest) -> String? {
        let sensitive = !m.hasCaseSensitive || m.caseSensitive.value
        func fold(_ s: String) -> String { sensitive ? s : s.lowercased() }
        switch m.pathSpecifier {
        case .prefix(let p)?:
            // Envoy matches every path condition on the path without its query string and fragment.
            if !fold(r.pathWithoutQuery).hasPrefix(fold(p)) {
                return "path '\(r.pathWithoutQuery)' does not start with '\(p)'"
            }
        case .path(let p)?:
            if fold(r.pathWithoutQuery) != fold(p) { return "path '\(r.pathWithoutQuery)' is not '\(p)'" }
        case .safeRegex(let re)?:
            switch wholeMatch(re.regex, r.pathWithoutQuery) {
            case false?: return "path '\(r.pathWithoutQuery)' does not match the regex '\(re.regex)'"
            case nil: return "the regex '\(re.regex)' cannot be evaluated here (Envoy uses RE2)"
            case true?: break
            }
        case nil:
            return "the route has no path condition (Envoy refuses such a route)"
        }
        if m.hasGrpc {
            let type = r.header("content-type") ?? ""
            if !(type == "application/grpc" || type.hasPrefix("application/grpc+")) {
                return "it is for gRPC only: content-type '\(type)' is not application/grpc"
            }
        }
        for h in m.headers {
            if let why = headerFailure(h, r) { return why }
        }
        let query = r.query
        for q in m.queryParameters {
            let value = query[q.name]
            switch q.queryParameterMatchSpecifier {
            case .presentMatch(let present)?:
                if (value != nil) != present {
                    return present ? "query parameter '\(q.name)' is absent" : "query parameter '\(q.name)' is present"
                }
            case .stringMatch(let s)?:
                guard let value else { return "query parameter '\(q.name)' is absent (wants \(describe(s)))" }
                switch stringMatches(s, value) {
                case false?: return "query parameter \(q.name)='\(value)' does not match \(describe(s))"
                case nil: return "query parameter \(q.name): \(describe(s)) cannot be evaluated here"
                case true?: break
                }
            case nil:
                if value == nil { return "query parameter '\(q.name)' is absent" }
            }
        }
        return nil
    }

    /// Envoy's header matcher: an absent header fails every matcher but "not present" (`present_match` false, or
    /// true inverted); a present one is matched, then inverted if asked.
    static func headerFailure(_ h: Envoy_Config_Route_V3_HeaderMatcher, _ r: ExplainRequest) -> String? {
        let wants = describe(h)
        guard let value = r.header(h.name) else {
            if case .presentMatch(let present)? = h.headerMatchSpecifier, present == h.invertMatch { return nil }
            return "header \(h.name) is absent (wants \(wants))"
        }
        let matched: Bool
        switch h.headerMatchSpecifier {
        case .presentMatch(let present)?: matched = present
        case .stringMatch(let s)?:
            guard let m = stringMatches(s, value) else {
                return "header \(h.name): \(wants) cannot be evaluated here (Envoy uses RE2)"
            }
            matched = m
        case .rangeMatch(let range)?:
            if let v = Int64(value) { matched = v >= range.start && v < range.end } else { matched = false }
        case nil: matched = true
        }
        if matched != h.invertMatch { return nil }
        return "header \(h.name) is '\(value)' (wants \(wants))"
    }

    static func stringMatches(_ s: Envoy_Type_Matcher_V3_StringMatcher, _ value: String) -> Bool? {
        let v = s.ignoreCase ? value.lowercased() : value
        func f(_ x: String) -> String { s.ignoreCase ? x.lowercased() : x }
        switch s.matchPattern {
        case .exact(let x)?: return v == f(x)
        case .prefix(let x)?: return v.hasPrefix(f(x))
        case .suffix(let x)?: return v.hasSuffix(f(x))
        case .contains(let x)?: return v.contains(f(x))
        case .safeRegex(let re)?: return wholeMatch(re.regex, value)
        case nil: return true
        }
    }

    /// A whole-string regex match (RE2's syntax is, for what App Mesh allows, a subset of Swift's); nil if the
    /// pattern does not compile here.
    static func wholeMatch(_ pattern: String, _ s: String) -> Bool? {
        guard let re = try? Regex(pattern) else { return nil }
        return (try? re.wholeMatch(in: s)) != nil ? true : false
    }

    // MARK: words

    static func describe(_ m: Envoy_Config_Route_V3_RouteMatch) -> String {
        var parts: [String] = []
        switch m.pathSpecifier {
        case .prefix(let p)?: parts.append("prefix '\(p)'")
        case .path(let p)?: parts.append("path '\(p)'")
        case .safeRegex(let re)?: parts.append("path regex '\(re.regex)'")
        case nil: break
        }
        if m.hasGrpc { parts.append("gRPC") }
        for h in m.headers { parts.append("header \(h.name) \(describe(h))") }
        for q in m.queryParameters {
            switch q.queryParameterMatchSpecifier {
            case .stringMatch(let s)?: parts.append("query \(q.name) \(describe(s))")
            default: parts.append("query \(q.name) present")
            }
        }
        return parts.joined(separator: ", ")
    }

    static func describe(_ h: Envoy_Config_Route_V3_HeaderMatcher) -> String {
        let base: String
        switch h.headerMatchSpecifier {
        case .presentMatch(let p)?: base = p ? "present" : "absent"
        case .stringMatch(let s)?: base = describe(s)
        case .rangeMatch(let r)?: base = "an integer in [\(r.start), \(r.end))"
        case nil: base = "present"
        }
        return h.invertMatch ? "not \(base)" : base
    }

    static func describe(_ s: Envoy_Type_Matcher_V3_StringMatcher) -> String {
        let text: String
        switch s.matchPattern {
        case .exact(let x)?: text = "exact '\(x)'"
        case .prefix(let x)?: text = "prefix '\(x)'"
        case .suffix(let x)?: text = "suffix '\(x)'"
        case .contains(let x)?: text = "containing '\(x)'"
        case .safeRegex(let re)?: text = "regex '\(re.regex)'"
        case nil: text = "anything"
        }
        return s.ignoreCase ? text + " (any case)" : text
    }

    static func targets(_ a: Envoy_Config_Route_V3_RouteAction) -> [RouteTarget] {
        switch a.clusterSpecifier {
        case .cluster(let c)?: [RouteTarget(cluster: c, weight: 1)]
        case .weightedClusters(let w)?:
            w.clusters.map { RouteTarget(cluster: $0.name, weight: $0.hasWeight ? $0.weight.value : 0) }
        case nil: []
        }
    }

    static func targets(_ t: Envoy_Extensions_Filters_Network_TcpProxy_V3_TcpProxy) -> [RouteTarget] {
        switch t.clusterSpecifier {
        case .cluster(let c)?: [RouteTarget(cluster: c, weight: 1)]
        case .weightedClusters(let w)?: w.clusters.map { RouteTarget(cluster: $0.name, weight: $0.weight) }
        case nil: []
        }
    }

    func describeTargets(_ targets: [RouteTarget]) -> String {
        guard targets.count > 1 else { return targets.first.map { "\($0.cluster) (every request)" } ?? "(none)" }
        let total = targets.reduce(0) { $0 + UInt64($1.weight) }
        return targets.map { t in
            let share = total == 0 ? 0 : Double(t.weight) * 100 / Double(total)
            return "\(t.cluster) \(String(format: "%.0f", share))% (weight \(t.weight) of \(total))"
        }.joined(separator: ", ")
    }

    /// A cluster's kind and where its endpoints come from.
    func describeCluster(_ name: String) -> String {
        guard let c = resources.clusters.first(where: { $0.name == name }) else {
            return "\(name): not among this node's clusters (Envoy answers 503, NC)"
        }
        func addresses(_ a: Envoy_Config_Endpoint_V3_ClusterLoadAssignment) -> [String] {
            a.endpoints.flatMap(\.lbEndpoints).map {
                let s = $0.endpoint.address.socketAddress
                return "\(s.address):\(s.portValue)"
            }
        }
        switch c.type {
        case .originalDst: return "\(name): the address the caller dialled (original destination)"
        case .strictDns, .logicalDns:
            let kind = c.type == .strictDns ? "DNS (every address)" : "DNS (first address)"
            return "\(name): \(kind) \(addresses(c.loadAssignment).joined(separator: ", "))"
        case .eds:
            guard let a = resources.endpoints.first(where: { $0.clusterName == name }) else {
                return "\(name): endpoints by EDS, none sent yet"
            }
            let list = addresses(a)
            return list.isEmpty
                ? "\(name): endpoints by EDS, none: Envoy answers 503 (UH, no healthy upstream)"
                : "\(name): endpoints by EDS: \(list.joined(separator: ", "))"
        case .static:
            let list = addresses(c.loadAssignment)
            return
                "\(name): static \(list.isEmpty ? "(no endpoints: Envoy answers 503)" : list.joined(separator: ", "))"
        case .UNRECOGNIZED(let n): return "\(name): discovery type \(n)"
        }
    }

    static func seconds(_ d: Google_Protobuf_Duration) -> String {
        let ms = d.seconds * 1000 + Int64(d.nanos / 1_000_000)
        return ms % 1000 == 0 ? "\(ms / 1000) s" : "\(ms) ms"
    }
}
