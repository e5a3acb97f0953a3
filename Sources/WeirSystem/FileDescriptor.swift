import CWeirShims

#if canImport(Glibc)
    import Glibc
#endif

/// An open file descriptor with one owner, which closes it exactly once: when the value is consumed by `close()`,
/// or when it goes out of scope. It cannot be copied, so no second owner can close it again or use it after.
public struct FileDescriptor: ~Copyable, Sendable {
    @usableFromInline let raw: Int32

    /// Takes ownership of a descriptor a call in this layer returned.
    @usableFromInline init(owning raw: Int32) { self.raw = raw }

    /// No descriptor: the empty state of a slot that holds one only part of the time (a connection's upstream
    /// socket before it is made, a splice pipe before bulk data). Closing it does nothing.
    public static var closed: FileDescriptor { FileDescriptor(owning: -1) }

    /// Whether this holds an open descriptor.
    public var isOpen: Bool { raw >= 0 }

    /// Gives the descriptor to code that takes ownership of a raw number (SwiftNIO's `withBoundSocket`): this value
    /// no longer closes it.
    public consuming func releaseToOwner() -> Int32 {
        let raw = self.raw
        discard self
        return raw
    }

    deinit {
        // A close error on a descriptor nobody waits on has nothing to report to; data-bearing files close
        // explicitly (`close()`), which throws.
        if raw >= 0 { _ = Glibc.close(raw) }
    }

    /// Closes now, reporting the error (for a file whose close can lose written data).
    public consuming func close() throws(SystemCallError) {
        let raw = self.raw
        discard self
        if raw < 0 { return }
        // close is not retried on EINTR: on Linux the descriptor is gone whatever it returned.
        try Posix.call("close", retryingEINTR: false) { Glibc.close(raw) }
    }

    /// The descriptor number, for logs and for `/proc/self/fd/N` paths.
    public var number: Int32 { raw }

    /// Runs `body` with the raw descriptor, for a C library call this layer does not wrap. Only WeirSystem itself
    /// uses it: the number must not outlive the call.
    @inlinable
    func withRaw<T>(_ body: (Int32) throws(SystemCallError) -> T) throws(SystemCallError) -> T { try body(raw) }

    // MARK: files

    /// `open(path, flags, mode)`, always with O_CLOEXEC.
    public static func open(_ path: String, _ flags: Int32, mode: mode_t = 0) throws(SystemCallError) -> FileDescriptor
    {
        let fd = try Posix.call("open \(path)") { Glibc.open(path, flags | O_CLOEXEC, mode) }
        return FileDescriptor(owning: fd)
    }

    /// Reads up to `count` bytes; 0 at the end of the file.
    public func read(into buffer: UnsafeMutableRawPointer, count: Int) throws(SystemCallError) -> Int {
        try Posix.call("read") { Glibc.read(raw, buffer, count) }
    }

    /// Reads up to `limit` bytes, until the end of the file.
    public func readAll(limit: Int) throws(SystemCallError) -> [UInt8] {
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        // Bounded by `limit`: each pass reads at least one byte or ends.
        while out.count <= limit {
            let want = min(chunk.count, limit + 1 - out.count)
            let raw = self.raw
            let r = chunk.withUnsafeMutableBytes { b in Posix.attempt { Glibc.read(raw, b.baseAddress!, want) } }
            switch r {
            case .ok(let n) where n > 0: out += chunk[0..<n]
            case .ok: return out
            case .failed(let e): throw SystemCallError("read", errno: e)
            }
        }
        return out
    }

    /// Writes all of `bytes` (short writes continued).
    public func write(_ bytes: UnsafeRawBufferPointer) throws(SystemCallError) {
        var offset = 0
        // Bounded: each pass writes at least one byte.
        while offset < bytes.count {
            let n = try Posix.call("write") { Glibc.write(raw, bytes.baseAddress! + offset, bytes.count - offset) }
            offset += n
        }
    }

    /// Writes all of `text`.
    public func write(_ text: String) throws(SystemCallError) {
        let bytes = Array(text.utf8)
        var offset = 0
        // Bounded: each pass writes at least one byte.
        while offset < bytes.count {
            let raw = self.raw
            let at = offset
            let r = bytes.withUnsafeBytes { b in Posix.attempt { Glibc.write(raw, b.baseAddress! + at, b.count - at) } }
            switch r {
            case .ok(let n): offset += n
            case .failed(let e): throw SystemCallError("write", errno: e)
            }
        }
    }

    /// `fstat`: the file's device, inode and type.
    public func status() throws(SystemCallError) -> FileStatus {
        var st = stat()
        try Posix.call("fstat") { fstat(raw, &st) }
        return FileStatus(st)
    }
}

/// What `stat` says of a file, in the terms weir uses.
public struct FileStatus: Sendable, Hashable {
    /// The device holding the file (`st_dev`); with the inode, it names the file.
    public let device: UInt64
    /// The file's inode number (`st_ino`), unique within its device.
    public let inode: UInt64
    /// The file type and permission bits (`st_mode`).
    public let mode: UInt32
    /// The file's size in bytes (`st_size`).
    public let size: Int
    /// The user ID that owns the file (`st_uid`).
    public let owner: UInt32
    /// When the file's content was last written (`st_mtim`), in nanoseconds since the epoch.
    public let modified: Int64
    /// When the file's content or inode last changed (`st_ctim`), in nanoseconds since the epoch.
    public let changed: Int64

