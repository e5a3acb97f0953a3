/// The App Mesh `appmesh.k8s.aws/v1beta2` schema of each kind, as weir knows it: every field the published CRDs
/// define (their types, enums, ranges and required fields), and for each what weir does with it. A test keeps this
/// equal to the CRD files and to README.md's field table.
public enum AppMeshSchema {
    /// The kinds, in the order README.md lists them.
    public static let kinds = [
        "Mesh", "VirtualNode", "VirtualService", "VirtualRouter", "VirtualGateway", "GatewayRoute",
    ]

    /// The whole object of `kind` (apiVersion, kind, metadata, spec, status).
    public static func object(_ kind: String) -> SchemaType? {
        guard let spec = spec(kind) else { return nil }
        return .object([
            .string("apiVersion", .honoured("must be appmesh.k8s.aws/v1beta2")),
            .string("kind", .honoured("the kind")),
            .object("metadata", .meta("Kubernetes object metadata"), metadata),
            SchemaField(name: "spec", type: spec, required: false, use: nil),
            .object("status", statusUse, statusFields(kind)),
        ])
    }

    /// The `spec` of `kind`.
    public static func spec(_ kind: String) -> SchemaType? {
        switch kind {
        case "Mesh": return .object(meshSpec)
        case "VirtualNode": return .object(virtualNodeSpec)
        case "VirtualService": return .object(virtualServiceSpec)
        case "VirtualRouter": return .object(virtualRouterSpec)
        case "VirtualGateway": return .object(virtualGatewaySpec)
        case "GatewayRoute": return .object(gatewayRouteSpec)
        default: return nil
        }
    }

    // MARK: metadata and status

    static let bookkeeping = FieldUse.meta(
        "Kubernetes bookkeeping: accepted so that `kubectl get -o yaml` output reads; no effect")

    static let metadata: [SchemaField] = [
        .string(
            "name", .meta("the object's name: what references (`…Ref.name`) and node ids `<namespace>/<name>` use")),
        .string(
            "namespace",
            .meta("the object's namespace (default `default`): what references and namespace selectors use")),
        .string("generateName", .refused("weir has no API server to generate names; give metadata.name")),
        .stringMap(
            "labels",
            .meta("matched by a virtual gateway's gatewayRouteSelector (gateway routes); no effect on other kinds")),
        .stringMap("annotations", bookkeeping),
        .string("uid", .meta("checked against `meshRef.uid` / `virtualGatewayRef.uid` that name this object")),
        .string("resourceVersion", bookkeeping),
        .integer("generation", bookkeeping),
        .string("creationTimestamp", bookkeeping),
        .string("deletionTimestamp", bookkeeping),
        .integer("deletionGracePeriodSeconds", bookkeeping),
        .string("selfLink", bookkeeping),
        .array("finalizers", of: .string(enumValues: nil, minLength: nil, maxLength: nil), bookkeeping),
        .any("ownerReferences", bookkeeping),
        .any("managedFields", bookkeeping),
    ]

    static let statusUse = FieldUse.meta(
        "written by App Mesh's controller; weir reads no status (kept so exported objects read)")
    static func statusFields(_ kind: String) -> [SchemaField] {
        var fields: [SchemaField] = [
            .array(
                "conditions",
                of: .object([
                    .string("lastTransitionTime"), .string("message"), .string("reason"),
                    .string("status", required: true), .string("type", required: true),
                ])),
            .integer("observedGeneration"),
        ]
        switch kind {
        case "Mesh": fields.append(.string("meshARN"))
        case "VirtualNode": fields.append(.string("virtualNodeARN"))
        case "VirtualService": fields.append(.string("virtualServiceARN"))
        case "VirtualRouter": fields += [.stringMap("routeARNs"), .string("virtualRouterARN")]
        case "VirtualGateway": fields.append(.string("virtualGatewayARN"))
        case "GatewayRoute": fields.append(.string("gatewayRouteARN"))
        default: break
        }
        return fields
    }

    // MARK: shared pieces

