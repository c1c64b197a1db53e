import Foundation
import Glibc
import PortReuse
import PortReuseTools
import TestSupport
import Testing
import PortReuseSystem

/// `portreuse up --protocol`: each dialect of `Dialect.all` with the real program where one installs here (nginx,
/// Starlet for Server::Starter, gunicorn), else with a program that reads the variables exactly as that supervisor's
/// client library does; each reloaded 10 times under load.
@Suite("portreuse up --protocol")
struct UpDialectTests {
    /// The first program of `names` on PATH (or in /usr/sbin, where Debian puts nginx).
    static func program(_ name: String) -> String? {
        let folders = (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":").map(String.init) + ["/usr/sbin", "/usr/bin"]
        return folders.map { "\($0)/\(name)" }.first { FileManager.default.isExecutableFile(atPath: $0) }
    }

    static let nginx = program("nginx")
    static let plackup = program("plackup")
    static let starlet = FileManager.default.fileExists(atPath: "/usr/share/perl5/Plack/Handler/Starlet.pm")

    /// Reloads `up` 10 times under 4 clients of `address`, prints the figures, and expects every reload and every
    /// request to succeed (`context`: what to show when not).
    static func expectTenReloads(_ up: UpProcess, _ address: SocketAddress, _ label: String, context: () -> String) {
        let outcome = up.reloadUnderLoad(address, times: 10)
        print("measured: --protocol \(label): \(outcome.answered) answered, \(outcome.failures.count) failed over \(outcome.reloads) reloads")
        #expect(outcome.reloads == 10, "\(context())")
        #expect(outcome.failures.isEmpty, "\(outcome.failures.count) failed of \(outcome.answered + outcome.failures.count): \(outcome.failures.prefix(3))\n\(context())")
    }

    /// Reads its sockets as the client library of `argv[1]` does, serves HTTP/1.0 on them (one request per
    /// connection, "DIALECT PID fds [...]"), and stops gracefully on the signal named `argv[2]` only (any other
    /// keeps its default action), saying so on stderr. puma's takes the `--bind` URLs it looks up as `argv[3…]`.
    static let dialectClient = """
        import os, re, selectors, signal, socket, sys
        dialect, graceful = sys.argv[1], sys.argv[2]
        env = os.environ
        if dialect == "einhorn":
            # einhorn's Go client (CountListeners, GetListener) and Ruby's Einhorn::Worker.ensure_worker!
            if int(env["EINHORN_MASTER_PID"]) != os.getppid():
                sys.exit(f"EINHORN_MASTER_PID {env['EINHORN_MASTER_PID']} is not my parent {os.getppid()}")
            fds = [int(env[f"EINHORN_FD_{i}"]) for i in range(int(env["EINHORN_FD_COUNT"]))]
            if [int(fd) for fd in env["EINHORN_FDS"].split(" ")] != fds:
                sys.exit("EINHORN_FDS disagrees with EINHORN_FD_0...")
        elif dialect == "unicorn":
            # Unicorn::HttpServer#start: ENV['UNICORN_FD'].to_s.split(/,/).map { |fd| Socket.for_fd(fd.to_i) }
            fds = [int(fd) for fd in env.get("UNICORN_FD", "").split(",") if fd]
        elif dialect == "puma":
            # Puma::Binder#create_inherited_fds: v.split(":", 2) -> @inherited_fds[url] = fd; a --bind URL finds its fd
            inherited = {}
            for key, value in env.items():
                if re.search(r"PUMA_INHERIT_\\d+", key):
                    fd, url = value.split(":", 1)
                    inherited[url] = int(fd)
            fds = [inherited[url] for url in sys.argv[3:]]
        elif dialect == "catflap":
            fds = [int(env["LISTEN_FD"])]
        else:
            sys.exit(f"no client for {dialect}")
        if not fds:
            sys.exit("no sockets handed over")
        listeners = [socket.socket(fileno=fd) for fd in fds]
        selector = selectors.DefaultSelector()
        for listener in listeners:
            listener.setblocking(False)
            selector.register(listener, selectors.EVENT_READ)
        stopping = []
        signal.signal(getattr(signal, "SIG" + graceful), lambda *_: stopping.append(1))
        signal.alarm(300)
        body = f"{dialect} {os.getpid()} fds {fds}\\n".encode()
        while not stopping:
            for key, _ in selector.select(0.05):
                try:
                    connection, _ = key.fileobj.accept()
                except BlockingIOError:
                    continue  # another generation took it
                connection.setblocking(True)
                connection.settimeout(5)
                request = b""
                while b"\\r\\n\\r\\n" not in request:
                    chunk = connection.recv(4096)
                    if not chunk:
                        break
                    request += chunk
                connection.sendall(b"HTTP/1.0 200 OK\\r\\nContent-Length: %d\\r\\n\\r\\n" % len(body) + body)
                connection.close()
        print(f"{dialect} {os.getpid()} stopped gracefully by SIG{graceful}", file=sys.stderr, flush=True)
        """

