import Glibc
import SystemPackage
import PortReuse

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

/// Starting a generation: `posix_spawn` with the sockets at 3, 4, … and nothing else inherited.
package enum Spawner {
    /// Sets LISTEN_PID to the program's own pid, which only the program's process knows: a shell that
    /// exports its pid (`$$`) and then becomes the program (`exec`), keeping that pid.
    package static let listenPIDWrapper = "LISTEN_PID=$$; export LISTEN_PID; exec \"$0\" \"$@\""

    /// The C trampoline's file name, next to the portreuse executable.
    package static let cTrampoline = "portreuse-intercept-exec"

    /// The C trampoline beside the running executable (Linux), through which every spawn starts: it sets the
    /// death signal (a killed parent leaves nothing running unnoticed), LISTEN_PID, and the bind filter when asked.
    package static let cTrampolinePath: String? = {
        #if os(Linux)
        guard let own = try? Processes.currentExecutable(), let slash = own.lastIndex(of: "/") else { return nil }
        let helper = String(own[..<slash]) + "/" + cTrampoline
        return access(helper, X_OK) == 0 ? helper : nil
        #else
        return nil
        #endif
    }()

    /// Starts `arguments` (the first is the executable's path) in a process group of its own, with
    /// `descriptors` as 3, 4, …, stdin from /dev/null, stdout and stderr shared with `up`, default signal
    /// actions and an empty signal mask; through the C trampoline where there is one, so that it gets SIGTERM
    /// when its parent dies. Returns its pid. With `output`, its stdout and stderr go there instead.
    package static func spawn(
        _ arguments: [String], environment: [String], descriptors: [Int32], setListenPID: Bool, output: Int32? = nil
    ) throws(CommandFailure) -> pid_t {
        let command: [String]
        if let trampoline = cTrampolinePath {
            command = [trampoline] + (setListenPID ? ["--listen-pid"] : []) + ["-"] + arguments
        } else {
            command = (setListenPID ? ["/bin/sh", "-c", listenPIDWrapper] : []) + arguments
        }
        var spawn = ProcessSpawn(command, environment: environment)
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
    }
}

extension Spawner {
    /// Why a generation cannot start under the bind filter here, or `nil` when it can: the C trampoline is
    /// tried once on /bin/true (a container's seccomp profile may refuse the filter whatever the kernel).
    package static func filterRefusal() -> String? {
        #if os(Linux)
        guard let trampoline = cTrampolinePath else { return "\(cTrampoline) is missing beside portreuse" }
        if let reason = KernelRun.unsupportedReason() { return reason }
        switch try? spawnIntercepted(["/bin/true"], executable: trampoline, environment: [], descriptors: [], setListenPID: false) {
        case .started(let pid, let notification)?:
            Files.close(notification)
            _ = try? Processes.wait(pid, noHang: false)
            return nil
        case .refused(let code)?: return "the kernel refused the seccomp filter (\(code))"
        case .failed(let reason)?: return reason
        case nil: return "cannot start \(trampoline)"
        }
        #else
        return "seccomp is Linux only"
        #endif
    }
}

#if os(Linux)
extension Spawner {
    /// How an intercepted start went.
    package enum InterceptedStart {
        /// Started; `up` holds the notification descriptor of its seccomp filter.
        case started(pid: pid_t, notification: Int32)
        /// The kernel refused the filter (this errno): nothing was started.
        case refused(Errno)
        /// The trampoline did not answer as it should (why): nothing runs.
        case failed(String)
    }

    /// Starts the program as ``spawn(_:environment:descriptors:setListenPID:output:)`` does, but through the
    /// trampoline `executable intercept-exec` (our own binary), which installs the bind filter, hands its
    /// notification descriptor back over a socket pair (at the descriptor after the sockets; closed before the
    /// program runs), and execs the program with the same pid.
    package static func spawnIntercepted(
        _ arguments: [String], executable: String, environment: [String], descriptors: [Int32], setListenPID: Bool
    ) throws(CommandFailure) -> InterceptedStart {
        var ends: (Int32, Int32)
        do { ends = try Files.socketPair() } catch { throw CommandFailure("cannot create a socket pair for the trampoline: \(error)") }
        defer { Files.close(ends.0) }
        // Above every target (3 … 3 + count), so that no dup2 of the spawn lands on it before it is moved.
        let moved = fcntl(ends.1, F_DUPFD_CLOEXEC, 4 + Int32(descriptors.count))
        Files.close(ends.1)
        guard moved >= 0 else { throw CommandFailure("cannot move the trampoline's socket: \(Files.errorText())") }
        ends.1 = moved
        let report = 3 + descriptors.count
        // The C trampoline takes `[--listen-pid] REPORT_FD PROGRAM…` and sets LISTEN_PID itself; our own binary,
        // `intercept-exec --report-fd N -- PROGRAM…`, through the sh wrapper.
        let trampoline: [String]
        if executable.hasSuffix("/" + cTrampoline) {
            trampoline = [executable] + (setListenPID ? ["--listen-pid"] : []) + ["\(report)"] + arguments
        } else {
            trampoline = [executable, KernelRun.trampolineCommand, "--report-fd", "\(report)", "--"]
                + (setListenPID ? ["/bin/sh", "-c", listenPIDWrapper] : []) + arguments
        }
        var spawn = ProcessSpawn(trampoline, environment: environment)
        spawn.descriptors = descriptors + [ends.1]
        spawn.newProcessGroup = true
        let pid: pid_t
        do { pid = try spawn.start() } catch {
            Files.close(ends.1)
            throw CommandFailure("cannot start \(arguments[0]): \(error.errno.description)")
        }
        Files.close(ends.1)
        // The trampoline answers at once: a descriptor (tag 0), or the errno of the filter's installation.
        var entry = pollfd(fd: ends.0, events: Int16(POLLIN), revents: 0)
        var ready: Int32
        repeat { ready = poll(&entry, 1, 10_000) } while ready < 0 && errno == EINTR
        let message = ready > 0 ? ((try? Files.receiveDescriptor(over: ends.0)) ?? nil) : nil
        if let message, message.tag == 0, let notification = message.descriptor {
            _ = fcntl(notification, F_SETFD, FD_CLOEXEC)
            return .started(pid: pid, notification: notification)
        }
        if let fd = message?.descriptor { Files.close(fd) }
        if message == nil { _ = try? Processes.kill(pid, SIGKILL) }
        // The trampoline exits at once (126) after a refusal: reaped here, never seen by the supervisor.
        _ = try? Processes.wait(pid, noHang: false)
        if let tag = message?.tag, tag != 0 { return .refused(Errno(rawValue: Int32(tag))) }
        return .failed("the trampoline \(executable) \(KernelRun.trampolineCommand) did not hand over its seccomp descriptor")
    }
}
#endif
