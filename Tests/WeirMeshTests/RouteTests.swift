import Foundation
import Testing
@testable import WeirMesh

/// The canary mesh with a header route, retries and timeouts in front of the 90/10 split.
let richRoutes = canary.replacingOccurrences(
    of: """
          routes:
            - name: canary
        """,
    with: """
          routes:
            - name: beta-users
              priority: 1
              httpRoute:
                match:
                  method: GET
                  path: {regex: "^/cart/[0-9]+$"}
                  headers:
                    - {name: x-beta, match: {exact: "yes"}}
                    - {name: x-debug, invert: true}
                    - {name: x-version, match: {range: {start: 2, end: 5}}}
                  queryParameters:
                    - {name: preview, match: {exact: "1"}}
                action:
                  weightedTargets: [{virtualNodeRef: {name: cart-v2}, weight: 1}]
                retryPolicy:
                  maxRetries: 3
                  perRetryTimeout: {unit: ms, value: 250}
                  httpRetryEvents: [server-error, gateway-error]
                  tcpRetryEvents: [connection-error]
                timeout:
                  perRequest: {unit: s, value: 2}
                  idle: {unit: s, value: 30}
            - name: canary
        """)

@Suite("App Mesh routes")
struct RouteTests {
    @Test("matches, retries and timeouts read into the route")
    func richRoute() throws {
        let m = try ManifestReader.read([("mesh.yaml", richRoutes)])
        let route = try #require(m.virtualRouters.first?.routes.first)
        #expect(route.name == "beta-users" && route.priority == 1)
        #expect(route.method == "GET")
        #expect(route.path == .regex("^/cart/[0-9]+$"))
        #expect(
            route.headers == [
                HeaderMatch(name: "x-beta", match: .exact("yes"), invert: false),
                HeaderMatch(name: "x-debug", match: nil, invert: true),
                HeaderMatch(name: "x-version", match: .range(start: 2, end: 5), invert: false),
            ])
        #expect(route.query == [QueryMatch(name: "preview", exact: "1")])
        #expect(
            route.retry
                == RetryPolicy(
                    maxRetries: 3, perRetryTimeoutMilliseconds: 250,
                    httpRetryEvents: ["server-error", "gateway-error"],
                    tcpRetryEvents: ["connection-error"], grpcRetryEvents: []))
        #expect(route.perRequestTimeoutMilliseconds == 2000 && route.idleTimeoutMilliseconds == 30000)
        #expect(m.virtualRouters.first?.routes.count == 2)
    }

    @Test(
        "bad route values are located and explained",
        arguments: [
            ("method: GET", "method: FETCH", "match.method", "must be one of"),
            (
                "{unit: ms, value: 250}", "{unit: minutes, value: 250}", "retryPolicy.perRetryTimeout.unit",
                "must be one of s, ms"
            ),
            (
                "[server-error, gateway-error]", "[server-error, teapot]", "retryPolicy.httpRetryEvents[1]",
                "must be one of"
            ),
            ("{start: 2, end: 5}", "{start: 5, end: 2}", "headers[2].match.range", "end has to be greater than start"),
            ("maxRetries: 3", "maxRetries: -1", "retryPolicy.maxRetries", "must be at least 0"),
            (
                "method: GET", "method: GET\n          prefix: /", "match.path",
                "Both Prefix and Path cannot be specified"
            ),
            ("priority: 1", "priority: 1001", "spec.routes[0].priority", "0 to 1000"),
        ])
    func badValues(_ from: String, _ to: String, _ field: String, _ mentions: String) {
        expectRefused(richRoutes, from, to, field: field, mentions: mentions)
    }
}
