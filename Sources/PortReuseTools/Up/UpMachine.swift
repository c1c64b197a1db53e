import Logging
import PortReuse
import PortReuseSystem

/// The decisions of `portreuse up`, as a pure state machine: ``handle(_:now:)`` takes one ``Event`` (a signal, an
/// exit, a notify message, what a look at a generation found, the clock's tick) at time `now` and returns the
/// ``Action``s to take, changing nothing but its ``record``. It starts no process, reads no clock and no kernel
/// table: ``Supervisor`` gathers the events and carries the actions out in one place, and tests drive the machine
/// without either.
///
/// What the machine cannot see for itself it asks for with an action (``Action/lookForReadiness(_:)``, …); the
/// supervisor answers with the matching event in the same turn.
package struct UpMachine {
    package struct Settings: Sendable {
        package var readiness: ReadinessCheck
        package var readyTimeout: Double
        package var grace: Double
        package var stopSignal: Int32
        /// `--stop-when-idle`: how long a draining generation's stop signal may wait for a moment without connections.
        package var stopWhenIdle: Double?
        package var stopDelay = 0.0
        package var drainTimeout = 10.0
        /// How readiness is seen, in words, for the log ("probe: accepted a connection").
        package var readinessWord = "probe"

        package init(readiness: ReadinessCheck, readyTimeout: Double, grace: Double, stopSignal: Int32) {
            self.readiness = readiness
            self.readyTimeout = readyTimeout
            self.grace = grace
            self.stopSignal = stopSignal
        }
    }

    package enum Event: Equatable, Sendable {
        case signal(Int32)
        /// The spawn of ``Action/start(_:reason:)`` succeeded.
        case started(Spawned)
        case startFailed(number: Int, reason: String)
        /// A main process ended (an orphaned worker's pid matches no generation and is ignored).
        case exited(pid: Int32, ExitStatus)
        /// What a generation sent on its notify socket; `exited`: read after its main process exited.
        case notified(number: Int, messages: [String], exited: Bool)
        /// ``Action/lookForReadiness(_:)`` saw it serve, in these words (nil: the usual ones).
        case probed(number: Int, how: String?)
        /// ``Action/countConnections(_:)``: the connections its processes hold when its ready time ran out.
        case connectionsAtReadyTimeout(number: Int, count: Int)
        /// ``Action/lookAtSockets``: its own steered sockets, named, stopped listening.
        case socketsStopped(number: Int, names: String)
        /// ``Action/lookQuiet(_:)``: what keeps a generation out of rotation busy, in words; nil when it is idle.
        case quietLook(number: Int, busy: String?)
        /// ``Action/stopWhenIdle(_:)`` found it without connections and sent its stop signal.
        case stoppedWhenIdle(number: Int)
        /// ``Action/kill(_:)``: what was killed (`any`: something ran; `outside`: processes that had left its group).
        case killed(number: Int, any: Bool, outside: Int)
        /// Processes seen to belong to a generation (descendants, holders of its sockets).
        case members(number: Int, [GenerationRecord.Member])
        /// ``Action/lookGone(_:)``: none of its processes runs any more.
        case gone(number: Int)
        case reloadMeasured(ReloadRecord)
        case upgradeFailed
        /// ``Action/stopAdoptedWhenIdle``: the adopted server held no connection and got its stop signal.
        case adoptedStoppedWhenIdle
        /// The adopted server exited.
        case adoptedExited
        /// Connections the kernel reset when `up` retired a socket whose generation (if known) never accepted them.
        case queuedResetAtRetire(Int, generation: Int?)
        /// The clock moved: deadlines, readiness looks, the end of a backoff or of the stop delay.
        case tick
    }

    /// A generation's first process, as the spawn made it.
    package struct Spawned: Equatable, Sendable {
        package var number: Int
        package var reason: StartReason
        package var pid: Int32
        /// The wall clock at its start, for people.
        package var startedAt: Double
        package var notifyPath: String?
        /// Its own sockets, one per held socket; nil: it shares the held ones.
        package var sockets: [Descriptor]?

        package init(number: Int, reason: StartReason, pid: Int32, startedAt: Double, notifyPath: String?, sockets: [Descriptor]?) {
            self.number = number
            self.reason = reason
            self.pid = pid
            self.startedAt = startedAt
            self.notifyPath = notifyPath
            self.sockets = sockets
        }
    }

    package enum Action: Equatable, Sendable {
        /// Start generation `number` (its sockets, its notify socket, the spawn): answered by ``Event/started(number:reason:pid:notifyPath:sockets:)``
        /// or ``Event/startFailed(number:reason:)``.
        case start(Int, reason: StartReason)
        /// A signal to a process (negative: a process group).
        case signal(Int32, Int32)
        /// SIGKILL to a generation's process group and its members outside it: answered by ``Event/killed(number:any:outside:)``.
        case kill(Int)
        /// Before a generation's stop signal: close its probe, note its members and the holders of its sockets.
        case prepareStop(Int)
        /// A generation left `starting`: `up`'s probe connection to it closes (a single-threaded server that accepted
        /// it waits for its request until then).
        case closeProbe(Int)
        /// After a generation became ready: note its members, and the blocking mode of shared sockets.
        case noteReady(Int)
        /// Point the steering programs at the generations as they stand.
        case steer
        /// A generation out of rotation: its sockets' backlog back to up's, the counters its drain reads.
        case takeOutOfRotation(Int)
        case lookForReadiness(Int)
        case countConnections(Int)
        case lookQuiet(Int)
        case stopWhenIdle(Int)
        case lookAtSockets
        case lookGone(Int)
        /// A generation is gone: free what `up` held for it (its interceptor, sockets no one uses).
        case forget(Int)
        /// The report of a reload, measured: answered by ``Event/reloadMeasured(_:)``.
        case measureReload(Int, ReloadResult, reason: String?)
        case tellSystemd([Readiness.State])
        case log(Logger.Level, String)
        case upgrade
        /// `--adopt`: a signal to the adopted server (through its pidfd), SIGKILL included.
        case signalAdopted(Int32)
        /// `--adopt --stop-when-idle`: its stop signal at a moment it holds no connection, answered by ``Event/adoptedStoppedWhenIdle``.
        case stopAdoptedWhenIdle
        /// The adopted server is gone, or `up` stops before any generation took over from it: let it go (its pidfd).
        case releaseAdopted
    }

    package private(set) var record: SupervisorRecord
    package let settings: Settings
    /// When each generation out of rotation is looked at next (not carried across an upgrade).
    private var nextQuietLook: [Int: UInt64] = [:]

    /// How long after the cutover a connection whose handshake began before it may still land on the old socket:
    /// the old socket's queue is read only after this.
    package static let settleNanoseconds: UInt64 = 100_000_000
    package static let quietLookNanoseconds: UInt64 = 50_000_000

    package init(settings: Settings, record: SupervisorRecord = SupervisorRecord()) {
        self.settings = settings
        self.record = record
    }

    private var grace: UInt64 { nanoseconds(settings.grace) }
    private func nanoseconds(_ seconds: Double) -> UInt64 { UInt64(seconds * 1e9) }
    private var stopName: SignalName { SignalName(settings.stopSignal) }

    private func index(_ number: Int) -> Int? { record.generations.firstIndex { $0.number == number } }
    private func first(_ phase: GenerationPhase) -> GenerationRecord? { record.generations.first { $0.phase == phase } }

    // MARK: Events

    package mutating func handle(_ event: Event, now: UInt64) -> [Action] {
        var actions: [Action] = []
        switch event {
        case .signal(let signal): onSignal(signal, now: now, &actions)
        case .started(let spawned):
            var generation = GenerationRecord(
                number: spawned.number, pid: spawned.pid, reason: spawned.reason, startedAt: spawned.startedAt, startedMonotonic: now,
                readyBy: now + nanoseconds(settings.readyTimeout))
            generation.notifyPath = spawned.notifyPath
            generation.sockets = spawned.sockets
            record.generations.append(generation)
            actions += [.steer]
        case .startFailed(let number, let reason):
            actions.append(.log(.error, "cannot start generation \(number): \(reason)"))
            record.failures.inARow += 1
            afterFailure(now: now, &actions)
        case .exited(let pid, let status): onExit(pid: pid, status, now: now, &actions)
        case .notified(let number, let messages, let exited): onMessages(messages, from: number, exited: exited, now: now, &actions)
        case .probed(let number, let how):
            guard let generation = record.generation(number), generation.phase == .starting, !waitsForNotify(generation) else { break }
            markReady(number, how: how ?? settings.readinessWord, now: now, &actions)
        case .connectionsAtReadyTimeout(let number, let count):
            guard record.generation(number)?.phase == .starting else { break }
            let timeout = Seconds(settings.readyTimeout)
            if count > 0 {
                // A generation seen serving is never stopped for want of a readiness signal.
                markReady(number, how: "seen serving: it holds connections it accepted, though --ready \(settings.readiness) said nothing within \(timeout)", now: now, &actions)
            } else {
                fail(number, "was not ready within \(timeout) (--ready \(settings.readiness))", now: now, &actions)
            }
        case .socketsStopped(let number, let names): onSocketsStopped(number, names: names, now: now, &actions)
        case .quietLook(let number, let busy): onQuietLook(number, busy: busy, now: now, &actions)
        case .stoppedWhenIdle(let number):
            guard let i = index(number), case .waitingForIdle = record.generations[i].stage else { break }
            record.generations[i].stage = .draining(killAt: now + grace)
            actions.append(.log(.info, "\(record.generations[i].label) holds no connection: sent \(stopName)"))
        case .killed(let number, let any, let outside):
            // Its grace ran out (a second stop kills before that, and says so itself).
            guard any, let generation = record.generation(number), let killAt = generation.stage.killAt(grace: grace), now >= killAt else { break }
            if outside > 0 { actions.append(.log(.warning, "\(generation.label): \(outside) process(es) had left its process group (setsid): killed too")) }
            if generation.phase != .failed, case .stopping(let code) = record.state { record.state = .stopping(exitCode: max(code, 1)) }
            actions.append(.log(.warning, "\(generation.label) still running \(Seconds(settings.grace)) after \(stopName): killed"))
        case .members(let number, let members):
            guard let i = index(number) else { break }
            let known = Set(record.generations[i].members)
            record.generations[i].members += members.filter { !known.contains($0) }
        case .gone(let number):
            record.generations.removeAll { $0.number == number }
            nextQuietLook[number] = nil
            actions.append(.forget(number))
        case .reloadMeasured(let report):
            record.history.append(report)
            record.counters.count(report)
            if record.history.count > 20 { record.history.removeFirst(record.history.count - 20) }
        case .upgradeFailed: record.upgradeFailures += 1
        case .adoptedStoppedWhenIdle:
            guard let adopted = record.adopted, case .waitingForIdle? = adopted.stage else { break }
            let killAt = now + grace
            record.adopted?.stage = .draining(killAt: killAt)
            actions.append(.log(.info, "\(adopted.label) holds no connection: sent \(stopName)"))
        case .adoptedExited:
            guard let adopted = record.adopted else { break }
            record.adopted = nil
            let signalled = if case .draining? = adopted.stage { true } else { false }
            actions += [.releaseAdopted, .log(.info, "\(adopted.label) exited\(signalled ? "" : " by itself")")]
        case .queuedResetAtRetire(let count, let generation):
            record.counters.resetAtRetire += count
            // In the report of the reload that replaced that generation.
            if let generation, let i = record.history.firstIndex(where: { $0.generation > generation && $0.result == .ready }) {
                record.history[i].resetOnRetiredSockets = (record.history[i].resetOnRetiredSockets ?? 0) + count
            }
        case .tick: tick(now: now, &actions)
        }
        return actions
    }

    private mutating func onSignal(_ signal: Int32, now: UInt64, _ actions: inout [Action]) {
        let name = SignalName(signal)
        switch signal {
        case Signal.hangUp: requestReload(now: now, &actions)
        case Signal.terminate, Signal.interrupt: stopAfterDelay(because: "received \(name)", now: now, &actions)
        case Signal.quit: stop(because: "received \(name)", now: now, &actions)
        case Signal.user2:
            if record.state.isStopping { actions.append(.log(.info, "upgrade ignored: stopping")) } else { actions.append(.upgrade) }
        case Signal.user1, Signal.windowChange:
            // The program's signals (log reopening, and the like): to every generation that serves or starts, never to draining ones.
            let targets = record.generations.filter(\.phase.isLive)
            actions += targets.map { .signal($0.mainProcess, signal) }
            actions.append(.log(.info, targets.isEmpty ? "\(name): no generation to forward it to" : "\(name) forwarded to \(targets.map(\.label).joined(separator: ", "))"))
        default: break
        }
    }

    private mutating func onExit(pid: Int32, _ status: ExitStatus, now: UInt64, _ actions: inout [Action]) {
        guard let i = record.generations.firstIndex(where: { $0.pid == pid }) else { return }  // an orphaned worker
        record.generations[i].exit = status
        let generation = record.generations[i]
        if generation.number == record.servingAtStop { record.servingAtStopExit = status }
        switch generation.stage {
        case .starting:
            fail(generation.number, "exited before it was ready (\(status))", now: now, &actions)
        case .ready:
            actions.append(.log(.error, "\(generation.label) exited unexpectedly (\(status))"))
            askToStop(generation.number, to: .failed, now: now, &actions)
            actions.append(.signal(-generation.pid, settings.stopSignal))  // its workers, if any, must not serve on
            record.failures.inARow += 1
            afterFailure(now: now, &actions)
        case .outOfRotation, .waitingForIdle, .draining, .exiting, .failed:
            if generation.phase == .draining { record.generations[i].stage = .exiting(killAt: generation.stage.killAt(grace: grace) ?? now + grace) }
            let age = Double(now - min(now, generation.startedMonotonic)) / 1e9
            actions.append(.log(.info, "\(generation.label) exited (\(status)) after \(Seconds((age * 10).rounded() / 10))"))
        }
    }

    private mutating func onMessages(_ messages: [String], from number: Int, exited: Bool, now: UInt64, _ actions: inout [Action]) {
        guard !messages.isEmpty, let i = index(number) else { return }
        record.generations[i].heardFrom = true
        let label = record.generations[i].label
        for message in messages {
            let parts = message.split(separator: "=", maxSplits: 1).map(String.init)
            let (key, value) = (parts.first ?? "", parts.count > 1 ? parts[1] : "")
            switch key {
            case "READY" where value == "1":
                // A READY=1 of a process that is gone makes nothing ready.
                guard record.generation(number)?.phase == .starting, !exited, settings.readiness.acceptsNotify else { break }
                let workers = record.generations[i].workers.map { "all \($0.total) workers ready" }
                markReady(number, how: workers ?? "READY=1", now: now, &actions)
            case WorkerPoolOptions.readyMessage:
                // "ready/total", from the generation's worker pool.
                let counts = value.split(separator: "/").compactMap { Int($0) }
                guard counts.count == 2 else { break }
                var workers = record.generations[i].workers ?? GenerationRecord.WorkerCounts(total: counts[1], ready: counts[0])
                (workers.ready, workers.total) = (counts[0], counts[1])
                record.generations[i].workers = workers
            case WorkerPoolOptions.replacedMessage:
                guard let replaced = Int(value), var workers = record.generations[i].workers else { break }
                if replaced > workers.replaced { record.counters.workerReplacements += replaced - workers.replaced }
                workers.replaced = replaced
                record.generations[i].workers = workers
            case "STATUS":
                if record.generations[i].status != value { actions.append(.log(.info, "\(label) status: \(value)")) }
                record.generations[i].status = value
            case "MAINPID":
                if let pid = Int32(value), pid > 0 {
                    record.generations[i].mainPID = pid
                    actions.append(.log(.info, "\(label) names pid \(pid) as its main process"))
                }
            case "STOPPING" where value == "1": actions.append(.log(.info, "\(label) is stopping"))
            case "RELOADING" where value == "1": actions.append(.log(.info, "\(label) is reloading itself"))
            case "ERRNO": actions.append(.log(.warning, "\(label) reports errno \(value)"))
            default: break
            }
        }
    }

    /// A generation whose own socket stopped listening (it called `shutdown()` on it) has failed if it starts or
    /// serves; traffic goes back to a generation out of rotation that still listens, if there is one.
    private mutating func onSocketsStopped(_ number: Int, names: String, now: UInt64, _ actions: inout [Action]) {
        guard let i = index(number) else { return }
        record.generations[i].socketsDown = true
        let generation = record.generations[i]
        switch generation.phase {
        case .starting:
            fail(number, "shut its socket (\(names)) down: it no longer listens", now: now, &actions)
        case .ready:
            actions.append(.log(.error, "\(generation.label) shut its socket (\(names)) down: it no longer listens, so it serves no one"))
            askToStop(number, to: .failed, now: now, &actions)
            record.failures.inARow += 1
            if !reviveOutOfRotation(&actions) { afterFailure(now: now, &actions) }
        case .draining, .exiting, .failed:
            break
        }
        actions.append(.steer)
    }

    /// After the serving generation failed: the newest generation out of rotation that still listens and was not yet
    /// told to stop serves again (the next ``Action/steer`` sends traffic back to it). Whether there was one.
    private mutating func reviveOutOfRotation(_ actions: inout [Action]) -> Bool {
        guard !record.state.isStopping,
            let i = record.generations.lastIndex(where: { if case .outOfRotation = $0.stage { !$0.socketsDown } else { false } })
        else { return false }
        record.generations[i].stage = .ready
        nextQuietLook[record.generations[i].number] = nil
        actions += [.log(.warning, "\(record.generations[i].label) serves again: the generation that replaced it failed"), .steer]
        return true
    }

    private mutating func onQuietLook(_ number: Int, busy: String?, now: UInt64, _ actions: inout [Action]) {
        guard let generation = record.generation(number), case .outOfRotation(_, let stopBy) = generation.stage else { return }
        if let busy {
            guard now >= stopBy else { return }
            askToStop(number, to: .draining, now: now, &actions)
            actions.append(.log(.info, "\(generation.label) still \(busy) \(Seconds(settings.drainTimeout)) after the cutover: sent \(stopName)"))
        } else {
            askToStop(number, to: .draining, now: now, &actions)
            actions.append(.log(.info, "\(generation.label) is idle (its queue is empty, it holds no connection): sent \(stopName)"))
        }
    }

    // MARK: Time

    private mutating func tick(now: UInt64, _ actions: inout [Action]) {
        for generation in record.generations {
            let number = generation.number
            switch generation.stage {
            case .starting(let readyBy):
                if now >= readyBy {
                    actions.append(.countConnections(number))
                } else {
                    switch settings.readiness {
                    case .notify: break
                    case .delay(let seconds):
                        if now - min(now, generation.startedMonotonic) >= nanoseconds(seconds) { markReady(number, how: settings.readinessWord, now: now, &actions) }
                    case .auto where generation.heardFrom: break
                    case .auto, .probe: actions.append(.lookForReadiness(number))
                    }
                }
            case .ready:
                break
            case .outOfRotation(let since, _):
                if now >= since + Self.settleNanoseconds, now >= nextQuietLook[number] ?? 0 {
                    nextQuietLook[number] = now + Self.quietLookNanoseconds
                    actions.append(.lookQuiet(number))
                }
            case .waitingForIdle(let stopBy):
                if now >= stopBy {
                    askToStop(number, to: .draining, now: now, &actions)
                    actions.append(.log(.info, "\(generation.label) held connections for \(Seconds(settings.stopWhenIdle ?? 0)): sent \(stopName) anyway"))
                } else {
                    actions.append(.stopWhenIdle(number))
                }
            case .draining, .exiting, .failed:
                break
            }
            if let i = index(number), let killAt = record.generations[i].stage.killAt(grace: grace), now >= killAt, !record.generations[i].killed {
                record.generations[i].killed = true
                actions.append(.kill(number))
            }
        }
        tickStopDelay(now: now, &actions)
        tickAdopted(now: now, &actions)
        if record.generations.contains(where: { $0.sockets != nil && $0.exit == nil }) { actions.append(.lookAtSockets) }
        let stableSince = now - min(now, nanoseconds(FailureCount.stableSeconds))
        if record.failures.inARow > 0, record.generations.contains(where: { $0.phase == .ready && ($0.readyMonotonic ?? .max) <= stableSince }) {
            record.failures.inARow = 0
        }
        actions += record.generations.filter { $0.exit != nil }.map { .lookGone($0.number) }
        if case .backingOff(let until) = record.state, now >= until {
            record.state = .running
            start(.restart, &actions)
        }
    }

    /// When the machine next wants a ``Event/tick`` by itself (nanoseconds from `now`), at most 250 ms.
    package func nextTick(now: UInt64) -> UInt64 {
        // A steered generation's readiness costs one sock_diag request a turn: looked at often, so that a reload costs
        // little more than the program's start, and less often as the start goes on (a tenth of its time so far,
        // 1 to 10 ms), so that a slow start costs up little CPU.
        if let starting = record.generations.first(where: { $0.phase == .starting && $0.sockets != nil }) {
            return min(10, max(1, (now - min(now, starting.startedMonotonic)) / 10_000_000)) * 1_000_000
        }
        if record.generations.contains(where: { $0.phase == .starting || $0.exit != nil || $0.stage.signalWaits }) || record.adopted?.stage != nil {
            return 10_000_000
        }
        if let until = record.state.movesOnAt { return until <= now ? 0 : min(250_000_000, until - now + 1_000_000) }
        return 250_000_000
    }

    // MARK: Generations

    /// Starts the next generation.
    package mutating func start(_ reason: StartReason, _ actions: inout [Action]) {
        let number = record.nextNumber
        record.nextNumber += 1
        if reason == .restart { record.counters.restarts += 1 }
        actions.append(.start(number, reason: reason))
    }

    private mutating func markReady(_ number: Int, how: String, now: UInt64, _ actions: inout [Action]) {
        guard let i = index(number) else { return }
        record.generations[i].stage = .ready
        record.generations[i].readySeconds = Double(now - min(now, record.generations[i].startedMonotonic)) / 1e9
        record.failures.everReady = true  // the failures in a row are cleared once it served for FailureCount.stableSeconds (tick)
        let generation = record.generations[i]
        // The cutover first of all: new connections go to this generation's sockets from now on, and the probe lets go
        // of it. Whoever waits for the reload (systemd, `up reload`) hears of it next; the old generations' stop comes
        // after, and last the look at its processes (a pass over /proc).
        actions += [.steer, .closeProbe(number)]
        let old = record.generations.filter { $0.number != number && $0.phase == .ready }
        let draining = old.count + record.generations.filter { $0.phase == .draining }.count
        actions.append(.tellSystemd([.ready, .status(Self.statusLine(serving: generation, draining: draining))]))
        if generation.reason == .reload { actions.append(.measureReload(number, .ready, reason: nil)) }
        actions.append(.log(.info, "\(generation.label) ready after \(Self.milliseconds(now - min(now, generation.startedMonotonic))) (\(how))"))
        for serving in old {
            // Out of rotation only where it has sockets of its own (not a crashed one's that it shares with this one).
            if let own = serving.sockets, own != generation.sockets, !serving.socketsDown {
                takeOutOfRotation(serving.number, now: now, &actions)
            } else {
                drain(serving.number, now: now, &actions)
            }
        }
        if record.adopted?.stage == nil { drainAdopted(now: now, &actions) }
        actions.append(.noteReady(number))
        if record.reloadQueued && !record.state.isStopping {
            record.reloadQueued = false
            actions.append(.log(.info, "starting the reload requested while \(generation.label) was starting"))
            beginReload(&actions)
        }
    }

    /// A steered generation after the cutover: its stop signal waits until its queue is empty and its processes
    /// hold no connection, at most `--drain-timeout`.
    private mutating func takeOutOfRotation(_ number: Int, now: UInt64, _ actions: inout [Action]) {
        guard let i = index(number) else { return }
        let limit = settings.drainTimeout
        record.generations[i].stage = .outOfRotation(since: now, stopBy: now + nanoseconds(limit))
        actions.append(.takeOutOfRotation(number))
        actions.append(.log(.info, "\(record.generations[i].label) out of rotation: \(stopName) once its queue is empty and it holds no connection "
            + "(within \(Seconds(limit))), killed if still running \(Seconds(settings.grace)) later"))
    }

    /// An old generation sharing the sockets: its stop signal now, or at a moment it holds no connection (`--stop-when-idle`).
    private mutating func drain(_ number: Int, now: UInt64, _ actions: inout [Action]) {
        guard let i = index(number) else { return }
        let label = record.generations[i].label
        if let wait = settings.stopWhenIdle, record.generations[i].exit == nil, !record.state.isStopping {
            record.generations[i].stage = .waitingForIdle(stopBy: now + nanoseconds(wait))
            actions.append(.log(.info, "\(label) draining: \(stopName) once it holds no connection (within \(Seconds(wait))), killed if still running \(Seconds(settings.grace)) later"))
            return
        }
        askToStop(number, to: .draining, now: now, &actions)
        let draining = record.generations.filter { $0.phase == .draining }.count
        actions.append(.log(.info, "\(label) draining: sent \(stopName), killed if still running in \(Seconds(settings.grace)) (\(draining) draining)"))
    }

    /// Moves a generation towards its end (`draining` or `failed`), asks its main process to stop (unless it exited
    /// already) and starts its grace, after which ``tick(now:_:)`` kills what is left of it.
    private mutating func askToStop(_ number: Int, to phase: GenerationPhase, now: UInt64, _ actions: inout [Action]) {
        guard let i = index(number) else { return }
        nextQuietLook[number] = nil
        actions.append(.prepareStop(number))
        let generation = record.generations[i]
        let killAt = now + grace
        record.generations[i].stage = phase == .failed ? .failed(killAt: killAt) : generation.exit != nil ? .exiting(killAt: killAt) : .draining(killAt: killAt)
        if generation.exit == nil { actions.append(.signal(generation.mainProcess, settings.stopSignal)) }
    }

    /// A generation that will not serve: stop it, and tell what keeps serving.
    private mutating func fail(_ number: Int, _ reason: String, now: UInt64, _ actions: inout [Action]) {
        guard let generation = record.generation(number) else { return }
        askToStop(number, to: .failed, now: now, &actions)
        record.failures.inARow += 1
        if generation.reason == .reload { actions.append(.measureReload(number, .failed, reason: reason)) }
        if let serving = first(.ready) {
            actions.append(.log(.error, "\(generation.label) \(reason); \(serving.label) keeps serving"))
            actions.append(.tellSystemd([.ready, .status("reload failed: generation \(number) \(reason); " + Self.statusLine(serving: serving, draining: 0))]))
        } else {
            actions.append(.log(.error, "\(generation.label) \(reason)"))
        }
        afterFailure(now: now, &actions)
        if record.reloadQueued && !record.state.isStopping && first(.ready) != nil {
            record.reloadQueued = false
            beginReload(&actions)
        }
    }

    /// After a failed start or a crash: when nothing serves or starts, back off and restart, or give up after
    /// ``FailureCount/attemptsBeforeGivingUp`` failures in a row of a program that never served.
    private mutating func afterFailure(now: UInt64, _ actions: inout [Action]) {
        guard !record.state.isStopping, !record.generations.contains(where: \.phase.isLive) else { return }
        if record.failures.shouldGiveUp {
            actions.append(.log(.critical, "the program failed \(record.failures.inARow) times in a row and never became ready: giving up"))
            stop(because: "giving up", exitCode: 4, now: now, &actions)
            return
        }
        let delay = record.failures.backoffSeconds
        record.state = .backingOff(until: now + nanoseconds(delay))
        actions.append(.log(.warning, "no generation serves: restarting in \(Seconds(delay)); connections wait in the accept queue meanwhile"))
    }

    // MARK: The adopted server (`--adopt`)

    /// A generation is ready: the adopted server drains as an old generation does, its stop signal now or at a
    /// moment it holds no connection (`--stop-when-idle`), then `--grace`.
    private mutating func drainAdopted(now: UInt64, _ actions: inout [Action]) {
        guard let adopted = record.adopted else { return }
        guard let wait = settings.stopWhenIdle, !record.state.isStopping else { return signalAdopted(now: now, &actions) }
        let stopBy = now + nanoseconds(wait)
        record.adopted?.stage = .waitingForIdle(stopBy: stopBy)
        actions.append(.log(.info, "\(adopted.label): \(stopName) once it holds no connection (within \(Seconds(wait)))"))
    }

    /// The adopted server's stop signal, now: then `--grace` to finish.
    private mutating func signalAdopted(now: UInt64, _ actions: inout [Action]) {
        guard let adopted = record.adopted else { return }
        let killAt = now + grace
        record.adopted?.stage = .draining(killAt: killAt)
        actions += [.signalAdopted(settings.stopSignal),
                    .log(.info, "\(adopted.label) hands over: sent \(stopName), killed if still running in \(Seconds(settings.grace))")]
    }

    /// `up` stops: an adopted server a generation was taking over from gets its stop signal now; one that no
    /// generation replaced keeps serving, and `up` lets it go.
    private mutating func releaseAdopted(now: UInt64, _ actions: inout [Action]) {
        guard let adopted = record.adopted else { return }
        switch adopted.stage {
        case nil:
            record.adopted = nil
            actions += [.releaseAdopted, .log(.info, "\(adopted.label) keeps serving: no generation took over from it")]
        case .waitingForIdle?:
            signalAdopted(now: now, &actions)
        default:
            break
        }
    }

    /// Its --stop-when-idle moment, and the end of its grace.
    private mutating func tickAdopted(now: UInt64, _ actions: inout [Action]) {
        guard let adopted = record.adopted else { return }
        switch adopted.stage {
        case .waitingForIdle(let stopBy)?:
            if now >= stopBy {
                signalAdopted(now: now, &actions)  // no moment without connections in time: its signal anyway
            } else {
                actions.append(.stopAdoptedWhenIdle)
            }
        case .draining(let killAt)? where now >= killAt && !adopted.killed:
            record.adopted?.killed = true
            actions += [.signalAdopted(Signal.kill), .log(.warning, "\(adopted.label) still running \(Seconds(settings.grace)) after \(stopName): killed")]
        default:
            break
        }
    }

    // MARK: Reloads and stops

    private mutating func requestReload(now: UInt64, _ actions: inout [Action]) {
        guard !record.state.isStopping else { return actions.append(.log(.info, "reload ignored: stopping")) }
        if let starting = first(.starting) {
            if !record.reloadQueued { actions.append(.log(.info, "reload requested while \(starting.label) starts: one more reload follows once it is ready")) }
            record.reloadQueued = true
            return
        }
        if case .backingOff = record.state { record.state = .running }  // a reload is a restart now
        beginReload(&actions)
    }

    private mutating func beginReload(_ actions: inout [Action]) {
        actions.append(.tellSystemd([.reloading, .status("reloading")]))
        start(.reload, &actions)
    }

    /// SIGTERM or SIGINT: with `--stop-delay` and a generation that serves, `/readyz` says 503 while every
    /// generation serves on; a second one during the delay skips the rest of it, a third one kills.
    private mutating func stopAfterDelay(because reason: String, now: UInt64, _ actions: inout [Action]) {
        switch record.state {
        case .delayingStop:
            actions.append(.log(.info, "\(reason) again: skipping the rest of --stop-delay"))
            stop(because: reason, now: now, &actions)
        case .running, .backingOff:
            let delay = settings.stopDelay
            guard delay > 0, first(.ready) != nil else { return stop(because: reason, now: now, &actions) }
            record.state = .delayingStop(until: now + nanoseconds(delay), exitCode: 0)
            actions.append(.tellSystemd([.status("stopping in \(Seconds(delay)) (--stop-delay); serving meanwhile")]))
            actions.append(.log(.info, "stopping (\(reason)) in \(Seconds(delay)) (--stop-delay): /readyz answers 503, the generations serve on, reloads are refused"))
        case .stopping:
            stop(because: reason, now: now, &actions)
        }
    }

    /// The end of the stop delay, or its early end once nothing serves or starts (a crash during the delay).
    private mutating func tickStopDelay(now: UInt64, _ actions: inout [Action]) {
        guard case .delayingStop(let until, let exitCode) = record.state else { return }
        if now >= until {
            stop(because: "--stop-delay \(Seconds(settings.stopDelay)) is over", exitCode: exitCode, now: now, &actions)
        } else if !record.generations.contains(where: \.phase.isLive) {
            stop(because: "no generation serves any more during --stop-delay", exitCode: exitCode, now: now, &actions)
        }
    }

    /// Asks every live generation to stop; `up` exits with `exitCode` (or worse) once all are gone. A second
    /// stop kills them all at once.
    private mutating func stop(because reason: String, exitCode: Int32 = 0, now: UInt64, _ actions: inout [Action]) {
        if case .stopping(let code) = record.state {
            actions.append(.log(.warning, "\(reason) again: killing every generation now"))
            for i in record.generations.indices {
                record.generations[i].killed = true
                actions.append(.kill(record.generations[i].number))
            }
            record.state = .stopping(exitCode: max(code, 1))
            return
        }
        record.servingAtStop = first(.ready)?.number
        record.state = .stopping(exitCode: exitCode)
        record.reloadQueued = false
        releaseAdopted(now: now, &actions)
        actions.append(.tellSystemd([.stopping, .status("stopping")]))
        let running = record.generations.filter { $0.phase.isLive || $0.stage.signalWaits }
        let exiting = record.generations.count - running.count
        actions.append(.log(.info, "stopping (\(reason)): "
            + (running.isEmpty ? "no generation left to signal" : "\(stopName) to \(running.count) generation(s), killed if still running in \(Seconds(settings.grace))")
            + (exiting > 0 ? "; \(exiting) already stopping" : "")))
        for generation in running { askToStop(generation.number, to: .draining, now: now, &actions) }
    }

    /// Whether `up` has stopped: stopping, and every generation gone.
    package var isFinished: Bool {
        if case .stopping = record.state { return record.generations.isEmpty }
        return false
    }

    /// `up`'s exit status once it has finished: the serving generation's with `--init`, else the stop's.
    package func exitStatus(withProgram: Bool) -> Int32 {
        if withProgram, let exit = record.servingAtStopExit { return exit.shellStatus }
        if case .stopping(let code) = record.state { return code }
        return 0
    }

    // MARK: Words

    private func waitsForNotify(_ generation: GenerationRecord) -> Bool { settings.readiness == .auto && generation.heardFrom }

    package static func statusLine(serving generation: GenerationRecord, draining: Int) -> String {
        "serving: generation \(generation.number) (pid \(generation.pid))" + (draining > 0 ? ", \(draining) draining" : "")
    }

    /// A duration for the log, written as the options take them (as ``Seconds`` prints): 39ms, 1.1s, 12s.
    package static func milliseconds(_ nanoseconds: UInt64) -> String {
        switch nanoseconds {
        case ..<1_000_000_000: "\(nanoseconds / 1_000_000)ms"
        case ..<10_000_000_000: "\(Double(nanoseconds / 100_000_000) / 10)s"
        default: "\(nanoseconds / 1_000_000_000)s"
        }
    }
}

extension ReadinessCheck {
    /// Whether READY=1 makes a generation ready.
    var acceptsNotify: Bool {
        switch self {
        case .auto, .notify: true
        case .probe, .delay: false
        }
    }
}
