import Foundation
import Glibc
import PortReuse
import TestSupport
import Testing

/// `portreuse up` with real programs: the hello example (PortReuse's activation API), Python with
/// `socket.fromfd(3)`, gunicorn (which reads LISTEN_FDS itself), and clients that count every failure.
@Suite("portreuse up")
struct UpTests {
    static let pythonFromFD = """
        import socket, socketserver, http.server, os, signal, sys
        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"
            def do_GET(self):
                body = f"python {os.getpid()}\\n".encode()
                self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
            def log_message(self, *args): pass
        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True
        server = Server(("127.0.0.1", 0), Handler, bind_and_activate=False)
        server.socket.close()
        server.socket = socket.fromfd(3, socket.AF_INET, socket.SOCK_STREAM)  # from portreuse up
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        signal.alarm(300)
        server.serve_forever()
        """

    @Test("a Swift server using the activation API serves under up, reloads to a new pid, and stops cleanly")
    func helloServesAndReloads() throws {
        let up = try UpProcess(["--listen", "web=127.0.0.1:0", "--", hello, "--name", "A"])
        let address = try up.servingAddress()
        let first = try httpGet(address)
        #expect(first.hasPrefix("hello from A pid"))
        #expect(up.waitForStatus { $0.serving.first?.heardFrom == true } != nil, "hello sends READY=1 on its notify socket: \(up.logText)")
        #expect(up.waitForLog("(READY=1)", timeout: 10), "hello sends READY=1, so auto readiness uses it: \(up.logText)")

        let reload = try capture([portreuse, "up", "reload", "--pid-file", up.pidFile], timeout: 60)
        #expect(reload.status == 0, "\(reload.stderr)")
        #expect(reload.output.hasPrefix("reloaded: generation 2 ready in"))
        let second = try httpGet(address)
        #expect(second.hasPrefix("hello from A pid") && second != first, "a new generation answers: \(first) then \(second)")
        let status = try #require(up.waitForStatus { $0.generations.count == 1 })
        #expect(status.serving.map(\.number) == [2])

        let shown = try capture([portreuse, "up", "status", "--pid-file", up.pidFile])
        #expect(shown.output.contains("web=tcp:127.0.0.1:\(address.port) (fd 3)"))
        #expect(shown.output.contains("ready"))
        // The flags of earlier releases still work, and refuse serving options beside them.
        let alias = try capture([portreuse, "up", "--status", "--json", "--pid-file", up.pidFile])
        #expect(alias.status == 0 && alias.output.contains("\"portreuse.up/1\""), "\(alias.stderr)")
        let mixed = try capture([portreuse, "up", "--status", "--grace", "3", "--listen", "8080", "--pid-file", up.pidFile])
        #expect(mixed.status == 64)
        #expect(mixed.stderr.contains("--listen, --grace serve a program and do nothing beside --reload, --status or --upgrade"), "\(mixed.stderr)")

        #expect(up.stop() == 0, "\(up.logText)")
        #expect(up.waitForLog("generation 2 (pid \(status.serving[0].pid)) exited (exit status 0)", timeout: 10))
        #expect(kill(status.serving[0].pid, 0) == -1, "the generation is gone")
        #expect(!FileManager.default.fileExists(atPath: up.pidFile), "the pid file is removed")
    }

    @Test("a Python server that takes socket.fromfd(3) serves under up, ready by probe, and reloads")
    func pythonFromDescriptor() throws {
        let up = try UpProcess(["--listen", "127.0.0.1:0", "--ready", "probe", "--", systemPython, "-c", Self.pythonFromFD])
        let address = try up.servingAddress()
        let first = try httpGet(address)
        #expect(first.hasPrefix("python "))
        #expect(up.waitForLog("probe: accepted a connection", timeout: 10), "\(up.logText)")
        up.signal(SIGHUP)
        #expect(up.waitForStatus { $0.serving.map(\.number) == [2] && $0.generations.count == 1 } != nil, "\(up.logText)")
        let second = try httpGet(address)
        #expect(second.hasPrefix("python ") && second != first)
        #expect(up.stop() == 0)
    }

    static let gunicorn: String? = {
        let candidates = (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":").map { "\($0)/gunicorn" }
        return candidates.first { FileManager.default.isExecutableFile(atPath: $0) }
    }()

