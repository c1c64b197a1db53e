import PortReuse
import PortReuseSystem

// The vocabulary of `portreuse up`, shared by the supervisor, its status file, the hand-over of an in-place
// upgrade, the reload client and the demo: every state is a value, nothing is parsed back out of a string.

/// Why a generation was started.
package enum StartReason: String, Codable, Sendable {
    /// The first generation of this `up`.
    case start
    /// A reload (SIGHUP, `up reload`).
    case reload
    /// After a crash or a failed start, when nothing served.
    case restart
}

/// Where a generation stands. Every generation moves forward only:
/// starting → ready → draining → exiting → gone, or starting/ready → failed → gone.
package enum GenerationPhase: String, Codable, Sendable, CaseIterable {
    /// Started, not yet ready: the serving generation (if any) goes on serving meanwhile.
    case starting
    /// Serves.
    case ready
    /// Asked to stop (after a newer generation became ready, or because `up` stops); gets `--grace` to finish.
    case draining
    /// Its main process exited while it drained; some of its processes (workers) still run.
    case exiting
    /// Will not serve: exited or not ready in time while starting, or crashed while serving.
    case failed

    /// Whether the generation serves or may still serve (so `up` has something running).
    package var isLive: Bool { self == .starting || self == .ready }
    /// Whether the generation was asked to stop and has a grace deadline.
    package var isStopping: Bool { self == .draining || self == .exiting || self == .failed }
}

/// The outcome of one reload.
package enum ReloadResult: String, Codable, Sendable {
    case ready, failed
}

/// What the supervisor as a whole is doing.
package enum SupervisorState: Equatable, Codable, Sendable {
    /// Generations run or start; nothing is scheduled.
    case running
    /// No generation serves or starts: the next one starts at this time (CLOCK_MONOTONIC, nanoseconds).
    /// Connections wait in the accept queue meanwhile.
    case backingOff(until: UInt64)
    /// Asked to stop (SIGTERM, SIGINT) with `--stop-delay`: `/readyz` answers 503 so that load balancers take
    /// `up` out of rotation, while every generation serves on and reloads are refused; at this time
    /// (CLOCK_MONOTONIC, nanoseconds), or at a second stop signal, `up` moves on to ``stopping(exitCode:)``.
    case delayingStop(until: UInt64, exitCode: Int32)
    /// Every generation was asked to stop; `up` exits with this status once all of them are gone.
    case stopping(exitCode: Int32)

    /// Whether `up` is on its way out (delaying the stop or stopping): no reload, no upgrade, not ready.
    package var isStopping: Bool {
        switch self {
        case .delayingStop, .stopping: true
        case .running, .backingOff: false
        }
    }

    /// When the state moves on by itself (the end of a backoff or of the stop delay), for the loop's timeout.
    package var movesOnAt: UInt64? {
        switch self {
        case .backingOff(let until), .delayingStop(let until, _): until
        case .running, .stopping: nil
        }
    }
}

/// How often the program failed, for the restart backoff and the give-up rule.
package struct FailureCount: Equatable, Codable, Sendable {
    /// Failed starts, and crashes of generations that had not yet served for ``stableSeconds``, since a
    /// generation last served that long.
    package var inARow = 0
    /// Whether any generation ever became ready (`up` gives up only on a program that never served).
    package var everReady = false

    package init() {}

    /// How long to wait before the next start: 0.2 s doubling per failure, at most 10 s.
    package var backoffSeconds: Double { min(0.1 * Double(1 << min(inARow, 10)), 10) }

    /// How long a generation must serve before its readiness clears the failures: a program that crashes
    /// soon after READY=1 backs off like one that never starts, instead of restarting every second forever.
    package static let stableSeconds = 10.0

    /// `up` gives up after this many failures in a row of a program that never became ready.
    package static let attemptsBeforeGivingUp = 5
    package var shouldGiveUp: Bool { !everReady && inARow >= Self.attemptsBeforeGivingUp }
}

