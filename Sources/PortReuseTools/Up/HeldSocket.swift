import PortReuse
import PortReuseSystem

/// Where a socket `up` holds is bound: an IP address and port, or a Unix-domain path (`@name`: an abstract one).
package enum Endpoint: Hashable, Sendable, CustomStringConvertible {
    case ip(SocketAddress)
    case unix(String)

    /// `127.0.0.1:8080`, `unix:/run/app.sock`.
    package var description: String {
        switch self {
        case .ip(let address): "\(address)"
        case .unix(let path): "unix:\(path)"
        }
    }
}

/// A socket `up` holds for its whole life and hands to every generation.
package struct HeldSocket {
    /// `up`'s own descriptor (moved to 100 or above, close-on-exec; a generation gets it as 3, 4, …). Where
    /// generations are steered, the socket new connections go to now (the serving generation's own).
    package internal(set) var descriptor: Descriptor
    package let name: String
    /// TCP or UDP; a Unix-domain stream socket is `.tcp` (a stream, with an accept queue).
    package let transport: Transport
    package let endpoint: Endpoint
    /// The IP address and port; nil for a Unix-domain socket (which no steering, probe or bind filter touches).
    package var address: SocketAddress? { if case .ip(let address) = endpoint { address } else { nil } }
    /// `tcp:127.0.0.1:8080`, `udp:[::]:53`, `unix:/run/app.sock`.
    package var label: String { address == nil ? "\(endpoint)" : "\(transport.rawValue):\(endpoint)" }
    /// The kernel's inode number of the socket (what /proc/PID/fd links name); a new one when `up` had to open
    /// the socket again.
    package var inode: UInt64
    /// The accept queue length `up` listens with, restored before each generation starts (a generation's own
    /// `listen(fd, 1)` would otherwise stay for all later ones); `nil` for a socket whose length `up` did not
    /// choose (handed over by systemd).
    package var backlog: Int32?
    /// Whether `up` opened it (not systemd, nor an adopted server): then no one else holds it.
    package var openedByUp = false

    /// Where `up` keeps its sockets: from descriptor 100 up where the limit on descriptors allows (the soft limit
    /// is raised toward the hard one if needed), else just above 3 + `count` + 1 (the spawn's report socket), so that the spawn's dup2 to
    /// 3, 4, … never lands on one of its own. Throws (exit 3) when even that does not fit.
    package static func firstDescriptor(holding count: Int) throws(CommandFailure) -> Descriptor {
        let spare = 32  // for notify sockets, pipes and the probe's connections
        let wanted = UInt64(100 + count + spare)
        let soft = Processes.raiseDescriptorLimit(to: wanted)
        if soft >= wanted { return Descriptor(100) }
        let lowest = UInt64(4 + count)  // 3 + count: where the spawn puts its report socket
        guard lowest + UInt64(count + spare) <= soft else {
            let hard = Processes.descriptorLimits().hard
            throw CommandFailure(
                "the limit on open descriptors (ulimit -n: \(soft), hard limit \(hard)) is too low to hold \(count) socket(s) and hand them over: "
                    + "raise it to \(lowest + UInt64(count + spare)) or more (ulimit -n \(wanted))", exitCode: 3)
        }
        return Descriptor(Int32(lowest))
    }

    /// Takes `descriptor` over: a close-on-exec duplicate at `floor` or above replaces it. A `backlog` says that
    /// `up` opened it, and listens with that length (TCP).
    package static func hold(_ descriptor: Descriptor, name: String, floor: Descriptor, backlog: Int32?) throws(CommandFailure) -> HeldSocket {
        let moved: Descriptor
        do { moved = try Files.duplicate(descriptor, atLeast: floor) } catch {
            throw CommandFailure("cannot keep socket descriptor \(descriptor) at \(floor) or above: \(error.errno.description) (see ulimit -n)", exitCode: 3)
        }
        Files.close(descriptor)
        var held = try describe(moved, name: name)
        held.backlog = held.transport == .tcp ? backlog : nil
        held.openedByUp = backlog != nil
        return held
    }

    /// A descriptor that is already ours (after an upgrade in place).
    package static func describe(_ descriptor: Descriptor, name: String) throws(CommandFailure) -> HeldSocket {
        let inode = GenerationProbe.inode(of: descriptor)
        if let path = Sys.unixSocketName(descriptor.rawValue), Sys.isListeningStream(descriptor.rawValue) {
            return HeldSocket(descriptor: descriptor, name: name, transport: .tcp, endpoint: .unix(path), inode: inode, backlog: nil)
        }
        let found = ActivatedSocket(describing: descriptor.rawValue, name: name)
        guard let transport = found.transport, let address = found.localAddress, transport == .udp || found.isListening else {
            throw CommandFailure("descriptor \(descriptor) (\(name)) is not a listening TCP or Unix-domain stream socket nor a bound UDP socket")
        }
        return HeldSocket(descriptor: descriptor, name: name, transport: transport, endpoint: .ip(address), inode: inode, backlog: nil)
    }

    /// The socket file of a Unix-domain socket at a path (for its removal at the end: only while the path still
    /// names this file).
    package var unixFile: UnixListener? {
        guard case .unix(let path) = endpoint, !path.hasPrefix("@") else { return nil }
        guard let copy = try? Files.duplicate(descriptor, atLeast: .standardInput) else { return nil }
        defer { Files.close(copy) }
        let file = try? UnixListener(adopting: copy.rawValue)
        _ = file?.takeDescriptor()  // it knows its path and file; the copy closes here
        return file
    }

    /// Whether the IPv6 socket `descriptor` (bound to `address`) takes IPv4 too (IPV6_V6ONLY 0); read, not taken.
    static func isDualStack(_ descriptor: Descriptor, _ address: SocketAddress?) -> Bool {
        guard let address, address.family == .ipv6 else { return false }
        let borrowed = SocketHandle(adopting: descriptor)
        defer { _ = borrowed.takeDescriptor() }  // still ours: only read
        return (try? borrowed.isDualStack()) ?? false
    }

    /// Makes the socket fit for the next generation: a TCP socket that stopped listening (a generation called
    /// `shutdown` on it, which no `listen` revives) is opened again at its address and put under the same
    /// descriptor number; a listening one gets `up`'s accept queue length back. Returns what it did, in words,
    /// or `nil` when nothing was needed.
    package mutating func refresh() -> String? {
        guard transport == .tcp else { return nil }
        guard let address else {
            // A Unix-domain socket is not opened again at its path (a program's shutdown() of it is its own doing).
            if let backlog, Sys.isListeningStream(descriptor.rawValue) { _ = Sys.listen(descriptor.rawValue, backlog) }
            return nil
        }
        let current = ActivatedSocket(describing: descriptor.rawValue, name: name)
        if current.isListening {
            if let backlog { _ = Sys.listen(descriptor.rawValue, backlog) }
            return nil
        }
        do {
            let fresh = try Listener(address: address, policy: .restartable, backlog: backlog, dualStack: Self.isDualStack(descriptor, address))
            guard let new = fresh.takeDescriptor().map(Descriptor.init(_:)) else { return "\(name) \(address) stopped listening, and no new socket could be made" }
            defer { Files.close(new) }
            do { try Files.duplicate(new, onto: descriptor) } catch {
                return "\(name) \(address) stopped listening; cannot put a new socket in its place: \(error.errno.description)"
            }
            Files.setCloseOnExec(descriptor)
            inode = GenerationProbe.inode(of: descriptor)
            return "\(name) \(address) stopped listening (a generation shut it down): opened it again for the next generation"
        } catch {
            return "\(name) \(address) stopped listening, and opening it again failed: \(error)"
        }
    }
}

extension NotifyReceiver {
    /// The receiver of a generation started by the previous `up` of this process.
    package convenience init(adopting descriptor: Descriptor, path: String) throws(CommandFailure) {
        guard Files.setCloseOnExec(descriptor) else { throw CommandFailure("notify socket \(descriptor) is gone") }
        self.init(descriptor: descriptor, path: path)
    }
}
