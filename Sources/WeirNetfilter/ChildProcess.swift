import CWeirShims
import WeirNetns
#if canImport(Glibc)
import Glibc
#endif

/// A program run to completion with input, output captured. Spawned from the calling thread, so a
/// child started inside `NetworkNamespace.run` lives in that namespace.
struct ChildProcess {
    struct Result { let status: Int32; let stdout: String; let stderr: String }

    struct NotFound: Error, CustomStringConvertible {
        let program: String
        var description: String { "\(program) is not installed (looked in /usr/sbin, /sbin, /usr/bin, /bin)" }
    }

    static func locate(_ program: String) -> String? {
        if program.hasPrefix("/") { return access(program, X_OK) == 0 ? program : nil }
        for dir in ["/usr/sbin", "/sbin", "/usr/bin", "/bin", "/usr/local/sbin", "/usr/local/bin"] {
            let p = dir + "/" + program
            if access(p, X_OK) == 0 { return p }
        }
        return nil
    }

    static func run(_ program: String, _ arguments: [String], input: String = "") throws -> Result {
        guard let path = locate(program) else { throw NotFound(program: program) }
        var inPipe: [Int32] = [0, 0], outPipe: [Int32] = [0, 0], errPipe: [Int32] = [0, 0]
        guard weir_pipe_cloexec(&inPipe) == 0, weir_pipe_cloexec(&outPipe) == 0, weir_pipe_cloexec(&errPipe) == 0 else {
            throw SystemCallError("pipe2", context: "running \(program)")
        }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, inPipe[0], 0)
        posix_spawn_file_actions_adddup2(&actions, outPipe[1], 1)
        posix_spawn_file_actions_adddup2(&actions, errPipe[1], 2)
        let argv: [UnsafeMutablePointer<CChar>?] = ([path] + arguments).map { (s: String) in strdup(s) } + [nil]
        defer { argv.forEach { free($0) } }
        let envp: [UnsafeMutablePointer<CChar>?] = ["PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C"].map { (s: String) in strdup(s) } + [nil]
        defer { envp.forEach { free($0) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, path, &actions, nil, argv, envp)
        close(inPipe[0]); close(outPipe[1]); close(errPipe[1])
        guard rc == 0 else {
            close(inPipe[1]); close(outPipe[0]); close(errPipe[0])
            throw SystemCallError("posix_spawn", errno: rc, context: "running \(path)")
        }
        // Write input, read both outputs, with poll so neither side can block the other.
        var pending = Array(input.utf8)[...]
        var out: [UInt8] = [], err: [UInt8] = []
        var fds = [pollfd(fd: inPipe[1], events: Int16(POLLOUT), revents: 0),
                   pollfd(fd: outPipe[0], events: Int16(POLLIN), revents: 0),
                   pollfd(fd: errPipe[0], events: Int16(POLLIN), revents: 0)]
        if pending.isEmpty { close(inPipe[1]); fds[0].fd = -1 }
        var buffer = [UInt8](repeating: 0, count: 65536)
        // Bounded: 60 s of silence ends the wait.
        while fds[1].fd >= 0 || fds[2].fd >= 0 {
            let n = poll(&fds, nfds_t(fds.count), 60_000)
            if n < 0 { if weir_errno() == EINTR { continue }; break }
            if n == 0 { kill(pid, SIGKILL); break }
            if fds[0].fd >= 0 && fds[0].revents != 0 {
                let w = pending.withUnsafeBytes { write(inPipe[1], $0.baseAddress, $0.count) }
                if w > 0 { pending = pending.dropFirst(w) }
                if w <= 0 || pending.isEmpty { close(inPipe[1]); fds[0].fd = -1 }
            }
            for i in 1...2 where fds[i].fd >= 0 && fds[i].revents != 0 {
                let r = read(fds[i].fd, &buffer, buffer.count)
                if r > 0 { if i == 1 { out += buffer[0..<r] } else { err += buffer[0..<r] } }
                else { close(fds[i].fd); fds[i].fd = -1 }
            }
        }
        if fds[0].fd >= 0 { close(inPipe[1]) }
        for i in 1...2 where fds[i].fd >= 0 { close(fds[i].fd) }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && weir_errno() == EINTR {}
        let exitStatus = (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
        return Result(status: exitStatus, stdout: String(decoding: out, as: UTF8.self), stderr: String(decoding: err, as: UTF8.self))
    }
}
