import PortReuse
import PortReuseSystem

/// The server adopted with `--adopt`, as `up` holds it: its pidfd, through which every signal goes (no pid reuse
/// can misdirect one). Its drain is the state machine's (``AdoptedRecord``).
package final class AdoptedProcess {
    package let adoption: Adoption

    package init(_ adoption: Adoption) { self.adoption = adoption }

    var label: String { "adopted pid \(adoption.pid) (\(adoption.name))" }

    /// Whether it has exited (its pidfd is readable then).
    var hasExited: Bool {
        Files.readable([adoption.pidfd], milliseconds: 0)[0]
    }

    /// What pause and look at for --stop-when-idle: its process group when it leads one, else itself.
    var pauseTarget: Int32 { Processes.stat(of: adoption.pid)?.processGroup == adoption.pid ? -adoption.pid : adoption.pid }
}

extension Supervisor {
    /// Carries out ``UpMachine/Action/signalAdopted(_:)``.
    func signalAdopted(_ signal: Int32) {
        guard let adopted else { return }
        _ = try? Processes.signal(adopted.adoption.pidfd, signal)  // ESRCH: it exited meanwhile, which the next turn sees
    }

    /// Carries out ``UpMachine/Action/stopAdoptedWhenIdle``: its stop signal if it holds no connection now.
    func stopAdoptedWhenIdle() -> [UpMachine.Event] {
        guard let adopted,
            GenerationProbe.signalWhenIdle(pausing: adopted.pauseTarget, main: adopted.adoption.pid, signal: configuration.stopSignal)
        else { return [] }
        return [.adoptedStoppedWhenIdle]
    }

    /// Carries out ``UpMachine/Action/releaseAdopted``: its pidfd closes.
    func releaseAdopted() {
        guard let adopted else { return }
        Files.close(adopted.adoption.pidfd)
        self.adopted = nil
    }
}
