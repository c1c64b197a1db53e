import PortReuse
import PortReuseSystem
import PortReuseInterception

/// Upgrading `up` itself in place (SIGUSR2, `up upgrade`): same pid, same sockets, same generations.
extension Supervisor {
    /// Replaces this process's program with the (possibly new) `portreuse` binary, keeping the pid, the
    /// sockets and the generations: checks first that the binary runs, then hands its state over in a file.
    /// Carries out ``UpMachine/Action/upgrade``; returns (whether it did not fail) only when the exec did not happen.
    func upgrade() -> Bool {
        if let adopted {
            logger.error("upgrade refused while \(adopted.label) hands over (its pidfd does not cross exec); try again once it exited")
            return false
        }
        let binary = UpgradeHandover.executablePath
        logger.info("upgrading: checking \(binary)")
        upgradingTo = binary
        writeStatus()
        defer {  // reached only when the upgrade failed
            upgradingTo = nil
            writeStatus()
        }
        guard let version = UpgradeHandover.check(binary: binary) else {
            logger.error("upgrade failed: \(binary) --version did not succeed within 5 s; this process keeps running")
            return false
        }
        // Signal handlers reset to their defaults at execve: a SIGHUP or SIGTERM in that window would kill up and
        // orphan the program. So the signals are blocked from here on (the new up unblocks them once its handlers
        // are in place), and those already in the signal pipe, which does not survive exec, are raised again:
        // blocked, they stay pending across execve and reach the new up's handlers.
        Signals.setBlocked(SignalPipe.handled, true)
        for signal in Set(signals.take()) where signal != Signal.child && signal != Signal.user2 { Signals.raise(signal) }
        do throws(CommandFailure) {
            let state = handover(upgrades: record.upgrades + 1)
            let path = try state.write()
            if let refusal = UpgradeHandover.preflight(binary: binary, path: path) {
                Files.remove(path)
                throw CommandFailure("\(binary) cannot take over: \(refusal)")
            }
            logger.info("upgrading to \(version) with \(generations.count) generation(s) and \(sockets.count) socket(s) kept")
            // An answer cut in half by exec would leave a bind waiting for ever: the threads end first.
            for held in resources.values { held.interceptor?.stop(timeout: 1) }
            LogWriter.standardError.flush(timeout: 1)  // the writer thread does not survive exec
            defer { restartInterceptors() }  // reached only when exec failed
            try state.execute(binary: binary, arguments: configuration.arguments, path: path)
        } catch {
            logger.error("upgrade failed: \(error.message); this process keeps running")
        }
        Signals.setBlocked(SignalPipe.handled, false)  // what arrived meanwhile reaches the handlers now
        return false
    }

    /// Everything the next `up` of this process needs to carry on exactly where this one is.
    package func handover(upgrades: Int) -> UpgradeHandover {
        var carried = record
        carried.upgrades = upgrades
        for index in carried.generations.indices {
            let held = resources[carried.generations[index].number]
            carried.generations[index].notifyDescriptor = held?.notify?.descriptor
            carried.generations[index].interceptDescriptor = held?.interceptor?.notificationDescriptor
        }
        return UpgradeHandover(
            sockets: sockets.map { .init(descriptor: $0.descriptor, name: $0.name, backlog: $0.backlog) }, record: carried,
            startedWall: startedWall, runtimeFolder: runtimeFolder,
            groups: groups.isEmpty ? nil : groups, steeredDescriptors: groups.isEmpty ? nil : steeredDescriptors.sorted(),
            spares: groups.isEmpty ? nil : spares, steeringMaps: steeringMaps.isEmpty ? nil : steeringMaps)
    }

    /// After a failed exec: new threads answer the generations' binds (on duplicates of the descriptors; the
    /// stopped interceptors close theirs).
    private func restartInterceptors() {
        #if os(Linux)
        for generation in generations {
            guard let held = resources[generation.number], let old = held.interceptor else { continue }
            guard let copy = try? Files.duplicate(old.notificationDescriptor, atLeast: .standardInput), let fresh = try? SocketCallInterceptor(notificationDescriptor: copy, rules: interceptionRules(number: generation.number, sockets: generation.sockets ?? sockets.map(\.descriptor))),
                (try? fresh.start()) != nil
            else {
                logger.error("\(generation.label): cannot answer its binds again after the failed upgrade")
                continue
            }
            held.interceptor = fresh
        }
        #endif
    }

    /// Takes the generations and the state over from the previous `up` of this process.
    package func adopt(_ handover: UpgradeHandover) {
        machine = UpMachine(settings: machine.settings, record: handover.record)
        groups = handover.groups ?? [:]
        steeredDescriptors = Set(handover.steeredDescriptors ?? [])
        spares = handover.spares ?? [:]
        steeringMaps = handover.steeringMaps ?? [:]
        for descriptor in steeredDescriptors.union(groups.values.flatMap(\.members)).union(steeringMaps.values.map(\.descriptor)) where descriptor != .invalid {
            Files.setCloseOnExec(descriptor)
        }
        for record in handover.record.generations {
            let notify = record.notifyDescriptor.flatMap { try? NotifyReceiver(adopting: $0, path: record.notifyPath ?? "") }
            let held = Resources(notify: notify)
            #if os(Linux)
            if let descriptor = record.interceptDescriptor, Files.setCloseOnExec(descriptor) {
                do throws(SystemError) {
                    let interceptor = try SocketCallInterceptor(notificationDescriptor: descriptor, rules: interceptionRules(number: record.number, sockets: record.sockets ?? sockets.map(\.descriptor)))
                    try interceptor.start()
                    held.interceptor = interceptor
                } catch {
                    logger.error("\(record.label): cannot answer its binds after the upgrade: \(error); its next bind fails with ENOSYS")
                }
            }
            #endif
            resources[record.number] = held
        }
        logger.info("upgraded: \(UpgradeHandover.executablePath) runs with \(generations.count) generation(s) and \(sockets.count) socket(s)")
        if case .backingOff(let until) = state {
            let now = clock()
            logger.info("restarting the program in \(Seconds(until > now ? Double(until - now) / 1e9 : 0)), as planned before the upgrade")
        }
        if let serving = generations.first(where: { $0.phase == .ready }) {
            _ = try? Readiness.notify(.ready, .status(UpMachine.statusLine(serving: serving, draining: generations.filter { $0.phase == .draining }.count)))
        }
    }
}
