#if canImport(Darwin)
import Darwin

/// macOS and the BSDs: the socket calls under the names every platform file gives them (shared POSIX parts
/// live in Socket+POSIX.swift). Written for Darwin and not compiled by the Linux CI; its policy table is
/// tested as data.
package enum Sys {
    static let operatingSystem = OperatingSystem.darwin

    static func socketType(_ transport: Transport) -> Int32 { transport == .tcp ? SOCK_STREAM : SOCK_DGRAM }

    static func unixDatagramSocket() -> Descriptor {
        let s = Darwin.socket(AF_UNIX, SOCK_DGRAM, 0)
        if s >= 0 { prepare(s); _ = setBlocking(s, false) }  // sd_notify never waits for a slow supervisor
        return s
    }

    /// A close-on-exec unix stream socket without SIGPIPE (``UnixListener``).
    static func unixStreamSocket() -> Descriptor {
        let s = Darwin.socket(AF_UNIX, SOCK_STREAM, 0)
        if s >= 0 { prepare(s) }
        return s
    }

    /// A new socket, close-on-exec and without SIGPIPE (Darwin has neither SOCK_CLOEXEC nor MSG_NOSIGNAL).
    static func socket(_ family: AddressFamily, _ transport: Transport) -> Descriptor {
        let s = Darwin.socket(Sys.family(family), socketType(transport), 0)
        if s >= 0 { prepare(s) }
        return s
    }

    package static func accept(_ s: Descriptor, _ a: UnsafeMutablePointer<sockaddr>?, _ l: UnsafeMutablePointer<socklen_t>?) -> Descriptor {
        let connection = Darwin.accept(s, a, l)
        if connection >= 0 { prepare(connection) }
        return connection
    }

    private static func prepare(_ s: Descriptor) {
        _ = setCloseOnExec(s)
        var one: Int32 = 1
        _ = Darwin.setsockopt(s, SOL_SOCKET, SO_NOSIGPIPE, &one, socklen_t(MemoryLayout<Int32>.size))
    }

    static func send(_ s: Descriptor, _ buffer: UnsafeRawBufferPointer) -> Int {
        Darwin.send(s, buffer.baseAddress, buffer.count, 0)
    }

    static func sendto(_ s: Descriptor, _ buffer: UnsafeRawBufferPointer, _ a: UnsafePointer<sockaddr>, _ l: socklen_t) -> Int {
        Darwin.sendto(s, buffer.baseAddress, buffer.count, 0, a, l)
    }

    static func shutdownWrite(_ s: Descriptor) -> Int32 { Darwin.shutdown(s, SHUT_WR) }

    // Multicast and broadcast: the same names in every platform file.
    static let interfaceUp = IFF_UP
    static let interfaceLoopback = IFF_LOOPBACK
    static let interfaceMulticast = IFF_MULTICAST
    static let interfaceBroadcast = IFF_BROADCAST
    static let ipv6JoinGroup = IPV6_JOIN_GROUP
    static let ipv6LeaveGroup = IPV6_LEAVE_GROUP

    /// BSD takes a u_char for the IPv4 multicast TTL and loop options.
    static func ipv4MulticastByte(_ value: UInt8) -> UInt8 { value }

    /// ip_mreq names the interface by its IPv4 address; an interface without one cannot join an IPv4 group.
    static func ipv4Membership(group: UInt32, on interface: NetworkInterface, join: Bool) -> RawOption? {
        guard case .v4(let local)? = interface.address(.ipv4)?.storage else { return nil }
        let request = ip_mreq(imr_multiaddr: in_addr(s_addr: group), imr_interface: in_addr(s_addr: local))
        return RawOption(
            level: IPPROTO_IP, name: join ? IP_ADD_MEMBERSHIP : IP_DROP_MEMBERSHIP,
            label: join ? "IP_ADD_MEMBERSHIP" : "IP_DROP_MEMBERSHIP", value: request)
    }

    /// BSD delivers only the groups a socket joined: nothing to switch off.
    static func onlyJoinedGroups(_ family: AddressFamily) -> RawOption? { nil }
}
#endif
