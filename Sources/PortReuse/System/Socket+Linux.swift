#if os(Linux) || os(Android)
import CPortReuseSystem
import Glibc

/// Linux: the socket calls under the names every platform file gives them (shared POSIX parts live in
/// Socket+POSIX.swift).
package enum Sys {
    static let operatingSystem = OperatingSystem.linux

    static func socketType(_ transport: Transport) -> Int32 {
        Int32(transport == .tcp ? SOCK_STREAM.rawValue : SOCK_DGRAM.rawValue)
    }

    /// A non-blocking unix datagram socket for sd_notify: a supervisor that does not read must never stall us.
    static func unixDatagramSocket() -> Descriptor {
        Glibc.socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
    }

    /// A close-on-exec unix stream socket (``UnixListener``).
    static func unixStreamSocket() -> Descriptor {
        Glibc.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    }

    /// A new socket, close-on-exec from birth.
    static func socket(_ family: AddressFamily, _ transport: Transport) -> Descriptor {
        Glibc.socket(Sys.family(family), socketType(transport) | Int32(SOCK_CLOEXEC.rawValue), 0)
    }

    /// accept4 with SOCK_CLOEXEC, so that a connection never leaks into a child started at the same moment.
    package static func accept(_ s: Descriptor, _ a: UnsafeMutablePointer<sockaddr>?, _ l: UnsafeMutablePointer<socklen_t>?) -> Descriptor {
        csystem_accept4(s, a, l, Int32(SOCK_CLOEXEC.rawValue))
    }

    /// MSG_NOSIGNAL: a peer that went away is an error, not a SIGPIPE.
    static func send(_ s: Descriptor, _ buffer: UnsafeRawBufferPointer) -> Int {
        Glibc.send(s, buffer.baseAddress, buffer.count, Int32(MSG_NOSIGNAL))
    }

    static func sendto(_ s: Descriptor, _ buffer: UnsafeRawBufferPointer, _ a: UnsafePointer<sockaddr>, _ l: socklen_t) -> Int {
        Glibc.sendto(s, buffer.baseAddress, buffer.count, Int32(MSG_NOSIGNAL), a, l)
    }

    static func shutdownWrite(_ s: Descriptor) -> Int32 { Glibc.shutdown(s, Int32(SHUT_WR)) }

    // Multicast and broadcast: the same names in every platform file.
    static let interfaceUp = Int32(IFF_UP)
    static let interfaceLoopback = Int32(IFF_LOOPBACK)
    static let interfaceMulticast = Int32(IFF_MULTICAST)
    static let interfaceBroadcast = Int32(IFF_BROADCAST)
    static let ipv6JoinGroup = IPV6_JOIN_GROUP
    static let ipv6LeaveGroup = IPV6_LEAVE_GROUP

    /// Linux takes an int for the IPv4 multicast TTL and loop options.
    static func ipv4MulticastByte(_ value: UInt8) -> Int32 { Int32(value) }

    /// ip_mreqn names the interface by index, so it works on an interface without an IPv4 address too.
    static func ipv4Membership(group: UInt32, on interface: NetworkInterface, join: Bool) -> RawOption? {
        var request = ip_mreqn()
        request.imr_multiaddr.s_addr = group
        request.imr_ifindex = Int32(bitPattern: interface.index)
        return RawOption(
            level: Int32(IPPROTO_IP), name: join ? IP_ADD_MEMBERSHIP : IP_DROP_MEMBERSHIP,
            label: join ? "IP_ADD_MEMBERSHIP" : "IP_DROP_MEMBERSHIP", value: request)
    }

    /// `IP_MULTICAST_ALL` / `IPV6_MULTICAST_ALL` set to 0. Linux delivers to a socket every multicast datagram
    /// that matches its bound address and port when the socket has no membership of the group but *some* socket
    /// of the host joined it (the default, 1): a receiver that left would still get the group's datagrams while
    /// another receiver is a member (measured). With 0 a socket gets only the groups it joined.
    static func onlyJoinedGroups(_ family: AddressFamily) -> RawOption? {
        family == .ipv4
            ? RawOption(level: Int32(IPPROTO_IP), name: IP_MULTICAST_ALL, label: "IP_MULTICAST_ALL", value: Int32(0))
            : RawOption(level: Int32(IPPROTO_IPV6), name: IPV6_MULTICAST_ALL, label: "IPV6_MULTICAST_ALL", value: Int32(0))
    }
}
#endif
