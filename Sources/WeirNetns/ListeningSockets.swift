import WeirCapture
import WeirSystem

/// The TCP sockets listening in the calling thread's network namespace, read from `/proc/thread-self/net/tcp` and
/// `tcp6` (the kernel shows the reading task's namespace there). Call it inside a namespace (`NamespaceHandle.run`)
/// to see a pod's listeners without connecting to them.
public enum ListeningSockets {
    public static func tcp() -> [Endpoint] {
        var out: [Endpoint] = []
        for (file, family) in [("tcp", IPFamily.ipv4), ("tcp6", .ipv6)] {
            guard let text = FileSystem.text("/proc/thread-self/net/\(file)") else { continue }
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
            var bytes: [UInt8] = []
            // Each 32-bit word is printed as the number it is in memory: its bytes reversed.
            for word in stride(from: 0, to: hex.count, by: 8) {
                var w: [UInt8] = []
                for b in stride(from: word, to: word + 8, by: 2) {
                    guard let v = UInt8(String(hex[b..<b + 2]), radix: 16) else { return out }
                    w.append(v)
                }
                bytes += w.reversed()
            }
            out.append(Endpoint(family: family, address: bytes, port: port))
        }
        return out
    }
}
