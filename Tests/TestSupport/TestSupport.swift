import Foundation
import Glibc
import PortReuse
import Testing
import PortReuseSystem

// What the test targets share: the one way to run a program (ProcessSpawn, always with a deadline), child
// processes, waiting for a condition, reserved ports, the built products. Every wait is bounded in time and
// in count, and every process a test starts is killed and reaped when the test drops it.

/// Whether the tests run as root (needed to start a socket as user nobody).
public let isRoot = geteuid() == 0

/// The system interpreter, readable by every user (the first python3 on PATH may live in root's home).
public let systemPython = "/usr/bin/python3"

/// Tests that need root carry `.needsRoot(…)`, so that a run as another user lists them as skipped, with
/// the reason.
extension Trait where Self == ConditionTrait {
    /// Enabled only as root; skipped otherwise with "needs root …" (`reason` after "needs root: " unless it
    /// says "needs root" itself).
    public static func needsRoot(_ reason: String) -> Self {
        .enabled(if: isRoot, Comment(rawValue: reason.hasPrefix("needs root") ? reason : "needs root: " + reason))
    }
}

// MARK: Waiting

/// Checks `condition` every `interval` seconds until it holds, at most `timeout` seconds and at most
/// `timeout / interval + 1` times; whether it held. The one way the tests wait for something to happen:
/// no fixed sleep that an assertion depends on.
@discardableResult
public func waitUntil(timeout: Double = 10, interval: Double = 0.02, _ condition: () throws -> Bool) rethrows -> Bool {
    try waitFor(timeout: timeout, interval: interval) { try condition() ? true : nil } ?? false
}

/// Calls `body` every `interval` seconds until it gives a value, at most `timeout` seconds and at most
/// `timeout / interval + 1` times; the value, or `nil`.
public func waitFor<T>(timeout: Double = 10, interval: Double = 0.02, _ body: () throws -> T?) rethrows -> T? {
    let deadline = Processes.monotonicNanoseconds + UInt64(max(0, timeout) * 1e9)
    let attempts = Int(max(0, timeout) / max(interval, 0.001)) + 1
    for attempt in 0..<attempts {
        if let value = try body() { return value }
        let now = Processes.monotonicNanoseconds
        guard attempt + 1 < attempts, now < deadline else { break }
        usleep(UInt32(min(interval * 1e6, Double(deadline - now) / 1e3)))
    }
    return nil
}

// MARK: Processes

/// What a program that ran to its end did, with its two outputs kept apart.
public struct Finished: Sendable {
    /// The exit status, or the signal number when `signalled`.
    public var status: Int32
    public var signalled: Bool
    /// Stdout, byte for byte.
    public var stdout: [UInt8]
    public var stderr: String
    /// Whether it was killed (SIGKILL) because its time ran out.
    public var timedOut: Bool

    public var output: String { String(decoding: stdout, as: UTF8.self) }
    /// Stderr's lines, without empty ones.
    public var errorLines: [String] { stderr.split(separator: "\n").map(String.init) }
}

/// `NAME=value` entries for ProcessSpawn; `nil` keeps this process's environment.
func environmentEntries(_ environment: [String: String]?) -> [String]? {
    environment.map { $0.map { "\($0.key)=\($0.value)" } }
}

/// Runs a program to its end (SIGKILL after `timeout` seconds) with stdout and stderr captured apart and
/// `input` on its stdin.
///
/// Started by ``ProcessSpawn``: an empty signal mask and default signal actions, as a shell starts it (Swift
/// Testing's worker threads block SIGTERM, and Foundation's `Process` would pass that on), every descriptor
/// but 0, 1 and 2 closed.
public func capture(_ arguments: [String], environment: [String: String]? = nil, input: String = "", timeout: Double = 60) throws -> Finished {
    let finished = try ProcessSpawn(arguments, environment: environmentEntries(environment)).run(input: Array(input.utf8), timeout: timeout)
    return Finished(
        status: finished.status.signal ?? finished.status.code, signalled: finished.status.signal != nil,
        stdout: finished.standardOutput, stderr: String(decoding: finished.standardError, as: UTF8.self), timedOut: finished.timedOut)
}

