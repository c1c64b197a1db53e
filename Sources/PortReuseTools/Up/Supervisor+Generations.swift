import PortReuse
import PortReuseSystem
import PortReuseInterception

/// Starting generations: their sockets, their environment, the spawn; the report of a reload.
extension Supervisor {
    /// Carries out ``UpMachine/Action/start(_:reason:)``: the sockets generation `number` gets, its notify socket and
    /// its first process. A reload that cannot even start is a failed reload, with its record (`up reload` waits for it).
    func spawnGeneration(_ number: Int, reason: StartReason) -> [UpMachine.Event] {
        for index in sockets.indices {
            // A steered socket that stopped listening is replaced by a new one, not opened again in place.
            if groups[index] == nil, let repaired = sockets[index].refresh() { logger.warning("\(repaired)") }
            if configuration.dialect.nonBlockingSockets, sockets[index].transport == .tcp { Files.setNonBlocking(sockets[index].descriptor, true) }
        }
        // Unsteered, every worker shares the held sockets: the same set for each.
        let descriptors = groups.isEmpty ? Array(repeating: sockets.map(\.descriptor), count: configuration.workers).flatMap { $0 }
            : socketsForNewGeneration(number: number)
        do throws(CommandFailure) {
            let notify = try NotifyReceiver.make(path: "\(runtimeFolder)/notify-\(number).sock")
            let (pid, interceptor) = try spawn(number: number, descriptors: descriptors, environment: environment(number: number, notifyPath: notify.path))
            let held = Resources(notify: notify)
            held.interceptor = interceptor
            // The reload's window opens once the program runs (the spawn returns after its exec): what the read of
            // /proc/net/netstat costs does not hold up the spawn, and nothing the program did is missed.
            if reason == .reload { held.reloadWatch = ReloadWatch.start() }
            resources[number] = held
            let known = configuration.serverNote.map { " (\($0))" } ?? ""
            let workers = configuration.workers > 1 ? " × \(configuration.workers) workers" : ""
            logger.info("generation \(number) (pid \(pid)) started (\(reason.rawValue)): \(configuration.command.joined(separator: " "))\(workers)\(known)")
            return [.started(UpMachine.Spawned(
                number: number, reason: reason, pid: pid, startedAt: Processes.wallClockSeconds, notifyPath: notify.path,
                sockets: groups.isEmpty ? nil : descriptors))]
        } catch {
            let retired = retireUnusedSockets()
            let report = ReloadRecord(generation: number, startedAt: Processes.wallClockSeconds, result: .failed, reason: "could not start: \(error.message)", seconds: 0)
            return retired + (reason == .reload ? [.reloadMeasured(report)] : []) + [.startFailed(number: number, reason: error.message)]
        }
    }

