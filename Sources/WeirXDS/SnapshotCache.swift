import Foundation
import Logging
import Synchronization
import WeirMesh
import WeirSystem

/// Where a node's config comes from. Asked for nodes it has not been asked about before (a new Envoy connects).
public protocol SnapshotSource: Sendable {
    /// The resources for `nodeID` under the source's current good config, or nil when the source cannot serve it
    /// (unknown node, or no good config yet).
    func resources(for nodeID: String) -> Snapshot?
}

/// Versioned snapshots per node, with watches and the last good snapshot of each node persisted to disk.
///
/// A snapshot is accepted only when it is consistent (every RDS and EDS name referenced exists); an inconsistent one
/// is refused and the previous one stays in force. Persisted snapshots are loaded at start, so a restarted sidecar gets
/// its config even while the sources are broken.
public final class SnapshotCache: Sendable {
    struct State {
        var snapshots: [String: Snapshot] = [:]
        /// The snapshot before the current one, per node: what goes back to disk if the current one is rejected.
        var previous: [String: Snapshot] = [:]
        var watchers: [String: [UInt64: @Sendable (Snapshot) -> Void]] = [:]
        var nextID: UInt64 = 0
    }
    let state = Mutex(State())
    let directory: URL?
    let logger: Logger
    let source = Mutex<(any SnapshotSource)?>(nil)

    public enum Failure: Error, CustomStringConvertible {
        case inconsistent(node: String, problems: [String])
        public var description: String {
            switch self {
            case .inconsistent(let node, let problems):
                return "snapshot for \(node) refused: " + problems.joined(separator: "; ")
            }
        }
    }

    /// - Parameter stateDirectory: where the last good snapshot of each node is kept (nil: not persisted).
    public init(stateDirectory: URL?, logger: Logger = Logger(label: "weir.xds.cache")) {
        self.directory = stateDirectory
        self.logger = logger
        let journal = stateDirectory.map { SnapshotJournal(directory: $0.path) }
        writer = SnapshotWriter { batch in
            guard let journal else { return }
            let clock = ContinuousClock()
            let started = clock.now
            do {
                let (bytes, compacted) = try journal.write(batch)
                logger.info(
                    "snapshots persisted",
                    metadata: [
                        "nodes": "\(batch.count)", "bytes": "\(bytes)", "compacted": "\(compacted)",
                        "ms": "\((clock.now - started).milliseconds)",
                    ])
            } catch {
                logger.warning(
                    "cannot persist snapshots", metadata: ["nodes": "\(batch.count)", "error": "\(error)"])
            }
        }
        if let journal { loadPersisted(journal) }
    }

    public func setSource(_ s: (any SnapshotSource)?) { source.withLock { $0 = s } }

    public var nodeIDs: [String] { state.withLock { Array($0.snapshots.keys).sorted() } }

    /// Node ids with a connected stream, or with a snapshot.
    public var interestingNodeIDs: Set<String> {
        state.withLock { Set($0.snapshots.keys).union($0.watchers.filter { !$0.value.isEmpty }.keys) }
    }

    public func snapshot(for nodeID: String) -> Snapshot? { state.withLock { $0.snapshots[nodeID] } }

    /// Sets a node's snapshot if it is consistent (`checked`: the caller has just checked it); notifies watchers when it
    /// changed. Returns whether it changed.
    @discardableResult
    public func set(_ nodeID: String, _ snapshot: Snapshot, checked: Bool = false) throws(Failure) -> Bool {
        if !checked {
            let problems = snapshot.consistencyProblems()
            guard problems.isEmpty else { throw .inconsistent(node: nodeID, problems: problems) }
        }
        let watchers: [@Sendable (Snapshot) -> Void]? = state.withLock { s in
            if s.snapshots[nodeID]?.version == snapshot.version { return nil }
            s.previous[nodeID] = s.snapshots[nodeID]
            s.snapshots[nodeID] = snapshot
            return Array((s.watchers[nodeID] ?? [:]).values)
        }
        guard let watchers else { return false }
        persist(nodeID, snapshot)
        for w in watchers { w(snapshot) }
        logger.debug("snapshot", metadata: ["node": "\(nodeID)", "version": "\(snapshot.version)"])
        return true
    }

    /// Work the watchers hand back while a batch is being published (nil: no batch).
    let batch = Mutex<[@Sendable () -> Void]?>(nil)
    let publishing = Mutex(())

