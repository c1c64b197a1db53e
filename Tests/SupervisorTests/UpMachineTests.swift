import Foundation
import Glibc
import PortReuse
import PortReuseTools
import Testing
import PortReuseSystem

/// The decisions of `up` as its state machine makes them: events in, actions out, a clock the test moves. No
/// process, no socket: what a look at the kernel would find is an event the test makes up.
@Suite("up: the state machine")
struct UpMachineTests {
    typealias Action = UpMachine.Action

    /// A machine under test with its own clock (nanoseconds; starts at 1 s).
    struct Driver {
        var machine: UpMachine
        var now: UInt64 = 1_000_000_000
        var actions: [Action] = []

        /// `adopting`: `up --adopt` took the sockets of pid 77 (`server`).
        init(readiness: ReadinessCheck = .probe, stopWhenIdle: Double? = nil, stopDelay: Double = 0, adopting: Bool = false) {
            var settings = UpMachine.Settings(readiness: readiness, readyTimeout: 60, grace: 5, stopSignal: SIGTERM)
            settings.stopWhenIdle = stopWhenIdle
            settings.stopDelay = stopDelay
            settings.drainTimeout = 10
            var record = SupervisorRecord()
            if adopting { record.adopted = AdoptedRecord(pid: 77, name: "server") }
            machine = UpMachine(settings: settings, record: record)
        }

        @discardableResult
        mutating func send(_ event: UpMachine.Event) -> [Action] {
            actions = machine.handle(event, now: now)
            return actions
        }

        mutating func advance(seconds: Double) { now += UInt64(seconds * 1e9) }

        /// Starts generation `number` (pid number × 100) with its own socket 10 + number, or sharing (`steered: false`).
        mutating func started(_ number: Int, reason: StartReason, steered: Bool = true) {
            send(.started(UpMachine.Spawned(
                number: number, reason: reason, pid: Int32(number * 100), startedAt: 0, notifyPath: nil, sockets: steered ? [Descriptor(Int32(10 + number))] : nil)))
        }

        /// Generation 1 started (not yet ready).
        mutating func starting(steered: Bool = true) {
            var start: [Action] = []
            machine.start(.start, &start)
            #expect(start == [.start(1, reason: .start)])
            started(1, reason: .start, steered: steered)
        }

        /// Generation 1 started and ready.
        mutating func serving(steered: Bool = true) {
            starting(steered: steered)
            #expect(send(.tick).contains(.lookForReadiness(1)))
            send(.probed(number: 1, how: nil))
            #expect(stage(1) == .ready)
        }

        /// A reload whose generation 2 became ready.
        mutating func reloaded(steered: Bool = true) {
            #expect(send(.signal(SIGHUP)).contains(.start(2, reason: .reload)))
            started(2, reason: .reload, steered: steered)
            advance(seconds: 0.1)
            send(.probed(number: 2, how: nil))
        }

        func stage(_ number: Int) -> GenerationStage? { machine.record.generation(number)?.stage }
        var signals: [(Int32, Int32)] { actions.compactMap { if case .signal(let pid, let signal) = $0 { (pid, signal) } else { nil } } }
    }

    @Test("steered reload: cutover first, the old generation out of rotation gets its stop signal only once it is idle")
    func steeredReload() {
        var up = Driver()
        up.serving()
        up.reloaded()
        #expect(up.actions.first == .steer, "the cutover comes before anything else")
        #expect(up.actions.contains(.measureReload(2, .ready, reason: nil)))
        #expect(up.actions.contains(.takeOutOfRotation(1)))
        #expect(up.signals.isEmpty, "no stop signal at the cutover")
        guard case .outOfRotation(let since, let stopBy) = up.stage(1) else { Issue.record("generation 1: \(String(describing: up.stage(1)))"); return }
        #expect(stopBy - since == 10_000_000_000)

        up.advance(seconds: 0.05)
        #expect(!up.send(.tick).contains(.lookQuiet(1)), "nothing is looked at before the handshakes settle")
        up.advance(seconds: 0.1)
        #expect(up.send(.tick).contains(.lookQuiet(1)))
        #expect(!up.send(.tick).contains(.lookQuiet(1)), "looked at every 50 ms, not at every turn")
        up.send(.quietLook(number: 1, busy: "held 2 connection(s)"))
        #expect(up.signals.isEmpty)
        up.send(.quietLook(number: 1, busy: nil))
        #expect(up.signals.map(\.0) == [100] && up.signals.map(\.1) == [SIGTERM])
        #expect(up.actions.first == .prepareStop(1))
        #expect(up.stage(1) == .draining(killAt: up.now + 5_000_000_000))
    }

