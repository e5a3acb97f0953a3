/// YAML shapes that took weir down before it bounded its reading: as App Mesh manifests (`mesh`) and as Envoy resource
/// files (`envoy`), each past one of `YAMLLimits`, with the words its refusal must contain.
public enum HostileYAML {
    public struct Shape: Sendable, CustomStringConvertible {
        public var name: String
        /// The file, for a mesh directory and for an Envoy resources directory.
        public var mesh: String
        public var envoy: String
        /// What the refusal says (the limit).
        public var mentions: String
        public var description: String { name }
    }

    static let meshHead =
        "apiVersion: appmesh.k8s.aws/v1beta2\nkind: Mesh\nmetadata: {name: hostile}\nspec:\n  awsName: "
    static let envoyHead =
        "resources:\n- \"@type\": type.googleapis.com/envoy.config.cluster.v3.Cluster\n  name: hostile\n  metadata: "

    /// `[[[[…]]]]`, `depth` deep: 2,864 of these overflowed the stack of the old parser.
    public static func flow(_ depth: Int) -> String {
        String(repeating: "[", count: depth) + String(repeating: "]", count: depth)
    }

    /// `- - - - x`: block sequences nested `depth` deep on one line.
    public static func block(_ depth: Int) -> String { String(repeating: "- ", count: depth) + "x" }

    /// Nine levels of nine aliases each: 9^9 nodes from 557 bytes.
    public static let aliases: String = {
        var lines = ["a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]"]
        let names = Array("abcdefghi").map(String.init)
        for i in 1..<names.count {
            lines.append(
                "\(names[i]): &\(names[i]) [" + Array(repeating: "*\(names[i - 1])", count: 9).joined(separator: ",")
                    + "]")
        }
        return lines.joined(separator: "\n") + "\n"
    }()

    public static let shapes: [Shape] = [
        Shape(
            name: "flow nesting 3000 deep", mesh: meshHead + flow(3000) + "\n", envoy: envoyHead + flow(3000) + "\n",
            mentions: "nested more than 64 levels deep"),
        Shape(
            name: "block nesting 3000 deep", mesh: meshHead + "\n    " + block(3000) + "\n",
            envoy: envoyHead + "\n    " + block(3000) + "\n",
            mentions: "nested more than 64 levels deep"),
        Shape(
            name: "10,000 documents", mesh: String(repeating: "---\nkind: ConfigMap\napiVersion: v1\n", count: 10_000),
            envoy: String(repeating: "---\nresources: []\n", count: 10_000), mentions: "more than 2000 documents"),
        Shape(
            name: "a 20 MB file", mesh: meshHead + "\"" + String(repeating: "x", count: 20 << 20) + "\"\n",
            envoy: envoyHead + "{k: \"" + String(repeating: "x", count: 20 << 20) + "\"}\n",
            mentions: "at most 8388608 bytes"),
        Shape(
            name: "exponential aliases", mesh: aliases + "apiVersion: v1\nkind: ConfigMap\n",
            envoy: aliases + "resources: *i\n",
            mentions: "more than 1000000 nodes"),
    ]
}