/// Where a generation stands, with the data of that stage: the times it moves on at (CLOCK_MONOTONIC
/// nanoseconds). ``GenerationPhase`` is its word, as the status file and `/metrics` show it.
package enum GenerationStage: Equatable, Codable, Sendable {
    /// Started; fails unless ready by this time.
    case starting(readyBy: UInt64)
    case ready
    /// Steered: the cutover sent every new connection elsewhere; its stop signal waits until its queue is empty and
    /// it holds no connection, at the latest `stopBy`.
    case outOfRotation(since: UInt64, stopBy: UInt64)
    /// `--stop-when-idle`: its stop signal waits for a moment it holds no connection, at the latest `stopBy`.
    case waitingForIdle(stopBy: UInt64)
    /// Its stop signal went; killed at `killAt` if still running.
    case draining(killAt: UInt64)
    /// Its main process exited while it drained; some of its processes still run.
    case exiting(killAt: UInt64)
    /// Will not serve; killed at `killAt` if still running.
    case failed(killAt: UInt64)

    package var phase: GenerationPhase {
        switch self {
        case .starting: .starting
        case .ready: .ready
        case .outOfRotation, .waitingForIdle, .draining: .draining
        case .exiting: .exiting
        case .failed: .failed
        }
    }

    /// When its processes are killed if they still run (its stop signal's time plus `grace` where the signal waits).
    package func killAt(grace: UInt64) -> UInt64? {
        switch self {
        case .starting, .ready: nil
        case .outOfRotation(_, let stopBy), .waitingForIdle(let stopBy): stopBy + grace
        case .draining(let killAt), .exiting(let killAt), .failed(let killAt): killAt
        }
    }

    /// Whether its stop signal still waits (out of rotation, or for a moment without connections). Such a generation's
    /// main process still runs: its exit moves it to `exiting` (UpMachine's onExit).
    package var signalWaits: Bool {
        switch self {
        case .outOfRotation, .waitingForIdle: true
        default: false
        }
    }
}

