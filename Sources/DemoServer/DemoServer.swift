// The tiny HTTP server behind `Examples/hello` and `portreuse demo-worker`: one accepting thread, a few
// serving threads, an answer per request, and a graceful drain on SIGTERM or SIGINT (stop accepting, answer
// the connections already accepted, return). Written over the system layer's threads and condition lock, so that
// the CLI does not load Foundation.
import PortReuse
import PortReuseSystem
import Synchronization

/// Set by SIGTERM and SIGINT; the accept loop checks it after every interrupted accept.
private let stopRequested = Atomic<Bool>(false)

/// The signal handler: only an atomic store, which is async-signal-safe.
private func requestStop(_ signal: Int32) { stopRequested.store(true, ordering: .relaxed) }

/// A server that answers every HTTP request with one line of text and closes the connection, and drains on
/// SIGTERM or SIGINT. Create it before any other thread: it starts its serving threads with those signals
/// blocked, so that only the calling (accepting) thread takes them and its `accept` returns `EINTR`.
public final class DemoServer: Sendable {
    private let queue: ConnectionQueue
    private let label: String

    /// Starts `threads` serving threads and installs the stop handler (SIGTERM, SIGINT, without SA_RESTART).
    ///
    /// - Parameters:
    ///   - label: the name in the log lines on stderr (`hello`, `portreuse demo-worker`).
    ///   - threads: how many connections are answered at once.
    ///   - requestMilliseconds: how long each request takes, to play a slow handler.
    ///   - answer: the body of every answer.
    public init(label: String, threads: Int, requestMilliseconds: Int = 0, answer: @escaping @Sendable () -> String) {
        self.label = label
        let queue = ConnectionQueue(requestMilliseconds: requestMilliseconds, answer: answer)
        self.queue = queue
        // The serving threads start with SIGTERM and SIGINT blocked, so that the signals interrupt the accept
        // of this thread (no SA_RESTART), which then looks at the flag.
        Signals.setBlocked([Signal.terminate, Signal.interrupt], true)
        for _ in 0..<max(1, threads) { _ = try? SystemThread.start(detached: true) { queue.serve() } }
        Signals.handle([Signal.terminate, Signal.interrupt], restart: false, with: requestStop)
        Signals.setBlocked([Signal.terminate, Signal.interrupt], false)
    }

    /// Accepts connections until SIGTERM or SIGINT, then says STOPPING=1, closes this process's reference to
    /// the listener (other processes that share it keep serving), answers what it accepted (at most 30 s)
    /// and returns.
    public func serve(_ listener: Listener) throws(PortReuseError) {
        log("pid \(Processes.currentID) serving on \(listener.localAddress)")
        while !stopRequested.load(ordering: .relaxed) {
            let connection: Connection
            do {
                connection = try listener.accept(retryOnInterrupt: false)
            } catch {
                // A plain catch: `catch let e as PortReuseError where …` around this typed-throws call
                // crashes the Swift 6.3 compiler.
                if error.errno == .interrupted { continue }  // SIGTERM or SIGINT: look at the flag
                throw error
            }
            queue.push(connection)
        }
        _ = try? Readiness.notify(.stopping)
        listener.close()
        queue.finish()
        log("pid \(Processes.currentID) drained and stopped")
    }

    /// Writes `LABEL: TEXT` on stderr.
    public func log(_ text: String) {
        try? Files.write(Array("\(label): \(text)\n".utf8), to: .standardError)
    }
}

/// Accepted connections waiting for a serving thread (a lock and its condition).
private final class ConnectionQueue: @unchecked Sendable {
    private let lock = ConditionLock()
    private var waiting: [Connection] = []
    private var busy = 0
    private var finished = false
    private let requestMilliseconds: Int
    private let answer: @Sendable () -> String

    init(requestMilliseconds: Int, answer: @escaping @Sendable () -> String) {
        self.requestMilliseconds = requestMilliseconds
        self.answer = answer
    }

    func push(_ connection: Connection) {
        lock.withLock {
            waiting.append(connection)
            lock.broadcast()
        }
    }

    /// Waits (at most 30 s) until every accepted connection has been answered.
    func finish() {
        let deadline = ContinuousClock.now + .seconds(30)
        lock.withLock {
            finished = true
            lock.broadcast()
            while !waiting.isEmpty || busy > 0 {
                let left = deadline - ContinuousClock.now
                guard left > .zero, lock.wait(seconds: Double(left.components.seconds) + Double(left.components.attoseconds) / 1e18) else { break }
            }
        }
    }

    func serve() {
        while true {
            let next: Connection? = lock.withLock {
                while waiting.isEmpty && !finished { lock.wait() }
                guard !waiting.isEmpty else { return nil }
                busy += 1
                return waiting.removeFirst()
            }
            guard let connection = next else { return }
            respond(connection)
            lock.withLock {
                busy -= 1
                lock.broadcast()
            }
        }
    }

    private func respond(_ connection: Connection) {
        defer { connection.close() }
        var request: [UInt8] = []
        while request.count < 16_384, !request.ends(with: [13, 10, 13, 10]) {
            guard let chunk = try? connection.receive(timeout: .seconds(10)), !chunk.isEmpty else { return }
            request += chunk
        }
        if requestMilliseconds > 0 { Processes.sleep(microseconds: UInt32(requestMilliseconds) * 1000) }
        let body = answer()
        try? connection.send("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n\(body)")
    }
}

extension Array where Element == UInt8 {
    fileprivate func ends(with suffix: [UInt8]) -> Bool { count >= suffix.count && Array(self[(count - suffix.count)...]) == suffix }
}
