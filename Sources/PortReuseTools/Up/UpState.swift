import FoundationEssentials
import Glibc
import PortReuse

/// A socket `up` holds for its whole life and hands to every generation.
package struct HeldSocket {
    /// `up`'s own descriptor (moved to 100 or above, close-on-exec; a generation gets it as 3, 4, …).
    package let descriptor: Int32
    package let name: String
    package let transport: Transport
    package let address: SocketAddress
    /// The kernel's inode number of the socket (what /proc/PID/fd links name).
    package let inode: UInt64

    /// Takes `descriptor` over: a duplicate at 100 or above replaces it, so that posix_spawn's dup2 to 3, 4, …
    /// never lands on one of our own.
    package static func hold(_ descriptor: Int32, name: String) throws(CommandFailure) -> HeldSocket {
        let moved = fcntl(descriptor, F_DUPFD_CLOEXEC, 100)
        guard moved >= 0 else { throw CommandFailure("cannot duplicate socket descriptor \(descriptor): \(Files.errorText())") }
        close(descriptor)
        return try describe(moved, name: name)
    }

    /// A descriptor that is already ours (after an upgrade in place).
    package static func describe(_ descriptor: Int32, name: String) throws(CommandFailure) -> HeldSocket {
        let found = ActivatedSocket(describing: descriptor, name: name)
        guard let transport = found.transport, let address = found.localAddress, transport == .udp || found.isListening else {
            throw CommandFailure("descriptor \(descriptor) (\(name)) is not a listening TCP socket nor a bound UDP socket")
        }
        return HeldSocket(descriptor: descriptor, name: name, transport: transport, address: address, inode: GenerationProbe.inode(of: descriptor))
    }
}

extension NotifyReceiver {
    /// The receiver of a generation started by the previous `up` of this process.
    package convenience init(adopting descriptor: Int32, path: String) throws(CommandFailure) {
        guard fcntl(descriptor, F_SETFD, FD_CLOEXEC) == 0 else { throw CommandFailure("notify socket \(descriptor) is gone") }
        self.init(descriptor: descriptor, path: path)
    }
}

/// What `up` passes to its next self when it upgrades in place (`execve` of the new binary, same pid): the
/// sockets (their descriptors stay open across exec) and every generation with its state and deadlines,
/// in a JSON file named by ``variable``. The monotonic clock carries on across exec, so deadlines hold.
package struct UpState: Codable {
    package static let variable = "PORTREUSE_UP_STATE"

    package struct Socket: Codable {
        package var descriptor: Int32
        package var name: String
    }

    package struct Generation: Codable {
        package var number: Int
        package var pid: pid_t
        package var reason: String
        package var started: UInt64
        package var startedWall: Double
        package var phase: Supervisor.Phase
        package var readyAfter: UInt64?
        package var heardFrom: Bool
        package var statusText: String?
        package var mainPID: pid_t?
        package var deadline: UInt64
        package var killed: Bool
        package var exit: Int32?
        package var notify: Int32?
        package var notifyPath: String?

        package init(_ generation: Supervisor.Generation) {
            number = generation.number
            pid = generation.pid
            reason = generation.reason
            started = generation.started
            startedWall = generation.startedWall
            phase = generation.phase
            readyAfter = generation.readyAfter
            heardFrom = generation.heardFrom
            statusText = generation.statusText
            mainPID = generation.mainPID
            deadline = generation.deadline
            killed = generation.killed
            exit = generation.exit?.raw
            notify = generation.notify?.descriptor
            notifyPath = generation.notify?.path
        }
    }

    package var sockets: [Socket]
    package var generations: [Generation]
    package var nextNumber: Int
    package var reloadPending: Bool
    package var failuresInARow: Int
    package var everReady: Bool
    package var history: [UpStatus.Reload]
    package var upgrades: Int
    package var upgradeFailures: Int
    package var startedWall: Double
    package var runtimeFolder: String

    package init(
        sockets: [HeldSocket], generations: [Generation], nextNumber: Int, reloadPending: Bool, failuresInARow: Int, everReady: Bool,
        history: [UpStatus.Reload], upgrades: Int, upgradeFailures: Int, startedWall: Double, runtimeFolder: String
    ) {
        self.sockets = sockets.map { Socket(descriptor: $0.descriptor, name: $0.name) }
        self.generations = generations
        self.nextNumber = nextNumber
        self.reloadPending = reloadPending
        self.failuresInARow = failuresInARow
        self.everReady = everReady
        self.history = history
        self.upgrades = upgrades
        self.upgradeFailures = upgradeFailures
        self.startedWall = startedWall
        self.runtimeFolder = runtimeFolder
    }

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
        let kept = sockets.map(\.descriptor) + generations.compactMap(\.notify)
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
    package static func inherited() throws(CommandFailure) -> UpState? {
        guard let path = getenv(variable).map({ String(cString: $0) }) else { return nil }
        unsetenv(variable)
        defer { unlink(path) }
        guard let bytes = Files.read(path, limit: 1 << 22), let state = try? JSONDecoder().decode(UpState.self, from: Data(bytes)) else {
            throw CommandFailure("\(variable)=\(path): cannot read the state of the previous portreuse up")
        }
        return state
    }
}

/// What `portreuse up --status` shows: written by the running `up` next to its pid file (PATH.status).
package struct UpStatus: Codable {
    package struct Socket: Codable {
        package var name: String
        package var address: String
        package var transport: String
    }

    package struct Generation: Codable {
        package var number: Int
        package var pid: pid_t
        package var state: String
        package var startedAt: Double
        package var ageSeconds: Double
        package var readySeconds: Double?
        package var status: String?
    }

    package struct Reload: Codable {
        package var generation: Int
        package var startedAt: Double
        package var result: String
        package var seconds: Double
    }

    package var schema = "portreuse.up/1"
    package var pid: pid_t
    package var command: [String]
    package var startedAt: Double
    package var sockets: [Socket]
    package var generations: [Generation]
    package var stopping: Bool
    package var reloadPending: Bool
    package var reloads: [Reload]
    package var upgrades: Int
    package var upgradeFailures: Int

    package static func path(forPIDFile pidFile: String) -> String { pidFile + ".status" }

    /// Writes the file whole or not at all (a temporary file renamed over it).
    package func write(to path: String) {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        guard let data = try? encoder.encode(self), Files.write(Array(data) + [10], toFile: path + ".new") else { return }
        rename(path + ".new", path)
    }

    package static func read(from path: String) -> UpStatus? {
        guard let bytes = Files.read(path, limit: 1 << 22) else { return nil }
        return try? JSONDecoder().decode(UpStatus.self, from: Data(bytes))
    }
}
