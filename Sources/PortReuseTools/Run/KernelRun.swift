#if os(Linux)
import PortReuse
import SystemPackage
import PortReuseSystem
import PortReuseInterception

/// How `portreuse run` reaches a program's socket calls (`--intercept`).
package enum InterceptionMethod: String, CaseIterable, Sendable {
    /// The kernel path for static and Go programs, the shim for the rest.
    case auto
    /// seccomp user notification: any program, through the kernel.
    case kernel
    /// The LD_PRELOAD shim: dynamic programs that call libc's socket functions.
    case preload

    /// The method for a program, and why, for `--verbose`.
    package func resolve(for inspection: Program.Inspection) -> (method: InterceptionMethod, reason: String) {
        switch self {
        case .kernel: return (.kernel, "asked for with --intercept kernel")
        case .preload: return (.preload, "asked for with --intercept preload")
        case .auto:
            if let go = inspection.goExecutable {
                return (.kernel, "\(go.path) is a Go program (\(go.mark)): Go makes its system calls itself, not through libc")
            }
            if let via = inspection.staticExecutable {
                return (.kernel, "\(via) is statically linked: no dynamic loader runs to load the shim")
            }
            return (.preload, "a dynamically linked program that calls libc")
        }
    }
}

extension Program.Inspection {
    /// Whether the LD_PRELOAD shim can do the job: nothing static, no Go on the way.
    package var preloadReaches: Bool { staticExecutable == nil && goExecutable == nil }
}

extension ShimConfiguration {
    /// The same configuration for the kernel path; `log` gets one line per call changed when verbose, and the
    /// warnings the shim says whatever the verbosity (said once).
    package func interceptionRules(log: @escaping @Sendable (String) -> Void) -> InterceptionRules {
        var rules = InterceptionRules(
            policy: policy,
            bind: bind,
            source: source.map { EndpointRewrite(ip: $0.ip, port: $0.port == 0 ? nil : $0.port) },
            transparent: transparent,
            log: verbose ? log : nil)
        rules.warn = log
        return rules
    }
}

/// `portreuse run` through the kernel: the child installs the seccomp filter between clone and exec
/// (``Spawner/start(_:path:environment:descriptors:setListenPID:output:filter:attachment:)``) and hands the
/// notification descriptor back; this process stays its parent, answers its socket calls on a thread
/// (``SocketCallInterceptor``), forwards the signals a supervisor forwards and ends with the program's status.
package enum KernelRun {
    /// How it ended.
    package enum Outcome: Equatable {
        /// The program ran and ended with this shell status (128 + the signal when one killed it).
        case exited(Int32)
        /// The filter could not be installed: the program never started.
        case refused(Errno)
    }

    /// The signals forwarded to the program.
    package static let forwardedSignals = [Signal.terminate, Signal.interrupt, Signal.hangUp, Signal.quit]

    /// Why this kernel cannot run the kernel path, or `nil`: pidfd_getfd (Linux 5.6) is probed on ourselves.
    package static func unsupportedReason() -> String? {
        do {
            let copy = try Processes.duplicate(.standardError, ofProcess: Processes.currentID)
            Files.close(copy)
            return nil
        } catch let error where error.errno == .noFunction || error.errno == .invalidArgument {
            return "this kernel lacks pidfd_getfd (Linux 5.6+ is needed): \(error)"
        } catch {
            return nil  // stderr closed, say: the call exists
        }
    }

    /// Starts `arguments` (arguments[0] as the user wrote it, found at `path`) under the filter and supervises it
    /// to its end.
    package static func run(_ arguments: [String], path: String, rules: InterceptionRules, announce: (String) -> Void) throws(CommandFailure) -> Outcome {
        // Every thread of ours blocks the forwarded signals and SIGCHLD (the interceptor's thread inherits this
        // mask); this thread takes them with sigtimedwait. The child gets an empty mask (Spawner).
        var waited = Signals.Waited(forwardedSignals + [Signal.child])
        let restorePipe = Signals.ignoringBrokenPipes()  // a closed stderr must not kill the supervisor of the program's binds
        let restore = {
            // The shim may run next, by execve: it must not inherit a blocked mask or an ignored SIGPIPE.
            restorePipe()
            waited.restore()
        }

        let pid: Int32, notification: Descriptor
        switch try Spawner.start(arguments, path: path, environment: ProcessSpawn.currentEnvironment(), filter: rules.systemCalls, attachment: .foreground) {
        case .started(let started, let descriptor?):
            (pid, notification) = (started, descriptor)
        case .started(let started, nil):
            Processes.kill(started, Signal.kill)
            _ = waitForever(started)
            throw CommandFailure("\(path) started without handing over its seccomp descriptor", exitCode: 126)
        case .refused(let code):
            restore()
            return .refused(code)
        case .failed(let reason):
            throw CommandFailure(reason, exitCode: 126)
        }

        let interceptor: SocketCallInterceptor
        do {
            interceptor = try SocketCallInterceptor(notificationDescriptor: notification, rules: rules)
            try interceptor.start()
        } catch {
            Processes.kill(pid, Signal.kill)
            _ = waitForever(pid)
            throw CommandFailure("cannot answer the program's system calls: \(error)")
        }

        let status = supervise(pid, signals: &waited)
        if !interceptor.stop(timeout: 2) { announce("the interceptor did not stop within 2 s") }
        return .exited(status)
    }

    /// Forwards signals to `pid` until it ends; its shell status.
    private static func supervise(_ pid: Int32, signals: inout Signals.Waited) -> Int32 {
        while true {
            do {
                if let (_, status) = try Processes.wait(pid, noHang: true) { return status.shellStatus }
            } catch {
                return 1  // not our child any more: nothing left to wait for
            }
            guard let (number, fromKernel) = signals.next(timeout: 1), number != Signal.child else { continue }
            // A terminal's signal (SI_KERNEL) went to the whole foreground process group, the program included.
            if fromKernel { continue }
            Processes.kill(pid, number)
        }
    }

    private static func waitForever(_ pid: Int32) -> Int32 {
        while true {
            do {
                if let (_, status) = try Processes.wait(pid, noHang: false) { return status.shellStatus }
            } catch {
                return 1
            }
        }
    }
}
#endif
