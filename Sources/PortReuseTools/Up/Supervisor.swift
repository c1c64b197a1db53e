import Glibc
import Logging
import PortReuse

/// The heart of `portreuse up`: one thread, one `poll` loop, and generations of the program that move
/// through explicit phases (``GenerationPhase``) while the supervisor as a whole is in one ``SupervisorState``.
///
/// `up` holds the sockets for the whole of its life; every generation gets the same ones. A reload starts a
/// new generation beside the serving one, and only once it is ready does the old one get the stop signal:
/// old and new share the kernel's accept queue, so no connection waiting in it is refused or reset.
///
/// The concerns live in one file each: this one (state, loop, events), +Generations (starting, readiness,
/// stopping), +Readiness (how a generation is known to serve), +Upgrade (in-place upgrade and its hand-over),
/// +Status (the status file).
package final class Supervisor {
    package struct Configuration {
        /// The program (its path first) and its arguments.
        package var command: [String]
        package var readiness: ReadinessCheck
        package var readyTimeout: Double
        package var grace: Double
        package var stopSignal: Int32
        package var statusPath: String?
        /// `--reuseport`: the environment that preloads the shim; the generations bind by themselves.
        package var reusePortEnvironment: [String]?
        /// The ports the generations bind by themselves in `--reuseport` mode.
        package var reusePortListens: [ListenSpec]
        /// The original arguments of `up`, for upgrading in place.
        package var arguments: [String]
        /// `--stop-when-idle`: a draining generation gets its stop signal at a moment it holds no connection
        /// (at most this many seconds late), for programs that die at once on it.
        package var stopWhenIdle: Double?
        /// `--init`, or `up` is PID 1 (a container's entrypoint): after a stop, `up` exits with the status of the
        /// generation that was serving (its exit code, or 128 + the signal that ended it), as the program itself
        /// would have, instead of 0 or 1. (Orphans are reaped in every mode: `up` is their subreaper.)
        package var exitsWithProgram = false
        /// Whether each generation starts under the bind filter, so that a program that binds a held address by
        /// itself gets the held socket (``SocketSwap``); else LISTEN_FDS only.
        package var intercepts = false
        /// How generations are told which descriptors are their sockets (`--protocol`).
        package var dialect = Dialect.systemd
        /// `--stop-delay`: seconds between SIGTERM/SIGINT and the drain, while `/readyz` answers 503 (``SupervisorState/delayingStop(until:exitCode:)``).
        package var stopDelay = 0.0
        /// Whether each generation gets sockets of its own in one steered SO_REUSEPORT group (Supervisor+Steering);
        /// off with `--reuseport` and `--adopt` (sockets `up` did not make), and with `--shared-socket`.
        package var steers = false
        /// `--drain-timeout`: how long a generation out of rotation may hold connections before it gets its stop
        /// signal anyway (steered generations).
        package var drainTimeout = 10.0

        package init(
            command: [String], readiness: ReadinessCheck, readyTimeout: Double, grace: Double, stopSignal: Int32, statusPath: String?,
            reusePortEnvironment: [String]?, reusePortListens: [ListenSpec], arguments: [String], intercepts: Bool = false
        ) {
            self.intercepts = intercepts
            self.command = command
            self.readiness = readiness
            self.readyTimeout = readyTimeout
            self.grace = grace
            self.stopSignal = stopSignal
            self.statusPath = statusPath
            self.reusePortEnvironment = reusePortEnvironment
            self.reusePortListens = reusePortListens
            self.arguments = arguments
        }
    }

    /// One run of the program: its record (what the status file and an upgrade carry) and its notify socket.
    package final class Generation {
        package var record: GenerationRecord
        package let notify: NotifyReceiver?
        /// Answers the generation's binds (``SocketSwap``), when it started under the filter.
        package var interceptor: SocketCallInterceptor?
        /// `--stop-when-idle`: the stop signal is still to send, at the latest at this time (monotonic ns).
        var idleStopBy: UInt64?
        /// When the next readiness probe may run (not carried across an upgrade: probing restarts at once).
        var nextProbe: UInt64 = 0
        /// When a generation out of rotation is looked at next (Supervisor+Steering).
        var nextQuietCheck: UInt64 = 0
        /// How its readiness was seen, where the probe knows better than ``Supervisor/readinessWord``.
        var readyNote: String?
        /// A steered generation's probe connection, until the generation accepts it.
        var probe: Connection?
        /// Out of rotation: the namespace's ListenDrops at the switch-over, and whether any were counted during the
        /// reload before it (Supervisor+Steering's handshakesPending).
        var stragglers: (dropsAtCut: UInt64?, dropsBefore: Bool)?
        /// A reload's generation: what the reload does to the listeners, until its outcome.
        var reloadWatch: ReloadWatch?
        /// Whether the shared TCP sockets were non-blocking when it became ready: they share one open file
        /// description, so a generation that changes O_NONBLOCK changes it for the older ones too.
        var nonBlockingWhenReady: Bool?

        init(record: GenerationRecord, notify: NotifyReceiver?) {
            self.record = record
            self.notify = notify
        }

        package var phase: GenerationPhase {
            get { record.phase }
            set { record.phase = newValue }
        }
        package var number: Int { record.number }
        package var pid: pid_t { record.pid }
        package var label: String { record.label }
    }

    package let configuration: Configuration
    package internal(set) var sockets: [HeldSocket]
    package let runtimeFolder: String
    package var logger = Logger(label: "portreuse.up") { _ in UpLogHandler() }
    let signals: SignalPipe
    package private(set) var state = SupervisorState.running
    package internal(set) var generations: [Generation] = []
    package internal(set) var nextNumber = 1
    /// A reload was asked while a generation started: one more follows once it is ready.
    package internal(set) var reloadQueued = false
    package internal(set) var failures = FailureCount()
    package internal(set) var history: [ReloadRecord] = []
    package internal(set) var upgrades = 0
    package internal(set) var upgradeFailures = 0
    let startedWall: Double
    /// Whether something the status file shows changed since it was last written.
    var statusChanged = true
    let canLook = GenerationProbe.canLook
    /// This process's start time (/proc/self/stat), written into the status file for ``UpIdentity``.
    let ownStartTime = Processes.stat(of: getpid())?.startTime
    /// Whether the last status write failed (said once in the log, not at every change).
    var statusWriteFailed = false
    /// Why generations start without the bind filter, once that is known (said once in the log).
    var interceptionOff: String?
    /// The generation that served when the stop began, and its exit once it came (``Configuration/exitsWithProgram``).
    var servingAtStop: Int?
    var servingAtStopExit: ExitStatus?
    /// `--adopt`: the running server whose sockets `up` took, until it is gone (Supervisor+Adoption).
    package var adopted: AdoptedProcess?
    /// `--health`: where each turn of the loop publishes what `/readyz`, `/livez` and `/metrics` answer (Supervisor+Health).
    package var health: HealthBoard?
    /// What `/metrics` counts since this `up` started (Supervisor+Health).
    package internal(set) var counters = SupervisorCounters()
    /// Steered generations: the SO_REUSEPORT group of each held TCP socket that is steered, by its index in
    /// ``sockets`` (whose descriptor is then the socket traffic goes to now); empty when every generation shares
    /// the held sockets.
    package internal(set) var groups: [Int: ReuseportGroup] = [:]
    /// The steered sockets `up` opened itself (shut down when retired and at exit).
    var steeredDescriptors: Set<Int32> = []
    /// Members of each group that no generation has yet (made so that a retired socket never moves a target's
    /// slot): the next generation's sockets, by held index.
    var spares: [Int: [Int32]] = [:]
    /// The reserved source ports of up's probes, by held index (nil: they could not be reserved); the program
    /// attached to each group.
    var probeSources: [Int: ProbeSource?] = [:]
    var attachedPrograms: [Int: [SteeringProgram.Instruction]] = [:]
    #if os(Linux)
    /// The interceptors' view of each set of sockets generations got (``interceptionRules(number:sockets:)``).
    var swaps: [[Int32]: SocketSwap] = [:]
    #endif
    /// Whether orphans of the generations come to this process (set by `run`).
    private var isSubreaper = false

    package init(configuration: Configuration, sockets: [HeldSocket], runtimeFolder: String, signals: SignalPipe, startedWall: Double) {
        self.configuration = configuration
        self.sockets = sockets
        self.runtimeFolder = runtimeFolder
        self.signals = signals
        self.startedWall = startedWall
    }

    // MARK: The loop

    /// Runs until every generation is gone after a stop; returns `up`'s exit status.
    package func run(startFirst: Bool) -> Int32 {
        isSubreaper = (try? Processes.becomeSubreaper()) != nil
        startSteering()
        if startFirst { startGeneration(.start) }
        while true {
            if case .stopping(let exitCode) = state, generations.isEmpty {
                _ = try? Readiness.notify(.status("stopped"))
                shutDownSteeredSockets()
                writeStatus()
                if configuration.exitsWithProgram, let exit = servingAtStopExit { return exit.shellStatus }
                return exitCode
            }
            step()
        }
    }

    /// One turn of the loop: waits for a signal, a notify message or the next tick, then acts on all of them.
    package func step() {
        var descriptors = [pollfd(fd: signals.readEnd, events: Int16(POLLIN), revents: 0)]
        descriptors += generations.compactMap { $0.notify.map { pollfd(fd: $0.descriptor, events: Int16(POLLIN), revents: 0) } }
        _ = poll(&descriptors, nfds_t(descriptors.count), pollTimeout())
        // An upgrade replaces this program: every other signal of the batch is handled first.
        let batch = signals.take()
        for signal in batch where signal != SIGUSR2 { handle(signal: signal) }
        if batch.contains(SIGUSR2) { handle(signal: SIGUSR2) }
        reap()
        for generation in generations { if let notify = generation.notify { handle(messages: notify.take(), from: generation) } }
        tick()
        if statusChanged { writeStatus() }
        publishHealth()
    }

    private func pollTimeout() -> Int32 {
        // A steered generation's readiness costs one sock_diag request a turn: looked at often, so that a reload costs
        // little more than the program's start, and less often as the start goes on (a tenth of its time so far,
        // 1 to 10 ms), so that a slow start costs up little CPU.
        if !groups.isEmpty, let starting = generations.first(where: { $0.phase == .starting && $0.record.sockets != nil }) {
            let elapsed = (Processes.monotonicNanoseconds - starting.record.startedMonotonic) / 1_000_000
            return Int32(min(10, max(1, elapsed / 10)))
        }
        if generations.contains(where: { $0.phase == .starting || $0.record.exit != nil || $0.idleStopBy != nil || $0.record.quietStopBy != nil }) { return 10 }
        if adopted?.stopSent != nil || adopted?.idleStopBy != nil { return 10 }
        if let until = state.movesOnAt {
            let now = Processes.monotonicNanoseconds
            return until <= now ? 0 : Int32(min(250, (until - now) / 1_000_000 + 1))
        }
        return 250
    }

    private func handle(signal: Int32) {
        switch signal {
        case SIGHUP: requestReload()
        case SIGTERM, SIGINT: stopAfterDelay(because: "received \(SignalName(signal))")
        case SIGQUIT: stop(because: "received \(SignalName(signal))")
        case SIGUSR2: upgrade()
        case SIGUSR1, SIGWINCH: forward(signal)
        default: break  // SIGCHLD: reap() runs after every wake-up
        }
    }

    /// SIGUSR1 and SIGWINCH are the program's (log reopening, and the like): they go to the main process of
    /// every generation that serves or starts, never to draining ones.
    private func forward(_ signal: Int32) {
        let targets = generations.filter { $0.phase == .ready || $0.phase == .starting }
        for generation in targets { _ = try? Processes.kill(generation.record.mainProcess, signal) }
        logger.info(targets.isEmpty ? "\(SignalName(signal)): no generation to forward it to"
            : "\(SignalName(signal)) forwarded to \(targets.map(\.label).joined(separator: ", "))")
    }

    // MARK: Events

    /// Collects the exits of the generations' main processes and, once `run` made `up` their subreaper, of
    /// any orphaned descendant. A supervisor driven by `step` alone (a test) waits only for its own children,
    /// so that it never takes another child of the same process.
    private func reap() {
        var exits: [(pid_t, ExitStatus)] = []
        if isSubreaper {
            while let exit = (try? Processes.wait(noHang: true)) ?? nil { exits.append(exit) }
        } else {
            for generation in generations where generation.record.exit == nil {
                if let exit = (try? Processes.wait(generation.pid, noHang: true)) ?? nil { exits.append(exit) }
            }
        }
        for (pid, exit) in exits {
            guard let generation = generations.first(where: { $0.pid == pid }) else { continue }  // an orphaned worker
            // What it said before it exited comes first in the log ("is stopping", a last STATUS=), but a READY=1
            // of a process that is gone makes nothing ready.
            if let notify = generation.notify { handle(messages: notify.take(), from: generation, exited: true) }
            generation.record.exit = exit
            if generation.number == servingAtStop { servingAtStopExit = exit }
            switch generation.phase {
            case .starting:
                fail(generation, "exited before it was ready (\(exit))")
            case .ready:
                logger.error("\(generation.label) exited unexpectedly (\(exit))")
                askToStop(generation, phase: .failed)
                _ = try? Processes.kill(-generation.pid, configuration.stopSignal)  // its workers, if any, must not serve on
                failures.inARow += 1
                afterFailure()
            case .draining, .exiting, .failed:
                if generation.phase == .draining { generation.phase = .exiting }
                let age = Double(Processes.monotonicNanoseconds - generation.record.startedMonotonic) / 1e9
                logger.info("\(generation.label) exited (\(exit)) after \(Seconds((age * 10).rounded() / 10))")
            }
            statusChanged = true
        }
    }

    func handle(messages: [String], from generation: Generation, exited: Bool = false) {
        guard !messages.isEmpty else { return }
        generation.record.heardFrom = true
        for message in messages {
            let (key, value) = message.split(separator: "=", maxSplits: 1).map(String.init).pairOrKey
            switch key {
            case "READY" where value == "1":
                if generation.phase == .starting, !exited, configuration.readiness.acceptsNotify { markReady(generation, how: "READY=1") }
            case "STATUS":
                if generation.record.status != value { logger.info("\(generation.label) status: \(value)") }
                generation.record.status = value
            case "MAINPID":
                if let pid = pid_t(value), pid > 0 {
                    generation.record.mainPID = pid
                    logger.info("\(generation.label) names pid \(pid) as its main process")
                }
            case "STOPPING" where value == "1": logger.info("\(generation.label) is stopping")
            case "RELOADING" where value == "1": logger.info("\(generation.label) is reloading itself")
            case "ERRNO": logger.warning("\(generation.label) reports errno \(value)")
            default: break
            }
        }
        statusChanged = true
    }

    /// Deadlines, readiness checks, the restart after a backoff, and generations whose processes are all gone.
    private func tick() {
        let now = Processes.monotonicNanoseconds
        for generation in generations {
            if generation.phase == .starting { generation.reloadWatch?.sample(sockets) }
            switch generation.phase {
            case .starting:
                if now >= generation.record.deadline {
                    // A generation seen serving is never stopped for want of a readiness signal.
                    if connections(of: generation) > 0 {
                        markReady(generation, how: "seen serving: it holds connections it accepted, though --ready \(configuration.readiness) said nothing "
                            + "within \(Seconds(configuration.readyTimeout))")
                    } else {
                        fail(generation, "was not ready within \(Seconds(configuration.readyTimeout)) (--ready \(configuration.readiness))")
                    }
                } else if isReady(generation, now: now) {
                    markReady(generation, how: generation.readyNote ?? readinessWord)
                }
            case .draining, .exiting, .failed:
                let outside = generation.record.membersOutsideGroup
                if now >= generation.record.deadline && !generation.record.killed && (Processes.groupExists(generation.pid) || !outside.isEmpty) {
                    _ = try? Processes.kill(-generation.pid, SIGKILL)
                    for member in outside { _ = try? Processes.kill(member.pid, SIGKILL) }
                    if !outside.isEmpty { logger.warning("\(generation.label): \(outside.count) process(es) had left its process group (setsid): killed too") }
                    generation.record.killed = true
                    if generation.phase != .failed, case .stopping(let code) = state { enter(.stopping(exitCode: max(code, 1))) }
                    logger.warning("\(generation.label) still running \(Seconds(configuration.grace)) after \(SignalName(configuration.stopSignal)): killed")
                }
            case .ready:
                break
            }
            if let by = generation.idleStopBy, generation.phase == .draining {
                if generation.record.exit != nil {
                    generation.idleStopBy = nil
                } else if GenerationProbe.signalWhenIdle(pausing: -generation.pid, main: generation.record.mainProcess, signal: configuration.stopSignal) {
                    generation.idleStopBy = nil
                    logger.info("\(generation.label) holds no connection: sent \(SignalName(configuration.stopSignal))")
                } else if now >= by {
                    generation.idleStopBy = nil
                    _ = try? Processes.kill(generation.record.mainProcess, configuration.stopSignal)
                    logger.info("\(generation.label) held connections for \(Seconds(configuration.stopWhenIdle ?? 0)): sent \(SignalName(configuration.stopSignal)) anyway")
                }
            }
        }
        tickAdopted(now: now)
        tickStopDelay(now: now)
        checkSteeredSockets()
        tickQuietDrains(now: now)
        let stableSince = now - min(now, UInt64(FailureCount.stableSeconds * 1e9))
        if failures.inARow > 0, generations.contains(where: { $0.phase == .ready && ($0.record.readyMonotonic ?? .max) <= stableSince }) {
            failures.inARow = 0
            statusChanged = true
        }
        let before = generations.count
        for gone in generations where gone.record.exit != nil && !Processes.groupExists(gone.pid) && gone.record.membersOutsideGroup.isEmpty {
            gone.interceptor?.stop(timeout: 0.5)
            gone.interceptor = nil
        }
        generations.removeAll { $0.record.exit != nil && !Processes.groupExists($0.pid) && $0.record.membersOutsideGroup.isEmpty }
        if generations.count != before {
            statusChanged = true
            retireUnusedSockets()
        }
        if case .backingOff(let until) = state, now >= until {
            enter(.running)
            startGeneration(.restart)
        }
    }

    /// Moves the supervisor to `new`; the only place a state changes.
    func enter(_ new: SupervisorState) {
        state = new
        statusChanged = true
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

extension Array where Element == String {
    /// `["KEY", "VALUE"]` as a pair; `["KEY"]` as `(KEY, "")`.
    var pairOrKey: (String, String) { (first ?? "", count > 1 ? self[1] : "") }
}