    @Test("gunicorn, which reads LISTEN_FDS itself, serves under up and reloads", .enabled(if: gunicorn != nil, "gunicorn is not installed (.ci/run installs it with pip)"))
    func gunicornReloads() throws {
        let folder = try TemporaryFolder()
        try folder.write("app.py", """
            import os
            def app(environ, start_response):
                body = f"gunicorn {os.getpid()}\\n".encode()
                start_response("200 OK", [("Content-Length", str(len(body)))])
                return [body]
            """)
        let up = try UpProcess(
            ["--listen", "127.0.0.1:0", "--", Self.gunicorn!, "--chdir", folder.path, "--workers", "2", "--control-socket", folder.path + "/ctl", "app:app"],
            folder: folder)
        let address = try up.servingAddress(timeout: 60)
        let load = HTTPLoad(address, clients: 4)
        #expect(up.waitForStatus { _ in load.count > 20 } != nil)
        up.signal(SIGHUP)
        #expect(up.waitForStatus(timeout: 60) { $0.serving.map(\.number) == [2] && $0.generations.count == 1 } != nil, "\(up.logText)")
        let before = load.count
        #expect(up.waitForStatus { _ in load.count > before + 20 } != nil)
        let (answered, failures) = load.stop()
        #expect(failures.isEmpty, "\(failures.count) failed of \(answered + failures.count): \(failures.prefix(3))")
        #expect(up.stop() == 0, "\(up.logText)")
    }

    @Test("five reloads under load: every request is answered, and one generation serves at the end")
    func reloadsUnderLoad() throws {
        let up = try UpProcess(["--listen", "127.0.0.1:0", "--", hello, "--startup-ms", "50"])
        let address = try up.servingAddress()
        let load = HTTPLoad(address, clients: 8)
        for number in 2...6 {
            up.signal(SIGHUP)
            #expect(up.waitForStatus { $0.serving.map(\.number) == [number] } != nil, "reload to \(number):\n\(up.logText)")
        }
        let (answered, failures) = load.stop()
        #expect(answered > 100)
        #expect(failures.isEmpty, "\(failures.count) failed of \(answered + failures.count): \(failures.prefix(3))")
        #expect(up.waitForStatus { $0.generations.count == 1 } != nil)
        #expect(up.stop() == 0)
    }

    @Test("a new generation that crashes at start is stopped; the old one keeps serving and --reload says why")
    func crashingGenerationLeavesOldServing() throws {
        let folder = try TemporaryFolder()
        let broken = folder.path + "/broken"
        let up = try UpProcess(["--listen", "127.0.0.1:0", "--", hello, "--fail-if-exists", broken], folder: folder)
        let address = try up.servingAddress()
        let firstPID = try #require(up.status?.serving.first?.pid)
        let before = try httpGet(address)
        try folder.write("broken", "")
        let reload = try capture([portreuse, "up", "--reload", "--pid-file", up.pidFile], timeout: 60)
        #expect(reload.status == 1)
        #expect(reload.stderr.contains("reload failed: generation 2 exited before it was ready (exit status 3)"), "\(reload.stderr)")
        #expect(try httpGet(address) == before, "generation 1 still answers")
        let failed = up.waitForStatus { status in status.reloads.contains { $0.generation == 2 && $0.result == "failed" } && status.serving.map(\.number) == [1] }
        #expect(failed?.reloads.first { $0.generation == 2 }?.reason == "exited before it was ready (exit status 3)", "\(up.logText)")
        #expect(up.waitForLog("generation 1 (pid \(firstPID)) keeps serving", timeout: 10), "\(up.logText)")
        #expect(up.status?.serving.map(\.number) == [1])
        #expect(up.stop() == 0)
    }

    @Test("a program that always fails is restarted with backoff, then up gives up with status 4")
    func givesUp() throws {
        let up = try UpProcess(["--listen", "127.0.0.1:0", "--", "/bin/false"])
        #expect(up.waitForExit(timeout: 30) == 4, "\(up.logText)")
        #expect(up.waitForLog("restarting in", timeout: 10))
        #expect(up.waitForLog("failed 5 times in a row and never became ready: giving up", timeout: 10))
    }

    @Test("a generation that dies while serving is restarted; connections wait in the queue meanwhile")
    func restartsAfterCrash() throws {
        let up = try UpProcess(["--listen", "127.0.0.1:0", "--", hello])
        let address = try up.servingAddress()
        let pid = try #require(up.status?.serving.first?.pid)
        kill(pid, SIGKILL)
        #expect(up.waitForStatus { !$0.serving.contains { $0.pid == pid } } != nil, "up saw generation 1 die: \(up.logText)")
        let answer = try httpGet(address)  // queued until generation 2 accepts
        #expect(answer.hasPrefix("hello from hello pid") && !answer.contains("pid \(pid)\n"))
        let restarted = up.waitForStatus { $0.serving.map(\.number) == [2] }
        #expect(restarted?.serving.first?.reason == "restart", "\(up.logText)")
        #expect(up.waitForLog("exited unexpectedly (killed by SIGKILL)"), "\(up.logText)")
        #expect(up.stop() == 0)
    }

