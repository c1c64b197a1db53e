#if os(Linux)
import CPortReuseSystem
#endif
import Glibc
import SystemPackage
import PortReuse
import PortReuseSystem

/// The write end of the signal pipe, set once before any handler is installed.
nonisolated(unsafe) private var signalPipeWriteEnd: Int32 = -1

/// The handler of every signal `up` takes: one byte, the signal's number, into the pipe (async-signal-safe).
private func forwardSignal(_ signal: Int32) {
    let saved = errno
    var byte = UInt8(truncatingIfNeeded: signal)
    _ = write(signalPipeWriteEnd, &byte, 1)
    errno = saved
}

/// Signals as bytes in a pipe that the supervisor's poll loop reads: the self-pipe trick.
package struct SignalPipe {
    package let readEnd: Int32
    private let writeEnd: Int32

    /// The signals `up` handles; children start with their default actions and an empty mask.
    package static let handled: [Int32] = [SIGHUP, SIGTERM, SIGINT, SIGQUIT, SIGCHLD, SIGUSR2, SIGUSR1, SIGWINCH]

    /// The pipe, with `up`'s handlers installed for ``handled`` (`installingHandlers` false: a pipe nothing
    /// writes to, for a supervisor driven by a test, which must not take the test process's signals).
    package init(installingHandlers: Bool = true) throws(CommandFailure) {
        guard let ends = try? Files.pipe(nonBlocking: true) else { throw CommandFailure("cannot create a pipe: \(Files.errorText())") }
        readEnd = ends.read
        writeEnd = ends.write
        guard installingHandlers else { return }
        signalPipeWriteEnd = ends.write
        Signals.handle(Self.handled, restart: true, with: forwardSignal)  // SA_NOCLDSTOP: no SIGCHLD when the probe pauses a generation
        Signals.ignore(SIGPIPE)
        Signals.unblockAll()  // a parent (a test runner's thread) may have blocked some
    }

    /// Puts `signal` into the pipe as the handler does: a test drives a supervisor's real signal path with it.
    package func deliver(_ signal: Int32) {
        var byte = UInt8(truncatingIfNeeded: signal)
        _ = write(writeEnd, &byte, 1)
    }

    /// The signals that arrived since the last call, in order.
    package func take() -> [Int32] {
        var buffer = [UInt8](repeating: 0, count: 64)
        var signals: [Int32] = []
        while true {
            let count = read(readEnd, &buffer, buffer.count)
            guard count > 0 else { return signals }
            signals += buffer[0..<count].map { Int32($0) }
        }
    }
}

/// A unix datagram socket that receives one generation's sd_notify messages (`NOTIFY_SOCKET`).
package final class NotifyReceiver {
    package let path: String
    package let descriptor: Int32

    package init(descriptor: Int32, path: String) {
        self.descriptor = descriptor
        self.path = path
    }

    /// A new socket at `path` (a stale file there is replaced).
    package convenience init(path: String) throws(CommandFailure) {
        do {
            self.init(descriptor: try Sys.unixDatagramReceiver(at: path), path: path)
        } catch where error.errno == .fileNameTooLong {
            throw CommandFailure("the notify socket path \(path) is too long; set TMPDIR to a shorter folder")
        } catch {
            throw CommandFailure("cannot create the notify socket \(path): \(error)")
        }
    }

    /// The assignments received since the last call (`READY=1`, `STATUS=…`), in order.
    package func take() -> [String] {
        var buffer = [UInt8](repeating: 0, count: 4096)
        var lines: [String] = []
        while true {
            let count = recv(descriptor, &buffer, buffer.count, Int32(MSG_DONTWAIT))
            guard count > 0 else { return lines }
            lines += String(decoding: buffer[0..<count], as: UTF8.self).split(separator: "\n").map(String.init)
        }
    }

    deinit {
        close(descriptor)
        unlink(path)
    }
}

/// Starting a generation with the sockets at 3, 4, … and nothing else inherited, and `portreuse run`'s program
/// under its filter. On Linux without a trampoline: `csystem_spawn_supervised` does in the child, before its one
/// `execve`, what a trampoline's own exec did (the death signal, LISTEN_PID, the seccomp filter), which saved 1.2
/// ms a start here when quiet and 3.7 ms (median) under the load of reload-bench.
package enum Spawner {
    /// Sets LISTEN_PID to the program's own pid where `up` cannot (not Linux): a shell that exports its pid
    /// (`$$`) and then becomes the program (`exec`), keeping that pid.
    package static let listenPIDWrapper = "LISTEN_PID=$$; export LISTEN_PID; exec \"$0\" \"$@\""

    /// Starts `arguments` (the first is the executable's path) in a process group of its own, with
    /// `descriptors` as 3, 4, …, stdin from /dev/null, stdout and stderr shared with `up`, default signal
    /// actions and an empty signal mask; on Linux it gets SIGTERM when the calling thread dies (a killed parent
    /// leaves nothing running unnoticed). Returns its pid. With `output`, its stdout and stderr go there instead.
    package static func spawn(
        _ arguments: [String], environment: [String], descriptors: [Int32], setListenPID: Bool, output: Int32? = nil
    ) throws(CommandFailure) -> pid_t {
        #if os(Linux)
        switch try start(arguments, environment: environment, descriptors: descriptors, setListenPID: setListenPID, output: output) {
        case .started(let pid, _): return pid
        case .refused(let code): throw CommandFailure("cannot start \(arguments[0]): \(code)")
        case .failed(let reason): throw CommandFailure(reason)
        }
        #else
        var spawn = ProcessSpawn((setListenPID ? ["/bin/sh", "-c", listenPIDWrapper] : []) + arguments, environment: environment)
        spawn.descriptors = descriptors
        spawn.newProcessGroup = true
        if let output {
            spawn.standardOutput = .descriptor(output)
            spawn.standardError = .descriptor(output)
        }
        do {
            return try spawn.start()
        } catch {
            throw CommandFailure("cannot start \(arguments[0]): \(error.errno.description)")
        }
        #endif
    }
}

