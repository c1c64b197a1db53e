import Glibc
import PortReuse

/// The status file (`--pid-file PATH` → PATH.status) that `up status` and `up reload` read.
extension Supervisor {
    package var status: UpStatus {
        UpStatus(
            pid: getpid(), processStartTime: ownStartTime, command: configuration.command, startedAt: startedWall,
            sockets: sockets.map { UpStatus.Socket(name: $0.name, address: $0.address.description, transport: $0.transport.rawValue) },
            generations: generations.map(\.record), state: state, reloadQueued: reloadQueued, reloads: history,
            upgrades: upgrades, upgradeFailures: upgradeFailures, nextGeneration: nextNumber, writtenAt: Processes.wallClockSeconds)
    }

    func writeStatus() {
        statusChanged = false
        guard let path = configuration.statusPath else { return }
        do {
            try status.write(to: path)
        } catch {
            if !statusWriteFailed { logger.error("cannot write the status file \(path): \(error)") }
            statusWriteFailed = true
            return
        }
        statusWriteFailed = false
    }
}
