/// What weir does with a manifest field. Every field of the App Mesh schema has one, so nothing is accepted and
/// silently dropped.
public enum FieldUse: Sendable, Hashable {
    /// Compiled into Envoy config; the text says into what.
    case honoured(String)
    /// Refused by name; the text says why and what to use instead.
    case refused(String)
    /// Means something outside Envoy's config (identity, selection, bookkeeping); the text says what weir does with it.
    case meta(String)

    public var note: String {
        switch self {
        case .honoured(let s), .refused(let s), .meta(let s): return s
        }
    }
}

/// The shape of a manifest value, as a CRD's OpenAPI v3 schema gives it.
public indirect enum SchemaType: Sendable {
    case string(enumValues: [String]?, minLength: Int?, maxLength: Int?)
    case integer(minimum: Int64?, maximum: Int64?)
    case boolean
    case object([SchemaField])
    case array(SchemaType, minItems: Int?, maxItems: Int?)
    /// A map of strings to strings (`matchLabels`, `metadata.labels`).
    case stringMap
    /// Anything (Kubernetes bookkeeping such as `metadata.managedFields`): not checked.
    case any
}

/// One field of an object: its name, shape, whether it is required, and what weir does with it (nil: as its parent).
public struct SchemaField: Sendable {
    public var name: String
    public var type: SchemaType
    public var required: Bool
    public var use: FieldUse?

    public static func string(
        _ name: String, required: Bool = false, oneOf values: [String]? = nil, minLength: Int? = nil,
        maxLength: Int? = nil, _ use: FieldUse? = nil
    ) -> SchemaField {
        SchemaField(
            name: name, type: .string(enumValues: values, minLength: minLength, maxLength: maxLength),
            required: required, use: use)
    }
    public static func integer(
        _ name: String, required: Bool = false, minimum: Int64? = nil, maximum: Int64? = nil,
        _ use: FieldUse? = nil
    ) -> SchemaField {
        SchemaField(name: name, type: .integer(minimum: minimum, maximum: maximum), required: required, use: use)
    }
    public static func boolean(_ name: String, required: Bool = false, _ use: FieldUse? = nil) -> SchemaField {
        SchemaField(name: name, type: .boolean, required: required, use: use)
    }
    public static func object(_ name: String, required: Bool = false, _ use: FieldUse?, _ fields: [SchemaField])
        -> SchemaField
    {
        SchemaField(name: name, type: .object(fields), required: required, use: use)
    }
    public static func object(_ name: String, required: Bool = false, _ fields: [SchemaField]) -> SchemaField {
        SchemaField(name: name, type: .object(fields), required: required, use: nil)
    }
    public static func array(
        _ name: String, of items: SchemaType, required: Bool = false, minItems: Int? = nil,
        maxItems: Int? = nil, _ use: FieldUse? = nil
    ) -> SchemaField {
        SchemaField(
            name: name, type: .array(items, minItems: minItems, maxItems: maxItems), required: required, use: use)
    }
    public static func stringMap(_ name: String, _ use: FieldUse? = nil) -> SchemaField {
        SchemaField(name: name, type: .stringMap, required: false, use: use)
    }
    public static func any(_ name: String, _ use: FieldUse? = nil) -> SchemaField {
        SchemaField(name: name, type: .any, required: false, use: use)
    }
    /// The same field under another name or with another use.
    public func renamed(_ name: String) -> SchemaField {
        var f = self
        f.name = name
        return f
    }
    public func with(_ use: FieldUse) -> SchemaField {
        var f = self
        f.use = use
        return f
    }
    public func required(_ r: Bool = true) -> SchemaField {
        var f = self
        f.required = r
        return f
    }
}

/// A leaf of a schema: its path (`spec.listeners[].tls.mode`), shape and what weir does with it.
public struct SchemaLeaf: Sendable {
    public var path: String
    public var type: SchemaType
    public var use: FieldUse
}

