#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#elseif os(Windows)
import WinSDK
#endif
import Synchronization
import SystemPackage

/// A UDP socket that receives the datagrams sent to a multicast group or to a broadcast address, on a port
/// that it shares with other receivers of the same group: the kernel gives **every** receiver a copy of each
/// datagram (unlike sockets of policy ``SharingPolicy/shared`` on a unicast address, between which it spreads them).
///
/// ```swift
/// let receiver = try GroupReceiver("239.1.2.3:5000")              // joins on the interface of the route to the group
/// print(receiver.interface!, receiver.interfaceReason)           // "eth0 (index 2)", "the route to 239.1.2.3"
/// if let (bytes, sender) = try receiver.receive(timeout: .seconds(5)) { … }
/// try receiver.leave()                                           // closing the socket leaves too
///
/// let lights = try GroupReceiver("10.0.0.255:9999")              // broadcasts to that subnet
/// ```
///
/// The options come from ``SharingTable/groupReceivers`` for the policy ``SharingPolicy/shared`` (the default):
/// on Linux and BSD `SO_REUSEPORT`, so only receivers of the same user share the port, and each receiver binds
/// the group (or broadcast) address itself rather than the wildcard address, so that a unicast datagram to the
/// port never reaches it and a socket bound beside it takes nothing from it. Windows refuses such a bind: there
/// receivers bind the wildcard address with `SO_REUSEADDR`, which any process of any user can join.
/// ``SharingPolicy/unsafeAnyUser`` adds `SO_REUSEADDR`, to share the port with receivers of programs that set it
/// (most multicast programs do) and of other users; ``SharingPolicy/exclusive`` admits no other receiver.
public final class GroupReceiver: SocketOwner {
    /// What a receiver receives.
    public enum Kind: String, Sendable, Hashable, CustomStringConvertible {
        /// The datagrams of a multicast group that it joined.
        case multicast
        /// The datagrams sent to an IPv4 broadcast address.
        case broadcast

        public var description: String { rawValue }
    }

    /// The bound socket, for ``DatagramSocket/receive(maxLength:timeout:retryOnInterrupt:)`` and replies.
    public let socket: DatagramSocket
    public var handle: SocketHandle { socket.handle }
    /// Multicast or broadcast.
    public let kind: Kind
    /// The group (or broadcast address) and port.
    public let group: SocketAddress
    /// The interface the group was joined on; for a broadcast address, the interface whose subnet it is
    /// (`nil` for `255.255.255.255`, which every interface receives).
    public let interface: NetworkInterface?
    /// Why ``interface`` was chosen, in words: `named`, `the route to 239.1.2.3`, …
    public let interfaceReason: String
    /// The policy the socket was bound with.
    public let policy: SharingPolicy
    private let member: Atomic<Bool>

    /// The bound address: the group, or the wildcard address where the platform refuses to bind a group
    /// (``SharingTable/GroupRow/bindsGroupAddress``).
    public var localAddress: SocketAddress { socket.localAddress }

    /// Whether the socket is a member of its multicast group now (false after ``leave()``; false for broadcast).
    public var isMember: Bool { member.load(ordering: .acquiring) }

