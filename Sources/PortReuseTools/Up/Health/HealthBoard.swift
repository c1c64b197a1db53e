import PortReuse
import PortReuseSystem
import Synchronization

/// What `/metrics` counts over the life of one `up` process (an in-place upgrade starts again from 0, which
/// Prometheus's `rate` and `increase` take as a counter reset).
package struct SupervisorCounters: Sendable, Equatable, Codable {
    package var reloadsReady = 0
    package var reloadsFailed = 0
    /// Generations started after a crash or a failed start, when nothing served.
    package var restarts = 0
    /// Connections still queued on a steered socket when `up` retired it (its generation gone without accepting
    /// them): the kernel resets them.
    package var resetAtRetire = 0
    /// The duration of the last reload that ended (ready or failed), in seconds.
    package var lastReloadSeconds: Double?
    /// `--workers`: workers that exited while their generation served, and were replaced alone.
    package var workerReplacements = 0

    package init() {}

    /// Every field may be missing (a status file or a hand-over of an older `up`).
    package init(from decoder: any Decoder) throws {
        let values = try decoder.container(keyedBy: CodingKeys.self)
        reloadsReady = try values.decodeIfPresent(Int.self, forKey: .reloadsReady) ?? 0
        reloadsFailed = try values.decodeIfPresent(Int.self, forKey: .reloadsFailed) ?? 0
        restarts = try values.decodeIfPresent(Int.self, forKey: .restarts) ?? 0
        resetAtRetire = try values.decodeIfPresent(Int.self, forKey: .resetAtRetire) ?? 0
        lastReloadSeconds = try values.decodeIfPresent(Double.self, forKey: .lastReloadSeconds)
        workerReplacements = try values.decodeIfPresent(Int.self, forKey: .workerReplacements) ?? 0
    }

    mutating func count(_ reload: ReloadRecord) {
        switch reload.result {
        case .ready: reloadsReady += 1
        case .failed: reloadsFailed += 1
        }
        lastReloadSeconds = reload.seconds
    }
}

/// The supervisor as `--health` sees it: published by the supervisor's loop at every turn, read by the
/// health listener's thread. A value, so that the two threads share nothing but the board's lock.
package struct HealthSnapshot: Sendable {
    package struct GenerationView: Sendable, Equatable {
        package var number: Int
        package var phase: GenerationPhase
        /// Its first process and the members seen so far; `/metrics` adds the descendants alive when asked.
        package var pids: [Int32]
        /// `--workers`: its workers as its pool last said.
        package var workers: GenerationRecord.WorkerCounts?

        package init(number: Int, phase: GenerationPhase, pids: [Int32], workers: GenerationRecord.WorkerCounts? = nil) {
            self.number = number
            self.phase = phase
            self.pids = pids
            self.workers = workers
        }
    }

    /// When the loop last turned (CLOCK_MONOTONIC, nanoseconds); 0 before its first turn.
    package var lastTurn: UInt64 = 0
    package var state = SupervisorState.running
    package var generations: [GenerationView] = []
    package var counters = SupervisorCounters()
    /// The held TCP listeners as they are now: steered, each one's descriptor is the serving generation's socket.
    package var listeners: [HealthListener] = []

    package init() {}

    /// What a supervisor whose record is `record` publishes at a turn of its loop.
    package init(record: SupervisorRecord, listeners: [HealthListener], lastTurn: UInt64) {
        self.lastTurn = lastTurn
        state = record.state
        generations = record.generations.map(\.view)
        counters = record.counters
        self.listeners = listeners
    }

    /// `/livez` fails once the loop has not turned for this long: it turns at least every 250 ms.
    package static let livenessNanoseconds: UInt64 = 2_000_000_000

    /// Whether `up` should get traffic, and why, in one line.
    package var readiness: (ready: Bool, reason: String) {
        switch state {
        case .delayingStop: return (false, "stopping: --stop-delay, the generations serve on until the drain")
        case .stopping: return (false, "stopping: the generations drain")
        case .running, .backingOff: break
        }
        if let serving = generations.last(where: { $0.phase == .ready }) { return (true, "ready: generation \(serving.number) serves") }
        if case .backingOff = state { return (false, "not ready: no generation serves; restarting after a failure") }
        if let starting = generations.first(where: { $0.phase == .starting }) { return (false, "not ready: generation \(starting.number) is starting") }
        return (false, "not ready: no generation serves")
    }

    /// Whether the supervisor's loop runs, and why, in one line.
    package func liveness(now: UInt64) -> (live: Bool, reason: String) {
        guard lastTurn > 0 else { return (false, "not live: the supervisor loop has not started") }
        let since = now >= lastTurn ? now - lastTurn : 0
        let milliseconds = since / 1_000_000
        return since <= Self.livenessNanoseconds
            ? (true, "live: the supervisor loop turned \(milliseconds) ms ago")
            : (false, "not live: the supervisor loop has not turned for \(milliseconds) ms")
    }
}

/// A listening socket that `up` holds, as `/metrics` names it; its inode finds its row in the kernel's tables.
package struct HealthListener: Sendable, Equatable {
    package var name: String
    package var address: SocketAddress
    package var inode: UInt64
    /// `up`'s own descriptor of it, for TCP_INFO.
    package var descriptor: Descriptor

    /// The TCP sockets among `sockets` (a UDP socket has no accept queue; a Unix-domain one no TCP_INFO nor port).
    package static func of(_ sockets: [HeldSocket]) -> [HealthListener] {
        sockets.filter { $0.transport == .tcp }.compactMap { socket in
            guard let address = socket.address, let status = Files.status(of: socket.descriptor) else { return nil }
            return HealthListener(name: socket.name, address: address, inode: status.inode, descriptor: socket.descriptor)
        }
    }
}

/// The meeting point of the supervisor's thread (which writes) and the health listener's (which reads).
package final class HealthBoard: Sendable {
    private let current: Mutex<HealthSnapshot>

    /// The namespace's TcpExt ListenOverflows and ListenDrops when this board was made (up's start): /metrics
    /// counts from there, as its other counters count from 0 in each `up` process.
    package let listenBaseline: (overflows: UInt64?, drops: UInt64?)

    package init(listeners: [HealthListener]) {
        listenBaseline = KernelReadings.listenCounters()
        var first = HealthSnapshot()
        first.listeners = listeners
        current = Mutex(first)
    }

    /// The listeners of the last snapshot.
    package var listeners: [HealthListener] { snapshot.listeners }

    package func publish(_ snapshot: HealthSnapshot) {
        current.withLock { $0 = snapshot }
    }

    package var snapshot: HealthSnapshot { current.withLock { $0 } }
}