/// One generation as the status file shows it and as an in-place upgrade hands it to the next `up`.
package struct GenerationRecord: Codable, Sendable, Equatable {
    package var number: Int
    package var pid: Int32
    package var reason: StartReason
    package var stage: GenerationStage
    /// When it started: wall clock (seconds since 1970) for people, monotonic (nanoseconds) for deadlines.
    package var startedAt: Double
    package var startedMonotonic: UInt64
    /// How long it took to become ready, in seconds.
    package var readySeconds: Double?
    /// The last STATUS= it sent.
    package var status: String?
    /// The process it named with MAINPID=, which gets the stop signal.
    package var mainPID: Int32?
    /// Whether it sent anything on its notify socket.
    package var heardFrom = false
    /// Whether `up` killed what was left of it when its grace ran out.
    package var killed = false
    /// How its main process ended, once it did.
    package var exit: ExitStatus?
    /// The processes it started, seen while it ran (pid and start time): a worker that left the process
    /// group (setsid) is still stopped with it.
    package var members: [Member] = []
    /// Its notify socket: `up`'s descriptor (kept open across an upgrade) and path.
    package var notifyDescriptor: Descriptor?
    package var notifyPath: String?
    /// The notification descriptor of its bind filter (kept open across an upgrade), when it has one.
    package var interceptDescriptor: Descriptor?
    /// `up`'s descriptors of the sockets this generation got, one per held socket (its own where steered, kept
    /// open across an upgrade); `nil` when every generation shares the held ones.
    package var sockets: [Descriptor]?
    /// Whether one of its own steered sockets stopped listening (it called `shutdown()` on it).
    package var socketsDown = false
    /// `--workers`: its workers as its pool last said (``WorkerPool``); nil for a generation of one process.
    package var workers: WorkerCounts?

    /// The workers of a generation of `up --workers`.
    package struct WorkerCounts: Codable, Sendable, Equatable {
        package var total: Int
        package var ready: Int
        /// Workers that exited while it served and were replaced.
        package var replaced = 0

        package init(total: Int, ready: Int, replaced: Int = 0) {
            self.total = total
            self.ready = ready
            self.replaced = replaced
        }
    }

    /// One process of a generation.
    package struct Member: Codable, Sendable, Hashable {
        package var pid: Int32
        package var startTime: UInt64
    }

    private enum CodingKeys: String, CodingKey {
        case number, pid, reason, stage, phase = "state", startedAt, startedMonotonic, readySeconds, status, mainPID, heardFrom, killed, exit
        case members, notifyDescriptor, notifyPath, interceptDescriptor, sockets, socketsDown, workers
    }

    package init(number: Int, pid: Int32, reason: StartReason, startedAt: Double, startedMonotonic: UInt64, readyBy: UInt64) {
        self.number = number
        self.pid = pid
        self.reason = reason
        self.stage = .starting(readyBy: readyBy)
        self.startedAt = startedAt
        self.startedMonotonic = startedMonotonic
    }

    package init(from decoder: any Decoder) throws {
        let values = try decoder.container(keyedBy: CodingKeys.self)
        number = try values.decode(Int.self, forKey: .number)
        pid = try values.decode(Int32.self, forKey: .pid)
        reason = try values.decode(StartReason.self, forKey: .reason)
        stage = try values.decode(GenerationStage.self, forKey: .stage)
        startedAt = try values.decode(Double.self, forKey: .startedAt)
        startedMonotonic = try values.decode(UInt64.self, forKey: .startedMonotonic)
        readySeconds = try values.decodeIfPresent(Double.self, forKey: .readySeconds)
        status = try values.decodeIfPresent(String.self, forKey: .status)
        mainPID = try values.decodeIfPresent(Int32.self, forKey: .mainPID)
        heardFrom = try values.decodeIfPresent(Bool.self, forKey: .heardFrom) ?? false
        killed = try values.decodeIfPresent(Bool.self, forKey: .killed) ?? false
        exit = try values.decodeIfPresent(ExitStatus.self, forKey: .exit)
        members = try values.decodeIfPresent([Member].self, forKey: .members) ?? []
        notifyDescriptor = try values.decodeIfPresent(Descriptor.self, forKey: .notifyDescriptor)
        notifyPath = try values.decodeIfPresent(String.self, forKey: .notifyPath)
        interceptDescriptor = try values.decodeIfPresent(Descriptor.self, forKey: .interceptDescriptor)
        sockets = try values.decodeIfPresent([Descriptor].self, forKey: .sockets)
        socketsDown = try values.decodeIfPresent(Bool.self, forKey: .socketsDown) ?? false
        workers = try values.decodeIfPresent(WorkerCounts.self, forKey: .workers)
    }

    /// Everything, and its phase as a word (`state`) for readers of the status file.
    package func encode(to encoder: any Encoder) throws {
        var values = encoder.container(keyedBy: CodingKeys.self)
        try values.encode(number, forKey: .number)
        try values.encode(pid, forKey: .pid)
        try values.encode(reason, forKey: .reason)
        try values.encode(stage, forKey: .stage)
        try values.encode(phase, forKey: .phase)
        try values.encode(startedAt, forKey: .startedAt)
        try values.encode(startedMonotonic, forKey: .startedMonotonic)
        try values.encodeIfPresent(readySeconds, forKey: .readySeconds)
        try values.encodeIfPresent(status, forKey: .status)
        try values.encodeIfPresent(mainPID, forKey: .mainPID)
        try values.encode(heardFrom, forKey: .heardFrom)
        try values.encode(killed, forKey: .killed)
        try values.encodeIfPresent(exit, forKey: .exit)
        try values.encode(members, forKey: .members)
        try values.encodeIfPresent(notifyDescriptor, forKey: .notifyDescriptor)
        try values.encodeIfPresent(notifyPath, forKey: .notifyPath)
        try values.encodeIfPresent(interceptDescriptor, forKey: .interceptDescriptor)
        try values.encodeIfPresent(sockets, forKey: .sockets)
        try values.encode(socketsDown, forKey: .socketsDown)
        try values.encodeIfPresent(workers, forKey: .workers)
    }

    package var phase: GenerationPhase { stage.phase }
    package var label: String { "generation \(number) (pid \(pid))" }

    /// The members still alive that are outside the generation's process group (a group kill misses them).
    package var membersOutsideGroup: [Member] {
        members.filter { Processes.isAlive($0.pid, startedAt: $0.startTime) && Processes.stat(of: $0.pid)?.processGroup != pid }
    }
    /// When it became ready (CLOCK_MONOTONIC nanoseconds), if it did.
    package var readyMonotonic: UInt64? { readySeconds.map { startedMonotonic + UInt64($0 * 1e9) } }
    /// The process the stop signal goes to: MAINPID= if the program named one, else the one `up` started.
    package var mainProcess: Int32 { mainPID ?? pid }
}