    @Test("einhorn, unicorn, puma and catflap: a program reading the variables as their client libraries do serves across 10 reloads under load, stopped by the dialect's signal",
          arguments: ["einhorn", "unicorn", "puma", "catflap"])
    func clientLibraries(name: String) throws {
        let dialect = try #require(Dialect.named(name))
        let reservation = try PortReservation()
        let url = "tcp://127.0.0.1:\(reservation.port)"
        let graceful = String(SignalName(dialect.stopSignal).description.dropFirst(3))
        let up = try UpProcess(["--protocol", name, "--listen", "127.0.0.1:\(reservation.port)", "--", systemPython, "-c", Self.dialectClient, name, graceful, url])
        let address = try up.servingAddress()
        reservation.release()
        #expect(try httpGet(address).hasPrefix("\(name) "), "\(up.logText)")
        #expect(try httpGet(address).hasSuffix(" fds [3]\n"))
        Self.expectTenReloads(up, address, "\(name) (test client)", context: { up.logText })
        #expect(up.stop() == 0, "\(up.logText)")
        #expect(up.logText.components(separatedBy: "stopped gracefully by SIG\(graceful)").count - 1 == 11, "every generation got \(graceful):\n\(up.logText)")
    }

    @Test("nginx takes its socket from NGINX=\"3;\" and serves across 10 reloads under load (QUIT)",
          .enabled(if: nginx != nil, "nginx is not installed (.ci/run installs nginx-light)"))
    func nginxReloads() throws {
        let folder = try TemporaryFolder()
        let reservation = try PortReservation()
        try folder.write("nginx.conf", """
            \(getuid() == 0 ? "user root;" : "")
            worker_processes 2;
            pid \(folder.path)/nginx.pid;
            error_log \(folder.path)/error.log notice;
            events { worker_connections 256; }
            http {
                access_log off;
                client_body_temp_path \(folder.path)/body;
                proxy_temp_path \(folder.path)/proxy;
                fastcgi_temp_path \(folder.path)/fastcgi;
                uwsgi_temp_path \(folder.path)/uwsgi;
                scgi_temp_path \(folder.path)/scgi;
                server {
                    listen 127.0.0.1:\(reservation.port);
                    location / { return 200 "nginx $pid\\n"; }
                }
            }
            """)
        let up = try UpProcess(
            ["--protocol", "nginx", "--listen", "127.0.0.1:\(reservation.port)", "--grace", "10", "--",
             Self.nginx!, "-p", folder.path, "-e", folder.path + "/error.log", "-c", folder.path + "/nginx.conf", "-g", "daemon off; master_process on;"],
            folder: folder)
        let address = try up.servingAddress(timeout: 60)
        reservation.release()
        #expect(try httpGet(address).hasPrefix("nginx "), "\(up.logText)")
        let errors = { (try? String(contentsOfFile: folder.path + "/error.log", encoding: .utf8)) ?? "" }
        #expect(errors().contains("using inherited sockets from \"3;\""), "nginx took up's socket rather than binding its own:\n\(errors())")
        // nginx never makes an inherited socket non-blocking: on a blocking one a worker blocks in accept() and
        // leaves the connection it accepted unserved (1 in about 5 loaded runs), so up hands it non-blocking.
        let master = try #require(up.status?.serving.first?.pid)
        let flags = (try? String(contentsOfFile: "/proc/\(master)/fdinfo/3", encoding: .utf8))?.split(separator: "\n")
            .first { $0.hasPrefix("flags:") }.flatMap { Int($0.dropFirst(6).trimmingCharacters(in: .whitespaces), radix: 8) }
        #expect(flags.map { $0 & Int(O_NONBLOCK) != 0 } == true, "nginx's descriptor 3 is blocking: flags \(String(describing: flags))")
        Self.expectTenReloads(up, address, "nginx (nginx)", context: { up.logText + "\n" + errors() })
        #expect(up.waitForStatus { !$0.generations.contains(where: \.signalWaits) } != nil, "every old generation got its stop signal: \(up.logText)")
        #expect(up.waitForLog("sent SIGQUIT", timeout: 10), "QUIT is nginx's graceful stop: \(up.logText)")
        #expect(up.stop() == 0, "\(up.logText)\n\(errors())")
        #expect(errors().components(separatedBy: "gracefully shutting down").count > 10, "every generation stopped gracefully:\n\(errors())")
    }

