import Foundation
import Glibc
import PortReuse
import TestSupport
import Testing

/// The built example server.
let hello = productsFolder + "/hello"

/// Starts a program with posix_spawn, an empty signal mask and default signal actions (Foundation's `Process`
/// would pass on the test thread's blocked SIGTERM), stdin from /dev/null, stdout and stderr into `log`.
func spawn(_ arguments: [String], log: String, environment: [String: String]? = nil) throws -> pid_t {
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    posix_spawn_file_actions_addopen(&actions, 1, log, O_WRONLY | O_CREAT | O_APPEND, 0o644)
    posix_spawn_file_actions_adddup2(&actions, 1, 2)
    var attributes = posix_spawnattr_t()
    posix_spawnattr_init(&attributes)
    defer { posix_spawnattr_destroy(&attributes) }
    var none = sigset_t(), all = sigset_t()
    sigemptyset(&none)
    sigfillset(&all)
    sigdelset(&all, SIGKILL)
    sigdelset(&all, SIGSTOP)
    posix_spawnattr_setsigmask(&attributes, &none)
    posix_spawnattr_setsigdefault(&attributes, &all)
    posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
    let env = (environment ?? ProcessInfo.processInfo.environment).map { "\($0.key)=\($0.value)" }
    var pid = pid_t()
    let argv = arguments.map { strdup($0) } + [nil]
    let envp = env.map { strdup($0) } + [nil]
    defer { (argv + envp).forEach { free($0) } }
    let code = posix_spawn(&pid, arguments[0], &actions, &attributes, argv, envp)
    guard code == 0 else { throw POSIXError(.init(rawValue: code) ?? .EIO) }
    return pid
}

/// What the status file says (the parts the tests read).
struct UpSnapshot: Decodable {
    struct Socket: Decodable { var name: String; var address: String; var transport: String }
    struct Generation: Decodable { var number: Int; var pid: Int32; var state: String; var status: String? }
    struct Reload: Decodable { var generation: Int; var result: String; var seconds: Double }
    var pid: Int32
    var sockets: [Socket]
    var generations: [Generation]
    var reloads: [Reload]
    var upgrades: Int
    var reloadPending: Bool

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
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if logText.components(separatedBy: "\n").filter({ $0.contains(text) }).count >= count { return true }
            usleep(20_000)
        }
        return false
    }

    var status: UpSnapshot? {
        guard let data = FileManager.default.contents(atPath: pidFile + ".status") else { return nil }
        return try? JSONDecoder().decode(UpSnapshot.self, from: data)
    }

    /// Waits until the status file satisfies `condition`.
    func waitForStatus(timeout: Double = 30, _ condition: (UpSnapshot) -> Bool) -> UpSnapshot? {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if let status, condition(status) { return status }
            usleep(20_000)
        }
        return nil
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
        let deadline = Date().addingTimeInterval(timeout)
        var status: Int32 = 0
        while Date() < deadline {
            if waitpid(pid, &status, WNOHANG) == pid {
                exitStatus = status & 0x7F == 0 ? (status >> 8) & 0xFF : 128 + (status & 0x7F)
                return exitStatus
            }
            usleep(20_000)
        }
        return nil
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
