import Foundation
import Glibc
import PortReuse
import PortReuseSystem
import Synchronization
import PortReuseTools
import TestSupport
import Testing

// Supervisor v2 (issue 26): a socket per generation in one SO_REUSEPORT group, steered by up's BPF program.
// The kernel facts the design rests on, then generations that cannot hurt each other, then real servers
// (uvicorn, hypercorn, php -S, node cluster, unicorn, http.server) reloaded under load with their default flags.

@Suite("steered generations: the kernel's reuseport group and up's program")
struct SteeringProgramTests {
    @Test("the group model follows the kernel: a socket joins at the end; one that leaves gets the last one in its slot")
    func groupModel() {
        let (ten, eleven, twelve, thirteen) = (Descriptor(10), Descriptor(11), Descriptor(12), Descriptor(13))
        var group = ReuseportGroup(members: [ten])
        group.join(eleven)
        group.join(twelve)
        #expect(group.index(of: twelve) == 2)
        group.leave(ten)
        #expect(group.members == [twelve, eleven])
        group.join(thirteen)
        group.forget(eleven)
        #expect(group.members == [twelve, .invalid, thirteen])
        #expect(group.index(of: thirteen) == 2)
    }

    @Test("the programs as data: one instruction without a probe; with one, a jump per probe port to the probe's socket")
    func programShape() {
        #expect(SteeringProgram.instructions(serving: [3], probe: nil).map(\.k) == [3])
        let program = SteeringProgram.instructions(serving: [1], probe: (ports: [40000, 40001], index: 2))
        #expect(program.count == 7 + 2 + 2)
        #expect(program.suffix(2).map(\.k) == [1, 2])  // ret #serving, ret #probe
        // Each jeq on a port jumps over the rest of the chain and "ret #serving" to "ret #probe".
        #expect(program[7].k == 40000 && Int(program[7].jt) == 2 && program[8].k == 40001 && Int(program[8].jt) == 1)
    }

    /// Two listeners in one group on a fresh port, and connections counted by the accept queue they land in.
    private func pair() throws -> (Listener, Listener) {
        let first = try Listener(tcp: "127.0.0.1:0", policy: .shared)
        let second = try Listener(address: first.localAddress, policy: .shared)
        return (first, second)
    }

    private func queued(_ listener: Listener) -> Int { ListenerState.queued(listener.handle.systemDescriptor!) }

    @Test("ret #1 sends every connection to the socket that joined second; the probe's ports reach the probe's socket alone")
    func steersByIndexAndSourcePort() throws {
        let (first, second) = try pair()
        #expect(SteeringProgramTests.attach(SteeringProgram.instructions(serving: [1], probe: nil), to: first) == 0)
        let clients = try (0..<20).map { _ in try Connection.dial(to: first.localAddress, timeout: .seconds(5)) }
        #expect(waitUntil(timeout: 5) { queued(second) == 20 }, "all 20 on the second: \(queued(first)) / \(queued(second))")
        #expect(queued(first) == 0)
        withExtendedLifetime(clients) {}

        let (serving, starting) = try pair()
        let source = try ProbeSource(for: serving.localAddress)
        #expect(SteeringProgramTests.attach(SteeringProgram.instructions(serving: [0], probe: (source.ports, 1)), to: serving) == 0)
        let load = try (0..<20).map { _ in try Connection.dial(to: serving.localAddress, timeout: .seconds(5)) }
        let probes = (0..<3).compactMap { _ in source.connect(to: serving.localAddress, timeout: .seconds(5)) }
        #expect(probes.count == 3)
        #expect(waitUntil(timeout: 5) { queued(serving) == 20 && queued(starting) == 3 }, "\(queued(serving)) / \(queued(starting))")
        withExtendedLifetime((load, probes)) {}
    }

