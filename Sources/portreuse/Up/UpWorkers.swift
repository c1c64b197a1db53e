import ArgumentParser
import PortReuse
import PortReuseTools

/// `portreuse up-workers`: the process `up --workers N` starts for each generation (``WorkerPool``); not for people.
struct UpWorkers: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "up-workers",
        abstract: "The worker pool of one generation of portreuse up --workers (started by up, not by hand).",
        shouldDisplay: false)

    @Option var count: Int
    @Option var sockets: Int
    @Option(transform: { try ReadinessCheck(parsing: $0) }) var ready: ReadinessCheck
    @Option var stopSignal: Int32
    @Option var generation: Int
    @Flag(name: .customLong("set-listen-pid")) var setListenPID = false
    @Argument(parsing: .captureForPassthrough) var command: [String] = []

    mutating func validate() throws {
        if command.first == "--" { command.removeFirst() }
        guard !command.isEmpty, (1...WorkerPoolOptions.maximum).contains(count), sockets >= 0 else {
            throw ValidationError("up-workers is started by portreuse up --workers N; run that instead")
        }
    }

    func run() throws {
        try CommandFailure.reporting {
            let options = WorkerPoolOptions(
                count: count, socketsPerWorker: sockets, readiness: ready, stopSignal: stopSignal, generation: generation, setListenPID: setListenPID,
                command: command)
            try WorkerPool(options: options).run()
        }
    }
}
