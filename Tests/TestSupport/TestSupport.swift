import Foundation
import Glibc
import PortReuse
import Testing

// What the test targets share: child processes, free ports, the built products. Every wait is bounded and
// every process a test starts is killed and reaped when the test drops it.

/// Whether the tests run as root (needed to start a socket as user nobody).
public let isRoot = geteuid() == 0

/// The system interpreter, readable by every user (the first python3 on PATH may live in root's home).
public let systemPython = "/usr/bin/python3"

/// A child process for a test: started at once, killed and reaped when the test drops it.
public final class Child: @unchecked Sendable {
    public let process = Process()
    private let output = Pipe()
    private let input = Pipe()
    private var buffer: [UInt8] = []

    /// Starts `arguments[0]` with the rest as arguments; stdout is readable with `line(timeout:)`. Its stderr
    /// is the test's, or /dev/null with `discardingStandardError` (servers that log every request).
    public init(_ arguments: [String], environment: [String: String]? = nil, discardingStandardError: Bool = false) throws {
        process.executableURL = URL(fileURLWithPath: arguments[0])
        process.arguments = Array(arguments.dropFirst())
        if let environment { process.environment = environment }
        if discardingStandardError { process.standardError = FileHandle.nullDevice }
        process.standardOutput = output
        process.standardInput = input
        try process.run()
    }

    /// A Python script, run as user nobody when `asNobody` (needs root). Every script must bound its own life.
    public convenience init(python script: String, asNobody: Bool = false) throws {
        let command = (asNobody ? ["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] : []) + [systemPython, "-c", script]
        try self.init(command)
    }

    /// The next line of the child's stdout, or `nil` if none came within `timeout` seconds.
    public func line(timeout: Double = 10) -> String? {
        let deadline = Date().addingTimeInterval(timeout)
        let fd = output.fileHandleForReading.fileDescriptor
        while true {
            if let newline = buffer.firstIndex(of: 10) {
                let line = String(decoding: buffer[..<newline], as: UTF8.self)
                buffer.removeSubrange(...newline)
                return line
            }
            let left = deadline.timeIntervalSinceNow
            guard left > 0 else { return nil }
            var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&entry, 1, Int32(left * 1000)) > 0 else { return nil }
            var chunk = [UInt8](repeating: 0, count: 4096)
            let count = read(fd, &chunk, chunk.count)
            guard count > 0 else { return nil }
            buffer += chunk[0..<count]
        }
    }

    /// The next line as a port number (what `pythonHolder` prints); fails the test when none comes.
    public func port(timeout: Double = 10) throws -> UInt16 {
        try #require(line(timeout: timeout).flatMap { UInt16($0) }, "the child printed no port")
    }

    /// Writes a line to the child's stdin.
    public func send(_ text: String) {
        input.fileHandleForWriting.write(Data((text + "\n").utf8))
    }

    deinit {
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
    }
}

/// A port that is free right now on 127.0.0.1 for TCP (the kernel's choice, released at once).
public func freePort(_ transport: Transport = .tcp) throws -> UInt16 {
    switch transport {
    case .tcp: try Listener(tcp: "127.0.0.1:0", policy: .exclusive).localAddress.port
    case .udp: try DatagramSocket(udp: "127.0.0.1:0", policy: .exclusive).localAddress.port
    }
}

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

/// Runs a program to its end (at most `timeout` seconds) and returns its exit status and stdout.
public func run(_ arguments: [String], timeout: Double = 60, environment: [String: String]? = nil) throws -> (status: Int32, output: String) {
    let child = try Child(arguments, environment: environment)
    var lines: [String] = []
    let deadline = Date().addingTimeInterval(timeout)
    while let line = child.line(timeout: max(0, deadline.timeIntervalSinceNow)) { lines.append(line) }
    if child.process.isRunning { kill(child.process.processIdentifier, SIGKILL) }
    child.process.waitUntilExit()
    return (child.process.terminationStatus, lines.joined(separator: "\n"))
}

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
        pid = holder.process.processIdentifier
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
            guard NetworkNamespace.setns(fd, NetworkNamespace.newNetwork) == 0 else { box.result = .failure(NamespaceError(message: "setns: errno \(errno)")); return }
            box.result = Result { try body() }
        }
        thread.start()
        done.wait()
        return try box.result!.get()
    }

    // Glibc's module map hides setns (it needs _GNU_SOURCE), so it is looked up once.
    private typealias SetNS = @convention(c) (Int32, Int32) -> Int32
    private static let setns: SetNS = unsafeBitCast(dlsym(dlopen(nil, RTLD_NOW), "setns")!, to: SetNS.self)
    private static let newNetwork: Int32 = 0x4000_0000  // CLONE_NEWNET

    private final class ResultBox<T>: @unchecked Sendable {
        var result: Result<T, any Error>?
    }

    struct NamespaceError: Error, CustomStringConvertible {
        var message: String
        var description: String { message }
    }
}
