import WeirCapture
import WeirNetns

/// How the daemon serves a pod's traffic.
public enum PodMode: String, Sendable, Hashable, CaseIterable {
    /// The pod runs Envoy: its rules go to Envoy's ports and the daemon opens an xDS endpoint inside the pod.
    case sidecar
    /// The pod has no proxy: its rules go to weir's forwarder, whose listeners the daemon opens inside the pod.
    case forwarder
}

/// Where an enrollment came from; it decides what a failure does (an API caller is told, the others retry).
public enum EnrollmentSource: String, Sendable, Hashable {
    /// A namespace that appeared in the watched netns directory and matched a selector.
    case netnsDirectory = "netns-directory"
    /// A static entry in the daemon's config file.
    case config
    /// The enrollment API (`weir enroll`, the CNI plugin).
    case api
}

/// What the daemon does for one pod: its mode, the node ids its sidecar may ask for, and its capture spec.
public struct PodSettings: Sendable, Hashable {
    /// Sidecar or forwarder.
    public var mode: PodMode
    /// The Envoy node ids a stream on this pod's xDS endpoint may ask for (sidecar mode).
    public var nodeIDs: [String]
    /// The rules the pod gets.
    public var spec: CaptureSpec

    /// Settings for one pod.
    public init(mode: PodMode, nodeIDs: [String], spec: CaptureSpec) {
        self.mode = mode
        self.nodeIDs = nodeIDs
        self.spec = spec
    }
}

/// A request to protect one namespace: where it is, which namespace it is, where the request came from, and how.
public struct Enrollment: Sendable, Hashable {
    /// The namespace's path (`/run/netns/NAME`), for messages and for reopening it after a restart.
    public var path: String
    /// The namespace's device and inode: the pod's identity (a namespace recreated at the path is another pod).
    public var identity: NamespaceIdentity
    /// Who asked.
    public var source: EnrollmentSource
    /// What the pod gets.
    public var settings: PodSettings

    /// One enrollment.
    public init(path: String, identity: NamespaceIdentity, source: EnrollmentSource, settings: PodSettings) {
        self.path = path
        self.identity = identity
        self.source = source
        self.settings = settings
    }
}

/// Where a pod is in its life under the daemon.
public enum PodPhase: Sendable, Hashable {
    /// Its rules and listeners are being put in place (or, after a restart, checked and adopted).
    case enrolling
    /// Rules installed and checked, listeners open.
    case protected
    /// Drift was seen; a repair is in flight.
    case repairing
    /// Repairs fail or keep being undone: backed off until `retryAt` (monotonic nanoseconds).
    case degraded(reason: String, retryAt: UInt64)
    /// Being let go: listeners closing, and (for an unenrollment) rules being removed.
    case releasing
}

extension PodPhase {
    /// The phase's name, as the admin API, `weir status` and systemd's status line show it.
    public var name: String {
        switch self {
        case .enrolling: return "enrolling"
        case .protected: return "protected"
        case .repairing: return "repairing"
        case .degraded: return "degraded"
        case .releasing: return "releasing"
        }
    }

    /// Why a degraded pod is degraded.
    public var reason: String? {
        if case .degraded(let why, _) = self { return why }
        return nil
    }

    /// Every phase's name, in the order a status line lists them.
    public static let names = ["protected", "degraded", "enrolling", "repairing", "releasing"]
}

/// What the registry knows of one pod.
public struct PodRecord: Sendable, Hashable {
    /// The enrollment in force.
    public var enrollment: Enrollment
    /// Where the pod is.
    public var phase: PodPhase
    /// Repairs done since enrollment.
    public var repairs: Int
    /// When recent repairs started (monotonic nanoseconds), to tell a fight from an accident.
    public var recentRepairs: [UInt64]
    /// The last problem seen (a failed install, check or repair), for `weir status`.
    public var lastProblem: String?
    /// Whether this daemon has put the pod's rules and listeners in place (a failed first set-up is retried as one).
    public var everProtected: Bool
    /// Whether the pod came from the state file after a restart (its set-up is an adoption).
    public var restored: Bool = false
    /// How long the next back-off lasts (doubles while the fight goes on).
    var backoff: UInt64
    /// Enrollment API requests waiting for this pod to be protected (or released).
    var waiters: [UInt64]
}