    static func meshRef(_ what: String) -> SchemaField {
        .object(
            "meshRef",
            [
                .string(
                    "name", required: true,
                    .honoured(
                        "the mesh \(what) belongs to (else the one mesh, or the mesh whose namespaceSelector takes its namespace): its node ids and egress filter"
                    )),
                // Required by the CRD (App Mesh's controller always wrote it); weir has no API server to fill it in, so it
                // takes a hand-written meshRef without one.
                .string("uid", .meta("checked against the Mesh's metadata.uid when both are given")),
            ])
    }

    static func labelSelector(_ name: String, _ use: FieldUse) -> SchemaField {
        .object(
            name, use,
            [
                .array(
                    "matchExpressions",
                    of: .object([
                        .string("key", required: true), .string("operator", required: true),
                        .array("values", of: .string(enumValues: nil, minLength: nil, maxLength: nil)),
                    ])),
                .stringMap("matchLabels"),
            ])
    }

    static let podSelector = labelSelector(
        "podSelector",
        .meta(
            "which pods are this node's: not used yet (weir's pods name their node id in their Envoy bootstrap); kept for the node agent"
        ))

    static func duration(_ name: String, required: Bool = false, _ use: FieldUse? = nil) -> SchemaField {
        .object(
            name, required: required, use,
            [
                .string("unit", required: true, oneOf: ["s", "ms"]),
                .integer("value", required: true, minimum: 0),
            ])
    }

    static let tlsFile = SchemaField.object(
        "file", .honoured("tls_certificates: certificate_chain and private_key files"),
        [
            .string("certificateChain", required: true, minLength: 1, maxLength: 255),
            .string("privateKey", required: true, minLength: 1, maxLength: 255),
        ])
    static let tlsSDS = SchemaField.object(
        "sds",
        .honoured(
            "tls_certificate_sds_secret_configs: the secret of this name from the SDS socket (`weir xds --sds-socket`)"),
        [
            .string("secretName", required: true)
        ])
    static let acmTrust = SchemaField.object(
        "acm",
        .refused(
            "ACM Private CA trust needs App Mesh's managed Envoy; give validation.trust.file or validation.trust.sds"),
        [
            .array(
                "certificateAuthorityARNs", of: .string(enumValues: nil, minLength: nil, maxLength: nil),
                required: true, minItems: 1, maxItems: 3)
        ])

    static func validation(peer: String, acm: Bool) -> SchemaField {
        var trust: [SchemaField] = [
            .object(
                "file", .honoured("trusted_ca (file) that \(peer) certificates must chain to"),
                [
                    .string("certificateChain", required: true, minLength: 1, maxLength: 255)
                ]),
            .object(
                "sds",
                .honoured("the validation context (trust bundle) from SDS, e.g. `spiffe://<trust domain>` from SPIRE"),
                [
                    .string("secretName", required: true)
                ]),
        ]
        if acm { trust.insert(acmTrust, at: 0) }
        return .object(
            "validation", required: peer == "server",
            [
                .object(
                    "subjectAlternativeNames",
                    .honoured(
                        "match_typed_subject_alt_names on \(peer) certificates: URI for `spiffe://…`, DNS otherwise"),
                    [
                        .object(
                            "match", required: true,
                            [
                                .array(
                                    "exact", of: .string(enumValues: nil, minLength: nil, maxLength: nil),
                                    required: true)
                            ])
                    ]),
                .object("trust", required: true, trust),
            ])
    }

    static let clientPolicy = SchemaField.object(
        "clientPolicy",
        [
            .object(
                "tls", .honoured("an UpstreamTlsContext on the clusters of the backend's targets"),
                [
                    .object("certificate", .honoured("the client certificate (mTLS)"), [tlsFile, tlsSDS]),
                    .boolean("enforce", .honoured("false: the policy is off and no TLS is originated (default true)")),
                    .array(
                        "ports", of: .integer(minimum: 1, maximum: 65535),
                        .honoured("TLS on these backend ports only (default: every port)")),
                    validation(peer: "server", acm: true).with(
                        .honoured(
                            "the validation context of the server certificate (without SANs, its SAN must be the target's DNS hostname)"
                        )),
                ])
        ])

