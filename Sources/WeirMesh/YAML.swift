import CYaml

/// Limits on what one YAML file may make weir do, enforced while it is parsed: a manifest past one is refused like any
/// other bad input, instead of taking the process's stack or memory.
public struct YAMLLimits: Sendable, Hashable {
    /// Bytes in one file.
    public var maxBytes = 8 << 20
    /// Nesting of mappings and sequences (App Mesh manifests nest about 12 deep, Envoy resources about 25).
    public var maxDepth = 64
    /// Documents (`---`) in one file.
    public var maxDocuments = 2000
    /// Nodes in one file, counting every alias as the nodes it stands for.
    public var maxNodes = 1_000_000
    public init() {}
    public static let `default` = YAMLLimits()
}

/// A parsed YAML node, with the line it starts on. Scalars keep their text and how YAML 1.1 (the YAML Kubernetes
/// reads) resolves them; a mapping keeps its pairs in order.
public struct YAMLNode: Sendable {
    public enum Value: Sendable {
        case scalar(Scalar)
        case sequence([YAMLNode])
        case mapping([Pair])
    }
    public struct Pair: Sendable {
        public var key: YAMLNode
        public var value: YAMLNode
    }
    /// What a scalar is, as Kubernetes' YAML reader (go-yaml v2, YAML 1.1) resolves it.
    public enum Resolved: Sendable, Hashable {
        case null
        case bool(Bool)
        case int(Int64)
        case float(Double)
        case string
    }
    public struct Scalar: Sendable {
        public var text: String
        public var resolved: Resolved
    }
    public var value: Value
    /// 1-based line where the node starts.
    public var line: Int

    public var scalar: Scalar? { if case .scalar(let s) = value { return s } else { return nil } }
    public var sequence: [YAMLNode]? { if case .sequence(let s) = value { return s } else { return nil } }
    public var mapping: [Pair]? { if case .mapping(let m) = value { return m } else { return nil } }
    /// YAML null (`field:`, `~`, `null`): Kubernetes reads it as the field left out.
    public var isNull: Bool { scalar?.resolved == .null }
    /// A scalar's text (whatever it resolves to).
    public var text: String? { scalar?.text }
    /// A scalar that resolves to a string.
    public var string: String? { scalar.flatMap { $0.resolved == .string ? $0.text : nil } }
    public var int: Int? { if case .int(let v)? = scalar?.resolved { return Int(exactly: v) } else { return nil } }
    public var bool: Bool? { if case .bool(let v)? = scalar?.resolved { return v } else { return nil } }

    /// The value under `key` in a mapping; nil when absent or null (Kubernetes does not tell the two apart).
    public subscript(key: String) -> YAMLNode? {
        guard let pairs = mapping else { return nil }
        for p in pairs where p.key.scalar?.text == key { return p.value.isNull ? nil : p.value }
        return nil
    }
}

/// A file that is not YAML weir will read: invalid YAML, or past one of the `YAMLLimits`.
public struct YAMLFailure: Error, Sendable, CustomStringConvertible {
    public var line: Int
    public var message: String
    public var description: String { "line \(line): \(message)" }
}

extension YAMLNode {
    /// Parses every document of `text`. Iterative (a deeply nested file cannot exhaust the stack) and bounded by
    /// `limits` as it goes: parsing stops at the first limit passed.
    public static func documents(_ text: String, limits: YAMLLimits = .default) throws(YAMLFailure) -> [YAMLNode] {
        var bytes = Array(text.utf8)
        if bytes.count > limits.maxBytes {
            throw YAMLFailure(
                line: 1,
                message: "the file is \(bytes.count) bytes; weir reads files of at most \(limits.maxBytes) bytes")
        }
        let result = bytes.withUnsafeMutableBufferPointer { buffer -> Result<[YAMLNode], YAMLFailure> in
            var composer = Composer(limits: limits)
            return composer.run(buffer)
        }
        bytes.removeAll()
        return try result.get()
    }

    /// JSON text for this node (mapping keys as strings; YAML 1.1 scalars as JSON numbers, booleans and null), without
    /// the top-level keys in `omitting`.
    public func json(omitting: Set<String> = []) throws(YAMLFailure) -> String {
        var out = ""
        if !omitting.isEmpty, let pairs = mapping {
            try YAMLNode(value: .mapping(pairs.filter { !omitting.contains($0.key.text ?? "") }), line: line).writeJSON(
                into: &out)
        } else {
            try writeJSON(into: &out)
        }
        return out
    }