    @Test("Starlet (Server::Starter's SERVER_STARTER_PORT) serves across 10 reloads under load; without the bind filter, so only the variable can give it the socket",
          .enabled(if: plackup != nil && starlet, "plackup or Starlet is not installed (.ci/run installs libserver-starter-perl and starlet)"))
    func starletReloads() throws {
        let folder = try TemporaryFolder()
        try folder.write("app.psgi", """
            my $app = sub { return [200, ['Content-Type' => 'text/plain'], ["starlet $$ generation $ENV{SERVER_STARTER_GENERATION}\\n"]]; };
            """)
        let up = try UpProcess(
            // Starlet sets TCP_DEFER_ACCEPT on its listener (the shared socket): the probe's connection, which sends
            // nothing, is never accepted, so readiness is a delay.
            ["--protocol", "server-starter", "--no-intercept", "--ready", "delay:1", "--listen", "127.0.0.1:0", "--",
             Self.plackup!, "-s", "Starlet", "-E", "deployment", "--max-workers", "2", folder.path + "/app.psgi"],
            folder: folder)
        let address = try up.servingAddress(timeout: 60)
        #expect(try httpGet(address).hasSuffix(" generation 1\n"), "\(up.logText)")
        Self.expectTenReloads(up, address, "server-starter (Starlet)", context: { up.logText })
        #expect(try httpGet(address).hasSuffix(" generation 11\n"), "SERVER_STARTER_GENERATION is the generation's number")
        #expect(up.stop() == 0, "\(up.logText)")
    }

    @Test("gunicorn through GUNICORN_FD (and GUNICORN_PID) serves across 10 reloads under load; without the bind filter, so only the variable can give it the socket",
          .enabled(if: UpTests.gunicorn != nil, "gunicorn is not installed (.ci/run installs it with pip)"))
    func gunicornReloads() throws {
        let folder = try TemporaryFolder()
        try folder.write("app.py", """
            import os
            def app(environ, start_response):
                body = f"gunicorn {os.getpid()} {os.environ.get('GUNICORN_FD')} {'LISTEN_FDS' in os.environ}\\n".encode()
                start_response("200 OK", [("Content-Length", str(len(body)))])
                return [body]
            """)
        let up = try UpProcess(
            ["--protocol", "gunicorn", "--no-intercept", "--listen", "127.0.0.1:0", "--",
             UpTests.gunicorn!, "--chdir", folder.path, "--workers", "2", "--control-socket", folder.path + "/ctl", "app:app"],
            folder: folder)
        let address = try up.servingAddress(timeout: 60)
        // gunicorn pops GUNICORN_FD once read: its workers see none, and no LISTEN_FDS either.
        #expect(try httpGet(address).hasSuffix(" None False\n"), "\(up.logText)")
        Self.expectTenReloads(up, address, "gunicorn (gunicorn)", context: { up.logText })
        // Its own re-exec cannot take the program out from under up: gunicorn ignores USR2 while its "parent" (up) exists.
        let serving = try #require(up.status?.serving.first?.pid)
        kill(serving, SIGUSR2)
        #expect(up.waitForLog("USR2 signal ignored. Parent exists"), "\(up.logText)")
        #expect(up.stop() == 0, "\(up.logText)")
    }

    static let environmentReport = """
        import json, os, signal, socket, sys
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        own = "none"
        try:
            own = str(os.fstat(os.pidfd_open(os.getpid())).st_ino)
        except OSError:
            pass
        names = [name for name in os.environ if name.split("_")[0] in ("LISTEN", "NGINX", "SERVER", "EINHORN", "GUNICORN", "UNICORN", "PUMA")]
        report = {name: os.environ[name] for name in names}
        report["own pidfd inode"] = own
        report["pid"] = str(os.getpid())
        with open(sys.argv[1], "w") as out:
            json.dump(report, out)
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b"READY=1", os.environ["NOTIFY_SOCKET"])
        signal.pause()
        """

