import Logging
import PortReuse
import PortReuseSystem
import PortReuseInterception

// `up --workers N`: a generation is N copies of the program, each on sockets of its own in the port's steered
// group. `up` starts one process per generation, `portreuse up-workers`, with every worker's sockets; it starts
// the workers, replaces one that crashes alone (its sockets, and the connections queued on them, stay), tells
// `up` over NOTIFY_SOCKET when every worker serves, and passes `up`'s signals on. To `up` the pool is the
// generation's one process: its readiness, its drain and its stop are those of a single program.

/// What `portreuse up-workers` runs: the options `up` gives it.
package struct WorkerPoolOptions: Sendable {
    /// How many workers.
    package var count: Int
    /// How many sockets each worker gets (the pool holds `count` × `socketsPerWorker` at 3, 4, …, worker by worker).
    package var socketsPerWorker: Int
    /// How a worker is seen to serve: READY=1 on its own notify socket, waiting on its own socket, or a delay.
    package var readiness: ReadinessCheck
    /// The signal that asks the workers to stop (up's `--stop-signal`).
    package var stopSignal: Int32
    /// The generation, for the log.
    package var generation: Int
    /// Whether each worker gets LISTEN_PID (systemd's protocol).
    package var setListenPID: Bool
    package var command: [String]

    package init(count: Int, socketsPerWorker: Int, readiness: ReadinessCheck, stopSignal: Int32, generation: Int, setListenPID: Bool, command: [String]) {
        self.count = count
        self.socketsPerWorker = socketsPerWorker
        self.readiness = readiness
        self.stopSignal = stopSignal
        self.generation = generation
        self.setListenPID = setListenPID
        self.command = command
    }

    /// The arguments of `portreuse up-workers` that give these options.
    package var arguments: [String] {
        ["up-workers", "--count", "\(count)", "--sockets", "\(socketsPerWorker)", "--ready", "\(readiness)", "--stop-signal", "\(stopSignal)",
         "--generation", "\(generation)"] + (setListenPID ? ["--set-listen-pid"] : []) + ["--"] + command
    }

    /// The most workers a generation may have (the steering programs pick among this many sockets).
    package static let maximum = 64

    /// The variable that tells a worker its index (0 to count − 1), and the one that tells it how many there are.
    package static let indexVariable = SocketSwap.workerVariable
    package static let countVariable = "PORTREUSE_WORKERS"
    /// What the pool tells `up` besides READY=1 and STATUS= (sd_notify's KEY=VALUE: systemd ignores them).
    package static let readyMessage = "X_PORTREUSE_WORKERS_READY"
    package static let replacedMessage = "X_PORTREUSE_WORKERS_REPLACED"
}

