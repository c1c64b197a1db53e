import Foundation
import Glibc
import NIOCore
import NIOPosix
import PortReuse
import PortReuseNIO
import Synchronization
import TestSupport
import Testing

/// Counts the connections (or datagrams) each event loop of a group received.
final class PerLoop: Sendable {
    private let index: [ObjectIdentifier: Int]
    private let counts: Mutex<[Int]>

    init(_ group: MultiThreadedEventLoopGroup) {
        let loops = Array(group.makeIterator())
        index = Dictionary(uniqueKeysWithValues: loops.enumerated().map { (ObjectIdentifier($0.element), $0.offset) })
        counts = Mutex(Array(repeating: 0, count: loops.count))
    }

    func count(_ loop: any EventLoop) {
        let position = index[ObjectIdentifier(loop)]!
        counts.withLock { $0[position] += 1 }
    }

    var all: [Int] { counts.withLock { $0 } }

    /// Waits (at most 10 s) until `total` events were counted.
    func wait(for total: Int) async -> [Int] {
        for _ in 0..<500 where all.reduce(0, +) < total { try? await Task.sleep(for: .milliseconds(20)) }
        return all
    }
}

/// Counts a new connection by its loop; `Greeter` writes "hello" to it and closes it.
func greet(_ channel: any Channel, _ counter: PerLoop) -> EventLoopFuture<Void> {
    counter.count(channel.eventLoop)
    return channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(Greeter()) }
}

final class Greeter: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
    func channelActive(context: ChannelHandlerContext) {
        let channel = context.channel
        context.writeAndFlush(NIOAny(context.channel.allocator.buffer(string: "hello"))).whenComplete { _ in channel.close(promise: nil) }
    }
}

/// Connects `count` times to 127.0.0.1:`port` from fresh ephemeral ports and reads each greeting.
func connect(_ count: Int, port: UInt16) throws -> [String] {
    try (0..<count).map { _ in
        let connection = try Connection.dial(to: SocketAddress(ip: .loopbackIPv4, port: port), policy: .exclusive, timeout: .seconds(5))
        defer { connection.close() }
        return String(decoding: try connection.receiveAll(limit: 64, timeout: .seconds(5)), as: UTF8.self)
    }
}

/// The accept queue length of the listener on `port` (ss's Send-Q column for a listening socket).
func backlog(port: UInt16) throws -> Int? {
    let result = try run(["/usr/bin/ss", "-tlnH", "sport = :\(port)"], timeout: 10)
    return result.output.split(separator: "\n").first.flatMap { line in Int(line.split(separator: " ", omittingEmptySubsequences: true)[2]) }
}