    static func listenerTLS(gateway: Bool) -> SchemaField {
        .object(
            "tls", .honoured("a DownstreamTlsContext on the listener's filter chain"),
            [
                .object(
                    "certificate", required: true,
                    [
                        .object(
                            "acm",
                            .refused(
                                "ACM certificates need App Mesh's managed Envoy; give certificate.file or certificate.sds"
                            ),
                            [
                                .string("certificateARN", required: true)
                            ]),
                        tlsFile, tlsSDS,
                    ]),
                .string(
                    "mode", required: true, oneOf: ["DISABLED", "PERMISSIVE", "STRICT"],
                    .honoured(
                        "STRICT: TLS only; PERMISSIVE: tls_inspector, and a TLS and a plaintext filter chain; DISABLED: plaintext only"
                    )),
                validation(peer: "client", acm: gateway).with(
                    .honoured("require_client_certificate and the validation context (mTLS)")),
            ])
    }

    static func accessLog(_ what: String) -> SchemaField {
        .object(
            "logging",
            [
                .object(
                    "accessLog",
                    [
                        .object(
                            "file",
                            [
                                .object(
                                    "format",
                                    [
                                        .array(
                                            "json",
                                            of: .object([
                                                .string("key", required: true, minLength: 1),
                                                .string("value", required: true, minLength: 1),
                                            ]),
                                            .honoured(
                                                "log_format.json_format: one JSON object per line, these keys and command operators"
                                            )),
                                        .string(
                                            "text",
                                            .honoured(
                                                "log_format.text_format_source, verbatim (end it with \\n, as App Mesh's examples do)"
                                            )),
                                    ]),
                                .string(
                                    "path", required: true, minLength: 1, maxLength: 255,
                                    .honoured(
                                        "a file access log on the HTTP connection managers and TCP proxies of \(what)")),
                            ])
                    ])
            ])
    }

    static func healthCheck(protocols: [String], healthyRequired: Bool, _ use: FieldUse) -> SchemaField {
        .object(
            "healthCheck", use,
            [
                .integer("healthyThreshold", required: healthyRequired, minimum: 2, maximum: 10),
                .integer("intervalMillis", required: true, minimum: 5000, maximum: 300_000),
                .string("path", .honoured("the HTTP health check's path (http and http2 only)")),
                .integer(
                    "port", minimum: 1, maximum: 65535,
                    .honoured("alt_port of the health check (default: the listener port)")),
                .string("protocol", required: true, oneOf: protocols),
                .integer("timeoutMillis", required: true, minimum: 2000, maximum: 60_000),
                .integer("unhealthyThreshold", required: true, minimum: 2, maximum: 10),
            ])
    }

    static func portMapping(_ protocols: [String]) -> SchemaField {
        .object(
            "portMapping", required: true,
            [
                .integer("port", required: true, minimum: 1, maximum: 65535),
                .string("protocol", required: true, oneOf: protocols),
            ])
    }

    static func connectionPool(tcp: Bool, _ target: String) -> SchemaField {
        var pools: [SchemaField] = [
            .object("grpc", [.integer("maxRequests", required: true, minimum: 1)]),
            .object(
                "http",
                [
                    .integer("maxConnections", required: true, minimum: 1),
                    .integer("maxPendingRequests", minimum: 1),
                ]),
            .object("http2", [.integer("maxRequests", required: true, minimum: 1)]),
        ]
        if tcp { pools.append(.object("tcp", [.integer("maxConnections", required: true, minimum: 1)])) }
        return .object(
            "connectionPool",
            .honoured("circuit-breaker thresholds of \(target); only the listener protocol's own pool"), pools)
    }

    static let stringMatchFields: [SchemaField] = [
        .string("exact", minLength: 1, maxLength: 255),
        .string("prefix", minLength: 1, maxLength: 255),
        .object("range", [.integer("end", required: true), .integer("start", required: true)]),
        .string("regex", minLength: 1, maxLength: 255),
        .string("suffix", minLength: 1, maxLength: 255),
    ]

