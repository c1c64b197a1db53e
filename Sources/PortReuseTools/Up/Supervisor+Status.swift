import PortReuse
import PortReuseSystem

/// What others read of the supervisor's record: the status file (`--pid-file PATH` → PATH.status) that `up status`
/// and `up reload` read, and what `--health` answers (HealthBoard), published at every turn of the loop.
extension Supervisor {
    package var status: UpStatus {
        var status = UpStatus(
            pid: Processes.currentID, processStartTime: ownStartTime, command: configuration.command, startedAt: startedWall,
            sockets: sockets.map { socket in
                switch socket.endpoint {
                case .ip(let address): UpStatus.Socket(name: socket.name, address: "\(address)", transport: socket.transport.rawValue)
                case .unix(let path): UpStatus.Socket(name: socket.name, address: path, transport: "unix")
                }
            },
            record: record, writtenAt: Processes.wallClockSeconds)
        status.knownServer = configuration.serverNote
        status.upgrading = upgradingTo
        return status
    }

    func writeStatus() {
        written = record
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

    func publishHealth() {
        health?.publish(HealthSnapshot(record: record, listeners: HealthListener.of(sockets), lastTurn: clock()))
    }
}
