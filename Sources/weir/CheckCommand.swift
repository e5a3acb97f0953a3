import ArgumentParser
import Foundation
import WeirCapture
import WeirNetfilter
import WeirInit

struct CheckCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check",
        abstract:
            "Verify that weir's rules are in place, nothing bypasses them, and (--probe) that they really redirect.",
        discussion: """
            Reads the live ruleset back over netlink and compares it with the plan of the spec stored in weir's table \
            (or of the spec given as flags). Exit 0 when healthy, 3 when problems were found.
            """
    )

    @OptionGroup var capture: CaptureOptions
    @OptionGroup var target: TargetOptions
    @Flag(
        help: "Prove it with real connections inside the namespace (IPv4 and IPv6), checking the original destination.")
    var probe = false
    @Flag(help: "Machine-readable output.") var json = false

    func run() throws {
        let report: CheckReport
        do {
            let spec: CaptureSpec? = capture.isEmpty && !hasSpecEnvironment() ? nil : try capture.resolve()
            let backend = try target.backendChoice()
            report = try CaptureInstaller(namespace: try target.namespace(), backend: backend).check(
                spec: spec, probe: probe)
        } catch {
            throw failure(from: error)
        }
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            var object = try JSONSerialization.jsonObject(with: encoder.encode(report)) as! [String: Any]
            object["healthy"] = report.healthy
            print(
                String(
                    decoding: try JSONSerialization.data(
                        withJSONObject: object, options: [.prettyPrinted, .sortedKeys]), as: UTF8.self))
        } else {
            print("weir check: \(report.namespace), backend \(report.backend), spec from \(report.specSource)")
            if !report.spec.isEmpty { print("  spec: \(report.spec.joined(separator: " "))") }
            for p in report.problems { print("  PROBLEM \(p)") }
            for w in report.warnings { print("  warning \(w)") }
            for c in report.probe?.checks ?? [] { print("  probe \(c.name): \(c.outcome) — \(c.detail)") }
            print(
                report.healthy
                    ? "healthy" : "\(report.problems.count + (report.probe?.problems.count ?? 0)) problem(s) found")
        }
        if !report.healthy { throw ExitCode(ExitStatus.checkFoundProblems.rawValue) }
    }

    private func hasSpecEnvironment() -> Bool {
        let env = ProcessInfo.processInfo.environment
        return env.keys.contains { k in
            (k.hasPrefix("WEIR_")
                && !["WEIR_LOG_LEVEL", "WEIR_NETNS", "WEIR_BACKEND", "WEIR_IPTABLES_MODE"].contains(k))
                || k.hasPrefix("APPMESH_")
        }
    }
}