@Suite("PortReuseNIO")
struct PortReuseNIOTests {
    @Test("one listener per loop: N SO_REUSEPORT listeners on one port, and every loop accepts connections")
    func listenerPerLoop() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 4)
        defer { group.shutdownGracefully { _ in } }
        let counter = PerLoop(group)
        let server = try await PortReuseServer.bind(tcp: "127.0.0.1:0", group: group) { greet($0, counter) }
        #expect(server.channels.count == 4)
        #expect(server.layout == .listenerPerLoop)
        // Each listener sits on its own loop and is a separate socket with SO_REUSEPORT.
        #expect(Set(server.channels.map { ObjectIdentifier($0.eventLoop) }).count == 4)
        let holders = PortHolder.find(port: server.localAddress.port, transport: .tcp).filter { $0.state == .listen }
        #expect(holders.count == 4)

        let answers = try connect(400, port: server.localAddress.port)
        #expect(answers.allSatisfy { $0 == "hello" })
        let perLoop = await counter.wait(for: 400)
        #expect(perLoop.reduce(0, +) == 400)
        #expect(perLoop.allSatisfy { $0 > 0 }, "every loop accepts some of 400 connections: \(perLoop)")
        await server.close()
        try await server.closeFuture.get()
    }

    @Test("a single listener accepts on one loop and spreads its connections over the group")
    func singleListener() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 3)
        defer { group.shutdownGracefully { _ in } }
        let counter = PerLoop(group)
        let server = try await PortReuseServer.bind(tcp: "127.0.0.1:0", policy: .restartable, layout: .singleListener, group: group) { greet($0, counter) }
        #expect(server.channels.count == 1)
        _ = try connect(30, port: server.localAddress.port)
        #expect(await counter.wait(for: 30) == [10, 10, 10])
        await server.close()
    }

    @Test("per-loop listeners need SO_REUSEPORT: the restartable policy is refused before anything is bound")
    func perLoopNeedsSharing() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        defer { group.shutdownGracefully { _ in } }
        let port = try freePort()
        let error = await #expect(throws: PortReuseError.self) {
            _ = try await PortReuseServer.bind(tcp: "127.0.0.1:\(port)", policy: .restartable, group: group) { $0.eventLoop.makeSucceededVoidFuture() }
        }
        #expect(error?.description.contains("needs SO_REUSEPORT, which the restartable policy does not set: use the shared policy") == true)
        // Nothing was left bound: the port is still free for an exclusive socket.
        #expect(throws: Never.self) { try Listener(tcp: "127.0.0.1:\(port)", policy: .exclusive).close() }
    }

    @Test("ServerBootstrap adopts a PortReuse listener, serves it, and keeps its accept queue length")
    func adoptedListenerServes() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { group.shutdownGracefully { _ in } }
        let counter = PerLoop(group)
        let listener = try Listener(tcp: "127.0.0.1:0", policy: .restartable, backlog: 1000)
        let port = listener.localAddress.port
        let channel = try await ServerBootstrap(group: group)
            .childChannelInitializer { greet($0, counter) }
            .serve(listener, backlog: 1000)
            .get()
        #expect(listener.descriptor == nil, "SwiftNIO owns the descriptor now")
        #expect(try connect(3, port: port) == ["hello", "hello", "hello"])
        // SwiftNIO's adoption calls listen(fd, 128); serve(_:backlog:) sets it back.
        #expect(try backlog(port: port) == 1000)
        // A listener can be handed over once.
        #expect(throws: PortReuseError.self) { _ = try ServerBootstrap(group: group).serve(listener) }
        try await channel.close()
        #expect(try backlog(port: port) == nil, "closing the channel closed the socket")
    }

    @Test("bind(tcp:policy:) on a port that another process holds names the holder")
    func portHeldByThisUser() async throws {
        let holder = try Child(python: pythonHolder(kind: "STREAM"))
        let port = try holder.port()
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { group.shutdownGracefully { _ in } }
        let error = #expect(throws: PortReuseError.self) {
            _ = try ServerBootstrap(group: group).bind(tcp: "127.0.0.1:\(port)", policy: .shared)
        }
        #expect(error?.errno == .addressInUse)
        #expect(error?.description.contains("did not set SO_REUSEPORT") == true, "\(String(describing: error))")
    }

    @Test("a port held by another user with SO_REUSEPORT is a clear error, not a shared port",
        .needsRoot("needs root to start a socket as user nobody"))
    func portHeldByAnotherUser() async throws {
        let holder = try Child(python: pythonHolder(kind: "STREAM", reuseAddress: true, reusePort: true), asNobody: true)
        let port = try holder.port()
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        defer { group.shutdownGracefully { _ in } }
        let error = await #expect(throws: PortReuseError.self) {
            _ = try await PortReuseServer.bind(tcp: "127.0.0.1:\(port)", group: group) { $0.eventLoop.makeSucceededVoidFuture() }
        }
        #expect(error?.errno == .addressInUse)
        #expect(error?.description.contains("of uid 65534") == true, "\(String(describing: error))")
        #expect(error?.description.contains("only among sockets of the same user") == true)
        // The example server says the same and exits non-zero.
        let result = try run(["/bin/sh", "-c", "exec \"$0\" \"$@\" 2>&1", productsFolder + "/nio-hello", "--listen", "127.0.0.1:\(port)"])
        #expect(result.status != 0)
        #expect(result.output.contains("of uid 65534"), "\(result.output)")
    }

    @Test("the datagram bootstrap shares a UDP port: two channels, and the kernel spreads senders over both")
    func datagramShares() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        defer { group.shutdownGracefully { _ in } }
        let counter = PerLoop(group)
        let loops = Array(group.makeIterator())
        let first = try await DatagramBootstrap(group: loops[0])
            .channelInitializer { channel in channel.pipeline.addHandler(CountDatagrams(counter)) }
            .bind(udp: "127.0.0.1:0", policy: .shared).get()
        let port = try #require(first.localAddress?.port)
        let second = try await DatagramBootstrap(group: loops[1])
            .channelInitializer { channel in channel.pipeline.addHandler(CountDatagrams(counter)) }
            .bind(udp: "127.0.0.1:\(port)", policy: .shared).get()
        // A socket that does not share is refused, with the reason.
        let refused = #expect(throws: PortReuseError.self) {
            _ = try DatagramBootstrap(group: group).bind(udp: "127.0.0.1:\(port)", policy: .restartable)
        }
        #expect(refused?.errno == .addressInUse)
        for _ in 0..<64 {  // 64 senders, one datagram each: each a new source port
            let sender = try DatagramSocket(udp: "127.0.0.1:0", policy: .exclusive)
            try sender.send(Array("ping".utf8), to: SocketAddress(ip: .loopbackIPv4, port: UInt16(port)))
        }
        let perLoop = await counter.wait(for: 64)
        #expect(perLoop.reduce(0, +) == 64)
        #expect(perLoop.allSatisfy { $0 > 0 }, "both sockets get datagrams: \(perLoop)")
        try await first.close()
        try await second.close()
    }

    @Test("nio-hello under systemd-socket-activate: serves the handed-over socket and says READY=1")
    func activatedExample() throws {
        let activate = "/usr/bin/systemd-socket-activate"
        try #require(FileManager.default.isExecutableFile(atPath: activate), "systemd-socket-activate (Debian package systemd) is missing")
        let notify = try NotifySocket()
        let port = try freePort()
        let server = try Child(
            [activate, "-l", "127.0.0.1:\(port)", "-E", "NOTIFY_SOCKET=\(notify.path)", productsFolder + "/nio-hello", "--threads", "2", "--stats"],
            discardingStandardError: true)
        // systemd-socket-activate starts the server at the first connection, which waits in the socket's queue.
        #expect(waitUntil(timeout: 10, interval: 0.05) { !PortHolder.find(port: port, transport: .tcp, processes: false, options: false).isEmpty })
        let answer = try httpGet(port: port, path: "/", timeout: .seconds(20))
        let line = try #require(server.line(timeout: 20))
        #expect(line.contains("serving on 127.0.0.1:\(port) (activated, single, 1 listener, 2 loops)"), "\(line)")
        #expect(notify.receive()?.contains("READY=1") == true)
        #expect(answer.hasPrefix("HTTP/1.1 200 OK"))
        #expect(answer.hasSuffix("hello from nio-hello pid \(server.pid)\n"), "systemd-socket-activate execs the server")
        _ = try (0..<9).map { _ in try httpGet(port: port, path: "/") }
        let stats = try httpGet(port: port, path: "/stats")
        let body = stats.components(separatedBy: "\r\n\r\n").last ?? ""
        let perLoop = body.split(whereSeparator: \.isWhitespace).compactMap { Int($0) }
        #expect(perLoop.count == 2 && perLoop.reduce(0, +) == 11 && perLoop.allSatisfy { $0 >= 5 }, "\(stats)")
        // SIGTERM: READY gives way to STOPPING=1, and it drains and exits 0.
        kill(server.pid, SIGTERM)
        #expect(notify.receive()?.contains("STOPPING=1") == true)
        #expect(server.line(timeout: 15)?.contains("drained and stopped") == true)
        #expect(server.waitForExit() == 0)
    }

    @Test("a reload on one handed-over socket: two generations of nio-hello overlap, and no request fails")
    func reloadWithoutFailures() throws {
        // The supervisor (as `portreuse up` does it): one listener, kept open; generation 1 serves it, then
        // generation 2 starts on the same socket, says READY=1, and generation 1 gets SIGTERM and drains.
        // Four clients make requests on new connections all along.
        let supervisor = try Child([systemPython, "-c", reloadScript, productsFolder + "/nio-hello"])
        let line = try #require(supervisor.line(timeout: 60))
        let words = line.split(separator: " ")
        let figures = Dictionary(uniqueKeysWithValues: stride(from: 0, to: words.count - 1, by: 2).map { (String(words[$0]), String(words[$0 + 1])) })
        #expect(figures["failed"] == "0", "\(line)")
        #expect((Int(figures["gen1"] ?? "") ?? 0) > 0 && (Int(figures["gen2"] ?? "") ?? 0) > 0, "both generations served: \(line)")
        #expect(line.hasSuffix("exit 0 0"), "both generations exited 0 (generation 1 drained): \(line)")
    }

    @Test("nio-hello under portreuse up: two reloads while four clients run, and no request fails")
    func reloadUnderUp() throws {
        let portreuse = productsFolder + "/portreuse"
        try #require(FileManager.default.isExecutableFile(atPath: portreuse), "portreuse is not built")
        let port = try freePort()
        let pidFile = NSTemporaryDirectory() + "portreuse-nio-up-\(getpid())-\(port).pid"
        defer { unlink(pidFile) }
        let up = try Child([portreuse, "up", "--listen", "127.0.0.1:\(port)", "--pid-file", pidFile, "--",
            productsFolder + "/nio-hello", "--name", "gen"], discardingStandardError: true)
        let first = waitFor(timeout: 10, interval: 0.1) { try? httpGet(port: port, path: "/") }
        #expect(first?.contains("hello from gen pid") == true)
        // The clients say each new server that answers them: every reload waits until the serving
        // generation has answered the load, and the load stops once generation 3 has.
        let load = try Child([systemPython, "-c", loadScript, "\(port)", "30"])
        #expect(load.line(timeout: 15)?.hasPrefix("server ") == true, "generation 1 answers the load")
        for generation in 2...3 {
            let reload = try run([portreuse, "up", "--reload", "--pid-file", pidFile], timeout: 30)
            #expect(reload.status == 0)
            #expect(reload.output.contains("reloaded: generation \(generation) ready"), "\(reload.output)")
            // A pid not seen before: the new generation (the one before only drains now).
            #expect(load.line(timeout: 15)?.hasPrefix("server ") == true, "generation \(generation) answers the load")
        }
        load.send("stop")
        var line = try #require(load.line(timeout: 30))
        while line.hasPrefix("server "), let next = load.line(timeout: 30) { line = next }
        #expect(line.hasPrefix("ok ") && line.contains(" failed 0 "), "\(line)")
        #expect(line.hasSuffix(" servers 3"), "every generation served: \(line)")
        kill(up.pid, SIGTERM)
        #expect(up.waitForExit() == 0)
    }

    @Test("nio-hello alone binds one listener per loop")
    func exampleBindsItself() throws {
        let port = try freePort()
        let server = try Child([productsFolder + "/nio-hello", "--listen", "127.0.0.1:\(port)", "--threads", "3"], discardingStandardError: true)
        let line = try #require(server.line(timeout: 20))
        #expect(line.contains("serving on 127.0.0.1:\(port) (bound, per-loop, 3 listeners, 3 loops)"), "\(line)")
        #expect(try httpGet(port: port, path: "/").hasSuffix("hello from nio-hello pid \(server.pid)\n"))
    }

    @Test("activated with a descriptor that is not a socket: a clear error, and no socket of its own")
    func activatedWithNonSocket() throws {
        let port = try freePort()
        let script = "exec 3</dev/null 2>&1; LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=web exec \"$0\" \"$@\""
        let result = try run(["/bin/sh", "-c", script, productsFolder + "/nio-hello", "--listen", "127.0.0.1:\(port)"], timeout: 30)
        #expect(result.status != 0)
        #expect(result.output.contains("socket activation handed over 1 descriptor (3 (web): not a TCP or UDP socket)"), "\(result.output)")
        #expect(result.output.contains("portreuse up --listen"))
        #expect(!result.output.contains("serving on"))
    }
}