    static func headerMatches(_ name: String, _ use: FieldUse) -> SchemaField {
        .array(
            name,
            of: .object([
                .boolean("invert"),
                .object("match", stringMatchFields),
                .string("name", required: true, minLength: 1, maxLength: 50),
            ]), minItems: 1, maxItems: 10, use)
    }

    static let methods = ["CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE"]

    static func pathMatch(_ use: FieldUse) -> SchemaField {
        .object(
            "path", use,
            [.string("exact", minLength: 1, maxLength: 255), .string("regex", minLength: 1, maxLength: 255)])
    }

    static let queryParameters = SchemaField.array(
        "queryParameters",
        of: .object([
            .object("match", [.string("exact")]),
            .string("name", required: true),
        ]), minItems: 1, maxItems: 10, .honoured("query_parameters matchers (exact, or present)"))

    // MARK: Mesh

    static let meshSpec: [SchemaField] = [
        .string(
            "awsName", .honoured("the mesh's name in node ids `mesh/<awsName>/…` and in ARNs (default: metadata.name)")),
        .object(
            "egressFilter",
            [
                .string(
                    "type", required: true, oneOf: ["ALLOW_ALL", "DROP_ALL"],
                    .honoured(
                        "ALLOW_ALL: an original_dst passthrough cluster for destinations outside the mesh; DROP_ALL: none (default)"
                    ))
            ]),
        .string("meshOwner", .meta("the account that owns a shared mesh: an ARN that names this mesh must carry it")),
        .object(
            "meshServiceDiscovery",
            [
                .string(
                    "ipPreference", oneOf: ["IPv6_ONLY", "IPv4_ONLY"],
                    .honoured(
                        "dns_lookup_family of the mesh's DNS clusters (V6_ONLY, V4_ONLY; default V4_PREFERRED); listeners bind `::`, and IPv6_ONLY reaches the local app at ::1"
                    ))
            ]),
        labelSelector(
            "namespaceSelector",
            .meta(
                "which namespaces' objects join this mesh when they name no meshRef (with several meshes): their node ids and egress filter follow"
            )),
    ]

    // MARK: VirtualNode

    static let virtualNodeSpec: [SchemaField] = [
        .string(
            "awsName",
            .honoured(
                "the node's name in its node id `mesh/<mesh>/virtualNode/<awsName>` and its callers' cluster names (default `<name>_<namespace>`)"
            )),
        .object("backendDefaults", [clientPolicy]),
        .array(
            "backendGroups", of: .object([.string("name", required: true), .string("namespace")]),
            .refused("backend groups are not supported; list each virtual service in spec.backends")),
        .array(
            "backends",
            of: .object([
                .object(
                    "virtualService", required: true,
                    [
                        clientPolicy,
                        .string(
                            "virtualServiceARN",
                            .honoured(
                                "the backend named by ARN (`arn:aws:appmesh:…:mesh/<mesh>/virtualService/<awsName>`), resolved to the manifests' virtual service"
                            )),
                        .object(
                            "virtualServiceRef",
                            .honoured(
                                "the backend virtual service: egress filter chains, routes and clusters to reach it"),
                            [
                                .string("name", required: true), .string("namespace"),
                            ]),
                    ])
            ])),
        .array(
            "listeners",
            of: .object([
                connectionPool(tcp: true, "the local application's cluster"),
                healthCheck(
                    protocols: ["grpc", "http", "http2", "tcp"], healthyRequired: true,
                    .honoured("active health checks on the clusters callers use to reach this node")),
                .object(
                    "outlierDetection",
                    .honoured("outlier_detection (consecutive 5xx) on the clusters callers use to reach this node"),
                    [
                        duration("baseEjectionDuration", required: true),
                        duration("interval", required: true),
                        .integer("maxEjectionPercent", required: true, minimum: 0, maximum: 100),
                        .integer("maxServerErrors", required: true, minimum: 1),
                    ]),
                portMapping(["grpc", "http", "http2", "tcp"]).with(
                    .honoured(
                        "an ingress filter chain for this port to the local application, and the port callers reach")),
                .object(
                    "timeout",
                    .honoured(
                        "the ingress route's timeout and idle_timeout (tcp: the TCP proxy's idle_timeout); only the listener protocol's own"
                    ),
                    [
                        .object("grpc", [duration("idle"), duration("perRequest")]),
                        .object("http", [duration("idle"), duration("perRequest")]),
                        .object("http2", [duration("idle"), duration("perRequest")]),
                        .object("tcp", [duration("idle")]),
                    ]),
                listenerTLS(gateway: false),
            ]), minItems: 0),
        accessLog("the node's listeners"),
        meshRef("the node"),
        podSelector,
        .object(
            "serviceDiscovery",
            [
                .object(
                    "awsCloudMap", .refused("Cloud Map discovery needs AWS; use serviceDiscovery.dns for now"),
                    [
                        .array(
                            "attributes",
                            of: .object([
                                .string("key", required: true, minLength: 1, maxLength: 255),
                                .string("value", required: true, minLength: 1, maxLength: 1024),
                            ])),
                        .string("namespaceName", required: true, minLength: 1, maxLength: 1024),
                        .string("serviceName", required: true, minLength: 1, maxLength: 1024),
                    ]),
                .object(
                    "dns",
                    [
                        .string(
                            "hostname", required: true,
                            .honoured(
                                "the endpoint callers reach: an IP address as an EDS endpoint, a name as a DNS cluster")
                        ),
                        .string(
                            "responseType", oneOf: ["ENDPOINTS", "LOADBALANCER"],
                            .honoured(
                                "ENDPOINTS: STRICT_DNS (every address an endpoint); LOADBALANCER: LOGICAL_DNS (default)"
                            )),
                    ]),
            ]),
    ]