    @Test("a generation out of rotation that stays busy gets its stop signal when --drain-timeout runs out")
    func drainLimit() {
        var up = Driver()
        up.serving()
        up.reloaded()
        up.advance(seconds: 9.9)
        up.send(.quietLook(number: 1, busy: "had 3 connection(s) queued"))
        #expect(up.signals.isEmpty)
        up.advance(seconds: 0.2)
        up.send(.quietLook(number: 1, busy: "had 3 connection(s) queued"))
        #expect(up.signals.map(\.0) == [100])
        #expect(up.actions.contains(.log(.info, "generation 1 (pid 100) still had 3 connection(s) queued 10s after the cutover: sent SIGTERM")))
    }

    @Test("shared sockets: the old generation gets its stop signal at the new one's readiness (or waits for idle with --stop-when-idle)")
    func sharedReload() {
        var up = Driver()
        up.serving(steered: false)
        up.reloaded(steered: false)
        #expect(up.signals.map(\.0) == [100])
        #expect(!up.actions.contains(.takeOutOfRotation(1)))

        var idle = Driver(stopWhenIdle: 2)
        idle.serving(steered: false)
        idle.reloaded(steered: false)
        #expect(idle.signals.isEmpty)
        #expect(idle.send(.tick).contains(.stopWhenIdle(1)))
        idle.send(.stoppedWhenIdle(number: 1))
        #expect(idle.stage(1) == .draining(killAt: idle.now + 5_000_000_000))
    }

    @Test("at the ready timeout a generation that holds connections is ready (seen serving); one that holds none fails")
    func readyTimeout() {
        var up = Driver(readiness: .notify)
        up.starting()
        #expect(!up.send(.tick).contains(.countConnections(1)))
        up.advance(seconds: 60)
        #expect(up.send(.tick).contains(.countConnections(1)))
        up.send(.connectionsAtReadyTimeout(number: 1, count: 12))
        #expect(up.stage(1) == .ready)
        #expect(up.signals.isEmpty, "never stopped for want of a readiness signal while it serves")

        var silent = Driver(readiness: .notify)
        silent.starting()
        silent.advance(seconds: 60)
        silent.send(.connectionsAtReadyTimeout(number: 1, count: 0))
        #expect(silent.stage(1) == .failed(killAt: silent.now + 5_000_000_000))
        #expect(silent.signals.map(\.0) == [100])
        #expect(silent.machine.record.state == .backingOff(until: silent.now + 200_000_000))
    }

    @Test("READY=1 makes a generation ready under auto, not once its process exited, and a probe's answer is then ignored")
    func notifyReadiness() {
        var up = Driver(readiness: .auto)
        up.starting()
        up.send(.notified(number: 1, messages: ["STATUS=warming up"], exited: false))
        #expect(!up.send(.tick).contains(.lookForReadiness(1)), "a program that speaks the protocol is not probed")
        up.send(.probed(number: 1, how: nil))
        #expect(up.stage(1) == .readyBy60s(from: up))
        up.send(.notified(number: 1, messages: ["READY=1"], exited: true))
        #expect(up.stage(1) != .ready)
        up.send(.notified(number: 1, messages: ["MAINPID=4242", "READY=1"], exited: false))
        #expect(up.stage(1) == .ready)
        #expect(up.machine.record.generation(1)?.mainProcess == 4242)
    }

