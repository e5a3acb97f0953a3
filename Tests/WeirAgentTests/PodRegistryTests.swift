import Testing
import WeirAgent
import WeirCapture
import WeirNetns

let sec = PodRegistry.second

func pod(
    _ n: UInt64, path: String? = nil, source: EnrollmentSource = .api, mode: PodMode = .sidecar,
    port: UInt16 = 15001
) -> Enrollment {
    var spec = CaptureSpec()
    spec.outboundPort = port
    return Enrollment(
        path: path ?? "/run/netns/pod\(n)", identity: NamespaceIdentity(device: 4, inode: n), source: source,
        settings: PodSettings(mode: mode, nodeIDs: ["apps/pod\(n)"], spec: spec))
}

extension PodAction {
    var isPersist: Bool { if case .persist = self { return true } else { return false } }
}

@Suite("the pod registry: events in, actions out")
struct PodRegistryTests {
    @Test("an API enrollment is answered only once its rules and listeners are in place")
    func enrollAnswersWhenProtected() {
        var r = PodRegistry()
        let p = pod(1)
        #expect(r.apply(.enroll(p, request: 7), now: 0) == [.install(p)])
        #expect(r.pods[p.identity]?.phase == .enrolling && !r.allProtected)
        let actions = r.apply(.installed(p.identity, error: nil), now: 1)
        #expect(actions.first == .reply(request: 7, error: nil))
        #expect(actions.contains { $0 == .persist([p]) })
        #expect(r.pods[p.identity]?.phase == .protected && r.allProtected)
        // The same request again (a CNI retry) is answered at once and changes nothing.
        #expect(r.apply(.enroll(p, request: 8), now: 2) == [.reply(request: 8, error: nil)])
    }

    @Test(
        "a failed API enrollment tells the caller and is not kept; a failed directory enrollment backs off and retries")
    func failedInstall() {
        var r = PodRegistry()
        let api = pod(1)
        _ = r.apply(.enroll(api, request: 1), now: 0)
        #expect(
            r.apply(.installed(api.identity, error: "kernel refused"), now: 1)
                == [.reply(request: 1, error: "kernel refused"), .release(api.identity, removeRules: true)])
        #expect(r.pods[api.identity] == nil)

