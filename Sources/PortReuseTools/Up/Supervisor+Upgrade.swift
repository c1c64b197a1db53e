import Glibc
import PortReuse

/// Upgrading `up` itself in place (SIGUSR2, `up upgrade`): same pid, same sockets, same generations.
extension Supervisor {
    /// Replaces this process's program with the (possibly new) `portreuse` binary, keeping the pid, the
    /// sockets and the generations: checks first that the binary runs, then hands its state over in a file.
    func upgrade() {
        guard !state.isStopping else { return logger.info("upgrade ignored: stopping") }
        if let adopted {
            logger.error("upgrade refused while \(adopted.label) hands over (its pidfd does not cross exec); try again once it exited")
            upgradeFailures += 1
            statusChanged = true
            return
        }
        let binary = UpgradeHandover.executablePath
        logger.info("upgrading: checking \(binary)")
        guard let version = UpgradeHandover.check(binary: binary) else {
            logger.error("upgrade failed: \(binary) --version did not succeed within 5 s; this process keeps running")
            upgradeFailures += 1
            statusChanged = true
            return
        }
        // Signal handlers reset to their defaults at execve: a SIGHUP or SIGTERM in that window would kill up and
        // orphan the program. So the signals are blocked from here on (the new up unblocks them once its handlers
        // are in place), and those already in the signal pipe, which does not survive exec, are raised again:
        // blocked, they stay pending across execve and reach the new up's handlers.
        Signals.setBlocked(SignalPipe.handled, true)
        for signal in Set(signals.take()) where signal != SIGCHLD && signal != SIGUSR2 { raise(signal) }
        do throws(CommandFailure) {
            let state = handover(upgrades: upgrades + 1)
            let path = try state.write()
            if let refusal = UpgradeHandover.preflight(binary: binary, path: path) {
                unlink(path)
                throw CommandFailure("\(binary) cannot take over: \(refusal)")
            }
            logger.info("upgrading to \(version) with \(generations.count) generation(s) and \(sockets.count) socket(s) kept")
            // An answer cut in half by exec would leave a bind waiting for ever: the threads end first.
            for generation in generations { generation.interceptor?.stop(timeout: 1) }
            LogWriter.standardError.flush(timeout: 1)  // the writer thread does not survive exec
            defer { restartInterceptors() }  // reached only when exec failed
            try state.execute(binary: binary, arguments: configuration.arguments, path: path)
        } catch {
            logger.error("upgrade failed: \(error.message); this process keeps running")
            upgradeFailures += 1
            statusChanged = true
        }
        Signals.setBlocked(SignalPipe.handled, false)  // what arrived meanwhile reaches the handlers now
    }

    /// Everything the next `up` of this process needs to carry on exactly where this one is.
    package func handover(upgrades: Int) -> UpgradeHandover {
        var records = generations.map(\.record)
        for index in records.indices {
            records[index].notifyDescriptor = generations[index].notify?.descriptor
            records[index].interceptDescriptor = generations[index].interceptor?.notificationDescriptor
        }
        return UpgradeHandover(
            sockets: sockets.map { .init(descriptor: $0.descriptor, name: $0.name, backlog: $0.backlog) }, generations: records, state: state,
            nextNumber: nextNumber, reloadQueued: reloadQueued, failures: failures, history: history,
            upgrades: upgrades, upgradeFailures: upgradeFailures, startedWall: startedWall, runtimeFolder: runtimeFolder,
            groups: groups.isEmpty ? nil : groups, steeredDescriptors: groups.isEmpty ? nil : steeredDescriptors.sorted(),
            spares: groups.isEmpty ? nil : spares)
    }

    /// After a failed exec: new threads answer the generations' binds (on duplicates of the descriptors; the
    /// stopped interceptors close theirs).
    private func restartInterceptors() {
        #if os(Linux)
        for generation in generations {
            guard let old = generation.interceptor else { continue }
            let copy = fcntl(old.notificationDescriptor, F_DUPFD_CLOEXEC, 0)
            guard copy >= 0, let fresh = try? SocketCallInterceptor(notificationDescriptor: copy, rules: interceptionRules(number: generation.number, sockets: generation.record.sockets ?? sockets.map(\.descriptor))),
                (try? fresh.start()) != nil
            else {
                logger.error("\(generation.label): cannot answer its binds again after the failed upgrade")
                continue
            }
            generation.interceptor = fresh
        }
        #endif
    }

    /// Takes the generations and the state over from the previous `up` of this process.
    package func adopt(_ handover: UpgradeHandover) {
        enter(handover.state)
        groups = handover.groups ?? [:]
        steeredDescriptors = Set(handover.steeredDescriptors ?? [])
        spares = handover.spares ?? [:]
        for descriptor in steeredDescriptors.union(groups.values.flatMap(\.members)) where descriptor >= 0 {
            _ = fcntl(descriptor, F_SETFD, FD_CLOEXEC)
        }
        nextNumber = handover.nextNumber
        reloadQueued = handover.reloadQueued
        failures = handover.failures
        history = handover.history
        upgrades = handover.upgrades
        upgradeFailures = handover.upgradeFailures
        generations = handover.generations.map { record in
            let notify = record.notifyDescriptor.flatMap { try? NotifyReceiver(adopting: $0, path: record.notifyPath ?? "") }
            let generation = Generation(record: record, notify: notify)
            #if os(Linux)
            if let descriptor = record.interceptDescriptor, fcntl(descriptor, F_SETFD, FD_CLOEXEC) == 0 {
                do throws(SystemError) {
                    let interceptor = try SocketCallInterceptor(notificationDescriptor: descriptor, rules: interceptionRules(number: record.number, sockets: record.sockets ?? sockets.map(\.descriptor)))
                    try interceptor.start()
                    generation.interceptor = interceptor
                } catch {
                    logger.error("\(generation.label): cannot answer its binds after the upgrade: \(error); its next bind fails with ENOSYS")
                }
            }
            #endif
            generation.record.interceptDescriptor = nil
            return generation
        }
        logger.info("upgraded: \(UpgradeHandover.executablePath) runs with \(generations.count) generation(s) and \(sockets.count) socket(s)")
        if case .backingOff(let until) = state {
            let now = Processes.monotonicNanoseconds
            logger.info("restarting the program in \(Seconds(until > now ? Double(until - now) / 1e9 : 0)), as planned before the upgrade")
        }
        if let serving = generations.first(where: { $0.phase == .ready }) {
            _ = try? Readiness.notify(.ready, .status(statusLine(serving: serving, draining: generations.filter { $0.phase == .draining }.count)))
        }
    }
}
