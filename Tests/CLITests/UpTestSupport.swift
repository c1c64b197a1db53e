import Foundation
import Glibc
import PortReuse
import TestSupport
import Testing

/// The built example server.
let hello = productsFolder + "/hello"

/// A Python server for `up`'s tests: it accepts on descriptor 3 (a TCP or a Unix-domain listener, from up), reads
/// the request and answers each connection with `answer`, a Python bytes expression (`os` is imported).
func descriptor3Server(answering answer: String) -> String {
    "import os, socket\ns = socket.socket(fileno=3)\nwhile True:\n    c, _ = s.accept(); c.recv(1024); c.sendall(\(answer)); c.close()\n"
}

/// What the server at the Unix-domain socket `path` (`@name`: an abstract one) answers to one connection, or nil.
func unixAnswer(_ path: String) throws -> String? {
    let client = "import socket, sys\nc = socket.socket(socket.AF_UNIX)\nname = sys.argv[1]\n"
        + "c.connect('\\0' + name[1:] if name.startswith('@') else name)\nc.sendall(b'?')\nprint(c.recv(64).decode(), flush=True)\n"
    return try Child([systemPython, "-c", client, path]).line(timeout: 20)
}

/// What the status file says (the parts the tests read).
struct UpSnapshot: Decodable {
    /// A case of one of up's enums as Swift's synthesized coding writes it, `{"backingOff":{"until":…}}`: its name
    /// and its values (monotonic nanoseconds, exit codes).
    struct Case: Decodable {
        var name: String
        var values: [String: Int64]

        init(from decoder: any Decoder) throws {
            let coded = try decoder.singleValueContainer().decode([String: [String: Int64]].self)
            name = coded.keys.first ?? ""
            values = coded.values.first ?? [:]
        }
    }
    struct Socket: Decodable { var name: String; var address: String; var transport: String }
    struct Workers: Decodable { var total: Int; var ready: Int; var replaced: Int }
    struct Generation: Decodable {
        var number: Int
        var pid: Int32
        /// Its phase: starting, ready, draining, exiting, failed.
        var state: String
        /// Why it started: start, reload, restart.
        var reason: String
        /// Its stage, with its times: `starting`, `ready`, `outOfRotation`, `waitingForIdle`, `draining`, `exiting`, `failed`.
        var stage: Case
        var status: String?
        /// Whether it sent anything on its notify socket.
        var heardFrom: Bool?
        /// `up`'s descriptors of its own sockets where generations are steered; nil where every generation shares the held ones.
        var sockets: [Int32]?
        var workers: Workers?

        /// Whether its stop signal still waits (out of rotation, or for a moment without connections).
        var signalWaits: Bool { stage.name == "outOfRotation" || stage.name == "waitingForIdle" }
    }
    struct Reload: Decodable {
        var generation: Int
        var result: String
        var reason: String?
        var seconds: Double
        var resetOnRetiredSockets: Int?
    }
    var pid: Int32
    var knownServer: String?
    var sockets: [Socket]
    var generations: [Generation]
    /// `running`, `backingOff`, `delayingStop` or `stopping`.
    var state: Case
    var reloads: [Reload]
    var upgrades: Int
    var upgradeFailures: Int
    /// The binary an in-place upgrade is checking or becoming, while it does.
    var upgrading: String?
    var reloadPending: Bool
    /// The number the next generation will get.
    var nextGeneration: Int

    var serving: [Generation] { generations.filter { $0.state == "ready" } }
}

/// `portreuse up` for a test: its log in a temporary folder, its pid file beside it; stopped (SIGTERM, then
/// SIGKILL for it and every generation) when the test drops it.
final class UpProcess: @unchecked Sendable {
    let folder: TemporaryFolder
    let pid: pid_t
    let log: String
    let pidFile: String
    private var exitStatus: Int32?

    /// An `up` started by the test itself (from a copy of the binary, say).
    init(pid: pid_t, folder: TemporaryFolder) {
        self.folder = folder
        self.pid = pid
        log = folder.path + "/up.log"
        pidFile = folder.path + "/up.pid"
    }

    /// `launcher` goes before `portreuse up` (as in systemd-socket-activate, which then execs up).
    init(_ arguments: [String], environment: [String: String]? = nil, folder: TemporaryFolder? = nil, launcher: [String] = []) throws {
        self.folder = try folder ?? TemporaryFolder()
        log = self.folder.path + "/up.log"
        pidFile = self.folder.path + "/up.pid"
        pid = try spawn(launcher + [portreuse, "up", "--pid-file", pidFile] + arguments, log: log, environment: environment)
    }

    var logText: String { (try? String(contentsOfFile: log, encoding: .utf8)) ?? "" }