    // MARK: VirtualService

    static let virtualServiceSpec: [SchemaField] = [
        .string(
            "awsName",
            .honoured(
                "the service's hostname: the virtual host domains `<awsName>` and `<awsName>:<port>` callers get (default `<name>.<namespace>`)"
            )),
        meshRef("the service"),
        .object(
            "provider",
            [
                .object(
                    "virtualNode",
                    [
                        .string(
                            "virtualNodeARN",
                            .honoured("the provider named by ARN, resolved to the manifests' virtual node")),
                        .object(
                            "virtualNodeRef",
                            .honoured("the virtual node that serves the service: a route to its cluster"),
                            [
                                .string("name", required: true), .string("namespace"),
                            ]),
                    ]),
                .object(
                    "virtualRouter",
                    [
                        .string(
                            "virtualRouterARN",
                            .honoured("the provider named by ARN, resolved to the manifests' virtual router")),
                        .object(
                            "virtualRouterRef", .honoured("the virtual router whose routes serve the service"),
                            [
                                .string("name", required: true), .string("namespace"),
                            ]),
                    ]),
            ]),
    ]

    // MARK: VirtualRouter

    static func weightedTargets() -> SchemaField {
        .object(
            "action", required: true,
            [
                .array(
                    "weightedTargets",
                    of: .object([
                        .integer(
                            "port", minimum: 0,
                            .honoured("the target's listener port (default: the router listener's port)")),
                        .string(
                            "virtualNodeARN",
                            .honoured("the target named by ARN, resolved to the manifests' virtual node")),
                        .object(
                            "virtualNodeRef", .honoured("the target virtual node's cluster"),
                            [.string("name", required: true), .string("namespace")]),
                        .integer(
                            "weight", required: true, minimum: 0, maximum: 100,
                            .honoured("weighted_clusters weight (0: not routed)")),
                    ]), required: true, minItems: 1, maxItems: 10)
            ])
    }

