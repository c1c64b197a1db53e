import Glibc
import PortReuse

/// Upgrading `up` itself in place (SIGUSR2, `up upgrade`): same pid, same sockets, same generations.
extension Supervisor {
    /// Replaces this process's program with the (possibly new) `portreuse` binary, keeping the pid, the
    /// sockets and the generations: checks first that the binary runs, then hands its state over in a file.
    func upgrade() {
        guard !state.isStopping else { return logger.info("upgrade ignored: stopping") }
        let binary = UpgradeHandover.executablePath
        logger.info("upgrading: checking \(binary)")
        guard let version = UpgradeHandover.check(binary: binary) else {
            logger.error("upgrade failed: \(binary) --version did not succeed within 5 s; this process keeps running")
            upgradeFailures += 1
            statusChanged = true
            return
        }
        do throws(CommandFailure) {
            logger.info("upgrading to \(version) with \(generations.count) generation(s) and \(sockets.count) socket(s) kept")
            try handover(upgrades: upgrades + 1).execute(binary: binary, arguments: configuration.arguments)
        } catch {
            logger.error("upgrade failed: \(error.message); this process keeps running")
            upgradeFailures += 1
            statusChanged = true
        }
    }

    /// Everything the next `up` of this process needs to carry on exactly where this one is.
    package func handover(upgrades: Int) -> UpgradeHandover {
        var records = generations.map(\.record)
        for index in records.indices { records[index].notifyDescriptor = generations[index].notify?.descriptor }
        return UpgradeHandover(
            sockets: sockets.map { .init(descriptor: $0.descriptor, name: $0.name) }, generations: records, state: state,
            nextNumber: nextNumber, reloadQueued: reloadQueued, failures: failures, history: history,
            upgrades: upgrades, upgradeFailures: upgradeFailures, startedWall: startedWall, runtimeFolder: runtimeFolder)
    }

    /// Takes the generations and the state over from the previous `up` of this process.
    package func adopt(_ handover: UpgradeHandover) {
        enter(handover.state)
        nextNumber = handover.nextNumber
        reloadQueued = handover.reloadQueued
        failures = handover.failures
        history = handover.history
        upgrades = handover.upgrades
        upgradeFailures = handover.upgradeFailures
        generations = handover.generations.map { record in
            let notify = record.notifyDescriptor.flatMap { try? NotifyReceiver(adopting: $0, path: record.notifyPath ?? "") }
            return Generation(record: record, notify: notify)
        }
        logger.info("upgraded: \(UpgradeHandover.executablePath) runs with \(generations.count) generation(s) and \(sockets.count) socket(s)")
        if case .backingOff(let until) = state {
            let now = Processes.monotonicNanoseconds
            logger.info("restarting the program in \(Seconds(until > now ? Double(until - now) / 1e9 : 0)), as planned before the upgrade")
        }
        if let serving = generations.first(where: { $0.phase == .ready }) {
            _ = try? Readiness.notify(.ready, .status(statusLine(serving: serving, draining: generations.filter { $0.phase == .draining }.count)))
        }
    }
}
