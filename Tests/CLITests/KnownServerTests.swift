import Foundation
import Glibc
import PortReuse
import PortReuseSystem
import PortReuseTools
import TestSupport
import Testing

/// The servers `up` knows (``KnownServer``): the table as data, and every row against the real program.
@Suite("up: the servers it knows")
struct KnownServerTests {
    @Test("a command matches its row by the executable's name, a version suffix, env in front, and an interpreter's arguments")
    func matching() {
        #expect(KnownServer.matching(["/usr/sbin/haproxy", "-db", "-f", "h.cfg"])?.name == "haproxy")
        #expect(KnownServer.matching(["/usr/bin/env", "LANG=C", "-i", "nginx", "-c", "n.conf"])?.name == "nginx")
        #expect(KnownServer.matching(["php8.2", "-S", "127.0.0.1:8080"])?.name == "php -S")
        #expect(KnownServer.matching(["/usr/bin/python3.11", "-u", "-m", "http.server", "8000"])?.name == "python3 -m http.server")
        #expect(KnownServer.matching(["unicorn_rails", "-l", "8080"])?.name == "unicorn")
        #expect(KnownServer.matching(["php", "app.php"]) == nil, "php without -S is a script, not the server")
        #expect(KnownServer.matching(["python3", "-m", "http.server2"]) == nil)
        #expect(KnownServer.matching(["python3", "server.py"]) == nil)
        #expect(KnownServer.matching(["haproxy-wrapper"]) == nil)
        #expect(KnownServer.matching([]) == nil)
    }

    @Test("the flags win over the row, the row over the defaults; a row's --protocol only where it can hand the sockets over")
    func precedence() throws {
        let tcp = [try ListenSpec(parsing: "127.0.0.1:8080")]
        let nginx = UpDefaults(command: ["nginx"], stopSignal: nil, readiness: nil, dialect: nil, listen: tcp, reuseport: false)
        #expect(nginx.stopSignal == SIGQUIT && nginx.readiness == .probe && nginx.dialect.name == "nginx")
        #expect(nginx.note == "known server nginx: stop signal SIGQUIT, --ready probe, --protocol nginx")
        let mine = UpDefaults(command: ["nginx"], stopSignal: SIGTERM, readiness: .notify, dialect: .systemd, listen: tcp, reuseport: false)
        #expect(mine.stopSignal == SIGTERM && mine.readiness == .notify && mine.dialect.name == "systemd")
        #expect(mine.note == "known server nginx; yours: --stop-signal, --ready, --protocol")
        let udp = [try ListenSpec(parsing: "udp:127.0.0.1:5353")]
        let unicornUDP = UpDefaults(command: ["unicorn"], stopSignal: nil, readiness: nil, dialect: nil, listen: tcp + udp, reuseport: false)
        #expect(unicornUDP.dialect.name == "systemd" && unicornUDP.stopSignal == SIGQUIT, "UNICORN_FD cannot name a UDP socket")
        #expect(UpDefaults(command: ["nginx"], stopSignal: nil, readiness: nil, dialect: nil, listen: tcp, reuseport: true).dialect.name == "systemd")
        // --workers N of a server that forks its own workers runs N of it: up says so for these.
        #expect(UpDefaults(command: ["gunicorn", "app:app"], stopSignal: nil, readiness: nil, dialect: nil, listen: tcp, reuseport: false).forksWorkers == "gunicorn")
        #expect(UpDefaults(command: ["python3", "-m", "http.server"], stopSignal: nil, readiness: nil, dialect: nil, listen: tcp, reuseport: false).forksWorkers == nil)
        let haproxy = UpDefaults(command: ["haproxy"], stopSignal: nil, readiness: nil, dialect: nil, listen: tcp, reuseport: false)
        #expect(haproxy.stopSignal == SIGUSR1 && haproxy.note == "known server haproxy: stop signal SIGUSR1, --ready probe")
        let einhorn = UpDefaults(command: ["./server"], stopSignal: nil, readiness: nil, dialect: Dialect.named("einhorn"), listen: tcp, reuseport: false)
        #expect(einhorn.stopSignal == SIGUSR2 && einhorn.readiness == .auto && einhorn.note == nil, "no row: the dialect's signal")
    }

