import FoundationEssentials
import Glibc
import PortReuse

/// What `up` passes to its next self when it upgrades in place (`execve` of the new binary, same pid): the
/// sockets (their descriptors stay open across exec), the supervisor's state (a restart backoff too) and
/// every generation's record, in a JSON file named by ``variable``. The monotonic clock carries on across
/// exec, so deadlines hold.
package struct UpgradeHandover: Codable {
    package static let variable = "PORTREUSE_UP_STATE"

    package struct Socket: Codable {
        package var descriptor: Int32
        package var name: String
    }

    package var sockets: [Socket]
    package var generations: [GenerationRecord]
    package var state: SupervisorState
    package var nextNumber: Int
    package var reloadQueued: Bool
    package var failures: FailureCount
    package var history: [ReloadRecord]
    package var upgrades: Int
    package var upgradeFailures: Int
    package var startedWall: Double
    package var runtimeFolder: String

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

    /// Writes the state, lets the descriptors live through exec, and becomes `binary`. Returns only by
    /// throwing, with every descriptor close-on-exec again.
    package func execute(binary: String, arguments: [String]) throws(CommandFailure) {
        let path = runtimeFolder + "/state.json"
        guard let data = try? JSONEncoder().encode(self), Files.write(Array(data), toFile: path) else {
            throw CommandFailure("cannot write \(path)")
        }
        let kept = sockets.map(\.descriptor) + generations.compactMap(\.notifyDescriptor)
        for descriptor in kept { _ = fcntl(descriptor, F_SETFD, 0) }
        setenv(Self.variable, path, 1)
        fflush(nil)
        let code = Files.withCStrings([binary] + arguments.dropFirst()) { argv in
            execv(binary, argv)
            return errno
        }
        unsetenv(Self.variable)
        for descriptor in kept { _ = fcntl(descriptor, F_SETFD, FD_CLOEXEC) }
        throw CommandFailure("cannot execute \(binary): \(Files.errorText(code))")
    }

    /// The state the previous `up` of this process left, if this process is an upgrade; unsets the variable.
    package static func inherited() throws(CommandFailure) -> UpgradeHandover? {
        guard let path = getenv(variable).map({ String(cString: $0) }) else { return nil }
        unsetenv(variable)
        defer { unlink(path) }
        guard let bytes = Files.read(path, limit: 1 << 22), let state = try? JSONDecoder().decode(UpgradeHandover.self, from: Data(bytes)) else {
            throw CommandFailure("\(variable)=\(path): cannot read the state of the previous portreuse up")
        }
        return state
    }
}
