import Foundation
import Glibc
import PortReuse
import PortReuseSystem
import PortReuseTools
import Synchronization
import TestSupport
import Testing

// `up --workers N` (issue 29): each generation is N copies of the program, each on a socket of its own in the
// port's steered group; up's program spreads new connections over the serving generation's workers by their
// hash; a worker that exits is replaced alone.

@Suite("worker pools: the steering programs spread connections over several sockets")
struct WorkerSteeringTests {
    @Test("classic BPF as data: the source port hashed, modulo the workers, one jump per worker to its ret")
    func programShape() {
        let program = SteeringProgram.instructions(serving: [4, 5, 6], probe: nil)
        // 7 to load the source port, multiply, shift, modulo; jeq #0, jeq #1; ret #6 (the last), ret #4, ret #5.
        #expect(program.count == 7 + 3 + 2 + 3)
        #expect(program[9].code == 0x94 && program[9].k == 3, "A %= 3")
        #expect(program[10].k == 0 && program[10].jt == 2 && program[11].k == 1 && program[11].jt == 2)
        #expect(program.suffix(3).map(\.k) == [6, 4, 5])
        let probing = SteeringProgram.instructions(serving: [0, 1], probe: (ports: [40000], index: 2))
        #expect(probing.last?.k == 2, "ret #probe last")
        // The probe port's jeq jumps to the last instruction, past the hash and every ret #serving.
        #expect(Int(probing[7].jt) == probing.count - 1 - 7 - 1 && probing[7].k == 40000)
    }

    /// Three listeners in one group on a fresh port, and how many of `count` connections queue on each.
    private func spread(count: Int, attach: ([Descriptor]) -> Int32) throws -> [Int] {
        let first = try Listener(tcp: "127.0.0.1:0", policy: .shared)
        let others = try (0..<2).map { _ in try Listener(address: first.localAddress, policy: .shared) }
        let listeners = [first] + others
        let descriptors = listeners.map { $0.handle.systemDescriptor! }
        #expect(attach(descriptors) == 0)
        let clients = try (0..<count).map { _ in try Connection.dial(to: first.localAddress, timeout: .seconds(5)) }
        let queued = { descriptors.map(ListenerState.queued) }
        #expect(waitUntil(timeout: 5) { queued().reduce(0, +) == count }, "\(queued())")
        withExtendedLifetime((listeners, clients)) {}
        return queued()
    }

    @Test("classic BPF: 90 connections from one client address reach each of 3 serving sockets (at least 10 each)")
    func classicSpreads() throws {
        let counts = try spread(count: 90) { SteeringProgram.attach(SteeringProgram.instructions(serving: [0, 1, 2], probe: nil), to: $0[0]) }
        #expect(counts.allSatisfy { $0 >= 10 }, "\(counts)")
    }

    @Test("eBPF: the kernel's hash of each connection, modulo the workers, picks the key", .needsRoot("CAP_BPF for a SK_REUSEPORT program"))
    func ebpfSpreads() throws {
        var map = try #require(SteeringMap.make().map)
        defer { Files.close(map.descriptor) }
        let counts = try spread(count: 90) { descriptors in
            for descriptor in descriptors { #expect(map.add(descriptor) == 0) }
            return map.attach(.init(serving: [0, 1, 2]), to: descriptors[0]).errno
        }
        #expect(counts.allSatisfy { $0 >= 10 }, "\(counts)")
    }
}

@Suite("worker pools: up --workers with real programs")
struct UpWorkersTests {
    /// node answering with its pid, on the socket it gets as fd 3 (LISTEN_FDS), or binding the port itself.
    static func nodeServer(listen: String) -> String {
        "require('http').createServer((q, r) => r.end(String(process.pid))).listen(\(listen));"
    }

    /// The workers of the serving generation: its pool's children.
    private func workers(of up: UpProcess) -> [pid_t] {
        guard let pool = up.status?.serving.first?.pid else { return [] }
        return Processes.descendants(of: pool).map(\.pid)
    }

    /// The pids that answered `count` requests in a row, counted.
    private func answers(_ address: SocketAddress, count: Int) throws -> [String: Int] {
        var counted: [String: Int] = [:]
        for _ in 0..<count { counted[try httpGet(address), default: 0] += 1 }
        return counted
    }