    @Test("a socket that leaves the group moves the last one into its slot: ret #0 then reaches the former second")
    func leaveMovesTheLast() throws {
        let (first, second) = try pair()
        let third = try Listener(address: first.localAddress, policy: .shared)
        first.close()
        // Model: [first, second, third] - first = [third, second].
        #expect(SteeringProgramTests.attach(SteeringProgram.instructions(serving: [0], probe: nil), to: second) == 0)
        let clients = try (0..<10).map { _ in try Connection.dial(to: second.localAddress, timeout: .seconds(5)) }
        #expect(waitUntil(timeout: 5) { queued(third) == 10 }, "\(queued(second)) / \(queued(third))")
        withExtendedLifetime(clients) {}
    }

    @Test("UDP groups follow the same rules: ret #1 reaches the second socket; after the first closes, the third holds slot 0")
    func udpGroup() throws {
        let first = try DatagramSocket(udp: "127.0.0.1:0", policy: .shared)
        let (second, third) = (try DatagramSocket(address: first.localAddress, policy: .shared), try DatagramSocket(address: first.localAddress, policy: .shared))
        let sender = try DatagramSocket(udp: "127.0.0.1:0")
        let descriptors = [first, second, third].map { $0.handle.systemDescriptor! }
        #expect(SteeringProgram.attach(SteeringProgram.instructions(serving: [1], probe: nil), to: descriptors[0]) == 0)
        for _ in 0..<10 { try sender.send([1], to: first.localAddress) }
        #expect(waitUntil(timeout: 5) { ListenerState.waiting(descriptors[1], .udp) != nil })
        #expect(ListenerState.waiting(descriptors[0], .udp) == nil && ListenerState.waiting(descriptors[2], .udp) == nil)
        first.close()
        #expect(SteeringProgram.attach(SteeringProgram.instructions(serving: [0], probe: nil), to: descriptors[1]) == 0)
        for _ in 0..<10 { try sender.send([1], to: second.localAddress) }
        #expect(waitUntil(timeout: 5) { ListenerState.waiting(descriptors[2], .udp) != nil })
    }

    @Test("eBPF: the program picks a socket by up's key; a listener that shuts down hands its queue to the serving one",
          .needsRoot("CAP_BPF for a SK_REUSEPORT program"))
    func ebpfSelectsAndMigrates() throws {
        let (first, second) = try pair()
        let (a, b) = (first.handle.systemDescriptor!, second.handle.systemDescriptor!)
        var map = try #require(SteeringMap.make().map)
        defer { Files.close(map.descriptor) }
        #expect(map.add(a) == 0 && map.add(b) == 0)
        #expect(map.keys == [a: 0, b: 1])
        #expect(map.attach(.init(serving: [1]), to: a).errno == 0)
        var clients = try (0..<10).map { _ in try Connection.dial(to: first.localAddress, timeout: .seconds(5)) }
        #expect(waitUntil(timeout: 5) { queued(second) == 10 }, "\(queued(first)) / \(queued(second))")
        #expect(queued(first) == 0)
        let attached = map.attach(.init(serving: [0]), to: b)
        #expect(attached.errno == 0, "\(attached.log)")
        clients += try (0..<5).map { _ in try Connection.dial(to: first.localAddress, timeout: .seconds(5)) }
        #expect(waitUntil(timeout: 5) { queued(first) == 5 }, "\(queued(first)) / \(queued(second))")
        // The first stops listening while 5 wait in its queue: they move to the serving second, not reset.
        #expect(map.attach(.init(serving: [1]), to: b).errno == 0)
        #expect(shutdown(a.rawValue, Int32(SHUT_RDWR)) == 0)
        #expect(waitUntil(timeout: 5) { queued(second) == 15 }, "\(queued(second)) queued on the second after the first shut down")
        withExtendedLifetime(clients) {}
    }

