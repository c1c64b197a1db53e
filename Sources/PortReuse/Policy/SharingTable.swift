/// The port-sharing socket options PortReuse may set. Each has a different meaning per platform;
/// ``SharingTable`` says which ones a ``SharingPolicy`` sets where.
public struct ReuseOptions: OptionSet, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    /// `SO_REUSEADDR`.
    public static let reuseAddress = ReuseOptions(rawValue: 1 << 0)
    /// `SO_REUSEPORT` (Linux 3.9+, BSD, macOS).
    public static let reusePort = ReuseOptions(rawValue: 1 << 1)
    /// `SO_EXCLUSIVEADDRUSE` (Windows only).
    public static let exclusiveAddressUse = ReuseOptions(rawValue: 1 << 2)

    /// Every option with its C name, in a fixed order.
    public static let all: [(option: ReuseOptions, name: String)] = [
        (.reuseAddress, "SO_REUSEADDR"), (.reusePort, "SO_REUSEPORT"), (.exclusiveAddressUse, "SO_EXCLUSIVEADDRUSE"),
    ]

    /// The C names of the options in this set, such as `["SO_REUSEADDR", "SO_REUSEPORT"]`.
    public var names: [String] { Self.all.filter { contains($0.option) }.map(\.name) }

    /// `SO_REUSEADDR+SO_REUSEPORT`, or `none`.
    public var description: String { isEmpty ? "none" : names.joined(separator: "+") }
}

/// An operating system family whose port-sharing rules PortReuse knows.
public enum OperatingSystem: String, Sendable, Hashable, CaseIterable, CustomStringConvertible {
    case linux, darwin, windows

    /// The system this program runs on.
    public static var current: OperatingSystem { Sys.operatingSystem }

    public var description: String {
        switch self {
        case .linux: "Linux"
        case .darwin: "macOS/BSD"
        case .windows: "Windows"
        }
    }
}

/// The mapping from sharing policy to socket options for one operating system: written once, here, and
/// read by the library, the CLI (`who`, `run`) and the documentation. The C shim keeps a copy of the Linux
/// rows, which a test compares with this one.
///
/// Every table is plain data, so the Darwin and Windows tables are tested on Linux too.
public struct SharingTable: Sendable {
    /// One policy on one transport.
    public struct Row: Sendable, Hashable {
        /// The policy.
        public var policy: SharingPolicy
        /// The transport.
        public var transport: Transport
        /// The options set to 1 before `bind`; every other option in ``ReuseOptions`` stays 0.
        public var options: ReuseOptions
        /// Whether a process of another (non-root) user could bind the same port beside this socket.
        public var otherUsersMayJoin: Bool
        /// What a user should know about this row, or `nil`.
        public var note: String?
    }

    /// How receivers of a multicast group or of a broadcast address share their port: several sockets, each of
    /// which gets every datagram sent to the group (the kernel copies it to each), unlike ``SharingPolicy/shared``
    /// unicast sockets, between which it spreads datagrams. ``GroupReceiver`` reads it for the policy
    /// ``SharingPolicy/shared``; the other policies keep their UDP rows.
    public struct GroupRow: Sendable, Hashable {
        /// The options set to 1 before `bind` on every receiver; every other option stays 0.
        public var options: ReuseOptions
        /// Whether receivers bind the group (or broadcast) address itself rather than the wildcard address: then a
        /// unicast datagram to the port never reaches them, and a socket bound beside them takes nothing from them.
        public var bindsGroupAddress: Bool
        /// Whether a process of another (non-root) user could bind a receiver beside these.
        public var otherUsersMayJoin: Bool
        /// What a user should know: the hijack trade-off on this system.
        public var note: String
    }

    /// The system this table describes.
    public let system: OperatingSystem
    /// Every policy for both transports.
    public let rows: [Row]
    /// Multicast and broadcast receivers that share a port (policy ``SharingPolicy/shared``).
    public let groupReceivers: GroupRow

    /// The row for a policy and a transport.
    public func row(_ policy: SharingPolicy, _ transport: Transport) -> Row {
        guard let row = rows.first(where: { $0.policy == policy && $0.transport == transport }) else {
            preconditionFailure("the \(system) sharing table has no row for \(policy) \(transport)")
        }
        return row
    }

    /// The options to set for a policy and a transport.
    public func options(_ policy: SharingPolicy, _ transport: Transport) -> ReuseOptions {
        row(policy, transport).options
    }

    /// The options of a multicast or broadcast receiver: ``groupReceivers`` for ``SharingPolicy/shared``, the
    /// policy's UDP row for every other policy (``SharingPolicy/unsafeAnyUser`` joins receivers of any user that set
    /// `SO_REUSEADDR`, as most multicast programs do).
    public func groupReceiverOptions(_ policy: SharingPolicy) -> ReuseOptions {
        policy == .shared ? groupReceivers.options : options(policy, .udp)
    }

    /// The table of the system this program runs on.
    public static var current: SharingTable { table(for: .current) }

    /// The table of a system.
    public static func table(for system: OperatingSystem) -> SharingTable {
        switch system {
        case .linux: linux
        case .darwin: darwin
        case .windows: windows
        }
    }

    private static let timeWait = "a restart fails with \"address already in use\" while old connections sit in TIME_WAIT"
    private static let udpHijack =
        "any local user can bind this port and receive its unicast datagrams (the last socket bound gets them)"

