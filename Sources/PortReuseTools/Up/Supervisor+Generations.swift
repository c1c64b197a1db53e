import Glibc
import PortReuse

/// Starting generations, making them ready, stopping them; the reload and stop requests.
extension Supervisor {
    package func startGeneration(_ reason: StartReason) {
        let number = nextNumber
        nextNumber += 1
        if reason == .restart { counters.restarts += 1 }
        let now = Processes.monotonicNanoseconds
        for index in sockets.indices {
            // A steered socket that stopped listening is replaced by a new one, not opened again in place.
            if groups[index] == nil, let repaired = sockets[index].refresh() { logger.warning("\(repaired)") }
            if configuration.dialect.nonBlockingSockets, sockets[index].transport == .tcp {
                let flags = fcntl(sockets[index].descriptor, F_GETFL)
                if flags >= 0 && flags & O_NONBLOCK == 0 { _ = fcntl(sockets[index].descriptor, F_SETFL, flags | O_NONBLOCK) }
            }
        }
        let descriptors = groups.isEmpty ? sockets.map(\.descriptor) : socketsForNewGeneration(number: number)
        do throws(CommandFailure) {
            let notify = try NotifyReceiver(path: "\(runtimeFolder)/notify-\(number).sock")
            let (pid, interceptor) = try spawn(number: number, descriptors: descriptors, environment: environment(number: number, notifyPath: notify.path))
            var record = GenerationRecord(
                number: number, pid: pid, reason: reason, startedAt: Processes.wallClockSeconds, startedMonotonic: now,
                deadline: now + UInt64(configuration.readyTimeout * 1e9))
            record.notifyPath = notify.path
            if !groups.isEmpty { record.sockets = descriptors }
            let generation = Generation(record: record, notify: notify)
            generation.interceptor = interceptor
            // The reload's window opens once the program runs (the spawn returns after its exec): what the read of
            // /proc/net/netstat costs does not hold up the spawn, and nothing the program did is missed.
            if reason == .reload { generation.reloadWatch = ReloadWatch.start() }
            generations.append(generation)
            logger.info("\(generation.label) started (\(reason.rawValue)): \(configuration.command.joined(separator: " "))")
            steer()
        } catch {
            logger.error("cannot start generation \(number): \(error.message)")
            failures.inARow += 1
            retireUnusedSockets()
            afterFailure()
        }
        statusChanged = true
    }

    /// Starts the program: under the bind filter when it can, else with LISTEN_FDS only (as before the filter).
    private func spawn(number: Int, descriptors: [Int32], environment: [String]) throws(CommandFailure) -> (pid_t, SocketCallInterceptor?) {
        let setListenPID = configuration.reusePortEnvironment == nil && configuration.dialect.setsListenPID
        #if os(Linux)
        if configuration.intercepts, interceptionOff == nil, !sockets.isEmpty {
            switch try Spawner.spawnIntercepted(configuration.command, environment: environment, descriptors: descriptors, setListenPID: setListenPID) {
            case .started(let pid, let notification?):
                do {
                    let interceptor = try SocketCallInterceptor(notificationDescriptor: notification, rules: interceptionRules(number: number, sockets: descriptors))
                    try interceptor.start()
                    return (pid, interceptor)
                } catch {
                    // Without an answer its binds would wait for ever: this generation cannot run.
                    _ = try? Processes.kill(-pid, SIGKILL)
                    _ = try? Processes.wait(pid, noHang: false)
                    throw CommandFailure("cannot answer the binds of generation \(number): \(error)")
                }
            case .started(let pid, nil):
                _ = try? Processes.kill(-pid, SIGKILL)
                _ = try? Processes.wait(pid, noHang: false)
                throw CommandFailure("generation \(number) started without handing over its seccomp descriptor")
            case .failed(let reason):
                throw CommandFailure(reason)
            case .refused(let code):
                interceptionOff = "the kernel refused the seccomp filter (\(code))"
                let binds = code == .resourceBusy
                    ? "another seccomp supervisor answers the calls of up's process tree (EBUSY), so a program that binds a held address by itself is "
                        + "answered by that one, not by up: it fails with EADDRINUSE, or, where that supervisor makes its socket shareable (portreuse run "
                        + "--policy shared), gets a socket of its own beside up's that up does not steer to"
                    : "a program that binds them by itself fails with EADDRINUSE"
                logger.warning(.init(stringLiteral: "\(interceptionOff!): generations get the sockets as LISTEN_FDS only; " + binds))
            }
        }
        #endif
        let pid = try Spawner.spawn(configuration.command, environment: environment, descriptors: descriptors, setListenPID: setListenPID)
        return (pid, nil)
    }

