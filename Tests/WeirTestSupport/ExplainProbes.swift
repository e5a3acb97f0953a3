import Foundation

/// A request to `weir mesh explain` on a golden mesh's `web` node (mesh/shop/virtualNode/web_shop), what it must
/// predict (`RouteExplanation.Outcome`'s description) and words its explanation must hold. The mesh tests check the
/// prediction; the Envoy tests send the same request through a real Envoy and check that Envoy does what `explain`
/// predicts.
public struct ExplainProbe: Sendable, CustomStringConvertible {
    public let mesh: String
    public let request: String
    public let headers: [String]
    public let expected: String
    public let says: [String]
    public var description: String { "\(mesh): \(request) \(headers)" }

    /// The golden mesh's manifests directory.
    public static func directory(_ mesh: String) -> URL {
        projectRoot.appendingPathComponent("Tests/WeirMeshTests/Goldens/\(mesh)")
    }

    static let canary = "route catalog_shop/canary -> vn_catalog-v1_shop_9080 90, vn_catalog-v2_shop_9080 10"

    public static let all: [ExplainProbe] = [
        ExplainProbe(
            mesh: "mesh-drop", request: "GET http://catalog.shop:9080/api/list?tier=gold", headers: ["x-beta: 1"],
            expected: "route catalog_shop/beta-testers -> vn_catalog-v2_shop_9080",
            says: ["matches a domain exactly", "egress_9080"]),
        ExplainProbe(
            mesh: "mesh-drop", request: "GET http://catalog.shop:9080/api?tier=gold",
            headers: ["x-beta: 1", "X-Debug: yes"], expected: canary,
            says: ["header x-debug is 'yes' (wants not present)", "90% (weight 90 of 100)"]),
        ExplainProbe(
            mesh: "mesh-drop", request: "POST http://catalog.shop:9080/api?tier=gold", headers: ["x-beta: 1"],
            expected: canary, says: ["header :method is 'POST' (wants exact 'GET')"]),
        ExplainProbe(
            mesh: "mesh-drop", request: "GET http://catalog.shop:9080/api?tier=silver", headers: ["x-beta: 1"],
            expected: canary, says: ["query parameter tier='silver' does not match exact 'gold'"]),
        // Envoy reads query values as sent: not percent-decoded.
        ExplainProbe(
            mesh: "mesh-drop", request: "GET http://catalog.shop:9080/api?tier=%67old", headers: ["x-beta: 1"],
            expected: canary, says: ["query parameter tier='%67old' does not match exact 'gold'"]),
        // gRPC is application/grpc or application/grpc+…, nothing with parameters.
        ExplainProbe(
            mesh: "mesh-drop", request: "POST http://prices.shop:7070/shop.Prices/Quote",
            headers: ["content-type: application/grpc;v=1"], expected: "404", says: ["is not application/grpc"]),
        ExplainProbe(
            mesh: "mesh-drop", request: "GET http://catalog.shop/items/42", headers: [], expected: "closed",
            says: ["none for port 80"]),
        ExplainProbe(
            mesh: "mesh-drop", request: "GET http://catalog.shop:9080/items/42", headers: [],
            expected: "route catalog_shop/items-by-id -> vn_catalog-v1_shop_9080",
            says: ["timeout 1500 ms", "idle timeout 60 s"]),
        ExplainProbe(
            mesh: "mesh-drop", request: "GET http://catalog.shop:9080/items/42x", headers: [], expected: canary,
            says: ["does not match the regex '/items/[0-9]+'", "retries: 2 on 5xx,gateway-error,connect-failure,reset"]
        ),
        ExplainProbe(
            mesh: "mesh-drop", request: "GET http://catalog:9080/", headers: [], expected: "404",
            says: ["no domain matches Host 'catalog:9080'", "catalog.shop, catalog.shop:9080"]),
        ExplainProbe(
            mesh: "mesh-allow", request: "GET http://catalog:9080/", headers: [],
            expected: "route allow_all -> passthrough",
            says: ["falls to the catch-all domain *", "original destination"]
        ),
        ExplainProbe(
            mesh: "mesh-drop", request: "POST http://prices.shop:7070/shop.Prices/Quote",
            headers: ["content-type: application/grpc"], expected: "route prices_shop/quote -> vn_prices_shop_7070",
            says: ["gRPC"]),
        ExplainProbe(
            mesh: "mesh-allow", request: "POST http://prices.shop:7070/shop.Prices/Quote",
            headers: ["content-type: application/json"], expected: "404",
            says: ["content-type 'application/json' is not application/grpc", "no route matched"]),
        ExplainProbe(
            mesh: "mesh-allow", request: "GET http://catalog.shop:9080/Items/7", headers: [], expected: canary,
            says: ["does not match the regex"]),
        ExplainProbe(
            mesh: "mesh-drop", request: "GET http://db.shop:5432/", headers: [],
            expected: "tcp -> vn_postgres_shop_5432",
            says: ["TCP proxy", "endpoints by EDS: 10.0.0.20:5432"]),
        ExplainProbe(
            mesh: "mesh-allow", request: "GET http://elsewhere:1234/", headers: [], expected: "tcp -> passthrough",
            says: ["passthrough"]),
    ]
}
