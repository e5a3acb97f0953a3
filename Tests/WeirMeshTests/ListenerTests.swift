import Foundation
import Testing
@testable import WeirMesh

/// The canary mesh whose front node's listener has a health check, timeouts, outlier detection and a pool.
let richListener = canary.replacingOccurrences(
    of: """
          listeners:
            - portMapping: {port: 8080, protocol: http}
        """,
    with: """
          listeners:
            - portMapping: {port: 8080, protocol: http}
              healthCheck: {protocol: http, path: /healthz, healthyThreshold: 2, unhealthyThreshold: 3, intervalMillis: 5000, timeoutMillis: 2000}
              timeout:
                http:
                  perRequest: {unit: s, value: 15}
                  idle: {unit: ms, value: 60000}
              outlierDetection:
                maxServerErrors: 5
                maxEjectionPercent: 50
                interval: {unit: s, value: 10}
                baseEjectionDuration: {unit: s, value: 30}
              connectionPool:
                http: {maxConnections: 100, maxPendingRequests: 10}
        """)

@Suite("App Mesh virtual node listeners")
struct ListenerTests {
    @Test("health check, timeouts, outlier detection and connection pool read into the listener")
    func richListenerReads() throws {
        let m = try ManifestReader.read([("mesh.yaml", richListener)])
        let l = try #require(m.virtualNodes.first?.listeners.first)
        #expect(
            l.healthCheck
                == HealthCheck(
                    protocol: .http, path: "/healthz", port: nil, healthyThreshold: 2, unhealthyThreshold: 3,
                    intervalMilliseconds: 5000, timeoutMilliseconds: 2000))
        #expect(l.perRequestTimeoutMilliseconds == 15000 && l.idleTimeoutMilliseconds == 60000)
        #expect(
            l.outlierDetection
                == OutlierDetection(
                    maxServerErrors: 5, intervalMilliseconds: 10000, baseEjectionMilliseconds: 30000,
                    maxEjectionPercent: 50))
        #expect(l.connectionPool == ConnectionPool(maxConnections: 100, maxPendingRequests: 10, maxRequests: nil))
    }

    @Test(
        "bad listener values are located and explained",
        arguments: [
            ("healthyThreshold: 2", "healthyThreshold: 1", "healthCheck.healthyThreshold", "2 to 10"),
            ("intervalMillis: 5000", "intervalMillis: 10", "healthCheck.intervalMillis", "5000 to 300000"),
            ("path: /healthz, ", "", "healthCheck.path", "needs a path"),
            ("maxEjectionPercent: 50", "maxEjectionPercent: 150", "outlierDetection.maxEjectionPercent", "0 to 100"),
            (
                "idle: {unit: ms, value: 60000}", "idle: {unit: h, value: 1}", "timeout.http.idle.unit",
                "must be one of s, ms"
            ),
        ])
    func badValues(_ from: String, _ to: String, _ field: String, _ mentions: String) {
        expectRefused(richListener, from, to, field: field, mentions: mentions)
    }
}
