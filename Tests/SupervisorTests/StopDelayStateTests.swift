import Glibc
import PortReuse
import PortReuseTools
import TestSupport
import Testing
import PortReuseSystem

/// `--stop-delay` in the supervisor's state (``SupervisorState/delayingStop(until:exitCode:)``), and what
/// `--health` reads of it: a Supervisor driven step by step, signals put into its pipe as the handler does.
@Suite("up: stop delay and health state")
struct StopDelayStateTests {
    /// A supervisor of `sleep 30`, ready after 50 ms, with a health board; stepped until its generation is ready.
    static func serving(stopDelay: Double, folder: TemporaryFolder) throws -> (Supervisor, SignalPipe, HealthBoard) {
        let signals = try SignalPipe(installingHandlers: false)
        let supervisor = try SupervisorStateTests.supervisor(["/bin/sleep", "30"], folder: folder, stopDelay: stopDelay, signals: signals)
        let board = HealthBoard(listeners: [])
        supervisor.health = board
        supervisor.startGeneration(.start)
        #expect(SupervisorStateTests.step(supervisor) { supervisor.generations.first?.phase == .ready })
        return (supervisor, signals, board)
    }

    /// Whether the stop delay is over: `up` drains.
    static func draining(_ supervisor: Supervisor) -> Bool {
        if case .stopping = supervisor.state { return true }
        return false
    }

    static func cleanUp(_ supervisor: Supervisor) {
        for generation in supervisor.generations { kill(-generation.pid, SIGKILL) }
        _ = SupervisorStateTests.step(supervisor) { supervisor.generations.isEmpty }
    }

    @Test("SIGTERM with --stop-delay: 503 at once, the generation serves on (no stop signal), reloads refused, then the drain; exit 0")
    func delayThenDrain() throws {
        let folder = try TemporaryFolder()
        let (supervisor, signals, board) = try Self.serving(stopDelay: 0.6, folder: folder)
        defer { Self.cleanUp(supervisor) }
        #expect(board.snapshot.readiness.ready)
        let pid = supervisor.generations[0].pid
        let asked = Processes.monotonicNanoseconds
        signals.deliver(SIGTERM)
        supervisor.step()
        guard case .delayingStop(let until, 0) = supervisor.state else { Issue.record("not delaying the stop: \(supervisor.state)"); return }
        #expect(until >= asked + 600_000_000)
        #expect(!board.snapshot.readiness.ready)
        #expect(board.snapshot.readiness.reason.contains("--stop-delay"))
        signals.deliver(SIGHUP)
        supervisor.step()
        #expect(supervisor.generations.count == 1, "a reload during the delay is refused")
        #expect(supervisor.nextNumber == 2)
        #expect(supervisor.generations[0].phase == .ready && kill(pid, 0) == 0, "the generation serves on, unsignalled")

        #expect(SupervisorStateTests.step(supervisor) { Self.draining(supervisor) })
        #expect(Processes.monotonicNanoseconds >= until, "the drain began before the delay was over")
        #expect(supervisor.state == .stopping(exitCode: 0))
        let phase = supervisor.generations.first?.phase
        #expect(phase == nil || phase == .draining || phase == .exiting, "asked to stop (sleep may exit and be reaped in that step)")
        #expect(SupervisorStateTests.step(supervisor) { supervisor.generations.isEmpty }, "sleep dies on SIGTERM")
        #expect(supervisor.state == .stopping(exitCode: 0))
    }

    @Test("a second SIGTERM during the delay skips the rest of it; a third kills")
    func secondSignalSkipsDelay() throws {
        let folder = try TemporaryFolder()
        let (supervisor, signals, _) = try Self.serving(stopDelay: 30, folder: folder)
        defer { Self.cleanUp(supervisor) }
        let number = supervisor.generations[0].number
        signals.deliver(SIGTERM)
        supervisor.step()
        guard case .delayingStop = supervisor.state else { Issue.record("not delaying the stop: \(supervisor.state)"); return }
        signals.deliver(SIGINT)
        supervisor.step()
        #expect(supervisor.state == .stopping(exitCode: 0))
        // sleep dies on SIGTERM at once and may be reaped in this very step: then it is gone, never killed.
        if let generation = supervisor.generations.first(where: { $0.number == number }) {
            #expect(generation.phase == .draining || generation.phase == .exiting, "asked to stop")
            #expect(!generation.killed)
        }
        signals.deliver(SIGTERM)
        supervisor.step()
        #expect(supervisor.state == .stopping(exitCode: 1), "a third stop kills, and says so in the exit status")
    }