/// The pool of one generation (see above). Single-threaded: one `poll` loop over its signal pipe and the
/// workers' notify sockets.
package final class WorkerPool {
    struct Worker {
        let index: Int
        /// The pool's descriptors of its sockets, as it gets them at 3, 4, …
        let sockets: [Descriptor]
        let inodes: [UInt64]
        let notify: NotifyReceiver
        var pid: Int32?
        var startedAt: UInt64 = 0
        var ready = false
        /// Quick crashes in a row (within a second of the start), for the backoff of its replacement.
        var quickCrashes = 0
        /// When its replacement starts (after a crash, backing off).
        var restartAt: UInt64?
        var lastExit: ExitStatus?
    }

    private let options: WorkerPoolOptions
    private let signals: SignalPipe
    private var workers: [Worker] = []
    private var environment: [String]
    private var logger = Logger(label: "portreuse.up") { _ in UpLogHandler() }
    private var announced = false
    private var stopping = false
    private var replaced = 0
    /// The worker whose failure before every worker was ready ends the pool.
    private var failed: Int?
    private let canLook = GenerationProbe.canLook

    /// Takes the sockets at 3, 4, … (moved out of the way of the workers' own 3, 4, …) and makes a notify socket
    /// per worker beside `up`'s.
    package init(options: WorkerPoolOptions) throws(CommandFailure) {
        self.options = options
        let total = options.count * options.socketsPerWorker
        let floor = try HeldSocket.firstDescriptor(holding: total)
        var held: [Descriptor] = []
        for offset in 0..<total {
            let inherited = Descriptor(Int32(3 + offset))
            guard Files.status(of: inherited) != nil else {
                throw CommandFailure("up-workers: descriptor \(inherited) (socket \(offset + 1) of \(total)) is not open; portreuse up --workers starts it with its sockets")
            }
            do { held.append(try Files.duplicate(inherited, atLeast: floor)) } catch {
                throw CommandFailure("up-workers: descriptor \(inherited) (socket \(offset + 1) of \(total)): \(error.errno.description)")
            }
            Files.close(inherited)
        }
        let upNotify = Readiness.socketPath
        let folder = upNotify.map { String($0[..<($0.lastIndex(of: "/") ?? $0.startIndex)]) }.flatMap { $0.isEmpty ? nil : $0 }
        guard let folder else { throw CommandFailure("up-workers runs under portreuse up only (NOTIFY_SOCKET names up's runtime folder)") }
        environment = ProcessSpawn.currentEnvironment().filter { !$0.hasPrefix("NOTIFY_SOCKET=") }
        signals = try SignalPipe.make()
        for index in 0..<options.count {
            let sockets = Array(held[(index * options.socketsPerWorker)..<((index + 1) * options.socketsPerWorker)])
            let notify = try NotifyReceiver.make(path: "\(folder)/notify-\(options.generation)-worker-\(index).sock")
            workers.append(Worker(index: index, sockets: sockets, inodes: sockets.map(GenerationProbe.inode(of:)), notify: notify))
        }
    }

    /// Runs until every worker is gone after a stop, or one failed to start; then ends as the worker that decides
    /// the generation's status ended (the same exit code, or killed by the same signal).
    package func run() -> Never {
        for index in workers.indices { start(index) }
        while true {
            _ = Files.readable([signals.readEnd] + workers.map(\.notify.descriptor), milliseconds: announced ? 250 : 10)
            for signal in signals.take() where signal != Signal.child { forward(signal) }
            reap()
            if stopping {
                if workers.allSatisfy({ $0.pid == nil }) { finish() }
                continue
            }
            lookForReadiness()
            restartDue()
        }
    }

    // MARK: Workers

    private func start(_ index: Int) {
        var environment = self.environment
        environment += [
            "NOTIFY_SOCKET=\(workers[index].notify.path)", "\(WorkerPoolOptions.indexVariable)=\(index)", "\(WorkerPoolOptions.countVariable)=\(options.count)",
        ]
        do throws(CommandFailure) {
            let started = try Spawner.start(
                options.command, environment: environment, descriptors: workers[index].sockets, setListenPID: options.setListenPID, attachment: .worker)
            guard case .started(let pid, _) = started else {
                if case .failed(let reason) = started { throw CommandFailure(reason) }
                throw CommandFailure("cannot start \(options.command[0])")
            }
            workers[index].pid = pid
            workers[index].startedAt = Processes.monotonicNanoseconds
            workers[index].ready = false
            workers[index].restartAt = nil
        } catch {
            log(.error, "worker \(index): \(error.message)")
            workers[index].lastExit = ExitStatus(raw: 127 << 8)
            guard announced else { return failStart(because: index) }
            workers[index].quickCrashes += 1  // tried again later, backing off as after a crash
            scheduleRestart(index)
        }
    }

    /// Collects the workers' exits: before every worker served, one that exits fails the generation; after, it is
    /// replaced alone (unless the pool stops).
    private func reap() {
        while let (pid, status) = (try? Processes.wait(noHang: true)) ?? nil {
            guard let index = workers.firstIndex(where: { $0.pid == pid }) else { continue }
            workers[index].pid = nil
            workers[index].ready = false
            workers[index].lastExit = status
            if stopping { continue }
            if !announced {
                log(.error, "worker \(index) (pid \(pid)) exited before every worker was ready (\(status))")
                failStart(because: index)
                continue
            }
            let lived = Processes.monotonicNanoseconds - workers[index].startedAt
            workers[index].quickCrashes = lived < 1_000_000_000 ? workers[index].quickCrashes + 1 : 0
            scheduleRestart(index)
            log(.warning, "worker \(index) (pid \(pid)) exited (\(status)): replaced alone, its socket and the connections queued on it kept"
                + (workers[index].quickCrashes > 0 ? " (in \(Seconds(backoff(index))): it crashed within a second of its start)" : ""))
            tellUp(status: "worker \(index) (pid \(pid)) exited (\(status)): replacing it")
        }
    }

    private func backoff(_ index: Int) -> Double {
        workers[index].quickCrashes == 0 ? 0 : min(0.1 * Double(1 << min(workers[index].quickCrashes, 7)), 10)
    }

    private func scheduleRestart(_ index: Int) {
        workers[index].restartAt = Processes.monotonicNanoseconds + UInt64(backoff(index) * 1e9)
    }

    private func restartDue() {
        let now = Processes.monotonicNanoseconds
        for index in workers.indices where workers[index].pid == nil {
            guard let at = workers[index].restartAt, now >= at else { continue }
            start(index)
            if workers[index].pid != nil { replaced += 1 }
        }
    }

    /// A worker failed before the generation was ready: the others are killed, and the pool ends as it did.
    private func failStart(because index: Int) {
        if !stopping { failed = index }
        stopping = true
        for worker in workers { if let pid = worker.pid { Processes.kill(pid, Signal.kill) } }
    }

    // MARK: Readiness

    /// Each starting worker: READY=1 on its notify socket (`auto`, `notify`), else waiting on its own socket
    /// (`auto`, `probe`), or its time served (`delay`). Once every worker is ready, `up` hears READY=1.
    private func lookForReadiness() {
        let now = Processes.monotonicNanoseconds
        var tree: Processes.Tree?
        for index in workers.indices {
            let messages = workers[index].notify.take()
            guard let pid = workers[index].pid, !workers[index].ready else { continue }
            let said = messages.contains("READY=1")
            var ready = false
            switch options.readiness {
            case .notify: ready = said
            case .delay(let seconds): ready = now - workers[index].startedAt >= UInt64(seconds * 1e9)
            case .auto, .probe:
                if said && options.readiness == .auto { ready = true; break }
                guard canLook else {
                    // Nothing to look at: a second after its start is as good as it gets.
                    ready = now - workers[index].startedAt >= 1_000_000_000
                    break
                }
                if tree == nil { tree = Processes.Tree() }
                let processes = [pid] + tree!.descendants(of: pid).map(\.pid)
                ready = workers[index].inodes.contains { GenerationProbe.isWaiting(processes: processes, on: $0) }
            }
            if ready {
                workers[index].ready = true
                if announced {
                    log(.info, "worker \(index) (pid \(pid)) ready: it replaces the one that exited")
                    tellUp(status: summary)
                }
            }
        }
        guard !announced, workers.allSatisfy(\.ready) else { return }
        announced = true
        let pids = workers.compactMap(\.pid).map(String.init).joined(separator: " ")
        log(.info, "\(workers.count) workers ready (pids \(pids))")
        tellUp(status: summary, ready: true)
    }

    /// The workers in words, for STATUS=: "4 workers ready", "3 of 4 workers ready; 2 replaced".
    private var summary: String {
        let ready = workers.filter(\.ready).count
        return (ready == workers.count ? "\(ready) workers ready" : "\(ready) of \(workers.count) workers ready") + (replaced > 0 ? "; \(replaced) replaced" : "")
    }

    /// STATUS= and the counts, and READY=1 the first time, to `up`.
    private func tellUp(status: String, ready: Bool = false) {
        let counts = [
            Readiness.State.custom("\(WorkerPoolOptions.readyMessage)=\(workers.filter(\.ready).count)/\(workers.count)"),
            .custom("\(WorkerPoolOptions.replacedMessage)=\(replaced)"), .status(status),
        ]
        _ = try? Readiness.notify(counts + (ready ? [.ready] : []))
    }

    // MARK: Signals and the end

    /// `up`'s stop signal (or TERM, INT, QUIT: `up` dies, or a person stops the pool) stops the pool: no worker is
    /// replaced from then on. Every signal goes on to every worker.
    private func forward(_ signal: Int32) {
        if [options.stopSignal, Signal.terminate, Signal.interrupt, Signal.quit].contains(signal) { stopping = true }
        for worker in workers { if let pid = worker.pid { Processes.kill(pid, signal) } }
    }

    /// Every worker is gone: the pool ends as the one that failed its start did, else as the first one that did
    /// not stop cleanly (or worker 0), so that `up` says what happened to the program.
    private func finish() -> Never {
        let exits = workers.compactMap(\.lastExit)
        let clean: (ExitStatus) -> Bool = { $0.isSuccess || $0.signal == self.options.stopSignal }
        let status = failed.flatMap { workers[$0].lastExit } ?? exits.first { !clean($0) } ?? exits.first ?? ExitStatus(raw: 0)
        for worker in workers { worker.notify.close() }  // no deinit runs past exit
        if let signal = status.signal, signal != Signal.segmentationFault, signal != Signal.abort, signal != Signal.bus {
            Signals.restoreDefault(signal)
            Processes.kill(Processes.currentID, signal)
        }
        Processes.exit(status.shellStatus)
    }

    private func log(_ level: Logger.Level, _ text: String) {
        logger.log(level: level, .init(stringLiteral: "generation \(options.generation) workers: \(text)"))
    }
}
