import Glibc
import PortReuse

/// A socket `up` holds for its whole life and hands to every generation.
package struct HeldSocket {
    /// `up`'s own descriptor (moved to 100 or above, close-on-exec; a generation gets it as 3, 4, …).
    package let descriptor: Int32
    package let name: String
    package let transport: Transport
    package let address: SocketAddress
    /// The kernel's inode number of the socket (what /proc/PID/fd links name).
    package let inode: UInt64

    /// Takes `descriptor` over: a duplicate at 100 or above replaces it, so that posix_spawn's dup2 to 3, 4, …
    /// never lands on one of our own.
    package static func hold(_ descriptor: Int32, name: String) throws(CommandFailure) -> HeldSocket {
        let moved = fcntl(descriptor, F_DUPFD_CLOEXEC, 100)
        guard moved >= 0 else { throw CommandFailure("cannot duplicate socket descriptor \(descriptor): \(Files.errorText())") }
        close(descriptor)
        return try describe(moved, name: name)
    }

    /// A descriptor that is already ours (after an upgrade in place).
    package static func describe(_ descriptor: Int32, name: String) throws(CommandFailure) -> HeldSocket {
        let found = ActivatedSocket(describing: descriptor, name: name)
        guard let transport = found.transport, let address = found.localAddress, transport == .udp || found.isListening else {
            throw CommandFailure("descriptor \(descriptor) (\(name)) is not a listening TCP socket nor a bound UDP socket")
        }
        return HeldSocket(descriptor: descriptor, name: name, transport: transport, address: address, inode: GenerationProbe.inode(of: descriptor))
    }
}

extension NotifyReceiver {
    /// The receiver of a generation started by the previous `up` of this process.
    package convenience init(adopting descriptor: Int32, path: String) throws(CommandFailure) {
        guard fcntl(descriptor, F_SETFD, FD_CLOEXEC) == 0 else { throw CommandFailure("notify socket \(descriptor) is gone") }
        self.init(descriptor: descriptor, path: path)
    }
}
