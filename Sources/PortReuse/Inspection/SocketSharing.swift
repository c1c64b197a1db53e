/// Whether others could bind beside a socket now, and a verdict in words ("shared by 4 processes of user www",
/// "exclusive", "UDP socket bound with SO_REUSEADDR: any local user can bind this port and receive its
/// datagrams"). `portreuse who` prints it for every socket, and ``PortInUse`` names it in bind errors.
///
/// The answers come from the socket's exact options where they can be read (``PortHolder/options``), from
/// a probe bind that takes no traffic where they cannot (see ``PortReport/Probes``), and from the platform's
/// rules (``SharingTable/admits(_:uid:beside:)``), which alone decide some questions: on Linux no other user
/// ever joins a live TCP socket.
public struct SocketSharing: Sendable, Hashable {
    /// How the sharing was learned.
    public enum Source: String, Sendable, Hashable, CaseIterable, CustomStringConvertible {
        /// From the exact options of every socket involved, read from duplicates of them (`pidfd_getfd`).
        case options
        /// From a probe bind: a socket bound beside this one and closed at once.
        case probe
        /// From the platform's rules alone; questions that depend on unreadable options stay unanswered.
        case rules

        public var description: String { rawValue }
    }

    /// Whether a new socket of the same user as this one (its owner's uid) could bind its address now;
    /// `nil` when unknown.
    public var sameUserMayJoin: Bool?
    /// Whether a new socket of a user who owns none of the sockets on the address could bind it now;
    /// `nil` when unknown.
    public var otherUsersMayJoin: Bool?
    /// How the answers were learned.
    public var source: Source
    /// The verdict in words.
    public var verdict: String
    /// Whether the socket is bound to a multicast group or an IPv4 broadcast address (`nil`: a unicast or
    /// wildcard address). Such a socket receives only the datagrams sent to that address, and the kernel gives
    /// each of them to every socket bound there: a socket bound beside it takes nothing from it.
    public var groupKind: GroupReceiver.Kind?

    /// Whether another user could take this socket's traffic: another user may bind beside it (on Linux, a UDP
    /// socket with `SO_REUSEADDR`; on Windows, any socket without `SO_EXCLUSIVEADDRUSE`), and the socket is not
    /// bound to a group address, where a newcomer gets copies of the datagrams rather than the datagrams.
    public var hijackable: Bool { otherUsersMayJoin == true && groupKind == nil }

    /// An answer from its parts.
    public init(sameUserMayJoin: Bool?, otherUsersMayJoin: Bool?, source: Source, verdict: String, groupKind: GroupReceiver.Kind? = nil) {
        self.sameUserMayJoin = sameUserMayJoin
        self.otherUsersMayJoin = otherUsersMayJoin
        self.source = source
        self.verdict = verdict
        self.groupKind = groupKind
    }

    /// Whether a socket bound to `address` receives a group's datagrams only: a multicast group, or an IPv4
    /// broadcast address of `interfaces` (read when `nil` and needed).
    static func groupKind(of address: SocketAddress, transport: Transport, interfaces: [NetworkInterface]? = nil) -> GroupReceiver.Kind? {
        guard transport == .udp, !address.ip.isUnspecified else { return nil }
        if address.ip.isMulticast { return .multicast }
        if address.family == .ipv4 && !address.ip.isLoopback && address.ip.isBroadcast(among: interfaces) { return .broadcast }
        return nil
    }

    /// The sharing of `socket`, a listening or bound socket, among `bound`: every live listening or bound socket
    /// of its transport on its port (it may include `socket`). Probes are made only where `probes` allows them
    /// and the options cannot be read; `ownUID` is the uid the probes bind as (this process's effective uid when `nil`).
    public static func of(
        _ socket: PortHolder, among bound: [PortHolder], probes: PortReport.Probes = [],
        table: SharingTable = .current, ownUID: UInt32? = nil
    ) -> SocketSharing {
        let ownUID = ownUID ?? Sys.effectiveUserID()
        var competitors = bound.filter { $0.state.isLive && $0.overlaps(socket.localAddress) } + (bound.contains(socket) ? [] : [socket])
        if table.system == .linux {
            // Two live TCP listeners on one address exist only as a SO_REUSEPORT group of one user: their options
            // are known to include SO_REUSEPORT, which is all the TCP rule asks of a listener.
            for index in competitors.indices where competitors[index].options == nil && competitors[index].transport == .tcp
                && competitors[index].state == .listen
            {
                let holder = competitors[index]
                if competitors.contains(where: { $0.inode != holder.inode && $0.state == .listen && $0.localAddress == holder.localAddress }) {
                    competitors[index].options = [.reusePort]
                }
            }
        }
        var sameUser = join(uid: socket.uid, competitors: competitors, table: table)
        var otherUsers = join(uid: nil, competitors: competitors, table: table)
        var source: Source = bound.filter { $0.overlaps(socket.localAddress) }.allSatisfy { $0.options != nil } && socket.options != nil ? .options : .rules
        let canProbeAsOwner = socket.uid == ownUID
        if table.system == .linux && (sameUser == nil || otherUsers == nil) {
            switch socket.transport {
            case .tcp where probes.contains(.tcp):
                // Bound, never listening: it receives nothing. Only the owner's uid can test the SO_REUSEPORT rule.
                if sameUser == nil && canProbeAsOwner,
                    let answer = BindProbe.admits(socket.localAddress, transport: .tcp, options: [.reuseAddress, .reusePort])
                {
                    sameUser = answer
                    source = .probe
                }
            case .udp where probes.contains(.udp):
                // SO_REUSEADDR alone binds beside UDP sockets only when every one of them set it, for any user.
                if otherUsers == nil, let answer = BindProbe.admits(socket.localAddress, transport: .udp, options: [.reuseAddress]) {
                    otherUsers = answer
                    if answer { sameUser = true }
                    source = .probe
                }
                if sameUser == nil && canProbeAsOwner,
                    let answer = BindProbe.admits(socket.localAddress, transport: .udp, options: [.reusePort])
                {
                    sameUser = answer
                    source = .probe
                }
            default:
                break
            }
        }
        let group = bound.filter { $0.state.isLive && $0.localAddress == socket.localAddress }
        let kind = groupKind(of: socket.localAddress, transport: socket.transport)
        let verdict = Self.verdict(
            socket, group: group.isEmpty ? [socket] : group, sameUser: sameUser, otherUsers: otherUsers,
            probed: probes, table: table, ownUID: ownUID, kind: kind)
        return SocketSharing(sameUserMayJoin: sameUser, otherUsersMayJoin: otherUsers, source: source, verdict: verdict, groupKind: kind)
    }