/// An input to the registry: a request, a namespace event, or the result of an action.
public enum PodEvent: Sendable, Hashable {
    /// Protect this namespace (`request` is the enrollment API call waiting for the answer, if any).
    case enroll(Enrollment, request: UInt64?)
    /// Stop protecting it and remove its rules.
    case unenroll(NamespaceIdentity, request: UInt64?)
    /// The namespace is gone (its path was removed, or the last holder let it go).
    case vanished(NamespaceIdentity)
    /// Pods the daemon held before a restart, from its state file: adopted without rewriting right rules.
    case restored([Enrollment])
    /// The result of `install` or `adopt`: nil when the rules and listeners are in place.
    case installed(NamespaceIdentity, error: String?)
    /// The rules changed under the pod (a netlink notification) or a check found them wrong.
    case drift(NamespaceIdentity, detail: String)
    /// The pod's rules may have changed (an nftables notification from its namespace): check them now.
    case changed(NamespaceIdentity)
    /// The result of a periodic `check`.
    case checked(NamespaceIdentity, problem: String?)
    /// The result of `repair`: nil when the rules are right again.
    case repaired(NamespaceIdentity, error: String?)
    /// The result of `release`.
    case released(NamespaceIdentity)
    /// Time passed: back-offs end, and every `checkInterval` each protected pod is checked.
    case tick
}

/// An effect the daemon performs for the registry; its outcome comes back as an event.
public enum PodAction: Sendable, Hashable {
    /// Install the rules (one transaction) and open the pod's listeners or xDS endpoint; answer with `installed`.
    case install(Enrollment)
    /// After a restart: open the listeners, check the rules and repair only what is wrong; answer with `installed`.
    case adopt(Enrollment)
    /// Compare the live rules with the plan; answer with `checked`.
    case check(NamespaceIdentity)
    /// Reinstall the rules atomically; answer with `repaired`.
    case repair(Enrollment)
    /// Close what the daemon holds for the pod; remove its rules when `removeRules`; answer with `released`.
    case release(NamespaceIdentity, removeRules: Bool)
    /// Answer an enrollment API request: nil is success.
    case reply(request: UInt64, error: String?)
    /// Write the enrollments to the state directory (atomically).
    case persist([Enrollment])
}

/// The pod registry: a pure state machine, events in and actions out. It decides; the daemon acts.
public struct PodRegistry: Sendable {
    /// The pods, by namespace identity.
    public private(set) var pods: [NamespaceIdentity: PodRecord] = [:]
    /// How often each protected pod is checked in full, whatever notifications say (nanoseconds).
    public var checkInterval: UInt64
    /// More repairs than this within `fightWindow` is a fight: the pod is backed off and shown degraded.
    public var maxRepairsInWindow: Int
    /// The window in which repairs are counted (nanoseconds).
    public var fightWindow: UInt64
    /// The first back-off (nanoseconds); it doubles up to `maxBackoff`.
    public var firstBackoff: UInt64
    /// The longest back-off (nanoseconds).
    public var maxBackoff: UInt64
    var nextFullCheck: UInt64 = 0

    /// A registry with no pods.
    public init(
        checkInterval: UInt64 = 10 * PodRegistry.second, maxRepairsInWindow: Int = 5,
        fightWindow: UInt64 = 60 * PodRegistry.second, firstBackoff: UInt64 = PodRegistry.second,
        maxBackoff: UInt64 = 60 * PodRegistry.second
    ) {
        self.checkInterval = checkInterval
        self.maxRepairsInWindow = maxRepairsInWindow
        self.fightWindow = fightWindow
        self.firstBackoff = firstBackoff
        self.maxBackoff = maxBackoff
    }

    /// One second in the registry's unit.
    public static let second: UInt64 = 1_000_000_000

    /// Whether every enrolled pod is protected (the daemon's readiness).
    public var allProtected: Bool { pods.values.allSatisfy { $0.phase == .protected } }