    @Test("eBPF: the probe's source ports reach the probe's socket alone", .needsRoot("CAP_BPF for a SK_REUSEPORT program"))
    func ebpfProbe() throws {
        let (serving, starting) = try pair()
        var map = try #require(SteeringMap.make().map)
        defer { Files.close(map.descriptor) }
        #expect(map.add(serving.handle.systemDescriptor!) == 0 && map.add(starting.handle.systemDescriptor!) == 0)
        let source = try ProbeSource(for: serving.localAddress)
        let attached = map.attach(.init(serving: [0], probe: (source.ports, 1)), to: serving.handle.systemDescriptor!)
        #expect(attached.errno == 0, "\(attached.log)")
        let load = try (0..<20).map { _ in try Connection.dial(to: serving.localAddress, timeout: .seconds(5)) }
        let probes = (0..<3).compactMap { _ in source.connect(to: serving.localAddress, timeout: .seconds(5)) }
        #expect(waitUntil(timeout: 5) { queued(serving) == 20 && queued(starting) == 3 }, "\(queued(serving)) / \(queued(starting))")
        withExtendedLifetime((load, probes)) {}
    }

    static func attach(_ program: [SteeringProgram.Instruction], to listener: Listener) -> Int32 {
        SteeringProgram.attach(program, to: listener.handle.systemDescriptor!)
    }
}

/// A server whose stop is sloppy, as uvicorn's, php -S's or node cluster's are: on SIGTERM it closes every
/// connection it accepted and has not answered yet, and exits. Under one shared accept queue it loses requests at
/// every reload; steered, the old generation is stopped only once it holds nothing. `shutdown-new` makes every
/// generation after the first shut its socket down at start; `shutdown-on-stop` shuts it down on SIGTERM (to wake
/// an accept thread, a common idiom) before it waits for its requests; `helper` double-forks a helper that keeps
/// descriptor 3 and answers "helper"; `stall` makes the first generation say READY=1 and never accept.
let sloppyServer = """
    import os, signal, socket, sys, threading, time
    mode, marker = sys.argv[1], sys.argv[2]
    first = not os.path.exists(marker)
    open(marker, "a").close()
    s = socket.socket(fileno=3)
    if mode == "shutdown-new" and not first:
        s.shutdown(socket.SHUT_RDWR)
    if mode == "helper" and first and os.fork() == 0:
        if os.fork() == 0:
            os.setsid()
            end = time.time() + 60
            while time.time() < end:
                try: c, _ = s.accept()
                except OSError: time.sleep(0.05); continue
                c.recv(4096); c.sendall(b"HTTP/1.0 200 OK\\r\\n\\r\\nhelper\\n"); c.close()
        os._exit(0)
    if mode == "stall" and first:
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b"READY=1", os.environ["NOTIFY_SOCKET"])
        signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
        time.sleep(120)
        os._exit(0)
    pending = []
    lock = threading.Lock()
    def stop(*_):
        if mode == "shutdown-on-stop":
            s.shutdown(socket.SHUT_RD)
            time.sleep(0.2)
        with lock:
            for c in pending: c.close()
        os._exit(0)
    signal.signal(signal.SIGTERM, stop)
    body = b"HTTP/1.0 200 OK\\r\\n\\r\\ngen %d\\n" % os.getpid()
    def serve(c):
        try:
            c.recv(4096); time.sleep(0.01); c.sendall(body); c.close()
        except OSError: pass
        with lock:
            if c in pending: pending.remove(c)
    end = time.time() + 120
    while time.time() < end:
        try: c, _ = s.accept()
        except OSError: time.sleep(0.05); continue
        with lock: pending.append(c)
        threading.Thread(target=serve, args=(c,), daemon=True).start()
    """

@Suite("steered generations: reloads under load, and generations that cannot hurt each other")
struct UpSteeringTests {
    private func sloppy(_ mode: String, extra: [String] = [], environment: [String: String]? = nil) throws -> (UpProcess, TemporaryFolder) {
        let folder = try TemporaryFolder()
        let script = try folder.write("sloppy.py", sloppyServer)
        let up = try UpProcess(
            ["--listen", "127.0.0.1:0"] + extra + ["--", systemPython, script, mode, folder.path + "/marker"], environment: environment, folder: folder)
        return (up, folder)
    }

