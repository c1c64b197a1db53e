/// A network interface of this machine, as multicast and broadcast receivers name it: by name (`eth0`),
/// by index, or by one of its addresses.
///
/// ```swift
/// for interface in try NetworkInterface.all() where interface.supportsMulticast {
///     print(interface.name, interface.index, interface.addresses)
/// }
/// let eth0 = try NetworkInterface.find("eth0")
/// ```
public struct NetworkInterface: Sendable, Hashable, CustomStringConvertible {
    /// The name, such as `eth0` or `en0`.
    public var name: String
    /// The kernel's index for it (what IPv6 scopes and `IPV6_JOIN_GROUP` use); never 0.
    public var index: UInt32
    /// Whether it is up (`IFF_UP`).
    public var isUp: Bool
    /// Whether it is a loopback interface (`IFF_LOOPBACK`).
    public var isLoopback: Bool
    /// Whether it can send and receive multicast (`IFF_MULTICAST`).
    public var supportsMulticast: Bool
    /// Whether it has a broadcast address (`IFF_BROADCAST`).
    public var supportsBroadcast: Bool
    /// Its IPv4 and IPv6 addresses.
    public var addresses: [IPAddress]
    /// The IPv4 broadcast addresses of its subnets (`10.0.0.255` for `10.0.0.1/24`).
    public var broadcastAddresses: [IPAddress]

    /// An interface from its parts.
    public init(
        name: String, index: UInt32, isUp: Bool, isLoopback: Bool, supportsMulticast: Bool, supportsBroadcast: Bool,
        addresses: [IPAddress] = [], broadcastAddresses: [IPAddress] = []
    ) {
        self.name = name
        self.index = index
        self.isUp = isUp
        self.isLoopback = isLoopback
        self.supportsMulticast = supportsMulticast
        self.supportsBroadcast = supportsBroadcast
        self.addresses = addresses
        self.broadcastAddresses = broadcastAddresses
    }

    /// `eth0 (index 2)`.
    public var description: String { "\(name) (index \(index))" }

    /// The first address of an IP version, if it has one.
    public func address(_ family: AddressFamily) -> IPAddress? { addresses.first { $0.family == family } }

    /// Every interface of this machine (of this network namespace, on Linux), in the kernel's order.
    /// The corresponding C function is `getifaddrs` (`GetAdaptersAddresses` on Windows).
    public static func all() throws(PortReuseError) -> [NetworkInterface] {
        try Sys.interfaces()
    }

    /// The interface that `text` names: its name (`eth0`), its index (`2`), or one of its addresses (`10.0.0.5`).
    /// Throws an error that lists the interfaces there are when none matches.
    public static func find(_ text: String) throws(PortReuseError) -> NetworkInterface {
        let interfaces = try all()
        if let found = interfaces.first(where: { $0.name == text }) { return found }
        if let index = UInt32(text), let found = interfaces.first(where: { $0.index == index }) { return found }
        if let ip = IPAddress(text), let found = interfaces.first(where: { $0.addresses.contains(ip) }) { return found }
        throw PortReuseError(.interfaces, diagnosis: .unknownInterface(given: text, known: interfaces.map(\.name)))
    }

    /// The interface the kernel would send to `group` on, and why it was chosen, for a receiver that names none.
    ///
    /// The route to the group decides, as it does for the kernel's own default (a UDP socket connected to the
    /// group: the interface that has its source address); without a route, the first interface that is up,
    /// can multicast, is not loopback and has an address of the group's IP version; then loopback.
    /// The corresponding C functions are `connect` and `getsockname` on a UDP socket that sends nothing.
    public static func forMulticast(to group: IPAddress) throws(PortReuseError) -> (interface: NetworkInterface, reason: String) {
        let interfaces = try all()
        if let source = routeSource(to: group) {
            let unscoped = IPAddress(storage: source.storage.unscoped)
            if let found = interfaces.first(where: { $0.addresses.contains { IPAddress(storage: $0.storage.unscoped) == unscoped } }) {
                return (found, "the route to \(group)")
            }
        }
        let candidates = interfaces.filter { $0.isUp && $0.supportsMulticast && $0.address(group.family) != nil }
        if let found = candidates.first(where: { !$0.isLoopback }) {
            return (found, "no route to \(group): the first interface that is up and can multicast")
        }
        if let found = interfaces.first(where: { $0.isUp && $0.isLoopback && $0.address(group.family) != nil }) {
            return (found, "no route to \(group) and no other interface: loopback")
        }
        throw PortReuseError(.interfaces, address: group.description, diagnosis: .other(
            "no interface can receive \(group): none is up with an \(group.family) address. Name one with an interface "
                + "argument, or add a route for the group (ip route add \(group.family == .ipv4 ? "224.0.0.0/4" : "ff00::/8") dev IFACE)."))
    }

    /// The source address the kernel picks for datagrams to `destination`, or `nil` without a route.
    static func routeSource(to destination: IPAddress) -> IPAddress? {
        let target = SocketAddress(ip: destination, port: 9)
        guard let descriptor = try? retryingInterrupts(.socket, nil, { Sys.socket(destination.family, .udp) }) else { return nil }
        let handle = SocketHandle(adopting: descriptor)
        defer { handle.close() }
        let connected = try? target.withSockAddr { (pointer, length) throws(PortReuseError) in
            Sys.connect(descriptor, pointer, length) == 0
        }
        guard connected == true, let local = try? handle.localAddress(), !local.ip.isUnspecified else { return nil }
        return local.ip
    }
}

extension IPAddress.Storage {
    /// The same address without an IPv6 scope.
    var unscoped: IPAddress.Storage {
        if case .v6(let high, let low, _) = self { return .v6(high, low, scope: 0) }
        return self
    }
}

extension IPAddress {
    /// `255.255.255.255`: the limited broadcast address, which no router forwards.
    public static let broadcastIPv4 = IPAddress(ipv4: 255, 255, 255, 255)

    /// Whether this is an IPv4 broadcast address: `255.255.255.255`, or the broadcast address of a subnet of
    /// one of `interfaces` (read with ``NetworkInterface/all()`` when `nil`).
    public func isBroadcast(among interfaces: [NetworkInterface]? = nil) -> Bool {
        guard family == .ipv4 else { return false }
        if self == .broadcastIPv4 { return true }
        let interfaces = interfaces ?? ((try? NetworkInterface.all()) ?? [])
        return interfaces.contains { $0.broadcastAddresses.contains(self) }
    }
}