    /// The enrollments to keep across a restart (pods being released are not).
    public var enrollments: [Enrollment] {
        pods.values.filter { $0.phase != .releasing }.map(\.enrollment).sorted { $0.path < $1.path }
    }

    /// Applies one event at monotonic time `now` (nanoseconds) and returns what the daemon must do.
    public mutating func apply(_ event: PodEvent, now: UInt64) -> [PodAction] {
        switch event {
        case .enroll(let e, let request): return enroll(e, request: request)
        case .unenroll(let id, let request): return unenroll(id, request: request)
        case .vanished(let id): return vanished(id)
        case .restored(let list): return restored(list)
        case .installed(let id, let error): return installed(id, error: error, now: now)
        case .drift(let id, let detail): return drift(id, detail: detail, now: now)
        case .changed(let id):
            // Only a protected pod is checked: an install or repair in flight answers for the rules itself.
            return pods[id]?.phase == .protected ? [.check(id)] : []
        case .checked(let id, let problem): return checked(id, problem: problem, now: now)
        case .repaired(let id, let error): return repaired(id, error: error, now: now)
        case .released(let id): return released(id)
        case .tick: return tick(now: now)
        }
    }

    mutating func enroll(_ e: Enrollment, request: UInt64?) -> [PodAction] {
        var out: [PodAction] = []
        // A namespace recreated at the same path is a new pod; the old one is gone with its namespace.
        for (id, record) in pods
        where record.enrollment.path == e.path && id != e.identity && record.phase != .releasing {
            out += vanished(id)
        }
        if var record = pods[e.identity] {
            switch record.phase {
            case .releasing:
                if let request { out.append(.reply(request: request, error: "\(e.path) is being unenrolled; retry")) }
                return out
            case .protected where record.enrollment.settings == e.settings:
                // The same request again (a CNI retry, a rescan): already done.
                if let request { out.append(.reply(request: request, error: nil)) }
                return out
            default:
                break
            }
            let changed = record.enrollment.settings != e.settings
            record.enrollment = e
            if let request { record.waiters.append(request) }
            if changed {
                record.phase = .enrolling
                out.append(.install(e))
            }
            pods[e.identity] = record
            return out
        }
        pods[e.identity] = PodRecord(
            enrollment: e, phase: .enrolling, repairs: 0, recentRepairs: [], lastProblem: nil, everProtected: false,
            backoff: firstBackoff, waiters: request.map { [$0] } ?? [])
        out.append(.install(e))
        return out
    }

    mutating func unenroll(_ id: NamespaceIdentity, request: UInt64?) -> [PodAction] {
        guard var record = pods[id] else {
            return request.map { [.reply(request: $0, error: "no pod with namespace \(id) is enrolled")] } ?? []
        }
        if record.phase == .releasing {
            // Already on its way out: this caller hears when it is gone, with the others.
            if let request { record.waiters.append(request) }
            pods[id] = record
            return []
        }
        let answerWaiters = record.waiters.map {
            PodAction.reply(request: $0, error: "unenrolled before it was protected")
        }
        record.waiters = request.map { [$0] } ?? []
        record.phase = .releasing
        pods[id] = record
        return answerWaiters + [.release(id, removeRules: true)]
    }

    mutating func vanished(_ id: NamespaceIdentity) -> [PodAction] {
        guard var record = pods[id] else { return [] }
        let answerWaiters = record.waiters.map { PodAction.reply(request: $0, error: "the namespace disappeared") }
        record.waiters = []
        let already = record.phase == .releasing
        record.phase = .releasing
        pods[id] = record
        // The namespace is gone, and its rules with it: only what the daemon holds is let go.
        return answerWaiters + (already ? [] : [.release(id, removeRules: false)])
    }

    mutating func restored(_ list: [Enrollment]) -> [PodAction] {
        var out: [PodAction] = []
        for e in list where pods[e.identity] == nil {
            pods[e.identity] = PodRecord(
                enrollment: e, phase: .enrolling, repairs: 0, recentRepairs: [], lastProblem: nil,
                everProtected: false, restored: true, backoff: firstBackoff, waiters: [])
            out.append(.adopt(e))
        }
        return out
    }