/// Runs a program to its end (at most `timeout` seconds) and returns its exit status (or the signal number
/// that killed it) and stdout without its final newline; its stderr goes to the test's.
public func run(_ arguments: [String], timeout: Double = 60, environment: [String: String]? = nil) throws -> (status: Int32, output: String) {
    var spawn = ProcessSpawn(arguments, environment: environmentEntries(environment))
    spawn.standardError = .descriptor(.standardError)
    let finished = try spawn.run(timeout: timeout)
    var output = String(decoding: finished.standardOutput, as: UTF8.self)
    if output.hasSuffix("\n") { output.removeLast() }
    return (finished.status.signal ?? finished.status.code, output)
}

/// Starts a program with stdin from /dev/null and stdout and stderr appended to `log`; its pid. The caller
/// reaps it (``reap(_:timeout:)``, or `UpProcess`).
public func spawn(_ arguments: [String], log: String, environment: [String: String]? = nil) throws -> pid_t {
    var spawn = ProcessSpawn(arguments, environment: environmentEntries(environment))
    spawn.standardOutput = .appending(toFile: log)
    spawn.standardError = .other
    return try spawn.start()
}

/// Waits (at most `timeout` seconds) for child `pid` to end and reaps it; how it ended, or `nil`.
@discardableResult
package func reap(_ pid: pid_t, timeout: Double = 10) -> PortReuseSystem.ExitStatus? {
    // ECHILD: reaped already (or not our child): nothing to wait for, so stop at once.
    let outcome = waitFor(timeout: timeout, interval: 0.01) { () -> PortReuseSystem.ExitStatus?? in
        do { return try Processes.wait(pid, noHang: true).map { .some($0.status) } } catch { return .some(nil) }
    }
    return outcome ?? nil
}

/// Kills child `pid` (SIGKILL) unless it already ended, and reaps it (at most `timeout` seconds).
public func killAndReap(_ pid: pid_t, timeout: Double = 10) {
    _ = Glibc.kill(pid, SIGKILL)
    reap(pid, timeout: timeout)
}

/// A child process for a test: started at once by ``ProcessSpawn``, killed and reaped when the test drops it.
public final class Child: @unchecked Sendable {
    /// Its pid.
    public let pid: pid_t
    private let output: Descriptor
    private var input: Descriptor?
    private var buffer: [UInt8] = []
    private let lock = NSLock()
    private var ended: PortReuseSystem.ExitStatus?

    /// Starts `arguments[0]` with the rest as arguments; stdout is readable with `line(timeout:)`, stdin
    /// written with `send(_:)`. Its stderr is the test's, or /dev/null with `discardingStandardError`
    /// (servers that log every request).
    public init(_ arguments: [String], environment: [String: String]? = nil, discardingStandardError: Bool = false) throws {
        let stdin = try Files.pipe()
        let stdout: (read: Descriptor, write: Descriptor)
        do { stdout = try Files.pipe() } catch {
            Files.close(stdin.read); Files.close(stdin.write)
            throw error
        }
        var spawn = ProcessSpawn(arguments, environment: environmentEntries(environment))
        spawn.standardInput = .descriptor(stdin.read)
        spawn.standardOutput = .descriptor(stdout.write)
        spawn.standardError = discardingStandardError ? .null : .inherit
        defer { Files.close(stdin.read); Files.close(stdout.write) }
        do {
            pid = try spawn.start()
        } catch {
            Files.close(stdin.write); Files.close(stdout.read)
            throw error
        }
        input = stdin.write
        output = stdout.read
    }