    /// Sets many nodes' snapshots (already checked), in parallel, then runs what the watchers deferred with
    /// `afterPublish`: every stream's protocol state is brought up to date before any of them starts writing, so the
    /// writes do not slow down the publishing of the nodes after them.
    public func publish(_ snapshots: [String: Snapshot]) {
        // One batch at a time: a second publish resetting the batch would drop the first one's deferred wakes, and a
        // stream never woken writes nothing again. (Reloads come from one thread today; this keeps it so.)
        publishing.withLock { _ in
            batch.withLock { $0 = [] }
            // Over the cores: nodes' streams are independent, and nothing writes until the batch is complete (the
            // event loops and the clients are idle meanwhile).
            let nodes = Array(snapshots)
            DispatchQueue.concurrentPerform(iterations: nodes.count) { i in
                _ = try? set(nodes[i].key, nodes[i].value, checked: true)
            }
            let work = batch.withLock { b in
                defer { b = nil }
                return b ?? []
            }
            for w in work { w() }
        }
    }

    /// Runs `work` when the batch being published is complete, or now when none is.
    public func afterPublish(_ work: @escaping @Sendable () -> Void) {
        let now = batch.withLock { b -> Bool in
            guard b != nil else { return true }
            b!.append(work)
            return false
        }
        if now { work() }
    }

    /// A sidecar of the node rejected (NACKed) the current snapshot: it stays served (the last good config stays in
    /// force in Envoy anyway), but the snapshot kept on disk goes back to the previous one, so a restarted sidecar
    /// starts from config that was accepted.
    public func rejected(_ nodeID: String) {
        guard let previous = state.withLock({ $0.previous[nodeID] }) else { return }
        persist(nodeID, previous)
    }

    /// Calls `onChange` with a node's snapshot whenever it changes, starting with the current one (a watch costs a
    /// closure, no task: there is one per ADS stream). Asks the source when the node is new. `onChange` runs on the
    /// publishing thread or a worker, at the same time as other nodes' watchers (`publish` sets nodes in parallel).
    public func watch(_ nodeID: String, onChange: @escaping @Sendable (Snapshot) -> Void) -> UInt64 {
        if snapshot(for: nodeID) == nil, let s = source.withLock({ $0 })?.resources(for: nodeID) {
            do { try set(nodeID, s) } catch { logger.warning("\(error)") }
        }
        let (id, current) = state.withLock { s -> (UInt64, Snapshot?) in
            s.nextID += 1
            s.watchers[nodeID, default: [:]][s.nextID] = onChange
            return (s.nextID, s.snapshots[nodeID])
        }
        if let current { onChange(current) }
        return id
    }

    public func cancelWatch(_ nodeID: String, _ id: UInt64) {
        state.withLock { s in
            s.watchers[nodeID]?.removeValue(forKey: id)
            if s.watchers[nodeID]?.isEmpty == true { s.watchers.removeValue(forKey: nodeID) }
        }
    }

    // MARK: persistence

    /// A node's snapshot as weir before the journal kept it: one JSON file per node, read at start only.
    struct Persisted: Codable {
        var node: String
        var resources: [String: [String: PersistedResource]]
    }
    struct PersistedResource: Codable {
        var bytes: Data
        var namedOnly: Bool
    }

    /// Writes the snapshot files on its own thread, so neither a publish (each node's push would wait for its own
    /// write and those of the nodes before it) nor an event loop (a NACK, a new node's first stream) waits for the disk.
    let writer: SnapshotWriter

    /// Keeps `snapshot` as the node's file, soon.
    func persist(_ nodeID: String, _ snapshot: Snapshot) {
        guard directory != nil else { return }
        writer.submit(nodeID, snapshot)
    }

    /// Returns once every snapshot handed to persistence so far is on disk, or after `seconds` (a hung disk must not
    /// hold up a shutdown); whether they all were.
    @discardableResult
    public func flush(within seconds: Double = 60) -> Bool {
        guard directory != nil else { return true }
        return writer.flush(until: Date(timeIntervalSinceNow: seconds))
    }

    /// At shutdown: writes what is left (for `seconds` at most) and ends the writer thread. Whether everything was
    /// written.
    @discardableResult
    public func finishWriting(within seconds: Double) -> Bool {
        let done = flush(within: seconds)
        writer.stop()
        return done
    }