    func writeJSON(into out: inout String) throws(YAMLFailure) {
        switch value {
        case .scalar(let s):
            switch s.resolved {
            case .null: out += "null"
            case .bool(let b): out += b ? "true" : "false"
            case .int(let v): out += String(v)
            case .float(let d) where d.isFinite: out += "\(d)"
            case .float(let d): Self.quote(d.isNaN ? "NaN" : d > 0 ? "Infinity" : "-Infinity", into: &out)
            case .string: Self.quote(s.text, into: &out)
            }
        case .sequence(let items):
            out += "["
            for (i, item) in items.enumerated() {
                if i > 0 { out += "," }
                try item.writeJSON(into: &out)
            }
            out += "]"
        case .mapping(let pairs):
            out += "{"
            var seen = Set<String>()
            for (i, p) in pairs.enumerated() {
                guard let key = p.key.scalar?.text else {
                    throw YAMLFailure(line: p.key.line, message: "a mapping key must be a scalar")
                }
                guard seen.insert(key).inserted else {
                    throw YAMLFailure(line: p.key.line, message: "key '\(key)' is given twice")
                }
                if i > 0 { out += "," }
                Self.quote(key, into: &out)
                out += ":"
                try p.value.writeJSON(into: &out)
            }
            out += "}"
        }
    }

    static func quote(_ s: String, into out: inout String) {
        out += "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where u.value < 0x20:
                let hex = String(u.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: out.unicodeScalars.append(u)
            }
        }
        out += "\""
    }
}

/// Builds nodes from libyaml's events with an explicit stack, counting depth, documents and nodes (aliases counted as
/// the nodes they repeat) against the limits.
private struct Composer {
    struct Frame {
        var isMapping: Bool
        var items: [YAMLNode] = []
        var line: Int
        var anchor: String?
        var tag: String?
        /// Nodes under this one, itself included, with aliases expanded.
        var size = 1
    }
    let limits: YAMLLimits
    var stack: [Frame] = []
    var anchors: [String: (node: YAMLNode, size: Int)] = [:]
    var documents: [YAMLNode] = []
    var documentCount = 0
    var nodes = 0

    init(limits: YAMLLimits) { self.limits = limits }

    mutating func run(_ buffer: UnsafeMutableBufferPointer<UInt8>) -> Result<[YAMLNode], YAMLFailure> {
        var parser = yaml_parser_t()
        guard yaml_parser_initialize(&parser) == 1 else {
            return .failure(YAMLFailure(line: 1, message: "out of memory"))
        }
        defer { yaml_parser_delete(&parser) }
        yaml_parser_set_input_string(&parser, buffer.baseAddress, buffer.count)
        yaml_parser_set_encoding(&parser, YAML_UTF8_ENCODING)
        while true {
            var event = yaml_event_t()
            guard yaml_parser_parse(&parser, &event) == 1 else { return .failure(Self.parseError(parser)) }
            defer { yaml_event_delete(&event) }
            let line = Int(event.start_mark.line) + 1
            do throws(YAMLFailure) {
                switch event.type {
                case YAML_STREAM_END_EVENT:
                    return .success(documents)
                case YAML_DOCUMENT_START_EVENT:
                    documentCount += 1
                    if documentCount > limits.maxDocuments {
                        throw YAMLFailure(
                            line: line, message: "more than \(limits.maxDocuments) documents in one file (weir's limit)"
                        )
                    }
                    anchors = [:]
                case YAML_SCALAR_EVENT:
                    let s = event.data.scalar
                    let text = String(decoding: UnsafeBufferPointer(start: s.value, count: s.length), as: UTF8.self)
                    let tag = s.tag.map { String(cString: $0) }
                    let resolved = Self.resolve(text, tag: tag, plain: s.style == YAML_PLAIN_SCALAR_STYLE)
                    let node = YAMLNode(value: .scalar(.init(text: text, resolved: resolved)), line: line)
                    try count(1, line)
                    if let a = s.anchor { anchors[String(cString: a)] = (node, 1) }
                    try add(node, size: 1)
                case YAML_ALIAS_EVENT:
                    let name = String(cString: event.data.alias.anchor)
                    guard let (node, size) = anchors[name] else {
                        throw YAMLFailure(line: line, message: "alias *\(name) names no anchor")
                    }
                    try count(size, line)
                    try add(node, size: size)
                case YAML_SEQUENCE_START_EVENT, YAML_MAPPING_START_EVENT:
                    let isMapping = event.type == YAML_MAPPING_START_EVENT
                    if stack.count >= limits.maxDepth {
                        throw YAMLFailure(
                            line: line, message: "nested more than \(limits.maxDepth) levels deep (weir's limit)")
                    }
                    try count(1, line)
                    let anchor = isMapping ? event.data.mapping_start.anchor : event.data.sequence_start.anchor
                    let tag = isMapping ? event.data.mapping_start.tag : event.data.sequence_start.tag
                    stack.append(
                        Frame(
                            isMapping: isMapping, line: line, anchor: anchor.map { String(cString: $0) },
                            tag: tag.map { String(cString: $0) }))
                case YAML_SEQUENCE_END_EVENT, YAML_MAPPING_END_EVENT:
                    let f = stack.removeLast()
                    let node: YAMLNode
                    if f.isMapping {
                        var pairs: [YAMLNode.Pair] = []
                        pairs.reserveCapacity(f.items.count / 2)
                        var i = 0
                        while i + 1 < f.items.count {
                            pairs.append(YAMLNode.Pair(key: f.items[i], value: f.items[i + 1]))
                            i += 2
                        }
                        node = YAMLNode(value: .mapping(pairs), line: f.line)
                    } else {
                        node = YAMLNode(value: .sequence(f.items), line: f.line)
                    }
                    if let a = f.anchor { anchors[a] = (node, f.size) }
                    try add(node, size: f.size)
                default:
                    break  // stream start, document end
                }
            } catch {
                return .failure(error)
            }
        }
    }