    @Test("docs/up.md and the README show the table as KnownServer.all says it")
    func documented() throws {
        let table = KnownServer.markdownTable
        #expect(try String(contentsOfFile: packageRoot + "/docs/up.md", encoding: .utf8).contains(table), "docs/up.md:\n\(table)")
        #expect(try String(contentsOfFile: packageRoot + "/README.md", encoding: .utf8).contains(table), "README.md:\n\(table)")
    }

    /// How a row's server runs alone on `port`, with the files it needs in `folder`.
    struct Recipe: CustomStringConvertible, Sendable {
        var server: String
        var executable: String
        var command: @Sendable (_ executable: String, _ port: UInt16, _ folder: String) -> [String]
        var files: @Sendable (_ port: UInt16, _ folder: String) -> [String: String] = { _, _ in [:] }
        var description: String { server }
    }

    static let recipes: [Recipe] = [
        Recipe(server: "haproxy", executable: "haproxy", command: { haproxy, _, folder in [haproxy, "-db", "-f", folder + "/haproxy.cfg"] }, files: { port, _ in
            ["haproxy.cfg": """
                defaults
                    mode http
                    timeout client 30s
                    timeout connect 5s
                    timeout server 30s
                frontend web
                    bind 127.0.0.1:\(port)
                    http-request return status 200 content-type text/plain string "haproxy\\n"

                """]  // haproxy refuses a last line without its newline
        }),
        Recipe(server: "nginx", executable: "nginx", command: { nginx, _, folder in [nginx, "-p", folder, "-c", folder + "/nginx.conf"] }, files: { port, folder in
            ["nginx.conf": """
                pid \(folder)/nginx.pid; error_log stderr; daemon off; master_process on; worker_processes 1;
                events {}
                http { access_log off; server { listen 127.0.0.1:\(port); location / { return 200 "nginx\\n"; } } }
                """]
        }),
        Recipe(server: "unicorn", executable: "unicorn", command: { unicorn, port, folder in [unicorn, "-l", "127.0.0.1:\(port)", folder + "/config.ru"] }, files: { _, _ in
            ["config.ru": "run lambda { |env| [200, {'content-type' => 'text/plain'}, [\"unicorn\\n\"]] }\n"]
        }),
        Recipe(server: "lighttpd", executable: "lighttpd", command: { lighttpd, _, folder in [lighttpd, "-D", "-f", folder + "/lighttpd.conf"] }, files: { port, folder in
            ["lighttpd.conf": """
                server.document-root = "\(folder)"
                server.bind = "127.0.0.1"
                server.port = \(port)
                index-file.names = ("index.html")
                """, "index.html": "lighttpd\n"]
        }),
        Recipe(server: "gunicorn", executable: "gunicorn", command: { gunicorn, port, folder in [gunicorn, "-b", "127.0.0.1:\(port)", "--chdir", folder, "app:app"] }, files: { _, _ in
            ["app.py": "def app(environ, start_response):\n    start_response(\"200 OK\", [(\"Content-Type\", \"text/plain\")])\n    return [b\"gunicorn\\n\"]\n"]
        }),
        Recipe(server: "php -S", executable: "php", command: { php, port, folder in [php, "-S", "127.0.0.1:\(port)", "-t", folder] }, files: { _, _ in
            ["index.php": "<?php echo \"php\\n\";"]
        }),
        Recipe(server: "python3 -m http.server", executable: "/usr/bin/python3", command: { python, port, folder in
            [python, "-m", "http.server", "--bind", "127.0.0.1", "--directory", folder, "\(port)"]
        }),
    ]