    /// The variables of every dialect a generation of `arguments` sees, when `up` inherited a stray one of each.
    func reportedEnvironment(_ arguments: [String]) throws -> [String: String] {
        let folder = try TemporaryFolder()
        let report = folder.path + "/report.json"
        var environment = ProcessInfo.processInfo.environment
        // Not LISTEN_FDS: up would take that for sockets systemd handed it (tested elsewhere); LISTEN_PID alone it ignores.
        let strays = ["LISTEN_PIDFDID": "1", "LISTEN_PID": "1", "NGINX": "7;", "SERVER_STARTER_PORT": "80=7",
                      "EINHORN_FD_COUNT": "1", "EINHORN_FD_0": "7", "GUNICORN_FD": "7", "UNICORN_FD": "7", "PUMA_INHERIT_0": "7:tcp://0.0.0.0:80", "LISTEN_FD": "7"]
        environment.merge(strays) { _, stray in stray }
        let up = try UpProcess(arguments + ["--listen", "127.0.0.1:0", "--", systemPython, "-c", Self.environmentReport, report], environment: environment, folder: folder)
        _ = try up.servingAddress()
        let data = try #require(waitFor { FileManager.default.contents(atPath: report) })
        let object = try #require(try JSONSerialization.jsonObject(with: data) as? [String: String])
        #expect(up.stop() == 0)
        return object
    }

    @Test("a stray LISTEN_PIDFDID (or any dialect's variable) up inherited never reaches a generation: systemd's gets its own pidfd's inode, or none")
    func strayVariables() throws {
        for arguments in [[], ["--no-intercept"]] {
            let seen = try reportedEnvironment(arguments)
            let own = try #require(seen["own pidfd inode"])
            #expect(own != "1")
            #expect(seen["LISTEN_PIDFDID"] == (own == "none" ? nil : own), "\(arguments): \(seen)")
            #expect(seen["LISTEN_PID"] == seen["pid"])
            let expected = Set(["LISTEN_FDS", "LISTEN_FDNAMES", "LISTEN_PID", "own pidfd inode", "pid"] + (own == "none" ? [] : ["LISTEN_PIDFDID"]))
            #expect(Set(seen.keys) == expected, "\(arguments): only systemd's own variables: \(seen)")
        }
        let nginx = try reportedEnvironment(["--protocol", "nginx"])
        #expect(Set(nginx.keys) == ["NGINX", "own pidfd inode", "pid"], "\(nginx)")
        #expect(nginx["NGINX"] == "3;")
    }

    @Test("bad --protocol input: an unknown name lists the names, a dialect that cannot express the sockets says what to do; exit 64")
    func badInput() throws {
        let unknown = try capture([portreuse, "up", "--protocol", "apache", "--listen", "127.0.0.1:0", "--", hello])
        #expect(unknown.status == 64)
        #expect(unknown.stderr.contains("--protocol apache: not a protocol up speaks; use one of " + Dialect.all.map(\.name).joined(separator: ", ")), "\(unknown.stderr)")
        let two = try capture([portreuse, "up", "--protocol", "catflap", "--listen", "127.0.0.1:0", "--listen", "127.0.0.2:0", "--", hello])
        #expect(two.status == 64)
        #expect(two.stderr.contains("--protocol catflap hands over 1 socket only, and up holds 2: give one --listen, or use --protocol systemd"), "\(two.stderr)")
        let udp = try capture([portreuse, "up", "--protocol", "puma", "--listen", "udp:127.0.0.1:0", "--", hello])
        #expect(udp.status == 64)
        #expect(udp.stderr.contains("--protocol puma cannot name a UDP socket"), "\(udp.stderr)")
        let reuse = try capture([portreuse, "up", "--protocol", "nginx", "--reuseport", "--listen", "127.0.0.1:8080", "--", hello])
        #expect(reuse.status == 64)
        #expect(reuse.stderr.contains("--reuseport holds none"), "\(reuse.stderr)")
    }

    @Test("an in-place upgrade keeps the dialect: the generation started after it gets the same variables")
    func upgradeKeepsDialect() throws {
        let up = try UpProcess(["--protocol", "unicorn", "--listen", "127.0.0.1:0", "--", systemPython, "-c", Self.dialectClient, "unicorn", "QUIT"])
        let address = try up.servingAddress()
        let upgrade = try capture([portreuse, "up", "upgrade", "--pid-file", up.pidFile], timeout: 60)
        #expect(upgrade.status == 0, "\(upgrade.stderr)")
        #expect(up.waitForStatus { $0.upgrades == 1 } != nil, "\(up.logText)")
        let reload = try capture([portreuse, "up", "reload", "--pid-file", up.pidFile], timeout: 60)
        #expect(reload.status == 0, "\(reload.stderr)\n\(up.logText)")
        let two = try #require(up.waitForStatus { $0.serving.map(\.number) == [2] && $0.generations.count == 1 }?.serving.first?.pid, "generation 1 gone, so 2 answers")
        #expect(try httpGet(address) == "unicorn \(two) fds [3]\n", "\(up.logText)")
        #expect(up.stop() == 0)
        #expect(up.waitForLog("unicorn \(two) stopped gracefully by SIGQUIT", timeout: 10), "the new up still stops with the dialect's signal:\n\(up.logText)")
    }