    /// Linux 3.9 and later. `SO_REUSEPORT` groups need the same effective uid; `SO_REUSEADDR` on UDP has no such check.
    public static let linux = SharingTable(system: .linux, rows: [
        Row(policy: .restartable, transport: .tcp, options: [.reuseAddress], otherUsersMayJoin: false),
        Row(policy: .restartable, transport: .udp, options: [], otherUsersMayJoin: false,
            note: "UDP has no TIME_WAIT: a closed port can be bound again at once, so no option is needed"),
        Row(policy: .shared, transport: .tcp, options: [.reuseAddress, .reusePort], otherUsersMayJoin: false,
            note: "the kernel spreads new connections across the listeners by a hash of the 4-tuple"),
        Row(policy: .shared, transport: .udp, options: [.reusePort], otherUsersMayJoin: false,
            note: "the kernel spreads datagrams across the sockets by a hash of the 4-tuple"),
        Row(policy: .exclusive, transport: .tcp, options: [], otherUsersMayJoin: false, note: timeWait),
        Row(policy: .exclusive, transport: .udp, options: [], otherUsersMayJoin: false),
        Row(policy: .unsafeAnyUser, transport: .tcp, options: [.reuseAddress, .reusePort], otherUsersMayJoin: false,
            note: "Linux never lets another user's TCP socket share a live listener: this is the same as shared"),
        Row(policy: .unsafeAnyUser, transport: .udp, options: [.reuseAddress, .reusePort], otherUsersMayJoin: true,
            note: udpHijack),
    ], groupReceivers: GroupRow(
        options: [.reusePort], bindsGroupAddress: true, otherUsersMayJoin: false,
        note: "every receiver bound to the group address with SO_REUSEPORT gets every datagram of the group, and only "
            + "the same user may join (SO_REUSEADDR would admit any user); receivers of programs that set only "
            + "SO_REUSEADDR cannot bind beside them: use policy unsafe-any-user to join those"))

    /// macOS, FreeBSD and the other BSDs. `SO_REUSEPORT` lets live sockets share; the kernel refuses a
    /// different non-root user, except when both bind the wildcard address and the holder set `SO_REUSEPORT`.
    public static let darwin = SharingTable(system: .darwin, rows: [
        Row(policy: .restartable, transport: .tcp, options: [.reuseAddress], otherUsersMayJoin: false),
        Row(policy: .restartable, transport: .udp, options: [], otherUsersMayJoin: false,
            note: "UDP has no TIME_WAIT: a closed port can be bound again at once, so no option is needed"),
        Row(policy: .shared, transport: .tcp, options: [.reuseAddress, .reusePort], otherUsersMayJoin: true,
            note: "another user may join when both bind the wildcard address; the kernel does not balance "
                + "connections (FreeBSD 12+ has SO_REUSEPORT_LB)"),
        Row(policy: .shared, transport: .udp, options: [.reusePort], otherUsersMayJoin: true,
            note: "another user may join when both bind the wildcard address"),
        Row(policy: .exclusive, transport: .tcp, options: [], otherUsersMayJoin: false, note: timeWait),
        Row(policy: .exclusive, transport: .udp, options: [], otherUsersMayJoin: false),
        Row(policy: .unsafeAnyUser, transport: .tcp, options: [.reuseAddress, .reusePort], otherUsersMayJoin: true),
        Row(policy: .unsafeAnyUser, transport: .udp, options: [.reuseAddress, .reusePort], otherUsersMayJoin: true,
            note: udpHijack),
    ], groupReceivers: GroupRow(
        options: [.reusePort], bindsGroupAddress: true, otherUsersMayJoin: false,
        note: "every receiver bound to the group address with SO_REUSEPORT gets every datagram of the group "
            + "(on a multicast address BSD treats SO_REUSEADDR as SO_REUSEPORT); another user may join only "
            + "when both bind the wildcard address"))

    /// Windows. `SO_REUSEADDR` lets any process of any user bind over a socket; `SO_EXCLUSIVEADDRUSE` stops it.
    public static let windows = SharingTable(system: .windows, rows: [
        Row(policy: .restartable, transport: .tcp, options: [.exclusiveAddressUse], otherUsersMayJoin: false,
            note: "Windows rebinds over TIME_WAIT by default; SO_EXCLUSIVEADDRUSE stops others binding over the port"),
        Row(policy: .restartable, transport: .udp, options: [.exclusiveAddressUse], otherUsersMayJoin: false),
        Row(policy: .shared, transport: .tcp, options: [.reuseAddress], otherUsersMayJoin: true,
            note: "Windows cannot restrict SO_REUSEADDR to one user: any process can bind this port too"),
        Row(policy: .shared, transport: .udp, options: [.reuseAddress], otherUsersMayJoin: true,
            note: "Windows cannot restrict SO_REUSEADDR to one user: any process can bind this port and take its datagrams"),
        Row(policy: .exclusive, transport: .tcp, options: [.exclusiveAddressUse], otherUsersMayJoin: false),
        Row(policy: .exclusive, transport: .udp, options: [.exclusiveAddressUse], otherUsersMayJoin: false),
        Row(policy: .unsafeAnyUser, transport: .tcp, options: [.reuseAddress], otherUsersMayJoin: true),
        Row(policy: .unsafeAnyUser, transport: .udp, options: [.reuseAddress], otherUsersMayJoin: true, note: udpHijack),
    ], groupReceivers: GroupRow(
        options: [.reuseAddress], bindsGroupAddress: false, otherUsersMayJoin: true,
        note: "Windows binds receivers to the wildcard address (it refuses a multicast or broadcast address) and "
            + "cannot restrict SO_REUSEADDR to one user: any process can bind the port too and take the unicast "
            + "datagrams sent to it"))
}