    @Test("bad input: unknown command before any socket, a port in use names its holder, bad signal and duration")
    func badInput() throws {
        let port = try freePort()
        let missing = try capture([portreuse, "up", "--listen", "127.0.0.1:\(port)", "--", "no-such-program-xyz"])
        #expect(missing.status == 127)
        #expect(missing.stderr.contains("command not found: no-such-program-xyz"))

        let holder = try Listener(tcp: "127.0.0.1:0", policy: .exclusive)
        let busy = try capture([portreuse, "up", "--listen", "127.0.0.1:\(holder.localAddress.port)", "--", hello])
        #expect(busy.status == 3)
        #expect(busy.stderr.contains("held by"), "\(busy.stderr)")
        #expect(busy.stderr.contains("pid \(getpid())"), "\(busy.stderr)")

        let signal = try capture([portreuse, "up", "--listen", "127.0.0.1:0", "--stop-signal", "TERMINATE", "--", hello])
        #expect(signal.status == 64)
        #expect(signal.stderr.contains("--stop-signal TERMINATE: not a signal"))
        let duration = try capture([portreuse, "up", "--listen", "127.0.0.1:0", "--grace", "soon", "--", hello])
        #expect(duration.status == 64)
        #expect(duration.stderr.contains("soon"))
        let ready = try capture([portreuse, "up", "--listen", "127.0.0.1:0", "--ready", "eventually", "--", hello])
        #expect(ready.stderr.contains("expected auto, notify, probe or delay:SECONDS"))
        let listen = try capture([portreuse, "up", "--listen", "web=70000", "--", hello])
        #expect(listen.status == 64)
        #expect(listen.stderr.contains("70000"))
        let stale = try capture([portreuse, "up", "reload", "--pid-file", "/nonexistent/up.pid"])
        #expect(stale.status == 1)
        #expect(stale.stderr.contains("cannot read a pid from /nonexistent/up.pid"))
    }

    @Test("systemd-socket-activate hands hello a socket: PortReuse's activation API takes it as a peer that is not ours",
          .enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/systemd-socket-activate"), "systemd-socket-activate is not installed"))
    func libraryUnderSystemdSocketActivate() throws {
        let folder = try TemporaryFolder()
        let port = try freePort()
        let pid = try spawn(["/usr/bin/systemd-socket-activate", "-l", "127.0.0.1:\(port)", "--fdname=web", hello, "--name", "activated", "--listen", "127.0.0.1:1"], log: folder.path + "/log")
        defer { killAndReap(pid) }
        // Until the socket is there.
        let answer = waitFor(timeout: 5, interval: 0.05) { try? httpGet(SocketAddress(ip: .loopbackIPv4, port: port)) } ?? ""
        #expect(answer == "hello from activated pid \(pid)\n", "it serves on the activated socket, not on --listen")
    }
}

@Suite("portreuse up --reuseport")
struct UpReusePortTests {
    @Test("a program that binds by itself overlaps its generations on SO_REUSEPORT under the shim; up warns about tcp_migrate_req")
    func reusePortFallback() throws {
        let folder = try TemporaryFolder()
        let port = try freePort()
        let up = try UpProcess(
            ["--reuseport", "--listen", "127.0.0.1:\(port)", "--", systemPython, "-u", "-m", "http.server", String(port), "--bind", "127.0.0.1",
             "--directory", folder.path],
            folder: folder)
        #expect(up.waitForStatus { !$0.serving.isEmpty } != nil, "\(up.logText)")
        #expect(up.waitForLog("(listening)", timeout: 10), "ready because it listens: \(up.logText)")
        let address = SocketAddress(ip: .loopbackIPv4, port: port)
        _ = try httpGet(address)  // a directory listing
        up.signal(SIGHUP)  // the second generation binds beside the first: without the shim it could not
        #expect(up.waitForStatus { $0.serving.map(\.number) == [2] && $0.generations.count == 1 } != nil, "\(up.logText)")
        _ = try httpGet(address)
        let migrate = (try? String(contentsOfFile: "/proc/sys/net/ipv4/tcp_migrate_req", encoding: .utf8)) ?? ""
        #expect(up.logText.contains("net.ipv4.tcp_migrate_req=0") == migrate.hasPrefix("0"))
        #expect(up.stop() == 0, "\(up.logText)")
    }
}
