// hello: a tiny HTTP server on PortReuse, for the README, the tests and the benchmarks.
//
// It takes its listener from socket activation (`portreuse up`, systemd, `systemd-socket-activate`) or
// binds one itself, tells the supervisor when it is ready (sd_notify), answers every request with
// "hello from NAME pid PID", and on SIGTERM stops accepting, finishes the connections it has and exits 0.
//
//   swift run hello --listen 127.0.0.1:8080
//   portreuse up --listen 127.0.0.1:8080 -- .build/debug/hello
import ArgumentParser
import Foundation
import PortReuse
import Synchronization

/// Set by SIGTERM and SIGINT; the accept loop checks it after every interrupted accept.
let stopRequested = Atomic<Bool>(false)

/// The signal handler: only an atomic store, which is async-signal-safe.
func requestStop(_ signal: Int32) { stopRequested.store(true, ordering: .relaxed) }

@main
struct Hello: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "A tiny HTTP server that runs under portreuse up, under systemd, or alone.",
        discussion: "It answers every request with \"hello from NAME pid PID\" and drains on SIGTERM.")

    @Option(help: "The address to bind when not socket-activated.")
    var listen = "127.0.0.1:8080"

    @Option(help: "The sharing policy when it binds by itself.", transform: { text in
        guard let policy = SharingPolicy(rawValue: text) else { throw ValidationError("unknown policy \(text)") }
        return policy
    })
    var policy = SharingPolicy.restartable

    @Option(help: "The name in each answer.")
    var name = "hello"

    @Option(help: "Milliseconds to sleep before serving, to play a slow start-up.")
    var startupMs = 0

    @Option(help: "Milliseconds each request takes, to play a slow handler.")
    var requestMs = 0

    @Option(help: "Exit with status 3 at start-up when this file exists, to play a broken release.")
    var failIfExists: String?

    @Option(help: "Threads that serve connections.")
    var threads = 8

    @Flag(help: "Do not send READY=1 (to test readiness by probing).")
    var noNotify = false

    func run() throws {
        if let failIfExists, FileManager.default.fileExists(atPath: failIfExists) {
            FileHandle.standardError.write(Data("hello: \(failIfExists) exists: failing at start-up\n".utf8))
            throw ExitCode(3)
        }
        let queue = ConnectionQueue()
        installStopHandler { [name, requestMs] in
            for _ in 0..<max(1, threads) {
                Thread.detachNewThread { queue.serve(name: name, requestMs: requestMs) }
            }
        }
        let listener = try Listener.activated(orBind: listen, policy: policy)
        if startupMs > 0 { usleep(useconds_t(startupMs) * 1000) }
        if !noNotify { try Readiness.notify(.ready, .status("serving on \(listener.localAddress)")) }
        FileHandle.standardError.write(Data("hello: pid \(getpid()) serving on \(listener.localAddress)\n".utf8))

        while !stopRequested.load(ordering: .relaxed) {
            let connection: Connection
            do {
                connection = try listener.accept(retryOnInterrupt: false)
            } catch {
                if error.errno == .interrupted { continue }  // SIGTERM or SIGINT: look at the flag
                throw error
            }
            queue.push(connection)
        }
        _ = try? Readiness.notify(.stopping)
        listener.close()  // this process's reference only: the other generations keep the socket
        queue.finish()
        FileHandle.standardError.write(Data("hello: pid \(getpid()) drained and stopped\n".utf8))
    }
}

/// Starts the serving threads with SIGTERM and SIGINT blocked, so that only the accepting (main) thread
/// takes them and its accept() returns EINTR; then installs `requestStop` without SA_RESTART.
func installStopHandler(startingThreads: () -> Void) {
    var blocked = sigset_t()
    sigemptyset(&blocked)
    sigaddset(&blocked, SIGTERM)
    sigaddset(&blocked, SIGINT)
    pthread_sigmask(SIG_BLOCK, &blocked, nil)
    startingThreads()
    var action = sigaction()
    action.__sigaction_handler.sa_handler = requestStop
    sigemptyset(&action.sa_mask)
    action.sa_flags = 0
    sigaction(SIGTERM, &action, nil)
    sigaction(SIGINT, &action, nil)
    pthread_sigmask(SIG_UNBLOCK, &blocked, nil)
}

/// Accepted connections waiting for a serving thread.
final class ConnectionQueue: @unchecked Sendable {
    private let condition = NSCondition()
    private var waiting: [Connection] = []
    private var busy = 0
    private var finished = false

    func push(_ connection: Connection) {
        condition.lock()
        waiting.append(connection)
        condition.signal()
        condition.unlock()
    }

    /// Waits (at most 30 s) until every accepted connection has been answered.
    func finish() {
        condition.lock()
        finished = true
        condition.broadcast()
        let deadline = Date().addingTimeInterval(30)
        while !waiting.isEmpty || busy > 0 {
            if !condition.wait(until: deadline) { break }
        }
        condition.unlock()
    }

    func serve(name: String, requestMs: Int) {
        while true {
            condition.lock()
            while waiting.isEmpty && !finished { condition.wait() }
            if waiting.isEmpty { condition.unlock(); return }
            let connection = waiting.removeFirst()
            busy += 1
            condition.unlock()
            answer(connection, name: name, requestMs: requestMs)
            condition.lock()
            busy -= 1
            condition.broadcast()
            condition.unlock()
        }
    }

    private func answer(_ connection: Connection, name: String, requestMs: Int) {
        defer { connection.close() }
        var request: [UInt8] = []
        while request.count < 16_384, !request.ends(with: [13, 10, 13, 10]) {
            guard let chunk = try? connection.receive(timeout: .seconds(10)), !chunk.isEmpty else { return }
            request += chunk
        }
        if requestMs > 0 { usleep(useconds_t(requestMs) * 1000) }
        let body = "hello from \(name) pid \(getpid())\n"
        try? connection.send("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n\(body)")
    }
}

extension Array where Element == UInt8 {
    func ends(with suffix: [UInt8]) -> Bool { count >= suffix.count && Array(self[(count - suffix.count)...]) == suffix }
}
