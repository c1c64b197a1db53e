@preconcurrency import Glibc
import PortReuse
import PortReuseSystem
import Synchronization

// What the benchmarks that run servers share: their CPU time, their stop, HTTP load, free ports.

/// The CPU time `pid` used so far (all its threads, user and system), in milliseconds: /proc/PID/stat's utime
/// and stime, in clock ticks.
public func cpuMilliseconds(_ pid: pid_t) -> Double {
    guard let file = fopen("/proc/\(pid)/stat", "r") else { return 0 }
    defer { fclose(file) }
    var buffer = [UInt8](repeating: 0, count: 4096)
    let count = fread(&buffer, 1, buffer.count, file)
    let text = String(decoding: buffer[0..<count], as: UTF8.self)
    guard let close = text.lastIndex(of: ")") else { return 0 }
    // After "pid (comm)": state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime
    let fields = text[text.index(after: close)...].split(separator: " ")
    guard fields.count > 12, let user = Double(fields[11]), let system = Double(fields[12]) else { return 0 }
    return (user + system) * 1000 / Double(sysconf(Int32(_SC_CLK_TCK)))
}

public func stopAndWait(_ pid: pid_t) {
    kill(pid, SIGTERM)
    var status: Int32 = 0
    waitpid(pid, &status, 0)
}

// MARK: Load

/// HTTP clients on threads of their own, each sending GET / on a new connection (or, `keepAlive`, HTTP/1.1 on one
/// kept connection) until stopped; they count requests sent and failed, latencies, errors by name, and, with
/// `countingBodies` (on new connections), the answers by body, for servers that answer with their pid (a cost of
/// the client's that the other benchmarks do not pay).
public final class HTTPLoad: @unchecked Sendable {
    let address: SocketAddress
    let clients: Int
    let running = Atomic<Bool>(true)
    let lock = Mutex<(sent: Int, failed: Int, latencies: [UInt64], errors: [String: Int], bodies: [String: Int])>((0, 0, [], [:], [:]))
    var threads: [SystemThread] = []

    /// Keep-alive clients: HTTP/1.1 requests on one connection for as long as the server keeps it.
    let keepAlive: Bool
    let countingBodies: Bool

    public init(_ address: SocketAddress, clients: Int, keepAlive: Bool = false, countingBodies: Bool = false) {
        self.address = address
        self.clients = clients
        self.keepAlive = keepAlive
        self.countingBodies = countingBodies
    }

    /// One response on a kept connection: the head, then Content-Length bytes. Whether the server keeps it.
    static func readResponse(_ connection: Connection) throws(PortReuseError) -> Bool {
        var received: [UInt8] = []
        while true {
            let chunk = try connection.receive(timeout: .seconds(5))
            // An end of file before a whole answer: the race of a closing idle connection (reported as EOF).
            guard !chunk.isEmpty else { throw PortReuseError(.receive, diagnosis: .other("EOF")) }
            received += chunk
            let text = String(decoding: received, as: UTF8.self)
            guard let end = text.firstRange(of: "\r\n\r\n") else { continue }
            let head = text[..<end.lowerBound].lowercased()
            guard head.hasPrefix("http/1.1 200") else { throw PortReuseError(.receive, diagnosis: .other("bad response")) }
            let length = head.split(separator: "\r\n").first { $0.hasPrefix("content-length:") }.flatMap { Int($0.dropFirst(15).filter { $0 != " " }) } ?? 0
            if text.utf8.count - text[..<end.upperBound].utf8.count >= length { return !head.contains("connection: close") }
        }
    }

