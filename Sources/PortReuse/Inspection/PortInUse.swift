/// Why a port could not be bound: who holds it, and what stops this socket from joining them.
public struct PortInUse: Sendable, Hashable {
    /// What stops the new socket.
    public enum Reason: Sendable, Hashable {
        /// A live socket holds the port and the new socket's policy does not share (no `SO_REUSEPORT`).
        case policyDoesNotShare(SharingPolicy)
        /// The new socket set `SO_REUSEPORT` but the holder did not; `certain` when read from the holder's
        /// socket, else inferred.
        case holderDidNotShare(certain: Bool)
        /// The holder runs as another user, and the kernel shares a port only within one user.
        case otherUser(uid: UInt32, user: String?)
        /// Only old connections in TIME-WAIT hold it; `reuseAddressSet` tells whether the new socket set
        /// `SO_REUSEADDR` (then the old socket did not, and the TIME-WAIT sockets keep its options).
        case timeWait(count: Int, reuseAddressSet: Bool)
        /// No socket this process can see holds the port.
        case noVisibleHolder
    }

    /// The address that could not be bound.
    public var address: SocketAddress
    /// The transport.
    public var transport: Transport
    /// The sockets that compete for the port: the one in the way first, then the other live ones, then
    /// TIME-WAIT ones.
    public var holders: [PortHolder]
    /// How the socket in the way shares (``SocketSharing``), when a live socket is in the way.
    public var sharing: SocketSharing?
    /// What stops the new socket.
    public var reason: Reason

    /// Finds out who holds `address` and why a socket with the options of `policy`, created by this process,
    /// cannot join them: the first live socket that the platform's rule (``SharingTable/admits(_:uid:beside:)``)
    /// says does not admit it is the one in the way.
    public static func explain(_ address: SocketAddress, transport: Transport, policy: SharingPolicy) -> PortInUse {
        let table = SharingTable.current
        let options = table.options(policy, transport)
        let ownUID = Sys.effectiveUserID()
        let report = PortReport.find(port: address.port, transport: transport, competingWith: [address], probes: [], processesOfConnections: true)
        let live = report.sockets.map(\.holder) + report.connections.filter(\.state.isLive)
        let timeWait = report.connections.filter { !$0.state.isLive }
        let answers = live.map { table.admits(options, uid: ownUID, beside: $0) }
        let blocking = answers.firstIndex(of: false) ?? answers.firstIndex(of: nil) ?? (live.isEmpty ? nil : 0)

        guard let blocking else {
            let reason: Reason = timeWait.isEmpty ? .noVisibleHolder : .timeWait(count: timeWait.count, reuseAddressSet: options.contains(.reuseAddress))
            return PortInUse(address: address, transport: transport, holders: timeWait, sharing: nil, reason: reason)
        }
        let holder = live[blocking]
        let reason: Reason
        if !options.contains(.reusePort) {
            reason = .policyDoesNotShare(policy)
        } else if let uid = holder.uid, uid != ownUID {
            reason = .otherUser(uid: uid, user: holder.user)
        } else {
            reason = .holderDidNotShare(certain: answers[blocking] == false)
        }
        var others = live
        others.remove(at: blocking)
        return PortInUse(
            address: address, transport: transport, holders: [holder] + others + timeWait,
            sharing: report.sockets.first { $0.holder == holder }?.sharing, reason: reason)
    }

    /// The explanation as sentences, with what to do.
    public var sentence: String {
        let holder = holders.first
        let heldBy = holder.map { "It is held by \($0.ownerDescription)" } ?? ""
        let what = holder.map { $0.state == .listen ? "a \(transport) listener" : "a \(transport) socket (\($0.state))" } ?? ""
        switch reason {
        case .policyDoesNotShare(let policy):
            let verdict = sharing.map { ": \($0.verdict)" } ?? ""
            return "\(heldBy), \(what)\(verdict). Policy \(policy) does not share a port with a live socket: stop that process, "
                + "choose another port, or give both sockets policy shared."
        case .holderDidNotShare(let certain):
            return "\(heldBy), \(what) that \(certain ? "did not set" : "probably did not set") SO_REUSEPORT; a port is "
                + "shared only when every socket on it sets it. Start that program with policy shared too (one you "
                + "cannot change: `portreuse run`), or choose another port."
        case .otherUser(let uid, _):
            return "\(heldBy), \(what) of uid \(uid), while this process runs as "
                + "uid \(Sys.effectiveUserID()). \(OperatingSystem.current) shares a port with SO_REUSEPORT only among "
                + "sockets of the same user: run both as one user, or choose another port."
        case .timeWait(let count, let reuseAddressSet):
            let connections = count == 1 ? "1 old connection in TIME-WAIT holds" : "\(count) old connections in TIME-WAIT hold"
            if reuseAddressSet {
                return "Only \(connections) it, and they keep the options of the socket that made them, which did "
                    + "not set SO_REUSEADDR: wait for them to expire (about 60 s), and give the server policy restartable "
                    + "so that its next restart binds at once."
            }
            return "Only \(connections) it: policy restartable (SO_REUSEADDR) binds at once if the server that made them "
                + "set it too (a TIME-WAIT connection keeps the options of its socket); else wait for them to expire (about 60 s), "
                + "and give both the old and the new server policy restartable."
        case .noVisibleHolder:
            return "No socket that this process can see holds it (it may have just closed, or live in another network "
                + "namespace): try again, or run `portreuse who \(address.port)`."
        }
    }
}
