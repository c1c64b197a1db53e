#if os(Linux)
import CPortReuseSystem
import Glibc
import SystemPackage

/// Descriptors between processes: a connected pair of Unix sockets, and one descriptor with a tag byte over
/// it (SCM_RIGHTS).
extension Files {
    /// A connected pair of Unix stream sockets, both close-on-exec, both numbered `minimum` or above (so
    /// that ``ProcessSpawn`` can map one to 3). The corresponding C call is `socketpair`.
    package static func socketPair(minimum: Int32 = 10) throws(SystemError) -> (Int32, Int32) {
        var ends: [Int32] = [-1, -1]
        _ = try systemCall("socketpair") { socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &ends) }
        func raised(_ fd: Int32) throws(SystemError) -> Int32 {
            guard fd < minimum else { return fd }
            defer { close(fd) }
            return try systemCall("fcntl(F_DUPFD_CLOEXEC)") { fcntl(fd, F_DUPFD_CLOEXEC, minimum) }
        }
        let first: Int32
        do { first = try raised(ends[0]) } catch {
            close(ends[1])
            throw error
        }
        do { return (first, try raised(ends[1])) } catch {
            close(first)
            throw error
        }
    }

    /// Sends `descriptor` with the byte `tag` over a Unix socket. The corresponding C call is `sendmmsg`
    /// with SCM_RIGHTS (not `sendmsg`, which a seccomp filter of ours may hand to a supervisor).
    package static func sendDescriptor(_ descriptor: Int32, tag: UInt8, over socket: Int32) throws(SystemError) {
        _ = try systemCall("sendmmsg(SCM_RIGHTS)") { csystem_send_descriptor(socket, descriptor, tag) }
    }

    /// Receives one byte and the descriptor that came with it (close-on-exec), if any; `nil` at end of file.
    /// The corresponding C call is `recvmsg`.
    package static func receiveDescriptor(over socket: Int32) throws(SystemError) -> (tag: UInt8, descriptor: Int32?)? {
        var tag: UInt8 = 0
        var descriptor: Int32 = -1
        let count = try systemCall("recvmsg") { csystem_receive_descriptor(socket, &tag, &descriptor) }
        if count == 0 {
            if descriptor >= 0 { close(descriptor) }
            return nil
        }
        return (tag, descriptor >= 0 ? descriptor : nil)
    }
}
#endif
