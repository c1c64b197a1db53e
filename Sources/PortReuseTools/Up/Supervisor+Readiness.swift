import PortReuse
import PortReuseSystem

/// How `up` sees that a starting generation serves (`--ready auto` and `probe`): ``UpMachine/Action/lookForReadiness(_:)``.
extension Supervisor {
    /// How readiness is seen, in words, for the log.
    static func readinessWord(_ configuration: Configuration, sockets: [HeldSocket]) -> String {
        switch configuration.readiness {
        case .delay(let seconds): "delay \(Seconds(seconds))"
        default:
            configuration.reusePortEnvironment != nil ? "listening"
                : sockets.contains(where: { $0.transport == .tcp && $0.address != nil }) ? "probe: accepted a connection"
                : sockets.contains(where: { $0.address == nil }) ? "probe: waiting in accept on the Unix-domain socket" : "probe: waiting in recv on the UDP socket"
        }
    }

    /// Looks whether generation `number` serves (paced: a steered generation's probe is one sock_diag request a
    /// turn; the look at /proc costs more). A program that says READY=1 says it before it waits for connections:
    /// its messages are read first, so that `auto` uses them.
    func lookForReadiness(_ number: Int) -> [UpMachine.Event] {
        guard let held = resources[number], let generation = generation(number) else { return [] }
        let now = clock()
        guard now >= held.nextProbe else { return [] }
        held.nextProbe = now + (!steeredSockets(of: generation).isEmpty ? 0 : canLook ? 10_000_000 : 200_000_000)
        readMessages(of: number, exited: false)
        guard let still = self.generation(number), still.phase == .starting, !(configuration.readiness == .auto && still.heardFrom) else { return [] }
        return probe(still).map { [.probed(number: number, how: $0)] } ?? []
    }

    /// Whether the generation serves: nil if not yet, else how it was seen (nil inside: the usual words).
    private func probe(_ generation: GenerationRecord) -> String?? {
        if configuration.reusePortEnvironment != nil {
            let group = Set(GenerationProbe.processes(inGroup: generation.pid))
            let listening = configuration.reusePortListens.allSatisfy { spec in
                PortHolder.find(port: spec.address?.port ?? 0, transport: spec.transport, options: false).contains { holder in
                    (spec.transport == .udp || holder.state == .listen) && holder.processes.contains { group.contains($0.pid) }
                }
            }
            return listening ? .some(nil) : nil
        }
        // An IP TCP socket is probed with a connection; else waiting on the socket is as far as one can see.
        guard let index = sockets.firstIndex(where: { $0.transport == .tcp && $0.address != nil }) ?? sockets.indices.first else { return .some(nil) }
        let first = sockets[index]
        // Its own socket where generations are steered, else the one they all share.
        let own = steeredSockets(of: generation).first { $0.index == index }?.descriptor
        if let own, first.transport == .udp {
            // UDP: waiting in recv on its own socket is as far as one can see.
            return canLook && GenerationProbe.isWaiting(group: generation.pid, on: GenerationProbe.inode(of: own)) ? .some(nil) : nil
        }
        if let own {
            // A probe already made is followed to its end even if the program set TCP_DEFER_ACCEPT since: a server
            // that accepted it waits for its request, and is freed only when the probe closes.
            if resources[generation.number]?.probe != nil || !ListenerState.defersAccept(own) {
                return probe(generation, ownSocket: own, index: index) ? .some(nil) : nil
            }
            // With TCP_DEFER_ACCEPT (unicorn, Starlet) a connection that sends nothing is never accepted: waiting on
            // its own socket, which nothing but the probe reaches, is the proof.
            guard canLook, GenerationProbe.isWaiting(group: generation.pid, on: GenerationProbe.inode(of: own)) else { return nil }
            return "waits on its own socket, which defers accept (TCP_DEFER_ACCEPT): no probe without data is accepted"
        }
        if canLook && !GenerationProbe.isWaiting(group: generation.pid, on: first.inode) { return nil }
        // UDP, Unix-domain: waiting on it is as far as one can see.
        guard first.transport == .tcp, let address = first.address else { return canLook ? .some(nil) : nil }
        let others = generations.filter { $0.number != generation.number && $0.exit == nil && ($0.phase == .ready || $0.phase == .draining) }.map(\.pid)
        return GenerationProbe.connectionIsAccepted(listener: address, pausing: others, timeout: 100_000_000) ? .some(nil) : nil
    }

    /// The probe of a steered generation: one connection from up's probe ports, which the program steers to the
    /// generation's own socket and nowhere else, made once and kept until a process accepts it: the kernel's
    /// socket for its server side then has an inode (one sock_diag request for that socket a turn; no look at
    /// /proc, no pause of any other generation, and whatever other traffic the socket gets does not matter).
    private func probe(_ generation: GenerationRecord, ownSocket own: Descriptor, index: Int) -> Bool {
        guard ListenerState.isListening(own), let held = resources[generation.number] else { return false }  // lookAtSteeredSockets fails it
        if held.probe == nil {
            // Without probe ports, waiting on its own socket is as far as one can see.
            guard let source = probeSource(for: index) else { return canLook && GenerationProbe.isWaiting(group: generation.pid, on: GenerationProbe.inode(of: own)) }
            guard let address = sockets[index].address, let connection = source.connect(to: address, timeout: .milliseconds(100)) else { return false }
            held.probe = connection
        }
        guard let connection = held.probe,
            let serverSide = PortHolder.tcpSocket(local: connection.remoteAddress, remote: connection.localAddress), serverSide.inode != 0
        else { return false }
        closeProbe(of: generation.number)
        return true
    }

    /// Closes a steered generation's probe connection: a server that accepted it and waits for its request (a
    /// single-threaded one, or unicorn's worker) then reads its end and moves on. Done as soon as the generation
    /// leaves `starting`, whatever made it ready (READY=1 may come before the probe is accepted).
    func closeProbe(of number: Int) {
        resources[number]?.probe?.close()
        resources[number]?.probe = nil
    }
}