    /// Starts the program (with `--workers`, its pool, which starts the workers): under the bind filter when it
    /// can, else with LISTEN_FDS only (as before the filter).
    private func spawn(number: Int, descriptors: [Descriptor], environment: [String]) throws(CommandFailure) -> (Int32, SocketCallInterceptor?) {
        var setListenPID = configuration.reusePortEnvironment == nil && configuration.dialect.setsListenPID
        var command = configuration.command
        if configuration.workers > 1 {
            let pool = WorkerPoolOptions(
                count: configuration.workers, socketsPerWorker: sockets.count, readiness: configuration.readiness, stopSignal: configuration.stopSignal,
                generation: number, setListenPID: setListenPID, command: command)
            command = [UpgradeHandover.executablePath] + pool.arguments
            setListenPID = false  // the pool sets it for each worker
        }
        #if os(Linux)
        if configuration.intercepts, interceptionOff == nil, !sockets.isEmpty {
            switch try Spawner.spawnIntercepted(command, environment: environment, descriptors: descriptors, setListenPID: setListenPID) {
            case .started(let pid, let notification?):
                do {
                    let interceptor = try SocketCallInterceptor(notificationDescriptor: notification, rules: interceptionRules(number: number, sockets: descriptors))
                    try interceptor.start()
                    return (pid, interceptor)
                } catch {
                    // Without an answer its binds would wait for ever: this generation cannot run.
                    Processes.kill(-pid, Signal.kill)
                    _ = try? Processes.wait(pid, noHang: false)
                    throw CommandFailure("cannot answer the binds of generation \(number): \(error)")
                }
            case .started(let pid, nil):
                Processes.kill(-pid, Signal.kill)
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
        let pid = try Spawner.spawn(command, environment: environment, descriptors: descriptors, setListenPID: setListenPID)
        return (pid, nil)
    }

    #if os(Linux)
    /// The rules for generation `number`: swap its sockets (`sockets`, one per held socket) in; every line goes to
    /// the log.
    func interceptionRules(number: Int, sockets descriptors: [Descriptor]) -> InterceptionRules {
        let logger = self.logger
        // Generations that share sockets share their swap, which tracks the sockets' blocking mode between them. With
        // --workers, each worker's own (worker by worker in `descriptors`).
        // A Unix-domain socket is handed over as LISTEN_FDS only: a program that binds its path gets the kernel's answer.
        let swap = swaps[descriptors] ?? SocketSwap(held: zip(sockets, descriptors).enumerated().compactMap { index, pair in
            let (socket, descriptor) = pair
            guard let address = socket.address else { return nil }
            return SocketSwap.Held(descriptor: descriptor, name: socket.name, transport: socket.transport, address: address,
                                   dualStack: HeldSocket.isDualStack(descriptor, address),
                                   workers: Self.perWorker(descriptors, index: index, held: sockets.count))
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
            let numbered = sockets.enumerated().map { (number: Int32(3 + $0.offset), name: $0.element.name, transport: $0.element.transport, endpoint: $0.element.endpoint) }
            entries += configuration.dialect.environment(Dialect.Context(sockets: numbered, generation: number, supervisorPID: Processes.currentID))
        }
        entries.append("NOTIFY_SOCKET=\(notifyPath)")
        return entries
    }

    /// Says when a generation made the shared sockets blocking or non-blocking unlike an older one still running
    /// (node sets O_NONBLOCK, a perl server blocks in accept): the older one then sees EAGAIN from accept, or
    /// blocks where it polled, since they share one open file description.
    func noteBlockingMode(of generation: GenerationRecord) {
        guard let socket = sockets.first(where: { $0.transport == .tcp }) else { return }
        guard let nonBlocking = Files.isNonBlocking(socket.descriptor) else { return }
        resources[generation.number]?.nonBlockingWhenReady = nonBlocking
        let word = { (value: Bool) in value ? "non-blocking" : "blocking" }
        for older in generations where older.number < generation.number && older.exit == nil {
            guard let theirs = resources[older.number]?.nonBlockingWhenReady, theirs != nonBlocking else { continue }
            let text = "\(generation.label) made the shared socket \(word(nonBlocking)) (O_NONBLOCK), and \(older.label) took it "
                + "\(word(theirs)): they share one open file description, so \(older.label) may fail in accept (EAGAIN) or block "
                + "while it drains; programs that share sockets across a reload must agree on the mode"
            logger.warning("\(text)")
        }
    }

    /// The report of a reload at its outcome: what the reload did to the listeners, and (ready) the connections the
    /// older generations still held.
    func measureReload(_ generation: GenerationRecord, _ result: ReloadResult, reason: String?) -> ReloadRecord {
        var report = ReloadRecord(
            generation: generation.number, startedAt: generation.startedAt, result: result, reason: reason,
            seconds: Double(clock() - min(clock(), generation.startedMonotonic)) / 1e9)
        report.workers = generation.workers
        var watch = resources[generation.number]?.reloadWatch
        watch?.sample(sockets)
        watch?.finish(&report)
        resources[generation.number]?.reloadWatch = nil
        if result == .ready {
            // As /metrics counts them, once per reload: every older generation still running (the cutover has just taken
            // the serving one out of rotation).
            let older = generations.filter { $0.number < generation.number && $0.exit == nil }
            report.connectionsOnOlderGenerations = older.isEmpty ? 0
                : KernelReadings.connections(of: older.map(\.view), listeners: HealthListener.of(sockets), tree: processTree()).values.reduce(0, +)
        }
        return report
    }
}

extension GenerationRecord {
    /// The generation as `/metrics` and the connection counts see it: its first process and the members seen so far.
    var view: HealthSnapshot.GenerationView {
        HealthSnapshot.GenerationView(number: number, phase: phase, pids: [pid] + members.map(\.pid), workers: workers)
    }
}
