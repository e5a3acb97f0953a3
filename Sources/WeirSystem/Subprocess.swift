import CWeirShims

#if canImport(Glibc)
    import Glibc
#endif

/// A program run to completion with input, its output captured. Spawned from the calling thread, so a child started
/// inside a network namespace lives there.
public enum Subprocess {
    /// How a run ended.
    public struct Result: Sendable {
        /// The exit status, or 128 + the signal that ended it.
        public let status: Int32
        /// Everything the program wrote to its standard output, decoded as UTF-8.
        public let stdout: String
        /// Everything the program wrote to its standard error, decoded as UTF-8.
        public let stderr: String
    }

    /// The program is nowhere in the usual directories.
    public struct NotFound: Error, Sendable, CustomStringConvertible {
        /// The program name that was looked for.
        public let program: String
        /// The message for the user: the program is not installed, and the directories looked in.
        public var description: String { "\(program) is not installed (looked in /usr/sbin, /sbin, /usr/bin, /bin)" }
    }

    /// The path of `program` (or `program` itself when it is a path), if executable.
    public static func locate(_ program: String) -> String? {
        if program.hasPrefix("/") { return FileSystem.isExecutable(program) ? program : nil }
        for dir in ["/usr/sbin", "/sbin", "/usr/bin", "/bin", "/usr/local/sbin", "/usr/local/bin"] {
            let p = dir + "/" + program
            if FileSystem.isExecutable(p) { return p }
        }
        return nil
    }

    /// Runs `program` with `arguments`, writes `input` to it, and collects both outputs. 60 seconds of silence
    /// kill it.
    public static func run(_ program: String, _ arguments: [String], input: String = "") throws -> Result {
        guard let path = locate(program) else { throw NotFound(program: program) }
        let stdin = try Pipe.open()
        let stdout = try Pipe.open()
        let stderr = try Pipe.open()
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, stdin.read.raw, 0)
        posix_spawn_file_actions_adddup2(&actions, stdout.write.raw, 1)
        posix_spawn_file_actions_adddup2(&actions, stderr.write.raw, 2)
        let argv: [UnsafeMutablePointer<CChar>?] = ([path] + arguments).map { (s: String) in strdup(s) } + [nil]
        defer { argv.forEach { free($0) } }
        let envp: [UnsafeMutablePointer<CChar>?] =
            ["PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C"].map { (s: String) in strdup(s) } + [nil]
        defer { envp.forEach { free($0) } }
        var pid: pid_t = 0
        try Posix.checked("posix_spawn \(path)") { posix_spawn(&pid, path, &actions, nil, argv, envp) }
        // The child holds its ends; ours close now, so that its exit ends our reads.
        var ends = Ends(stdin: stdin.write, stdout: stdout.read, stderr: stderr.read)
        _ = consume stdin.read
        _ = consume stdout.write
        _ = consume stderr.write
        let (out, err) = ends.exchange(Array(input.utf8), pid: pid)
        var status: Int32 = 0
        _ = try? Posix.call("waitpid") { waitpid(pid, &status, 0) }
        let exitStatus = (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
        return Result(
            status: exitStatus, stdout: String(decoding: out, as: UTF8.self),
            stderr: String(decoding: err, as: UTF8.self))
    }

    /// Our ends of the child's three pipes, with poll so that neither side can block the other.
    struct Ends: ~Copyable {
        var stdin: FileDescriptor
        var stdout: FileDescriptor
        var stderr: FileDescriptor

        mutating func exchange(_ input: [UInt8], pid: pid_t) -> ([UInt8], [UInt8]) {
            var pending = input[...]
            var out: [UInt8] = []
            var err: [UInt8] = []
            if pending.isEmpty { stdin = .closed }
            var buffer = [UInt8](repeating: 0, count: 65536)
            // Bounded: 60 s without any event ends the wait; each event moves bytes or closes a pipe.
            while stdout.isOpen || stderr.isOpen {
                var fds = [
                    pollfd(fd: stdin.raw, events: Int16(POLLOUT), revents: 0),
                    pollfd(fd: stdout.raw, events: Int16(POLLIN), revents: 0),
                    pollfd(fd: stderr.raw, events: Int16(POLLIN), revents: 0),
                ]
                guard case .ok(let n) = Posix.attempt({ poll(&fds, 3, 60_000) }) else { break }
                if n == 0 {
                    kill(pid, SIGKILL)
                    break
                }
                if fds[0].revents != 0 && stdin.isOpen {
                    let fd = stdin.raw
                    let w = Posix.attempt { pending.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) } }
                    if case .ok(let k) = w, k > 0 { pending = pending.dropFirst(k) } else { pending = [] }
                    if pending.isEmpty { stdin = .closed }
                }
                if fds[1].revents != 0 && stdout.isOpen {
                    let fd = stdout.raw
                    if case .ok(let r) = Posix.attempt({ read(fd, &buffer, buffer.count) }), r > 0 {
                        out += buffer[0..<r]
                    } else {
                        stdout = .closed
                    }
                }
                if fds[2].revents != 0 && stderr.isOpen {
                    let fd = stderr.raw
                    if case .ok(let r) = Posix.attempt({ read(fd, &buffer, buffer.count) }), r > 0 {
                        err += buffer[0..<r]
                    } else {
                        stderr = .closed
                    }
                }
            }
            return (out, err)
        }
    }
}
