import PortReuse

/// `--health`: what each turn of the loop tells the health listener (HealthBoard).
extension Supervisor {
    func publishHealth() {
        guard let health else { return }
        var snapshot = HealthSnapshot()
        snapshot.lastTurn = Processes.monotonicNanoseconds
        snapshot.state = state
        snapshot.generations = generations.map { generation in
            HealthSnapshot.GenerationView(
                number: generation.number, phase: generation.phase, pids: [generation.pid] + generation.record.members.map(\.pid))
        }
        snapshot.counters = counters
        snapshot.listeners = HealthListener.of(sockets)
        health.publish(snapshot)
    }
}
