import PortReuse
import PortReuseSystem

/// One run of the demo: the four parts, in order, printing as it goes (unless --json).
package struct DemoSession {
    package let options: DemoOptions
    package let processes: DemoProcesses
    package let style = Style.standardOutput
    package let progress = Files.isTerminal(.standardError)
    package let started = Processes.monotonicNanoseconds

    package init(options: DemoOptions, processes: DemoProcesses) {
        self.options = options
        self.processes = processes
    }

    /// Prints text (not with --json).
    package func say(_ text: String = "") {
        guard !options.json else { return }
        print(text)
        Files.flushStandardOutput()
    }

    package func heading(_ text: String) {
        say()
        say(style.bold(text))
    }

    package func run() throws -> DemoFigures {
        say(style.bold("portreuse demo") + ": \(options.workers) workers, \(String(format1: options.seconds)) s of load per phase, "
            + "\(options.restarts) restart\(options.restarts == 1 ? "" : "s") per style, \(options.clients) clients, all on 127.0.0.1")
        let pain = try self.pain()
        try DemoProcesses.checkInterrupted()
        let sharing = try self.sharing()
        heading("3. Zero downtime: \(options.restarts) restarts under load")
        let up = try restartsThroughUp()
        let naive = try naiveRestarts()
        say()
        say(table(up: up, naive: naive))
        return DemoFigures(pain: pain, sharing: sharing, up: up, naive: naive, elapsed: Double(Processes.monotonicNanoseconds - started) / 1e9)
    }

    // MARK: 1. The pain

    /// A listener of `policy` serves one connection and closes it first (so it waits in TIME-WAIT on the
    /// listener's port); then the listener closes, and a new one of the same policy binds the port again.
    private func restart(policy: SharingPolicy) throws -> (port: UInt16, timeWait: Int, rebind: DemoFigures.Rebind) {
        let listener = try Listener(tcp: "127.0.0.1:0", policy: policy)
        let port = listener.localAddress.port
        let client = try Connection.dial(to: listener.localAddress, policy: .exclusive, timeout: .seconds(5))
        guard let server = try listener.accept(timeout: .seconds(5)) else {
            throw CommandFailure("the demo's own listener on \(listener.localAddress) accepted nothing within 5 s")
        }
        server.close()  // the server closes first: its end waits in TIME-WAIT
        _ = try client.receive(timeout: .seconds(5))  // the FIN
        client.close()
        listener.close()
        let timeWait = PortReport.find(port: port, transport: .tcp).connectionCounts.timeWait
        do {
            let again = try Listener(tcp: "127.0.0.1:\(port)", policy: policy)
            again.close()
            return (port, timeWait, .init(rebound: true, error: nil))
        } catch {
            return (port, timeWait, .init(rebound: false, error: error))
        }
    }

    private func pain() throws -> DemoFigures.Pain {
        heading("1. The pain: a restart while old connections sit in TIME-WAIT")
        let exclusive = try restart(policy: .exclusive)
        say("A server on 127.0.0.1:\(exclusive.port) without reuse options (policy exclusive) answered a client and closed")
        say("the connection first, so it waits in TIME-WAIT for 60 s (\(exclusive.timeWait) on the port now). The server restarts:")
        say()
        if exclusive.rebind.rebound {
            say("  " + style.yellow("bind succeeded") + " (this kernel let it rebind; on most systems it fails)")
        } else {
            let text = exclusive.rebind.error.map { "\($0)" } ?? "failed"
            say("  " + style.red("bind fails: ") + text.split(separator: "\n").joined(separator: "\n  "))
        }
        let restartable = try restart(policy: .restartable)
        say()
        say("The same with policy restartable (SO_REUSEADDR on the old and the new socket), on 127.0.0.1:\(restartable.port):")
        say()
        if restartable.rebind.rebound {
            say("  " + style.green("bind succeeds at once") + ", TIME-WAIT or not: Listener(tcp: \"127.0.0.1:\(restartable.port)\") uses it by default")
        } else {
            say("  " + style.red("bind fails: ") + (restartable.rebind.error.map { "\($0)" } ?? "failed"))
        }
        return DemoFigures.Pain(
            port: exclusive.port, timeWait: exclusive.timeWait, exclusive: exclusive.rebind,
            restartablePort: restartable.port, restartable: restartable.rebind)
    }

    // MARK: 2. Sharing

    private func freePort() throws -> UInt16 {
        let listener = try Listener(tcp: "127.0.0.1:0", policy: .exclusive)
        defer { listener.close() }
        return listener.localAddress.port
    }

    private func sharing() throws -> DemoFigures.Sharing {
        heading("2. Sharing: \(options.workers) worker processes on one port (policy shared: SO_REUSEADDR + SO_REUSEPORT)")
        let port = try freePort()
        let address = SocketAddress(ip: .loopbackIPv4, port: port)
        var pids: [Int32] = []
        for number in 1...options.workers {
            pids.append(try processes.start(
                ["demo-worker", "--listen", "127.0.0.1:\(port)", "--policy", "shared", "--name", "\(number)"],
                what: "worker \(number)", notifying: true))
        }
        try processes.waitForReady(count: options.workers, of: pids, timeout: 15)
        say("\(options.workers) processes each bound 127.0.0.1:\(port) with SO_REUSEPORT and listen; each connection goes to one")
        say("of them, chosen by the kernel from a hash of the connection. \(options.clients) clients, \(String(format1: options.seconds)) s:")
        let load = DemoLoad(address: address, clients: options.clients, label: "sharing", seconds: options.seconds, progress: progress)
        do {
            try DemoProcesses.pause(options.seconds)
        } catch {
            _ = load.stop()
            throw error
        }
        let figures = load.stop()
        let whoText = who(port: port)
        for pid in pids { processes.stop(pid, timeout: 5) }

        var workers: [(name: String, pid: Int32, connections: Int)] = []
        for (number, pid) in zip(1...options.workers, pids) {
            let connections = figures.answers["worker \(number) pid \(pid)"] ?? 0
            workers.append(("\(number)", pid, connections))
        }
        let counts = workers.map(\.connections)
        let maxOverMin = Double(counts.max() ?? 0) / Double(max(1, counts.min() ?? 0))
        say()
        let widest = max(1, counts.max() ?? 1)
        let barWidth = 40
        let pidWidth = workers.map { String($0.pid).count }.max() ?? 0
        for worker in workers {
            let length = worker.connections * barWidth / widest
            let bar = String(repeating: style.enabled ? "█" : "#", count: max(worker.connections > 0 ? 1 : 0, length))
            say("  worker \(worker.name.padding(2)) pid \(String(worker.pid).padding(pidWidth))  \(style.green(bar.padding(barWidth)))  \(worker.connections)")
        }
        say()
        say("\(figures.sent) requests, \(figures.failed) failed; busiest / quietest worker: \(String(format2: maxOverMin))")
        say()
        say("What `portreuse who tcp:127.0.0.1:\(port)` said while they ran:")
        say()
        say(whoText.split(separator: "\n", omittingEmptySubsequences: false).map { $0.isEmpty ? "" : "  " + $0 }.joined(separator: "\n"))
        let unchanged = try unchangedPrograms()
        return DemoFigures.Sharing(
            port: port, load: figures, workers: workers, maxOverMin: maxOverMin, whoText: whoText, unchangedShared: unchanged)
    }

    /// Two copies of a worker that sets no reuse option, under `portreuse run --policy shared` through the
    /// kernel (as a Go or static program would be): whether both bound the port. `nil` where seccomp is refused.
    private func unchangedPrograms() throws -> Bool? {
        guard Spawner.filterRefusal() == nil else { return nil }
        let port = try freePort()
        let command = ["run", "--intercept", "kernel", "--policy", "shared", "--", processes.executable, "demo-worker",
                       "--listen", "127.0.0.1:\(port)", "--policy", "exclusive", "--bind-itself", "--name"]
        let pids = try (1...2).map { (number) throws(CommandFailure) in
            try processes.start(command + ["copy \(number)"], what: "copy \(number) under run", notifying: true)
        }
        defer { for pid in pids { processes.stop(pid, timeout: 5) } }
        let shared: Bool
        do {
            try processes.waitForReady(count: 2, of: pids, timeout: 15)
            shared = true
        } catch let error as CommandFailure {
            say(style.red("  portreuse run did not let two copies share the port: ") + error.message)
            shared = false
        }
        guard shared else { return false }
        say()
        say("The same worker with --policy exclusive (it sets no reuse option, as any unmodified server) binds")
        say("127.0.0.1:\(port) twice under `portreuse run --policy shared -- …`: " + style.green("both copies bind and listen") + ". run's seccomp")
        say("filter hands each bind() to run, which sets SO_REUSEADDR + SO_REUSEPORT on the program's own socket first:")
        say("Go and static binaries too, which LD_PRELOAD never reaches.")
        return true
    }

    /// What `portreuse who tcp:127.0.0.1:PORT` prints, from the same code.
    private func who(port: UInt16) -> String {
        let address = SocketAddress(ip: .loopbackIPv4, port: port)
        let query = WhoQuery(text: "tcp:127.0.0.1:\(port)", transports: [.tcp], port: port, family: nil, addresses: [address])
        let report = PortReport.find(port: port, transport: .tcp, competingWith: [address], probes: [.tcp])
        return WhoOutput(query: query, reports: [report], probeUDP: false).text(style: style)
    }

    // MARK: 3. Zero downtime

    private func restartsThroughUp() throws -> DemoFigures.Restarts {
        let port = try freePort()
        let pidFile = processes.folder + "/up.pid"
        let statusPath = UpStatus.path(forPIDFile: pidFile)
        // The headline: a worker that binds the port itself with no reuse option, as an unmodified Go, Python or
        // Java server does; up's bind filter gives it up's socket. Where seccomp is refused, LISTEN_FDS instead.
        let refusal = Spawner.filterRefusal()
        let worker = ["demo-worker", "--name", "up"]
            + (refusal == nil ? ["--listen", "127.0.0.1:\(port)", "--policy", "exclusive", "--bind-itself"] : [])
        let up = try processes.start(
            ["up", "--listen", "127.0.0.1:\(port)", "--workers", "\(Self.upWorkers)", "--pid-file", pidFile, "--ready", "notify", "--grace", "5", "--",
             processes.executable] + worker,
            what: "portreuse up", notifying: false)
        var status = try waitForStatus(statusPath, up: up, timeout: 15, what: "the first generation to be ready") { status in
            status.generations.contains { $0.phase == .ready } ? status : nil
        }
        if let refusal {
            say("portreuse up --listen 127.0.0.1:\(port) --workers \(Self.upWorkers) -- portreuse demo-worker: up holds the socket and hands")
            say("each worker its own as descriptor 3 (LISTEN_FDS). (\(refusal): so a program that binds the port by itself")
            say("cannot share up's socket here.)")
        } else {
            say("portreuse up --listen 127.0.0.1:\(port) --workers \(Self.upWorkers) -- portreuse demo-worker --listen 127.0.0.1:\(port) --policy exclusive --bind-itself")
            say("The worker binds 127.0.0.1:\(port) itself, with no reuse option and no socket activation, as an unmodified")
            say("Go, Python or Java server does. up holds the port and starts each generation under a seccomp filter: the")
            say("kernel hands the worker's bind() to up, which answers it with its own socket. up's log:")
            say()
            for line in swapLines().prefix(1) { say("  " + style.dim(line)) }
            say()
        }
        say("On SIGHUP the new generation starts beside the old one on a socket of its own, in one SO_REUSEPORT group up")
        say("holds. up's BPF program sends every new connection to the serving generation and only up's readiness probe")
        say("to the new one; once the new one accepts it, up switches the program over, and the old generation gets its")
        say("stop signal only once its queue is empty and it holds no connection: its own stop cannot cut a request.")
        say("Each generation is \(Self.upWorkers) copies of the worker (--workers \(Self.upWorkers)), each on a socket of its own: up's program")
        say("spreads new connections over them by their hash, and a worker that crashes is replaced alone.")
        let load = DemoLoad(address: SocketAddress(ip: .loopbackIPv4, port: port), clients: options.clients,
            label: "portreuse up", seconds: options.seconds, progress: progress)
        var times: [Double] = []
        var failedReloads = 0
        do {
            let interval = options.seconds / Double(options.restarts + 1)
            for round in 1...options.restarts {
                try DemoProcesses.pause(interval * Double(round) - load.elapsed)
                load.note.withLock { $0 = "reload \(round) of \(options.restarts)" }
                let before = status
                for generation in status.generations { processes.orphanGroups.insert(generation.pid) }
                Processes.kill(up, Signal.hangUp)
                let outcome = try waitForStatus(statusPath, up: up, timeout: 20, what: "reload \(round)") { $0.outcome(ofReloadAskedAt: before) }
                if outcome.result == .ready { times.append(outcome.seconds * 1000) } else { failedReloads += 1 }
                status = UpStatus.read(from: statusPath) ?? status
                for generation in status.generations { processes.orphanGroups.insert(generation.pid) }
            }
            try DemoProcesses.pause(options.seconds - load.elapsed)
        } catch {
            _ = load.stop()
            throw error
        }
        let figures = load.stop()
        processes.stop(up, timeout: 10)
        let pids = Set(figures.answers.keys.compactMap { $0.split(separator: " ").last.map(String.init) })
        let swaps = swapLines().count
        let idle = logLines(containing: "is idle (its queue is empty, it holds no connection)").count
        let generations = options.restarts + 1 - failedReloads
        say("  up: \(figures.sent) requests, \(figures.failed) failed, answered by \(pids.count) processes (\(generations) generations × \(Self.upWorkers) workers)"
            + (refusal == nil ? "; their \(swaps) bind() calls were all answered with up's sockets" : ""))
        if idle > 0 { say("  \(idle) old generation(s) got their stop signal once idle, after the switch-over") }
        var restarts = DemoFigures.Restarts(
            style: "portreuse up (SIGHUP)", load: figures, restarts: options.restarts, failedRestarts: failedReloads,
            milliseconds: times, servedBy: pids.count)
        restarts.swappedBinds = refusal == nil ? swaps : nil
        return restarts
    }

    /// The workers of each generation in the demo's `up` (`--workers`).
    static let upWorkers = 2

    /// up's log lines that say a generation's own bind got up's socket (through the seccomp filter).
    private func swapLines() -> [String] { logLines(containing: "got up's socket") }

    /// up's log lines that contain `text`, each from "generation" on.
    private func logLines(containing text: String) -> [String] {
        let bytes = Files.read(processes.logPath, limit: 1 << 22) ?? []
        return String(decoding: bytes, as: UTF8.self).split(separator: "\n").filter { $0.contains(text) }.map { line in
            // "HH:MM:SS.mmm portreuse up[PID]: generation 1: bind …": from "generation" on.
            let text = String(line)
            return text.firstRange(of: "generation ").map { String(text[$0.lowerBound...]) } ?? text
        }
    }

    /// Reads up's status file every 20 ms until `done` gives a value; fails when up exits or after `timeout`.
    private func waitForStatus<T>(_ path: String, up: Int32, timeout: Double, what: String, until done: (UpStatus) -> T?) throws -> T {
        let deadline = Processes.monotonicNanoseconds + UInt64(timeout * 1e9)
        while Processes.monotonicNanoseconds < deadline {
            try DemoProcesses.checkInterrupted()
            if let status = UpStatus.read(from: path), let value = done(status) { return value }
            if let exit = processes.exited(up) {
                throw CommandFailure("portreuse up ended (\(exit)) while the demo waited for \(what).\n\(processes.logTail())")
            }
            Processes.sleep(microseconds: 20_000)
        }
        throw CommandFailure("portreuse up did not report \(what) within \(Int(timeout)) s.\n\(processes.logTail())")
    }

    private func naiveRestarts() throws -> DemoFigures.Restarts {
        let port = try freePort()
        let arguments = ["demo-worker", "--listen", "127.0.0.1:\(port)", "--policy", "restartable", "--name", "naive"]
        var current = try processes.start(arguments, what: "naive worker", notifying: true)
        try processes.waitForReady(count: 1, of: [current], timeout: 15)
        say("Naive: stop the worker (it drains, as a good server does), then start the new one on 127.0.0.1:\(port)")
        say("(policy restartable, so the bind works at once); meanwhile nothing listens.")
        let load = DemoLoad(address: SocketAddress(ip: .loopbackIPv4, port: port), clients: options.clients,
            label: "naive restarts", seconds: options.seconds, progress: progress)
        var times: [Double] = []
        do {
            let interval = options.seconds / Double(options.restarts + 1)
            for round in 1...options.restarts {
                try DemoProcesses.pause(interval * Double(round) - load.elapsed)
                load.note.withLock { $0 = "restart \(round) of \(options.restarts)" }
                let stopping = Processes.monotonicNanoseconds
                processes.stop(current, timeout: 5)
                current = try processes.start(arguments, what: "naive worker", notifying: true)
                try processes.waitForReady(count: 1, of: [current], timeout: 15)
                times.append(Double(Processes.monotonicNanoseconds - stopping) / 1e6)
            }
            try DemoProcesses.pause(options.seconds - load.elapsed)
        } catch {
            _ = load.stop()
            throw error
        }
        let figures = load.stop()
        processes.stop(current, timeout: 5)
        say("  naive: \(figures.sent) requests, \(figures.failed) failed" + (figures.errors.isEmpty ? "" : " (\(figures.errorsText))"))
        return DemoFigures.Restarts(
            style: "naive stop-then-start", load: figures, restarts: options.restarts, failedRestarts: 0,
            milliseconds: times, servedBy: options.restarts + 1)
    }

    private func table(up: DemoFigures.Restarts, naive: DemoFigures.Restarts) -> String {
        let rows = [
            ["style", "restarts", "requests sent", "failed", "per restart"],
            [up.style, "\(up.restarts)", "\(up.load.sent)", "\(up.load.failed)", "ready in \(milliseconds(median(up.milliseconds)))"],
            [naive.style, "\(naive.restarts)", "\(naive.load.sent)", "\(naive.load.failed)", "down for \(milliseconds(median(naive.milliseconds)))"],
        ]
        let widths = (0..<5).map { column in rows.map { $0[column].count }.max() ?? 0 }
        return rows.enumerated().map { index, row in
            var cells = zip(row, widths).map { $0.padding($1) }
            if index == 1 { cells[3] = up.load.failed == 0 ? style.green(cells[3]) : style.red(cells[3]) }
            if index == 2 { cells[3] = naive.load.failed == 0 ? cells[3] : style.red(cells[3]) }
            let line = String(Substring(cells.joined(separator: "  ")).trimmingBlanks())
            return "  " + (index == 0 ? style.dim(line) : line)
        }.joined(separator: "\n")
    }

    // MARK: 4. Summary

    package func summary(_ figures: DemoFigures) -> String {
        let up = figures.up, naive = figures.naive
        var lines = ["", style.bold("4. Summary")]
        lines.append("- restart without reuse options: "
            + (figures.pain.exclusive.rebound ? "rebound" : "\(figures.pain.exclusive.error?.errno?.symbol ?? "failed")")
            + "; with policy restartable: " + (figures.pain.restartable.rebound ? "rebound at once" : "failed"))
        lines.append("- \(options.workers) workers shared one port: \(figures.sharing.load.succeeded) connections, "
            + "busiest / quietest \(String(format2: figures.sharing.maxOverMin))")
        lines.append("- \(up.restarts) restarts through portreuse up"
            + (up.swappedBinds != nil ? " of a worker that binds the port itself" : "") + ": \(up.load.failed) of \(up.load.sent) requests failed"
            + (up.failedRestarts > 0 ? ", \(up.failedRestarts) reloads failed" : ""))
        lines.append("- \(naive.restarts) naive restarts: \(naive.load.failed) of \(naive.load.sent) requests failed")
        lines.append("- \(String(format1: figures.elapsed)) s in all")
        lines.append(figures.passed ? style.green("Zero downtime: no request lost.") : style.red("portreuse up lost requests: see above."))
        lines.append("")
        lines.append(style.bold("Next") + ":")
        // Run from a build folder (`swift run`), portreuse is not on PATH: say the command that works.
        let command = processes.executable.contains("/.build/") ? "swift run portreuse" : "portreuse"
        let rows = [
            ("\(command) up --listen 127.0.0.1:8080 -- ./server", "serve, then kill -HUP to restart losing nothing"),
            ("", "(the server binds 127.0.0.1:8080 itself: Go, Python, Java …)"),
            ("\(command) run --policy shared -- ./server", "share a port without changing the program, Go too"),
            ("\(command) who 8080", "who holds a port, and could you bind it"),
            ("\(command) --help, README.md and docs/", "the library, the policies, systemd, containers"),
        ]
        let width = rows.map(\.0.count).max() ?? 0
        for (left, right) in rows { lines.append("  " + left.padding(width) + "    " + right) }
        return lines.joined(separator: "\n")
    }

    private func median(_ values: [Double]) -> Double? {
        guard !values.isEmpty else { return nil }
        return values.sorted()[values.count / 2]
    }

    private func milliseconds(_ value: Double?) -> String {
        value.map { "\(Int($0.rounded())) ms (median)" } ?? "-"
    }
}

extension String {
    /// A number with two decimals: 1.05.
    package init(format2 value: Double) {
        guard value.isFinite else { self = "-"; return }
        let hundredths = Int((value * 100).rounded())
        let fraction = abs(hundredths % 100)
        self = "\(hundredths / 100).\(fraction < 10 ? "0" : "")\(fraction)"
    }
}