    /// A Python script, run as user nobody when `asNobody` (needs root). Every script must bound its own life.
    public convenience init(python script: String, asNobody: Bool = false) throws {
        let command = (asNobody ? ["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] : []) + [systemPython, "-c", script]
        try self.init(command)
    }

    /// The next line of the child's stdout, or `nil` if none came within `timeout` seconds (or it ended).
    public func line(timeout: Double = 10) -> String? {
        let deadline = Processes.monotonicNanoseconds + UInt64(max(0, timeout) * 1e9)
        while true {
            if let newline = buffer.firstIndex(of: 10) {
                let line = String(decoding: buffer[..<newline], as: UTF8.self)
                buffer.removeSubrange(...newline)
                return line
            }
            let now = Processes.monotonicNanoseconds
            guard now < deadline else { return nil }
            var entry = pollfd(fd: output.rawValue, events: Int16(POLLIN), revents: 0)
            let ready = poll(&entry, 1, Int32(max(1, (deadline - now) / 1_000_000)))
            if ready < 0 && errno == EINTR { continue }
            guard ready > 0 else { return nil }
            var chunk = [UInt8](repeating: 0, count: 4096)
            let count = read(output.rawValue, &chunk, chunk.count)
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else { return nil }
            buffer += chunk[0..<count]
        }
    }

    /// The next line as a port number (what `pythonHolder` prints); fails the test when none comes.
    public func port(timeout: Double = 10) throws -> UInt16 {
        try #require(line(timeout: timeout).flatMap { UInt16($0) }, "the child printed no port")
    }

    /// Writes a line to the child's stdin (nothing once it closed its end).
    public func send(_ text: String) {
        guard let fd = lock.withLock({ input }) else { return }
        Files.writeWithoutSIGPIPE(Array((text + "\n").utf8), to: fd)  // EPIPE rather than SIGPIPE if the child is gone
    }

    /// Closes the child's stdin (it reads end of file).
    public func closeInput() {
        let fd = lock.withLock { () -> Descriptor? in defer { input = nil }; return input }
        if let fd { Files.close(fd) }
    }

    /// Sends a signal to the child (not once it was reaped).
    public func signal(_ number: Int32) {
        lock.withLock { if ended == nil { _ = Glibc.kill(pid, number) } }
    }

    /// How it ended, once it did (reaped by this call if needed); `nil` while it runs.
    package var exitStatus: PortReuseSystem.ExitStatus? {
        lock.withLock {
            if ended == nil, let (_, status) = (try? Processes.wait(pid, noHang: true)) ?? nil { ended = status }
            return ended
        }
    }

    public var isRunning: Bool { exitStatus == nil }

    /// Waits (at most `timeout` seconds) for it to end; its exit status or the signal number that killed it,
    /// as a shell's `$?` without the 128 (Foundation's `terminationStatus`), or `nil` if it still runs.
    @discardableResult
    public func waitForExit(timeout: Double = 30) -> Int32? {
        waitFor(timeout: timeout, interval: 0.01) { exitStatus }.map { $0.signal ?? $0.code }
    }

    deinit {
        if exitStatus == nil {
            _ = Glibc.kill(pid, SIGKILL)
            waitForExit(timeout: 10)
        }
        closeInput()
        Files.close(output)
    }
}

// MARK: Ports

/// A port reserved on 127.0.0.1 AND [::1] at once, for a test that uses it with both families: two bound
/// sockets, never listening (so a connection to the port is refused, and no datagram... see below), that
/// keep every other socket of the machine off the port until `release()` or until the value is dropped.
///
/// Found without the bind-close-rebind race of asking the kernel for a free port and closing it again: [::1]
/// port 0 first (the kernel's choice), then 127.0.0.1 on that port, again with another port when that one
/// is taken on IPv4 (a bounded number of times). Neither bind sets SO_REUSEADDR, so a port that still has a
/// TIME-WAIT connection on either address is refused and never handed out.
///
/// Handing the port to a program: once both are bound, the TCP reservation sockets get SO_REUSEADDR. Linux
/// lets a socket with SO_REUSEADDR bind (and listen) beside bound sockets that have SO_REUSEADDR and do not
/// listen, so a program whose socket sets SO_REUSEADDR (python's http.server, or anything under `portreuse
/// run`'s shared, restartable or unsafe-any-user policy) binds while the reservation still holds the port,
/// and the test releases it once the program is serving: there is no moment when the port is free for
/// someone else. A program whose socket does not set SO_REUSEADDR would get EADDRINUSE: call `release()`
/// right before starting it. UDP reservations never get SO_REUSEADDR (a bound UDP socket receives
/// datagrams, and a second socket with it would share or steal them): release those before handing over.
public final class PortReservation: @unchecked Sendable {
    public let port: UInt16
    public let transport: Transport
    private let lock = NSLock()
    private var descriptors: [Int32]

    public init(_ transport: Transport = .tcp, attempts: Int = 50) throws {
        self.transport = transport
        let type = transport == .tcp ? Int32(SOCK_STREAM.rawValue) : Int32(SOCK_DGRAM.rawValue)
        var lastError: Int32 = EADDRINUSE
        for _ in 0..<max(1, attempts) {
            let v6 = try systemCall("socket") { socket(AF_INET6, type | Int32(SOCK_CLOEXEC.rawValue), 0) }
            var one: Int32 = 1
            setsockopt(v6, Int32(IPPROTO_IPV6), IPV6_V6ONLY, &one, socklen_t(MemoryLayout<Int32>.size))
            var address6 = sockaddr_in6()
            address6.sin6_family = sa_family_t(AF_INET6)
            address6.sin6_addr = in6addr_loopback
            var length = socklen_t(MemoryLayout<sockaddr_in6>.size)
            let bound6 = withUnsafeMutablePointer(to: &address6) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(v6, $0, length) == 0 && getsockname(v6, $0, &length) == 0 }
            }
            guard bound6 else {
                let text = Files.errorText()
                Files.close(Descriptor(v6))
                throw ReservationError(message: "bind [::1]:0: \(text)")
            }
            let port = UInt16(bigEndian: address6.sin6_port)

            let v4 = try systemCall("socket") { socket(AF_INET, type | Int32(SOCK_CLOEXEC.rawValue), 0) }
            var address4 = sockaddr_in()
            address4.sin_family = sa_family_t(AF_INET)
            address4.sin_port = port.bigEndian
            address4.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
            let bound4 = withUnsafePointer(to: &address4) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(v4, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
            }
            if !bound4 {
                lastError = errno
                Files.close(Descriptor(v4))
                Files.close(Descriptor(v6))
                continue  // taken on IPv4 (a listener, a connection, a TIME-WAIT): another port
            }
            if transport == .tcp {
                for fd in [v6, v4] { setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size)) }
            }
            self.port = port
            descriptors = [v6, v4]
            return
        }
        throw ReservationError(message: "no port bound on both 127.0.0.1 and [::1] in \(attempts) attempts: \(Files.errorText(lastError))")
    }

    struct ReservationError: Error, CustomStringConvertible {
        var message: String
        var description: String { message }
    }

    /// Gives the port up (both sockets closed); again is harmless.
    public func release() {
        let closing = lock.withLock { () -> [Int32] in defer { descriptors = [] }; return descriptors }
        closing.forEach { Files.close(Descriptor($0)) }
    }

    deinit { release() }
}