        let dir = pod(2, source: .netnsDirectory)
        _ = r.apply(.enroll(dir, request: nil), now: 0)
        #expect(r.apply(.installed(dir.identity, error: "busy"), now: 10).isEmpty)
        #expect(r.pods[dir.identity]?.phase == .degraded(reason: "busy", retryAt: 10 + sec))
        #expect(r.apply(.tick, now: 10 + sec / 2).isEmpty, "retried before its back-off ended")
        #expect(r.apply(.tick, now: 10 + sec) == [.install(dir)])
        // The next failure waits twice as long.
        _ = r.apply(.installed(dir.identity, error: "busy"), now: 20 * sec)
        #expect(r.pods[dir.identity]?.phase == .degraded(reason: "busy", retryAt: 22 * sec))
    }

    @Test("drift is repaired at once, counted, and visible; a repair that fails backs off")
    func drift() {
        var r = PodRegistry()
        let p = pod(1, source: .config)
        _ = r.apply(.enroll(p, request: nil), now: 0)
        _ = r.apply(.installed(p.identity, error: nil), now: 0)
        #expect(r.apply(.drift(p.identity, detail: "rule deleted"), now: sec) == [.repair(p)])
        #expect(r.pods[p.identity]?.phase == .repairing && r.pods[p.identity]?.repairs == 1)
        #expect(r.pods[p.identity]?.lastProblem == "rule deleted")
        // A second notification while the repair is in flight asks for nothing more.
        #expect(r.apply(.drift(p.identity, detail: "again"), now: sec + 1).isEmpty)
        #expect(r.apply(.repaired(p.identity, error: nil), now: sec + 2).isEmpty)
        #expect(r.pods[p.identity]?.phase == .protected)
        _ = r.apply(.drift(p.identity, detail: "flushed"), now: 2 * sec)
        _ = r.apply(.repaired(p.identity, error: "netlink: EPERM"), now: 2 * sec)
        #expect(r.pods[p.identity]?.phase == .degraded(reason: "repair failed: netlink: EPERM", retryAt: 3 * sec))
        #expect(r.apply(.tick, now: 3 * sec) == [.repair(p)])
    }

    @Test("something that keeps undoing the rules is backed off and shown degraded, not looped on")
    func fight() {
        var r = PodRegistry(maxRepairsInWindow: 3, fightWindow: 60 * sec)
        let p = pod(1)
        _ = r.apply(.enroll(p, request: nil), now: 0)
        _ = r.apply(.installed(p.identity, error: nil), now: 0)
        var repairs = 0
        for i in 1...10 {
            let actions = r.apply(.drift(p.identity, detail: "table flushed"), now: UInt64(i) * sec)
            repairs += actions.filter { $0 == .repair(p) }.count
            _ = r.apply(.repaired(p.identity, error: nil), now: UInt64(i) * sec)
        }
        #expect(repairs == 3, "repaired \(repairs) times in 10 s against a fighter")
        guard case .degraded(let reason, let retryAt) = r.pods[p.identity]?.phase else {
            Issue.record("not degraded: \(String(describing: r.pods[p.identity]?.phase))")
            return
        }
        #expect(reason.contains("table flushed") && retryAt == 4 * sec + sec)
        #expect(!r.allProtected)
        // A check that finds the rules right (the fighter stopped) makes the pod protected again.
        _ = r.apply(.checked(p.identity, problem: nil), now: 5 * sec)
        #expect(r.pods[p.identity]?.phase == .protected)
        // Repairs long ago do not count against it.
        #expect(r.apply(.drift(p.identity, detail: "once more"), now: 200 * sec) == [.repair(p)])
    }

    @Test("every protected pod is checked each interval; a check that finds a problem is drift")
    func periodicCheck() {
        var r = PodRegistry(checkInterval: 10 * sec)
        let a = pod(1)
        let b = pod(2)
        for p in [a, b] {
            _ = r.apply(.enroll(p, request: nil), now: 0)
            _ = r.apply(.installed(p.identity, error: nil), now: 0)
        }
        #expect(Set(r.apply(.tick, now: 1)) == [.check(a.identity), .check(b.identity)])
        #expect(r.apply(.tick, now: 5 * sec).isEmpty)
        #expect(r.apply(.tick, now: 10 * sec + 1).count == 2)
        #expect(r.apply(.checked(b.identity, problem: "port changed"), now: 11 * sec) == [.repair(b)])
    }

    @Test("a namespace recreated at the same path is a new pod, and the old one is released without touching rules")
    func recreatedNamespace() {
        var r = PodRegistry()
        let old = pod(1, path: "/run/netns/web")
        _ = r.apply(.enroll(old, request: nil), now: 0)
        _ = r.apply(.installed(old.identity, error: nil), now: 0)
        let new = pod(2, path: "/run/netns/web")
        let actions = r.apply(.enroll(new, request: nil), now: 1)
        #expect(actions == [.release(old.identity, removeRules: false), .install(new)])
        #expect(r.apply(.released(old.identity), now: 2).last?.isPersist == true)
        #expect(r.pods.keys.sorted { $0.inode < $1.inode } == [new.identity])
    }

    @Test("unenroll removes the rules and answers once released; a vanished namespace releases without removing")
    func unenrollAndVanish() {
        var r = PodRegistry()
        let a = pod(1)
        let b = pod(2)
        for p in [a, b] {
            _ = r.apply(.enroll(p, request: nil), now: 0)
            _ = r.apply(.installed(p.identity, error: nil), now: 0)
        }
        #expect(r.apply(.unenroll(a.identity, request: 9), now: 1) == [.release(a.identity, removeRules: true)])
        #expect(r.apply(.unenroll(a.identity, request: nil), now: 1).isEmpty, "released twice")
        #expect(r.enrollments == [b], "a pod being released is not kept across a restart")
        let done = r.apply(.released(a.identity), now: 2)
        #expect(done == [.reply(request: 9, error: nil), .persist([b])])
        #expect(r.apply(.vanished(b.identity), now: 3) == [.release(b.identity, removeRules: false)])
        // Drift reported for a pod being released is ignored.
        #expect(r.apply(.drift(b.identity, detail: "gone"), now: 3).isEmpty)
        _ = r.apply(.released(b.identity), now: 4)
        #expect(r.pods.isEmpty && r.allProtected)
        #expect(
            r.apply(.unenroll(b.identity, request: 3), now: 5)
                == [.reply(request: 3, error: "no pod with namespace \(b.identity) is enrolled")])
    }

    @Test("a pod that vanishes while an API caller waits tells the caller")
    func vanishWhileWaiting() {
        var r = PodRegistry()
        let p = pod(1)
        _ = r.apply(.enroll(p, request: 5), now: 0)
        #expect(
            r.apply(.vanished(p.identity), now: 1)
                == [.reply(request: 5, error: "the namespace disappeared"), .release(p.identity, removeRules: false)])
        // The install's late answer changes nothing.
        #expect(r.apply(.installed(p.identity, error: nil), now: 2).isEmpty)
    }

    @Test("new settings for an enrolled pod reinstall its rules")
    func changedSettings() {
        var r = PodRegistry()
        let p = pod(1)
        _ = r.apply(.enroll(p, request: nil), now: 0)
        _ = r.apply(.installed(p.identity, error: nil), now: 0)
        let changed = pod(1, port: 15010)
        #expect(r.apply(.enroll(changed, request: 4), now: 1) == [.install(changed)])
        #expect(r.apply(.installed(p.identity, error: nil), now: 2).first == .reply(request: 4, error: nil))
        #expect(r.pods[p.identity]?.enrollment == changed)
    }

    @Test("after a restart, pods are adopted (checked, not reinstalled), and one that cannot be adopted retries")
    func restart() {
        var r = PodRegistry()
        let a = pod(1)
        let b = pod(2)
        #expect(r.apply(.restored([a, b]), now: 0) == [.adopt(a), .adopt(b)])
        _ = r.apply(.installed(a.identity, error: nil), now: 1)
        #expect(r.pods[a.identity]?.phase == .protected)
        // An API pod that fails adoption is not dropped: it was enrolled before the restart.
        #expect(r.apply(.installed(b.identity, error: "listener: address in use"), now: 1).isEmpty)
        #expect(r.pods[b.identity] != nil)
        #expect(r.apply(.tick, now: 1 + sec).contains(.adopt(b)))
        // Restoring again (a second state read) adds nothing.
        #expect(r.apply(.restored([a]), now: 2).isEmpty)
    }
}