/// The supervisor as one value: what its state machine (``UpMachine``) changes, and all that the status file,
/// the hand-over of an in-place upgrade and `/metrics` read.
package struct SupervisorRecord: Codable, Sendable, Equatable {
    package var state = SupervisorState.running
    package var generations: [GenerationRecord] = []
    package var nextNumber = 1
    /// A reload was asked while a generation started: one more follows once it is ready.
    package var reloadQueued = false
    package var failures = FailureCount()
    /// The last 20 reloads.
    package var history: [ReloadRecord] = []
    package var upgrades = 0
    package var upgradeFailures = 0
    package var counters = SupervisorCounters()
    /// The generation that served when the stop began, and its exit once it came (`--init`).
    package var servingAtStop: Int?
    package var servingAtStopExit: ExitStatus?
    /// `--adopt`: the running server `up` took the sockets of, until it is gone.
    package var adopted: AdoptedRecord?

    package init() {}

    package func generation(_ number: Int) -> GenerationRecord? { generations.first { $0.number == number } }
}

/// One reload as the status file keeps it (the last 20).
package struct ReloadRecord: Codable, Sendable, Equatable {
    package var generation: Int
    package var startedAt: Double
    package var result: ReloadResult
    /// Why it failed, in words.
    package var reason: String?
    package var seconds: Double
    /// The kernel's TcpExt ListenOverflows and ListenDrops of `up`'s network namespace from the reload's start to
    /// its outcome (any listener of the namespace, not only up's: 0 says none was dropped anywhere).
    package var listenOverflows: UInt64?
    package var listenDrops: UInt64?
    /// The longest accept queue of up's TCP listeners seen meanwhile (sampled at each turn of the loop, every
    /// 10 ms while the generation starts), and their backlog.
    package var peakAcceptQueue: Int?
    package var backlog: Int?
    /// The established connections that the older generations still held when this one became ready.
    package var connectionsOnOlderGenerations: Int?
    /// Connections the kernel reset when `up` retired the socket of a generation this one replaced, which had gone
    /// without accepting them (it hung, crashed for good, or ran out of `--drain-timeout`); counted once it is retired.
    package var resetOnRetiredSockets: Int?
    /// `--workers`: the generation's workers, and how many were ready at the outcome.
    package var workers: GenerationRecord.WorkerCounts?

    package init(generation: Int, startedAt: Double, result: ReloadResult, reason: String?, seconds: Double) {
        self.generation = generation
        self.startedAt = startedAt
        self.result = result
        self.reason = reason
        self.seconds = seconds
    }
}

/// The server `up --adopt` took the sockets of. It serves on until a generation is ready, then drains as an old
/// generation does, in the same stages: its stop signal now, or (`--stop-when-idle`) at a moment it holds no
/// connection (``GenerationStage/waitingForIdle(stopBy:)``), then `--grace` to finish
/// (``GenerationStage/draining(killAt:)``), then SIGKILL.
package struct AdoptedRecord: Codable, Sendable, Equatable {
    package var pid: Int32
    /// Its command's name, for the log.
    package var name: String
    /// Its drain once a generation took over from it; nil while it serves.
    package var stage: GenerationStage?
    /// Whether `up` killed it when its grace ran out.
    package var killed = false

    package init(pid: Int32, name: String) {
        self.pid = pid
        self.name = name
    }

    package var label: String { "adopted pid \(pid) (\(name))" }
}
