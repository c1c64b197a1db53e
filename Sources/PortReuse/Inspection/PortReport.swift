/// Who holds one port of one transport, how, and whether others could join: the sockets bound to it (each
/// with its processes and its ``SocketSharing``) and the connections on it. What `portreuse who` prints.
///
/// ```swift
/// let report = PortReport.find(port: 8080, transport: .tcp)
/// for socket in report.sockets {
///     print(socket.holder.localAddress, socket.holder.ownerDescription, socket.sharing.verdict)
/// }
/// ```
///
/// Read from the kernel's tables (``PortHolder``); empty where PortReuse cannot read them (only Linux can).
public struct PortReport: Sendable, Hashable {
    /// Which probe binds a report may make to learn how a socket shares when its options cannot be read
    /// (another user's socket, without root).
    public struct Probes: OptionSet, Sendable, Hashable {
        public let rawValue: UInt8
        public init(rawValue: UInt8) { self.rawValue = rawValue }

        /// TCP probes: a socket bound beside the one tested, never listening, closed at once. A TCP socket that
        /// does not listen receives nothing, so these are always safe.
        public static let tcp = Probes(rawValue: 1 << 0)
        /// UDP probes: a UDP socket receives datagrams as soon as it is bound, so a probe may take a datagram
        /// meant for the socket it tests (it joins a `SO_REUSEPORT` group, or is the last socket bound beside
        /// `SO_REUSEADDR` ones). Only when the caller accepts that.
        public static let udp = Probes(rawValue: 1 << 1)
    }

    /// How many connections are in which state.
    public struct ConnectionCounts: Sendable, Hashable {
        /// ESTABLISHED.
        public var established = 0
        /// TIME-WAIT: closed, kept by the kernel alone for up to 60 s; they still hold the port.
        public var timeWait = 0
        /// Every other state (SYN-RECV, FIN-WAIT-1/2, CLOSE-WAIT, LAST-ACK, CLOSING, SYN-SENT).
        public var other = 0

        /// All of them.
        public var total: Int { established + timeWait + other }

        /// No connections.
        public init() {}

        mutating func count(_ state: PortHolder.State) {
            switch state {
            case .established: established += 1
            case .timeWait: timeWait += 1
            default: other += 1
            }
        }
    }

    /// A listening or bound socket on the port.
    public struct Socket: Sendable, Hashable {
        /// The socket, its owner and processes, and its options where readable.
        public var holder: PortHolder
        /// Who else could bind beside it, and the verdict.
        public var sharing: SocketSharing
        /// The connections on its address: those whose local address is this socket's, or, for a wildcard
        /// socket, those that no socket of a more specific address claims. Sockets on one address share them.
        public var connections: ConnectionCounts
        /// Whether its processes are hidden from this process, wholly or in part: no process is listed and this
        /// process is not root (another user's socket, or a process that is not dumpable), or some process's
        /// descriptors could not be read, so that holders may be missing from the list.
        public var processesHidden: Bool
    }

    /// The transport.
    public var transport: Transport
    /// The port.
    public var port: UInt16
    /// The sockets bound to the port: TCP listeners and bound TCP sockets, and every live UDP socket.
    public var sockets: [Socket]
    /// The TCP connections on the port (local port): every TCP socket in another state, TIME-WAIT included.
    public var connections: [PortHolder]
    /// When no socket is bound but connections hold the port: whether a new TCP socket with `SO_REUSEADDR`
    /// (policy ``SharingPolicy/restartable``) could bind now, learned by a TCP probe; otherwise `nil`.
    public var restartableMayBind: Bool?

    /// The connections, counted by state.
    public var connectionCounts: ConnectionCounts {
        var counts = ConnectionCounts()
        for connection in connections { counts.count(connection.state) }
        return counts
    }

    /// Whether anything holds the port: a bound socket or a connection.
    public var isHeld: Bool { !sockets.isEmpty || !connections.isEmpty }

    /// The sockets whose processes this process cannot see.
    /// Where another user could take this port's traffic, in words: sockets of more than one user on the
    /// port, or a wildcard that leaves the other IP version's half of the port to anyone.
    ///
    /// On Linux (measured on 6.18) a bind bucket remembers the owner and address of the first `SO_REUSEPORT`
    /// socket that joined it: a user who binds `[::]:P` IPv6-only with `SO_REUSEPORT` and closes it may then bind
    /// `[::]:P` dual-stack beside another user's `0.0.0.0:P`, and takes every IPv4 connection once that socket
    /// closes (a restart). A dual-stack `[::]:P`, or both wildcards, held for good keep both halves.
    public var warnings: [String] {
        var warnings: [String] = []
        let live = sockets.map(\.holder).filter { $0.state.isLive }
        let users = Set(live.compactMap(\.uid))
        if users.count > 1 {
            let names = live.reduce(into: [UInt32: String]()) { $0[$1.uid ?? 0] = $1.user ?? "uid \($1.uid ?? 0)" }
            warnings.append("sockets of \(users.count) users share \(transport.rawValue) port \(port) (\(users.sorted().compactMap { names[$0] }.joined(separator: ", "))): "
                + "when one closes or restarts, another user's socket can take the \(transport == .tcp ? "connections" : "datagrams") meant for it")
        }
        let wildcards = live.filter(\.localAddress.ip.isUnspecified)
        let ipv4 = wildcards.contains { $0.localAddress.family == .ipv4 }
        let dualStack = wildcards.contains { $0.localAddress.family == .ipv6 && $0.dualStack == true }
        let ipv6 = wildcards.contains { $0.localAddress.family == .ipv6 }
        if ipv4 && !ipv6 {
            warnings.append("0.0.0.0:\(port) is IPv4 only: any user may bind [::]:\(port) and serve IPv6 clients (localhost often resolves to ::1 first); "
                + "on Linux such a socket can later become dual-stack and take the IPv4 half too. Hold [::]:\(port) dual-stack instead (up --dual-stack)")
        } else if ipv6 && !ipv4 && !dualStack && wildcards.contains(where: { $0.dualStack == false }) {
            warnings.append("[::]:\(port) is IPv6 only: any user may bind 0.0.0.0:\(port) and take every IPv4 connection. Bind it dual-stack (up --dual-stack) or hold 0.0.0.0:\(port) too")
        }
        return warnings
    }

