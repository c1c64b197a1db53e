import PortReuse
import Synchronization
import PortReuseSystem

/// Set by SIGINT, SIGTERM and SIGHUP while the demo runs; every wait of the demo looks at it.
private let interruptRequested = Atomic<Int32>(0)

private func requestInterrupt(_ signal: Int32) { interruptRequested.store(signal, ordering: .relaxed) }

/// Ctrl-C (or SIGTERM, SIGHUP): the demo stops what it started and exits 130.
package struct DemoInterrupted: Error {
    package var signal: Int32
}

/// The processes and files the demo starts and creates, and the guarantee that they all go: every process
/// is started in a process group of its own (so that Ctrl-C on the terminal reaches only the demo, which
/// then stops them in order), and `stopAll()` stops and reaps each one with bounded waits.
package final class DemoProcesses {
    /// The demo's private folder (logs, pid file, notify socket), removed at the end.
    package let folder: String
    /// Where the workers and `up` write their stdout and stderr.
    package let logPath: String
    package let executable: String
    package let notify: NotifyReceiver
    private let log: Descriptor
    private let environment: [String]
    /// Started and not yet reaped: pid and what it is.
    private(set) var running: [(pid: Int32, what: String)] = []
    /// Process groups to kill if their parent (`up`) had to be killed.
    package var orphanGroups: Set<Int32> = []
    private var stopped = false

    package init() throws(CommandFailure) {
        executable = try CommandFailure.executable()
        let base = Environment.value("TMPDIR") ?? "/tmp"
        do { folder = try Files.makeTemporaryFolder(in: base, prefix: "portreuse-demo.") } catch {
            throw CommandFailure("cannot create a folder in \(base): \(error.errno.description)")
        }
        logPath = folder + "/processes.log"
        do { log = try Files.open(logPath, .appending, permissions: 0o644) } catch {
            throw CommandFailure("cannot create \(logPath): \(error.errno.description)")
        }
        notify = try NotifyReceiver.make(path: folder + "/notify.sock")
        // The children get our environment without anything that would make them someone else's service.
        let dropped = ["NOTIFY_SOCKET", "LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", UpgradeHandover.variable]
        environment = ProcessSpawn.currentEnvironment().filter { entry in !dropped.contains { entry.hasPrefix($0 + "=") } }
        Signals.handle([Signal.interrupt, Signal.terminate, Signal.hangUp], restart: true, with: requestInterrupt)
        Signals.setBlocked([Signal.interrupt, Signal.terminate, Signal.hangUp], false)  // a parent (a test runner's thread) may have blocked them
        Signals.ignore(Signal.pipe)
    }

    /// Throws ``DemoInterrupted`` once Ctrl-C (SIGINT), SIGTERM or SIGHUP arrived.
    package static func checkInterrupted() throws(DemoInterrupted) {
        let signal = interruptRequested.load(ordering: .relaxed)
        if signal != 0 { throw DemoInterrupted(signal: signal) }
    }

    /// Sleeps `seconds`, waking every 20 ms to look for Ctrl-C.
    package static func pause(_ seconds: Double) throws(DemoInterrupted) {
        let deadline = Processes.monotonicNanoseconds + UInt64(max(0, seconds) * 1e9)
        while Processes.monotonicNanoseconds < deadline {
            try checkInterrupted()
            Processes.sleep(microseconds: UInt32(min(20_000, (deadline - min(deadline, Processes.monotonicNanoseconds)) / 1000 + 1)))
        }
        try checkInterrupted()
    }

    /// Starts this executable with `arguments` (in a process group of its own, stdout and stderr to the
    /// log); with `notifying`, NOTIFY_SOCKET names the demo's receiver.
    package func start(_ arguments: [String], what: String, notifying: Bool) throws(CommandFailure) -> Int32 {
        let environment = environment + (notifying ? ["NOTIFY_SOCKET=\(notify.path)"] : [])
        let pid = try Spawner.spawn([executable] + arguments, environment: environment, descriptors: [], setListenPID: false, output: log)
        running.append((pid, what))
        return pid
    }

    /// The exit status of `pid` if it has exited (and reaps it), else `nil`.
    package func exited(_ pid: Int32) -> ExitStatus? {
        guard let (_, status) = (try? Processes.wait(pid, noHang: true)) ?? nil else { return nil }
        running.removeAll { $0.pid == pid }
        return status
    }

    /// Waits until `count` READY=1 messages came, at most `timeout` seconds; fails when one of `pids` exits.
    package func waitForReady(count: Int, of pids: [Int32], timeout: Double) throws -> Void {
        var ready = 0
        let deadline = Processes.monotonicNanoseconds + UInt64(timeout * 1e9)
        while ready < count {
            try Self.checkInterrupted()
            ready += notify.take().filter { $0 == "READY=1" }.count
            if ready >= count { return }
            for pid in pids {
                if let status = exited(pid) {
                    throw CommandFailure("a worker (pid \(pid)) ended before it was ready: \(status).\n\(logTail())")
                }
            }
            guard Processes.monotonicNanoseconds < deadline else {
                throw CommandFailure("\(count - ready) of \(count) workers were not ready within \(Int(timeout)) s.\n\(logTail())")
            }
            _ = Files.readable([notify.descriptor], milliseconds: 20)
        }
    }

    /// Asks `pid`'s process group to stop (`signal`), waits at most `timeout` seconds, then kills the group
    /// and reaps it. Returns the exit status, and whether it had to be killed.
    @discardableResult
    package func stop(_ pid: Int32, signal: Int32 = Signal.terminate, timeout: Double) -> (status: ExitStatus, killed: Bool) {
        Processes.kill(-pid, signal)
        Processes.kill(pid, signal)  // in case it left its group
        let deadline = Processes.monotonicNanoseconds + UInt64(timeout * 1e9)
        while Processes.monotonicNanoseconds < deadline {
            if let status = exited(pid) { return (status, false) }
            Processes.sleep(microseconds: 5_000)
        }
        Processes.kill(-pid, Signal.kill)
        Processes.kill(pid, Signal.kill)
        let status = (try? Processes.wait(pid, noHang: false))??.status ?? ExitStatus(raw: Signal.kill)
        running.removeAll { $0.pid == pid }
        return (status, true)
    }

    /// Stops every process still running, newest first (`up` before anything else), and removes the folder
    /// unless `keepingLog`. Only the first call does anything.
    package func stopAll(keepingLog: Bool) {
        guard !stopped else { return }
        stopped = true
        for (pid, _) in running.reversed() {
            if stop(pid, timeout: 8).killed {
                for group in orphanGroups { Processes.kill(-group, Signal.kill) }
            }
        }
        Files.close(log)
        notify.close()
        let pidFiles = Files.list(folder)
        if keepingLog {
            for name in pidFiles where name != "processes.log" { Files.remove(folder + "/" + name) }
        } else {
            for name in pidFiles { Files.remove(folder + "/" + name) }
            Files.removeFolder(folder)
        }
    }

    /// The last lines of the processes' log, for an error message.
    package func logTail(lines count: Int = 12) -> String {
        let bytes = Files.read(logPath, limit: 1 << 20) ?? []
        let lines = String(decoding: bytes, as: UTF8.self).split(separator: "\n").suffix(count)
        return lines.isEmpty ? "(the processes wrote nothing to \(logPath))" : "Their log (\(logPath)):\n" + lines.joined(separator: "\n")
    }
}