/// Counts the datagrams that reach a channel, by its loop.
final class CountDatagrams: ChannelInboundHandler, Sendable {
    typealias InboundIn = AddressedEnvelope<ByteBuffer>
    let counter: PerLoop
    init(_ counter: PerLoop) { self.counter = counter }
    func channelRead(context: ChannelHandlerContext, data: NIOAny) { counter.count(context.eventLoop) }
}

/// One HTTP/1.1 request with `Connection: close`; the whole answer.
func httpGet(port: UInt16, path: String, timeout: Duration = .seconds(5)) throws -> String {
    let connection = try Connection.dial(to: SocketAddress(ip: .loopbackIPv4, port: port), policy: .exclusive, timeout: .seconds(5))
    defer { connection.close() }
    try connection.send("GET \(path) HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    return String(decoding: try connection.receiveAll(limit: 65_536, timeout: timeout), as: UTF8.self)
}

/// A unix datagram socket for sd_notify messages, at a fresh path; removed on deinit.
final class NotifySocket {
    let path = NSTemporaryDirectory() + "/portreuse-nio-notify-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
    private let fd: Int32

    init() throws {
        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: Array(path.utf8)) }
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        try #require(result == 0, "cannot bind \(path)")
    }

    /// The next message, or `nil` after 15 s.
    func receive() -> String? {
        var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&entry, 1, 15_000) > 0 else { return nil }
        var buffer = [UInt8](repeating: 0, count: 4096)
        let count = recv(fd, &buffer, buffer.count, 0)
        return count > 0 ? String(decoding: buffer[0..<count], as: UTF8.self) : nil
    }

    deinit {
        close(fd)
        unlink(path)
    }
}