    static func retryPolicy(grpc: Bool) -> SchemaField {
        var fields: [SchemaField] = []
        if grpc {
            fields.append(
                .array(
                    "grpcRetryEvents",
                    of: .string(
                        enumValues: [
                            "cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable",
                        ], minLength: nil, maxLength: nil), minItems: 1, maxItems: 5))
        }
        fields += [
            .array(
                "httpRetryEvents",
                of: .string(
                    enumValues: ["server-error", "gateway-error", "client-error", "stream-error"], minLength: nil,
                    maxLength: nil), minItems: 1, maxItems: 25),
            .integer("maxRetries", required: true, minimum: 0),
            duration("perRetryTimeout", required: true),
            .array(
                "tcpRetryEvents", of: .string(enumValues: ["connection-error"], minLength: nil, maxLength: nil),
                minItems: 1, maxItems: 1),
        ]
        return .object(
            "retryPolicy", .honoured("retry_policy: retry_on from the events, num_retries, per_try_timeout"), fields)
    }

    static let routeTimeout = SchemaField.object(
        "timeout", .honoured("the route's timeout (perRequest) and idle_timeout"),
        [duration("idle"), duration("perRequest")])
    static let matchPort = SchemaField.integer(
        "port", minimum: 0, .honoured("the route applies to the router listener with this port only"))

    static func httpRoute(_ name: String) -> SchemaField {
        .object(
            name,
            [
                weightedTargets(),
                .object(
                    "match", required: true,
                    [
                        headerMatches("headers", .honoured("header matchers")),
                        .string("method", oneOf: methods, .honoured("a `:method` header matcher")),
                        pathMatch(.honoured("path (exact) or safe_regex (regex) instead of the prefix")),
                        matchPort,
                        .string("prefix", .honoured("the route's prefix match")),
                        queryParameters,
                        .string("scheme", oneOf: ["http", "https"], .honoured("a `:scheme` header matcher")),
                    ]),
                retryPolicy(grpc: false),
                routeTimeout,
            ])
    }

    static let virtualRouterSpec: [SchemaField] = [
        .string(
            "awsName",
            .honoured("the router's name in its routes' names `<awsName>/<route>` (default `<name>_<namespace>`)")),
        .array(
            "listeners",
            of: .object([
                portMapping(["grpc", "http", "http2", "tcp"]).with(
                    .honoured("the service ports callers reach: an egress filter chain per port"))
            ]), minItems: 1),
        meshRef("the router"),
        .array(
            "routes",
            of: .object([
                .object(
                    "grpcRoute",
                    [
                        weightedTargets(),
                        .object(
                            "match", required: true,
                            [
                                headerMatches("metadata", .honoured("header matchers on the gRPC metadata")),
                                .string(
                                    "methodName", minLength: 1, maxLength: 50,
                                    .honoured("a path match `/<service>/<method>`")),
                                matchPort,
                                .string("serviceName", .honoured("a prefix match `/<service>/`")),
                            ]),
                        retryPolicy(grpc: true),
                        routeTimeout,
                    ]),
                httpRoute("http2Route"),
                httpRoute("httpRoute"),
                .string("name", required: true, .honoured("the route's name `<router>/<name>`")),
                .integer(
                    "priority", minimum: 0, maximum: 1000,
                    .honoured("the order of routes (lower first; unset after all set)")),
                .object(
                    "tcpRoute",
                    [
                        weightedTargets(),
                        .object("match", [matchPort]),
                        .object("timeout", [duration("idle")]).with(.honoured("the TCP proxy's idle_timeout")),
                    ]),
            ])),
    ]

    // MARK: VirtualGateway

    static let virtualGatewaySpec: [SchemaField] = [
        .string(
            "awsName",
            .honoured(
                "the gateway's name in its node id `mesh/<mesh>/virtualGateway/<awsName>` (default `<name>_<namespace>`)"
            )),
        .object("backendDefaults", [clientPolicy]),
        labelSelector(
            "gatewayRouteSelector",
            .meta("which gateway routes (by their labels) this gateway takes: their routes are the gateway's")),
        .array(
            "listeners",
            of: .object([
                connectionPool(tcp: false, "the clusters this listener's routes reach"),
                healthCheck(
                    protocols: ["grpc", "http", "http2"], healthyRequired: false,
                    .honoured(
                        "an active health check of the gateway's own listener, through a cluster to itself (as App Mesh's self-redirect)"
                    )),
                portMapping(["grpc", "http", "http2"]).with(
                    .honoured("a listener on this port with the gateway's routes")),
                listenerTLS(gateway: true),
            ]), minItems: 0),
        accessLog("the gateway's listeners"),
        meshRef("the gateway"),
        labelSelector(
            "namespaceSelector",
            .meta("which namespaces' gateway routes this gateway takes (absent: none): their routes are the gateway's")),
        podSelector,
    ]