    init(_ st: stat) {
        device = UInt64(st.st_dev)
        inode = UInt64(st.st_ino)
        mode = UInt32(st.st_mode)
        size = Int(st.st_size)
        owner = UInt32(st.st_uid)
        modified = Int64(st.st_mtim.tv_sec) * 1_000_000_000 + Int64(st.st_mtim.tv_nsec)
        changed = Int64(st.st_ctim.tv_sec) * 1_000_000_000 + Int64(st.st_ctim.tv_nsec)
    }

    /// Whether the file is a directory (S_IFDIR).
    public var isDirectory: Bool { mode & UInt32(S_IFMT) == UInt32(S_IFDIR) }
    /// Whether the file is a regular file (S_IFREG).
    public var isRegular: Bool { mode & UInt32(S_IFMT) == UInt32(S_IFREG) }
    /// Whether the file is a socket (S_IFSOCK), such as a Unix socket's path.
    public var isSocket: Bool { mode & UInt32(S_IFMT) == UInt32(S_IFSOCK) }

    /// `stat(path)` (links followed).
    public static func of(_ path: String) throws(SystemCallError) -> FileStatus {
        var st = stat()
        try Posix.call("stat \(path)") { stat(path, &st) }
        return FileStatus(st)
    }

    /// `lstat(path)` (a link itself).
    public static func ofLink(_ path: String) throws(SystemCallError) -> FileStatus {
        var st = stat()
        try Posix.call("lstat \(path)") { lstat(path, &st) }
        return FileStatus(st)
    }
}

/// Directory listing and the few path calls weir makes.
public enum FileSystem {
    /// The names in a directory (without `.` and `..`).
    public static func entries(_ path: String) throws(SystemCallError) -> [String] {
        let dir = try Posix.call("opendir \(path)") { opendir(path) }
        defer { closedir(dir) }
        var names: [String] = []
        // Bounded by the directory's size: readdir returns nil at the end (or on an error, which errno tells).
        while true {
            let next: UnsafeMutablePointer<dirent>?
            do {
                next = try Posix.call("readdir \(path)") { () -> UnsafeMutablePointer<dirent>? in weir_readdir(dir) }
            } catch {
                if error.errno == 0 { break }
                throw error
            }
            guard let entry = next else { break }
            let name = withUnsafeBytes(of: entry.pointee.d_name) {
                String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self)
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }

    /// `statfs(path).f_type`: which file system holds the path.
    public static func type(of path: String) throws(SystemCallError) -> Int {
        Int(try Posix.call("statfs \(path)") { weir_fs_type(path) })
    }

    /// Removes a name; nothing there is not an error.
    public static func unlinkIfPresent(_ path: String) throws(SystemCallError) {
        if let e = Posix.errno(of: { unlink(path) }), e != ENOENT { throw SystemCallError("unlink \(path)", errno: e) }
    }

    /// `chmod(path, mode)`.
    public static func setMode(_ path: String, _ mode: mode_t) throws(SystemCallError) {
        try Posix.call("chmod \(path)") { chmod(path, mode) }
    }

    /// Whether `path` names something executable.
    public static func isExecutable(_ path: String) -> Bool { access(path, X_OK) == 0 }

    /// A whole (small) file as text, or nil when it cannot be read.
    public static func text(_ path: String, limit: Int = 64 << 20) -> String? {
        guard let fd = try? FileDescriptor.open(path, O_RDONLY | O_CLOEXEC), let bytes = try? fd.readAll(limit: limit)
        else { return nil }
        return String(decoding: bytes, as: UTF8.self)
    }
}

/// A descriptor owned by a reference, for handing one across threads or into escaping closures (a socket made in
/// one namespace's thread and used in another). It closes when the last reference goes.
public final class SharedDescriptor: Sendable {
    /// The owned descriptor.
    public let descriptor: FileDescriptor

    /// Takes ownership of `descriptor`; it closes when the last reference to this object goes.
    public init(_ descriptor: consuming FileDescriptor) { self.descriptor = descriptor }
}

extension FileSystem {
    /// `mkdir -p`: makes `path` and the directories above it that are missing (mode 0755).
    public static func makeDirectories(_ path: String) throws(SystemCallError) {
        var prefix = path.hasPrefix("/") ? "" : "."
        for part in path.split(separator: "/") {
            prefix += "/" + part
            if Glibc.mkdir(prefix, 0o755) != 0 && errno != EEXIST {
                throw SystemCallError("mkdir \(prefix)", errno: errno)
            }
        }
    }

    /// Replaces `path` with `bytes` so that a reader (or a restart after a crash) sees the old file or the new one,
    /// never a torn one: written to a temporary file beside it, flushed to disk, renamed over it, directory flushed.
    public static func writeAtomically(_ path: String, _ bytes: [UInt8], mode: mode_t = 0o600) throws(SystemCallError) {
        let tmp = path + ".tmp"
        do {
            let fd = try FileDescriptor.open(tmp, O_WRONLY | O_CREAT | O_TRUNC, mode: mode)
            var failure: SystemCallError?
            bytes.withUnsafeBytes { b in
                do throws(SystemCallError) { try fd.write(b) } catch { failure = error }
            }
            if let failure { throw failure }
            try Posix.call("fsync \(tmp)") { fsync(fd.raw) }
        }
        try Posix.call("rename \(tmp)") { rename(tmp, path) }
        let directory = path.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(separator: "/")
        if let dir = try? FileDescriptor.open(directory.isEmpty ? "/" : directory, O_RDONLY | O_DIRECTORY) {
            _ = Posix.attempt { fsync(dir.raw) }
        }
    }
}
