#if os(Linux)
import CPortReuseSystem
import Glibc
import SystemPackage

/// Starting a program: the one spawn of PortReuse, the CLI, the benchmarks and the tests, in C
/// (`csystem_spawn`: one clone that shares our memory until its one `execve`, as posix_spawn does).
///
/// Swift cannot run code between fork and exec, so every detail of the child is said here as data: which of
/// our descriptors it gets as 3, 4, … (not close-on-exec there), where its standard streams go, whether it
/// leads a process group of its own, and for a supervisor (`portreuse up`, `run`'s kernel path) its death
/// signal, LISTEN_PID and a seccomp filter whose notification descriptor comes back to the caller. Every other
/// descriptor is closed in the child (unless ``keepsInheritedDescriptors``), its signal mask is empty and every
/// signal has its default action: a Swift process's threads block signals (Swift Testing's workers block
/// SIGTERM), and a child must not inherit that.
package struct ProcessSpawn {
    /// Where the child's standard input comes from.
    package enum Input: Sendable {
        case null, inherit
        case descriptor(Descriptor)
    }

    /// Where one of the child's standard outputs goes.
    package enum Output: Sendable {
        case inherit, null
        case descriptor(Descriptor)
        /// Appended to a file, created 0644 if missing.
        case appending(toFile: String)
        /// Wherever the child's other output goes (stdout for stderr, stderr for stdout).
        case other
    }

    /// The program (its path, or with ``searchPath`` a name) and its arguments.
    package var arguments: [String]
    /// The file to execute when it is not `arguments[0]` (which is then only the name the program sees).
    package var executable: String?
    /// `NAME=value` entries; `nil`: this process's environment.
    package var environment: [String]?
    /// Our descriptors that the child gets as 3, 4, …; each must be 3 + `descriptors.count` or above, so that
    /// no mapping overwrites a descriptor still to be mapped.
    package var descriptors: [Descriptor] = []
    package var standardInput = Input.null
    package var standardOutput = Output.inherit
    package var standardError = Output.inherit
    /// Whether the child leads a process group of its own (so that one signal reaches its whole tree).
    package var newProcessGroup = false
    /// Whether `arguments[0]` is looked up in PATH (as `posix_spawnp`).
    package var searchPath = false
    /// Whether our descriptors without close-on-exec pass on above the mapped ones, as through an exec (the
    /// foreground program of `portreuse run`); else the child has only its streams and ``descriptors``.
    package var keepsInheritedDescriptors = false
    /// The signal the child gets when the thread that started it dies (PR_SET_PDEATHSIG), or 0.
    package var deathSignal: Int32 = 0
    /// Whether LISTEN_PID (and LISTEN_PIDFDID) name the child itself, for socket activation: set in the child,
    /// since only it knows its pid before it runs the program.
    package var setsListenPID = false
    /// System call numbers (at most 8) handed to the caller under a seccomp filter (SECCOMP_RET_USER_NOTIF),
    /// whose notification descriptor ``launch()`` returns; none: no filter.
    package var interceptedCalls: [Int32] = []

    package init(_ arguments: [String], environment: [String]? = nil) {
        self.arguments = arguments
        self.environment = environment
    }

    /// Why nothing runs: the step of the child's set-up that failed, and its errno.
    package struct Failure: Error, Sendable {
        package enum Step: Sendable {
            /// The streams, the descriptors, the process group, the death signal, or an argument (EINVAL).
            case setup
            /// The starting thread was gone before the child could take its death signal.
            case parentGone
            /// The kernel refused the seccomp filter.
            case filter
            /// execve (or the PATH search) failed: no such file, not executable, …
            case exec
        }
        package var step: Step
        package var errno: Errno
        /// What was wrong with the request itself, when nothing was tried.
        package var reason: String? = nil

        /// The same as a ``SystemError`` naming the program.
        package func systemError(_ program: String) -> SystemError {
            SystemError(step == .exec ? "execve \(program)" : step == .filter ? "seccomp (\(program))" : "spawn \(program)" + (reason.map { " (\($0))" } ?? ""), errno)
        }
    }

    /// Starts the program and returns its pid.
    package func start() throws(SystemError) -> pid_t {
        do {
            let started = try launch()
            if let notification = started.notification { Files.close(notification) }
            return started.pid
        } catch {
            throw error.systemError(arguments.first ?? "")
        }
    }

    /// Starts the program; returns its pid and, under a filter, the filter's notification descriptor
    /// (close-on-exec; `nil` if the child was killed before it could hand it over).
    package func launch() throws(Failure) -> (pid: pid_t, notification: Descriptor?) {
        guard !arguments.isEmpty else { throw Failure(step: .setup, errno: .invalidArgument, reason: "no program") }
        guard interceptedCalls.count <= 8 else { throw Failure(step: .setup, errno: .invalidArgument, reason: "more than 8 system calls to intercept") }
        let firstFree = Descriptor(3 + Int32(descriptors.count))
        if let low = descriptors.first(where: { $0 < firstFree }) {
            throw Failure(step: .setup, errno: .invalidArgument, reason: "descriptor \(low) is below \(firstFree): mapping 3, 4, … would overwrite it")
        }
        // Files the streams open are opened here (close-on-exec: the child's dup2 keeps only its copy).
        var opened: [Descriptor] = []
        defer { opened.forEach(Files.close) }
        func stream(_ input: Input) throws(Failure) -> Int32 {
            switch input {
            case .inherit: return Int32(CSYSTEM_SPAWN_INHERIT)
            case .descriptor(let fd): return fd.rawValue
            case .null: return try open("/dev/null", O_RDONLY)
            }
        }
        func stream(_ output: Output) throws(Failure) -> Int32 {
            switch output {
            case .inherit: return Int32(CSYSTEM_SPAWN_INHERIT)
            case .other: return Int32(CSYSTEM_SPAWN_OTHER)
            case .descriptor(let fd): return fd.rawValue
            case .null: return try open("/dev/null", O_WRONLY)
            case .appending(let path): return try open(path, O_WRONLY | O_CREAT | O_APPEND)
            }
        }
        func open(_ path: String, _ flags: Int32) throws(Failure) -> Int32 {
            let fd = Glibc.open(path, flags | O_CLOEXEC, 0o644)
            guard fd >= 0 else { throw Failure(step: .setup, errno: Errno(rawValue: errno), reason: "cannot open \(path)") }
            opened.append(Descriptor(fd))
            return fd
        }
        let (input, output, error) = (try stream(standardInput), try stream(standardOutput), try stream(standardError))
        if case .other = standardOutput, case .other = standardError {
            throw Failure(step: .setup, errno: .invalidArgument, reason: "stdout and stderr each go where the other goes")
        }

        var notification: Int32 = -1
        var step: Int32 = 0
        let entries = environment ?? Self.currentEnvironment()
        let (pid, code) = (executable ?? arguments[0]).withCString { path in
            Files.withCStrings(arguments) { argv in
                Files.withCStrings(entries) { envp in
                    argv.withUnsafeBufferPointer { argv in
                        envp.withUnsafeBufferPointer { envp in
                            descriptors.map(\.rawValue).withUnsafeBufferPointer { mapped in
                                interceptedCalls.withUnsafeBufferPointer { calls in
                                    var request = csystem_spawn_request(
                                        path: path, argv: argv.baseAddress, envp: envp.baseAddress,
                                        descriptors: mapped.baseAddress, count: Int32(mapped.count),
                                        keep_descriptors: keepsInheritedDescriptors ? 1 : 0,
                                        stdin_fd: input, stdout_fd: output, stderr_fd: error, search_path: searchPath ? 1 : 0,
                                        new_process_group: newProcessGroup ? 1 : 0, death_signal: deathSignal,
                                        set_listen_pid: setsListenPID ? 1 : 0, filter_calls: calls.baseAddress, filter_count: Int32(calls.count))
                                    let pid = csystem_spawn(&request, &notification, &step)
                                    return (pid, Glibc.errno)
                                }
                            }
                        }
                    }
                }
            }
        }
        guard pid < 0 else { return (pid, notification >= 0 ? Descriptor(notification) : nil) }
        let failed: Failure.Step = switch Int(step) {
        case CSYSTEM_SPAWN_FILTER: .filter
        case CSYSTEM_SPAWN_PARENT_GONE: .parentGone
        case CSYSTEM_SPAWN_EXEC: .exec
        default: .setup
        }
        throw Failure(step: failed, errno: Errno(rawValue: code))
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
        var collected: [Descriptor: [UInt8]] = [:]
        var open = [stdout.read, stderr.read]
        var timedOut = false
        while !open.isEmpty {
            let now = Processes.monotonicNanoseconds
            guard now < deadline else { timedOut = true; break }
            let waitMilliseconds = Int32(min(1000, max(1, (deadline - now) / 1_000_000)))
            for (fd, readable) in zip(open, Files.readable(open, milliseconds: waitMilliseconds)) where readable {
                var chunk = [UInt8](repeating: 0, count: 65_536)
                if let count = try? systemCall("read", { read(fd.rawValue, &chunk, chunk.count) }), count > 0 {
                    collected[fd, default: []] += chunk[0..<count]
                } else {
                    open.removeAll { $0 == fd }  // the end, or an error: nothing more comes
                }
            }
        }
        // The pipes closed (or time ran out): the program ends now or is made to.
        var finished: ExitStatus?
        while finished == nil {
            if let (_, status) = try Processes.wait(pid, noHang: true) { finished = status; break }
            if timedOut || Processes.monotonicNanoseconds >= deadline {
                timedOut = true
                Processes.kill(pid, SIGKILL)
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
