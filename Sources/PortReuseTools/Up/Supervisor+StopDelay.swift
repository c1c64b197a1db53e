import PortReuse

/// `--stop-delay`: the preStop sleep, built in. Kubernetes removes a terminating pod from its endpoints while
/// SIGTERM is already on its way; connections keep arriving for a few seconds. Between SIGTERM and the drain,
/// `up` says 503 on `/readyz` and lets every generation serve on (``SupervisorState/delayingStop(until:exitCode:)``).
extension Supervisor {
    /// SIGTERM or SIGINT: with a stop delay and a generation that serves, delay the stop; a second one during
    /// the delay skips the rest of it, a third one kills (``stop(because:exitCode:)``).
    func stopAfterDelay(because reason: String) {
        switch state {
        case .delayingStop:
            logger.info("\(reason) again: skipping the rest of --stop-delay")
            stop(because: reason)
        case .running, .backingOff:
            let delay = configuration.stopDelay
            guard delay > 0, generations.contains(where: { $0.phase == .ready }) else { return stop(because: reason) }
            enter(.delayingStop(until: Processes.monotonicNanoseconds + Seconds(delay).nanoseconds, exitCode: 0))
            _ = try? Readiness.notify(.status("stopping in \(Seconds(delay)) (--stop-delay); serving meanwhile"))
            logger.info("stopping (\(reason)) in \(Seconds(delay)) (--stop-delay): /readyz answers 503, the generations serve on, reloads are refused")
        case .stopping:
            stop(because: reason)
        }
    }

    /// The end of the stop delay, or its early end once nothing serves or starts (a crash during the delay).
    func tickStopDelay(now: UInt64) {
        guard case .delayingStop(let until, let exitCode) = state else { return }
        if now >= until {
            stop(because: "--stop-delay \(Seconds(configuration.stopDelay)) is over", exitCode: exitCode)
        } else if !generations.contains(where: { $0.phase.isLive }) {
            stop(because: "no generation serves any more during --stop-delay", exitCode: exitCode)
        }
    }
}