    @Test("node × 2 on LISTEN_FDS: both serve (each at least 30 % of 200), a reload under load fails nothing, a killed worker is replaced alone")
    func nodeWorkers() throws {
        guard let node = UpRealServerTests.installed("node") else { return }
        let up = try UpProcess(["--listen", "127.0.0.1:0", "--workers", "2", "--", node, "-e", Self.nodeServer(listen: "{fd: 3}")])
        let address = try up.servingAddress()
        let first = try #require(up.waitForStatus { $0.serving.first?.workers?.ready == 2 }, "\(up.logText)")
        #expect(first.serving.first?.workers?.total == 2)
        let pids = workers(of: up)
        #expect(pids.count == 2, "\(pids)")
        let counted = try answers(address, count: 200)
        #expect(Set(counted.keys) == Set(pids.map(String.init)), "\(counted) from \(pids)")
        #expect(counted.values.allSatisfy { $0 >= 60 }, "balance: \(counted)")
        // Each worker listens on a socket of its own: two listeners in the group besides none shared.
        let inodes = pids.map { Processes.socketInodes(of: $0) }
        #expect(inodes.count == 2 && inodes[0].isDisjoint(with: inodes[1]), "\(inodes)")

        let outcome = up.reloadUnderLoad(address, times: 3, clients: 8)
        print("measured: node × 2 workers under up: \(outcome.answered) answered, \(outcome.failures.count) failed over \(outcome.reloads) reloads")
        #expect(outcome.reloads == 3, "\(up.logText)")
        #expect(outcome.failures.isEmpty, "\(outcome.failures.prefix(3))\n\(up.logText)")
        let report = try capture([portreuse, "up", "reload", "--json", "--pid-file", up.pidFile], timeout: 60)
        let object = try JSONSerialization.jsonObject(with: Data(report.output.utf8)) as? [String: Any]
        #expect((object?["workers"] as? [String: Any])?["total"] as? Int == 2, "the reload report names the workers: \(report.output)")

        // A worker that dies is replaced alone: same generation, the other worker untouched.
        let generation = try #require(up.status?.serving.first?.number)
        let before = workers(of: up)
        #expect(before.count == 2)
        kill(before[0], SIGKILL)
        let replaced = up.waitForStatus { $0.serving.first?.workers?.replaced == 1 && $0.serving.first?.workers?.ready == 2 }
        #expect(replaced?.serving.first?.number == generation, "\(up.logText)")
        let after = workers(of: up)
        #expect(after.contains(before[1]) && !after.contains(before[0]) && after.count == 2, "\(before) → \(after)")
        #expect(Set(try answers(address, count: 60).keys) == Set(after.map(String.init)))
        #expect(up.stop() == 0, "\(up.logText)")
    }

    @Test("a worker killed with connections waiting on its socket: its replacement answers them, none fails")
    func queueKeptAcrossReplacement() throws {
        guard let node = UpRealServerTests.installed("node") else { return }
        let up = try UpProcess(["--listen", "127.0.0.1:0", "--workers", "2", "--", node, "-e", Self.nodeServer(listen: "{fd: 3}")])
        let address = try up.servingAddress()
        #expect(up.waitForStatus { $0.serving.first?.workers?.ready == 2 } != nil, "\(up.logText)")
        let pids = workers(of: up)
        try #require(pids.count == 2)
        // Worker 0 stops taking connections: those steered to it wait in its socket's queue.
        kill(pids[0], SIGSTOP)
        let answers = Mutex<[String]>([])
        let done = DispatchGroup()
        for _ in 0..<20 {
            done.enter()
            Thread.detachNewThread {
                defer { done.leave() }
                let answer = (try? httpGet(address)) ?? "failed"
                answers.withLock { $0.append(answer) }
            }
        }
        let queued = { PortHolder.find(port: address.port, transport: .tcp, states: [.listen], processes: false, options: false).map(\.receiveQueue).reduce(0, +) }
        #expect(waitUntil(timeout: 10) { queued() > 0 }, "some requests wait on the stopped worker's socket")
        kill(pids[0], SIGKILL)
        #expect(done.wait(timeout: .now() + 30) == .success)
        let seen = answers.withLock { $0 }
        #expect(!seen.contains("failed"), "\(seen)\n\(up.logText)")
        let replacement = workers(of: up).filter { !pids.contains($0) }
        #expect(replacement.count == 1 && seen.contains(String(replacement[0])), "the replacement answered the queued ones: \(seen), \(replacement)")
        #expect(up.stop() == 0, "\(up.logText)")
    }

    /// A UDP server on fd 3 that answers each datagram with its pid.
    static let udpServer = "import os, socket\ns = socket.socket(fileno=3)\nwhile True:\n    d, peer = s.recvfrom(64); s.sendto(str(os.getpid()).encode(), peer)\n"