/// A port that is free right now on both 127.0.0.1 and [::1] (reserved and released at once). The port may
/// be taken again before the test binds it: a test that uses it on both families, or hands it to a program,
/// keeps a ``PortReservation`` instead.
public func freePort(_ transport: Transport = .tcp) throws -> UInt16 {
    try PortReservation(transport).port
}

/// The path of the C library this process runs with (as /proc/self/maps names it).
public let libcPath: String = {
    let maps = String(decoding: Files.read("/proc/self/maps") ?? [], as: UTF8.self)
    for line in maps.split(separator: "\n") {
        guard let slash = line.firstIndex(of: "/") else { continue }
        let path = String(line[slash...])
        if path.hasSuffix("/libc.so.6") { return path }
    }
    return "libc.so.6"
}()

/// Leaves a TIME-WAIT socket on the listener's port: the server side closes first.
public func leaveTimeWait(on listener: Listener) throws {
    let client = try Connection.dial(to: SocketAddress(ip: .loopbackIPv4, port: listener.localAddress.port), policy: .exclusive, timeout: .seconds(5))
    let server = try #require(try listener.accept(timeout: .seconds(5)))
    server.close()
    _ = try client.receive(timeout: .seconds(5))  // the FIN
    client.close()
}

/// A raw TCP listener with exactly the given options, for facts about sockets that PortReuse's policies
/// never make; the caller closes the descriptor.
public func rawListener(port: UInt16, reuseAddress: Bool, reusePort: Bool) -> (Int32, Int32) {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    var one: Int32 = 1
    if reuseAddress { setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, 4) }
    if reusePort { setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, 4) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = port.bigEndian
    address.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
    let result = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    guard result == 0 else { let code = errno; close(fd); return (-1, code) }
    listen(fd, 16)
    return (fd, 0)
}

/// Python that binds a socket, prints its port, and lives until stdin closes or 30 s pass.
public func pythonHolder(kind: String, address: String = "127.0.0.1", port: UInt16 = 0, reuseAddress: Bool = false, reusePort: Bool = false, listen: Bool = true) -> String {
    """
    import socket, signal, sys
    signal.alarm(30)
    s = socket.socket(socket.AF_INET, socket.SOCK_\(kind))
    if \(reuseAddress ? "True" : "False"): s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if \(reusePort ? "True" : "False"): s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("\(address)", \(port)))
    if \(listen && kind == "STREAM" ? "True" : "False"): s.listen(16)
    print(s.getsockname()[1], flush=True)
    sys.stdin.readline()
    """
}