    #if os(Linux)
    /// The rules for generation `number`: swap its sockets (`sockets`, one per held socket) in; every line goes to
    /// the log.
    func interceptionRules(number: Int, sockets descriptors: [Int32]) -> InterceptionRules {
        let logger = self.logger
        // Generations that share sockets share their swap, which tracks the sockets' blocking mode between them.
        let swap = swaps[descriptors] ?? SocketSwap(held: zip(sockets, descriptors).map { socket, descriptor in
            SocketSwap.Held(descriptor: descriptor, name: socket.name, transport: socket.transport, address: socket.address,
                            dualStack: HeldSocket.isDualStack(descriptor, socket.address))
        })
        swaps[descriptors] = swap
        return .swapping(swap) { line in logger.info("generation \(number): \(line)") }
    }
    #endif

    /// The program's environment: ours without any dialect's variables (``Dialect/isDialectVariable(_:)``: a stray
    /// one `up` inherited never reaches a program) nor those meant for `up` itself, then the chosen dialect's for
    /// this generation (systemd's LISTEN_PID and LISTEN_PIDFDID are set by the spawn, in the program's own process).
    func environment(number: Int, notifyPath: String) -> [String] {
        let ours = ["NOTIFY_SOCKET", UpgradeHandover.variable]
        var entries = (configuration.reusePortEnvironment ?? ProcessSpawn.currentEnvironment()).filter { entry in
            !Dialect.isDialectVariable(entry) && !ours.contains { entry.hasPrefix($0 + "=") }
        }
        if configuration.reusePortEnvironment == nil {
            let numbered = sockets.enumerated().map { (number: Int32(3 + $0.offset), name: $0.element.name, transport: $0.element.transport, address: $0.element.address) }
            entries += configuration.dialect.environment(Dialect.Context(sockets: numbered, generation: number, supervisorPID: getpid()))
        }
        entries.append("NOTIFY_SOCKET=\(notifyPath)")
        return entries
    }

    func markReady(_ generation: Generation, how: String) {
        let now = Processes.monotonicNanoseconds
        generation.phase = .ready
        steer()  // the cutover, first of all: new connections go to this generation's sockets from now on
        closeProbe(of: generation)
        generation.record.readySeconds = Double(now - generation.record.startedMonotonic) / 1e9
        failures.everReady = true  // the failures in a row are cleared once it served for FailureCount.stableSeconds (tick)
        // Whoever waits for the reload (systemd, `up reload`) hears of it first: the old generations' stop and
        // the look at the processes (a pass over /proc, milliseconds on a loaded machine) come after.
        let old = generations.filter { $0 !== generation && $0.phase == .ready }
        _ = try? Readiness.notify(.ready, .status(statusLine(serving: generation, draining: old.count + generations.filter { $0.phase == .draining }.count)))
        let tree = Processes.Tree()  // one pass over /proc for the report and every generation's members
        if generation.record.reason == .reload { record(generation, .ready, reason: nil, tree: tree) }
        statusChanged = true
        logger.info("\(generation.label) ready after \(Self.milliseconds(now - generation.record.startedMonotonic)) (\(how))")
        if generation.record.sockets == nil { noteBlockingMode(of: generation) }
        let newSockets = steeredSockets(of: generation).map(\.descriptor)
        for serving in old {
            let oldSockets = steeredSockets(of: serving).map(\.descriptor)
            // Out of rotation only where it has sockets of its own (not a crashed one's it shares with this one).
            if !oldSockets.isEmpty && oldSockets != newSockets {
                // Whether a handshake may have been dropped on a full queue before the switch-over (and so be retried
                // on the old socket after it): only then is the kernel's table walked before the old one stops.
                let report = generation.record.reason == .reload ? history.last.flatMap { $0.generation == generation.number ? $0 : nil } : nil
                drainQuietly(serving, dropsBefore: report?.listenDrops.map { $0 > 0 } ?? true)
            } else {
                drain(serving, tree: tree)
            }
        }
        if adopted?.stopSent == nil, adopted?.idleStopBy == nil { stopAdopted() }
        generation.record.noteMembers(in: tree)
        if reloadQueued && !state.isStopping {
            reloadQueued = false
            logger.info("starting the reload requested while \(generation.label) was starting")
            beginReload()
        }
    }

