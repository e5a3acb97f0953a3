import Synchronization
import WeirCapture
import WeirNetfilter

/// A capture backend that keeps the ruleset in memory: what the kernel would hold after each install, which a test
/// can then change behind its back. For reconcile logic without root; the namespace tests prove the real one.
public final class InMemoryCaptureBackend: CaptureBackend {
    struct State {
        var ruleset = LiveRuleset()
        var installs = 0
        var failure: (any Error)?
    }

    let state = Mutex(State())

    public init() {}

    /// How many installs succeeded.
    public var installs: Int { state.withLock { $0.installs } }

    /// The next install throws `error` and changes nothing.
    public func failNextInstall(with error: any Error) { state.withLock { $0.failure = error } }

    /// Changes the ruleset as another program would.
    public func tamper(_ change: (inout LiveRuleset) -> Void) { state.withLock { change(&$0.ruleset) } }

    public func install(_ plan: RedirectPlan) throws {
        try state.withLock { s in
            if let failure = s.failure {
                s.failure = nil
                throw failure
            }
            s.ruleset = RulesetCheck.expectedRuleset(plan)
            s.installs += 1
        }
    }

    @discardableResult
    public func clean() throws -> Bool {
        state.withLock { s in
            defer { s.ruleset = LiveRuleset() }
            return !s.ruleset.tables.isEmpty
        }
    }

    public func observe() throws -> CheckInput {
        CheckInput(namespace: "memory", ruleset: state.withLock { $0.ruleset })
    }
}
