import PortReuseSystem
import SystemPackage

#if os(Linux)
/// Starting a generation with the sockets at 3, 4, … and nothing else inherited, and `portreuse run`'s program
/// under its filter: ``ProcessSpawn`` (the one spawn, in C) with a supervisor's settings, and its failures as
/// sentences. The child does before its one `execve` what a trampoline's own exec did (the death signal,
/// LISTEN_PID, the seccomp filter), which saved 1.2 ms a start here when quiet and 3.7 ms (median) under the
/// load of reload-bench.
package enum Spawner {
    /// Starts `arguments` (the first is the executable's path) in a process group of its own, with
    /// `descriptors` as 3, 4, …, stdin from /dev/null, stdout and stderr shared with `up`, default signal
    /// actions and an empty signal mask; it gets SIGTERM when the calling thread dies (a killed parent leaves
    /// nothing running unnoticed). Returns its pid. With `output`, its stdout and stderr go there instead.
    package static func spawn(
        _ arguments: [String], environment: [String], descriptors: [Descriptor], setListenPID: Bool, output: Descriptor? = nil
    ) throws(CommandFailure) -> Int32 {
        switch try start(arguments, environment: environment, descriptors: descriptors, setListenPID: setListenPID, output: output) {
        case .started(let pid, _): return pid
        case .refused(let code): throw CommandFailure("cannot start \(arguments[0]): \(code)")
        case .failed(let reason): throw CommandFailure(reason)
        }
    }

    /// Why a generation cannot start under the bind filter here, or `nil` when it can: tried once on /bin/true
    /// (a container's seccomp profile may refuse the filter whatever the kernel).
    package static func filterRefusal() -> String? {
        if let reason = KernelRun.unsupportedReason() { return reason }
        switch try? spawnIntercepted(["/bin/true"], environment: [], descriptors: [], setListenPID: false) {
        case .started(let pid, let notification)?:
            if let notification { Files.close(notification) }
            _ = try? Processes.wait(pid, noHang: false)
            return nil
        case .refused(let code)?: return "the kernel refused the seccomp filter (\(code))"
        case .failed(let reason)?: return reason
        case nil: return "cannot start /bin/true"
        }
    }

    /// How a start went.
    package enum SupervisedStart {
        /// Started; under a filter, the caller holds the notification descriptor of its seccomp filter.
        case started(pid: Int32, notification: Descriptor?)
        /// The kernel refused the filter (this errno): nothing was started.
        case refused(Errno)
        /// Nothing runs (why).
        case failed(String)
    }

    /// Starts the program as ``spawn(_:environment:descriptors:setListenPID:output:)`` does, under the bind filter,
    /// whose notification descriptor `up` gets back before the program runs.
    package static func spawnIntercepted(
        _ arguments: [String], environment: [String], descriptors: [Descriptor], setListenPID: Bool, output: Descriptor? = nil
    ) throws(CommandFailure) -> SupervisedStart {
        try start(arguments, environment: environment, descriptors: descriptors, setListenPID: setListenPID, output: output, filter: [SocketCall.bind])
    }

    /// What the program shares with the process that starts it.
    package enum Attachment: Sendable {
        /// `up`'s generations: a process group of their own, SIGTERM when the starting thread dies, stdin from /dev/null.
        case supervised
        /// `portreuse run`'s program: the caller's process group, terminal, stdin and descriptors (those not
        /// close-on-exec), as if the caller had exec'd it; SIGTERM when `run` dies (its binds would fail with
        /// ENOSYS from then on: nobody answers them).
        case foreground
        /// A worker of `up --workers`: as `supervised`, in its pool's process group (a kill of the generation's
        /// group reaches it).
        case worker
    }

    /// Starts `arguments` (from `path`, else from `arguments[0]`; no PATH search) with `descriptors` as 3, 4, …
    /// (and, supervised, nothing else above 2), default signal actions and an empty mask, under a seccomp filter
    /// for `filter` (system call numbers, at most 8) when it names any.
    package static func start(
        _ arguments: [String], path: String? = nil, environment: [String], descriptors: [Descriptor] = [], setListenPID: Bool = false,
        output: Descriptor? = nil, filter: [Int32] = [], attachment: Attachment = .supervised
    ) throws(CommandFailure) -> SupervisedStart {
        guard let program = arguments.first else { throw CommandFailure("nothing to start") }
        var spawn = ProcessSpawn(arguments, environment: environment)
        spawn.executable = path
        spawn.descriptors = descriptors
        spawn.setsListenPID = setListenPID
        spawn.interceptedCalls = filter
        spawn.deathSignal = Signal.terminate
        switch attachment {
        case .supervised:
            spawn.newProcessGroup = true
        case .worker:
            break
        case .foreground:
            spawn.standardInput = .inherit
            spawn.keepsInheritedDescriptors = true
        }
        if let output {
            spawn.standardOutput = .descriptor(output)
            spawn.standardError = .descriptor(output)
        }
        do {
            let started = try spawn.launch()
            return .started(pid: started.pid, notification: started.notification)
        } catch {
            switch error.step {
            case .filter: return .refused(error.errno)
            case .parentGone: return .failed("cannot start \(program): up is going away")
            case .exec: return .failed("cannot start \(program): \(error.errno.description)")
            case .setup: return .failed("cannot start \(program): " + (error.reason ?? "setting up its process failed (\(error.errno.description))"))
            }
        }
    }
}
#endif
