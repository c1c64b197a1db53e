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
            generation.nextProbe = now + (canLook ? 10_000_000 : 200_000_000)
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
        if canLook && !GenerationProbe.isWaiting(group: generation.pid, on: own.map(GenerationProbe.inode(of:)) ?? first.inode) { return false }
        // A program that says READY=1 says it before it waits for connections: read it now, so that auto uses it.
        if let notify = generation.notify { handle(messages: notify.take(), from: generation) }
        if generation.phase != .starting || configuration.readiness == .auto && generation.record.heardFrom { return false }
        guard first.transport == .tcp else { return canLook }  // UDP: waiting in recv on it is as far as one can see
        if let own {
            // With TCP_DEFER_ACCEPT (unicorn, Starlet) a connection that sends nothing is never accepted: waiting on
            // its own socket, which nothing but the probe reaches, is the proof.
            if ListenerState.defersAccept(own) { return canLook }
            // Only the probe's source port is steered to the starting generation: accepted means accepted by it.
            return GenerationProbe.connectionIsAccepted(listener: first.address, from: probeSources[index], pausing: [], timeout: 100_000_000)
        }
        let others = generations.filter { $0 !== generation && $0.record.exit == nil && ($0.phase == .ready || $0.phase == .draining) }.map(\.pid)
        return GenerationProbe.connectionIsAccepted(listener: first.address, from: nil, pausing: others, timeout: 100_000_000)
    }
}
