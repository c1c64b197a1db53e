#if os(Linux)
import Glibc

/// What a socket of this process says of itself (a duplicate of another process's included): the looks
/// `portreuse up` takes at its listeners and at the connections of its generations. Linux only.
package enum SocketReadings {
    /// TCP_INFO's state of a TCP socket, and for a listener the connections waiting in its accept queue
    /// (tcpi_unacked) and its limit, the listen backlog (tcpi_sacked): one system call. `nil` for any other socket.
    package static func tcp(_ descriptor: Int32) -> (state: UInt8, queued: Int, backlog: Int)? {
        var info = tcp_info()
        var length = socklen_t(MemoryLayout<tcp_info>.size)
        guard getsockopt(descriptor, Int32(IPPROTO_TCP), TCP_INFO, &info, &length) == 0 else { return nil }
        return (info.tcpi_state, Int(info.tcpi_unacked), Int(info.tcpi_sacked))
    }

    /// The TCP states ``tcp(_:)`` reports that the tools look for.
    package static let established = UInt8(TCP_ESTABLISHED)
    package static let listening: UInt8 = 10  // TCP_LISTEN

    /// The memory a socket's receive queue holds (SO_MEMINFO's SK_MEMINFO_RMEM_ALLOC: an empty datagram counts
    /// too), or `nil`.
    package static func receiveMemory(_ descriptor: Int32) -> UInt32? {
        var memory = [UInt32](repeating: 0, count: 16)
        var length = socklen_t(memory.count * MemoryLayout<UInt32>.size)
        return getsockopt(descriptor, SOL_SOCKET, SO_MEMINFO, &memory, &length) == 0 ? memory[0] : nil
    }

    /// Whether TCP_DEFER_ACCEPT is set: a connection is queued only once data arrives.
    package static func defersAccept(_ descriptor: Int32) -> Bool { integerOption(descriptor, Int32(IPPROTO_TCP), TCP_DEFER_ACCEPT) ?? 0 > 0 }

    /// Whether SO_REUSEPORT is set: only then can siblings join its group.
    package static func reusesPort(_ descriptor: Int32) -> Bool { integerOption(descriptor, SOL_SOCKET, SO_REUSEPORT) ?? 0 != 0 }

    /// Shuts the socket down both ways: a listener stops listening (and leaves its SO_REUSEPORT group) for every
    /// process that holds it. The corresponding C function is `shutdown(SHUT_RDWR)`.
    package static func shutDown(_ descriptor: Int32) { _ = Glibc.shutdown(descriptor, Int32(SHUT_RDWR)) }

    private static func integerOption(_ descriptor: Int32, _ level: Int32, _ name: Int32) -> Int32? {
        var value: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        return getsockopt(descriptor, level, name, &value, &length) == 0 ? value : nil
    }
}
#endif