    // MARK: GatewayRoute

    static let target = SchemaField.object(
        "target", required: true,
        [
            .integer("port", minimum: 0, .honoured("the target service's port (default: its first listener's)")),
            .object(
                "virtualService", required: true,
                [
                    .string(
                        "virtualServiceARN",
                        .honoured("the target named by ARN, resolved to the manifests' virtual service")),
                    .object(
                        "virtualServiceRef",
                        .honoured("the target virtual service: routes through its router, or to its node"),
                        [
                            .string("name", required: true), .string("namespace"),
                        ]),
                ]),
        ])
    static let hostnameRewrite = SchemaField.object(
        "hostname",
        [
            .string(
                "defaultTargetHostname", oneOf: ["ENABLED", "DISABLED"],
                .honoured(
                    "ENABLED (default): host_rewrite_literal to the target service's name; DISABLED: the Host is kept"))
        ])
    static let hostnameMatch = SchemaField.object(
        "hostname", .honoured("the virtual host's domains (exact, or `*<suffix>`)"),
        [
            .string("exact", minLength: 1, maxLength: 253), .string("suffix", minLength: 1, maxLength: 253),
        ])
    static let gatewayMatchPort = SchemaField.integer(
        "port", minimum: 0, .honoured("the route applies to the gateway listener with this port only"))

    static func httpGatewayRoute(_ name: String) -> SchemaField {
        .object(
            name,
            [
                .object(
                    "action", required: true,
                    [
                        .object(
                            "rewrite",
                            [
                                hostnameRewrite,
                                .object(
                                    "path",
                                    [
                                        .string(
                                            "exact", minLength: 1, maxLength: 255,
                                            .honoured("the path is rewritten to this (regex_rewrite of the whole path)")
                                        )
                                    ]),
                                .object(
                                    "prefix",
                                    [
                                        .string(
                                            "defaultPrefix", oneOf: ["ENABLED", "DISABLED"],
                                            .honoured(
                                                "ENABLED (default): the matched prefix is rewritten to `/`; DISABLED: the path is kept"
                                            )),
                                        .string(
                                            "value", minLength: 1, maxLength: 255,
                                            .honoured("the matched prefix is rewritten to this")),
                                    ]),
                            ]),
                        target,
                    ]),
                .object(
                    "match", required: true,
                    [
                        headerMatches("headers", .honoured("header matchers")),
                        hostnameMatch,
                        .string("method", oneOf: methods, .honoured("a `:method` header matcher")),
                        pathMatch(.honoured("path (exact) or safe_regex (regex)")),
                        gatewayMatchPort,
                        .string("prefix", .honoured("the route's prefix match")),
                        queryParameters,
                    ]),
            ])
    }

    static let gatewayRouteSpec: [SchemaField] = [
        .string(
            "awsName",
            .honoured(
                "the gateway route's name in its routes' names `<namespace>/<awsName>` (default `<name>_<namespace>`)")),
        .object(
            "grpcRoute",
            [
                .object("action", required: true, [.object("rewrite", [hostnameRewrite]), target]),
                .object(
                    "match", required: true,
                    [
                        hostnameMatch,
                        headerMatches("metadata", .honoured("header matchers on the gRPC metadata")),
                        gatewayMatchPort,
                        .string("serviceName", .honoured("a prefix match `/<service>/`")),
                    ]),
            ]),
        httpGatewayRoute("http2Route"),
        httpGatewayRoute("httpRoute"),
        meshRef("the gateway route"),
        .integer("priority", minimum: 0, maximum: 1000, .honoured("the order of the gateway's routes (lower first)")),
        .object(
            "virtualGatewayRef",
            [
                .string(
                    "name", required: true,
                    .honoured("the gateway that takes the route, instead of the gateways' selectors")),
                .string("namespace", .honoured("the gateway's namespace (default: the route's)")),
                // Required by the CRD, not by weir: as meshRef.uid.
                .string("uid", .meta("checked against the VirtualGateway's metadata.uid when both are given")),
            ]),
    ]
}