    /// Says when a generation made the shared sockets blocking or non-blocking unlike an older one still running
    /// (node sets O_NONBLOCK, a perl server blocks in accept): the older one then sees EAGAIN from accept, or
    /// blocks where it polled, since they share one open file description.
    private func noteBlockingMode(of generation: Generation) {
        guard let socket = sockets.first(where: { $0.transport == .tcp }) else { return }
        let flags = fcntl(socket.descriptor, F_GETFL)
        guard flags >= 0 else { return }
        let nonBlocking = flags & O_NONBLOCK != 0
        generation.nonBlockingWhenReady = nonBlocking
        let word = { (value: Bool) in value ? "non-blocking" : "blocking" }
        for older in generations where older !== generation && older.phase.isLive && older.record.exit == nil {
            guard let theirs = older.nonBlockingWhenReady, theirs != nonBlocking else { continue }
            let text = "\(generation.label) made the shared socket \(word(nonBlocking)) (O_NONBLOCK), and \(older.label) took it "
                + "\(word(theirs)): they share one open file description, so \(older.label) may fail in accept (EAGAIN) or block "
                + "while it drains; programs that share sockets across a reload must agree on the mode"
            logger.warning("\(text)")
        }
    }

    func statusLine(serving generation: Generation, draining: Int) -> String {
        "serving: generation \(generation.number) (pid \(generation.pid))" + (draining > 0 ? ", \(draining) draining" : "")
    }

    /// Moves a generation to `phase`, asks its main process to stop (unless it has exited already) and starts
    /// its grace period, after which `tick` kills its process group.
    func askToStop(_ generation: Generation, phase: GenerationPhase, tree: Processes.Tree? = nil) {
        closeProbe(of: generation)
        let tree = tree ?? Processes.Tree()
        if generation.record.exit == nil { generation.record.noteMembers(in: tree) }
        noteSocketHolders(of: generation, in: tree)
        generation.phase = generation.record.exit != nil && phase == .draining ? .exiting : phase
        generation.record.deadline = Processes.monotonicNanoseconds + UInt64(configuration.grace * 1e9)
        if generation.record.exit == nil { _ = try? Processes.kill(generation.record.mainProcess, configuration.stopSignal) }
    }

    private func drain(_ generation: Generation, tree: Processes.Tree) {
        if let wait = configuration.stopWhenIdle, generation.record.exit == nil, !state.isStopping {
            generation.phase = .draining
            generation.record.deadline = Processes.monotonicNanoseconds + UInt64((configuration.grace + wait) * 1e9)
            generation.idleStopBy = Processes.monotonicNanoseconds + UInt64(wait * 1e9)
            logger.info("\(generation.label) draining: \(SignalName(configuration.stopSignal)) once it holds no connection (within \(Seconds(wait))), killed if still running \(Seconds(configuration.grace)) later")
            statusChanged = true
            return
        }
        askToStop(generation, phase: .draining, tree: tree)
        let draining = generations.filter { $0.phase == .draining }.count
        logger.info(
            "\(generation.label) draining: sent \(SignalName(configuration.stopSignal)), killed if still running in \(Seconds(configuration.grace)) (\(draining) draining)")
        statusChanged = true
    }

    /// A generation that will not serve: stop it, and tell what keeps serving.
    func fail(_ generation: Generation, _ reason: String) {
        askToStop(generation, phase: .failed)
        failures.inARow += 1
        if generation.record.reason == .reload { record(generation, .failed, reason: reason) }
        if let serving = generations.first(where: { $0.phase == .ready }) {
            logger.error("\(generation.label) \(reason); \(serving.label) keeps serving")
            _ = try? Readiness.notify(.ready, .status("reload failed: generation \(generation.number) \(reason); " + statusLine(serving: serving, draining: 0)))
        } else {
            logger.error("\(generation.label) \(reason)")
        }
        statusChanged = true
        afterFailure()
        if reloadQueued && !state.isStopping && generations.contains(where: { $0.phase == .ready }) {
            reloadQueued = false
            beginReload()
        }
    }

