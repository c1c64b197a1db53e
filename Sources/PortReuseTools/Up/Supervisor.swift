import Logging
import PortReuse
import PortReuseSystem
import PortReuseInterception

/// The heart of `portreuse up`: one thread, one `poll` loop around a pure state machine (``UpMachine``). Each
/// turn gathers what happened (signals, exits, notify messages, the clock) as events, hands them to the machine,
/// and carries out the actions it returns, here and only here: spawns, signals, steering, the looks at the
/// kernel that the machine asks for (whose answers are events again).
///
/// `up` holds the sockets for the whole of its life. Steered (Supervisor+Steering), every generation gets a
/// socket of its own in one SO_REUSEPORT group and a BPF program sends new connections to the serving one;
/// otherwise every generation shares the held sockets.
///
/// The effects live in one file each: this one (the loop, events in, actions out), +Generations (the spawn and
/// what a generation gets), +Readiness (how a generation is seen to serve), +Steering (sockets per generation),
/// +Adoption (`--adopt`), +Upgrade (in-place upgrade), +Status (the status file and `--health`).
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
        /// What up knows of the server (``UpDefaults/note``): said in the log line of each generation's start.
        package var serverNote: String?
        /// `--stop-delay`: seconds between SIGTERM/SIGINT and the drain, while `/readyz` answers 503 (``SupervisorState/delayingStop(until:exitCode:)``).
        package var stopDelay = 0.0
        /// Whether each generation gets sockets of its own in one steered SO_REUSEPORT group (Supervisor+Steering);
        /// off with `--reuseport` and `--adopt` (sockets `up` did not make), and with `--shared-socket`.
        package var steers = false
        /// `--drain-timeout`: how long a generation out of rotation may hold connections before it gets its stop
        /// signal anyway (steered generations).
        package var drainTimeout = 10.0
        /// `--workers`: each generation is this many copies of the program, started by a ``WorkerPool``, each on
        /// sockets of its own (where steered).
        package var workers = 1

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


    /// What `up` holds for one generation besides its record: its notify socket, its interceptor, its probe.
    final class Resources {
        let notify: NotifyReceiver?
        /// Answers the generation's binds (``SocketSwap``), when it started under the filter.
        var interceptor: SocketCallInterceptor?
        /// When the next readiness probe may run (not carried across an upgrade: probing restarts at once).
        var nextProbe: UInt64 = 0
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

        init(notify: NotifyReceiver?) { self.notify = notify }
    }

    package let configuration: Configuration
    package internal(set) var sockets: [HeldSocket]
    package let runtimeFolder: String
    package var logger = Logger(label: "portreuse.up") { _ in UpLogHandler() }
    let signals: SignalPipe
    /// The clock (CLOCK_MONOTONIC nanoseconds); a test may set its own.
    let clock: () -> UInt64
    /// The decisions, and the supervisor's record: the status file, the hand-over and `/metrics` read it.
    package internal(set) var machine: UpMachine
    /// What `up` holds for each generation, by number.
    var resources: [Int: Resources] = [:]
    let startedWall: Double
    /// The record as the status file last got it.
    var written: SupervisorRecord?
    /// The processes as one pass over /proc found them this turn of the loop (``processTree()``).
    private var turnTree: Processes.Tree?
    let canLook = GenerationProbe.canLook
    /// This process's start time (/proc/self/stat), written into the status file for ``UpIdentity``.
    let ownStartTime = Processes.stat(of: Processes.currentID)?.startTime
    /// Whether the last status write failed (said once in the log, not at every change).
    var statusWriteFailed = false
    /// The binary an in-place upgrade checks and becomes, while it runs (the status file says so).
    var upgradingTo: String?
    /// Why generations start without the bind filter, once that is known (said once in the log).
    var interceptionOff: String?
    /// `--adopt`: the running server whose sockets `up` took, until it is gone (Supervisor+Adoption).
    package var adopted: AdoptedProcess?
    /// `--health`: where each turn of the loop publishes what `/readyz`, `/livez` and `/metrics` answer (Supervisor+Status).
    package var health: HealthBoard?
    /// Steered generations: the SO_REUSEPORT group of each held TCP socket that is steered, by its index in
    /// ``sockets`` (whose descriptor is then the socket traffic goes to now); empty when every generation shares
    /// the held sockets.
    package internal(set) var groups: [Int: ReuseportGroup] = [:]
    /// The steered sockets `up` opened itself (shut down when retired and at exit).
    var steeredDescriptors: Set<Descriptor> = []
    /// Members of each group that no generation has yet (made so that a retired socket never moves a target's
    /// slot): the next generation's sockets, by held index.
    var spares: [Int: [Descriptor]] = [:]
    /// The reserved source ports of up's probes, by held index (nil: they could not be reserved); the program
    /// attached to each group.
    var probeSources: [Int: ProbeSource?] = [:]
    var attachedPrograms: [Int: [SteeringProgram.Instruction]] = [:]
    /// The sockets each group's program sends new connections to, by held index: the serving generation's, one
    /// per worker (the first is that held socket's ``HeldSocket/descriptor``).
    var servingTargets: [Int: [Descriptor]] = [:]
    /// Steered by eBPF (where `up` may load it): each group's map of sockets by key, and the choice attached.
    var steeringMaps: [Int: SteeringMap] = [:]
    var attachedChoices: [Int: SteeringMap.Choice] = [:]
    #if os(Linux)
    /// The interceptors' view of each set of sockets generations got (``interceptionRules(number:sockets:)``).
    var swaps: [[Descriptor]: SocketSwap] = [:]
    #endif
    /// Whether orphans of the generations come to this process (set by `run`).
    private var isSubreaper = false

    /// A supervisor of `configuration` holding `sockets`, or (`handover`) the one the previous `up` of this
    /// process was, carried on exactly where it stood; publishing to `health`, taking over from `adopted`.
    package init(
        configuration: Configuration, sockets: [HeldSocket], runtimeFolder: String, signals: SignalPipe, startedWall: Double,
        handover: UpgradeHandover? = nil, health: HealthBoard? = nil, adopted: AdoptedProcess? = nil,
        clock: @escaping () -> UInt64 = { Processes.monotonicNanoseconds }
    ) {
        self.configuration = configuration
        self.sockets = sockets
        self.runtimeFolder = runtimeFolder
        self.signals = signals
        self.startedWall = startedWall
        self.clock = clock
        self.health = health
        self.adopted = adopted
        // With --workers, the pool of each generation sees its workers ready by --ready, and says READY=1 once all are.
        var settings = UpMachine.Settings(
            readiness: configuration.workers > 1 ? .notify : configuration.readiness, readyTimeout: configuration.readyTimeout, grace: configuration.grace,
            stopSignal: configuration.stopSignal)
        settings.stopWhenIdle = configuration.stopWhenIdle
        settings.stopDelay = configuration.stopDelay
        settings.drainTimeout = configuration.drainTimeout
        settings.readinessWord = Self.readinessWord(configuration, sockets: sockets)
        var record = handover?.record ?? SupervisorRecord()
        if let adopted { record.adopted = AdoptedRecord(pid: adopted.adoption.pid, name: adopted.adoption.name) }
        machine = UpMachine(settings: settings, record: record)
        if let handover { adopt(handover) }
    }

    // MARK: The record, as tests and the other parts read it

    package var record: SupervisorRecord { machine.record }
    package var state: SupervisorState { record.state }
    package var generations: [GenerationRecord] { record.generations }
    package var failures: FailureCount { record.failures }
    package var nextNumber: Int { record.nextNumber }
    package var counters: SupervisorCounters { record.counters }

    // MARK: The loop

    /// Runs until every generation is gone after a stop; returns `up`'s exit status.
    package func run(startFirst: Bool) -> Int32 {
        isSubreaper = (try? Processes.becomeSubreaper()) != nil
        startSteering()
        if startFirst { startGeneration(.start) }
        while !machine.isFinished { step() }
        _ = try? Readiness.notify(.status("stopped"))
        shutDownSteeredSockets()
        writeStatus()
        return machine.exitStatus(withProgram: configuration.exitsWithProgram)
    }

    /// Starts a generation (the first one; a test's).
    package func startGeneration(_ reason: StartReason) {
        var actions: [UpMachine.Action] = []
        machine.start(reason, &actions)
        execute(actions)
    }

    /// One turn of the loop: waits for a signal, a notify message or the next tick, then hands all that happened
    /// to the machine.
    package func step() {
        _ = Files.readable([signals.readEnd] + resources.values.compactMap { $0.notify?.descriptor }, milliseconds: pollTimeout())
        turnTree = nil
        // An upgrade replaces this program: every other signal of the batch is handled first.
        let batch = signals.take()
        for signal in batch where signal != Signal.user2 { handle(.signal(signal)) }
        if batch.contains(Signal.user2) { handle(.signal(Signal.user2)) }
        reap()
        for generation in generations { readMessages(of: generation.number, exited: false) }
        for generation in generations where generation.phase == .starting { resources[generation.number]?.reloadWatch?.sample(sockets) }
        if adopted?.hasExited == true { handle(.adoptedExited) }
        handle(.tick)
        if written != record { writeStatus() }
        publishHealth()
    }

    private func pollTimeout() -> Int32 {
        Int32(machine.nextTick(now: clock()) / 1_000_000)
    }

    /// Collects the exits of the generations' main processes and, once `run` made `up` their subreaper, of
    /// any orphaned descendant. A supervisor driven by `step` alone (a test) waits only for its own children,
    /// so that it never takes another child of the same process.
    private func reap() {
        var exits: [(Int32, ExitStatus)] = []
        if isSubreaper {
            while let exit = (try? Processes.wait(noHang: true)) ?? nil { exits.append(exit) }
        } else {
            for generation in generations where generation.exit == nil {
                if let exit = (try? Processes.wait(generation.pid, noHang: true)) ?? nil { exits.append(exit) }
            }
        }
        for (pid, exit) in exits {
            // What it said before it exited comes first in the log ("is stopping", a last STATUS=), but a READY=1
            // of a process that is gone makes nothing ready.
            if let generation = generations.first(where: { $0.pid == pid }) { readMessages(of: generation.number, exited: true) }
            handle(.exited(pid: pid, exit))
        }
    }

    /// What a generation sent on its notify socket since the last read.
    func readMessages(of number: Int, exited: Bool) {
        guard let messages = resources[number]?.notify?.take(), !messages.isEmpty else { return }
        handle(.notified(number: number, messages: messages, exited: exited))
    }

    // MARK: Events in, actions out

    /// Hands `event` to the machine and carries out what it decides.
    func handle(_ event: UpMachine.Event) {
        execute(machine.handle(event, now: clock()))
    }

    /// Carries out the machine's actions in order; the answer to a look is handed back at once, before the next action.
    private func execute(_ actions: [UpMachine.Action]) {
        for action in actions {
            for answer in perform(action) { handle(answer) }
        }
    }

    /// The one place where a decision becomes an effect; returns what the effect found out, as events.
    private func perform(_ action: UpMachine.Action) -> [UpMachine.Event] {
        switch action {
        case .start(let number, let reason):
            defer { turnTree = nil }  // the tree read this turn knows nothing of the new generation
            return spawnGeneration(number, reason: reason)
        case .signal(let pid, let signal):
            Processes.kill(pid, signal)
        case .kill(let number): return kill(number).map { [$0] } ?? []
        case .prepareStop(let number): return prepareStop(number)
        case .closeProbe(let number): closeProbe(of: number)
        case .noteReady(let number): return noteReady(number)
        case .steer: steer()
        case .takeOutOfRotation(let number): takeOutOfRotation(number)
        case .lookForReadiness(let number): return lookForReadiness(number)
        case .countConnections(let number): return generation(number).map { [.connectionsAtReadyTimeout(number: number, count: connections(of: $0))] } ?? []
        case .lookQuiet(let number): return generation(number).map { [.quietLook(number: number, busy: busyness(of: $0))] } ?? []
        case .stopWhenIdle(let number):
            guard let generation = generation(number),
                GenerationProbe.signalWhenIdle(pausing: -generation.pid, main: generation.mainProcess, signal: configuration.stopSignal)
            else { return [] }
            return [.stoppedWhenIdle(number: number)]
        case .lookAtSockets: return lookAtSteeredSockets()
        case .lookGone(let number):
            guard let generation = generation(number), !Processes.groupExists(generation.pid), generation.membersOutsideGroup.isEmpty else { return [] }
            return [.gone(number: number)]
        case .forget(let number): return forget(number)
        case .measureReload(let number, let result, let reason): return generation(number).map { [.reloadMeasured(measureReload($0, result, reason: reason))] } ?? []
        case .tellSystemd(let states): _ = try? Readiness.notify(states)
        case .log(let level, let text): logger.log(level: level, .init(stringLiteral: text))
        case .upgrade: return upgrade() ? [] : [.upgradeFailed]
        case .signalAdopted(let signal): signalAdopted(signal)
        case .stopAdoptedWhenIdle: return stopAdoptedWhenIdle()
        case .releaseAdopted: releaseAdopted()
        }
        return []
    }

    func generation(_ number: Int) -> GenerationRecord? { record.generation(number) }

    /// The processes, read once a turn however many looks need them (a pass over /proc costs about a millisecond).
    func processTree() -> Processes.Tree {
        if let turnTree { return turnTree }
        let tree = Processes.Tree()
        turnTree = tree
        return tree
    }

    /// SIGKILL to what is left of a generation: its process group and its members outside it.
    private func kill(_ number: Int) -> UpMachine.Event? {
        guard let generation = generation(number) else { return nil }
        let outside = generation.membersOutsideGroup
        let any = Processes.groupExists(generation.pid) || !outside.isEmpty
        Processes.kill(-generation.pid, Signal.kill)
        for member in outside { Processes.kill(member.pid, Signal.kill) }
        return .killed(number: number, any: any, outside: outside.count)
    }

    /// Before a generation's stop signal: its probe closes, and its processes (descendants, and whoever holds its
    /// own sockets) are noted, so that each is stopped with it.
    private func prepareStop(_ number: Int) -> [UpMachine.Event] {
        closeProbe(of: number)
        guard let generation = generation(number) else { return [] }
        let tree = processTree()
        var members = generation.exit == nil ? Self.descendants(of: generation, in: tree) : []
        members += socketHolders(of: generation, in: tree)
        return members.isEmpty ? [] : [.members(number: number, members)]
    }

    /// After a generation became ready: its members, and the blocking mode of shared sockets.
    private func noteReady(_ number: Int) -> [UpMachine.Event] {
        guard let generation = generation(number) else { return [] }
        if generation.sockets == nil { noteBlockingMode(of: generation) }
        let members = Self.descendants(of: generation, in: processTree())
        return members.isEmpty ? [] : [.members(number: number, members)]
    }

    /// The processes now descended from the generation's first process.
    static func descendants(of generation: GenerationRecord, in tree: Processes.Tree) -> [GenerationRecord.Member] {
        tree.descendants(of: generation.pid).map { GenerationRecord.Member(pid: $0.pid, startTime: $0.startTime) }
    }

    /// A generation is gone: its interceptor ends, and the sockets nobody uses any more are retired.
    private func forget(_ number: Int) -> [UpMachine.Event] {
        resources[number]?.interceptor?.stop(timeout: 0.5)
        closeProbe(of: number)
        resources[number] = nil
        return retireUnusedSockets(after: number)
    }
}