    @Test("every row has its recipe, and the recipe's command matches the row")
    func everyRowTested() {
        #expect(Set(Self.recipes.map(\.server)) == Set(KnownServer.all.map(\.name)))
        for recipe in Self.recipes {
            #expect(KnownServer.matching(recipe.command(recipe.executable, 8080, "/tmp"))?.name == recipe.server, "\(recipe.server)")
        }
    }

    /// The listening socket on `port`, if any.
    static func listener(_ port: UInt16) -> PortHolder? {
        PortHolder.find(port: port, transport: .tcp, processes: false, options: false).first { $0.state == .listen }
    }

    static func listens(_ port: UInt16) -> Bool { listener(port) != nil }

    /// The real server alone: a request whose headers are still coming when the row's stop signal arrives is
    /// answered (the stop is graceful), or, for a row that says the server stops at once whatever the signal, is not.
    @Test("the row's stop signal, sent to the real server with a request in flight: answered where the row says graceful", arguments: recipes)
    func stopSignal(_ recipe: Recipe) throws {
        let row = try #require(KnownServer.all.first { $0.name == recipe.server })
        guard let executable = UpRealServerTests.installed(recipe.executable) else { return }
        let folder = try TemporaryFolder()
        let reservation = try PortReservation()
        let port = reservation.port
        for (name, text) in recipe.files(port, folder.path) { try folder.write(name, text) }
        reservation.release()
        let server = try Child(recipe.command(executable, port, folder.path), discardingStandardError: true)
        try #require(waitUntil(timeout: 30) { Self.listens(port) || !server.isRunning } && server.isRunning, "\(recipe.server) did not listen on \(port)")

        // A request under way: its first line and one header, not yet the blank line that ends it, accepted.
        let client = try Connection.dial(to: SocketAddress(ip: IPAddress(ipv4: 127, 0, 0, 1), port: port), timeout: .seconds(10))
        try client.send(Array("GET / HTTP/1.1\r\nHost: localhost\r\n".utf8))
        #expect(waitUntil(timeout: 10) { Self.listener(port)?.receiveQueue == 0 }, "the server never accepted the connection")

        server.signal(row.stopSignal)
        // The signal has acted once the server no longer listens (unicorn's master listens until its worker is
        // done: at most 3 s, which only makes the check below stricter).
        _ = waitUntil(timeout: 3) { !Self.listens(port) }
        try? client.send(Array("\r\n".utf8))
        var answer: [UInt8] = []
        while answer.count < 12, let bytes = try? client.receive(maxLength: 4096, timeout: .seconds(10)), !bytes.isEmpty { answer += bytes }
        let text = String(decoding: answer, as: UTF8.self)
        if !row.stopsAtOnce {
            #expect(text.hasPrefix("HTTP/1.1 200") || text.hasPrefix("HTTP/1.0 200"), "\(recipe.server) after \(SignalName(row.stopSignal)): \(text.debugDescription)")
        } else {
            #expect(!text.contains(" 200 "), "\(recipe.server) answered after \(SignalName(row.stopSignal)); the row says it stops at once: \(text.debugDescription)")
        }
        server.signal(SIGKILL)
        server.waitForExit(timeout: 10)
    }

    /// The rows UpRealServerTests does not already reload with no flag (php -S, http.server, unicorn).
    static let underUp = recipes.filter { ["haproxy", "nginx", "lighttpd", "gunicorn"].contains($0.server) }

    @Test("under up with no flag (the row decides): 10 reloads under 8 clients, 0 failed", .serialized, arguments: underUp)
    func reloads(_ recipe: Recipe) throws {
        guard let executable = UpRealServerTests.installed(recipe.executable) else { return }
        let folder = try TemporaryFolder()
        let reservation = try PortReservation()
        for (name, text) in recipe.files(reservation.port, folder.path) { try folder.write(name, text) }
        let command = recipe.command(executable, reservation.port, folder.path)
        try UpRealServerTests.reloadsLoseNothing(
            "\(recipe.server), no flag", ["--listen", "127.0.0.1:\(reservation.port)", "--"] + command, reservation: reservation, folder: folder,
            known: recipe.server)
    }
}