    @Test("a new generation that shuts its socket down fails, and the one out of rotation serves again")
    func shutdownOfNewGeneration() {
        var up = Driver()
        up.serving()
        up.reloaded()
        up.send(.socketsStopped(number: 2, names: "http 127.0.0.1:8080"))
        #expect(up.stage(2) == .failed(killAt: up.now + 5_000_000_000))
        #expect(up.stage(1) == .ready, "traffic goes back to the previous generation")
        #expect(up.actions.last == .steer)
        #expect(up.machine.record.state == .running, "no backoff: a generation serves")
        #expect(up.signals.map(\.0) == [200])
    }

    @Test("a starting generation that shuts its socket down is a failed reload; the serving one keeps serving")
    func shutdownWhileStarting() {
        var up = Driver()
        up.serving()
        up.send(.signal(SIGHUP))
        up.started(2, reason: .reload)
        up.send(.socketsStopped(number: 2, names: "http 127.0.0.1:8080"))
        #expect(up.stage(2)?.phase == .failed)
        #expect(up.stage(1) == .ready)
        #expect(up.actions.contains(.measureReload(2, .failed, reason: "shut its socket (http 127.0.0.1:8080) down: it no longer listens")))
    }

    @Test("a crash of the serving generation backs off, then restarts on the clock")
    func crashAndRestart() {
        var up = Driver()
        up.serving()
        up.send(.exited(pid: 100, ExitStatus(raw: 1 << 8)))
        #expect(up.stage(1)?.phase == .failed)
        #expect(up.signals.map(\.0) == [-100], "its workers, if any, get the stop signal")
        #expect(up.machine.record.state == .backingOff(until: up.now + 200_000_000))
        up.advance(seconds: 0.1)
        #expect(!up.send(.tick).contains(.start(2, reason: .restart)))
        up.advance(seconds: 0.1)
        #expect(up.send(.tick).contains(.start(2, reason: .restart)))
        #expect(up.machine.record.counters.restarts == 1)
        #expect(up.send(.tick).contains(.lookGone(1)))
        #expect(up.send(.gone(number: 1)) == [.forget(1)])
        #expect(up.machine.record.generation(1) == nil)
    }

    @Test("five failed starts of a program that never served: stopping with exit status 4")
    func givingUp() {
        var up = Driver()
        var start: [Action] = []
        up.machine.start(.start, &start)
        for attempt in 1...FailureCount.attemptsBeforeGivingUp {
            up.send(.startFailed(number: attempt, reason: "no such file"))
            if attempt < FailureCount.attemptsBeforeGivingUp {
                guard case .backingOff(let until) = up.machine.record.state else { Issue.record("attempt \(attempt): \(up.machine.record.state)"); return }
                up.now = until
                #expect(up.send(.tick).contains(.start(attempt + 1, reason: .restart)))
            }
        }
        #expect(up.machine.record.state == .stopping(exitCode: 4))
        #expect(up.machine.isFinished)
        #expect(up.machine.exitStatus(withProgram: false) == 4)
    }

    @Test("a reload asked while a generation starts follows once it is ready")
    func queuedReload() {
        var up = Driver()
        up.serving()
        up.send(.signal(SIGHUP))
        up.started(2, reason: .reload)
        #expect(up.send(.signal(SIGHUP)).filter { if case .start = $0 { true } else { false } }.isEmpty)
        #expect(up.machine.record.reloadQueued)
        up.send(.probed(number: 2, how: nil))
        #expect(up.actions.contains(.start(3, reason: .reload)))
        #expect(!up.machine.record.reloadQueued)
    }

