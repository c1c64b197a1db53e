import Glibc
import PortReuse

/// How `up` knows that a starting generation serves (`--ready`).
extension Supervisor {
    var readinessWord: String {
        switch configuration.readiness {
        case .delay(let seconds): "delay \(Seconds(seconds))"
        default:
            configuration.reusePortEnvironment != nil ? "listening"
                : sockets.contains(where: { $0.transport == .tcp }) ? "probe: accepted a connection" : "probe: waiting in recv on the UDP socket"
        }
    }

    func isReady(_ generation: Generation, now: UInt64) -> Bool {
        switch configuration.readiness {
        case .notify: return false
        case .delay(let seconds): return now - generation.record.startedMonotonic >= UInt64(seconds * 1e9)
        case .auto where generation.record.heardFrom: return false
        case .auto, .probe:
            guard now >= generation.nextProbe else { return false }
            // A steered generation's probe is one sock_diag request a turn (the loop's turns pace it); the look at /proc costs more.
            generation.nextProbe = now + (!steeredSockets(of: generation).isEmpty ? 0 : canLook ? 10_000_000 : 200_000_000)
            return probe(generation)
        }
    }

    private func probe(_ generation: Generation) -> Bool {
        if configuration.reusePortEnvironment != nil {
            let group = Set(GenerationProbe.processes(inGroup: generation.pid))
            return configuration.reusePortListens.allSatisfy { spec in
                PortHolder.find(port: spec.address.port, transport: spec.transport, options: false).contains { holder in
                    (spec.transport == .udp || holder.state == .listen) && holder.processes.contains { group.contains($0.pid) }
                }
            }
        }
        guard let index = sockets.firstIndex(where: { $0.transport == .tcp }) ?? sockets.indices.first else { return true }
        let first = sockets[index]
        // Its own socket where generations are steered, else the one they all share.
        let own = steeredSockets(of: generation).first { $0.index == index }?.descriptor
        // A probe already made is followed to its end even if the program set TCP_DEFER_ACCEPT since: a server
        // that accepted it waits for its request, and is freed only when the probe closes.
        if let own, generation.probe != nil || !ListenerState.defersAccept(own) { return probe(generation, ownSocket: own, index: index) }
        if canLook && !GenerationProbe.isWaiting(group: generation.pid, on: own.map(GenerationProbe.inode(of:)) ?? first.inode) { return false }
        // A program that says READY=1 says it before it waits for connections: read it now, so that auto uses it.
        if let notify = generation.notify { handle(messages: notify.take(), from: generation) }
        if generation.phase != .starting || configuration.readiness == .auto && generation.record.heardFrom { return false }
        guard first.transport == .tcp else { return canLook }  // UDP: waiting in recv on it is as far as one can see
        if let own {
            // With TCP_DEFER_ACCEPT (unicorn, Starlet) a connection that sends nothing is never accepted: waiting on
            // its own socket, which nothing but the probe reaches, is the proof.
            if ListenerState.defersAccept(own) {
                generation.readyNote = "waits on its own socket, which defers accept (TCP_DEFER_ACCEPT): no probe without data is accepted"
                return canLook
            }
        }
        let others = generations.filter { $0 !== generation && $0.record.exit == nil && ($0.phase == .ready || $0.phase == .draining) }.map(\.pid)
        return GenerationProbe.connectionIsAccepted(listener: first.address, pausing: others, timeout: 100_000_000)
    }

    /// The probe of a steered generation: one connection from up's probe ports, which the program steers to the
    /// generation's own socket and nowhere else, made once and kept until a process accepts it: the kernel's
    /// socket for its server side then has an inode (one sock_diag request for that socket a turn; no look at
    /// /proc, no pause of any other generation, and whatever other traffic the socket gets does not matter).
    private func probe(_ generation: Generation, ownSocket own: Int32, index: Int) -> Bool {
        if let notify = generation.notify { handle(messages: notify.take(), from: generation) }
        if generation.phase != .starting || configuration.readiness == .auto && generation.record.heardFrom { return false }
        guard ListenerState.isListening(own) else { return false }  // checkSteeredSockets fails it
        if generation.probe == nil {
            // Without probe ports, waiting on its own socket is as far as one can see.
            guard let source = probeSource(for: index) else { return canLook && GenerationProbe.isWaiting(group: generation.pid, on: GenerationProbe.inode(of: own)) }
            guard let connection = source.connect(to: sockets[index].address, timeout: .milliseconds(100)) else { return false }
            generation.probe = connection
        }
        guard let connection = generation.probe,
            let serverSide = PortHolder.tcpSocket(local: connection.remoteAddress, remote: connection.localAddress), serverSide.inode != 0
        else { return false }
        closeProbe(of: generation)
        return true
    }

    /// Closes a steered generation's probe connection: a server that accepted it and waits for its request (a
    /// single-threaded one, or unicorn's worker) then reads its end and moves on. Done as soon as the generation
    /// leaves `starting`, whatever made it ready (READY=1 may come before the probe is accepted).
    func closeProbe(of generation: Generation) {
        generation.probe?.close()
        generation.probe = nil
    }
}
