import Dispatch
import Logging
import WeirCapture
import WeirNetfilter
import WeirNetns
import WeirSystem

/// Runs the pod registry's actions for the rules: installs, adopts, checks, repairs and removes each pod's capture
/// through a `CaptureBackend`, and feeds the outcomes back as events. Backend calls run on their own OS thread
/// (they enter namespaces and wait on netlink), never on a cooperative one.
public actor PodReconciler {
    /// The registry, as it stands.
    public private(set) var registry: PodRegistry
    let backend: @Sendable (Enrollment) -> any CaptureBackend
    let serving: (any PodServing)?
    let clock: @Sendable () -> UInt64
    let onPersist: @Sendable ([Enrollment]) -> Void
    let logger: Logger
    var nextRequest: UInt64 = 0
    var waiting: [UInt64: CheckedContinuation<String?, Never>] = [:]

    /// A reconciler over `registry`; `backend` gives the capture of one pod's namespace.
    public init(
        registry: PodRegistry = PodRegistry(), backend: @escaping @Sendable (Enrollment) -> any CaptureBackend,
        serving: (any PodServing)? = nil,
        clock: @escaping @Sendable () -> UInt64 = PodReconciler.monotonicNanoseconds,
        onPersist: @escaping @Sendable ([Enrollment]) -> Void = { _ in },
        logger: Logger = Logger(label: "weir.daemon")
    ) {
        self.logger = logger
        self.registry = registry
        self.backend = backend
        self.serving = serving
        self.clock = clock
        self.onPersist = onPersist
    }

    /// Enrolls a pod and returns once its rules are in place; throws what prevented it.
    public func enroll(_ e: Enrollment) async throws(PodEnrollmentError) {
        if let error = await request({ .enroll(e, request: $0) }) {
            throw PodEnrollmentError(path: e.path, reason: error)
        }
    }

    /// Unenrolls a pod (its rules removed) and returns once it is released.
    public func unenroll(_ identity: NamespaceIdentity) async throws(PodEnrollmentError) {
        if let error = await request({ .unenroll(identity, request: $0) }) {
            throw PodEnrollmentError(path: "\(identity)", reason: error)
        }
    }

    /// Applies an event that needs no answer (a vanished namespace, a notification of drift, a restart's pods).
    public func send(_ event: PodEvent) async { await run(registry.apply(event, now: clock())) }

    /// Lets time pass: back-offs that ended are retried and, each interval, every protected pod is checked.
    public func tick() async { await send(.tick) }

    func request(_ make: (UInt64) -> PodEvent) async -> String? {
        nextRequest += 1
        let id = nextRequest
        let event = make(id)
        return await withCheckedContinuation { (c: CheckedContinuation<String?, Never>) in
            waiting[id] = c
            Task { await self.run(self.registry.apply(event, now: self.clock())) }
        }
    }

    /// Runs actions until none are left: each effect's outcome is an event whose actions run in turn.
    func run(_ first: [PodAction]) async {
        var queue = first
        while !queue.isEmpty {
            let action = queue.removeFirst()
            if let event = await perform(action) { queue += registry.apply(event, now: clock()) }
        }
    }

    func perform(_ action: PodAction) async -> PodEvent? {
        let event = await effect(action)
        log(action, outcome: event)
        return event
    }

    /// Says what happened to a pod: enrolled, repaired (and why), degraded, released.
    func log(_ action: PodAction, outcome: PodEvent?) {
        switch (action, outcome) {
        case (.install(let e), .installed(_, let error)?), (.adopt(let e), .installed(_, let error)?):
            var meta: Logger.Metadata = ["netns": "\(e.path)", "mode": "\(e.settings.mode.rawValue)"]
            if let error {
                meta["error"] = "\(error)"
                logger.warning("pod not protected", metadata: meta)
            } else {
                logger.info(action == .adopt(e) ? "pod re-adopted" : "pod protected", metadata: meta)
            }
        case (.repair(let e), .repaired(let id, let error)?):
            var meta: Logger.Metadata = [
                "netns": "\(e.path)", "drift": "\(registry.pods[id]?.lastProblem ?? "?")",
                "repairs": "\(registry.pods[id]?.repairs ?? 0)",
            ]
            if let error {
                meta["error"] = "\(error)"
                logger.warning("repair failed; the pod is degraded and retried after a back-off", metadata: meta)
            } else {
                logger.notice("rules repaired", metadata: meta)
            }
        case (.release(let id, let removeRules), _):
            logger.info(
                removeRules ? "pod unenrolled" : "pod's namespace is gone; released",
                metadata: ["netns": "\(registry.pods[id]?.enrollment.path ?? "\(id)")"])
        default:
            break
        }
    }

    func effect(_ action: PodAction) async -> PodEvent? {
        switch action {
        case .install(let e):
            // Listeners first: rules never send the pod's traffic to a port where nothing listens.
            if let error = await openServing(e) { return .installed(e.identity, error: error) }
            let capture = backend(e)
            return .installed(
                e.identity, error: await Self.off { try capture.install(RedirectPlan(spec: e.settings.spec)) })
        case .adopt(let e):
            if let error = await openServing(e) { return .installed(e.identity, error: error) }
            // Rules that are already right are left as they are; only a pod whose rules differ is reinstalled.
            let capture = backend(e)
            let error = await Self.off {
                if Self.problem(try capture.observe(), spec: e.settings.spec) != nil {
                    try capture.install(RedirectPlan(spec: e.settings.spec))
                }
            }
            return .installed(e.identity, error: error)
        case .check(let id):
            guard let e = registry.pods[id]?.enrollment else { return nil }
            let capture = backend(e)
            let outcome = await OSThread.run(name: "weir-pod-check") { () -> Result<String?, Failure> in
                do { return .success(Self.problem(try capture.observe(), spec: e.settings.spec)) } catch {
                    return .failure(Failure(text: "\(error)"))
                }
            }
            switch outcome {
            case .success(let problem): return .checked(id, problem: problem)
            case .failure(let f): return .checked(id, problem: "reading the rules: \(f.text)")
            }
        case .repair(let e):
            let capture = backend(e)
            let spec = e.settings.spec
            return .repaired(
                e.identity,
                error: await Self.off {
                    try capture.install(RedirectPlan(spec: spec))
                    // Some drift a reinstall cannot undo (another table's chain that runs first and bypasses weir):
                    // the pod is then shown degraded with what is wrong, and retried after a back-off.
                    if let still = Self.problem(try capture.observe(), spec: spec) {
                        throw Failure(text: "reinstalled, but still: \(still)")
                    }
                })
        case .release(let id, let removeRules):
            if removeRules, let e = registry.pods[id]?.enrollment {
                let capture = backend(e)
                _ = await Self.off { try capture.clean() }
            }
            // Rules gone first, then what they pointed at.
            await serving?.close(id)
            return .released(id)
        case .reply(let request, let error):
            waiting.removeValue(forKey: request)?.resume(returning: error)
            return nil
        case .persist(let list):
            onPersist(list)
            return nil
        }
    }

    struct Failure: Error, CustomStringConvertible {
        var text: String
        var description: String { text }
    }

    func openServing(_ e: Enrollment) async -> String? {
        guard let serving else { return nil }
        do {
            try await serving.open(e)
            return nil
        } catch {
            return "\(error)"
        }
    }

    /// The first problem `check` finds in what was read, or nil when the rules are what `spec` plans.
    static func problem(_ input: CheckInput, spec: CaptureSpec) -> String? {
        let (report, _) = RulesetCheck.decide(input, spec: spec)
        return report.problems.first.map { "\($0)" }
    }

    /// Runs a blocking backend call on its own thread; its error, as text, or nil.
    static func off(_ body: @escaping @Sendable () throws -> Void) async -> String? {
        await OSThread.run(name: "weir-pod-rules") { () -> String? in
            do {
                try body()
                return nil
            } catch {
                return "\(error)"
            }
        }
    }
}

/// What serves a pod besides its rules: its forwarder listeners or its xDS endpoint, inside its namespace.
public protocol PodServing: Sendable {
    /// Opens what `e` needs (or keeps what is open, if it already fits `e`'s settings); throws what failed.
    func open(_ e: Enrollment) async throws
    /// Closes everything held for the pod, and lets its namespace go.
    func close(_ id: NamespaceIdentity) async
}

/// An enrollment the daemon could not carry out, and why.
public struct PodEnrollmentError: Error, Sendable, CustomStringConvertible {
    /// The namespace asked for.
    public var path: String
    /// What went wrong.
    public var reason: String
    /// `path: reason`.
    public var description: String { "\(path): \(reason)" }
}

extension PodReconciler {
    /// The monotonic clock in nanoseconds (CLOCK_MONOTONIC, as the registry's times are).
    public static let monotonicNanoseconds: @Sendable () -> UInt64 = { DispatchTime.now().uptimeNanoseconds }
}
