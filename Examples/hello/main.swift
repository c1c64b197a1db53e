// hello: a tiny HTTP server on PortReuse, for the README, the tests and the benchmarks.
//
// It takes its listener from socket activation (`portreuse up`, systemd, `systemd-socket-activate`) or
// binds one itself, tells the supervisor when it is ready (sd_notify), answers every request with
// "hello from NAME pid PID", and on SIGTERM stops accepting, finishes the connections it has and exits 0.
//
//   swift run hello --listen 127.0.0.1:8080
//   portreuse up --listen 127.0.0.1:8080 -- .build/debug/hello
//
// The serving and draining code is the DemoServer target's, shared with `portreuse demo-worker`.
import ArgumentParser
import DemoServer
import Foundation
import PortReuse

@main
struct Hello: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "A tiny HTTP server that runs under portreuse up, under systemd, or alone.",
        discussion: "It answers every request with \"hello from NAME pid PID\" and drains on SIGTERM.")

    @Option(help: "The address to bind when not socket-activated.")
    var listen = "127.0.0.1:8080"

    @Option(help: "The sharing policy when it binds by itself.", transform: { text in
        guard let policy = SharingPolicy(rawValue: text) else { throw ValidationError("unknown policy \(text)") }
        return policy
    })
    var policy = SharingPolicy.restartable

    @Option(help: "The name in each answer.")
    var name = "hello"

    @Option(help: "Milliseconds to sleep before serving, to play a slow start-up.")
    var startupMs = 0

    @Option(help: "Milliseconds each request takes, to play a slow handler.")
    var requestMs = 0

    @Option(help: "Exit with status 3 at start-up when this file exists, to play a broken release.")
    var failIfExists: String?

    @Option(help: "Threads that serve connections.")
    var threads = 8

    @Flag(help: "Do not send READY=1 (to test readiness by probing).")
    var noNotify = false

    func run() throws {
        if let failIfExists, FileManager.default.fileExists(atPath: failIfExists) {
            FileHandle.standardError.write(Data("hello: \(failIfExists) exists: failing at start-up\n".utf8))
            throw ExitCode(3)
        }
        // Before any other thread: the server starts its threads with SIGTERM and SIGINT blocked.
        let server = DemoServer(label: "hello", threads: threads, requestMilliseconds: requestMs) { [name] in
            "hello from \(name) pid \(getpid())\n"
        }
        let listener = try Listener.activated(orBind: listen, policy: policy)
        if startupMs > 0 { usleep(useconds_t(startupMs) * 1000) }
        if !noNotify { try Readiness.notify(.ready, .status("serving on \(listener.localAddress)")) }
        try server.serve(listener)
    }
}
