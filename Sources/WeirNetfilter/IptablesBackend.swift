import WeirCapture
import WeirSystem

/// The fallback: iptables-restore / ip6tables-restore with `--noflush`, into weir's own chains.
/// Each family's input is one restore (one transaction per family); both are dry-run with `--test` first.
public struct IptablesBackend: Sendable {
    /// Which iptables: `nft` (iptables-nft), `legacy` (x_tables), or `auto`, whichever holds more rules (nft on a tie).
    public enum Mode: String, Sendable, CaseIterable { case auto, nft, legacy }

    /// No iptables-restore is installed for the variant asked for (or, under `auto`, for either).
    public struct ModeError: Error, CustomStringConvertible {
        /// Which program is missing, and to install the iptables package.
        public let message: String
        /// `message`, unchanged, for the user.
        public var description: String { message }
    }

    /// An iptables or ip6tables `-save` or `-restore` run exited with a failure status.
    public struct RestoreError: Error, CustomStringConvertible {
        /// The program that failed, such as `ip6tables-nft-restore`.
        public let program: String
        /// What it printed: its standard error (a restore's standard output after it).
        public let output: String
        /// Says the program refused weir's rules and nothing was changed, with its trimmed output.
        public var description: String {
            "\(program) refused weir's rules, so nothing was changed: \(output.trimmingWhitespace)"
        }
    }

    /// iptables has no sets: each element of a long list is a rule of its own, and the outbound include lists
    /// multiply (every network with every port). Beyond this many rules in one family restores and every
    /// packet's walk slow down; weir refuses before changing anything, and names the nftables backend.
    public static let maxRules = 20_000

    /// The plan needs more rules than the iptables backend takes.
    public struct TooManyRules: Error, CustomStringConvertible {
        /// The IP family whose rules go over the limit.
        public let family: IPFamily
        /// How many rules the plan would need in that family.
        public let rules: Int
        /// Explains the limit and why lists multiply, and points to `--backend nftables`.
        public var description: String {
            "the iptables backend would need \(rules) \(family.rawValue) rules for this spec (at most \(IptablesBackend.maxRules)): "
                + "iptables has no sets, so every listed network, port and id is a rule, and --outbound-include-cidr "
                + "multiplies with --outbound-include-port. Use --backend nftables, which looks long lists up in sets. "
                + "Nothing was changed."
        }
    }

    /// The iptables variant asked for; `auto` is resolved anew by each call.
    public let mode: Mode
    /// A backend that drives `mode`'s iptables-restore and iptables-save (ip6tables- for IPv6).
    public init(mode: Mode) { self.mode = mode }

    /// Refuses a plan with more rules than `maxRules` in a family.
    public static func checkSize(_ plan: RedirectPlan) throws(TooManyRules) {
        for family in plan.spec.families {
            let rules = IptablesRendering.ruleCount(plan, family: family)
            if rules > maxRules { throw TooManyRules(family: family, rules: rules) }
        }
    }

    /// The variant to use: the one that already holds rules under auto (rules in the other would be silently ignored
    /// by half the tools), nft when neither or both do.
    public func resolvedVariant() throws -> Mode {
        switch mode {
        case .nft, .legacy:
            guard Subprocess.locate("iptables-\(mode.rawValue)-restore") != nil else {
                throw ModeError(
                    message:
                        "--iptables-mode \(mode.rawValue): iptables-\(mode.rawValue)-restore is not installed. Install the iptables package."
                )
            }
            return mode
        case .auto:
            let hasNft = Subprocess.locate("iptables-nft-restore") != nil
            let hasLegacy = Subprocess.locate("iptables-legacy-restore") != nil
            guard hasNft || hasLegacy else {
                throw ModeError(
                    message: "--backend iptables: no iptables-restore is installed. Install the iptables package.")
            }
            if !hasLegacy { return .nft }
            if !hasNft { return .legacy }
            // Reading legacy tables that do not exist would load x_tables modules; /proc tells without loading them.
            guard Self.legacyHasTables() else { return .nft }
            let nftRules =
                Self.nftVariantHasTables() ? ruleCount(try save(.nft, .ipv4)) + ruleCount(try save(.nft, .ipv6)) : 0
            let legacyRules = ruleCount(try save(.legacy, .ipv4)) + ruleCount(try save(.legacy, .ipv6))
            return legacyRules > nftRules ? .legacy : .nft
        }
    }

    func program(_ variant: Mode, _ family: IPFamily, _ verb: String) -> String {
        "\(family == .ipv4 ? "iptables" : "ip6tables")-\(variant.rawValue)-\(verb)"
    }

    func save(_ variant: Mode, _ family: IPFamily) throws -> String {
        let p = program(variant, family, "save")
        let r = try Subprocess.run(p, [])
        guard r.status == 0 else { throw RestoreError(program: p, output: r.stderr) }
        return r.stdout
    }

    func ruleCount(_ saved: String) -> Int { saved.split(separator: "\n").filter { $0.hasPrefix("-A ") }.count }

