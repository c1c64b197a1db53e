#if os(Linux)
import CPortReuseSystem
import Glibc
import SystemPackage

/// Starting a program: the one `posix_spawn` of PortReuse, the CLI, the benchmarks and the tests.
///
/// Swift cannot run code between fork and exec, so every detail of the child is said here as data: which of
/// our descriptors it gets as 3, 4, … (not close-on-exec there), where its standard streams go, whether it
/// leads a process group of its own. Every other descriptor is closed in the child, its signal mask is empty
/// and every signal has its default action: a Swift process's threads block signals (Swift Testing's workers
/// block SIGTERM), and a child must not inherit that.
package struct ProcessSpawn {
    /// Where the child's standard input comes from.
    package enum Input: Sendable {
        case null, inherit
        case descriptor(Int32)
    }

    /// Where one of the child's standard outputs goes.
    package enum Output: Sendable {
        case inherit, null
        case descriptor(Int32)
        /// Appended to a file, created 0644 if missing.
        case appending(toFile: String)
        /// Wherever the child's other output goes (stdout for stderr, stderr for stdout).
        case other
    }

    /// The program (its path, or with ``searchPath`` a name) and its arguments.
    package var arguments: [String]
    /// `NAME=value` entries; `nil`: this process's environment.
    package var environment: [String]?
    /// Our descriptors that the child gets as 3, 4, …; each must be 3 + `descriptors.count` or above, so that
    /// no mapping overwrites a descriptor still to be mapped.
    package var descriptors: [Int32] = []
    package var standardInput = Input.null
    package var standardOutput = Output.inherit
    package var standardError = Output.inherit
    /// Whether the child leads a process group of its own (so that one signal reaches its whole tree).
    package var newProcessGroup = false
    /// Whether `arguments[0]` is looked up in PATH (`posix_spawnp`).
    package var searchPath = false

    package init(_ arguments: [String], environment: [String]? = nil) {
        self.arguments = arguments
        self.environment = environment
    }

    /// Starts the program and returns its pid. The corresponding C function is `posix_spawn`.
    package func start() throws(SystemError) -> pid_t {
        guard !arguments.isEmpty else { throw SystemError("posix_spawn", .invalidArgument) }
        let firstFree = 3 + Int32(descriptors.count)
        guard descriptors.allSatisfy({ $0 >= firstFree }) else { throw SystemError("posix_spawn (descriptor below \(firstFree))", .invalidArgument) }

        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        switch standardInput {
        case .null: posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0)
        case .inherit: break
        case .descriptor(let fd): posix_spawn_file_actions_adddup2(&actions, fd, STDIN_FILENO)
        }
        Self.redirect(standardOutput, to: STDOUT_FILENO, other: STDERR_FILENO, &actions)
        Self.redirect(standardError, to: STDERR_FILENO, other: STDOUT_FILENO, &actions)
        // adddup2 clears close-on-exec on the target, also when source and target are the same number.
        for (index, descriptor) in descriptors.enumerated() { posix_spawn_file_actions_adddup2(&actions, descriptor, 3 + Int32(index)) }
        let closing = csystem_spawn_addclosefrom(&actions, firstFree)
        guard closing == 0 || closing == ENOSYS else { throw SystemError("posix_spawn_file_actions_addclosefrom_np", Errno(rawValue: closing)) }

        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var none = sigset_t(), all = sigset_t()
        sigemptyset(&none)
        sigfillset(&all)
        sigdelset(&all, SIGKILL)
        sigdelset(&all, SIGSTOP)
        posix_spawnattr_setsigmask(&attributes, &none)
        posix_spawnattr_setsigdefault(&attributes, &all)
        var flags = POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF
        if newProcessGroup {
            posix_spawnattr_setpgroup(&attributes, 0)
            flags |= POSIX_SPAWN_SETPGROUP
        }
        posix_spawnattr_setflags(&attributes, Int16(flags))

        var pid = pid_t()
        let entries = environment ?? Self.currentEnvironment()
        try systemCallReturningCode(searchPath ? "posix_spawnp \(arguments[0])" : "posix_spawn \(arguments[0])") {
            Files.withCStrings(arguments) { argv in
                Files.withCStrings(entries) { envp in
                    searchPath ? posix_spawnp(&pid, argv[0]!, &actions, &attributes, argv, envp) : posix_spawn(&pid, argv[0]!, &actions, &attributes, argv, envp)
                }
            }
        }
        return pid
    }

    private static func redirect(_ output: Output, to target: Int32, other: Int32, _ actions: inout posix_spawn_file_actions_t) {
        switch output {
        case .inherit: break
        case .null: posix_spawn_file_actions_addopen(&actions, target, "/dev/null", O_WRONLY, 0)
        case .descriptor(let fd): posix_spawn_file_actions_adddup2(&actions, fd, target)
        case .appending(let path): posix_spawn_file_actions_addopen(&actions, target, path, O_WRONLY | O_CREAT | O_APPEND, 0o644)  // the child's own: never close-on-exec
        case .other: posix_spawn_file_actions_adddup2(&actions, other, target)
        }
    }

    /// This process's environment as `NAME=value` entries.
    package static func currentEnvironment() -> [String] {
        var entries: [String] = []
        var entry = environ
        while let pointer = entry.pointee {
            entries.append(String(cString: pointer))
            entry += 1
        }
        return entries
    }


    /// What a program that ran to its end left: how it ended and what it wrote.
    package struct Finished: Sendable {
        package var status: ExitStatus
        package var standardOutput: [UInt8]
        package var standardError: [UInt8]
        /// Whether it was killed because `timeout` passed.
        package var timedOut: Bool
    }

    /// Runs the program to its end with `input` on its stdin and its stdout and stderr captured apart (unless
    /// this spawn redirects them elsewhere); after `timeout` seconds it is killed (SIGKILL) and reaped.
    package func run(input: [UInt8] = [], timeout: Double) throws(SystemError) -> Finished {
        let stdin = try Files.pipe(), stdout = try Files.pipe(), stderr = try Files.pipe()
        var spawn = self
        spawn.standardInput = .descriptor(stdin.read)
        if case .inherit = standardOutput { spawn.standardOutput = .descriptor(stdout.write) }
        if case .inherit = standardError { spawn.standardError = .descriptor(stderr.write) }
        let pid: pid_t
        do {
            pid = try spawn.start()
        } catch {
            for fd in [stdin.read, stdin.write, stdout.read, stdout.write, stderr.read, stderr.write] { Files.close(fd) }
            throw error
        }
        for fd in [stdin.read, stdout.write, stderr.write] { Files.close(fd) }
        defer { Files.close(stdout.read); Files.close(stderr.read) }
        if !input.isEmpty { Files.writeWithoutSIGPIPE(input, to: stdin.write) }
        Files.close(stdin.write)

        let deadline = Processes.monotonicNanoseconds + UInt64(max(0, timeout) * 1e9)
        var collected: [Int32: [UInt8]] = [:]
        var open = [stdout.read, stderr.read]
        var timedOut = false
        while !open.isEmpty {
            let now = Processes.monotonicNanoseconds
            guard now < deadline else { timedOut = true; break }
            var polled = open.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
            let waitMilliseconds = Int32(min(1000, max(1, (deadline - now) / 1_000_000)))
            guard poll(&polled, nfds_t(polled.count), waitMilliseconds) > 0 else { continue }
            for entry in polled where entry.revents != 0 {
                var chunk = [UInt8](repeating: 0, count: 65_536)
                let count = read(entry.fd, &chunk, chunk.count)
                if count > 0 { collected[entry.fd, default: []] += chunk[0..<count] } else if count == 0 || errno != EINTR { open.removeAll { $0 == entry.fd } }
            }
        }
        // The pipes closed (or time ran out): the program ends now or is made to.
        var finished: ExitStatus?
        while finished == nil {
            if let (_, status) = try Processes.wait(pid, noHang: true) { finished = status; break }
            if timedOut || Processes.monotonicNanoseconds >= deadline {
                timedOut = true
                _ = Glibc.kill(pid, SIGKILL)
                finished = try Processes.wait(pid, noHang: false)?.status
            } else {
                usleep(2_000)
            }
        }
        return Finished(
            status: finished!, standardOutput: collected[stdout.read] ?? [], standardError: collected[stderr.read] ?? [], timedOut: timedOut)
    }
}
#endif