    @Test("a server whose stop closes what it just accepted: 5 reloads under 8 clients, 0 failed; each old generation stopped once idle",
          arguments: ["eBPF", "classic"])
    func sloppyStopLosesNothing(steering: String) throws {
        let environment = steering == "classic" ? ProcessInfo.processInfo.environment.merging(["PORTREUSE_UP_STEERING": "classic"]) { $1 } : nil
        let (up, _) = try sloppy("plain", environment: environment)
        let address = try up.servingAddress()
        let outcome = up.reloadUnderLoad(address, times: 5, clients: 8)
        print("measured: sloppy stop, steered (\(steering)): \(outcome.answered) answered, \(outcome.failures.count) failed over \(outcome.reloads) reloads")
        #expect(outcome.reloads == 5, "\(up.logText)")
        #expect(outcome.failures.isEmpty, "\(outcome.failures.count) failed: \(outcome.failures.prefix(3))\n\(up.logText)")
        #expect(up.waitForStatus(timeout: 20) { !$0.generations.contains(where: \.signalWaits) } != nil, "every old generation got its stop signal: \(up.logText)")
        #expect(up.waitForLog("is idle (its queue is empty, it holds no connection): sent SIGTERM", count: 4, timeout: 20), "\(up.logText)")
        #expect(up.stop() == 0, "\(up.logText)")
    }

    @Test("a new generation that shuts its socket down at start: the reload fails, the old generation serves on, nothing refused")
    func newGenerationShutdown() throws {
        let (up, folder) = try sloppy("shutdown-new")
        let address = try up.servingAddress()
        let load = HTTPLoad(address, clients: 4)
        #expect(waitUntil { load.count > 20 })
        let reload = try capture([portreuse, "up", "reload", "--pid-file", folder.path + "/up.pid"], timeout: 60)
        let before = load.count
        #expect(waitUntil { load.count > before + 50 }, "generation 1 serves on")
        let (answered, failures) = load.stop()
        #expect(reload.status == 1, "the reload failed and says so: \(reload.output)\(reload.stderr)")
        #expect(failures.isEmpty, "\(failures.count) failed of \(answered): \(failures.prefix(3))\n\(up.logText)")
        #expect(up.waitForLog("shut its socket", timeout: 10), "\(up.logText)")
        #expect(up.status?.serving.map(\.number) == [1], "\(up.logText)")
        #expect(up.stop() == 0, "\(up.logText)")
    }

    @Test("an old generation that shuts its socket down on SIGTERM (to wake its accept thread) does not touch the new one's")
    func oldGenerationShutdownOnStop() throws {
        let (up, _) = try sloppy("shutdown-on-stop")
        let address = try up.servingAddress()
        let outcome = up.reloadUnderLoad(address, times: 3, clients: 4)
        #expect(outcome.reloads == 3, "\(up.logText)")
        #expect(outcome.failures.isEmpty, "\(outcome.failures.count) failed: \(outcome.failures.prefix(3))\n\(up.logText)")
        #expect(up.stop() == 0, "\(up.logText)")
    }

    @Test("a detached helper of an old generation that keeps its socket gets no connection after the reload")
    func detachedHelperGetsNothing() throws {
        let (up, _) = try sloppy("helper", extra: ["--grace", "2"])
        let address = try up.servingAddress()
        up.signal(SIGHUP)
        #expect(up.waitForStatus { $0.serving.map(\.number) == [2] && $0.generations.count == 1 } != nil, "\(up.logText)")
        let answers = try (0..<40).map { _ in try httpGet(address) }
        #expect(!answers.contains("helper\n"), "the helper answered \(answers.filter { $0 == "helper\n" }.count) of 40")
        // The helper held generation 1's socket, so it belonged to generation 1 and was stopped with it: only up and
        // generation 2 hold a listener on the port now.
        let serving = try #require(up.status?.serving.first?.pid)
        let holders = Set(PortHolder.find(port: address.port, transport: .tcp, states: [.listen], options: false).flatMap(\.processes).map(\.pid))
        #expect(holders == [up.pid, serving], "\(holders)\n\(up.logText)")
        #expect(up.stop() == 0, "\(up.logText)")
    }

