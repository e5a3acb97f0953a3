import WeirNetns
#if canImport(Glibc)
    import Glibc
#endif

extension SocketAddress {
    /// A short metric label for a connect errno.
    static func reason(_ e: Int32) -> String {
        switch e {
        case ECONNREFUSED: return "refused"
        case ETIMEDOUT: return "timeout"
        case ENETUNREACH, EHOSTUNREACH: return "unreachable"
        case EMFILE, ENFILE: return "no_descriptors"
        default: return "errno_\(e)"
        }
    }
}
