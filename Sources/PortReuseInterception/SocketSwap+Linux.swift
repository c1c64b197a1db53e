#if os(Linux)
import SystemPackage
import Synchronization
import PortReuse
import PortReuseSystem

/// The sockets a supervisor (`portreuse up`) holds and swaps into a program that binds their address by
/// itself: the program's descriptor is replaced by the held socket (SECCOMP_IOCTL_NOTIF_ADDFD with
/// SECCOMP_ADDFD_FLAG_SETFD) and its bind() answered with 0, so that every generation shares one accept queue.
///
/// Which bind gets which socket (``decide(requested:programFamily:programIPv6Only:transport:held:)``):
/// - same transport and port, and the same IP (an IPv4-mapped IPv6 address counts as its IPv4 address), or
///   a wildcard where a wildcard is held;
/// - an IPv4 (AF_INET) socket only ever gets an IPv4 socket: an IPv6 one would hand it IPv6 peer addresses
///   from accept() (EAFNOSUPPORT, with a log line naming the `--listen` that works);
/// - an IPv6 socket that asks for IPv4 (Java's `::ffff:127.0.0.1`, or Go's and Python's dual-stack `[::]`)
///   may get a held IPv4 socket (it then serves IPv4 clients only, said in the log); one that asks for IPv6
///   only (IPV6_V6ONLY, or a plain IPv6 address) never does (EAFNOSUPPORT);
/// - any other bind, to an address or a port not held, runs untouched.
package final class SocketSwap: Sendable {
    /// A socket the supervisor holds. The descriptor number never changes while the supervisor runs (a socket
    /// opened again is put under the same number), so the interceptor reads it as it is at each bind.
    package struct Held: Sendable, Equatable {
        package var descriptor: Descriptor
        package var name: String
        package var transport: Transport
        package var address: SocketAddress
        /// An IPv6 wildcard that takes IPv4 too (IPV6_V6ONLY 0).
        package var dualStack: Bool
        /// `up --workers`: each worker's socket for this address, by worker index (the first is ``descriptor``); a
        /// process gets its worker's (PORTREUSE_WORKER in its environment).
        package var workers: [Descriptor]

        package init(descriptor: Descriptor, name: String, transport: Transport, address: SocketAddress, dualStack: Bool, workers: [Descriptor] = []) {
            self.descriptor = descriptor
            self.name = name
            self.transport = transport
            self.address = address
            self.dualStack = dualStack
            self.workers = workers.isEmpty ? [descriptor] : workers
        }

        /// This socket as worker `index` gets it (the first worker's for an index out of range, or none).
        package func forWorker(_ index: Int?) -> Held {
            var socket = self
            if let index, workers.indices.contains(index) { socket.descriptor = workers[index] }
            return socket
        }
    }

    /// What a bind gets.
    package enum Decision: Equatable {
        /// Not an address held: the call runs untouched (`note` says why when a held socket has the same port).
        case passThrough(note: String?)
        /// The held socket at this index goes under the program's descriptor; `note` warns of what it does not serve.
        case swap(index: Int, note: String?)
        /// The bind fails with this errno, for this reason.
        case refuse(errno: Int32, reason: String)
    }

    package let held: [Held]
    /// O_NONBLOCK of each held socket's file description as the last swap set it, and for which process.
    private let modes = Mutex<[Descriptor: (nonBlocking: Bool, pid: Int32)]>([:])

    package init(held: [Held]) {
        self.held = held
    }

    /// Whether any held socket has this port (the cheap check made before anything else).
    package func holds(port: UInt16) -> Bool { held.contains { $0.address.port == port } }

    /// Whether the sockets differ by worker (`up --workers`): a bind then reads the caller's worker index.
    package var hasWorkers: Bool { held.contains { $0.workers.count > 1 } }

    /// The variable that tells a process of `up --workers` its worker's index, 0 to N − 1.
    package static let workerVariable = "PORTREUSE_WORKER"

    /// The worker index a process was started with (``workerVariable`` in /proc/PID/environ; its children inherit
    /// it), or nil. A process may rewrite its own environment: it then gets another worker's socket of its own generation.
    package static func workerIndex(of pid: Int32) -> Int? {
        guard let environment = Files.read("/proc/\(pid)/environ", limit: 1 << 20) else { return nil }
        let prefix = Array("\(workerVariable)=".utf8)
        return environment.split(separator: 0).lazy.compactMap { entry in
            entry.starts(with: prefix) ? Int(String(decoding: entry.dropFirst(prefix.count), as: UTF8.self)) : nil
        }.first
    }

    package static func decide(
        requested: SocketAddress, programFamily: AddressFamily, programIPv6Only: Bool, transport: Transport, held: [Held]
    ) -> Decision {
        let candidates = held.indices.filter { held[$0].transport == transport && held[$0].address.port == requested.port }
        guard !candidates.isEmpty else { return .passThrough(note: nil) }
        let port = requested.port
        let ip = requested.ip.unmappedIPv4 ?? requested.ip
        let wantsIPv4 = programFamily == .ipv4 || ip.family == .ipv4 || (ip.isUnspecified && !programIPv6Only)
        let heldList = candidates.map { "\(held[$0].address)" }.joined(separator: ", ")
        func normalized(_ address: SocketAddress) -> IPAddress { address.ip.unmappedIPv4 ?? address.ip }

        if ip.isUnspecified {
            let v4 = candidates.first { held[$0].address.family == .ipv4 && held[$0].address.ip.isUnspecified }
            let v6 = candidates.first { held[$0].address.family == .ipv6 && held[$0].address.ip.isUnspecified }
            if programFamily == .ipv4 {
                if let v4 { return .swap(index: v4, note: nil) }
                if v6 != nil {
                    return .refuse(errno: Errno.addressFamilyNotSupported.rawValue, reason: "the program's IPv4 socket binds 0.0.0.0:\(port) and up holds [::]:\(port), an IPv6 socket "
                        + "(its accept() would return IPv6 addresses): give up --listen 0.0.0.0:\(port)")
                }
            } else if ip.family == .ipv4 {  // ::ffff:0.0.0.0 on an IPv6 socket
                if let v4 { return .swap(index: v4, note: nil) }
                if let v6, held[v6].dualStack { return .swap(index: v6, note: nil) }
            } else {
                if let v6 {
                    let note = !programIPv6Only && !held[v6].dualStack ? "up holds [::]:\(port) IPv6-only: IPv4 clients are not served" : nil
                    return .swap(index: v6, note: note)
                }
                if let v4 {
                    if programIPv6Only {
                        return .refuse(errno: Errno.addressFamilyNotSupported.rawValue, reason: "the program binds [::]:\(port) IPv6-only and up holds 0.0.0.0:\(port), an IPv4 socket: "
                            + "give up --listen [::]:\(port)")
                    }
                    return .swap(index: v4, note: "the program's dual-stack [::]:\(port) gets up's IPv4 socket 0.0.0.0:\(port): IPv6 clients are not served")
                }
            }
            return .passThrough(note: "up holds \(heldList), not a wildcard of this family: the kernel answers")
        }
        guard let index = candidates.first(where: { normalized(held[$0].address) == ip }) else {
            return .passThrough(note: "up holds \(heldList), not \(requested): the kernel answers")
        }
        let heldFamily = held[index].address.family
        if heldFamily == programFamily { return .swap(index: index, note: nil) }
        if programFamily == .ipv6 && heldFamily == .ipv4 && wantsIPv4 { return .swap(index: index, note: nil) }
        return .refuse(errno: Errno.addressFamilyNotSupported.rawValue, reason: "the program's \(programFamily) socket binds \(requested) and up holds \(held[index].address), an "
            + "\(heldFamily) socket: give up --listen with the program's family")
    }

    /// Sets the held file description's O_NONBLOCK to the program's (`nonBlocking`, for process `pid`);
    /// returns a warning when that changes the mode another live process was given.
    package func adoptMode(of held: Held, nonBlocking: Bool, pid: Int32) -> String? {
        guard let current = Files.isNonBlocking(held.descriptor) else { return nil }
        if current != nonBlocking { Files.setNonBlocking(held.descriptor, nonBlocking) }
        let previous = modes.withLock { modes -> (nonBlocking: Bool, pid: Int32)? in
            defer { modes[held.descriptor] = (nonBlocking, pid) }
            return modes[held.descriptor]
        }
        guard current != nonBlocking, let previous, previous.pid != pid, previous.nonBlocking != nonBlocking,
            Processes.exists(previous.pid)
        else { return nil }
        func word(_ value: Bool) -> String { value ? "non-blocking" : "blocking" }
        return "\(held.name) \(held.address): the shared socket changes from \(word(current)) to \(word(nonBlocking)) (O_NONBLOCK) for pid \(pid), "
            + "while pid \(previous.pid), still running, took it \(word(previous.nonBlocking)): they share one file description"
    }
}
#endif