    @Test("with nothing ready, or once the serving generation crashes during the delay, the drain starts at once")
    func nothingServes() throws {
        let folder = try TemporaryFolder()
        let signals = try SignalPipe(installingHandlers: false)
        let starting = try SupervisorStateTests.supervisor(["/bin/sleep", "30"], folder: folder, readiness: .notify, stopDelay: 30, signals: signals)
        starting.startGeneration(.start)
        defer { Self.cleanUp(starting) }
        signals.deliver(SIGTERM)
        starting.step()
        #expect(starting.state == .stopping(exitCode: 0), "no generation served: nothing to delay")

        let (serving, servingSignals, _) = try Self.serving(stopDelay: 30, folder: folder)
        defer { Self.cleanUp(serving) }
        servingSignals.deliver(SIGTERM)
        serving.step()
        kill(-serving.generations[0].pid, SIGKILL)
        #expect(SupervisorStateTests.step(serving) { Self.draining(serving) })
        #expect(serving.counters.restarts == 0, "no restart while stopping")
    }

    @Test("the health board: live while the loop turns, stale after 2 s; 404, 405, HEAD; counters of reloads and restarts")
    func endpoint() throws {
        let board = HealthBoard(listeners: [])
        var snapshot = HealthSnapshot()
        let now = Processes.monotonicNanoseconds
        snapshot.lastTurn = now
        snapshot.generations = [.init(number: 1, phase: .draining, pids: [getpid()]), .init(number: 2, phase: .ready, pids: [getpid()])]
        snapshot.counters.reloadsReady = 3
        snapshot.counters.lastReloadSeconds = 0.25
        board.publish(snapshot)
        #expect(HealthEndpoint.respond(method: "GET", target: "/readyz", board: board, now: now) == .init(status: 200, body: "ready: generation 2 serves\n"))
        #expect(HealthEndpoint.respond(method: "HEAD", target: "/livez?verbose", board: board, now: now).status == 200)
        #expect(HealthEndpoint.respond(method: "GET", target: "/livez", board: board, now: now + 2_100_000_000).status == 503)
        #expect(HealthEndpoint.respond(method: "GET", target: "/", board: board, now: now).status == 404)
        let post = HealthEndpoint.respond(method: "POST", target: "/readyz", board: board, now: now)
        #expect(post.status == 405 && post.allow == "GET, HEAD")
        let metrics = HealthEndpoint.respond(method: "GET", target: "/metrics", board: board, now: now)
        #expect(metrics.contentType == HealthEndpoint.metricsContentType)
        #expect(metrics.body.contains("portreuse_up_reloads_total{result=\"ready\"} 3\n"))
        #expect(metrics.body.contains("portreuse_up_generations{phase=\"draining\"} 1\n"))
        #expect(metrics.body.contains("portreuse_up_last_reload_duration_seconds 0.25\n"))
        snapshot.state = .stopping(exitCode: 0)
        board.publish(snapshot)
        #expect(HealthEndpoint.respond(method: "GET", target: "/readyz", board: board, now: now).status == 503)
        let netstat = Array("TcpExt: A ListenOverflows ListenDrops\nTcpExt: 1 7 9\nIpExt: ListenDrops\nIpExt: 2\n".utf8)
        #expect(KernelReadings.netstat(netstat, group: "TcpExt", names: ["ListenOverflows", "ListenDrops"]) == ["ListenOverflows": 7, "ListenDrops": 9])
        #expect(KernelReadings.netstat(netstat, group: "IpExt", names: ["ListenDrops", "Missing"]) == ["ListenDrops": 2])
    }

    @Test("a supervisor counts its reloads by result and its restarts")
    func counters() throws {
        let folder = try TemporaryFolder()
        let (supervisor, signals, board) = try Self.serving(stopDelay: 0, folder: folder)
        defer { Self.cleanUp(supervisor) }
        signals.deliver(SIGHUP)
        #expect(SupervisorStateTests.step(supervisor) { supervisor.counters.reloadsReady == 1 })
        #expect(board.snapshot.counters.reloadsReady == 1)
        #expect((board.snapshot.counters.lastReloadSeconds ?? 0) >= 0.05, "ready by delay:50ms")
        kill(supervisor.generations.first { $0.phase == .ready }!.pid, SIGKILL)
        #expect(SupervisorStateTests.step(supervisor) { supervisor.counters.restarts == 1 })
    }
}
