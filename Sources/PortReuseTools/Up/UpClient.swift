import PortReuse
import FoundationEssentials
import PortReuseSystem

/// The `--reload`, `--status` and `--upgrade` side of `portreuse up`: talks to a running `up` through its
/// pid file (signals) and its status file (what happened).
package struct UpClient {
    package let pidFile: String
    /// How long to wait for a reload to finish.
    package let timeout: Double

    package init(pidFile: String, timeout: Double) {
        self.pidFile = pidFile
        self.timeout = timeout
    }

    package static func readPID(_ path: String) -> Int32? {
        guard let bytes = Files.read(path, limit: 64) else { return nil }
        return Int32(String(decoding: bytes, as: UTF8.self).split(separator: "\n").first?.trimmingBlanks() ?? "")
    }

    /// What to ask of the running `up`.
    package enum Request: Sendable { case reload, reloadJSON, upgrade, status, statusJSON }

    package func run(_ request: Request) throws(CommandFailure) {
        let statusPath = UpStatus.path(forPIDFile: pidFile)
        // Whoever could write these files could make this client signal another service's up: only files of this
        // user or root, in a folder nobody else may write to (or a sticky one), are believed.
        for path in [pidFile, statusPath] {
            if let reason = Self.untrustedReason(path) {
                throw CommandFailure("\(path) \(reason): not believed, nothing signalled (give the --pid-file the running up writes)")
            }
        }
        guard let pid = Self.readPID(pidFile) else {
            throw CommandFailure("cannot read a pid from \(pidFile): is portreuse up running with --pid-file \(pidFile)?")
        }
        guard Processes.exists(pid) else {
            throw CommandFailure("\(pidFile) names pid \(pid), which is not running (a stale pid file: portreuse up is not running)")
        }
        guard let before = UpStatus.read(from: statusPath) else { throw CommandFailure("cannot read \(statusPath), which the running up writes") }
        guard before.pid == pid else {
            throw CommandFailure("\(pidFile) names pid \(pid) but \(statusPath) was written by pid \(before.pid): not signalled")
        }
        switch request {
        case .statusJSON: print(String(decoding: Files.read(statusPath, limit: 1 << 22) ?? [], as: UTF8.self), terminator: "")
        case .status: print(Self.describe(before))
        case .reload, .reloadJSON, .upgrade:
            let up = try UpIdentity.prove(pid, startTime: before.processStartTime, pidFile: pidFile)
            defer { up.close() }
            if request == .upgrade { try upgrade(up, before: before, statusPath: statusPath) }
            else { try reload(up, before: before, statusPath: statusPath, json: request == .reloadJSON) }
        }
    }

    private func reload(_ up: UpIdentity, before: UpStatus, statusPath: String, json: Bool) throws(CommandFailure) {
        let pid = up.pid
        guard !before.stopping else { throw CommandFailure("portreuse up (pid \(pid)) is stopping: it takes no reload") }
        try up.signal(Signal.hangUp)
        let outcome = try wait(statusPath, pid: pid) { $0.outcome(ofReloadAskedAt: before) }
        if json {
            // The record of exactly this reload, as the status file keeps it; the exit status says its result too.
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
            if let data = try? encoder.encode(outcome) { print(String(decoding: data, as: UTF8.self)) }
            if outcome.result == .ready { return }
        }
        let generation = "generation \(outcome.generation)"
        switch outcome.result {
        case .ready:
            let drops = (outcome.listenOverflows ?? 0) + (outcome.listenDrops ?? 0)
            print("reloaded: \(generation) ready in \(Self.seconds(outcome.seconds))"
                + (outcome.workers.map { " (\($0.total) workers)" } ?? "")
                + (outcome.peakAcceptQueue.map { "; accept queue at most \($0)" } ?? "")
                + (outcome.listenOverflows == nil ? "" : drops == 0 ? ", no listen overflow or drop in this network namespace" : ", \(drops) listen overflows or drops in this network namespace")
                + (outcome.connectionsOnOlderGenerations.map { $0 > 0 ? "; \($0) connection(s) still on older generations" : "" } ?? ""))
        case .failed:
            throw CommandFailure("reload failed: \(generation) \(outcome.reason ?? "failed"); the previous generation keeps serving")
        }
    }

    private func upgrade(_ up: UpIdentity, before: UpStatus, statusPath: String) throws(CommandFailure) {
        let pid = up.pid
        try up.signal(Signal.user2)
        let after: UpStatus = try wait(statusPath, pid: pid) { status in
            status.upgrades > before.upgrades || status.upgradeFailures > before.upgradeFailures ? status : nil
        }
        guard after.upgrades > before.upgrades else {
            throw CommandFailure("upgrade failed: the new binary did not start (see up's log); the running up carries on")
        }
        print("upgraded: portreuse up (pid \(pid)) runs the new binary; \(after.generations.count) generation(s) kept")
    }

    /// Reads the status file every 20 ms until `done` gives a value, at most `timeout` (the client's own: up
    /// goes on with what it was asked); fails at once when `up` stops or exits meanwhile.
    private func wait<T>(_ path: String, pid: Int32, until done: (UpStatus) -> T?) throws(CommandFailure) -> T {
        let deadline = Processes.monotonicNanoseconds + UInt64(timeout * 1e9)
        while Processes.monotonicNanoseconds < deadline {
            if let status = UpStatus.read(from: path) {
                if let value = done(status) { return value }
                if status.stopping { throw CommandFailure("portreuse up (pid \(pid)) is stopping: the request will not complete") }
            }
            guard Processes.exists(pid) else { throw CommandFailure("portreuse up (pid \(pid)) exited before it answered (see its log)") }
            Processes.sleep(microseconds: 20_000)
        }
        throw CommandFailure("no outcome within \(Seconds(timeout)): portreuse up (pid \(pid)) goes on with it; `portreuse up status` shows how it ends",
                             exitCode: 124)
    }

    /// Why a pid or status file may have been written by someone other than this user's (or root's) `up`, or
    /// `nil`: it must be a regular file (not a symbolic link), belong to this user or root, and sit in a folder
    /// ``Files/unsafeFolderReason(_:)`` accepts. A missing file is left to the reads that follow.
    package static func untrustedReason(_ path: String) -> String? {
        guard let info = Files.status(of: path, following: false) else { return nil }
        if info.kind != .regular { return "is not a regular file (a symbolic link, or another kind)" }
        if info.owner != Processes.effectiveUserID && info.owner != 0 { return "belongs to uid \(info.owner), not to you (uid \(Processes.effectiveUserID)) or root" }
        if let folder = Files.unsafeFolderReason(Files.parent(of: path)) { return "sits in a folder where \(folder)" }
        return nil
    }

    package static func seconds(_ value: Double) -> String {
        value < 10 ? "\(Int((value * 1000).rounded())) ms" : "\(Int(value.rounded())) s"
    }

    package static func age(_ value: Double) -> String {
        switch value {
        case ..<120: "\(Int(value)) s"
        case ..<7200: "\(Int(value / 60)) min"
        default: "\(Int(value / 3600)) h \(Int(value.truncatingRemainder(dividingBy: 3600) / 60)) min"
        }
    }

    /// The human form of `--status`.
    package static func describe(_ status: UpStatus) -> String {
        let now = Processes.wallClockSeconds
        var lines = ["portreuse up (pid \(status.pid)), running \(age(now - status.startedAt)): \(status.command.joined(separator: " "))"]
        if let known = status.knownServer { lines.append(known) }
        if status.stopping { lines.append("stopping") }
        let sockets = status.sockets.enumerated().map { ListenSpec.label(name: $1.name, "\($1.transport):\($1.address)") + " (fd \(3 + $0))" }
        lines.append("sockets: " + (sockets.isEmpty ? "none (--reuseport)" : sockets.joined(separator: ", ")))
        let rows = [["generation", "pid", "state", "age", "ready after", "status"]] + status.generations.map { generation in
            [String(generation.number), String(generation.pid), generation.phase.rawValue, age(max(0, now - generation.startedAt)),
             generation.readySeconds.map(seconds) ?? "-", generation.status ?? ""]
        }
        let widths = (0..<6).map { column in rows.map { $0[column].count }.max() ?? 0 }
        for row in rows {
            lines.append(String(Substring(zip(row, widths).map { $0.padding($1) }.joined(separator: "  ")).trimmingBlanks()))
        }
        let draining = status.generations.filter { $0.phase == .draining }.count
        if draining > 0 { lines.append("\(draining) generation(s) draining") }
        if status.reloadPending { lines.append("a reload is pending (requested while a generation was starting)") }
        if let binary = status.upgrading { lines.append("upgrading in place to \(binary)") }
        if let adopted = status.adopted { lines.append("\(adopted.label): " + (adopted.stage == nil ? "serves" : "drains, a generation took over")) }
        let failed = status.reloads.filter { $0.result == .failed }.count
        if let last = status.reloads.last {
            lines.append("reloads: \(status.reloads.count) recorded, \(failed) failed; last: generation \(last.generation) \(last.result.rawValue) after \(seconds(last.seconds))")
        } else {
            lines.append("reloads: none yet")
        }
        if status.upgrades + status.upgradeFailures > 0 { lines.append("upgrades in place: \(status.upgrades), failed: \(status.upgradeFailures)") }
        return lines.joined(separator: "\n")
    }
}