    /// Requests queued on generation 1, which never accepts, while generation 2 takes over: `--drain-timeout 1`
    /// then stops generation 1 and `up` retires its socket with them in its queue. How many were answered.
    private func requestsQueuedOnAHungGeneration(environment: [String: String]? = nil) throws -> (answered: [String], up: UpProcess) {
        let (up, _) = try sloppy("stall", extra: ["--drain-timeout", "1", "--grace", "1"], environment: environment)
        let address = try up.servingAddress()
        let answers = Mutex<[String]>([])
        let done = DispatchSemaphore(value: 0)
        for _ in 0..<5 {
            Thread.detachNewThread {
                let outcome = (try? httpGet(address)) ?? "failed"
                answers.withLock { $0.append(outcome) }
                done.signal()
            }
        }
        let queued = { PortHolder.find(port: address.port, transport: .tcp, states: [.listen], processes: false, options: false).map(\.receiveQueue).reduce(0, +) }
        #expect(waitUntil(timeout: 10) { queued() >= 5 }, "5 requests wait in generation 1's queue: \(queued())")
        up.signal(SIGHUP)
        for _ in 0..<5 { _ = done.wait(timeout: .now() + 30) }
        return (answers.withLock { $0.filter { $0 != "failed" } }, up)
    }

    @Test("a hung old generation's queued requests move to the new generation when up retires its socket (eBPF), not reset",
          .needsRoot("CAP_BPF for a SK_REUSEPORT program"))
    func hungGenerationQueueMigrates() throws {
        let (answers, up) = try requestsQueuedOnAHungGeneration()
        #expect(answers.count == 5 && answers.allSatisfy { $0.contains("gen ") }, "\(answers)\n\(up.logText)")
        #expect(up.waitForStatus { $0.generations.map(\.number) == [2] } != nil, "generation 1 is gone, its socket retired: \(up.logText)")
        #expect(up.waitForLog("connection(s) queued on a retired generation's socket: moved to the serving generation's socket (eBPF)", timeout: 10), "\(up.logText)")
        #expect(up.stop() == 0, "\(up.logText)")
    }

    @Test("without eBPF (PORTREUSE_UP_STEERING=classic) the same requests are reset, and counted in the reload report")
    func hungGenerationQueueResetWithClassicBPF() throws {
        let (answers, up) = try requestsQueuedOnAHungGeneration(environment: ProcessInfo.processInfo.environment.merging(["PORTREUSE_UP_STEERING": "classic"]) { $1 })
        #expect(answers.isEmpty, "\(answers)\n\(up.logText)")
        #expect(up.waitForStatus { $0.generations.map(\.number) == [2] } != nil, "generation 1 is gone, its socket retired: \(up.logText)")
        #expect(up.waitForLog("connection(s) queued on a retired generation's socket: reset by the kernel", timeout: 10), "\(up.logText)")
        let status = try capture([portreuse, "up", "status", "--json", "--pid-file", up.pidFile], timeout: 30)
        let object = try JSONSerialization.jsonObject(with: Data(status.output.utf8)) as? [String: Any]
        let reset = (object?["reloads"] as? [[String: Any]])?.last?["resetOnRetiredSockets"] as? Int
        #expect((reset ?? 0) >= 5, "the 5 requests (and any other connection that waited) in the reload's report: \(status.output)")
        #expect(up.stop() == 0, "\(up.logText)")
    }

