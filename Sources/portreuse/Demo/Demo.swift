import ArgumentParser
import PortReuse
import PortReuseTools
import PortReuseSystem

/// `portreuse demo`: the whole story in under a minute, on loopback. Why restarts fail (TIME-WAIT), how a
/// shared port spreads load over worker processes, and a rolling restart under load through `portreuse up`
/// that loses nothing, beside a naive stop-then-start that does.
struct Demo: ParsableCommand {
    static let schema = DemoFigures.schema

    static let configuration = CommandConfiguration(
        abstract: "See in under a minute why restarts fail, how a shared port spreads load, and restarts that lose nothing.",
        discussion: """
            Everything runs on 127.0.0.1, on ports the kernel picks, and everything the demo starts is stopped \
            when it ends or on Ctrl-C. Its worker processes are this executable (a hidden demo-worker command: \
            a tiny HTTP server that answers "worker NAME pid PID").

            1. The pain: a listener without reuse options (policy exclusive) serves a connection and closes it \
            first, so it waits in TIME-WAIT; the restarted server's bind fails with the real error. The same \
            with policy restartable (SO_REUSEADDR) rebinds at once.
            2. Sharing: --workers processes listen on one port with policy shared (SO_REUSEPORT); the demo \
            sends load for --seconds and draws how many connections each worker got, then shows what \
            `portreuse who` says about the port.
            3. Zero downtime: load for --seconds while `portreuse up` restarts the worker --restarts times \
            (SIGHUP: the new one starts beside the old one on the same socket); then the same with a naive \
            stop-then-start. A table of requests sent and failed per style.
            4. A summary, and what to run next.

            A progress line runs on stderr when it is a terminal; colour only on a terminal and never with \
            NO_COLOR. Plain text when piped.

            Exit status: 0 when the restarts through up lost no request; 1 when they lost one, or a reload \
            failed, or the demo could not run (the error says why and where the workers' log is); 64 for bad \
            input; 130 after Ctrl-C.

            JSON (--json): one object on one line, schema "\(schema)":
              schema, workers, loadMilliseconds, restarts, clients, elapsedSeconds,
              passed (the restarts through up lost nothing)
              pain           {"port", "timeWait", "exclusive": {"rebound", "errno",
                              "error"}, "restartable": {"rebound", "errno", "error"}}
              sharing        {"port", "sent", "failed", "workers": [{"name", "pid",
                              "connections"}], "maxOverMin"}  (maxOverMin x1000)
              zeroDowntime   {"up": {"sent", "failed", "errors": {ERRNO: count},
                              "restarts", "reloadsFailed", "reloadMilliseconds": [..],
                              "servedBy"}, "naive": {the same, with
                              "downMilliseconds": [..] instead of reloadMilliseconds}}

            Examples:
              swift run portreuse demo
              portreuse demo --workers 2 --seconds 2
              portreuse demo --json | python3 -m json.tool
            """)

    @Option(help: ArgumentHelp("How many worker processes share the port in the sharing part (1 to 32).", valueName: "n"))
    var workers = 4

    @Option(help: ArgumentHelp("How long each load phase runs, in seconds (0.5 to 60).", valueName: "seconds"))
    var seconds = 5.0

    @Option(help: ArgumentHelp("How many restarts per style in the zero-downtime part (1 to 50).", valueName: "n"))
    var restarts = 5

    @Option(help: ArgumentHelp("How many client threads send load (1 to 64).", valueName: "n"))
    var clients = 8

    @Flag(help: "Print the figures as JSON (schema \(Demo.schema)) instead of text.")
    var json = false

    func validate() throws {
        guard (1...32).contains(workers) else {
            throw ValidationError("--workers \(workers): give 1 to 32 worker processes (4 by default), as in --workers 2")
        }
        guard seconds.isFinite, (0.5...60).contains(seconds) else {
            throw ValidationError("--seconds \(seconds): give 0.5 to 60 seconds of load per phase (5 by default), as in --seconds 2")
        }
        guard (1...50).contains(restarts) else {
            throw ValidationError("--restarts \(restarts): give 1 to 50 restarts per style (5 by default), as in --restarts 3")
        }
        guard (1...64).contains(clients) else {
            throw ValidationError("--clients \(clients): give 1 to 64 client threads (8 by default), as in --clients 4")
        }
    }

    var options: DemoOptions { DemoOptions(workers: workers, seconds: seconds, restarts: restarts, clients: clients, json: json) }

    func run() throws {
        try CommandFailure.reporting {
            let processes = try DemoProcesses()
            var finished = false
            defer { processes.stopAll(keepingLog: !finished) }
            let session = DemoSession(options: options, processes: processes)
            do {
                let figures = try session.run()
                finished = true
                if json {
                    print(figures.json(options: options).description)
                } else {
                    session.say(session.summary(figures))
                }
                Files.flushStandardOutput()
                if !figures.passed { throw ExitCode(1) }
            } catch let interrupted as DemoInterrupted {
                finished = true
                processes.stopAll(keepingLog: false)
                printError("\nportreuse demo: interrupted by \(SignalName(interrupted.signal)); stopped everything it started")
                throw ExitCode(130)
            }
        }
    }
}

/// The figures of one run.
