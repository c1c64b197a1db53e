import Foundation
import Glibc
import PortReuse
import PortReuseTools
import TestSupport
import Testing
import PortReuseSystem

/// The supervisor's state and its JSON, without a `portreuse` binary: a Supervisor driven step by step, with
/// real (short) programs as its generations.
@Suite("up: supervisor state")
struct SupervisorStateTests {
    /// A supervisor of `command`; ready after 50 ms alive, or (`notify`) only on READY=1, which /bin/false never sends.
    /// `signals`: a pipe the test may put signals into (``SignalPipe/deliver(_:)``); `stopDelay`: `--stop-delay`.
    static func supervisor(
        _ command: [String], folder: TemporaryFolder, readiness: ReadinessCheck = .delay(0.05), stopDelay: Double = 0, signals: SignalPipe? = nil
    ) throws -> Supervisor {
        var configuration = Supervisor.Configuration(
            command: command, readiness: readiness, readyTimeout: 5, grace: 1, stopSignal: SIGTERM, statusPath: nil,
            reusePortEnvironment: nil, reusePortListens: [], arguments: [])
        configuration.stopDelay = stopDelay
        return Supervisor(
            configuration: configuration, sockets: [], runtimeFolder: folder.path, signals: try signals ?? SignalPipe(installingHandlers: false),
            startedWall: Processes.wallClockSeconds)
    }

    /// Steps `supervisor` until `done` holds, at most 400 steps and 10 s.
    static func step(_ supervisor: Supervisor, until done: () -> Bool) -> Bool {
        let deadline = Processes.monotonicNanoseconds + 10_000_000_000
        for _ in 0..<400 where Processes.monotonicNanoseconds < deadline {
            if done() { return true }
            supervisor.step()
        }
        return done()
    }

    @Test("an in-place upgrade during a restart backoff restarts the program (the hand-over keeps the backoff)")
    func upgradeDuringBackoff() throws {
        let folder = try TemporaryFolder()
        let failing = try Self.supervisor(["/bin/false"], folder: folder, readiness: .notify)
        failing.startGeneration(.start)
        #expect(Self.step(failing) { if case .backingOff = failing.state { return failing.generations.isEmpty } else { return false } })
        guard case .backingOff = failing.state else { Issue.record("no backoff after a failed start: \(failing.state)"); return }

        // What `up` writes before execve, read back by the new `up` of the same process.
        let bytes = try JSONEncoder().encode(failing.handover(upgrades: 1))
        let handover = try JSONDecoder().decode(UpgradeHandover.self, from: bytes)
        #expect(handover.record.state == failing.state)
        #expect(handover.record.failures.inARow == 1)

        let upgraded = try Self.supervisor(["/bin/sleep", "30"], folder: folder)
        upgraded.adopt(handover)
        defer { for generation in upgraded.generations { kill(-generation.pid, SIGKILL) } }
        #expect(Self.step(upgraded) { upgraded.generations.contains { $0.phase == .ready } })
        #expect(upgraded.state == .running)
        #expect(upgraded.generations.map(\.reason) == [.restart])
        #expect(upgraded.nextNumber == 3)
    }

    @Test("give up after 5 failures in a row of a program that never served: stopping with exit status 4")
    func givingUp() throws {
        let folder = try TemporaryFolder()
        let supervisor = try Self.supervisor(["/bin/false"], folder: folder, readiness: .notify)
        supervisor.startGeneration(.start)
        #expect(Self.step(supervisor) { supervisor.state == .stopping(exitCode: 4) && supervisor.generations.isEmpty })
        #expect(supervisor.failures.inARow == FailureCount.attemptsBeforeGivingUp)
        #expect(!supervisor.failures.everReady)
    }

    @Test("backoff doubles from 0.2 s up to 10 s")
    func backoff() {
        var failures = FailureCount()
        var delays: [Double] = []
        for _ in 1...8 {
            failures.inARow += 1
            delays.append(failures.backoffSeconds)
        }
        #expect(delays == [0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10, 10])
        failures.everReady = true
        #expect(!failures.shouldGiveUp)
    }