    /// A UDP server that answers each datagram with its pid, and on SIGTERM goes on answering for one more second
    /// (a slow stop): with one shared socket, the old generation takes datagrams meant for the new one all that time.
    static let slowUDPServer = """
        import os, signal, socket, time
        sock = socket.fromfd(3, socket.AF_INET, socket.SOCK_DGRAM)
        sock.settimeout(0.05)
        until = []
        signal.signal(signal.SIGTERM, lambda *_: until.append(time.monotonic() + 1.0))
        signal.alarm(120)
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b"READY=1", os.environ["NOTIFY_SOCKET"])
        me = str(os.getpid()).encode()
        while not until or time.monotonic() < until[0]:
            try:
                data, peer = sock.recvfrom(64)
            except socket.timeout:
                continue
            sock.sendto(me, peer)
        """

    @Test("UDP is steered too: once the new generation is ready every datagram reaches it, while the old one stops slowly")
    func udpSteered() throws {
        let folder = try TemporaryFolder()
        let up = try UpProcess(["--listen", "udp:127.0.0.1:0", "--ready", "notify", "--", systemPython, "-c", Self.slowUDPServer], folder: folder)
        let address = try up.servingAddress()
        let client = try DatagramSocket(udp: "127.0.0.1:0")
        func ask() -> String? {
            guard (try? client.send(Array("?".utf8), to: address)) != nil, let answer = try? client.receive(timeout: .seconds(2)) else { return nil }
            return String(decoding: answer.bytes, as: UTF8.self)
        }
        let first = try #require(up.status?.serving.first?.pid)
        #expect(ask() == "\(first)")
        up.signal(SIGHUP)
        let status = try #require(up.waitForStatus { $0.serving.map(\.number) == [2] }, "\(up.logText)")
        let second = try #require(status.serving.first?.pid)
        // The old generation, told to stop, answers for a second more; none of these may reach it.
        let answers = (0..<100).map { _ in ask() }
        let fromOld = answers.filter { $0 == "\(first)" }.count
        #expect(fromOld == 0, "\(fromOld) of 100 datagrams sent after the reload reached the old generation\n\(up.logText)")
        #expect(answers.allSatisfy { $0 == "\(second)" }, "\(Set(answers.map { $0 ?? "none" }))")
        #expect(up.waitForStatus { !$0.generations.contains { $0.number == 1 && $0.signalWaits } } != nil, "generation 1 got its stop signal: \(up.logText)")
        #expect(up.waitForLog("generation 1 (pid \(first)) is idle (its queue is empty, it holds no connection): sent SIGTERM", timeout: 10), "\(up.logText)")
        #expect(up.stop() == 0, "\(up.logText)")
    }
}

/// Real servers nobody here wrote, with their default flags, reloaded under load (the table of issue 26).
@Suite("steered generations: real servers reload with 0 failed", .serialized)
struct UpRealServerTests {
    struct Server: CustomStringConvertible, Sendable {
        var name: String
        /// The executable it needs, looked up on PATH.
        var executable: String
        /// up's options and the command, for the reserved `port` and a folder holding the files below.
        var arguments: @Sendable (_ executable: String, _ port: UInt16, _ folder: String) -> [String]
        var files: [String: String] = [:]
        var description: String { name }
    }

    static func onPath(_ name: String) -> String? {
        if name.hasPrefix("/") { return FileManager.default.isExecutableFile(atPath: name) ? name : nil }
        return (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":").map { "\($0)/\(name)" }
            .first { FileManager.default.isExecutableFile(atPath: $0) }
    }

    static let asgi = """
        async def app(scope, receive, send):
            if scope["type"] != "http":
                return
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": b"asgi"})
        """