    /// After a failed start or a crash: when nothing serves or starts, back off and restart, or give up after
    /// ``FailureCount/attemptsBeforeGivingUp`` failures in a row of a program that never served.
    func afterFailure() {
        guard !state.isStopping, !generations.contains(where: { $0.phase.isLive }) else { return }
        if failures.shouldGiveUp {
            logger.critical("the program failed \(failures.inARow) times in a row and never became ready: giving up")
            stop(because: "giving up", exitCode: 4)
            return
        }
        let delay = failures.backoffSeconds
        enter(.backingOff(until: Processes.monotonicNanoseconds + UInt64(delay * 1e9)))
        logger.warning("no generation serves: restarting in \(Seconds(delay)); connections wait in the accept queue meanwhile")
    }

    func requestReload() {
        guard !state.isStopping else { return logger.info("reload ignored: stopping") }
        if let starting = generations.first(where: { $0.phase == .starting }) {
            if !reloadQueued { logger.info("reload requested while \(starting.label) starts: one more reload follows once it is ready") }
            reloadQueued = true
            statusChanged = true
            return
        }
        if case .backingOff = state { enter(.running) }  // a reload is a restart now
        beginReload()
    }

    private func beginReload() {
        _ = try? Readiness.notify(.reloading, .status("reloading"))
        startGeneration(.reload)
    }

    private func record(_ generation: Generation, _ result: ReloadResult, reason: String?, tree: Processes.Tree? = nil) {
        var report = ReloadRecord(
            generation: generation.number, startedAt: generation.record.startedAt, result: result, reason: reason,
            seconds: Double(Processes.monotonicNanoseconds - generation.record.startedMonotonic) / 1e9)
        generation.reloadWatch?.sample(sockets)
        generation.reloadWatch?.finish(&report)
        generation.reloadWatch = nil
        if result == .ready {
            // As /metrics counts them, once per reload.
            let older = generations.filter { $0 !== generation && $0.phase.isLive && $0.record.exit == nil }
            let views = older.map { HealthSnapshot.GenerationView(number: $0.number, phase: $0.phase, pids: [$0.pid] + $0.record.members.map(\.pid)) }
            report.connectionsOnOlderGenerations = views.isEmpty ? 0
                : KernelReadings.connections(of: views, listeners: HealthListener.of(sockets), tree: tree ?? Processes.Tree()).values.reduce(0, +)
        }
        history.append(report)
        counters.count(history[history.count - 1])
        if history.count > 20 { history.removeFirst(history.count - 20) }
    }

    /// Asks every live generation to stop; `up` exits with `exitCode` (or worse) once all are gone. A second
    /// stop kills them all at once.
    func stop(because reason: String, exitCode: Int32 = 0) {
        if case .stopping(let code) = state {
            logger.warning("\(reason) again: killing every generation now")
            for generation in generations {
                _ = try? Processes.kill(-generation.pid, SIGKILL)
                generation.record.killed = true
            }
            enter(.stopping(exitCode: max(code, 1)))
            return
        }
        servingAtStop = generations.first(where: { $0.phase == .ready })?.number
        enter(.stopping(exitCode: exitCode))
        releaseAdopted()
        reloadQueued = false
        _ = try? Readiness.notify(.stopping, .status("stopping"))
        let running = generations.filter { $0.phase.isLive || $0.record.quietStopBy != nil && $0.record.exit == nil }
        let exiting = generations.count - running.count
        logger.info(.init(stringLiteral: "stopping (\(reason)): "
            + (running.isEmpty ? "no generation left to signal" : "\(SignalName(configuration.stopSignal)) to \(running.count) generation(s), killed if still running in \(Seconds(configuration.grace))")
            + (exiting > 0 ? "; \(exiting) already stopping" : "")))
        for generation in running {
            generation.record.quietStopBy = nil
            askToStop(generation, phase: .draining)
        }
    }

    /// A duration for the log, written as the options take them (as ``Seconds`` prints): 39ms, 1.1s, 12s.
    static func milliseconds(_ nanoseconds: UInt64) -> String {
        switch nanoseconds {
        case ..<1_000_000_000: "\(nanoseconds / 1_000_000)ms"
        case ..<10_000_000_000: "\(Double(nanoseconds / 100_000_000) / 10)s"
        default: "\(nanoseconds / 1_000_000_000)s"
        }
    }
}
