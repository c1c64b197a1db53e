import Glibc
import PortReuse

/// What one reload did to the listeners, for its report (``ReloadRecord``): the kernel's listen overflow and
/// drop counters from its start to its outcome, and the longest accept queue seen meanwhile.
struct ReloadWatch {
    let overflowsAtStart: UInt64?
    let dropsAtStart: UInt64?
    var peakQueue = 0
    var backlog: Int?

    /// Reads the counters at the reload's start.
    static func start() -> ReloadWatch {
        let counters = Self.listenCounters()
        return ReloadWatch(overflowsAtStart: counters["ListenOverflows"], dropsAtStart: counters["ListenDrops"])
    }

    /// One look at each held TCP listener's queue: TCP_INFO on a listening socket gives its current accept
    /// queue (tcpi_unacked) and backlog (tcpi_sacked), one system call each.
    mutating func sample(_ sockets: [HeldSocket]) {
        for socket in sockets where socket.transport == .tcp {
            var info = tcp_info()
            var length = socklen_t(MemoryLayout<tcp_info>.size)
            guard getsockopt(socket.descriptor, Int32(IPPROTO_TCP), TCP_INFO, &info, &length) == 0 else { continue }
            peakQueue = max(peakQueue, Int(info.tcpi_unacked))
            backlog = max(backlog ?? 0, Int(info.tcpi_sacked))
        }
    }

    /// The report's figures, with the counters read now.
    func finish(_ record: inout ReloadRecord) {
        let counters = Self.listenCounters()
        if let start = overflowsAtStart, let now = counters["ListenOverflows"] { record.listenOverflows = now - min(now, start) }
        if let start = dropsAtStart, let now = counters["ListenDrops"] { record.listenDrops = now - min(now, start) }
        record.peakAcceptQueue = peakQueue
        record.backlog = backlog
    }

    private static func listenCounters() -> [String: UInt64] {
        guard let text = Files.read("/proc/net/netstat", limit: 1 << 16) else { return [:] }
        return KernelReadings.netstat(String(decoding: text, as: UTF8.self), group: "TcpExt")
    }
}