    static let servers: [Server] = [
        Server(name: "uvicorn --fd 3", executable: "uvicorn", arguments: { uvicorn, port, folder in
            ["--listen", "127.0.0.1:\(port)", "--", uvicorn, "--app-dir", folder, "--fd", "3", "app:app"] }, files: ["app.py": asgi]),
        Server(name: "hypercorn --bind fd://3", executable: "hypercorn", arguments: { hypercorn, port, folder in
            ["--listen", "127.0.0.1:\(port)", "--", hypercorn, "--bind", "fd://3", folder + "/app.py:app"] }, files: ["app.py": asgi]),
        Server(name: "php -S", executable: "php", arguments: { php, port, folder in
            ["--listen", "127.0.0.1:\(port)", "--", php, "-S", "127.0.0.1:\(port)", "-t", folder] }, files: ["index.php": "<?php echo \"php\\n\";"]),
        Server(name: "node cluster, 2 workers", executable: "node", arguments: { node, port, folder in
            ["--listen", "127.0.0.1:\(port)", "--", node, folder + "/cluster.js", "\(port)"] }, files: ["cluster.js": """
            const cluster = require('cluster'), http = require('http');
            if (cluster.isPrimary) {
              for (let i = 0; i < 2; i++) cluster.fork();
            } else {
              http.createServer((req, res) => res.end('node ' + process.pid + '\\n')).listen(Number(process.argv[2]), '127.0.0.1');
            }
            """]),
        Server(name: "python3 -m http.server", executable: "/usr/bin/python3", arguments: { python, port, folder in
            ["--listen", "127.0.0.1:\(port)", "--", python, "-m", "http.server", "--bind", "127.0.0.1", "--directory", folder, "\(port)"] },
            files: ["index.html": "http.server\n"]),
        // No --protocol: up knows unicorn (KnownServer) and speaks its UNICORN_FD; TCP_DEFER_ACCEPT readiness.
        Server(name: "unicorn (TCP_DEFER_ACCEPT)", executable: "unicorn", arguments: { unicorn, port, folder in
            ["--listen", "127.0.0.1:\(port)", "--", unicorn, "-l", "127.0.0.1:\(port)", folder + "/config.ru"] },
            files: ["config.ru": "run lambda { |env| [200, {'content-type' => 'text/plain'}, [\"unicorn #{Process.pid}\\n\"]] }\n"]),
    ]

    @Test("10 reloads under 8 clients, default flags: 0 failed", arguments: servers)
    func reloads(_ server: Server) throws {
        guard let executable = Self.installed(server.executable) else { return }
        let folder = try TemporaryFolder()
        for (name, text) in server.files { try folder.write(name, text) }
        let reservation = try PortReservation()
        try Self.reloadsLoseNothing(server.name, server.arguments(executable, reservation.port, folder.path), reservation: reservation, folder: folder)
    }

    /// The executable's path; `nil`, with a known issue that says so, where it is not installed (.ci/run installs
    /// every one of them).
    static func installed(_ executable: String) -> String? {
        guard let path = onPath(executable) else {
            withKnownIssue("\(executable) is not installed (.ci/run installs it)") { throw BuildFailure(message: "missing") }
            return nil
        }
        return path
    }

    /// `up` with `arguments` on the reserved port, reloaded 10 times under 8 clients: no request fails, and it stops
    /// with status 0. With `known`, its status names that known server.
    static func reloadsLoseNothing(
        _ name: String, _ arguments: [String], reservation: PortReservation, folder: TemporaryFolder, known: String? = nil
    ) throws {
        let up = try UpProcess(arguments, environment: nil, folder: folder)
        let address = try up.servingAddress(timeout: 60)
        reservation.release()
        if let known { #expect(up.status?.knownServer?.hasPrefix("known server \(known):") == true, "\(String(describing: up.status?.knownServer))") }
        let outcome = up.reloadUnderLoad(address, times: 10, clients: 8)
        print("measured: \(name) under up: \(outcome.answered) answered, \(outcome.failures.count) failed over \(outcome.reloads) reloads")
        #expect(outcome.reloads == 10, "\(up.logText)")
        #expect(outcome.failures.isEmpty, "\(outcome.failures.count) failed of \(outcome.answered + outcome.failures.count): \(outcome.failures.prefix(3))\n\(up.logText)")
        #expect(up.stop() == 0, "\(up.logText)")
    }
}