    /// Waits until the log has a line containing `text` (at most `timeout` seconds).
    @discardableResult
    func waitForLog(_ text: String, count: Int = 1, timeout: Double = 30) -> Bool {
        waitUntil(timeout: timeout) { logText.components(separatedBy: "\n").filter({ $0.contains(text) }).count >= count }
    }

    var status: UpSnapshot? {
        guard let data = FileManager.default.contents(atPath: pidFile + ".status") else { return nil }
        return try? JSONDecoder().decode(UpSnapshot.self, from: data)
    }

    /// Waits until the status file satisfies `condition`.
    func waitForStatus(timeout: Double = 30, _ condition: (UpSnapshot) -> Bool) -> UpSnapshot? {
        waitFor(timeout: timeout) { status.flatMap { condition($0) ? $0 : nil } }
    }

    /// The serving generation's first socket address, once one serves.
    func servingAddress(timeout: Double = 30) throws -> SocketAddress {
        let status = try #require(waitForStatus(timeout: timeout) { !$0.serving.isEmpty }, "no generation became ready:\n\(logText)")
        let text = try #require(status.sockets.first?.address)
        let colon = try #require(text.lastIndex(of: ":"))
        let host = text[..<colon].trimmingCharacters(in: CharacterSet(charactersIn: "[]"))
        return SocketAddress(ip: try #require(IPAddress(host)), port: try #require(UInt16(text[text.index(after: colon)...])))
    }

    /// Sends a signal and returns at once.
    func signal(_ number: Int32) { kill(pid, number) }

    /// Waits for `up` to exit (at most `timeout` seconds); its exit status, or nil.
    func waitForExit(timeout: Double = 40) -> Int32? {
        if let exitStatus { return exitStatus }
        exitStatus = reap(pid, timeout: timeout)?.shellStatus
        return exitStatus
    }

    /// SIGTERM, then the exit status.
    func stop() -> Int32? {
        signal(SIGTERM)
        return waitForExit()
    }

    deinit {
        let generations = status?.generations.map(\.pid) ?? []
        if exitStatus == nil {
            kill(pid, SIGTERM)
            if waitForExit(timeout: 15) == nil {
                kill(pid, SIGKILL)
                for generation in generations { kill(-generation, SIGKILL) }
                _ = waitForExit(timeout: 5)
            }
        }
    }
}

/// Keeps `clients` threads sending HTTP requests to `address` until stopped; counts answers and failures.
final class HTTPLoad: @unchecked Sendable {
    private let lock = NSLock()
    private var running = true
    private(set) var answered = 0
    private(set) var failures: [String] = []
    private var answersByBody: [String: Int] = [:]
    private let group = DispatchGroup()

    init(_ address: SocketAddress, clients: Int = 8) {
        for _ in 0..<clients {
            group.enter()
            Thread.detachNewThread { [self] in
                defer { group.leave() }
                let deadline = Date().addingTimeInterval(120)  // bounded even if nobody stops it
                while lock.withLock({ running }) && Date() < deadline {
                    do {
                        let body = try httpGet(address)
                        lock.withLock { answered += 1; answersByBody[body, default: 0] += 1 }
                    } catch {
                        lock.withLock { failures.append("\(error)") }
                    }
                }
            }
        }
    }

    /// Stops the clients and waits for them; returns (answered, failures).
    func stop() -> (answered: Int, failures: [String]) {
        lock.withLock { running = false }
        _ = group.wait(timeout: .now() + 30)
        return lock.withLock { (answered, failures) }
    }

    var count: Int { lock.withLock { answered } }
}

extension UpProcess {
    /// Reloads `times` times under `clients` HTTP clients of `address`: each SIGHUP waits until the new generation
    /// alone serves (at most `timeout` seconds each) and until the clients got answers from it. Returns what the
    /// clients saw and how many reloads completed (it stops at the first that does not).
    func reloadUnderLoad(_ address: SocketAddress, times: Int, clients: Int = 4, timeout: Double = 60) -> (answered: Int, failures: [String], reloads: Int) {
        let load = HTTPLoad(address, clients: clients)
        var reloads = 0
        if waitUntil(timeout: timeout, { load.count > 20 }), var serving = status?.serving.first?.number {
            for _ in 0..<times {
                signal(SIGHUP)
                guard waitForStatus(timeout: timeout, { $0.serving.map(\.number) == [serving + 1] }) != nil else { break }
                serving += 1
                reloads += 1
                let before = load.count
                guard waitUntil(timeout: timeout, { load.count > before + 20 }) else { break }
            }
        }
        let (answered, failures) = load.stop()
        return (answered, failures, reloads)
    }
}