    public var hiddenSockets: [Socket] { sockets.filter(\.processesHidden) }

    /// The report on `port`: the sockets and connections that compete with a socket bound to any of
    /// `addresses` (the same address, or a wildcard on either side), or all of them when `addresses` is empty.
    ///
    /// - Parameter probes: where a socket's options cannot be read, the probe binds allowed to learn how it
    ///   shares; ``Probes/tcp`` takes no traffic, ``Probes/udp`` may (see there).
    public static func find(
        port: UInt16, transport: Transport, competingWith addresses: [SocketAddress] = [], probes: Probes = [.tcp]
    ) -> PortReport {
        find(port: port, transport: transport, competingWith: addresses, probes: probes, processesOfConnections: false)
    }

    static func find(
        port: UInt16, transport: Transport, competingWith addresses: [SocketAddress], probes: Probes, processesOfConnections: Bool
    ) -> PortReport {
        let holders = KernelTables.holders(
            transport: transport, port: port, withProcesses: true, withOptions: true,
            processStates: processesOfConnections ? nil : boundStates(transport))
        return report(port: port, transport: transport, holders: holders, addresses: addresses, probes: probes)
    }

    /// A report for every port of `transport` that a socket is bound to (TCP listeners and bound sockets, every
    /// live UDP socket), in port order.
    public static func all(transport: Transport, probes: Probes = [.tcp]) -> [PortReport] {
        let holders = KernelTables.holders(
            transport: transport, port: nil, withProcesses: true, withOptions: true, processStates: boundStates(transport))
        var byPort: [UInt16: [PortHolder]] = [:]
        for holder in holders { byPort[holder.localAddress.port, default: []].append(holder) }
        let bound = boundStates(transport)
        return byPort.keys.sorted().compactMap { port in
            let onPort = byPort[port]!
            guard onPort.contains(where: { bound.contains($0.state) }) else { return nil }
            return report(port: port, transport: transport, holders: onPort, addresses: [], probes: probes)
        }
    }

    /// The states in which a socket is bound to the port rather than a connection on it.
    static func boundStates(_ transport: Transport) -> Set<PortHolder.State> {
        transport == .tcp ? [.listen, .unconnected] : Set(PortHolder.State.allCases.filter(\.isLive))
    }

    static func report(port: UInt16, transport: Transport, holders: [PortHolder], addresses: [SocketAddress], probes: Probes) -> PortReport {
        let boundStates = boundStates(transport)
        func wanted(_ holder: PortHolder) -> Bool { addresses.isEmpty || addresses.contains { holder.overlaps($0) } }
        let bound = holders.filter { boundStates.contains($0.state) }
        let connections = holders.filter { !boundStates.contains($0.state) && wanted($0) }
        let ownUID = Sys.effectiveUserID()

        // Each connection belongs to the socket of its local address, else to a wildcard socket of its family.
        func order(_ holder: PortHolder) -> (Int, String, Int32) {
            (holder.state == .listen ? 0 : 1, holder.localAddress.description, holder.processes.first?.pid ?? 0)
        }
        let shown = bound.filter(wanted).sorted { order($0) < order($1) }
        let addressesShown = Array(Set(shown.map(\.localAddress.ip)))
        var countsByAddress: [IPAddress: ConnectionCounts] = [:]
        for connection in connections {
            let ip = connection.localAddress.ip
            let owner = addressesShown.first { $0 == ip || $0 == ip.unmappedIPv4 }
                ?? addressesShown.first { $0.isUnspecified && $0.family == ip.family }
                ?? addressesShown.first { $0.isUnspecified && $0.family == .ipv6 }
            if let owner { countsByAddress[owner, default: ConnectionCounts()].count(connection.state) }
        }

        let sockets = shown.map { holder in
            Socket(
                holder: holder, sharing: SocketSharing.of(holder, among: bound, probes: probes, ownUID: ownUID),
                connections: countsByAddress[holder.localAddress.ip] ?? ConnectionCounts(),
                processesHidden: holder.processes.isEmpty && ownUID != 0 || holder.processesMayBeMissing)
        }

        var restartable: Bool?
        if transport == .tcp && sockets.isEmpty && !connections.isEmpty && probes.contains(.tcp) {
            // Where would a restarted server bind: the address asked about, else the wildcard of each family.
            let targets = addresses.isEmpty
                ? Set(connections.map(\.localAddress.family)).map { SocketAddress(ip: $0 == .ipv4 ? .anyIPv4 : .anyIPv6, port: port) }
                : addresses
            let answers = targets.map { BindProbe.admits($0, transport: .tcp, options: [.reuseAddress]) }
            restartable = answers.contains(false) ? false : answers.contains(nil) ? nil : true
        }
        return PortReport(transport: transport, port: port, sockets: sockets, connections: connections, restartableMayBind: restartable)
    }
}