    /// Parses `text` and binds a multicast receiver (for a group address) or a broadcast receiver (for
    /// `255.255.255.255` or the broadcast address of an interface's subnet).
    ///
    /// - Parameters:
    ///   - text: `239.1.2.3:5000`, `udp://239.1.2.3:5000`, `[ff15::1234]:5000`, `udp6:[ff02::fb%eth0]:5353`,
    ///     `10.0.0.255:9999`, `255.255.255.255:9999`.
    ///   - interface: the interface to join the group on: a name (`eth0`), an index or one of its addresses;
    ///     `nil` chooses one (see ``NetworkInterface/forMulticast(to:)``). Broadcast receivers take none.
    ///   - policy: who else may bind the group's port (see the type's documentation).
    ///   - loopback: whether datagrams this socket sends to the group come back to this host's receivers
    ///     (`IP_MULTICAST_LOOP`; Windows applies it to receiving too).
    public convenience init(
        _ text: String, interface: String? = nil, policy: SharingPolicy = .shared, loopback: Bool = true
    ) throws(PortReuseError) {
        let address = try Address(text).checked(for: .udp, operation: .bind)
        guard address.host != .unspecified else {
            throw PortReuseError(.parse, address: text, diagnosis: .invalidAddress(
                reason: "it names no group: give a multicast group or a broadcast address with the port, as in 239.1.2.3:5000"))
        }
        let group = try address.resolveForBinding(.udp)
        if group.ip.isMulticast {
            var named: NetworkInterface?
            if let interface { named = try NetworkInterface.find(interface) }
            try self.init(multicast: group, interface: named, policy: policy, loopback: loopback)
        } else if group.family == .ipv4, !group.ip.isMulticast, group.ip.isBroadcast() {
            if let interface {
                throw PortReuseError(.bind, address: group.label(.udp), diagnosis: .other(
                    "a broadcast receiver takes no interface (\"\(interface)\"): its address names the subnet, so drop the interface."))
            }
            try self.init(broadcast: group, policy: policy)
        } else if group.family == .ipv6 {
            throw PortReuseError(.bind, address: group.label(.udp), diagnosis: .notMulticastGroup(group.ip))
        } else {
            let known = ((try? NetworkInterface.all()) ?? []).flatMap(\.broadcastAddresses)
            throw PortReuseError(.bind, address: group.label(.udp), diagnosis: .notGroupAddress(group.ip, broadcastAddresses: known))
        }
    }

    /// Binds a receiver for a multicast group and joins the group.
    ///
    /// The corresponding C functions are `socket`, `setsockopt` (the policy's options; on Linux `IP_MULTICAST_ALL`
    /// or `IPV6_MULTICAST_ALL` set to 0, so that the socket gets only the groups it joined; `IP_MULTICAST_LOOP`),
    /// `bind`, and `setsockopt` with `IP_ADD_MEMBERSHIP` or `IPV6_JOIN_GROUP`, then `IP_MULTICAST_IF` or
    /// `IPV6_MULTICAST_IF` so that replies to the group leave on the same interface.
    ///
    /// - Parameters:
    ///   - group: the group address and port. An IPv6 group with a scope (`ff02::fb%eth0`) names its interface.
    ///   - interface: where to join; `nil`: the group's scope, else the interface of the route to the group.
    public init(
        multicast group: SocketAddress, interface: NetworkInterface? = nil, policy: SharingPolicy = .shared, loopback: Bool = true
    ) throws(PortReuseError) {
        guard group.ip.isMulticast else {
            throw PortReuseError(.bind, address: group.label(.udp), diagnosis: .notMulticastGroup(group.ip))
        }
        let chosen: (interface: NetworkInterface, reason: String)
        if let interface {
            chosen = (interface, "named")
        } else if group.ip.scope != 0 {
            chosen = (try NetworkInterface.find(String(group.ip.scope)), "the group's scope")
        } else {
            chosen = try NetworkInterface.forMulticast(to: group.ip)
        }
        guard let join = Sys.membership(group.ip, on: chosen.interface, join: true) else {
            throw PortReuseError(.setOption("IP_ADD_MEMBERSHIP"), address: group.label(.udp), diagnosis: .other(
                "\(chosen.interface.name) has no IPv4 address, which \(OperatingSystem.current) needs to join an IPv4 group on it: "
                    + "give it one, or name another interface."))
        }
        let table = SharingTable.current
        let bindAddress = table.groupReceivers.bindsGroupAddress ? group : SocketAddress(ip: group.family == .ipv4 ? .anyIPv4 : .anyIPv6, port: group.port)
        let handle = try SocketHandle.bound(
            to: bindAddress, transport: .udp, policy: policy, dualStack: false, options: table.groupReceiverOptions(policy)
        ) { (handle) throws(PortReuseError) in
            if let onlyJoined = Sys.onlyJoinedGroups(group.family) { try handle.set(onlyJoined, for: group) }
            try handle.set(Sys.multicastLoopback(group.family, loopback), for: group)
        }
        do {
            try handle.set(join, for: group)
        } catch {
            throw error.diagnosingMembership(interface: chosen.interface)
        }
        if let outgoing = Sys.multicastInterface(group.family, chosen.interface) { try handle.set(outgoing, for: group) }
        let local = bindAddress.port == 0 ? try handle.localAddress() : bindAddress
        socket = DatagramSocket(handle: handle, localAddress: local, policy: policy)
        kind = .multicast
        self.group = SocketAddress(ip: group.ip, port: local.port)
        self.interface = chosen.interface
        interfaceReason = chosen.reason
        self.policy = policy
        member = Atomic(true)
    }

