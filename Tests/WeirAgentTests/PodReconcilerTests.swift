import Foundation
import Synchronization
import Testing
import WeirAgent
import WeirCapture
import WeirNetfilter
import WeirNetns
import WeirTestSupport

/// One in-memory capture per pod, and a clock the test moves.
final class Pods: Sendable {
    let backends = Mutex<[NamespaceIdentity: InMemoryCaptureBackend]>([:])
    let now = Mutex<UInt64>(0)
    func backend(_ e: Enrollment) -> InMemoryCaptureBackend {
        backends.withLock { b in
            if let x = b[e.identity] { return x }
            let x = InMemoryCaptureBackend()
            b[e.identity] = x
            return x
        }
    }
    func reconciler(registry: PodRegistry = PodRegistry()) -> PodReconciler {
        PodReconciler(registry: registry, backend: { self.backend($0) }, clock: { self.now.withLock { $0 } })
    }
    func advance(_ seconds: UInt64) { now.withLock { $0 += seconds * PodRegistry.second } }
}

struct Boom: Error, CustomStringConvertible { var description: String { "netlink: EPERM" } }

@Suite("the reconciler runs the registry's actions against a capture backend")
struct PodReconcilerTests {
    /// A reconciler with two pods enrolled.
    static func twoPods() async throws -> (Pods, PodReconciler, Enrollment, Enrollment) {
        let pods = Pods()
        let r = pods.reconciler()
        let a = pod(1)
        let b = pod(2)
        try await r.enroll(a)
        try await r.enroll(b)
        return (pods, r, a, b)
    }

    @Test("enroll returns once the rules are installed; a tampered pod is repaired on the next check")
    func enrollAndRepair() async throws {
        let (pods, r, a, b) = try await Self.twoPods()
        #expect(pods.backend(a).installs == 1 && pods.backend(b).installs == 1)
        #expect(await r.registry.allProtected)
        pods.backend(b).tamper { $0.rules.removeFirst() }
        await r.tick()
        #expect(pods.backend(a).installs == 1, "a healthy pod was reinstalled")
        #expect(pods.backend(b).installs == 2, "the tampered pod was not repaired")
        #expect(await r.registry.pods[b.identity]?.repairs == 1)
        #expect(await r.registry.pods[b.identity]?.lastProblem?.contains("missing") == true)
        #expect(await r.registry.allProtected)
    }

    @Test("a failed enrollment throws its reason and leaves nothing enrolled")
    func failedEnroll() async {
        let pods = Pods()
        let r = pods.reconciler()
        let a = pod(1)
        pods.backend(a).failNextInstall(with: Boom())
        await #expect { try await r.enroll(a) } throws: { "\($0)".contains("netlink: EPERM") }
        #expect(await r.registry.pods.isEmpty)
    }

    @Test("unenroll removes the rules; after a restart, right rules are adopted without a rewrite")
    func unenrollAndAdopt() async throws {
        let (pods, r, a, b) = try await Self.twoPods()
        try await r.unenroll(a.identity)
        #expect(try pods.backend(a).observe().ruleset.tables.isEmpty)
        // A new daemon over the same namespaces: b's rules are right, c's were flushed while it was down.
        let c = pod(3)
        try await r.enroll(c)
        pods.backend(c).tamper { $0 = LiveRuleset() }
        let restarted = pods.reconciler()
        await restarted.send(.restored([b, c]))
        #expect(pods.backend(b).installs == 1, "right rules were rewritten on adoption")
        #expect(pods.backend(c).installs == 2, "flushed rules were not repaired on adoption")
        let after = await restarted.registry
        #expect(after.allProtected && after.pods.count == 2)
    }
}

@Suite("the reconciler against real nftables", .enabled(if: canRunNamespaceTests, "needs root (namespaces, nftables)"))
struct PodReconcilerNamespaceTests {
    @Test("10 pods enrolled at once get their rules; a deleted table and a flushed one are repaired; unenroll removes")
    func tenPods() async throws {
        let names = (0..<10).map { "weirt-rec-\(getpid())-\($0)" }
        defer { for n in names { deleteNamespace(n) } }
        var enrollments: [Enrollment] = []
        for n in names {
            try sh("ip", "netns", "add", n)
            let path = "/run/netns/\(n)"
            enrollments.append(
                Enrollment(
                    path: path, identity: try NamespaceHandle.identity(of: path), source: .api,
                    settings: PodSettings(mode: .forwarder, nodeIDs: [], spec: CaptureSpec())))
        }
        let r = PodReconciler(backend: { e in
            CaptureInstaller(namespace: NetworkNamespace(path: e.path), backend: .nftables)
        })
        try await withThrowingTaskGroup(of: Void.self) { group in
            for e in enrollments { group.addTask { try await r.enroll(e) } }
            try await group.waitForAll()
        }
        for n in names {
            #expect(
                try sh(["ip", "netns", "exec", n, "nft", "list", "table", "inet", "weir"], allowFailure: true).status
                    == 0)
        }
        try sh("ip", "netns", "exec", names[0], "nft", "delete", "table", "inet", "weir")
        try sh("ip", "netns", "exec", names[1], "nft", "flush", "table", "inet", "weir")
        await r.tick()
        for n in names {
            let check = try sh([weirBinary, "check", "--netns", "/run/netns/\(n)"], allowFailure: true)
            #expect(check.status == 0, "\(n): \(check.output.prefix(300))")
        }
        let registry = await r.registry
        #expect(registry.allProtected)
        #expect(
            registry.pods[enrollments[0].identity]?.repairs == 1 && registry.pods[enrollments[1].identity]?.repairs == 1
        )
        #expect(registry.pods[enrollments[2].identity]?.repairs == 0)
        for e in enrollments { try await r.unenroll(e.identity) }
        for n in names {
            #expect(
                try sh(["ip", "netns", "exec", n, "nft", "list", "table", "inet", "weir"], allowFailure: true).status
                    != 0)
        }
        #expect(await r.registry.pods.isEmpty)
    }
}