    @Test("--stop-delay: serving on, reloads refused, then the drain; the grace's end kills and the exit status says so")
    func stopDelayAndGrace() {
        var up = Driver(stopDelay: 3)
        up.serving()
        up.send(.signal(SIGTERM))
        #expect(up.machine.record.state == .delayingStop(until: up.now + 3_000_000_000, exitCode: 0))
        #expect(up.signals.isEmpty)
        up.send(.signal(SIGHUP))
        #expect(up.actions == [.log(.info, "reload ignored: stopping")])
        up.advance(seconds: 3)
        up.send(.tick)
        #expect(up.machine.record.state == .stopping(exitCode: 0))
        #expect(up.signals.map(\.0) == [100])
        #expect(!up.actions.contains(.releaseAdopted), "nothing adopted, nothing to let go (UpAdoptedDrainTests: what is)")
        up.advance(seconds: 5)
        #expect(up.send(.tick).contains(.kill(1)))
        #expect(!up.send(.tick).contains(.kill(1)), "killed once")
        up.send(.killed(number: 1, any: true, outside: 0))
        #expect(up.machine.record.state == .stopping(exitCode: 1))
        up.send(.exited(pid: 100, ExitStatus(raw: SIGKILL)))
        up.send(.gone(number: 1))
        #expect(up.machine.isFinished)
        #expect(up.machine.exitStatus(withProgram: true) == 128 + SIGKILL, "--init: the serving generation's status")
    }

    @Test("a generation out of rotation that exits moves to exiting and keeps its kill time; USR1 goes to live generations only")
    func exitOutOfRotation() {
        var up = Driver()
        up.serving()
        up.reloaded()
        guard case .outOfRotation(_, let stopBy) = up.stage(1) else { Issue.record("not out of rotation"); return }
        up.send(.exited(pid: 100, ExitStatus(raw: 0)))
        #expect(up.stage(1) == .exiting(killAt: stopBy + 5_000_000_000))
        up.send(.signal(SIGUSR1))
        #expect(up.signals.map(\.0) == [200])
    }

    @Test("connections reset on a retired socket count in /metrics and in the report of the reload that replaced its generation")
    func resetsAttributed() {
        var up = Driver()
        up.serving()
        up.reloaded()
        up.send(.reloadMeasured(ReloadRecord(generation: 2, startedAt: 0, result: .ready, reason: nil, seconds: 0.1)))
        up.send(.queuedResetAtRetire(3, generation: 1))
        #expect(up.machine.record.counters.resetAtRetire == 3)
        #expect(up.machine.record.history.last?.resetOnRetiredSockets == 3)
    }

    @Test("the record the status file, the hand-over and /metrics read carries the stages whole through JSON")
    func recordRoundTrip() throws {
        var up = Driver()
        up.serving()
        up.reloaded()
        let bytes = try JSONEncoder().encode(up.machine.record)
        let decoded = try JSONDecoder().decode(SupervisorRecord.self, from: bytes)
        #expect(decoded == up.machine.record)
        let text = String(decoding: bytes, as: UTF8.self)
        #expect(text.contains("\"state\":\"draining\""), "the phase word for readers")
    }
}

@Suite("up --adopt: the adopted server drains as a generation does")
struct UpAdoptedDrainTests {
    typealias Driver = UpMachineTests.Driver

    @Test("it serves until generation 1 is ready, then gets its stop signal, and SIGKILL once its grace is over")
    func handsOverAtReady() {
        var up = Driver(adopting: true)
        up.starting()
        #expect(!up.send(.tick).contains(.signalAdopted(SIGTERM)), "it serves while generation 1 starts")
        #expect(up.send(.probed(number: 1, how: nil)).contains(.signalAdopted(SIGTERM)))
        #expect(up.machine.record.adopted?.stage == .draining(killAt: up.now + 5_000_000_000))
        up.advance(seconds: 4.9)
        #expect(!up.send(.tick).contains(.signalAdopted(SIGKILL)))
        up.advance(seconds: 0.2)
        #expect(up.send(.tick).contains(.signalAdopted(SIGKILL)))
        #expect(!up.send(.tick).contains(.signalAdopted(SIGKILL)), "killed once")
        #expect(up.send(.adoptedExited).contains(.releaseAdopted))
        #expect(up.machine.record.adopted == nil)
    }