    /// Binds a receiver for an IPv4 broadcast address: `255.255.255.255` (limited broadcast, from this link
    /// only) or the broadcast address of one of this machine's subnets (`10.0.0.255` for `10.0.0.1/24`). A socket
    /// bound to one of them does not receive the other's datagrams; senders pick the address.
    ///
    /// The corresponding C functions are `socket`, `setsockopt` (the policy's options, `SO_BROADCAST` so that
    /// the receiver may answer by broadcast) and `bind`.
    public init(broadcast address: SocketAddress, policy: SharingPolicy = .shared) throws(PortReuseError) {
        let interfaces = try NetworkInterface.all()
        guard address.ip.isBroadcast(among: interfaces) else {
            throw PortReuseError(.bind, address: address.label(.udp), diagnosis: .notBroadcastAddress(
                address.ip, known: interfaces.flatMap(\.broadcastAddresses)))
        }
        let table = SharingTable.current
        let bindAddress = table.groupReceivers.bindsGroupAddress ? address : SocketAddress(ip: .anyIPv4, port: address.port)
        let handle = try SocketHandle.bound(
            to: bindAddress, transport: .udp, policy: policy, dualStack: false, options: table.groupReceiverOptions(policy)
        ) { (handle) throws(PortReuseError) in
            try handle.set(Sys.broadcast(true), for: address)
        }
        let local = bindAddress.port == 0 ? try handle.localAddress() : bindAddress
        socket = DatagramSocket(handle: handle, localAddress: local, policy: policy)
        kind = .broadcast
        group = SocketAddress(ip: address.ip, port: local.port)
        interface = interfaces.first { $0.broadcastAddresses.contains(address.ip) }
        interfaceReason = interface == nil ? "limited broadcast: every interface" : "the subnet of the broadcast address"
        self.policy = policy
        member = Atomic(false)
    }

    /// Receives one datagram of the group; see ``DatagramSocket/receive(maxLength:timeout:retryOnInterrupt:)``.
    public func receive(
        maxLength: Int = 65_536, timeout: Duration? = nil, retryOnInterrupt: Bool = true
    ) throws(PortReuseError) -> (bytes: [UInt8], sender: SocketAddress)? {
        try socket.receive(maxLength: maxLength, timeout: timeout, retryOnInterrupt: retryOnInterrupt)
    }

    /// Leaves the multicast group; the socket stays bound, and gets none of the group's datagrams until
    /// ``join()``. Does nothing when not a member. Closing the socket leaves too (the kernel drops a socket's
    /// memberships when it closes). The corresponding C function is `setsockopt` with `IP_DROP_MEMBERSHIP` or
    /// `IPV6_LEAVE_GROUP`.
    public func leave() throws(PortReuseError) {
        guard kind == .multicast, let interface, member.exchange(false, ordering: .acquiringAndReleasing) else { return }
        guard let option = Sys.membership(group.ip, on: interface, join: false) else { return }
        do {
            try handle.set(option, for: group)
        } catch {
            member.store(true, ordering: .releasing)
            throw error
        }
    }

    /// Joins the group again after ``leave()``; does nothing when already a member.
    public func join() throws(PortReuseError) {
        guard kind == .multicast, let interface, !member.exchange(true, ordering: .acquiringAndReleasing) else { return }
        guard let option = Sys.membership(group.ip, on: interface, join: true) else { return }
        do {
            try handle.set(option, for: group)
        } catch {
            member.store(false, ordering: .releasing)
            throw error.diagnosingMembership(interface: interface)
        }
    }
}

