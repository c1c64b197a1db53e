import PortReuse
import Synchronization
import PortReuseSystem

/// Load for the demo: `clients` threads that each send one short HTTP request per connection to `address`,
/// a millisecond apart, until stopped, and count what came back. With `progress`, a thread rewrites one line
/// on stderr every 100 ms.
package final class DemoLoad: @unchecked Sendable {
    /// What the load saw.
    package struct Figures {
        package var sent = 0
        package var failed = 0
        /// Answers per worker, keyed by the answer's "worker NAME pid PID".
        package var answers: [String: Int] = [:]
        /// Failures per errno symbol (ECONNREFUSED, ECONNRESET, …).
        package var errors: [String: Int] = [:]

        package var succeeded: Int { sent - failed }
        package var errorsText: String {
            errors.sorted { $0.value > $1.value }.map { "\($0.key) \($0.value)" }.joined(separator: ", ")
        }
    }

    package let address: SocketAddress
    package let clients: Int
    private let running = Atomic<Bool>(true)
    private let sent = Atomic<Int>(0)
    private let failed = Atomic<Int>(0)
    private let figures = Mutex(Figures())
    /// What the progress line says after the counts, such as "restart 2 of 5".
    package let note = Mutex("")
    private var threads: [SystemThread] = []
    private let started = Processes.monotonicNanoseconds
    private let label: String
    private let planned: Double
    private let progress: Bool

    package init(address: SocketAddress, clients: Int, label: String, seconds: Double, progress: Bool) {
        self.address = address
        self.clients = clients
        self.label = label
        self.planned = seconds
        self.progress = progress
        for _ in 0..<clients { threads.append(try! SystemThread.start { [self] in client() }) }
        if progress { threads.append(try! SystemThread.start { [self] in showProgress() }) }
    }

    package var elapsed: Double { Double(Processes.monotonicNanoseconds - started) / 1e9 }

    private func client() {
        var figures = Figures()
        let request = Array("GET / HTTP/1.0\r\nHost: portreuse-demo\r\n\r\n".utf8)
        while running.load(ordering: .relaxed) {
            figures.sent += 1
            sent.add(1, ordering: .relaxed)
            do {
                let connection = try Connection.dial(to: address, policy: .exclusive, timeout: .seconds(2))
                defer { connection.close() }
                try connection.send(request)
                let response = try connection.receiveAll(timeout: .seconds(5))
                guard let body = Self.body(response) else {
                    throw PortReuseError(.receive, diagnosis: .other("an empty or unexpected answer"))
                }
                figures.answers[body, default: 0] += 1
            } catch {
                figures.failed += 1
                failed.add(1, ordering: .relaxed)
                figures.errors[(error as? PortReuseError)?.errno?.symbol ?? "bad answer", default: 0] += 1
            }
            Processes.sleep(microseconds: 1_000)  // a client, not a benchmark: about a request per millisecond each
        }
        self.figures.withLock { total in
            total.sent += figures.sent
            total.failed += figures.failed
            total.answers.merge(figures.answers, uniquingKeysWith: +)
            total.errors.merge(figures.errors, uniquingKeysWith: +)
        }
    }

    /// The body of a `200` answer without its final newline: "worker NAME pid PID"; `nil` for anything else.
    /// (Bytes, not `String`: Swift reads "\r\n" as one character.)
    package static func body(_ response: [UInt8]) -> String? {
        guard response.starts(with: Array("HTTP/1.1 200".utf8)) else { return nil }
        let end: [UInt8] = [13, 10, 13, 10]
        guard let start = (0...max(0, response.count - 4)).first(where: { response[$0..<min(response.count, $0 + 4)].elementsEqual(end) }) else { return nil }
        let body = String(decoding: response[(start + 4)...], as: UTF8.self).trimmingCharacters(in: "\n")
        return body.hasPrefix("worker ") ? body : nil
    }

    private func showProgress() {
        while running.load(ordering: .relaxed) {
            let failedNow = failed.load(ordering: .relaxed)
            let text = "  \(label): \(String(format1: elapsed)) of \(String(format1: planned)) s, \(clients) clients, "
                + "\(sent.load(ordering: .relaxed)) requests, \(failedNow) failed" + note.withLock { $0.isEmpty ? "" : ", \($0)" }
            printError("\r\u{1B}[K" + text, newline: false)
            Processes.sleep(microseconds: 100_000)
        }
        printError("\r\u{1B}[K", newline: false)
    }

    /// Stops the clients (each finishes its request in flight, at most 7 s) and returns the figures.
    package func stop() -> Figures {
        running.store(false, ordering: .relaxed)
        for thread in threads { thread.join() }
        threads = []
        return figures.withLock { $0 }
    }
}

extension String {
    /// Without leading and trailing `characters`.
    package func trimmingCharacters(in characters: String) -> String {
        String(self.drop { characters.contains($0) }.reversed().drop { characters.contains($0) }.reversed())
    }

    /// A number with one decimal: 2.5.
    package init(format1 value: Double) {
        let tenths = Int((value * 10).rounded())
        self = "\(tenths / 10).\(abs(tenths % 10))"
    }
}
