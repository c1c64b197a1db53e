import PortReuse
import SystemPackage
import PortReuseSystem

// Steered generations (shared/DESIGN.md, "Steered generations"): every generation gets a listening socket of
// its own for each TCP `--listen`, all of them in one SO_REUSEPORT group that `up` creates and holds, and a
// classic BPF program attached to the group picks the socket of each new connection: the serving generation's,
// or, for the connections of up's readiness probe (known by their source port), the starting one's. A reload
// replaces the program (the cutover); the old generation then gets no new connection, and gets its stop signal
// only once its queue is empty and it holds no connection. A generation's `shutdown()` touches its own socket.

/// The sockets of one SO_REUSEPORT group, as the kernel indexes them: a socket joins at the end when it starts
/// listening, and when one leaves (its last descriptor closed, or shut down) the last one moves into its slot
/// (`reuseport_detach_sock`). The BPF program returns these indices, so `up` keeps this model of the kernel's
/// array and re-attaches the program whenever it changes.
package struct ReuseportGroup: Codable, Equatable, Sendable {
    /// `up`'s descriptors of the group's sockets, in the kernel's index order (``Descriptor/invalid``: one `up` no longer holds).
    package private(set) var members: [Descriptor]

    package init(members: [Descriptor]) { self.members = members }

    package mutating func join(_ descriptor: Descriptor) { members.append(descriptor) }

    package mutating func leave(_ descriptor: Descriptor) {
        guard let index = members.firstIndex(of: descriptor) else { return }
        members[index] = members[members.count - 1]
        members.removeLast()
    }

    /// A member closed by `up` that stays in the kernel's group (another process, systemd, holds it): its slot
    /// keeps its place, under a descriptor that names nothing (``Descriptor/invalid``).
    package mutating func forget(_ descriptor: Descriptor) {
        guard let index = members.firstIndex(of: descriptor) else { return }
        members[index] = .invalid
    }

    package func index(of descriptor: Descriptor) -> UInt32? { members.firstIndex(of: descriptor).map { UInt32($0) } }
}

/// The classic BPF programs `up` attaches to a group (`SO_ATTACH_REUSEPORT_CBPF`), as data.
package enum SteeringProgram {
    package typealias Instruction = ReuseportPrograms.Instruction

    /// Where the network header starts, for loads relative to it (`SKF_NET_OFF`, -0x100000).
    static let networkOffset = UInt32(bitPattern: -0x100000)

    /// Every connection to a socket of `serving` (one per worker: picked by a hash of the client's source port,
    /// so that all of one connection's packets agree); with a `probe`, connections whose TCP source port is one of
    /// `probe.ports` to the socket at `probe.index`. The source port is found after the IP header: its length from
    /// the IPv4 header (IHL), 40 bytes for IPv6 (no extension headers are followed: a connection with one is not
    /// a probe of up's, which never sends any, and goes to the serving socket).
    package static func instructions(serving: [UInt32], probe: (ports: [UInt16], index: UInt32)?) -> [Instruction] {
        precondition(!serving.isEmpty && serving.count <= 255, "1 to 255 serving sockets")
        // A jump reaches 255 instructions ahead at most: past the rest of the ports and the serving part.
        let ports = probe.map { Array($0.ports.prefix(250 - 2 * serving.count)) } ?? []
        guard !ports.isEmpty || serving.count > 1 else { return [statement(0x06, serving[0])] }  // ret #serving
        var program = [
            statement(0x30, networkOffset),  // ldb [net + 0]: version and IHL
            statement(0x74, 4),  // rsh #4: the version
            jump(0x15, 6, whenTrue: 2, whenFalse: 0),  // jeq #6: IPv6 at 5, IPv4 at 3
            statement(0xb1, networkOffset),  // ldxb 4*([net + 0] & 0xf): X = the IPv4 header's length
            statement(0x05, 1),  // ja 6
            statement(0x01, 40),  // ldx #40: the IPv6 header's length
            statement(0x48, networkOffset),  // ldh [x + net]: the source port (TCP and UDP alike)
        ]
        let chain = program.count
        program += ports.map { jump(0x15, UInt32($0), whenTrue: 0, whenFalse: 0) }  // jeq #port: to "ret #probe" (below)
        if serving.count > 1 {
            // A = (port × 2654435761 mod 2³²) >> 16, mod the count (Knuth's multiplicative hash: connect() hands out
            // source ports of one parity, which a plain modulo would send to every other worker only).
            program += [statement(0x24, 2_654_435_761), statement(0x74, 16), statement(0x94, UInt32(serving.count))]
            // jeq #i: to "ret #serving[i]"; the last one falls through to its own ret.
            let count = serving.count
            program += (0..<(count - 1)).map { jump(0x15, UInt32($0), whenTrue: UInt8(count - 1), whenFalse: 0) }
            program.append(statement(0x06, serving[count - 1]))
            program += serving.dropLast().map { statement(0x06, $0) }
        } else {
            program.append(statement(0x06, serving[0]))  // ret #serving
        }
        if let probe, !ports.isEmpty {
            program.append(statement(0x06, probe.index))  // ret #probe
            for offset in ports.indices { program[chain + offset].jt = UInt8(program.count - 1 - (chain + offset) - 1) }
        }
        return program
    }

    private static func statement(_ code: UInt16, _ k: UInt32) -> Instruction { Instruction(code: code, jt: 0, jf: 0, k: k) }
    private static func jump(_ code: UInt16, _ k: UInt32, whenTrue: UInt8, whenFalse: UInt8) -> Instruction {
        Instruction(code: code, jt: whenTrue, jf: whenFalse, k: k)
    }

    /// Attaches `program` to the group of the socket `descriptor`; 0, or the errno.
    package static func attach(_ program: [Instruction], to descriptor: Descriptor) -> Int32 { ReuseportPrograms.attachClassic(program, to: descriptor) }
}

