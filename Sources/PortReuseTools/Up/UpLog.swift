import PortReuse
import Logging
import PortReuseSystem

/// One line per event on stderr: `12:00:01.234 portreuse up[812]: generation 2 (pid 4242) ready after 180 ms (notify)`.
/// Warnings and errors say so after the pid; metadata follows as `key=value`.
package struct UpLogHandler: LogHandler {
    package var metadata: Logger.Metadata = [:]
    package var logLevel: Logger.Level = .info

    package subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    package func log(event: LogEvent) {
        let now = Processes.localTimeOfDay
        func two(_ value: Int) -> String { value < 10 ? "0\(value)" : "\(value)" }
        let milliseconds = String(1000 + now.millisecond).dropFirst()
        let level = event.level >= .warning ? " \(event.level)" : ""
        let fields = metadata.merging(event.metadata ?? [:]) { $1 }.sorted { $0.key < $1.key }.map { " \($0.key)=\($0.value)" }.joined()
        LogWriter.standardError.write(
            "\(two(now.hour)):\(two(now.minute)):\(two(now.second)).\(milliseconds) portreuse up[\(Processes.currentID)]\(level): \(event.message)\(fields)")
    }
}

/// Writes `up`'s log lines to stderr on a thread of its own, so that the supervisor loop never waits for a
/// reader: a full or stalled stderr pipe (nobody reads it, a slow journal) must not stop reloads and stops.
/// At most ``capacity`` bytes wait; beyond that lines are dropped and counted, and the count is said once
/// writing goes on. (stderr's O_NONBLOCK cannot be set instead: the generations share its open file description.)
package final class LogWriter: @unchecked Sendable {
    package static let standardError = LogWriter(descriptor: .standardError)
    package static let capacity = 1 << 20

    private let descriptor: Descriptor
    private let lock = ConditionLock()
    private var waiting: [UInt8] = []
    private var dropped = 0
    private var writing = false
    private var started = false

    private init(descriptor: Descriptor) {
        self.descriptor = descriptor
    }

    /// Queues one line (a newline is added); never blocks for longer than taking a lock.
    package func write(_ line: String) {
        lock.withLock {
            if !started {
                started = true
                _ = try? SystemThread.start(detached: true) { [self] in run() }
            }
            let bytes = Array((line + "\n").utf8)
            if waiting.count + bytes.count > Self.capacity {
                dropped += 1
            } else {
                waiting += bytes
            }
            lock.signal()
        }
    }

    /// Waits until what is queued was written, at most `timeout` seconds (before an exit or an exec).
    package func flush(timeout: Double) {
        let deadline = Processes.monotonicNanoseconds + UInt64(timeout * 1e9)
        while Processes.monotonicNanoseconds < deadline {
            if lock.withLock({ waiting.isEmpty && !writing }) { return }
            Processes.sleep(microseconds: 1_000)
        }
    }

    private func run() {
        while true {
            let chunk: [UInt8] = lock.withLock {
                while waiting.isEmpty { lock.wait() }
                var chunk = waiting
                waiting = []
                if dropped > 0 {
                    chunk += Array("portreuse up: \(dropped) log line\(dropped == 1 ? "" : "s") dropped while stderr was not read\n".utf8)
                    dropped = 0
                }
                writing = true
                return chunk
            }
            try? Files.write(chunk, to: descriptor)  // may block: only this thread waits
            lock.withLock { writing = false }
        }
    }
}
