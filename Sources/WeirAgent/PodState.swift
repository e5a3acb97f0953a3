import Foundation
import Logging
import Synchronization
import WeirCapture
import WeirNetns
import WeirSystem

/// The daemon's pods on disk (`STATE/pods.json`): each pod's namespace path and identity, source, mode, node ids and
/// capture spec, so a restarted daemon re-adopts exactly what it held. Written atomically, off the caller's path: a
/// burst of enrollments costs one write of the latest list, not one per pod.
public final class PodStateFile: Sendable {
    /// The file.
    public let path: String
    let logger: Logger
    let pending = Mutex<(list: [Enrollment]?, writing: Bool)>((nil, false))
    let idle = Mutex<[CheckedContinuation<Void, Never>]>([])

    /// The state file in `directory`.
    public init(directory: String, logger: Logger) {
        path = directory + "/pods.json"
        self.logger = logger
    }

    struct Entry: Codable {
        var path: String
        var device: UInt64
        var inode: UInt64
        var source: String
        var mode: String
        var nodeIDs: [String]
        var spec: [String]
    }
    struct File: Codable {
        var version = 1
        var pods: [Entry]
    }

    /// Encodes enrollments as the file holds them.
    static func encode(_ list: [Enrollment]) -> [UInt8] {
        let entries = list.map {
            Entry(
                path: $0.path, device: $0.identity.device, inode: $0.identity.inode, source: $0.source.rawValue,
                mode: $0.settings.mode.rawValue, nodeIDs: $0.settings.nodeIDs, spec: $0.settings.spec.encodedTokens)
        }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]
        return Array((try? encoder.encode(File(pods: entries))) ?? Data())
    }

    /// Reads the file: the enrollments, or what is wrong with it. No file is no pods.
    public func read() throws -> [Enrollment] {
        guard let data = FileManager.default.contents(atPath: path) else { return [] }
        let file: File
        do { file = try JSONDecoder().decode(File.self, from: data) } catch {
            throw StateFileError(path: path, reason: "not a weir state file (\(error))")
        }
        guard file.version == 1 else {
            throw StateFileError(path: path, reason: "version \(file.version); this weir reads version 1")
        }
        return try file.pods.map { entry in
            guard let source = EnrollmentSource(rawValue: entry.source), let mode = PodMode(rawValue: entry.mode) else {
                throw StateFileError(path: path, reason: "pod \(entry.path): unknown source or mode")
            }
            let spec: CaptureSpec
            do { spec = try CaptureSpecInput.decode(tokens: entry.spec, origin: "state file").validate() } catch {
                throw StateFileError(path: path, reason: "pod \(entry.path): \(error)")
            }
            return Enrollment(
                path: entry.path, identity: NamespaceIdentity(device: entry.device, inode: entry.inode), source: source,
                settings: PodSettings(mode: mode, nodeIDs: entry.nodeIDs, spec: spec))
        }
    }

    /// Schedules a write of `list`; the latest list given is what reaches the disk.
    public func write(_ list: [Enrollment]) {
        let start = pending.withLock { p -> Bool in
            p.list = list
            if p.writing { return false }
            p.writing = true
            return true
        }
        guard start else { return }
        do {
            try OSThread.start(name: "weir-state", detached: true) { [self] in drain() }
        } catch {
            pending.withLock { $0.writing = false }
            logger.error("cannot start the state writer", metadata: ["error": "\(error)"])
        }
    }

    func drain() {
        // Bounded: each pass takes the latest list; a pass with nothing new ends it.
        for _ in 0..<1_000_000 {
            guard
                let list = pending.withLock({ p -> [Enrollment]? in
                    let l = p.list
                    p.list = nil
                    if l == nil { p.writing = false }
                    return l
                })
            else { break }
            do { try FileSystem.writeAtomically(path, Self.encode(list)) } catch {
                logger.error("cannot write the state file", metadata: ["path": "\(path)", "error": "\(error)"])
            }
        }
        for waiter in idle.withLock({ w in
            let out = w
            w = []
            return out
        }) { waiter.resume() }
    }

    /// Returns once every scheduled write is on disk.
    public func flush() async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let done = pending.withLock { p -> Bool in
                if !p.writing { return true }
                idle.withLock { $0.append(c) }
                return false
            }
            if done { c.resume() }
        }
    }
}

/// The state file cannot be used.
public struct StateFileError: Error, CustomStringConvertible {
    /// The file.
    public var path: String
    /// What is wrong.
    public var reason: String
    /// `path: reason`.
    public var description: String { "\(path): \(reason)" }
}
