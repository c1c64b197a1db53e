import FoundationEssentials
import Glibc
import PortReuse

/// A socket `up` holds for its whole life and hands to every generation.
struct HeldSocket {
    /// `up`'s own descriptor (moved to 100 or above, close-on-exec; a generation gets it as 3, 4, …).
    let descriptor: Int32
    let name: String
    let transport: Transport
    let address: SocketAddress
    /// The kernel's inode number of the socket (what /proc/PID/fd links name).
    let inode: UInt64

    /// Takes `descriptor` over: a duplicate at 100 or above replaces it, so that posix_spawn's dup2 to 3, 4, …
    /// never lands on one of our own.
    static func hold(_ descriptor: Int32, name: String) throws(CommandFailure) -> HeldSocket {
        let moved = fcntl(descriptor, F_DUPFD_CLOEXEC, 100)
        guard moved >= 0 else { throw CommandFailure("cannot duplicate socket descriptor \(descriptor): \(FileSystem.errorText())") }
        close(descriptor)
        return try describe(moved, name: name)
    }

    /// A descriptor that is already ours (after an upgrade in place).
    static func describe(_ descriptor: Int32, name: String) throws(CommandFailure) -> HeldSocket {
        let found = ActivatedSocket(describing: descriptor, name: name)
        guard let transport = found.transport, let address = found.localAddress, transport == .udp || found.isListening else {
            throw CommandFailure("descriptor \(descriptor) (\(name)) is not a listening TCP socket nor a bound UDP socket")
        }
        return HeldSocket(descriptor: descriptor, name: name, transport: transport, address: address, inode: GenerationProbe.inode(of: descriptor))
    }
}

extension NotifyReceiver {
    /// The receiver of a generation started by the previous `up` of this process.
    convenience init(adopting descriptor: Int32, path: String) throws(CommandFailure) {
        guard fcntl(descriptor, F_SETFD, FD_CLOEXEC) == 0 else { throw CommandFailure("notify socket \(descriptor) is gone") }
        self.init(descriptor: descriptor, path: path)
    }
}

/// What `up` passes to its next self when it upgrades in place (`execve` of the new binary, same pid): the
/// sockets (their descriptors stay open across exec) and every generation with its state and deadlines,
/// in a JSON file named by ``variable``. The monotonic clock carries on across exec, so deadlines hold.
struct UpState: Codable {
    static let variable = "PORTREUSE_UP_STATE"

    struct Socket: Codable {
        var descriptor: Int32
        var name: String
    }

    struct Generation: Codable {
        var number: Int
        var pid: pid_t
        var reason: String
        var started: UInt64
        var startedWall: Double
        var phase: Supervisor.Phase
        var readyAfter: UInt64?
        var heardFrom: Bool
        var statusText: String?
        var mainPID: pid_t?
        var deadline: UInt64
        var killed: Bool
        var exit: Int32?
        var notify: Int32?
        var notifyPath: String?

        init(_ generation: Supervisor.Generation) {
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

    var sockets: [Socket]
    var generations: [Generation]
    var nextNumber: Int
    var reloadPending: Bool
    var failuresInARow: Int
    var everReady: Bool
    var history: [UpStatus.Reload]
    var upgrades: Int
    var upgradeFailures: Int
    var startedWall: Double
    var runtimeFolder: String

    init(
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
    static var executablePath: String {
        let path = (try? FileSystem.currentExecutable()) ?? CommandLine.arguments[0]
        return path.hasSuffix(" (deleted)") ? String(path.dropLast(10)) : path
    }

    /// Runs `binary --version` (at most 5 s); its first line, or `nil` when it does not succeed.
    static func check(binary: String) -> String? {
        guard let ends = FileSystem.pipe(nonBlocking: false) else { return nil }
        defer { close(ends.read) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, ends.write, STDOUT_FILENO)
        posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0)
        var pid = pid_t()
        let started = FileSystem.withCStrings([binary, "--version"]) { argv in posix_spawn(&pid, binary, &actions, nil, argv, environ) }
        close(ends.write)
        guard started == 0 else { return nil }
        var status: Int32 = 0
        let deadline = Clock.now + 5_000_000_000
        while waitpid(pid, &status, WNOHANG) == 0 {
            guard Clock.now < deadline else {
                kill(pid, SIGKILL)
                waitpid(pid, &status, 0)
                return nil
            }
            usleep(5_000)
        }
        guard status == 0, let output = FileSystem.read(descriptor: ends.read, limit: 4096) else { return nil }
        let line = String(decoding: output, as: UTF8.self).split(separator: "\n").first.map(String.init) ?? ""
        return line.isEmpty ? nil : "portreuse \(line)"
    }

    /// Writes the state, lets the descriptors live through exec, and becomes `binary`. Returns only by
    /// throwing, with every descriptor close-on-exec again.
    func execute(binary: String, arguments: [String]) throws(CommandFailure) {
        let path = runtimeFolder + "/state.json"
        guard let data = try? JSONEncoder().encode(self), FileSystem.write(Array(data), to: path) else {
            throw CommandFailure("cannot write \(path)")
        }
        let kept = sockets.map(\.descriptor) + generations.compactMap(\.notify)
        for descriptor in kept { _ = fcntl(descriptor, F_SETFD, 0) }
        setenv(Self.variable, path, 1)
        fflush(nil)
        let code = FileSystem.withCStrings([binary] + arguments.dropFirst()) { argv in
            execv(binary, argv)
            return errno
        }
        unsetenv(Self.variable)
        for descriptor in kept { _ = fcntl(descriptor, F_SETFD, FD_CLOEXEC) }
        throw CommandFailure("cannot execute \(binary): \(FileSystem.errorText(code))")
    }

    /// The state the previous `up` of this process left, if this process is an upgrade; unsets the variable.
    static func inherited() throws(CommandFailure) -> UpState? {
        guard let path = getenv(variable).map({ String(cString: $0) }) else { return nil }
        unsetenv(variable)
        defer { unlink(path) }
        guard let bytes = FileSystem.read(path, count: 1 << 22), let state = try? JSONDecoder().decode(UpState.self, from: Data(bytes)) else {
            throw CommandFailure("\(variable)=\(path): cannot read the state of the previous portreuse up")
        }
        return state
    }
}

/// What `portreuse up --status` shows: written by the running `up` next to its pid file (PATH.status).
struct UpStatus: Codable {
    struct Socket: Codable {
        var name: String
        var address: String
        var transport: String
    }

    struct Generation: Codable {
        var number: Int
        var pid: pid_t
        var state: String
        var startedAt: Double
        var ageSeconds: Double
        var readySeconds: Double?
        var status: String?
    }

    struct Reload: Codable {
        var generation: Int
        var startedAt: Double
        var result: String
        var seconds: Double
    }

    var schema = "portreuse.up/1"
    var pid: pid_t
    var command: [String]
    var startedAt: Double
    var sockets: [Socket]
    var generations: [Generation]
    var stopping: Bool
    var reloadPending: Bool
    var reloads: [Reload]
    var upgrades: Int
    var upgradeFailures: Int

    static func path(forPIDFile pidFile: String) -> String { pidFile + ".status" }

    /// Writes the file whole or not at all (a temporary file renamed over it).
    func write(to path: String) {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        guard let data = try? encoder.encode(self), FileSystem.write(Array(data) + [10], to: path + ".new") else { return }
        rename(path + ".new", path)
    }

    static func read(from path: String) -> UpStatus? {
        guard let bytes = FileSystem.read(path, count: 1 << 22) else { return nil }
        return try? JSONDecoder().decode(UpStatus.self, from: Data(bytes))
    }
}
