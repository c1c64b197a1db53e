import PortReuse
import PortReuseSystem

/// Proof that a pid read from a pid file names the `portreuse up` that wrote it, before anything signals it.
///
/// A pid file may sit in a folder others can write, may be stale, and its pid may have been reused: a pid
/// alone proves nothing. The process must run as this user, be `portreuse up` (its command line says
/// `up` after the program), and have the start time that `up` wrote into its status file; the signal then
/// goes through a pidfd opened before the checks, so that it reaches exactly the process that was checked.
package struct UpIdentity {
    /// The pidfd of the proven process (close it with ``close()``).
    package let pidfd: Descriptor
    package let pid: Int32

    /// Proves that `pid` is a running `portreuse up` of this user that started at `startTime` (from its status
    /// file; `nil` when the file predates start times). Throws what is wrong, in words.
    package static func prove(_ pid: Int32, startTime: UInt64?, pidFile: String) throws(CommandFailure) -> UpIdentity {
        guard pid > 0, let pidfd = try? Processes.open(pid) else {
            throw CommandFailure("\(pidFile) names pid \(pid), which is not running (a stale pid file: portreuse up is not running)")
        }
        if let reason = reasonNotUp(pid, startTime: startTime) {
            Files.close(pidfd)
            throw CommandFailure("\(pidFile) names pid \(pid), which \(reason): not signalled")
        }
        return UpIdentity(pidfd: pidfd, pid: pid)
    }

    /// Why `pid` is not the `up` that started at `startTime`, or `nil` when it is.
    package static func reasonNotUp(_ pid: Int32, startTime: UInt64?) -> String? {
        guard let stat = Processes.stat(of: pid), stat.state != "Z" else { return "is not running" }
        if let startTime, stat.startTime != startTime { return "started after the up that wrote the pid file (the pid was reused)" }
        let info = KernelTables.processInfo(pid: pid)
        if let uid = info.uid, uid != Processes.effectiveUserID { return "runs as uid \(uid), not as this user (uid \(Processes.effectiveUserID))" }
        guard info.commandLine.count > 1, info.commandLine[1] == "up" || info.commandLine[1] == "serve" else {
            return "is not portreuse up (its command line: \(info.commandLine.prefix(4).joined(separator: " ")))"
        }
        return nil
    }

    /// Sends `signal` to exactly the proven process.
    package func signal(_ signal: Int32) throws(CommandFailure) {
        do { try Processes.signal(pidfd, signal) } catch {
            throw CommandFailure("cannot signal pid \(pid): \(error.errno.description)")
        }
    }

    package func close() { Files.close(pidfd) }
}