    static func status(next: Int, reloads: [ReloadRecord], generations: [GenerationRecord] = []) -> UpStatus {
        var record = SupervisorRecord()
        record.nextNumber = next
        record.history = reloads
        record.generations = generations
        return UpStatus(pid: 1, processStartTime: nil, command: ["x"], startedAt: 0, sockets: [], record: record, writtenAt: 0)
    }

    @Test("a reload's outcome is its own, never the failure of the reload before it")
    func reloadOutcome() {
        let failed = ReloadRecord(generation: 3, startedAt: 0, result: .failed, reason: "exited before it was ready", seconds: 0.1)
        let before = Self.status(next: 4, reloads: [failed])
        #expect(before.outcome(ofReloadAskedAt: before) == nil)
        var starting = GenerationRecord(number: 4, pid: 10, reason: .reload, startedAt: 0, startedMonotonic: 0, readyBy: 0)
        #expect(Self.status(next: 5, reloads: [failed], generations: [starting]).outcome(ofReloadAskedAt: before) == nil)
        starting.stage = .ready
        let ready = ReloadRecord(generation: 4, startedAt: 0, result: .ready, reason: nil, seconds: 0.2)
        #expect(Self.status(next: 5, reloads: [failed, ready], generations: [starting]).outcome(ofReloadAskedAt: before) == ready)
    }

    @Test("the status file's JSON: states as words, reload results and reasons apart, no frozen ages")
    func statusJSON() throws {
        var generation = GenerationRecord(number: 2, pid: 42, reason: .reload, startedAt: 1, startedMonotonic: 5, readyBy: 9)
        generation.stage = .exiting(killAt: 9)
        generation.sockets = [Descriptor(11), Descriptor(12)]
        let failed = ReloadRecord(generation: 2, startedAt: 1, result: .failed, reason: "was not ready within 60s", seconds: 60)
        var status = Self.status(next: 3, reloads: [failed], generations: [generation])
        status.state = .backingOff(until: 7)
        let object = try #require(try JSONSerialization.jsonObject(with: JSONEncoder().encode(status)) as? [String: Any])
        #expect(object["schema"] as? String == "portreuse.up/1")
        let generations = try #require(object["generations"] as? [[String: Any]])
        #expect(generations.first?["state"] as? String == "exiting")
        #expect(generations.first?["reason"] as? String == "reload")
        #expect(generations.first?["ageSeconds"] == nil)
        #expect(generations.first?["sockets"] as? [Int] == [11, 12], "a descriptor is written as its number")
        let reload = try #require((object["reloads"] as? [[String: Any]])?.first)
        #expect(reload["result"] as? String == "failed")
        #expect(reload["reason"] as? String == "was not ready within 60s")
        #expect(object["stopping"] as? Bool == false)
        let decoded = try JSONDecoder().decode(UpStatus.self, from: JSONEncoder().encode(status))
        #expect(decoded.state == .backingOff(until: 7))
        #expect(decoded.generations.first?.phase == .exiting)
        #expect(decoded.generations.first?.sockets == [Descriptor(11), Descriptor(12)])
        #expect(object["adopted"] == nil && object["upgrading"] == nil, "absent when there is none")
    }

    @Test("the status file says which server was adopted and whether it drains, and which binary an upgrade becomes")
    func statusAdoptedAndUpgrading() throws {
        var record = SupervisorRecord()
        record.adopted = AdoptedRecord(pid: 77, name: "python3")
        var status = UpStatus(pid: 1, processStartTime: nil, command: ["x"], startedAt: 0, sockets: [], record: record, writtenAt: 0)
        status.upgrading = "/usr/bin/portreuse"
        let object = try #require(try JSONSerialization.jsonObject(with: JSONEncoder().encode(status)) as? [String: Any])
        let adopted = try #require(object["adopted"] as? [String: Any])
        #expect(adopted["pid"] as? Int == 77 && adopted["name"] as? String == "python3")
        #expect(object["upgrading"] as? String == "/usr/bin/portreuse")
    }
}