    /// Loads the journal, and the files of earlier versions for nodes it does not hold.
    func loadPersisted(_ journal: SnapshotJournal) {
        let (loaded, problems) = journal.load()
        for p in problems { logger.warning("\(p)") }
        var snapshots = loaded.filter { $0.value.consistencyProblems().isEmpty }
        let legacy = (try? FileSystem.entries(journal.directory))?.filter { $0.hasSuffix(".snapshot.json") } ?? []
        for f in legacy {
            let path = journal.directory + "/" + f
            journal.legacyFiles.append(path)
            guard let text = FileSystem.text(path),
                let p = try? JSONDecoder().decode(Persisted.self, from: Data(text.utf8))
            else {
                logger.warning("ignoring unreadable snapshot file", metadata: ["file": "\(f)"])
                continue
            }
            guard snapshots[p.node] == nil else { continue }
            var resources: [ResourceType: [String: VersionedResource]] = [:]
            for (t, byName) in p.resources {
                guard let type = ResourceType(rawValue: t) else { continue }
                resources[type] = byName.reduce(into: [:]) {
                    $0[$1.key] = VersionedResource(
                        name: $1.key, bytes: Array($1.value.bytes), namedOnly: $1.value.namedOnly)
                }
            }
            let s = Snapshot(resources: resources)
            if s.consistencyProblems().isEmpty { snapshots[p.node] = s }
        }
        // The first write compacts (legacy files pending): the journal then holds these nodes too.
        journal.adopt(snapshots)
        state.withLock { $0.snapshots = snapshots }
        if !snapshots.isEmpty { logger.info("loaded persisted snapshots", metadata: ["nodes": "\(snapshots.count)"]) }
    }
}

/// The thread that writes snapshots, in batches. A node changed twice before its write is written once, as it is last. The
/// thread runs at the lowest CPU priority: on a busy node the pushes go first and the files follow. It starts with the
/// first write and ends after a few idle seconds.
final class SnapshotWriter: @unchecked Sendable {
    let write: @Sendable ([(node: String, snapshot: Snapshot)]) -> Void
    static let idleSeconds = 5.0
    static let gatherSeconds = 0.05
    // The rest is guarded by `condition`.
    let condition = NSCondition()
    var unwritten: [String: Snapshot] = [:]
    var writing = false
    var running = false
    var stopping = false

    init(write: @escaping @Sendable ([(node: String, snapshot: Snapshot)]) -> Void) { self.write = write }

    func submit(_ nodeID: String, _ snapshot: Snapshot) {
        condition.lock()
        defer { condition.unlock() }
        unwritten[nodeID] = snapshot
        if !running && !stopping {
            running = true
            let t = Thread { [self] in run() }
            t.name = "weir-persist"
            t.start()
        }
        condition.broadcast()
    }

    /// Waits until nothing is left to write, or until `deadline`; whether nothing is.
    func flush(until deadline: Date) -> Bool {
        condition.lock()
        defer { condition.unlock() }
        // Bounded by the deadline: each wait returns by then at the latest.
        while !unwritten.isEmpty || writing {
            if !condition.wait(until: deadline) { return unwritten.isEmpty && !writing }
        }
        return true
    }

    /// Ends the thread once nothing is left to write; later snapshots are not written.
    func stop() {
        condition.lock()
        stopping = true
        condition.broadcast()
        condition.unlock()
    }

    func run() {
        // Per thread on Linux: only this thread's nice value changes.
        _ = setpriority(__priority_which_t(PRIO_PROCESS.rawValue), 0, 19)
        condition.lock()
        while true {
            if unwritten.isEmpty {
                if !stopping { _ = condition.wait(until: Date(timeIntervalSinceNow: Self.idleSeconds)) }
                if unwritten.isEmpty {
                    running = false
                    condition.unlock()
                    return
                }
            }
            // A publish hands over its nodes one by one: let it finish (and the pushes it starts go first), so that
            // one batch, one append, holds the whole change.
            // Bounded by the deadline (each submit's broadcast wakes the wait early).
            let gathered = Date(timeIntervalSinceNow: Self.gatherSeconds)
            while !stopping && Date() < gathered { _ = condition.wait(until: gathered) }
            let batch = unwritten
            unwritten = [:]
            writing = true
            condition.unlock()
            write(batch.sorted(by: { $0.key < $1.key }).map { (node: $0.key, snapshot: $0.value) })
            condition.lock()
            writing = false
            condition.broadcast()
        }
    }
}