/// A supervisor in Python that hands one listening socket to two overlapping generations (argv[1]) by the
/// socket activation protocol, with four clients running, and prints the outcome in one line.
let reloadScript = #"""
import ctypes, os, socket, subprocess, signal, sys, time, threading, http.client
signal.alarm(60)
libc = ctypes.CDLL(None)
hello = sys.argv[1]
lst = socket.socket(); lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
lst.bind(("127.0.0.1", 0)); lst.listen(4096)
port = lst.getsockname()[1]
path = "/tmp/portreuse-nio-reload-%d" % os.getpid()
ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); ns.bind(path); ns.settimeout(20)
def start(name):
    env = dict(os.environ, LISTEN_FDS="1", LISTEN_FDNAMES="web", NOTIFY_SOCKET=path)
    fd = lst.fileno()
    p = subprocess.Popen(["/bin/sh", "-c", 'LISTEN_PID=$$ exec "$0" "$@"', hello, "--name", name, "--threads", "2"],
        env=env, close_fds=False, preexec_fn=lambda: (libc.prctl(1, 9), os.set_inheritable(3, True) if fd == 3 else os.dup2(fd, 3)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while b"READY=1" not in ns.recv(4096): pass
    return p
results = {"ok": 0, "failed": 0}
names = {}
lock = threading.Lock()
stop = threading.Event()
def load():
    while not stop.is_set():
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            c.request("GET", "/"); body = c.getresponse().read().decode(); c.close()
            name = body.split()[2]
            with lock: names[name] = names.get(name, 0) + 1; results["ok"] += 1
        except Exception as e:
            with lock: results["failed"] += 1
            pass
def served(name, count):  # waits (at most 10 s) until `name` answered `count` requests in all
    deadline = time.time() + 10
    while time.time() < deadline:
        with lock:
            if names.get(name, 0) >= count: return
        time.sleep(0.01)
g1 = start("gen1")
threads = [threading.Thread(target=load) for _ in range(4)]
for t in threads: t.start()
served("gen1", 20)
g2 = start("gen2")
served("gen2", 1)  # both generations accept on the one socket
g1.send_signal(signal.SIGTERM); g1.wait(timeout=20)
with lock: after = names.get("gen2", 0)
served("gen2", after + 20)
stop.set()
for t in threads: t.join()
g2.send_signal(signal.SIGTERM); g2.wait(timeout=20)
os.unlink(path)
print("ok", results["ok"], "failed", results["failed"], "gen1", names.get("gen1", 0), "gen2", names.get("gen2", 0), "exit", g1.returncode, g2.returncode, flush=True)
"""#

/// Four clients that make requests on new connections to 127.0.0.1:argv[1] until a line (or end of file) on
/// stdin, at most argv[2] seconds; they print `server PID` when a new pid answers, and at the end
/// `ok N failed M servers K` (K: the distinct pids that answered).
let loadScript = #"""
import http.client, signal, sys, threading, time
signal.alarm(60)
port = int(sys.argv[1]); stop = time.time() + float(sys.argv[2])
done = threading.Event()
ok = [0]; failed = [0]; pids = set(); lock = threading.Lock()
def run():
    while time.time() < stop and not done.is_set():
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            c.request("GET", "/"); body = c.getresponse().read().decode(); c.close()
            pid = body.split()[-1]
            with lock:
                ok[0] += 1
                if pid not in pids:
                    pids.add(pid); print("server", pid, flush=True)
        except Exception:
            with lock: failed[0] += 1
threads = [threading.Thread(target=run) for _ in range(4)]
for t in threads: t.start()
threading.Thread(target=lambda: (sys.stdin.readline(), done.set()), daemon=True).start()
for t in threads: t.join()
print("ok %d failed %d servers %d" % (ok[0], failed[0], len(pids)), flush=True)
"""#
