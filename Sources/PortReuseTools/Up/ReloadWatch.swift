import PortReuse
import PortReuseSystem

/// What one reload did to the listeners, for its report (``ReloadRecord``): the kernel's listen overflow and
/// drop counters from its start to its outcome, and the longest accept queue seen meanwhile.
struct ReloadWatch {
    let overflowsAtStart: UInt64?
    let dropsAtStart: UInt64?
    var peakQueue = 0
    var backlog: Int?

    /// Reads the counters at the reload's start.
    static func start() -> ReloadWatch {
        let counters = KernelReadings.listenCounters()
        return ReloadWatch(overflowsAtStart: counters.overflows, dropsAtStart: counters.drops)
    }

    /// One look at each held TCP listener's accept queue and backlog (``KernelReadings/acceptQueue(of:)``).
    mutating func sample(_ sockets: [HeldSocket]) {
        for socket in sockets where socket.transport == .tcp {
            guard let queue = KernelReadings.acceptQueue(of: socket.descriptor) else { continue }
            peakQueue = max(peakQueue, queue.depth)
            backlog = max(backlog ?? 0, queue.backlog)
        }
    }

    /// The report's figures, with the counters read now.
    func finish(_ record: inout ReloadRecord) {
        let counters = KernelReadings.listenCounters()
        if let start = overflowsAtStart, let now = counters.overflows { record.listenOverflows = now - min(now, start) }
        if let start = dropsAtStart, let now = counters.drops { record.listenDrops = now - min(now, start) }
        record.peakAcceptQueue = peakQueue
        record.backlog = backlog
    }
}