/// The folder of the built products (the test binary's own folder): executables such as `portreuse` and
/// `quickstart` land there.
public let productsFolder: String = {
    var buffer = [CChar](repeating: 0, count: 4096)
    let length = readlink("/proc/self/exe", &buffer, buffer.count - 1)
    let path = String(decoding: buffer[0..<max(length, 0)].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    return String(path[..<(path.lastIndex(of: "/") ?? path.endIndex)])
}()

/// The package's root folder.
public let packageRoot: String = {
    let file = #filePath
    return file.components(separatedBy: "/Tests/")[0]
}()

/// A network namespace of its own for a test, so that multicast, broadcast and routes never touch the host's
/// network: loopback up, and a veth pair `d0`/`d1` with `d0` at 10.9.0.1/24 and fd00::1/64, a route for IPv4
/// multicast (224.0.0.0/4) on `d0`. An `unshare -n` shell holds it and dies with this value (or when the test
/// process goes, as its stdin closes); the namespace dies with its last process and socket. Needs root.
public final class NetworkNamespace: @unchecked Sendable {
    /// The IPv4 address of `d0`.
    public static let address = "10.9.0.1"
    /// The broadcast address of `d0`'s subnet.
    public static let broadcast = "10.9.0.255"
    /// The IPv6 address of `d0`.
    public static let address6 = "fd00::1"

    private let holder: Child
    /// The process that holds the namespace.
    public let pid: Int32

    public init() throws {
        let script = """
            set -e
            ip link set lo up
            ip link add d0 type veth peer name d1
            ip link set d1 up
            ip link set d0 up
            ip addr add \(Self.address)/24 dev d0
            ip -6 addr add \(Self.address6)/64 dev d0 nodad
            ip route add 224.0.0.0/4 dev d0
            # The veth's carrier and IPv6's local route come up asynchronously: wait (at most 5 s) for both.
            i=0
            until ip link show d0 | grep -q LOWER_UP && ip -6 route show table local | grep -q "local \(Self.address6) "; do
                i=$((i + 1)); [ "$i" -lt 100 ] || break; sleep 0.05
            done
            echo ready
            read -r _ || true
            """
        holder = try Child(["/usr/bin/unshare", "-n", "/bin/sh", "-c", script])
        pid = holder.pid
        let ready = holder.line(timeout: 10)
        try #require(ready == "ready", "the network namespace was not set up (unshare -n, ip link add type veth)")
    }

    /// `arguments` run inside the namespace (through nsenter).
    public func command(_ arguments: [String]) -> [String] {
        ["/usr/bin/nsenter", "--net=/proc/\(pid)/ns/net", "--"] + arguments
    }

    /// Runs `body` on a thread of its own that entered the namespace (setns), and waits for it. Sockets made
    /// there stay in the namespace, and may be used from any thread afterwards.
    public func run<T: Sendable>(_ body: @escaping @Sendable () throws -> T) throws -> T {
        let box = ResultBox<T>()
        let path = "/proc/\(pid)/ns/net"
        let done = DispatchSemaphore(value: 0)
        let thread = Thread {
            defer { done.signal() }
            let fd = open(path, O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else { box.result = .failure(NamespaceError(message: "open \(path): errno \(errno)")); return }
            defer { close(fd) }
            do { try Processes.enterNetworkNamespace(Descriptor(fd)) } catch { box.result = .failure(error); return }
            box.result = Result { try body() }
        }
        thread.start()
        done.wait()
        return try box.result!.get()
    }

    private final class ResultBox<T>: @unchecked Sendable {
        var result: Result<T, any Error>?
    }

    struct NamespaceError: Error, CustomStringConvertible {
        var message: String
        var description: String { message }
    }
}

/// A folder that is removed when the test drops it.
public final class TemporaryFolder {
    public let path: String

    public init() throws {
        var template = Array("/tmp/portreuse-test-XXXXXX".utf8CString)
        guard let made = mkdtemp(&template) else { throw POSIXError(.init(rawValue: errno) ?? .EIO) }
        path = URL(fileURLWithPath: String(cString: made)).resolvingSymlinksInPath().path
    }

    /// Writes a file (made executable with `executable`) through a close-on-exec descriptor (see
    /// `copyExecutable`) and returns its path.
    @discardableResult
    public func write(_ name: String, _ text: String, executable: Bool = false) throws -> String {
        let file = path + "/" + name
        let fd = open(file, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, executable ? 0o755 : 0o644)
        guard fd >= 0 else { throw POSIXError(.init(rawValue: errno) ?? .EIO) }
        defer { close(fd) }
        let bytes = Array(text.utf8)
        try #require(Glibc.write(fd, bytes, bytes.count) == bytes.count, "short write to \(file)")
        return file
    }

    deinit { try? FileManager.default.removeItem(atPath: path) }
}