extension SchemaType {
    /// Every leaf under this type (scalars, string maps, and arrays of scalars as `path[]`), with its effective use.
    public func leaves(path: String, use: FieldUse) -> [SchemaLeaf] {
        switch self {
        case .object(let fields):
            return fields.flatMap { f in
                f.type.leaves(path: path.isEmpty ? f.name : "\(path).\(f.name)", use: f.use ?? use)
            }
        case .array(let items, _, _):
            return items.leaves(path: path + "[]", use: use)
        default:
            return [SchemaLeaf(path: path, type: self, use: use)]
        }
    }

    /// The field at a dotted path without indices (`spec.listeners.tls`), or nil.
    public func field(at path: [Substring]) -> SchemaField? {
        var type = self
        var found: SchemaField?
        for name in path {
            while case .array(let items, _, _) = type { type = items }
            guard case .object(let fields) = type, let f = fields.first(where: { $0.name == name }) else { return nil }
            found = f
            type = f.type
        }
        return found
    }
}

/// Checks a YAML node against a schema as Kubernetes' API server checks a custom resource (strict field validation):
/// unknown fields, types, enums, ranges, lengths, item counts and required fields; and refuses every field whose use
/// is `.refused`, by name. Null is the field left out.
struct SchemaChecker {
    let file: String
    var problems: [MeshProblem] = []

    init(file: String) { self.file = file }

    mutating func problem(_ line: Int, _ path: String, _ message: String) {
        problems.append(MeshProblem(location: SourceLocation(file: file, line: line, field: path), message: message))
    }

    mutating func check(_ node: YAMLNode, _ type: SchemaType, path: String, use: FieldUse?) {
        if case .refused(let why)? = use {
            problem(node.line, path, "weir does not honour this field: \(why)")
            return
        }
        switch type {
        case .any:
            return
        case .string(let values, let minLength, let maxLength):
            guard let s = node.scalar else {
                problem(node.line, path, "must be a string, found \(Self.shape(node))")
                return
            }
            guard s.resolved == .string else {
                problem(node.line, path, "must be a string; YAML reads '\(s.text)' as \(Self.shape(node)), so quote it")
                return
            }
            if let values, !values.contains(s.text) {
                problem(
                    node.line, path,
                    "must be one of \(values.joined(separator: ", ")); found '\(s.text)'\(NearestName.suggestion(s.text, values))"
                )
            }
            let n = s.text.count
            if let minLength, n < minLength {
                problem(
                    node.line, path,
                    minLength == 1 ? "must not be empty" : "must be at least \(minLength) characters long")
            }
            if let maxLength, n > maxLength {
                problem(node.line, path, "must be at most \(maxLength) characters long, found \(n)")
            }
        case .integer(let minimum, let maximum):
            guard case .int(let v)? = node.scalar?.resolved else {
                problem(
                    node.line, path, "must be a whole number, found \(node.text.map { "'\($0)'" } ?? Self.shape(node))")
                return
            }
            switch (minimum, maximum) {
            case (let lo?, let hi?) where v < lo || v > hi:
                problem(node.line, path, "must be from \(lo) to \(hi), found \(v)")
            case (let lo?, nil) where v < lo: problem(node.line, path, "must be at least \(lo), found \(v)")
            case (nil, let hi?) where v > hi: problem(node.line, path, "must be at most \(hi), found \(v)")
            default: break
            }
        case .boolean:
            guard case .bool? = node.scalar?.resolved else {
                problem(
                    node.line, path, "must be true or false, found \(node.text.map { "'\($0)'" } ?? Self.shape(node))")
                return
            }
        case .stringMap:
            guard let pairs = node.mapping else {
                problem(node.line, path, "must be a map of names to strings, found \(Self.shape(node))")
                return
            }
            var seen = Set<String>()
            for p in pairs {
                guard let key = p.key.string, !key.isEmpty else {
                    problem(p.key.line, path, "a key must be a non-empty string")
                    continue
                }
                if !seen.insert(key).inserted { problem(p.key.line, "\(path).\(key)", "given twice") }
                if p.value.isNull { continue }  // Kubernetes reads a null value as ""
                guard let s = p.value.scalar else {
                    problem(p.value.line, "\(path).\(key)", "must be a string, found \(Self.shape(p.value))")
                    continue
                }
                if s.resolved != .string {
                    problem(
                        p.value.line, "\(path).\(key)",
                        "must be a string; YAML reads '\(s.text)' as \(Self.shape(p.value)), so quote it")
                }
            }
        case .array(let items, let minItems, let maxItems):
            guard let list = node.sequence else {
                problem(node.line, path, "must be a list, found \(Self.shape(node))")
                return
            }
            if let minItems, list.count < minItems {
                problem(node.line, path, "needs at least \(minItems) item\(minItems == 1 ? "" : "s")")
            }
            if let maxItems, list.count > maxItems {
                problem(
                    node.line, path, "takes at most \(maxItems) item\(maxItems == 1 ? "" : "s"), found \(list.count)")
            }
            for (i, item) in list.enumerated() {
                if item.isNull {
                    problem(item.line, "\(path)[\(i)]", "must not be null")
                    continue
                }
                check(item, items, path: "\(path)[\(i)]", use: use)
            }
        case .object(let fields):
            guard let pairs = node.mapping else {
                problem(node.line, path, "must be a mapping, found \(Self.shape(node))")
                return
            }
            var seen = Set<String>()
            for p in pairs {
                guard let key = p.key.scalar?.text else {
                    problem(p.key.line, path, "a field name must be a string")
                    continue
                }
                guard seen.insert(key).inserted else {
                    problem(p.key.line, path.isEmpty ? key : "\(path).\(key)", "given twice")
                    continue
                }
                guard let f = fields.first(where: { $0.name == key }) else {
                    let names = fields.map(\.name)
                    problem(
                        p.key.line, path.isEmpty ? key : "\(path).\(key)",
                        "unknown field '\(key)'\(NearestName.suggestion(key, names, always: true))")
                    continue
                }
                if p.value.isNull { continue }
                check(p.value, f.type, path: path.isEmpty ? key : "\(path).\(key)", use: f.use ?? use)
            }
            for f in fields where f.required && node[f.name] == nil {
                problem(node.line, path.isEmpty ? f.name : "\(path).\(f.name)", "is required")
            }
        }
    }