    @Test("--stop-when-idle: it is asked at each turn until it holds no connection, signalled at the latest when the wait is over")
    func stopWhenIdle() {
        var up = Driver(stopWhenIdle: 5, adopting: true)
        up.serving()
        #expect(!up.actions.contains(.signalAdopted(SIGTERM)))
        #expect(up.send(.tick).contains(.stopAdoptedWhenIdle))
        up.send(.adoptedStoppedWhenIdle)
        #expect(up.machine.record.adopted?.stage == .draining(killAt: up.now + 5_000_000_000))
        #expect(!up.send(.tick).contains(.stopAdoptedWhenIdle), "signalled once")

        var late = Driver(stopWhenIdle: 5, adopting: true)
        late.serving()
        late.advance(seconds: 5.1)
        #expect(late.send(.tick).contains(.signalAdopted(SIGTERM)), "no idle moment within 5 s: signalled anyway")
    }

    @Test("up stops before any generation took over: the adopted server keeps serving and is let go")
    func releasedWhenNobodyTookOver() {
        var up = Driver(adopting: true)
        up.starting()
        let actions = up.send(.signal(SIGTERM))
        #expect(actions.contains(.releaseAdopted) && !actions.contains(.signalAdopted(SIGTERM)))
        #expect(up.machine.record.adopted == nil)
    }

    @Test("up stops while the adopted server waits for an idle moment: its stop signal goes at once")
    func stopWhileWaitingForIdle() {
        var up = Driver(stopWhenIdle: 5, adopting: true)
        up.serving()
        #expect(up.send(.signal(SIGTERM)).contains(.signalAdopted(SIGTERM)))
    }
}

@Suite("up --workers: what the pool tells the machine")
struct UpWorkerMessagesTests {
    @Test("the pool's counts go into the generation's record and /metrics; its READY=1 once all are ready makes it ready")
    func poolMessages() {
        var up = UpMachineTests.Driver(readiness: .notify)
        up.starting()
        up.send(.notified(number: 1, messages: ["X_PORTREUSE_WORKERS_READY=1/2", "X_PORTREUSE_WORKERS_REPLACED=0"], exited: false))
        #expect(up.machine.record.generation(1)?.workers == GenerationRecord.WorkerCounts(total: 2, ready: 1))
        #expect(up.stage(1) != .ready)
        up.send(.notified(number: 1, messages: ["X_PORTREUSE_WORKERS_READY=2/2", "STATUS=2 workers ready", "READY=1"], exited: false))
        #expect(up.stage(1) == .ready)
        #expect(up.actions.contains(.log(.info, "generation 1 (pid 100) ready after 0ms (all 2 workers ready)")), "\(up.actions)")
        // A worker replaced while it serves: counted once, however often the pool repeats its count.
        up.send(.notified(number: 1, messages: ["X_PORTREUSE_WORKERS_READY=1/2", "X_PORTREUSE_WORKERS_REPLACED=1"], exited: false))
        up.send(.notified(number: 1, messages: ["X_PORTREUSE_WORKERS_READY=2/2", "X_PORTREUSE_WORKERS_REPLACED=1"], exited: false))
        #expect(up.machine.record.generation(1)?.workers == GenerationRecord.WorkerCounts(total: 2, ready: 2, replaced: 1))
        #expect(up.machine.record.counters.workerReplacements == 1)
        #expect(up.stage(1) == .ready, "a replaced worker does not take the generation out of service")

        let snapshot = HealthSnapshot(record: up.machine.record, listeners: [], lastTurn: 1)
        let text = Metrics.render(snapshot, listeners: [], kernel: KernelReadings())
        #expect(text.contains("portreuse_up_generation_workers{generation=\"1\",state=\"all\"} 2"), "\(text)")
        #expect(text.contains("portreuse_up_generation_workers{generation=\"1\",state=\"ready\"} 2"), "\(text)")
        #expect(text.contains("portreuse_up_worker_replacements_total 1"), "\(text)")
    }
}

extension GenerationStage {
    /// Generation 1's stage while it starts, as a Driver made it.
    static func readyBy60s(from up: UpMachineTests.Driver) -> GenerationStage {
        .starting(readyBy: (up.machine.record.generation(1)?.startedMonotonic ?? 0) + 60_000_000_000)
    }
}