    mutating func count(_ n: Int, _ line: Int) throws(YAMLFailure) {
        nodes += n
        if nodes > limits.maxNodes {
            throw YAMLFailure(
                line: line, message: "more than \(limits.maxNodes) nodes in one file, aliases expanded (weir's limit)")
        }
    }

    mutating func add(_ node: YAMLNode, size: Int) throws(YAMLFailure) {
        if stack.isEmpty {
            documents.append(node)
        } else {
            stack[stack.count - 1].items.append(node)
            stack[stack.count - 1].size += size
        }
    }

    static func parseError(_ p: yaml_parser_t) -> YAMLFailure {
        let problem = p.problem.map { String(cString: $0) } ?? "cannot be parsed"
        let context = p.context.map { " " + String(cString: $0) } ?? ""
        let line = Int(p.problem_mark.line) + 1
        return YAMLFailure(line: line, message: "not valid YAML: \(problem)\(context)")
    }

    /// A scalar as go-yaml v2 (Kubernetes' reader) resolves it: an explicit tag wins, quoted text is a string, and plain
    /// text is null, a boolean (YAML 1.1 spellings too), an integer, a float, or else a string.
    static func resolve(_ text: String, tag: String?, plain: Bool) -> YAMLNode.Resolved {
        let core = "tag:yaml.org,2002:"
        if let tag, tag != "!" {
            switch tag {
            case core + "str", core + "binary", core + "timestamp": return .string
            case core + "null": return .null
            case core + "bool":
                return resolvePlain(text).flatMap { if case .bool = $0 { return $0 } else { return nil } } ?? .string
            case core + "int":
                return resolvePlain(text).flatMap { if case .int = $0 { return $0 } else { return nil } } ?? .string
            case core + "float":
                switch resolvePlain(text) {
                case .int(let v)?: return .float(Double(v))
                case .float(let d)?: return .float(d)
                default: return .string
                }
            default: return .string
            }
        }
        guard plain, tag == nil else { return .string }
        return resolvePlain(text) ?? .string
    }

    static let nulls: Set<String> = ["", "~", "null", "Null", "NULL"]
    static let trues: Set<String> = ["y", "Y", "yes", "Yes", "YES", "on", "On", "ON", "true", "True", "TRUE"]
    static let falses: Set<String> = ["n", "N", "no", "No", "NO", "off", "Off", "OFF", "false", "False", "FALSE"]

    static func resolvePlain(_ text: String) -> YAMLNode.Resolved? {
        if nulls.contains(text) { return .null }
        if trues.contains(text) { return .bool(true) }
        if falses.contains(text) { return .bool(false) }
        guard let first = text.utf8.first,
            first == UInt8(ascii: "-") || first == UInt8(ascii: "+")
                || first == UInt8(ascii: ".") || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(first)
        else { return nil }
        if let v = integer(text) { return .int(v) }
        switch text {
        case ".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF": return .float(.infinity)
        case "-.inf", "-.Inf", "-.INF": return .float(-.infinity)
        case ".nan", ".NaN", ".NAN": return .float(.nan)
        default: break
        }
        let digits = text.replacingUnderscores()
        if digits.contains(where: { $0.isNumber }), digits.allSatisfy({ "0123456789.eE+-".contains($0) }),
            let d = Double(digits)
        {
            return .float(d)
        }
        return nil
    }

    /// Decimal, 0x hex, 0b binary and leading-0 octal, with `_` separators, as go-yaml v2 reads integers.
    static func integer(_ text: String) -> Int64? {
        var s = Substring(text.replacingUnderscores())
        var negative = false
        if s.first == "-" || s.first == "+" {
            negative = s.first == "-"
            s = s.dropFirst()
        }
        guard !s.isEmpty else { return nil }
        var radix = 10
        if s.hasPrefix("0x") {
            radix = 16
            s = s.dropFirst(2)
        } else if s.hasPrefix("0b") {
            radix = 2
            s = s.dropFirst(2)
        } else if s.hasPrefix("0o") {
            radix = 8
            s = s.dropFirst(2)
        } else if s.count > 1 && s.hasPrefix("0") {
            radix = 8
            s = s.dropFirst()
        }
        guard !s.isEmpty, let magnitude = UInt64(s, radix: radix) else { return nil }
        if negative { return magnitude <= UInt64(Int64.max) + 1 ? Int64(truncatingIfNeeded: 0 &- magnitude) : nil }
        return magnitude <= UInt64(Int64.max) ? Int64(magnitude) : nil
    }
}

private extension String {
    func replacingUnderscores() -> String { contains("_") ? String(filter { $0 != "_" }) : self }
}
