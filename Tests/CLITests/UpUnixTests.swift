import Foundation
import Glibc
import PortReuse
import PortReuseTools
import TestSupport
import Testing

// `up --listen unix:PATH` (issue 29): up holds a Unix-domain socket across reloads as it holds a TCP one; a
// stale file is replaced, a live one refused with who holds it; the file goes when up stops.

@Suite("up --listen unix: Unix-domain sockets")
struct UpUnixTests {
    static let app = "def app(environ, start_response):\n    start_response(\"200 OK\", [(\"Content-Type\", \"text/plain\")])\n    return [b\"gunicorn\\n\"]\n"

    private func mode(_ path: String) -> UInt32? {
        var info = stat()
        return lstat(path, &info) == 0 ? UInt32(info.st_mode) & 0o7777 : nil
    }

    @Test("gunicorn on up's Unix socket (LISTEN_FDS), nginx proxying to it: 10 reloads under 8 clients, 0 failed; the file goes at the stop")
    func gunicornBehindNginx() throws {
        guard let gunicorn = UpRealServerTests.installed("gunicorn"), let nginx = UpRealServerTests.installed("nginx") else { return }
        let folder = try TemporaryFolder()
        try folder.write("app.py", Self.app)
        let socket = folder.path + "/app.sock"
        let up = try UpProcess(["--listen", "unix:" + socket, "--unix-mode", "660", "--", gunicorn, "--chdir", folder.path, "app:app"], folder: folder)
        #expect(up.waitForStatus { !$0.serving.isEmpty } != nil, "\(up.logText)")
        #expect(up.status?.sockets.first?.transport == "unix" && up.status?.sockets.first?.address == socket)
        #expect(mode(socket) == 0o660)

        let reservation = try PortReservation()
        try folder.write("nginx.conf", """
            user root root; pid \(folder.path)/nginx.pid; error_log stderr; daemon off; master_process on; worker_processes 1;
            events {}
            http { access_log off; server { listen 127.0.0.1:\(reservation.port); location / { proxy_pass http://unix:\(socket):/; } } }
            """)
        reservation.release()
        let proxy = try Child([nginx, "-p", folder.path, "-c", folder.path + "/nginx.conf"], discardingStandardError: true)
        let address = SocketAddress(ip: .loopbackIPv4, port: reservation.port)
        #expect(waitUntil(timeout: 20) { (try? httpGet(address)) == "gunicorn\n" }, "nginx answers through the socket")

        let outcome = up.reloadUnderLoad(address, times: 10, clients: 8)
        print("measured: gunicorn on unix:, behind nginx, under up: \(outcome.answered) answered, \(outcome.failures.count) failed over \(outcome.reloads) reloads")
        #expect(outcome.reloads == 10, "\(up.logText)")
        #expect(outcome.failures.isEmpty, "\(outcome.failures.prefix(3))\n\(up.logText)")
        withExtendedLifetime(proxy) {}
        #expect(up.stop() == 0, "\(up.logText)")
        #expect(mode(socket) == nil, "up removed its socket file")
    }

    @Test("a file left by an up that was killed is stale: the next up replaces it; a live one is refused with its holder, exit 3")
    func staleAndLive() throws {
        let folder = try TemporaryFolder()
        try folder.write("app.py", Self.app)
        let socket = folder.path + "/app.sock"
        try folder.write("server.py", descriptor3Server(answering: "b'HTTP/1.0 200 OK\\r\\n\\r\\nok'"))
        let first = try UpProcess(["--listen", "unix:" + socket, "--", systemPython, folder.path + "/server.py"], folder: folder)
        #expect(first.waitForStatus { !$0.serving.isEmpty } != nil, "\(first.logText)")
        let refused = try capture([portreuse, "up", "--listen", "unix:" + socket, "--", "/bin/true"], timeout: 30)
        #expect(refused.status == 3, "\(refused.stderr)")
        #expect(refused.stderr.contains("is live") && refused.stderr.contains("pid \(first.pid)"), "\(refused.stderr)")

        // Killed at once: its generation dies with it (SIGTERM on its parent's death), the file stays behind.
        let generation = try #require(first.status?.serving.first?.pid)
        first.signal(SIGKILL)
        _ = first.waitForExit()
        kill(-generation, SIGKILL)
        #expect(waitUntil(timeout: 10) { UnixSocketFile.inspect(socket).state == .stale }, "\(UnixSocketFile.inspect(socket))")

        let second = try UpProcess(["--listen", "unix:" + socket, "--", systemPython, folder.path + "/server.py"], folder: try TemporaryFolder())
        #expect(second.waitForStatus { !$0.serving.isEmpty } != nil, "the stale file is replaced\n\(second.logText)")
        #expect(UnixSocketFile.inspect(socket).state == .live)
        #expect(second.stop() == 0, "\(second.logText)")
        #expect(mode(socket) == nil)
    }

