/// What a socket allows others to do with its port. PortReuse turns a policy into the socket options of
/// the platform and the transport (see ``SharingTable``); the CLI's `--policy` takes the same names.
public enum SharingPolicy: String, Sendable, Hashable, CaseIterable, CustomStringConvertible {
    /// Rebind at once after a restart, even while old connections sit in TIME_WAIT; a second live
    /// listener on the same address still fails. The default.
    ///
    /// Linux, BSD and macOS: `SO_REUSEADDR` on TCP, nothing on UDP (it has no TIME_WAIT).
    /// Windows: `SO_EXCLUSIVEADDRUSE`.
    case restartable

    /// Several live sockets on one port, and the kernel spreads connections or datagrams between them.
    /// Only the same user may join where the operating system can enforce it (Linux always; BSD and macOS
    /// for users other than root).
    ///
    /// Linux, BSD and macOS: `SO_REUSEADDR` and `SO_REUSEPORT` on TCP, `SO_REUSEPORT` alone on UDP.
    /// Windows: `SO_REUSEADDR`, which Windows cannot restrict to one user.
    case shared

    /// Nobody else may bind the port while this socket holds it.
    ///
    /// Linux, BSD and macOS: no reuse options. Windows: `SO_EXCLUSIVEADDRUSE`.
    case exclusive

    /// Unsafe: any local user may bind the same port. On Linux a UDP socket with `SO_REUSEADDR` lets
    /// another user's process bind the port and receive every unicast datagram meant for this one
    /// (bpo-37228). Use it only for multicast receivers of different users, or to join a group of
    /// sockets that were bound with `SO_REUSEADDR` by a program you cannot change.
    ///
    /// Linux, BSD and macOS: `SO_REUSEADDR` and `SO_REUSEPORT`. Windows: `SO_REUSEADDR`.
    case unsafeAnyUser = "unsafe-any-user"

    public var description: String { rawValue }

    /// One line on what the policy allows, for help texts.
    public var summary: String {
        switch self {
        case .restartable: "restart at once; no second live socket (default)"
        case .shared: "many live sockets, same user only, balanced"
        case .exclusive: "nobody else may bind; restarts wait for TIME-WAIT"
        case .unsafeAnyUser: "any local user may bind too: hijackable"
        }
    }

    /// The policy a socket gets when the caller names none.
    public static let `default` = SharingPolicy.restartable
}