    static func shape(_ node: YAMLNode) -> String {
        switch node.value {
        case .mapping: return "a mapping"
        case .sequence: return "a list"
        case .scalar(let s):
            switch s.resolved {
            case .null: return "null"
            case .bool: return "a boolean"
            case .int, .float: return "a number"
            case .string: return "a string"
            }
        }
    }
}

/// The nearest of a set of names to a misspelt one, for messages that say what was meant.
public enum NearestName {
    /// "; did you mean 'x'?" for the nearest of `names`, or (with `always`) the names there are.
    public static func suggestion(_ key: String, _ names: [String], always: Bool = false) -> String {
        let scored = names.map { ($0, editDistance(key.lowercased(), $0.lowercased())) }.min { $0.1 < $1.1 }
        if let (name, d) = scored, d <= max(2, key.count / 3) { return "; did you mean '\(name)'?" }
        return always && !names.isEmpty ? "; the fields here are \(names.joined(separator: ", "))" : ""
    }

    static func editDistance(_ a: String, _ b: String) -> Int {
        let a = Array(a.unicodeScalars)
        let b = Array(b.unicodeScalars)
        if a.isEmpty || b.isEmpty { return max(a.count, b.count) }
        var row = Array(0...b.count)
        for i in 1...a.count {
            var previous = row[0]
            row[0] = i
            for j in 1...b.count {
                let current = row[j]
                row[j] = a[i - 1] == b[j - 1] ? previous : 1 + min(previous, row[j], row[j - 1])
                previous = current
            }
        }
        return row[b.count]
    }
}
