/// Whether an address could be bound now with a given policy.
public enum Availability: Sendable, Hashable {
    /// A socket with this policy could bind the address now.
    case available
    /// The port is held; the report says by whom and why this policy cannot join.
    case inUse(PortInUse)
    /// PortReuse could not find out without taking traffic from the holders; the text says why.
    case unknown(String)
}

extension Address {
    /// Whether a socket with `policy` could bind this address now (the network's transport, TCP when none).
    ///
    /// TCP is checked by binding a probe socket without listening: a bound TCP socket that does not listen
    /// receives nothing. A UDP probe that joins a group of sharing sockets could receive one of their
    /// datagrams, so when live UDP sockets hold the port and the policy shares, the answer comes from their
    /// owners and options instead (``Availability/unknown(_:)`` when those cannot be read).
    public func availability(_ policy: SharingPolicy = .default) throws(PortReuseError) -> Availability {
        let transport = network?.transport ?? .tcp
        let address = try checked(for: transport, operation: .bind).resolveForBinding(transport)
        let options = SharingTable.current.options(policy, transport)
        if transport == .udp && !options.isEmpty {
            let live = PortHolder.find(port: address.port, transport: .udp).filter { $0.state.isLive && $0.overlaps(address) }
            if !live.isEmpty { return Self.udpAvailability(address, policy: policy, holders: live) }
        }
        do {
            let probe = try SocketHandle.bound(to: address, transport: transport, policy: policy, dualStack: false)
            probe.close()
            return .available
        } catch {
            if case .portInUse(let report)? = error.diagnosis { return .inUse(report) }
            throw error
        }
    }

    private static func udpAvailability(_ address: SocketAddress, policy: SharingPolicy, holders: [PortHolder]) -> Availability {
        let table = SharingTable.current
        let answers = holders.map { table.admits(table.options(policy, .udp), uid: Sys.effectiveUserID(), beside: $0) }
        if answers.contains(false) { return .inUse(PortInUse.explain(address, transport: .udp, policy: policy)) }
        if answers.contains(nil) {
            return .unknown("live UDP sockets hold port \(address.port) and their options cannot be read (run as root); "
                + "a probe bind could take one of their datagrams, so none was made")
        }
        return .available
    }
}
