import ArgumentParser
import DemoServer
import PortReuse
import PortReuseSystem
import PortReuseTools

/// `portreuse demo-worker` (hidden): the worker processes of `portreuse demo`, a tiny HTTP server that
/// answers every request with "worker NAME pid PID". It takes its listener from socket activation (under
/// `portreuse up`) or binds one itself with --policy (always with --bind-itself, as an unmodified server does), says READY=1 when NOTIFY_SOCKET is set, and drains on
/// SIGTERM. `swift run portreuse demo` builds only this executable, so the demo's workers are this binary.
struct DemoWorker: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo-worker",
        abstract: "A tiny HTTP server for portreuse demo: answers \"worker NAME pid PID\" and drains on SIGTERM.",
        shouldDisplay: false)

    @Option(help: "The address to bind when not socket-activated.")
    var listen = "127.0.0.1:8080"

    @Option(help: "The sharing policy when it binds by itself.")
    var policy = SharingPolicy.restartable

    @Flag(help: "Bind --listen itself even when handed sockets, as a program that knows nothing of socket activation.")
    var bindItself = false

    @Option(help: "The name in each answer.")
    var name = "1"

    @Option(help: "Threads that answer connections.")
    var threads = 4

    func validate() throws {
        guard (1...64).contains(threads) else { throw ValidationError("--threads \(threads): give 1 to 64") }
    }

    func run() throws {
        // Before any other thread: the server starts its threads with SIGTERM and SIGINT blocked.
        let server = DemoServer(label: "portreuse demo-worker \(name)", threads: threads) { [name] in "worker \(name) pid \(Processes.currentID)\n" }
        let listener = bindItself ? try Listener(tcp: listen, policy: policy) : try Listener.activated(orBind: listen, policy: policy)
        try Readiness.notify(.ready, .status("worker \(name) serving on \(listener.localAddress)"))
        try server.serve(listener)
    }
}
