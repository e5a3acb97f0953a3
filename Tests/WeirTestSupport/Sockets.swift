import CWeirShims
import Foundation
import Glibc
import WeirNetns

// Blocking libc sockets for tests: a test holds, passes and closes them freely.

/// A blocking TCP connection made from inside `ns`, with a 20 s receive timeout.
public func blockingSocket(_ ns: NetworkNamespace, connectTo ep: Endpoint) throws -> Int32 {
    try ns.run {
        let fd = socket(
            ep.family == .ipv4 ? AF_INET : AF_INET6, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        let a = SocketAddress.make(ep)
        let rc = withUnsafeBytes(of: a.storage) {
            Glibc.connect(fd, $0.baseAddress!.assumingMemoryBound(to: sockaddr.self), a.length)
        }
        if rc != 0 {
            let e = SystemCallError.last("connect \(ep)")
            close(fd)
            throw e
        }
        var tv = timeval(tv_sec: 20, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        return fd
    }
}

/// Accepts one connection within the timeout (with a 20 s receive timeout on it).
public func acceptOne(_ listener: Int32, timeoutMilliseconds: Int32 = 5000) -> Int32? {
    var p = pollfd(fd: listener, events: Int16(POLLIN), revents: 0)
    guard poll(&p, 1, timeoutMilliseconds) == 1 else { return nil }
    let fd = accept(listener, nil, nil)
    guard fd >= 0 else { return nil }
    var tv = timeval(tv_sec: 20, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    return fd
}

/// Reads until EOF or error; returns the bytes, and whether the end was a reset.
public func readAll(_ fd: Int32) -> (bytes: [UInt8], reset: Bool) {
    var out: [UInt8] = []
    var buf = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = recv(fd, &buf, buf.count, 0)
        if n > 0 {
            out += buf[0..<n]
            continue
        }
        return (out, n < 0 && weir_errno() == ECONNRESET)
    }
}

/// Sends a string's bytes.
public func sendAll(_ fd: Int32, _ text: String) { sendBytes(fd, Array(text.utf8)) }

/// A blocking connection to a Unix socket (`@name` for an abstract one), with a 20 s receive timeout; nil on failure.
public func unixConnect(_ path: String) -> Int32? {
    let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    guard fd >= 0 else { return nil }
    var sun = sockaddr_un()
    sun.sun_family = sa_family_t(AF_UNIX)
    var bytes = Array(path.utf8)
    if bytes.first == UInt8(ascii: "@") { bytes[0] = 0 }
    guard bytes.count < MemoryLayout.size(ofValue: sun.sun_path) else {
        close(fd)
        return nil
    }
    withUnsafeMutableBytes(of: &sun.sun_path) { raw in for (i, b) in bytes.enumerated() { raw[i] = b } }
    let length = socklen_t(MemoryLayout<sa_family_t>.size + bytes.count + (bytes.first == 0 ? 0 : 1))
    let rc = withUnsafePointer(to: &sun) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, length) }
    }
    guard rc == 0 else {
        close(fd)
        return nil
    }
    var tv = timeval(tv_sec: 20, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    return fd
}

/// Sends raw bytes, all of them unless the peer went away; returns how many were sent.
@discardableResult
public func sendBytes(_ fd: Int32, _ bytes: [UInt8]) -> Int {
    var sent = 0
    while sent < bytes.count {
        let n = bytes[sent...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        if n <= 0 { break }
        sent += n
    }
    return sent
}

/// An HTTP/2 client's connection preface followed by an empty SETTINGS frame.
public let http2Preface = Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8) + [0, 0, 0, 4, 0, 0, 0, 0, 0]
