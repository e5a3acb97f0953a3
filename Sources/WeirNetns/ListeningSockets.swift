import WeirCapture
import WeirSystem

/// The TCP sockets listening in the calling thread's network namespace, read from `/proc/thread-self/net/tcp` and
/// `tcp6` (the kernel shows the reading task's namespace there). Call it inside a namespace (`NamespaceHandle.run`)
/// to see a pod's listeners without connecting to them.
public enum ListeningSockets {
    /// The listening sockets, or nil when the tables cannot be read (then nothing can be said of them).
    public static func tcp() -> [Endpoint]? {
        var out: [Endpoint] = []
        for (file, family) in [("tcp", IPFamily.ipv4), ("tcp6", .ipv6)] {
            guard let text = FileSystem.text("/proc/thread-self/net/\(file)") else {
                // tcp6 is absent when the kernel has no IPv6; tcp is always there.
                if family == .ipv4 { return nil }
                continue
            }
            out += parse(text, family: family)
        }
        return out
    }

    /// The listening rows (state 0A) of a `/proc/net/tcp` table: `sl local_address rem_address st …`, addresses as
    /// hex of the kernel's in-memory words (little-endian on the machines weir runs on), ports as big hex.
    static func parse(_ text: String, family: IPFamily) -> [Endpoint] {
        var out: [Endpoint] = []
        for line in text.split(separator: "\n").dropFirst() {
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            guard fields.count > 3, fields[3] == "0A" else { continue }
            let local = fields[1].split(separator: ":")
            guard local.count == 2, let port = UInt16(local[1], radix: 16) else { continue }
            let hex = Array(local[0])
            guard hex.count == (family == .ipv4 ? 8 : 32) else { continue }
            // Each 32-bit word is printed as the number it is in memory: its bytes reversed.
            let bytes: [UInt8?] = stride(from: 0, to: hex.count, by: 8).flatMap { word in
                stride(from: word, to: word + 8, by: 2).map { UInt8(String(hex[$0..<$0 + 2]), radix: 16) }.reversed()
            }
            // (A row that does not read is skipped, not the rows after it.)
            guard bytes.allSatisfy({ $0 != nil }) else { continue }
            out.append(Endpoint(family: family, address: bytes.map { $0! }, port: port))
        }
        return out
    }
}