    @Test("a SIGHUP before the first READY=1 (as systemd 257 may send a notify-reload service) is a reload after it, not up's death")
    func hangUpBeforeReady() throws {
        let folder = try TemporaryFolder()
        let receiver = try UnixDatagramReceiver(path: folder.path + "/notify.sock")
        var environment = ProcessInfo.processInfo.environment
        environment["NOTIFY_SOCKET"] = folder.path + "/notify.sock"
        let up = try UpProcess(["--listen", "127.0.0.1:0", "--ready", "delay:1", "--", hello], environment: environment, folder: folder)
        #expect(up.waitForStatus { $0.generations.contains { $0.number == 1 } } != nil, "\(up.logText)")
        up.signal(SIGHUP)
        #expect(up.waitForStatus { $0.reloadPending || $0.nextGeneration > 2 } != nil, "the SIGHUP is a reload: \(up.logText)")
        #expect(up.waitForLog("reload requested while generation 1"), "\(up.logText)")
        #expect(receiver.next()?.hasPrefix("READY=1\nSTATUS=serving: generation 1 ") == true)
        #expect(receiver.next()?.hasPrefix("RELOADING=1\n") == true)
        #expect(up.waitForStatus { $0.serving.map(\.number) == [2] } != nil, "\(up.logText)")
        #expect(up.stop() == 0, "\(up.logText)")
    }
}

@Suite("docs/up.md: dialects and systemd units")
struct UpDialectDocumentationTests {
    let readme = (try? String(contentsOfFile: packageRoot + "/docs/up.md", encoding: .utf8)) ?? ""

    @Test("docs/up.md's table of --protocol dialects is the table up uses")
    func dialectTable() {
        #expect(readme.contains(Dialect.markdownTable + "\n"), "docs/up.md must contain, exactly:\n\(Dialect.markdownTable)")
    }

    /// The ```ini block after the line `# /etc/systemd/system/NAME` in docs/up.md.
    func unit(_ heading: String) throws -> String {
        let after = try #require(readme.components(separatedBy: "```ini\n# /etc/systemd/system/" + heading + "\n").dropFirst().first, "no unit \(heading) in docs/up.md")
        return try #require(after.components(separatedBy: "```").first)
    }

    @Test("docs/up.md's units pass systemd-analyze verify: Type=notify with ExecReload everywhere, Type=notify-reload on systemd 253+",
          .enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/systemd-analyze"), "systemd-analyze is not installed (.ci/run installs systemd)"))
    func unitsVerify() throws {
        let version = try capture(["/usr/bin/systemd-analyze", "--version"]).output
        let major = Int(version.split(separator: " ").dropFirst().first ?? "") ?? 0
        for (service, needs) in [("app.service (systemd 252, Debian 12)", 0), ("app.service (systemd 253+)", 253)] {
            let folder = try TemporaryFolder()
            let local = { (text: String) in
                text.replacingOccurrences(of: "/usr/local/bin/portreuse", with: portreuse).replacingOccurrences(of: "/usr/local/bin/app", with: hello)
            }
            try folder.write("app.socket", local(try unit("app.socket")))
            try folder.write("app.service", local(try unit(service)))
            let verified = try capture(["/usr/bin/systemd-analyze", "verify", "--man=no", folder.path + "/app.socket", folder.path + "/app.service"])
            // Only what concerns our two units: systemd-analyze also loads the machine's units (Debian's unicorn
            // package installs one it warns about), and those are not ours to judge.
            let ours = (verified.stderr + verified.output).split(separator: "\n").filter { $0.contains(folder.path) || $0.contains("app.s") }
            if major >= needs {
                #expect(verified.status == 0 && ours.isEmpty, "\(service) on systemd \(major): \(verified.stderr)\(verified.output)")
            } else {
                #expect(verified.stderr.contains("Failed to parse service type, ignoring: notify-reload"), "systemd \(major) does not know notify-reload: \(verified.stderr)")
            }
        }
    }
}