    @Test("up upgrade keeps a Unix socket: the program serves on, a reload works, and the upgraded up removes the file at its stop")
    func upgradeKeepsTheSocket() throws {
        let folder = try TemporaryFolder()
        let socket = folder.path + "/app.sock"
        let server = descriptor3Server(answering: "str(os.getpid()).encode()")
        let up = try UpProcess(["--listen", "unix:" + socket, "--", systemPython, "-c", server], folder: folder)
        let first = try #require(up.waitForStatus { !$0.serving.isEmpty }?.serving.first?.pid, "\(up.logText)")
        func answer() throws -> String? { try unixAnswer(socket) }
        #expect(try answer() == "\(first)")
        let upgrade = try capture([portreuse, "up", "upgrade", "--pid-file", up.pidFile], timeout: 60)
        #expect(upgrade.status == 0, "\(upgrade.stderr)\n\(up.logText)")
        #expect(up.waitForStatus { $0.upgrades == 1 && $0.sockets.first?.transport == "unix" } != nil, "\(up.logText)")
        #expect(try answer() == "\(first)", "the program serves on across the upgrade")
        let reload = try capture([portreuse, "up", "reload", "--pid-file", up.pidFile], timeout: 60)
        #expect(reload.status == 0, "\(reload.stderr)")
        let second = try #require(up.waitForStatus { $0.generations.count == 1 && $0.serving.first?.number == 2 }?.serving.first?.pid, "\(up.logText)")
        #expect(try answer() == "\(second)", "the new generation answers on the same socket")
        #expect(up.stop() == 0, "\(up.logText)")
        #expect(mode(socket) == nil, "the upgraded up removed the file it inherited")
    }

    @Test("a Unix socket from systemd (systemd-socket-activate -l PATH) is matched by its path, served, and left to systemd at the stop",
          .enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/systemd-socket-activate"), "systemd-socket-activate is not installed"))
    func socketFromSystemd() throws {
        let folder = try TemporaryFolder()
        let socket = folder.path + "/app.sock"
        let up = try UpProcess(["--listen", "unix:" + socket, "--", systemPython, "-c", descriptor3Server(answering: "b'systemd'")], folder: folder,
                               launcher: ["/usr/bin/systemd-socket-activate", "-l", socket])
        #expect(waitUntil(timeout: 10) { mode(socket) != nil }, "systemd-socket-activate made the socket")
        // systemd-socket-activate starts up on the first connection.
        #expect(try unixAnswer(socket) == "systemd", "\(up.logText)")
        #expect(up.waitForStatus { !$0.serving.isEmpty && $0.sockets.first?.address == socket } != nil, "\(up.logText)")
        #expect(up.stop() == 0, "\(up.logText)")
        #expect(mode(socket) != nil, "systemd's file stays systemd's")
    }

    @Test("an abstract name (unix:@NAME): held and handed over as a file would be, nothing to remove")
    func abstractName() throws {
        let name = "@portreuse-up-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let folder = try TemporaryFolder()
        let up = try UpProcess(["--listen", "unix:" + name, "--", systemPython, "-c", descriptor3Server(answering: "b'abstract'")], folder: folder)
        #expect(up.waitForStatus { !$0.serving.isEmpty } != nil, "\(up.logText)")
        #expect(UnixSocketFile.inspect(name).state == .live)
        #expect(try unixAnswer(name) == "abstract")
        #expect(up.stop() == 0, "\(up.logText)")
        #expect(UnixSocketFile.inspect(name).state == .free, "gone with its last socket")
    }

    @Test("bad unix: input is refused, naming it", arguments: [
        (["--listen", "unix:"], "a Unix socket's path is 1 to 90 bytes"),
        (["--listen", "unix:/tmp/x.sock", "--unix-group", "no-such-group-here"], "--unix-group no-such-group-here: no such group"),
        (["--listen", "127.0.0.1:0", "--unix-mode", "660"], "there is none"),
        (["--listen", "unix:/tmp/x.sock", "--unix-mode", "999"], "--unix-mode 999: give octal permissions"),
        (["--listen", "unix:/tmp/x.sock", "--reuseport"], "does not go with --reuseport"),
    ])
    func badInput(_ case_: ([String], String)) throws {
        let run = try capture([portreuse, "up"] + case_.0 + ["--", "/bin/true"])
        #expect(run.status == 64, "\(run.stderr)")
        #expect(run.stderr.contains(case_.1), "\(run.stderr)")
    }
}