    /// Whether a new socket of `uid` (`nil`: a stranger), setting every option that could help it, would be
    /// admitted beside every competitor.
    static func join(uid: UInt32?, competitors: [PortHolder], table: SharingTable) -> Bool? {
        // The rules only admit more when the newcomer sets more, so the most permissive newcomer decides.
        let newcomer: ReuseOptions = table.system == .windows ? [.reuseAddress] : [.reuseAddress, .reusePort]
        var answer: Bool? = true
        for competitor in competitors {
            switch table.admits(newcomer, uid: uid, beside: competitor) {
            case false?: return false
            case nil: answer = nil
            case true?: break
            }
        }
        return answer
    }

    private static func verdict(
        _ socket: PortHolder, group: [PortHolder], sameUser: Bool?, otherUsers: Bool?, probed: PortReport.Probes,
        table: SharingTable, ownUID: UInt32, kind: GroupReceiver.Kind?
    ) -> String {
        let owner = socket.user.map { "user \($0)" } ?? socket.uid.map { "uid \($0)" } ?? "an unknown user"
        if otherUsers == true && kind == nil {
            if socket.transport == .udp && table.system != .windows {
                return "UDP socket bound with SO_REUSEADDR: any local user can bind this port and receive its datagrams"
            }
            return "any local user can bind this port beside it and take its \(socket.transport == .udp ? "datagrams" : "connections")"
        }
        let processes = group.flatMap(\.processes)
        let pids = Set(processes.map(\.pid)).count
        var users: [String] = []
        for process in processes {
            let name = process.user ?? process.uid.map { "uid \($0)" } ?? owner
            if !users.contains(name) { users.append(name) }
        }
        let usersText = users.isEmpty ? owner
            : users.count == 1 ? (users[0].hasPrefix("uid ") ? users[0] : "user \(users[0])")
            : "users " + users.joined(separator: ", ")
        let holders: String?
        let partly = group.contains(where: \.processesMayBeMissing) ? " (at least: other users' processes could not be read)" : ""
        if pids >= 2 {
            holders = "\(pids) processes of \(usersText)\(partly)"
        } else if group.count >= 2, let process = processes.first {
            holders = "\(group.count) sockets of one process (\(process.name), pid \(process.pid), \(usersText))"
        } else if group.count >= 2 {
            holders = "\(group.count) sockets of \(owner)"
        } else {
            holders = nil
        }

        let unknown: String
        switch socket.transport {
        case .tcp where socket.uid == ownUID && probed.contains(.tcp):
            unknown = "the probe bind got no answer"
        case .tcp:
            unknown = "its options cannot be read (run as root\(socket.uid == 0 || socket.uid == nil ? "" : " or as \(owner)"))"
        case .udp:
            unknown = "its options cannot be read without root, and a probe bind could take one of its datagrams"
        }
        if let kind {
            let ip = socket.localAddress.ip
            let what = kind == .multicast ? "multicast group \(ip)" : "broadcast address \(ip)"
            let gets = group.count >= 2 ? "each gets every datagram sent to \(ip)" : "it gets every datagram sent to \(ip)"
            let joining: String
            switch (otherUsers, sameUser) {
            case (true?, _):
                joining = "a socket of any user can bind beside it (SO_REUSEADDR) and get copies of the same datagrams, "
                    + "but takes none from it (bound to the group address, it gets no unicast datagrams to steal)"
            case (_, true?):
                joining = "another receiver of \(owner) can join (SO_REUSEPORT)"
            case (_, false?):
                joining = group.count >= 2 ? "no new receiver can join now" : "no other receiver can join (exclusive)"
            case (_, nil):
                joining = "whether another receiver of \(owner) can join is unknown: \(unknown)"
            }
            return "\(what), " + (holders.map { "shared by \($0)" } ?? "one receiver") + ": \(gets); \(joining)"
        }
        switch (holders, sameUser) {
        case (let holders?, true?):
            return "shared by \(holders)"
        case (let holders?, false?):
            return group.count == 1
                ? "shared by \(holders) (one socket, inherited or passed); no new socket can join"
                : "shared by \(holders); no new socket can join now"
        case (let holders?, nil):
            return "shared by \(holders); whether a new socket of \(owner) can join is unknown: \(unknown)"
        case (nil, true?):
            return "open to \(owner): another socket of \(owner) can join (SO_REUSEPORT)"
        case (nil, false?):
            // In the policies' words: SO_REUSEADDR on a TCP listener is `restartable` (a restart binds at once,
            // TIME-WAIT or not), no option `exclusive`; neither lets another socket join.
            return socket.transport == .tcp && socket.options?.contains(.reuseAddress) == true
                ? "restartable (SO_REUSEADDR): not shared; a restart binds at once" : "exclusive: not shared"
        case (nil, nil):
            return "unknown: \(unknown)"
        }
    }
}
