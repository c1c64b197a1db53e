import Glibc
import PortReuse
import PortReuseSystem

/// The server adopted with `--adopt`: stopped once generation 1 is ready, watched until it is gone.
package final class AdoptedProcess {
    package let adoption: Adoption
    /// When its stop signal went, once it did (monotonic ns): it is killed `--grace` later if still running.
    var stopSent: UInt64?
    /// `--stop-when-idle`: the stop signal is still to send, at the latest at this time.
    var idleStopBy: UInt64?
    var killed = false

    package init(_ adoption: Adoption) { self.adoption = adoption }

    var label: String { "adopted pid \(adoption.pid) (\(adoption.name))" }

    /// Whether it has exited (its pidfd is readable then).
    var hasExited: Bool {
        var entry = pollfd(fd: adoption.pidfd, events: Int16(POLLIN), revents: 0)
        return poll(&entry, 1, 0) > 0
    }

    /// What pause and look at for --stop-when-idle: its process group when it leads one, else itself.
    var pauseTarget: pid_t { Processes.stat(of: adoption.pid)?.processGroup == adoption.pid ? -adoption.pid : adoption.pid }
}

extension Supervisor {
    /// A generation is ready: the adopted server gets its stop signal (at a moment it holds no connection, with
    /// --stop-when-idle), through its pidfd.
    func stopAdopted() {
        guard let adopted else { return }
        if let wait = configuration.stopWhenIdle {
            adopted.idleStopBy = Processes.monotonicNanoseconds + UInt64(wait * 1e9)
            logger.info("\(adopted.label): \(SignalName(configuration.stopSignal)) once it holds no connection (within \(Seconds(wait)))")
        } else {
            sendStop(to: adopted)
        }
    }

    /// `up` stops: an adopted server that a ready generation was taking over from gets its stop signal now; one
    /// that no generation replaced keeps serving, and `up` lets it go.
    func releaseAdopted() {
        guard let adopted, adopted.stopSent == nil else { return }
        if adopted.idleStopBy != nil {
            adopted.idleStopBy = nil
            sendStop(to: adopted)
        } else {
            logger.info("\(adopted.label) keeps serving: no generation took over from it")
            Files.close(adopted.adoption.pidfd)
            self.adopted = nil
        }
    }

    private func sendStop(to adopted: AdoptedProcess) {
        adopted.stopSent = Processes.monotonicNanoseconds
        _ = try? Processes.signal(adopted.adoption.pidfd, configuration.stopSignal)
        logger.info("\(adopted.label) hands over: sent \(SignalName(configuration.stopSignal)), killed if still running in \(Seconds(configuration.grace))")
    }

    /// Its exit, its --stop-when-idle moment, and its grace.
    func tickAdopted(now: UInt64) {
        guard let adopted else { return }
        if adopted.hasExited {
            logger.info("\(adopted.label) exited\(adopted.stopSent == nil ? " by itself" : "")")
            Files.close(adopted.adoption.pidfd)
            self.adopted = nil
            return
        }
        if let by = adopted.idleStopBy {
            if GenerationProbe.signalWhenIdle(pausing: adopted.pauseTarget, main: adopted.adoption.pid, signal: configuration.stopSignal) {
                adopted.idleStopBy = nil
                adopted.stopSent = now
                logger.info("\(adopted.label) holds no connection: sent \(SignalName(configuration.stopSignal))")
            } else if now >= by {
                adopted.idleStopBy = nil
                sendStop(to: adopted)
            }
        }
        if let sent = adopted.stopSent, !adopted.killed, now >= sent + UInt64(configuration.grace * 1e9) {
            _ = try? Processes.signal(adopted.adoption.pidfd, SIGKILL)
            adopted.killed = true
            logger.warning("\(adopted.label) still running \(Seconds(configuration.grace)) after \(SignalName(configuration.stopSignal)): killed")
        }
    }
}
