import CNetfilter
import Glibc
import Testing
import WeirSystem

@Suite("a netlink socket's close")
struct NetlinkSocketTests {
    @Test("close() closes the descriptor before it returns (what an init step's transaction uses)")
    func closesNow() throws {
        let socket = try NetlinkSocket(bus: NETLINK_NETFILTER)
        let raw = socket.descriptor.number
        #expect(fcntl(raw, F_GETFD) != -1)
        socket.close()
        #expect(fcntl(raw, F_GETFD) == -1 && errno == EBADF, "descriptor \(raw) is still open")
    }
}
