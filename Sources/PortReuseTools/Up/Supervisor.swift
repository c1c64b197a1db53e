import Glibc
import Logging
import PortReuse

/// The heart of `portreuse up`: one thread, one `poll` loop, and generations of the program that move
/// through explicit states: starting → ready → draining → gone (or starting → failed → gone).
///
/// `up` holds the sockets for the whole of its life; every generation gets the same ones. A reload starts a
/// new generation beside the serving one, and only once it is ready does the old one get the stop signal:
/// old and new share the kernel's accept queue, so no connection is refused or reset at any moment.
package final class Supervisor {
    package struct Configuration {
        /// The program (its path first) and its arguments.
        package var command: [String]
        package var readiness: ReadinessMode
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

        package init(
            command: [String], readiness: ReadinessMode, readyTimeout: Double, grace: Double, stopSignal: Int32, statusPath: String?,
            reusePortEnvironment: [String]?, reusePortListens: [ListenSpec], arguments: [String]
        ) {
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

    package enum Phase: String, Codable { case starting, ready, draining, failed }

    /// One run of the program.
    package final class Generation {
        package let number: Int
        package let pid: pid_t
        package let reason: String
        package let started: UInt64
        package let startedWall: Double
        package var phase = Phase.starting
        package var readyAfter: UInt64?
        package var heardFrom = false
        package var statusText: String?
        package var mainPID: pid_t?
        package var exit: ExitStatus?
        package var deadline: UInt64
        package var killed = false
        package var nextProbe: UInt64 = 0
        package let notify: NotifyReceiver?

        package init(number: Int, pid: pid_t, reason: String, started: UInt64, startedWall: Double, deadline: UInt64, notify: NotifyReceiver?) {
            self.number = number
            self.pid = pid
            self.reason = reason
            self.started = started
            self.startedWall = startedWall
            self.deadline = deadline
            self.notify = notify
        }

        package var label: String { "generation \(number) (pid \(pid))" }
        /// The process the stop signal goes to: MAINPID= if the program named one, else the one we started.
        package var mainProcess: pid_t { mainPID ?? pid }
    }

    package let configuration: Configuration
    package let sockets: [HeldSocket]
    package let runtimeFolder: String
    package var logger = Logger(label: "portreuse.up") { _ in UpLogHandler() }
    package let signals: SignalPipe
    package var generations: [Generation] = []
    package var nextNumber = 1
    package var reloadPending = false
    package var reloadStarted: UInt64?
    package var stopping = false
    package var exitCode: Int32 = 0
    package var failuresInARow = 0
    package var everReady = false
    package var restartAt: UInt64?
    package var history: [UpStatus.Reload] = []
    package var upgrades = 0
    package var upgradeFailures = 0
    package let startedWall: Double
    package var statusDirty = true
    package let canLook = GenerationProbe.canLook

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
        try? Processes.becomeSubreaper()
        if startFirst { startGeneration(reason: "start") }
        while true {
            if stopping && generations.isEmpty {
                _ = try? Readiness.notify(.status("stopped"))
                writeStatus()
                return exitCode
            }
            var descriptors = [pollfd(fd: signals.readEnd, events: Int16(POLLIN), revents: 0)]
            descriptors += generations.compactMap { $0.notify.map { pollfd(fd: $0.descriptor, events: Int16(POLLIN), revents: 0) } }
            _ = poll(&descriptors, nfds_t(descriptors.count), pollTimeout())
            for signal in signals.take() { handle(signal: signal) }
            reap()
            for generation in generations { if let notify = generation.notify { handle(messages: notify.take(), from: generation) } }
            tick()
            if statusDirty { writeStatus() }
        }
    }

    private func pollTimeout() -> Int32 {
        generations.contains { $0.phase == .starting } || generations.contains { $0.exit != nil } ? 10 : 250
    }

    private func handle(signal: Int32) {
        switch signal {
        case SIGHUP: requestReload()
        case SIGTERM, SIGINT, SIGQUIT: stop(because: "received \(SignalName(signal))")
        case SIGUSR2: upgrade()
        default: break  // SIGCHLD: reap() runs after every wake-up
        }
    }

    // MARK: Generations

    private func startGeneration(reason: String) {
        let number = nextNumber
        nextNumber += 1
        let now = Clock.now
        do throws(CommandFailure) {
            let notify = try NotifyReceiver(path: "\(runtimeFolder)/notify-\(number).sock")
            let pid = try Spawner.spawn(
                configuration.command, environment: environment(notifyPath: notify.path),
                descriptors: sockets.map(\.descriptor), setListenPID: configuration.reusePortEnvironment == nil)
            let generation = Generation(
                number: number, pid: pid, reason: reason, started: now, startedWall: Self.wallClock(),
                deadline: now + UInt64(configuration.readyTimeout * 1e9), notify: notify)
            generations.append(generation)
            logger.info("\(generation.label) started (\(reason)): \(configuration.command.joined(separator: " "))")
        } catch {
            logger.error("cannot start generation \(number): \(error.message)")
            failuresInARow += 1
            afterFailure()
        }
        statusDirty = true
    }

    /// The program's environment: ours without the protocol's variables meant for `up` itself, then the
    /// protocol's for the generation (LISTEN_PID is set by the wrapper, in the program's own process).
    private func environment(notifyPath: String) -> [String] {
        let ours = ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", "NOTIFY_SOCKET", UpState.variable]
        var entries = (configuration.reusePortEnvironment ?? ShimConfiguration.currentEnvironment()).filter { entry in
            !ours.contains { entry.hasPrefix($0 + "=") }
        }
        if configuration.reusePortEnvironment == nil {
            entries.append("LISTEN_FDS=\(sockets.count)")
            entries.append("LISTEN_FDNAMES=" + sockets.map(\.name).joined(separator: ":"))
        }
        entries.append("NOTIFY_SOCKET=\(notifyPath)")
        return entries
    }

    private func markReady(_ generation: Generation, how: String) {
        let now = Clock.now
        generation.phase = .ready
        generation.readyAfter = now - generation.started
        failuresInARow = 0
        everReady = true
        restartAt = nil
        logger.info("\(generation.label) ready after \(Self.milliseconds(now - generation.started)) (\(how))")
        for old in generations where old !== generation && old.phase == .ready { drain(old) }
        if generation.reason == "reload" { record(generation, result: "ready") }
        let draining = generations.filter { $0.phase == .draining }.count
        _ = try? Readiness.notify(.ready, .status(statusLine(serving: generation, draining: draining)))
        statusDirty = true
        if reloadPending && !stopping {
            reloadPending = false
            logger.info("starting the reload requested while \(generation.label) was starting")
            beginReload()
        }
    }

    private func statusLine(serving generation: Generation, draining: Int) -> String {
        "serving: generation \(generation.number) (pid \(generation.pid))" + (draining > 0 ? ", \(draining) draining" : "")
    }

    /// Moves a generation to `phase`, asks its main process to stop (unless it has exited already) and starts
    /// its grace period, after which `tick` kills its process group.
    private func askToStop(_ generation: Generation, phase: Phase) {
        generation.phase = phase
        generation.deadline = Clock.now + UInt64(configuration.grace * 1e9)
        if generation.exit == nil { kill(generation.mainProcess, configuration.stopSignal) }
    }

    private func drain(_ generation: Generation) {
        askToStop(generation, phase: .draining)
        let draining = generations.filter { $0.phase == .draining }.count
        logger.info(
            "\(generation.label) draining: sent \(SignalName(configuration.stopSignal)), killed if still running in \(Seconds(configuration.grace)) (\(draining) draining)")
        statusDirty = true
    }

    /// A generation that will not serve: stop it, and tell what keeps serving.
    private func fail(_ generation: Generation, _ reason: String) {
        askToStop(generation, phase: .failed)
        failuresInARow += 1
        if generation.reason == "reload" { record(generation, result: "failed: \(reason)") }
        if let serving = generations.first(where: { $0.phase == .ready }) {
            logger.error("\(generation.label) \(reason); \(serving.label) keeps serving")
            _ = try? Readiness.notify(.ready, .status("reload failed: generation \(generation.number) \(reason); " + statusLine(serving: serving, draining: 0)))
        } else {
            logger.error("\(generation.label) \(reason)")
        }
        statusDirty = true
        afterFailure()
        if reloadPending && !stopping && generations.contains(where: { $0.phase == .ready }) {
            reloadPending = false
            beginReload()
        }
    }

    /// After a failed start: when nothing serves, restart with backoff, or give up after 5 failures in a row
    /// without ever having served.
    private func afterFailure() {
        guard !stopping, !generations.contains(where: { $0.phase == .ready || $0.phase == .starting }) else { return }
        if !everReady && failuresInARow >= Self.attemptsBeforeGivingUp {
            logger.critical("the program failed \(failuresInARow) times in a row and never became ready: giving up")
            exitCode = 4
            stop(because: "giving up")
            return
        }
        let delay = min(0.1 * Double(1 << min(failuresInARow, 10)), 10)
        restartAt = Clock.now + UInt64(delay * 1e9)
        logger.warning("no generation serves: restarting in \(Seconds(delay)); connections wait in the accept queue meanwhile")
    }

    package static let attemptsBeforeGivingUp = 5

    private func requestReload() {
        guard !stopping else { return logger.info("reload ignored: stopping") }
        if let starting = generations.first(where: { $0.phase == .starting }) {
            if !reloadPending { logger.info("reload requested while \(starting.label) starts: one more reload follows once it is ready") }
            reloadPending = true
            statusDirty = true
            return
        }
        beginReload()
    }

    private func beginReload() {
        _ = try? Readiness.notify(.reloading, .status("reloading"))
        startGeneration(reason: "reload")
    }

    private func record(_ generation: Generation, result: String) {
        history.append(UpStatus.Reload(
            generation: generation.number, startedAt: generation.startedWall, result: result,
            seconds: Double(Clock.now - generation.started) / 1e9))
        if history.count > 20 { history.removeFirst(history.count - 20) }
    }

    private func stop(because reason: String) {
        if stopping {
            logger.warning("\(reason) again: killing every generation now")
            for generation in generations { kill(-generation.pid, SIGKILL); generation.killed = true }
            exitCode = max(exitCode, 1)
            return
        }
        stopping = true
        reloadPending = false
        restartAt = nil
        _ = try? Readiness.notify(.stopping, .status("stopping"))
        let running = generations.filter { $0.phase == .ready || $0.phase == .starting }
        logger.info("stopping (\(reason)): \(SignalName(configuration.stopSignal)) to \(running.count) generation(s), killed if still running in \(Seconds(configuration.grace))")
        for generation in running { askToStop(generation, phase: .draining) }
        statusDirty = true
    }

    // MARK: Events

    private func reap() {
        var status: Int32 = 0
        while true {
            let pid = waitpid(-1, &status, WNOHANG)
            guard pid > 0 else { return }
            guard let generation = generations.first(where: { $0.pid == pid }) else { continue }  // an orphaned worker
            generation.exit = ExitStatus(raw: status)
            let exit = generation.exit!
            switch generation.phase {
            case .starting:
                fail(generation, "exited before it was ready (\(exit))")
            case .ready:
                logger.error("\(generation.label) exited unexpectedly (\(exit))")
                askToStop(generation, phase: .failed)
                kill(-generation.pid, configuration.stopSignal)  // its workers, if any, must not serve on
                failuresInARow += 1
                afterFailure()
            case .draining, .failed:
                let age = Double(Clock.now - generation.started) / 1e9
                logger.info("\(generation.label) exited (\(exit)) after \(Seconds((age * 10).rounded() / 10))")
            }
            statusDirty = true
        }
    }

    private func handle(messages: [String], from generation: Generation) {
        guard !messages.isEmpty else { return }
        generation.heardFrom = true
        for message in messages {
            let (key, value) = message.split(separator: "=", maxSplits: 1).map(String.init).pairOrKey
            switch key {
            case "READY" where value == "1":
                if generation.phase == .starting, configuration.readiness.acceptsNotify { markReady(generation, how: "READY=1") }
            case "STATUS":
                if generation.statusText != value { logger.info("\(generation.label) status: \(value)") }
                generation.statusText = value
            case "MAINPID":
                if let pid = pid_t(value), pid > 0 {
                    generation.mainPID = pid
                    logger.info("\(generation.label) names pid \(pid) as its main process")
                }
            case "STOPPING" where value == "1": logger.info("\(generation.label) is stopping")
            case "RELOADING" where value == "1": logger.info("\(generation.label) is reloading itself")
            case "ERRNO": logger.warning("\(generation.label) reports errno \(value)")
            default: break
            }
        }
        statusDirty = true
    }

    /// Deadlines, readiness checks, and generations whose processes are all gone.
    private func tick() {
        let now = Clock.now
        for generation in generations {
            switch generation.phase {
            case .starting:
                if now >= generation.deadline {
                    fail(generation, "was not ready within \(Seconds(configuration.readyTimeout)) (--ready \(configuration.readiness))")
                } else if isReady(generation, now: now) {
                    markReady(generation, how: readinessWord)
                }
            case .draining, .failed:
                if now >= generation.deadline && !generation.killed && Self.groupIsAlive(generation.pid) {
                    kill(-generation.pid, SIGKILL)
                    generation.killed = true
                    if generation.phase == .draining { exitCode = stopping ? 1 : exitCode }
                    logger.warning("\(generation.label) still running \(Seconds(configuration.grace)) after \(SignalName(configuration.stopSignal)): killed")
                }
            case .ready:
                break
            }
        }
        let before = generations.count
        generations.removeAll { $0.exit != nil && !Self.groupIsAlive($0.pid) }
        if generations.count != before { statusDirty = true }
        if let restartAt, now >= restartAt, !stopping {
            self.restartAt = nil
            startGeneration(reason: "restart")
        }
    }

    private var readinessWord: String {
        switch configuration.readiness {
        case .delay(let seconds): "delay \(Seconds(seconds))"
        default: configuration.reusePortEnvironment == nil ? "probe: accepted a connection" : "listening"
        }
    }

    private func isReady(_ generation: Generation, now: UInt64) -> Bool {
        switch configuration.readiness {
        case .notify: return false
        case .delay(let seconds): return now - generation.started >= UInt64(seconds * 1e9)
        case .auto where generation.heardFrom: return false
        case .auto, .probe:
            guard now >= generation.nextProbe else { return false }
            generation.nextProbe = now + (canLook ? 10_000_000 : 200_000_000)
            return probe(generation)
        }
    }

    private func probe(_ generation: Generation) -> Bool {
        if configuration.reusePortEnvironment != nil {
            let group = Set(GenerationProbe.processes(inGroup: generation.pid))
            return configuration.reusePortListens.allSatisfy { spec in
                PortHolder.find(port: spec.address.port, transport: spec.transport, options: false).contains { holder in
                    (spec.transport == .udp || holder.state == .listen) && holder.processes.contains { group.contains($0.pid) }
                }
            }
        }
        guard let first = sockets.first(where: { $0.transport == .tcp }) ?? sockets.first else { return true }
        if canLook && !GenerationProbe.isWaiting(group: generation.pid, on: first.inode) { return false }
        // A program that says READY=1 says it before it waits for connections: read it now, so that auto uses it.
        if let notify = generation.notify { handle(messages: notify.take(), from: generation) }
        if generation.phase != .starting || configuration.readiness == .auto && generation.heardFrom { return false }
        guard first.transport == .tcp else { return canLook }  // UDP: waiting in recv on it is as far as one can see
        let others = generations.filter { $0 !== generation && $0.exit == nil && ($0.phase == .ready || $0.phase == .draining) }.map(\.pid)
        return GenerationProbe.connectionIsAccepted(listener: first.address, pausing: others, timeout: 100_000_000)
    }

    package static func groupIsAlive(_ group: pid_t) -> Bool {
        kill(-group, 0) == 0 || errno == EPERM
    }

    // MARK: Upgrading in place

    /// Replaces this process's program with the (possibly new) `portreuse` binary, keeping the pid, the
    /// sockets and the generations: checks first that the binary runs, then passes its state in a file.
    private func upgrade() {
        guard !stopping else { return logger.info("upgrade ignored: stopping") }
        let binary = UpState.executablePath
        logger.info("upgrading: checking \(binary)")
        guard let version = UpState.check(binary: binary) else {
            logger.error("upgrade failed: \(binary) --version did not succeed within 5 s; this process keeps running")
            upgradeFailures += 1
            statusDirty = true
            return
        }
        let state = UpState(
            sockets: sockets, generations: generations.map(UpState.Generation.init), nextNumber: nextNumber,
            reloadPending: reloadPending, failuresInARow: failuresInARow, everReady: everReady, history: history,
            upgrades: upgrades + 1, upgradeFailures: upgradeFailures, startedWall: startedWall, runtimeFolder: runtimeFolder)
        do throws(CommandFailure) {
            logger.info("upgrading to \(version) with \(generations.count) generation(s) and \(sockets.count) socket(s) kept")
            try state.execute(binary: binary, arguments: configuration.arguments)
        } catch {
            logger.error("upgrade failed: \(error.message); this process keeps running")
            upgradeFailures += 1
            statusDirty = true
        }
    }

    /// Takes the generations over from the previous `up` of this process.
    package func adopt(_ state: UpState) {
        nextNumber = state.nextNumber
        reloadPending = state.reloadPending
        failuresInARow = state.failuresInARow
        everReady = state.everReady
        history = state.history
        upgrades = state.upgrades
        upgradeFailures = state.upgradeFailures
        generations = state.generations.map { saved in
            let generation = Generation(
                number: saved.number, pid: saved.pid, reason: saved.reason, started: saved.started, startedWall: saved.startedWall,
                deadline: saved.deadline, notify: saved.notify.flatMap { try? NotifyReceiver(adopting: $0, path: saved.notifyPath ?? "") })
            generation.phase = saved.phase
            generation.readyAfter = saved.readyAfter
            generation.heardFrom = saved.heardFrom
            generation.statusText = saved.statusText
            generation.mainPID = saved.mainPID
            generation.killed = saved.killed
            generation.exit = saved.exit.map(ExitStatus.init(raw:))
            return generation
        }
        logger.info("upgraded: \(UpState.executablePath) runs with \(generations.count) generation(s) and \(sockets.count) socket(s)")
        if let serving = generations.first(where: { $0.phase == .ready }) {
            _ = try? Readiness.notify(.ready, .status(statusLine(serving: serving, draining: generations.filter { $0.phase == .draining }.count)))
        }
    }

    // MARK: Status

    private func writeStatus() {
        statusDirty = false
        guard let path = configuration.statusPath else { return }
        let now = Clock.now
        let status = UpStatus(
            pid: getpid(), command: configuration.command, startedAt: startedWall,
            sockets: sockets.map { UpStatus.Socket(name: $0.name, address: $0.address.description, transport: $0.transport.rawValue) },
            generations: generations.map { generation in
                UpStatus.Generation(
                    number: generation.number, pid: generation.pid, state: generation.exit != nil && generation.phase != .failed ? "exiting" : generation.phase.rawValue,
                    startedAt: generation.startedWall, ageSeconds: Double(now - generation.started) / 1e9,
                    readySeconds: generation.readyAfter.map { Double($0) / 1e9 }, status: generation.statusText)
            },
            stopping: stopping, reloadPending: reloadPending, reloads: history, upgrades: upgrades, upgradeFailures: upgradeFailures)
        status.write(to: path)
    }

    package static func milliseconds(_ nanoseconds: UInt64) -> String {
        nanoseconds >= 10_000_000_000 ? "\(nanoseconds / 1_000_000_000) s" : "\(nanoseconds / 1_000_000) ms"
    }

    package static func wallClock() -> Double {
        var time = timespec()
        clock_gettime(CLOCK_REALTIME, &time)
        return Double(time.tv_sec) + Double(time.tv_nsec) / 1e9
    }
}

extension ReadinessMode {
    /// Whether READY=1 makes a generation ready.
    package var acceptsNotify: Bool {
        switch self {
        case .auto, .notify: true
        case .probe, .delay: false
        }
    }
}

extension Array where Element == String {
    /// `["KEY", "VALUE"]` as a pair; `["KEY"]` as `(KEY, "")`.
    package var pairOrKey: (String, String) { (first ?? "", count > 1 ? self[1] : "") }
}
