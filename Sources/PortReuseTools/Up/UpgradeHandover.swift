import FoundationEssentials
import PortReuse
import PortReuseSystem

/// What `up` passes to its next self when it upgrades in place (`execve` of the new binary, same pid): the
/// sockets (their descriptors stay open across exec), the supervisor's state (a restart backoff too) and
/// every generation's record, in a JSON file named by ``variable``. The monotonic clock carries on across
/// exec, so deadlines hold.
package struct UpgradeHandover: Codable {
    package static let variable = "PORTREUSE_UP_STATE"

    package struct Socket: Codable {
        package var descriptor: Descriptor
        package var name: String
        package var backlog: Int32?
    }

    package var sockets: [Socket]
    /// The supervisor's record, whole: state, generations, reloads, counters.
    package var record: SupervisorRecord
    package var startedWall: Double
    package var runtimeFolder: String
    /// Steered generations: each group's members in the kernel's order, by held index, and the steered sockets
    /// `up` opened itself (the attached programs stay with the groups in the kernel).
    package var groups: [Int: ReuseportGroup]?
    package var steeredDescriptors: [Descriptor]?
    package var spares: [Int: [Descriptor]]?
    /// Steered by eBPF: each group's map (its descriptor kept open across exec) and the keys in it.
    package var steeringMaps: [Int: SteeringMap]?

    /// The file of this process's executable, as it is named now (a replaced binary's path, not "(deleted)").
    package static var executablePath: String {
        (try? Processes.currentExecutable()) ?? CommandLine.arguments[0]
    }

    /// Runs `binary --version` (at most 5 s); its first line, or `nil` when it does not succeed.
    package static func check(binary: String) -> String? {
        var spawn = ProcessSpawn([binary, "--version"])
        spawn.standardError = .null
        guard let finished = try? spawn.run(timeout: 5), finished.status.isSuccess else { return nil }
        let line = String(decoding: finished.standardOutput.prefix(4096), as: UTF8.self).split(separator: "\n").first.map(String.init) ?? ""
        return line.isEmpty ? nil : "portreuse \(line)"
    }

    /// Writes the state into the runtime folder (0600) and returns its path.
    package func write() throws(CommandFailure) -> String {
        let path = runtimeFolder + "/state.json"
        guard let data = try? JSONEncoder().encode(self) else { throw CommandFailure("cannot encode the state for the upgrade") }
        do { try Files.replace(path, with: Array(data), mode: 0o600) } catch { throw CommandFailure("cannot write \(path): \(error)") }
        return path
    }

    /// Runs `binary up check-handover PATH` (at most 5 s) in a process of its own: the new binary must read this
    /// very state before this process becomes it, so that a binary that answers `--version` but cannot run
    /// `up` is refused while the running `up` can still carry on. `nil` when it passes, else what it said.
    package static func preflight(binary: String, path: String) -> String? {
        var spawn = ProcessSpawn([binary, "up", "check-handover", path])
        spawn.standardOutput = .null
        guard let finished = try? spawn.run(timeout: 5) else { return "it could not be started" }
        if finished.status.isSuccess { return nil }
        let said = String(decoding: finished.standardError.prefix(500), as: UTF8.self).split(separator: "\n").first.map(String.init)
        return "`up check-handover` \(finished.timedOut ? "did not finish within 5 s" : "ended with \(finished.status)")" + (said.map { ": \($0)" } ?? "")
    }

    /// Reads a state file without consuming it: what `up check-handover` does for the `up` that upgrades.
    package static func read(from path: String) throws(CommandFailure) -> UpgradeHandover {
        guard let bytes = Files.read(path, limit: 1 << 22), let state = try? JSONDecoder().decode(UpgradeHandover.self, from: Data(bytes)) else {
            throw CommandFailure("\(path): not a state of portreuse up that this binary can read")
        }
        return state
    }

    /// Lets the descriptors live through exec and becomes `binary`, which finds the state at `path`. Returns
    /// only by throwing, with every descriptor close-on-exec again.
    package func execute(binary: String, arguments: [String], path: String) throws(CommandFailure) {
        let generations = record.generations
        let kept = sockets.map(\.descriptor) + generations.compactMap(\.notifyDescriptor) + generations.compactMap(\.interceptDescriptor)
            + generations.flatMap { $0.sockets ?? [] } + (groups ?? [:]).values.flatMap(\.members).filter { $0 != .invalid } + (steeringMaps ?? [:]).values.map(\.descriptor)
        for descriptor in kept { Files.setCloseOnExec(descriptor, false) }
        Self.closeOnExecLibraryDescriptors(keeping: Set(kept))
        Environment.set(Self.variable, path)
        let code = Processes.replaceImage(with: binary, arguments: [binary] + arguments.dropFirst())
        Environment.unset(Self.variable)
        for descriptor in kept { Files.setCloseOnExec(descriptor) }
        throw CommandFailure("cannot execute \(binary): \(code.description)")
    }

    /// Makes close-on-exec the kernel objects a library opened without it (SwiftNIO's epoll, eventfd and timerfd
    /// of `--health`): each upgrade would otherwise hand one more to the next `up` (19 -> 29 descriptors over 10
    /// upgrades). Descriptors meant to cross the exec (`kept`, and the runtime folder's lock, a file) stay as they are.
    private static func closeOnExecLibraryDescriptors(keeping kept: Set<Descriptor>) {
        for entry in Files.list("/proc/self/fd") {
            guard let descriptor = Descriptor(entry), !descriptor.isStandardStream, !kept.contains(descriptor) else { continue }
            guard let target = try? Processes.readLink("/proc/self/fd/\(descriptor)"), target.hasPrefix("anon_inode:") else { continue }
            Files.setCloseOnExec(descriptor)
        }
    }

    /// The state the previous `up` of this process left, if this process is an upgrade; unsets the variable.
    package static func inherited() throws(CommandFailure) -> UpgradeHandover? {
        guard let path = Environment.value(variable) else { return nil }
        Environment.unset(variable)
        // Deleted only once read: a path that names something else (a mistake, or someone's file) is left alone.
        guard let state = try? read(from: path) else {
            throw CommandFailure("\(variable)=\(path): cannot read the state of the previous portreuse up (the file is left as it is)")
        }
        Files.remove(path)
        return state
    }
}