extension DatagramSocket {
    /// Sends this socket's multicast datagrams out of `interface` instead of the interface of the route to the
    /// group. The corresponding C function is `setsockopt` with `IP_MULTICAST_IF` (the interface's IPv4 address)
    /// or `IPV6_MULTICAST_IF` (its index).
    public func setMulticastInterface(_ interface: NetworkInterface) throws(PortReuseError) {
        guard let option = Sys.multicastInterface(localAddress.family, interface) else {
            throw PortReuseError(.setOption("IP_MULTICAST_IF"), address: localAddress.label(.udp), diagnosis: .other(
                "\(interface.name) has no IPv4 address to send IPv4 multicast from: give it one, or name another interface."))
        }
        try handle.set(option, for: localAddress)
    }

    /// How many routers this socket's multicast datagrams may cross: 1 (the default) keeps them on the local
    /// network, 0 on this host. The corresponding C function is `setsockopt` with `IP_MULTICAST_TTL` or
    /// `IPV6_MULTICAST_HOPS`.
    public func setMulticastHops(_ hops: UInt8) throws(PortReuseError) {
        try handle.set(Sys.multicastHops(localAddress.family, hops), for: localAddress)
    }

    /// Whether this host's own receivers get the multicast datagrams this socket sends (on by default).
    /// The corresponding C function is `setsockopt` with `IP_MULTICAST_LOOP` or `IPV6_MULTICAST_LOOP`.
    public func setMulticastLoopback(_ on: Bool) throws(PortReuseError) {
        try handle.set(Sys.multicastLoopback(localAddress.family, on), for: localAddress)
    }

    /// Allows sending to broadcast addresses (off by default: sending to one fails with `EACCES`).
    /// The corresponding C function is `setsockopt` with `SO_BROADCAST`.
    public func setBroadcast(_ on: Bool) throws(PortReuseError) {
        try handle.set(Sys.broadcast(on), for: localAddress)
    }
}

/// A socket option of any C type, as the platform files describe it: level, name, C name for errors, bytes.
struct RawOption {
    var level: Int32
    var name: Int32
    var label: String
    var bytes: [UInt8]

    init<Value>(level: Int32, name: Int32, label: String, value: Value) {
        self.level = level
        self.name = name
        self.label = label
        bytes = withUnsafeBytes(of: value) { Array($0) }
    }
}

extension SocketHandle {
    /// Sets an option of any type. The corresponding C function is `setsockopt`.
    func set(_ option: RawOption, for address: SocketAddress) throws(PortReuseError) {
        let descriptor = try live(.setOption(option.label))
        let result = option.bytes.withUnsafeBytes { Sys.setsockopt(descriptor, option.level, option.name, $0.baseAddress!, socklen_t($0.count)) }
        guard result == 0 else {
            throw PortReuseError(.setOption(option.label), address: address.label(.udp), errno: Errno(rawValue: Sys.lastError()))
        }
    }
}

extension PortReuseError {
    /// Explains a failed join: an interface that is down or cannot multicast, or a group already joined.
    func diagnosingMembership(interface: NetworkInterface) -> PortReuseError {
        var error = self
        switch errno {
        case .noSuchAddressOrDevice?, .operationNotSupportedByDevice?:  // ENXIO, ENODEV
            error.diagnosis = .other("\(interface.name) is gone or is down: bring it up (ip link set \(interface.name) up) or name another interface.")
        case .addressInUse?:
            error.diagnosis = .other("this socket already joined the group on \(interface.name).")
        case .addressNotAvailable?, .invalidArgument?:
            error.diagnosis = .other("\(interface.name) cannot join the group"
                + (interface.isUp ? "" : ": it is down (ip link set \(interface.name) up)")
                + (interface.supportsMulticast ? "" : ": it does not support multicast (ip link set \(interface.name) multicast on)")
                + "; name another interface.")
        default:
            break
        }
        return error
    }
}