    func keptClient() {
        var latencies: [UInt64] = []
        var sent = 0, failed = 0
        var errors: [String: Int] = [:]
        let request = Array("GET / HTTP/1.1\r\nHost: bench\r\n\r\n".utf8)
        var connection: Connection?
        while running.load(ordering: .relaxed) {
            let started = now()
            sent += 1
            do {
                let current = try connection ?? Connection.dial(to: address, policy: .exclusive, timeout: .seconds(5))
                connection = current
                try current.send(request)
                if !(try Self.readResponse(current)) {
                    current.close()
                    connection = nil
                }
                latencies.append(now() - started)
            } catch {
                failed += 1
                connection?.close()
                connection = nil
                let failure = error as? PortReuseError
                let word = failure?.errno.map { $0.symbol } ?? ("\(error)".contains("EOF") ? "EOF" : "bad response")
                errors[word, default: 0] += 1
                usleep(1000)
            }
        }
        connection?.close()
        lock.withLock {
            $0.sent += sent
            $0.failed += failed
            $0.latencies += latencies
            $0.errors.merge(errors, uniquingKeysWith: +)
        }
    }

    func client() {
        var latencies: [UInt64] = []
        var sent = 0, failed = 0
        var errors: [String: Int] = [:]
        var bodies: [String: Int] = [:]
        let request = Array("GET / HTTP/1.0\r\nHost: bench\r\n\r\n".utf8)
        while running.load(ordering: .relaxed) {
            let started = now()
            sent += 1
            do {
                let connection = try Connection.dial(to: address, policy: .exclusive, timeout: .seconds(5))
                try connection.send(request)
                let response = try connection.receiveAll(timeout: .seconds(5))
                connection.close()
                // HTTP/1.0 or 1.1 (python's http.server answers 1.0), status 200.
                guard response.starts(with: Array("HTTP/1.".utf8)), response.count > 12, Array(response[9..<12]) == Array("200".utf8)
                else { throw PortReuseError(.receive, diagnosis: .other("empty or bad response")) }
                latencies.append(now() - started)
                if countingBodies, let end = response.firstRange(of: Array("\r\n\r\n".utf8)), response.count - end.upperBound <= 32 {
                    bodies[String(decoding: response[end.upperBound...], as: UTF8.self), default: 0] += 1
                }
            } catch {
                failed += 1
                let word = (error as? PortReuseError)?.errno.map { $0.symbol } ?? "bad response"
                errors[word, default: 0] += 1
                usleep(1000)  // a client that failed tries again a millisecond later, not in a tight loop
            }
        }
        lock.withLock {
            $0.sent += sent
            $0.failed += failed
            $0.latencies += latencies
            $0.errors.merge(errors, uniquingKeysWith: +)
            $0.bodies.merge(bodies, uniquingKeysWith: +)
        }
    }

    public func start() {
        for _ in 0..<clients { threads.append(try! SystemThread.start { [self] in keepAlive ? keptClient() : client() }) }
    }

    /// Stops the clients: requests sent and failed, the p99 latency in milliseconds, the errors by name, and the
    /// answers of at most 32 bytes by body.
    public func stop() -> (sent: Int, failed: Int, p99: Double, errors: [String: Int], bodies: [String: Int]) {
        running.store(false, ordering: .relaxed)
        for thread in threads { thread.join() }
        return lock.withLock { result in
            let sorted = result.latencies.sorted()
            let p99 = sorted.isEmpty ? 0 : Double(sorted[min(sorted.count - 1, sorted.count * 99 / 100)]) / 1e6
            return (result.sent, result.failed, p99, result.errors, result.bodies)
        }
    }
}

/// A port free on 127.0.0.1 a moment ago.
public func freePort() -> UInt16 {
    guard let listener = try? Listener(tcp: "127.0.0.1:0", policy: .exclusive) else { fatalError("no free port") }
    return listener.localAddress.port
}

/// Waits (at most 5 s) until a connection to `address` succeeds; stops the benchmark if none does.
public func waitUntilAccepting(_ address: SocketAddress) {
    for _ in 0..<500 {
        if let connection = try? Connection.dial(to: address, policy: .exclusive, timeout: .seconds(1)) {
            connection.close()
            return
        }
        usleep(10_000)
    }
    fputs("nothing accepts on \(address)\n", stderr)
    exit(1)
}

