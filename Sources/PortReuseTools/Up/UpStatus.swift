import FoundationEssentials
import PortReuse
import PortReuseSystem

/// What `portreuse up status` shows: written by the running `up` next to its pid file (PATH.status) whenever
/// something in it changes. Ages are not stored: the reader computes them from `startedAt` and its own clock.
package struct UpStatus: Codable {
    package struct Socket: Codable {
        package var name: String
        package var address: String
        package var transport: String
    }

    package var schema = "portreuse.up/1"
    package var pid: Int32
    /// `up`'s start time in clock ticks since boot (/proc/PID/stat): with the pid, it proves which process
    /// wrote this file before a client signals it (``UpIdentity``).
    package var processStartTime: UInt64?
    package var command: [String]
    /// What up knows of the server and picked for it (``UpDefaults/note``), or `nil` for a server it does not know.
    package var knownServer: String?
    package var startedAt: Double
    package var sockets: [Socket]
    package var generations: [GenerationRecord]
    package var state: SupervisorState
    package var stopping: Bool
    package var reloadPending: Bool
    package var reloads: [ReloadRecord]
    package var upgrades: Int
    package var upgradeFailures: Int
    /// The binary an in-place upgrade (SIGUSR2, `up upgrade`) is checking or becoming, while it does; absent otherwise.
    package var upgrading: String?
    /// The server taken over with `--adopt`, while `up` still knows it (it serves, or drains after the first
    /// generation took over); absent otherwise.
    package var adopted: AdoptedRecord?
    /// The number the next generation will get: a reload asked now starts this one or a later one.
    package var nextGeneration: Int
    /// When `up` wrote this (wall clock).
    package var writtenAt: Double

    /// The status of a supervisor whose record is `record`.
    package init(
        pid: Int32, processStartTime: UInt64?, command: [String], startedAt: Double, sockets: [Socket], record: SupervisorRecord, writtenAt: Double
    ) {
        self.pid = pid
        self.processStartTime = processStartTime
        self.command = command
        self.startedAt = startedAt
        self.sockets = sockets
        self.generations = record.generations
        self.state = record.state
        self.stopping = record.state.isStopping
        self.reloadPending = record.reloadQueued
        self.reloads = record.history
        self.upgrades = record.upgrades
        self.upgradeFailures = record.upgradeFailures
        self.adopted = record.adopted
        self.nextGeneration = record.nextNumber
        self.writtenAt = writtenAt
    }

    /// The outcome of the reload asked for while `before` was current, once it is known: the record of the
    /// first reload whose generation started after `before` was written, when no generation starts and no
    /// reload waits. A failure of an earlier reload is never taken for it.
    package func outcome(ofReloadAskedAt before: UpStatus) -> ReloadRecord? {
        guard !reloadPending, !generations.contains(where: { $0.phase == .starting }) else { return nil }
        return reloads.first { $0.generation >= before.nextGeneration }
    }

    package static func path(forPIDFile pidFile: String) -> String { pidFile + ".status" }

    /// Writes the file whole or not at all, never through a symbolic link (``Files/replace(_:with:mode:)``).
    package func write(to path: String) throws(SystemError) {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        guard let data = try? encoder.encode(self) else { return }
        try Files.replace(path, with: Array(data) + [10])
    }

    package static func read(from path: String) -> UpStatus? {
        guard let bytes = Files.read(path, limit: 1 << 22) else { return nil }
        return try? JSONDecoder().decode(UpStatus.self, from: Data(bytes))
    }
}