extension Spawner {
    /// Why a generation cannot start under the bind filter here, or `nil` when it can: tried once on /bin/true
    /// (a container's seccomp profile may refuse the filter whatever the kernel).
    package static func filterRefusal() -> String? {
        #if os(Linux)
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
        #else
        return "seccomp is Linux only"
        #endif
    }
}

#if os(Linux)
extension Spawner {
    /// How a start went.
    package enum SupervisedStart {
        /// Started; under a filter, the caller holds the notification descriptor of its seccomp filter.
        case started(pid: pid_t, notification: Int32?)
        /// The kernel refused the filter (this errno): nothing was started.
        case refused(Errno)
        /// Nothing runs (why).
        case failed(String)
    }

    /// Starts the program as ``spawn(_:environment:descriptors:setListenPID:output:)`` does, under the bind filter,
    /// whose notification descriptor `up` gets back before the program runs.
    package static func spawnIntercepted(
        _ arguments: [String], environment: [String], descriptors: [Int32], setListenPID: Bool, output: Int32? = nil
    ) throws(CommandFailure) -> SupervisedStart {
        try start(arguments, environment: environment, descriptors: descriptors, setListenPID: setListenPID, output: output, filter: [csystem_syscall_bind()])
    }

    /// What the program shares with the process that starts it.
    package enum Attachment: Sendable {
        /// `up`'s generations: a process group of their own, SIGTERM when the starting thread dies, stdin from /dev/null.
        case supervised
        /// `portreuse run`'s program: the caller's process group, terminal, stdin and descriptors (those not
        /// close-on-exec), as if the caller had exec'd it; SIGTERM when `run` dies (its binds would fail with
        /// ENOSYS from then on: nobody answers them).
        case foreground
    }

    /// Starts `arguments` (from `path`, else from `arguments[0]`; no PATH search) with `descriptors` as 3, 4, …
    /// (and, supervised, nothing else above 2), default signal actions and an empty mask, under a seccomp filter
    /// for `filter` (system call numbers, at most 8) when it names any: one clone and one exec, the child's work
    /// done in C (`csystem_spawn_supervised`).
    package static func start(
        _ arguments: [String], path: String? = nil, environment: [String], descriptors: [Int32] = [], setListenPID: Bool = false,
        output: Int32? = nil, filter: [Int32] = [], attachment: Attachment = .supervised
    ) throws(CommandFailure) -> SupervisedStart {
        guard !arguments.isEmpty else { throw CommandFailure("nothing to start") }
        let firstFree = 3 + Int32(descriptors.count)
        guard descriptors.allSatisfy({ $0 >= firstFree }) else { throw CommandFailure("cannot start \(arguments[0]): a descriptor below \(firstFree)") }
        var notification: Int32 = -1
        var step: Int32 = 0
        let supervised = attachment == .supervised
        let (pid, failure) = (path ?? arguments[0]).withCString { path in
            Files.withCStrings(arguments) { argv in
                Files.withCStrings(environment) { envp in
                    argv.withUnsafeBufferPointer { argv in
                        envp.withUnsafeBufferPointer { envp in
                            descriptors.withUnsafeBufferPointer { mapped in
                                filter.withUnsafeBufferPointer { calls in
                                    var request = csystem_spawn_request(
                                        path: path, argv: argv.baseAddress, envp: envp.baseAddress,
                                        descriptors: mapped.baseAddress, count: Int32(mapped.count), keep_descriptors: supervised ? 0 : 1,
                                        output: output ?? -1, keep_stdin: supervised ? 0 : 1,
                                        new_process_group: supervised ? 1 : 0, death_signal: SIGTERM,
                                        set_listen_pid: setListenPID ? 1 : 0, filter_calls: calls.baseAddress, filter_count: Int32(calls.count))
                                    let pid = csystem_spawn_supervised(&request, &notification, &step)
                                    return (pid, errno)
                                }
                            }
                        }
                    }
                }
            }
        }
        guard pid < 0 else { return .started(pid: pid, notification: notification >= 0 ? notification : nil) }
        let code = Errno(rawValue: failure)
        switch Int(step) {
        case CSYSTEM_SPAWN_FILTER: return .refused(code)
        case CSYSTEM_SPAWN_PARENT_GONE: return .failed("cannot start \(arguments[0]): up is going away")
        case CSYSTEM_SPAWN_EXEC: return .failed("cannot start \(arguments[0]): \(code.description)")
        default: return .failed("cannot start \(arguments[0]): setting up its process failed (\(code.description))")
        }
    }
}
#endif