    /// Installs the plan's chains; jumps from the built-in chains are added once.
    public func apply(_ plan: RedirectPlan) throws {
        try Self.checkSize(plan)
        let variant = try resolvedVariant()
        var inputs: [(IPFamily, String)] = []
        // Chains of a previous spec that this one no longer has (say tproxy → redirect) are removed in the same restore.
        for family in plan.spec.families {
            let saved = try save(variant, family)
            var jumps = Set<String>()
            for c in plan.chains {
                if let line = IptablesRendering.jumpLine(c), !Self.section(saved, table: c.iptablesTable).contains(line)
                {
                    jumps.insert(IptablesRendering.jumpKey(table: c.iptablesTable, chain: c))
                }
            }
            var text = IptablesRendering.render(plan, family: family, jumps: jumps)
            text = Self.removingStale(saved: saved, keeping: plan, into: text)
            inputs.append((family, text))
        }
        if !plan.spec.ipv6 {
            // IPv6 capture turned off: remove what an earlier dual-stack install left.
            let saved = try save(variant, .ipv6)
            let text = Self.cleanInput(saved: saved)
            if !text.isEmpty { inputs.append((.ipv6, text)) }
        }
        for (family, text) in inputs { try restore(variant, family, text, test: true) }
        for (family, text) in inputs { try restore(variant, family, text, test: false) }
    }

    /// Removes weir's chains and jumps in every family. Returns whether anything was there.
    @discardableResult
    public func clean() throws -> Bool {
        let variant = try resolvedVariant()
        var removed = false
        for family in IPFamily.allCases {
            let text = Self.cleanInput(saved: try save(variant, family))
            if !text.isEmpty {
                try restore(variant, family, text, test: false)
                removed = true
            }
        }
        return removed
    }

    func restore(_ variant: Mode, _ family: IPFamily, _ text: String, test: Bool) throws {
        let p = program(variant, family, "restore")
        let r = try Subprocess.run(p, ["--noflush"] + (test ? ["--test"] : []), input: text)
        guard r.status == 0 else { throw RestoreError(program: p, output: r.stderr + r.stdout) }
    }

    /// weir's chains and rules as the live `*-save` output shows them: table → chain → rule lines.
    public func liveChains(family: IPFamily) throws -> [String: [String: [String]]] {
        Self.weirChains(try save(try resolvedVariant(), family))
    }

    static func weirChains(_ saved: String) -> [String: [String: [String]]] {
        var out: [String: [String: [String]]] = [:]
        var table = ""
        for line in saved.split(separator: "\n").map(String.init) {
            if line.hasPrefix("*") {
                table = String(line.dropFirst())
                continue
            }
            if line.hasPrefix(":WEIR_") {
                let name = String(line.dropFirst().split(separator: " ")[0])
                out[table, default: [:]][name, default: []] = []
            } else if line.hasPrefix("-A WEIR_") {
                let name = String(line.split(separator: " ")[1])
                out[table, default: [:]][name, default: []].append(line)
            } else if line.hasPrefix("-A ")
                && line.contains(IptablesRendering.saveString(IptablesRendering.jumpComment))
            {
                let name = String(line.split(separator: " ")[1])
                out[table, default: [:]]["jump:" + name, default: []].append(line)
            }
        }
        return out
    }

    static func section(_ saved: String, table: String) -> [String] {
        var inTable = false
        var lines: [String] = []
        for line in saved.split(separator: "\n").map(String.init) {
            if line.hasPrefix("*") {
                inTable = line == "*" + table
                continue
            }
            if inTable { lines.append(line) }
        }
        return lines
    }

    /// Restore input that deletes weir's jumps and chains found in `saved`; empty when there are none.
    static func cleanInput(saved: String) -> String {
        var out = ""
        for (table, chains) in weirChains(saved).sorted(by: { $0.key < $1.key }) {
            var body = ""
            for (name, lines) in chains where name.hasPrefix("jump:") {
                for l in lines { body += "-D" + l.dropFirst(2) + "\n" }
            }
            for name in chains.keys.sorted() where !name.hasPrefix("jump:") {
                body += "-F \(name)\n-X \(name)\n"
            }
            if !body.isEmpty { out += "*\(table)\n" + body + "COMMIT\n" }
        }
        return out
    }

    /// Adds deletes for weir chains (and their jumps) that the new plan does not have.
    static func removingStale(saved: String, keeping plan: RedirectPlan, into text: String) -> String {
        let wanted = Set(plan.chains.map { "\($0.iptablesTable)/\($0.iptablesName)" })
        var extra: [String: String] = [:]
        // Jumps first, then the chains they point to: a chain still referenced cannot be deleted.
        for (table, chains) in weirChains(saved).sorted(by: { $0.key < $1.key }) {
            for (name, lines) in chains.sorted(by: { $0.key < $1.key }) where name.hasPrefix("jump:") {
                for l in lines {
                    let target = String(l.split(separator: " ").last ?? "")
                    if !wanted.contains("\(table)/\(target)") {
                        extra[table, default: ""] += "-D" + l.dropFirst(2) + "\n"
                    }
                }
            }
            for name in chains.keys.sorted() where !name.hasPrefix("jump:") && !wanted.contains("\(table)/\(name)") {
                extra[table, default: ""] += "-F \(name)\n-X \(name)\n"
            }
        }
        guard !extra.isEmpty else { return text }
        var out = text
        for (table, body) in extra.sorted(by: { $0.key < $1.key }) {
            if out.contains("*\(table)\n") {
                // Deletes go after the table's own lines, before its COMMIT, so jumps go before chains are removed.
                var lines = out.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
                if let start = lines.firstIndex(of: "*\(table)"), let commit = lines[start...].firstIndex(of: "COMMIT")
                {
                    lines.insert(contentsOf: body.split(separator: "\n").map(String.init), at: commit)
                }
                out = lines.joined(separator: "\n")
            } else {
                out += "*\(table)\n" + body + "COMMIT\n"
            }
        }
        return out
    }
}
