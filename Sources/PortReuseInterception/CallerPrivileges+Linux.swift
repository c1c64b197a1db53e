#if os(Linux)
import PortReuseSystem
import PortReuse

/// What the kernel lets the thread that made an intercepted call do by itself. Whatever the interceptor does on
/// a program's behalf (a bind to a rewritten address or a source, IP_TRANSPARENT) runs with portreuse's
/// credentials, so each such act is first checked against the caller's: the program gets exactly what it could
/// get without portreuse, and the answer the kernel would have given it (EACCES, EPERM).
///
/// Capabilities are a thread's own (a Go program may drop them on one thread only), and they count only in the
/// caller's user namespace: a caller in another user namespace than portreuse's is treated as having none
/// (portreuse cannot tell which network namespace its capabilities cover), so it is refused what needs one.
struct CallerPrivileges: Equatable {
    /// The thread's effective capabilities (CapEff of /proc/TID/status), in portreuse's user namespace: 0 when the
    /// thread lives in another one.
    var capabilities: UInt64
    /// `net.ipv4.ip_unprivileged_port_start` of the socket's network namespace; the kernel's default (1024) when
    /// that namespace is not portreuse's (its setting cannot be read from here), and ``portStartIsAssumed`` then.
    var unprivilegedPortStart: UInt16
    var portStartIsAssumed: Bool

    static let netBindService = 10  // CAP_NET_BIND_SERVICE
    static let netAdmin = 12  // CAP_NET_ADMIN
    static let netRaw = 13  // CAP_NET_RAW

    func has(_ capability: Int) -> Bool { capabilities & (1 << UInt64(capability)) != 0 }

    /// Whether the caller may bind `port` itself (inet_bind: a port below the start needs CAP_NET_BIND_SERVICE).
    func mayBind(port: UInt16) -> Bool { port == 0 || port >= unprivilegedPortStart || has(Self.netBindService) }

    /// Whether the caller may set IP_TRANSPARENT / IPV6_TRANSPARENT itself (CAP_NET_RAW or CAP_NET_ADMIN).
    var maySetTransparent: Bool { has(Self.netRaw) || has(Self.netAdmin) }

    /// Why a bind of `port` is refused, for the log.
    func refusal(port: UInt16) -> String {
        "a port below \(unprivilegedPortStart) (net.ipv4.ip_unprivileged_port_start\(portStartIsAssumed ? ", the kernel's default: the socket's network namespace is not portreuse's" : "")) "
            + "needs CAP_NET_BIND_SERVICE, which the program does not have; portreuse does not bind it on the program's behalf"
    }

    /// The privileges of thread `tid` for a socket whose network namespace is `socketNamespace` (an inode, from
    /// `SocketReadings.networkNamespace`), or `nil` when its status cannot be read (then nothing is done for it).
    static func of(thread tid: Int32, socketNamespace: UInt64?) -> CallerPrivileges? {
        guard var capabilities = Processes.field("CapEff", in: "/proc/\(tid)/status").flatMap({ UInt64($0, radix: 16) }) else { return nil }
        if namespaceInode("/proc/\(tid)/ns/user") != ownUserNamespace { capabilities = 0 }
        if let socketNamespace, socketNamespace == ownNetworkNamespace, let start = ownUnprivilegedPortStart() {
            return CallerPrivileges(capabilities: capabilities, unprivilegedPortStart: start, portStartIsAssumed: false)
        }
        return CallerPrivileges(capabilities: capabilities, unprivilegedPortStart: 1024, portStartIsAssumed: true)
    }

    private static func namespaceInode(_ path: String) -> UInt64? { Files.status(of: path, following: true)?.inode }

    private static let ownUserNamespace = namespaceInode("/proc/self/ns/user")
    private static let ownNetworkNamespace = namespaceInode("/proc/self/ns/net")

    /// Read at each use: an administrator may change it while a program runs.
    private static func ownUnprivilegedPortStart() -> UInt16? {
        guard let bytes = Files.read("/proc/sys/net/ipv4/ip_unprivileged_port_start", limit: 32) else { return nil }
        return Int(String(decoding: bytes, as: UTF8.self).filter(\.isNumber)).map { UInt16(clamping: $0) }
    }
}
#endif