/// A listening socket's own view of itself, read through `up`'s descriptor (TCP_INFO).
package enum ListenerState {
    /// Whether the socket still listens (a `shutdown()` by any holder ends that for good).
    package static func isListening(_ descriptor: Descriptor) -> Bool { SocketReadings.tcp(descriptor)?.state == SocketReadings.listening }

    /// Connections waiting in its accept queue.
    package static func queued(_ descriptor: Descriptor) -> Int { KernelReadings.acceptQueue(of: descriptor)?.depth ?? 0 }

    /// Whether it is still a member of its SO_REUSEPORT group: a TCP listener leaves when it stops listening (a
    /// `shutdown()` does that, whoever holds it); a UDP socket stays until its last descriptor closes.
    package static func isInGroup(_ descriptor: Descriptor, _ transport: Transport) -> Bool { transport == .udp || isListening(descriptor) }

    /// What waits on it, in words, or nil: TCP connections in its accept queue; UDP datagrams in its receive
    /// queue (SO_MEMINFO's receive memory, so that an empty datagram counts too).
    package static func waiting(_ descriptor: Descriptor, _ transport: Transport) -> String? {
        switch transport {
        case .tcp:
            let count = queued(descriptor)
            return count > 0 ? "\(count) connection(s) queued" : nil
        case .udp:
            guard let memory = SocketReadings.receiveMemory(descriptor), memory > 0 else { return nil }
            return "datagrams queued (\(memory) bytes of receive memory)"
        }
    }

    /// Whether TCP_DEFER_ACCEPT is set on it (unicorn and Starlet set it): a connection is queued only once data
    /// arrives, so a probe that sends nothing is never accepted.
    package static func defersAccept(_ descriptor: Descriptor) -> Bool { SocketReadings.defersAccept(descriptor) }

    /// Whether SO_REUSEPORT is set on it: only then can siblings join its group.
    package static func reusesPort(_ descriptor: Descriptor) -> Bool { SocketReadings.reusesPort(descriptor) }
}