    @Test("UDP × 2: datagrams from many source ports reach both workers; reload and stop cleanly")
    func udpWorkers() throws {
        let up = try UpProcess(["--listen", "udp:127.0.0.1:0", "--workers", "2", "--", systemPython, "-c", Self.udpServer])
        let address = try up.servingAddress()
        #expect(up.waitForStatus { $0.serving.first?.workers?.ready == 2 } != nil, "\(up.logText)")
        var answered: Set<String> = []
        for _ in 0..<40 {
            let client = try DatagramSocket(udp: "127.0.0.1:0")
            try client.send(Array("?".utf8), to: address)
            if let answer = try client.receive(timeout: .seconds(5)) { answered.insert(String(decoding: answer.bytes, as: UTF8.self)) }
        }
        #expect(answered == Set(workers(of: up).map(String.init)), "\(answered)")
        #expect(up.stop() == 0, "\(up.logText)")
    }

    @Test("python3 -m http.server × 3 binding the port itself: the bind filter gives each worker its own socket")
    func httpServerBindsItself() throws {
        let reservation = try PortReservation()
        let folder = try TemporaryFolder()
        try folder.write("index.html", "ok\n")
        let up = try UpProcess(
            ["--listen", "127.0.0.1:\(reservation.port)", "--workers", "3", "--", systemPython, "-m", "http.server", "--bind", "127.0.0.1",
             "--directory", folder.path, "\(reservation.port)"], folder: folder)
        let address = try up.servingAddress()
        reservation.release()
        #expect(up.waitForStatus { $0.serving.first?.workers?.ready == 3 } != nil, "\(up.logText)")
        let pids = workers(of: up)
        #expect(pids.count == 3, "\(pids)")
        // Each listener of the port is held by exactly one worker (and up and the pool, which hold every one).
        let listeners = PortHolder.find(port: address.port, transport: .tcp, states: [.listen], options: false)
        let held = pids.map { pid in listeners.filter { $0.processes.contains { $0.pid == pid } }.count }
        #expect(held == [1, 1, 1], "\(held)\n\(up.logText)")
        let owners = pids.map { pid in listeners.first { $0.processes.contains { $0.pid == pid } }?.inode }
        #expect(Set(owners.compactMap { $0 }).count == 3, "three different sockets: \(owners)")
        #expect(try (0..<30).allSatisfy { _ in try httpGet(address) == "ok\n" })
        #expect(up.stop() == 0, "\(up.logText)")
    }

    @Test("unsteered, the workers share the held socket: --shared-socket and a unix: socket; all ready, every request answered",
          arguments: ["shared-socket", "unix"])
    func sharedSocketWorkers(_ kind: String) throws {
        let folder = try TemporaryFolder()
        let socket = folder.path + "/app.sock"
        let server = descriptor3Server(answering: "b'HTTP/1.0 200 OK\\r\\n\\r\\n' + str(os.getpid()).encode()")
        let listen = kind == "unix" ? ["--listen", "unix:" + socket] : ["--listen", "127.0.0.1:0", "--shared-socket"]
        let up = try UpProcess(listen + ["--workers", "2", "--", systemPython, "-c", server], folder: folder)
        #expect(up.waitForStatus { $0.serving.first?.workers?.ready == 2 } != nil, "\(up.logText)")
        let pids = workers(of: up)
        #expect(pids.count == 2, "\(pids)")
        // Both hold the one socket up holds.
        let inodes = pids.map { Processes.socketInodes(of: $0) }
        #expect(inodes.count == 2 && !inodes[0].isDisjoint(with: inodes[1]), "\(inodes)")
        if kind != "unix" {
            let address = try up.servingAddress()
            #expect(try (0..<20).allSatisfy { _ in pids.map(String.init).contains(try httpGet(address)) })
        }
        #expect(up.stop() == 0, "\(up.logText)")
    }

    @Test("a worker that fails at its start fails the generation with that worker's exit status")
    func failingWorker() throws {
        let up = try UpProcess(["--listen", "127.0.0.1:0", "--workers", "2", "--ready-timeout", "10", "--", "/bin/sh", "-c", "exit 3"])
        #expect(up.waitForExit(timeout: 60) == 4, "up gives up on a program that never became ready\n\(up.logText)")
        #expect(up.logText.contains("exited before it was ready (exit status 3)"), "\(up.logText)")
    }

    @Test("--workers 0 and --workers with --reuseport are refused, naming the option", arguments: [
        (["--workers", "0"], "--workers 0: give 1 to 64"),
        (["--workers", "2", "--reuseport"], "--workers and --reuseport do not go together"),
    ])
    func refused(_ case_: ([String], String)) throws {
        let run = try capture([portreuse, "up", "--listen", "127.0.0.1:8080"] + case_.0 + ["--", "/bin/true"])
        #expect(run.status == 64, "\(run.stderr)")
        #expect(run.stderr.contains(case_.1), "\(run.stderr)")
    }
}