    mutating func installed(_ id: NamespaceIdentity, error: String?, now: UInt64) -> [PodAction] {
        guard var record = pods[id], record.phase == .enrolling else { return [] }
        var out = record.waiters.map { PodAction.reply(request: $0, error: error) }
        record.waiters = []
        if let error {
            record.lastProblem = error
            if record.enrollment.source == .api && !record.restored {
                // The caller was told; a pod the API could not protect is not kept.
                pods[id] = nil
                return out + [.release(id, removeRules: true)]
            }
            record.phase = .degraded(reason: error, retryAt: now + record.backoff)
            record.backoff = min(record.backoff * 2, maxBackoff)
            pods[id] = record
            return out
        }
        record.phase = .protected
        record.everProtected = true
        record.backoff = firstBackoff
        pods[id] = record
        out.append(.persist(enrollments))
        return out
    }

    mutating func drift(_ id: NamespaceIdentity, detail: String, now: UInt64) -> [PodAction] {
        guard var record = pods[id] else { return [] }
        switch record.phase {
        case .protected:
            record.lastProblem = detail
            record.recentRepairs = record.recentRepairs.filter { now &- $0 < fightWindow }
            if record.recentRepairs.count >= maxRepairsInWindow {
                // Something keeps undoing the rules: stop fighting for a while, and show it.
                record.phase = .degraded(
                    reason:
                        "rules changed \(record.recentRepairs.count + 1) times within \(fightWindow / Self.second) s: "
                        + detail, retryAt: now + record.backoff)
                record.backoff = min(record.backoff * 2, maxBackoff)
                pods[id] = record
                return []
            }
            record.recentRepairs.append(now)
            record.repairs += 1
            record.phase = .repairing
            pods[id] = record
            return [.repair(record.enrollment)]
        case .enrolling, .repairing, .degraded, .releasing:
            // An install or repair in flight answers for the rules; a degraded pod waits for its back-off.
            return []
        }
    }

    mutating func checked(_ id: NamespaceIdentity, problem: String?, now: UInt64) -> [PodAction] {
        guard var record = pods[id] else { return [] }
        if let problem { return drift(id, detail: problem, now: now) }
        if case .degraded = record.phase {
            // Whoever fought the rules stopped, or put them back: protected again.
            record.phase = .protected
            record.backoff = firstBackoff
            pods[id] = record
        }
        return []
    }

    mutating func repaired(_ id: NamespaceIdentity, error: String?, now: UInt64) -> [PodAction] {
        guard var record = pods[id], record.phase == .repairing else { return [] }
        if let error {
            record.lastProblem = error
            record.phase = .degraded(reason: "repair failed: \(error)", retryAt: now + record.backoff)
            record.backoff = min(record.backoff * 2, maxBackoff)
        } else {
            record.phase = .protected
        }
        pods[id] = record
        return []
    }

    mutating func released(_ id: NamespaceIdentity) -> [PodAction] {
        guard let record = pods[id], record.phase == .releasing else { return [] }
        pods[id] = nil
        return record.waiters.map { PodAction.reply(request: $0, error: nil) } + [.persist(enrollments)]
    }

    mutating func tick(now: UInt64) -> [PodAction] {
        var out: [PodAction] = []
        let fullCheck = now >= nextFullCheck
        if fullCheck { nextFullCheck = now + checkInterval }
        for id in pods.keys.sorted(by: { pods[$0]!.enrollment.path < pods[$1]!.enrollment.path }) {
            guard var record = pods[id] else { continue }
            switch record.phase {
            case .degraded(_, let retryAt) where retryAt <= now:
                // The back-off is over: try again, as a first install if the pod never got its rules.
                if !record.everProtected {
                    record.phase = .enrolling
                    out.append(record.restored ? .adopt(record.enrollment) : .install(record.enrollment))
                } else {
                    record.recentRepairs = record.recentRepairs.filter { now &- $0 < fightWindow }
                    record.recentRepairs.append(now)
                    record.repairs += 1
                    record.phase = .repairing
                    out.append(.repair(record.enrollment))
                }
                pods[id] = record
            case .protected where fullCheck:
                out.append(.check(id))
            default:
                break
            }
        }
        return out
    }
}