/// The source of up's readiness probes for one listener: a few ports, each reserved by a socket bound to it that
/// never listens (the kernel then never picks those ports for anyone else's connection). Each probe connects from
/// the next of them with SO_REUSEADDR and closes as any client does; the TIME-WAIT it leaves blocks that port to
/// the same listener for a while (on loopback the kernel reuses it after a second, `tcp_tw_reuse`), so the probes
/// take turns.
package final class ProbeSource {
    package static let portCount = 16
    package let ip: IPAddress
    package let ports: [UInt16]
    private let reservations: [Descriptor]
    private var next = 0

    /// Ports reserved on the address a probe of `listener` comes from: the listener's own IP, or the loopback
    /// address of its family for a wildcard.
    package init(for listener: SocketAddress) throws(PortReuseError) {
        ip = listener.ip.isUnspecified ? (listener.family == .ipv4 ? IPAddress.loopbackIPv4 : .loopbackIPv6) : listener.ip
        var ports: [UInt16] = []
        var reservations: [Descriptor] = []
        do {
            for _ in 0..<Self.portCount {
                let handle = try SocketHandle.bound(to: SocketAddress(ip: ip, port: 0), transport: .tcp, policy: .restartable, dualStack: false)
                ports.append(try handle.localAddress().port)
                reservations.append(Descriptor(handle.takeDescriptor()!))
            }
        } catch {
            for descriptor in reservations { Files.close(descriptor) }
            throw error
        }
        self.ports = ports
        self.reservations = reservations
    }

    deinit { for descriptor in reservations { Files.close(descriptor) } }

    /// Connects from the next free reserved port to `listener` (a wildcard as its loopback address), each
    /// attempt within `timeout`; `nil` when none connects.
    package func connect(to listener: SocketAddress, timeout: Duration) -> Connection? {
        let target = SocketAddress(ip: listener.ip.isUnspecified ? ip : listener.ip, port: listener.port)
        for _ in ports.indices {
            let port = ports[next]
            next = (next + 1) % ports.count
            do {
                return try Connection.dial(to: target, from: SocketAddress(ip: ip, port: port), policy: .restartable, timeout: timeout)
            } catch where error.errno == .addressNotAvailable {
                continue  // that port's last probe is still in TIME-WAIT
            } catch {
                return nil
            }
        }
        return nil
    }
}

/// Steering with eBPF where `up` may load it (CAP_BPF, or unprivileged BPF): the sockets of one group in a
/// `REUSEPORT_SOCKARRAY` map under keys `up` chooses, and a `SK_REUSEPORT` program that picks a socket by its key.
/// Unlike the classic program it needs no model of the kernel's array, and it is attached as
/// `BPF_SK_REUSEPORT_SELECT_OR_MIGRATE`: the connections still queued on a listener that closes or shuts down move
/// to the serving socket instead of being reset.
package struct SteeringMap: Codable, Equatable, Sendable {
    /// The map's descriptor (close-on-exec; kept open across an in-place upgrade).
    package let descriptor: Descriptor
    /// `up`'s descriptor of each socket in the map, and its key.
    package private(set) var keys: [Descriptor: UInt32] = [:]
    /// Keys this many and more are never used: more sockets than this at once fall back to the serving one.
    package static let capacity: UInt32 = 256

    /// A new map, or nil with the errno when the kernel refuses (EPERM without CAP_BPF).
    package static func make() -> (map: SteeringMap?, errno: Int32) {
        let (descriptor, code) = ReuseportPrograms.makeMap(capacity: capacity)
        return (descriptor.map(SteeringMap.init(descriptor:)), code)
    }

    private init(descriptor: Descriptor) { self.descriptor = descriptor }

    /// Puts `socket` in the map under the lowest free key; 0, or the errno.
    package mutating func add(_ socket: Descriptor) -> Int32 {
        let used = Set(keys.values)
        guard let key = (0..<Self.capacity).first(where: { !used.contains($0) }) else { return Errno.noSpace.rawValue }
        let code = ReuseportPrograms.setMapEntry(descriptor, key: key, socket: socket)
        guard code == 0 else { return code }
        keys[socket] = key
        return 0
    }

    /// Forgets `socket`'s key (the kernel drops the entry itself when the socket closes or stops listening).
    package mutating func remove(_ socket: Descriptor) { keys[socket] = nil }

    /// What the program picks: the serving sockets' keys (one per worker, picked by the connection's hash), and
    /// the probe's source ports with its socket's key.
    package struct Choice: Equatable, Sendable {
        package var serving: [UInt32]
        package var probe: (ports: [UInt16], key: UInt32)?

        package init(serving: [UInt32], probe: (ports: [UInt16], key: UInt32)? = nil) {
            self.serving = serving
            self.probe = probe
        }

        package static func == (a: Choice, b: Choice) -> Bool { a.serving == b.serving && a.probe?.ports == b.probe?.ports && a.probe?.key == b.probe?.key }
    }

    /// Loads the program for `choice` and attaches it to the group of `socket`; 0, or the errno, with the verifier's words.
    package func attach(_ choice: Choice, to socket: Descriptor) -> (errno: Int32, log: String) {
        ReuseportPrograms.attachExtended(
            to: socket, map: descriptor, serving: choice.serving, probe: choice.probe.map { Int32($0.key) } ?? -1, ports: choice.probe?.ports ?? [])
    }
}
