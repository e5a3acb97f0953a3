import ArgumentParser
import Foundation
import WeirCapture
import WeirInit
import WeirNetfilter

struct InitCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "init",
        abstract: "Validate a capture spec and install the redirect rules in one atomic transaction, then exit.",
        discussion: """
            Run as an init container (or any privileged step) in the pod's network namespace, or with --netns from the host. \
            Re-running replaces weir's rules with the new spec in the same transaction, so it is idempotent. \
            Bad input exits 2 before anything is touched.
            """
    )

    @OptionGroup var capture: CaptureOptions
    @OptionGroup var target: TargetOptions
    @Flag(help: "Print nothing on success.") var quiet = false

    func run() throws {
        // The step checks every value (flags over WEIR_* over APPMESH_*, namespace, backend) before it installs.
        let step = InitStep(
            flags: capture.flagInput(), netns: target.netns, backend: target.backend, iptablesMode: target.iptablesMode)
        do {
            let line = try step.run(environment: ProcessInfo.processInfo.environment)
            if !quiet { print(line) }
        } catch {
            throw failure(from: error)
        }
    }
}

struct CleanCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "clean",
        abstract:
            "Remove exactly weir's rules, chains and policy routes, atomically. Succeeds when there is nothing to remove."
    )

    @OptionGroup var target: TargetOptions

    func run() throws {
        do {
            // Every value is checked before the namespace is opened.
            let backend = try target.backendChoice()
            let namespace = try target.namespace()
            let removed = try CaptureInstaller(namespace: namespace, backend: backend).clean()
            print(removed ? "weir: removed weir's rules from \(namespace)" : "weir: nothing to remove in \(namespace)")
        } catch {
            throw failure(from: error)
        }
    }
}

struct PlanCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "plan",
        abstract: "Print the rules a spec would install (nft or iptables-restore syntax). Changes nothing."
    )

    @OptionGroup var capture: CaptureOptions
    @Option(help: "nft (an nft -f script) or iptables (iptables-restore and ip6tables-restore input).")
    var format: String = "nft"

    func run() throws {
        do {
            let spec = try capture.resolve()
            let plan = RedirectPlan(spec: spec)
            switch format {
            case "nft": print(NftRendering.render(plan), terminator: "")
            case "iptables":
                for f in spec.families {
                    print("# \(f == .ipv4 ? "iptables" : "ip6tables")-restore --noflush")
                    print(IptablesRendering.render(plan, family: f), terminator: "")
                }
            default:
                throw CommandFailure(
                    status: .badInput, message: "--format '\(format)': unknown format. Use nft or iptables.")
            }
        } catch {
            throw failure(from: error)
        }
    }
}