// MARK: the field table

extension AppMeshSchema {
    /// One row of the field table: a field with its own use, and the leaves under it that share it.
    public struct Row: Sendable, Hashable {
        public var kind: String
        public var path: String
        public var use: FieldUse
        /// The leaves under an object row that take its use (empty for a leaf).
        public var fields: [String]
    }

    /// The table's rows: every kind's spec, then `metadata` and `status` once for all kinds.
    public static func rows() -> [Row] {
        var out: [Row] = []
        func walk(_ fields: [SchemaField], _ path: String, kind: String) {
            for f in fields {
                let p = path.isEmpty ? f.name : "\(path).\(f.name)"
                var inner = f.type
                var suffix = ""
                while case .array(let items, _, _) = inner {
                    inner = items
                    suffix += "[]"
                }
                if let use = f.use {
                    // An array of scalars is one field, not a list of `[]`.
                    let own = inheritingLeaves(f.type).filter { !$0.allSatisfy { $0 == "[" || $0 == "]" } }
                    out.append(Row(kind: kind, path: p, use: use, fields: own))
                }
                if case .object(let children) = inner { walk(children, p + suffix, kind: kind) }
            }
        }
        for kind in kinds {
            guard case .object(let fields)? = spec(kind) else { continue }
            walk(fields, "spec", kind: kind)
        }
        walk(metadata, "metadata", kind: "all kinds")
        out.append(Row(kind: "all kinds", path: "status", use: statusUse, fields: []))
        return out
    }

    /// The leaves under a type that have no use of their own (they take the nearest one above), relative paths.
    static func inheritingLeaves(_ type: SchemaType, path: String = "") -> [String] {
        switch type {
        case .object(let fields):
            return fields.flatMap { f -> [String] in
                guard f.use == nil else { return [] }
                return inheritingLeaves(f.type, path: path.isEmpty ? f.name : "\(path).\(f.name)")
            }
        case .array(let items, _, _):
            return inheritingLeaves(items, path: path + "[]")
        default:
            return path.isEmpty ? [] : [path]
        }
    }

    /// Every leaf of every kind's spec with its use (what the schema walk test goes through).
    public static func specLeaves(_ kind: String) -> [SchemaLeaf] {
        spec(kind)?.leaves(path: "spec", use: .refused("no use declared")) ?? []
    }

    /// How many spec leaves (over all kinds) weir honours, refuses, and takes as meta.
    public static func counts() -> (honoured: Int, refused: Int, meta: Int) {
        var c = (honoured: 0, refused: 0, meta: 0)
        for kind in kinds {
            for leaf in specLeaves(kind) {
                switch leaf.use {
                case .honoured: c.honoured += 1
                case .refused: c.refused += 1
                case .meta: c.meta += 1
                }
            }
        }
        return c
    }

    /// The field table in Markdown, as README.md carries it.
    public static func markdownTable() -> String {
        let c = counts()
        var lines = [
            "Of the \(c.honoured + c.refused + c.meta) fields in the six kinds' `spec`s, weir honours \(c.honoured), refuses \(c.refused) by name, and takes \(c.meta) as meta (they mean something outside Envoy's config).",
            "",
            "| kind | field | weir | what it becomes |",
            "|---|---|---|---|",
        ]
        for r in rows() {
            let use: String
            switch r.use {
            case .honoured: use = "honoured"
            case .refused: use = "**refused**"
            case .meta: use = "meta"
            }
            var field = "`\(r.path)`"
            if !r.fields.isEmpty { field += " (" + r.fields.map { "`\($0)`" }.joined(separator: ", ") + ")" }
            lines.append("| \(r.kind) | \(field) | \(use) | \(r.use.note.replacingOccurrences(of: "|", with: "\\|")) |")
        }
        return lines.joined(separator: "\n") + "\n"
    }
}
