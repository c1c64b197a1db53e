#if os(Linux)
import Glibc
import PortReuseSystem

/// What a socket of this process says of itself (a duplicate of another process's included): the looks
/// `portreuse up` takes at its listeners and at the connections of its generations. Linux only.
package enum SocketReadings {
    /// TCP_INFO's state of a TCP socket, and for a listener the connections waiting in its accept queue
    /// (tcpi_unacked) and its limit, the listen backlog (tcpi_sacked): one system call. `nil` for any other socket.
    package static func tcp(_ descriptor: Descriptor) -> (state: UInt8, queued: Int, backlog: Int)? {
        var info = tcp_info()
        var length = socklen_t(MemoryLayout<tcp_info>.size)
        guard getsockopt(descriptor.rawValue, Int32(IPPROTO_TCP), TCP_INFO, &info, &length) == 0 else { return nil }
        return (info.tcpi_state, Int(info.tcpi_unacked), Int(info.tcpi_sacked))
    }

    /// The TCP states ``tcp(_:)`` reports that the tools look for.
    package static let established = UInt8(TCP_ESTABLISHED)
    package static let listening: UInt8 = 10  // TCP_LISTEN

    /// The memory a socket's receive queue holds (SO_MEMINFO's SK_MEMINFO_RMEM_ALLOC: an empty datagram counts
    /// too), or `nil`.
    package static func receiveMemory(_ descriptor: Descriptor) -> UInt32? {
        var memory = [UInt32](repeating: 0, count: 16)
        var length = socklen_t(memory.count * MemoryLayout<UInt32>.size)
        return getsockopt(descriptor.rawValue, SOL_SOCKET, SO_MEMINFO, &memory, &length) == 0 ? memory[0] : nil
    }

    /// Whether TCP_DEFER_ACCEPT is set: a connection is queued only once data arrives.
    package static func defersAccept(_ descriptor: Descriptor) -> Bool { integerOption(descriptor, Int32(IPPROTO_TCP), TCP_DEFER_ACCEPT) ?? 0 > 0 }

    /// Whether SO_REUSEPORT is set: only then can siblings join its group.
    package static func reusesPort(_ descriptor: Descriptor) -> Bool { integerOption(descriptor, SOL_SOCKET, SO_REUSEPORT) ?? 0 != 0 }

    /// Shuts the socket down both ways: a listener stops listening (and leaves its SO_REUSEPORT group) for every
    /// process that holds it. The corresponding C function is `shutdown(SHUT_RDWR)`.
    package static func shutDown(_ descriptor: Descriptor) { _ = Glibc.shutdown(descriptor.rawValue, Int32(SHUT_RDWR)) }

    /// The socket's address family (SO_DOMAIN), when it is an IP socket; `nil` for any other (a Unix socket).
    package static func family(_ descriptor: Descriptor) -> AddressFamily? {
        switch integerOption(descriptor, SOL_SOCKET, SO_DOMAIN) {
        case AF_INET?: .ipv4
        case AF_INET6?: .ipv6
        default: nil
        }
    }

    /// The socket's transport by its protocol (SO_PROTOCOL: MPTCP counts as TCP), in one call; `nil` for a socket
    /// of any other protocol (a Unix socket says 0).
    package static func transport(_ descriptor: Descriptor) -> Transport? {
        switch integerOption(descriptor, SOL_SOCKET, SO_PROTOCOL) {
        case Int32(IPPROTO_TCP)?, Int32(IPPROTO_MPTCP)?: .tcp
        case Int32(IPPROTO_UDP)?: .udp
        default: nil
        }
    }

    /// MSG_FASTOPEN: with it, sendto and sendmsg on an unconnected TCP socket connect it (TCP Fast Open).
    package static let fastOpenFlag = Int32(MSG_FASTOPEN)

    /// The inode of the network namespace the socket lives in (SIOCGSKNS gives a descriptor of it), or `nil`.
    package static func networkNamespace(_ descriptor: Descriptor) -> UInt64? {
        let opened = ioctl(descriptor.rawValue, 0x894C)  // SIOCGSKNS
        guard opened >= 0 else { return nil }
        let namespace = Descriptor(opened)
        defer { Files.close(namespace) }
        return Files.status(of: namespace)?.inode
    }

    private static func integerOption(_ descriptor: Descriptor, _ level: Int32, _ name: Int32) -> Int32? {
        var value: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        return getsockopt(descriptor.rawValue, level, name, &value, &length) == 0 ? value : nil
    }
}
#endif
