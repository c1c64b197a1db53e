import Foundation
import Glibc
import PortReuse
import TestSupport
import Testing
import PortReuseSystem

/// What a generation can do to the sockets it shares with the generations after it, and the limits `up`
/// itself runs under.
@Suite("up: resilience of the held sockets")
struct UpResilienceTests {
    /// A server on fd 3 whose first generation (no marker file yet) does `mode` to the shared socket: `backlog`
    /// calls listen(3, 1), `shutdown` calls shutdown(SHUT_RD). Every generation says READY=1 and answers
    /// "gen PID" until SIGTERM; it ends by itself after 60 s.
    static let server = """
        import os, signal, socket, sys, time
        mode, marker = sys.argv[1], sys.argv[2]
        first = not os.path.exists(marker)
        open(marker, "a").close()
        s = socket.socket(fileno=3)
        if first and mode == "backlog": s.listen(1)
        if first and mode == "shutdown": s.shutdown(socket.SHUT_RD)
        signal.signal(signal.SIGTERM, lambda *a: os._exit(0))
        n = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); n.sendto(b"READY=1", os.environ["NOTIFY_SOCKET"])
        s.settimeout(0.2)
        end = time.time() + 60
        while time.time() < end:
            try: c, _ = s.accept()
            except OSError: continue
            c.settimeout(5); c.recv(4096); c.sendall(b"HTTP/1.0 200 OK\\r\\n\\r\\ngen %d\\n" % os.getpid()); c.close()
        """

    static func up(_ mode: String, extra: [String] = [], launcher: [String] = []) throws -> (UpProcess, TemporaryFolder) {
        let folder = try TemporaryFolder()
        let script = try folder.write("server.py", server)
        let up = try UpProcess(
            ["--listen", "127.0.0.1:0", "--ready", "notify"] + extra + ["--", systemPython, script, mode, folder.path + "/marker"],
            folder: folder, launcher: launcher)
        return (up, folder)
    }

    /// The accept queue length of the listener on `port`, as `ss` shows it (Send-Q of a LISTEN row).
    static func backlog(port: UInt16) throws -> Int? {
        let shown = try capture(["/usr/bin/ss", "-Hltn", "sport = :\(port)"])
        return shown.output.split(separator: "\n").first.flatMap { line in Int(line.split(separator: " ", omittingEmptySubsequences: true)[2]) }
    }

    @Test("a generation's listen(3, 1) does not stay: up restores its accept queue length before the next one starts")
    func backlogRestored() throws {
        let (up, _) = try Self.up("backlog")
        let address = try up.servingAddress()
        #expect(waitUntil(timeout: 10) { (try? Self.backlog(port: address.port)) == 1 }, "generation 1 set backlog 1")
        up.signal(SIGHUP)
        // Once generation 1 is gone, its socket too (steered: each generation has its own), so one row is left.
        #expect(up.waitForStatus { $0.serving.map(\.number) == [2] && $0.generations.count == 1 } != nil, "\(up.logText)")
        let somaxconn = Int(String(decoding: Files.read("/proc/sys/net/core/somaxconn") ?? [], as: UTF8.self).filter(\.isNumber)) ?? 4096
        #expect(try Self.backlog(port: address.port) == min(Int(Sys.defaultBacklog), somaxconn))
        #expect(up.stop() == 0, "\(up.logText)")
    }

    @Test("--shared-socket: a generation that shuts the shared socket down: the next generation gets a listening socket again")
    func shutdownRecovered() throws {
        let (up, _) = try Self.up("shutdown", extra: ["--shared-socket"])
        let address = try up.servingAddress()
        #expect(waitUntil(timeout: 10) { (try? httpGet(address)) == nil }, "generation 1 stopped the listener")
        up.signal(SIGHUP)
        #expect(up.waitForStatus { $0.serving.map(\.number) == [2] } != nil, "\(up.logText)")
        let answer = try httpGet(address)
        #expect(answer.hasPrefix("gen "), "\(answer)")
        #expect(up.waitForLog("stopped listening (a generation shut it down): opened it again", timeout: 10), "\(up.logText)")
        #expect(up.stop() == 0, "\(up.logText)")
    }

    @Test("up under a low descriptor limit (ulimit -n 64) holds its sockets and serves; 40 sockets fit in 128")
    func lowDescriptorLimit() throws {
        let (small, _) = try Self.up("plain", launcher: ["/usr/bin/prlimit", "--nofile=64:64", "--"])
        _ = try small.servingAddress()
        #expect(small.stop() == 0, "\(small.logText)")
        let many = Array(repeating: ["--listen", "127.0.0.1:0"], count: 39).flatMap { $0 }
        let (wide, _) = try Self.up("plain", extra: many, launcher: ["/usr/bin/prlimit", "--nofile=128:128", "--"])
        let status = try #require(wide.waitForStatus { !$0.serving.isEmpty }, "\(wide.logText)")
        #expect(status.sockets.count == 40)
        #expect(wide.stop() == 0, "\(wide.logText)")
    }

    @Test("a descriptor limit too low for the sockets: exit 3, and the message says what to raise")
    func descriptorLimitTooLow() throws {
        let run = try capture(["/usr/bin/prlimit", "--nofile=16:16", "--", portreuse, "up"]
            + Array(repeating: ["--listen", "127.0.0.1:0"], count: 3).flatMap { $0 } + ["--", "/bin/sleep", "5"], timeout: 30)
        #expect(run.status == 3, "\(run.stderr)")
        #expect(run.stderr.contains("is too low to hold 3 socket(s)") && run.stderr.contains("ulimit -n"), "\(run.stderr)")
    }
}

extension UpResilienceTests {
    @Test("a stderr that nobody reads never stops up: 10 reloads go on with the log pipe full, and the drop is said")
    func fullStderr() throws {
        let folder = try TemporaryFolder()
        let script = try folder.write("server.py", Self.server)
        let log = try Files.pipe()
        defer { Files.close(log.read) }
        _ = fcntl(log.write.rawValue, 1031 /* F_SETPIPE_SZ */, 4096)
        let pidFile = folder.path + "/up.pid"
        var spawn = ProcessSpawn([portreuse, "up", "--pid-file", pidFile, "--listen", "127.0.0.1:0", "--ready", "notify", "--grace", "2",
            "--", systemPython, script, "plain", folder.path + "/marker"])
        spawn.standardError = .descriptor(log.write)
        spawn.standardOutput = .descriptor(log.write)
        let pid = try spawn.start()
        Files.close(log.write)
        let up = UpProcess(pid: pid, folder: folder)
        _ = try up.servingAddress()
        for round in 2...11 {
            up.signal(SIGHUP)
            #expect(up.waitForStatus(timeout: 20) { $0.serving.map(\.number) == [round] } != nil, "reload \(round) did not complete")
        }
        // Now read: up's log thread writes what it kept, and says what it dropped.
        var text = ""
        #expect(waitUntil(timeout: 10) {
            var buffer = [UInt8](repeating: 0, count: 65_536)
            let count = read(log.read.rawValue, &buffer, buffer.count)
            if count > 0 { text += String(decoding: buffer[0..<count], as: UTF8.self) }
            return text.contains("dropped while stderr was not read") || text.contains("generation 11 (pid")
        }, "\(text.suffix(500))")
        #expect(up.stop() == 0)
    }
}

extension UpResilienceTests {
    @Test("a program that crashes soon after READY=1 backs off (0.2 s, 0.4 s, 0.8 s …) instead of restarting every 0.2 s forever")
    func crashAfterReadyBacksOff() throws {
        let folder = try TemporaryFolder()
        let script = try folder.write("crash.py", """
            import os, socket, time
            n = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); n.sendto(b"READY=1", os.environ["NOTIFY_SOCKET"])
            time.sleep(0.2)
            os._exit(3)
            """)
        let up = try UpProcess(["--listen", "127.0.0.1:0", "--ready", "notify", "--", systemPython, script], folder: folder)
        // The third crash: generation 3 failed and generation 4 waits for its backoff, or has started.
        let third = up.waitForStatus { $0.nextGeneration > 4 || ($0.nextGeneration == 4 && $0.state.name == "backingOff") }
        #expect(third != nil, "\(up.logText)")
        #expect(third?.generations.allSatisfy { $0.number == 1 || $0.reason == "restart" } == true, "\(up.logText)")
        #expect(up.waitForLog("restarting in 800ms", timeout: 10), "\(up.logText)")
        #expect(up.waitForLog("restarting in 200ms", timeout: 10) && up.waitForLog("restarting in 400ms", timeout: 10), "\(up.logText)")
        #expect(up.stop() == 0, "\(up.logText)")
    }
}

extension UpResilienceTests {
    @Test("probe readiness: a new generation that waits on the socket but never accepts is never ready, while the old one idles in accept")
    func probeNeedsTheNewGenerationToAccept() throws {
        let folder = try TemporaryFolder()
        let script = try folder.write("server.py", """
            import os, select, signal, socket, sys, time
            marker = sys.argv[1]
            first = not os.path.exists(marker)
            open(marker, "a").close()
            s = socket.socket(fileno=3)
            signal.signal(signal.SIGTERM, lambda *a: os._exit(0))
            end = time.time() + 60
            if first:
                s.setblocking(True)
                while time.time() < end:
                    c, _ = s.accept()
                    c.settimeout(5); c.recv(4096); c.sendall(b"HTTP/1.0 200 OK\\r\\n\\r\\nfirst\\n"); c.close()
            else:
                e = select.epoll(); e.register(3, select.EPOLLIN)
                while time.time() < end: e.poll(1)
            """)
        let up = try UpProcess(["--listen", "127.0.0.1:0", "--ready", "probe", "--ready-timeout", "3", "--", systemPython, script, folder.path + "/marker"], folder: folder)
        let address = try up.servingAddress()
        for round in 1...3 {
            up.signal(SIGHUP)
            let failed = up.waitForStatus(timeout: 20) { $0.reloads.contains { $0.generation == round + 1 && $0.result == "failed" } }
            #expect(failed?.reloads.first { $0.generation == round + 1 }?.reason?.hasPrefix("was not ready within") == true, "\(up.logText)")
            #expect(up.waitForLog("was not ready within", count: round, timeout: 10), "\(up.logText)")
            let readyLines = up.logText.split(separator: "\n").filter { $0.contains("generation \(round + 1) (pid") && $0.contains("ready after") }
            #expect(readyLines.isEmpty, "never ready: \(up.logText)")
            #expect(try httpGet(address).hasPrefix("first"), "the old generation keeps serving")
        }
        #expect(up.status?.serving.map(\.number) == [1])
        #expect(up.stop() == 0, "\(up.logText)")
    }
}

extension UpResilienceTests {
    @Test("a worker that left the process group (setsid) does not outlive its generation: killed after --grace")
    func setsidWorkerIsStopped() throws {
        let folder = try TemporaryFolder()
        let escaped = folder.path + "/escaped.pid"
        let script = try folder.write("server.py", """
            import os, signal, socket, sys, time
            if os.fork() == 0:
                os.setsid()
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                open(sys.argv[1] + ".tmp", "w").write(str(os.getpid())); os.rename(sys.argv[1] + ".tmp", sys.argv[1])
                time.sleep(60); os._exit(0)
            while not os.path.exists(sys.argv[1]): time.sleep(0.01)
            signal.signal(signal.SIGTERM, lambda *a: os._exit(0))
            n = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); n.sendto(b"READY=1", os.environ["NOTIFY_SOCKET"])
            time.sleep(60)
            """)
        let up = try UpProcess(["--listen", "127.0.0.1:0", "--ready", "notify", "--grace", "1", "--", systemPython, script, escaped], folder: folder)
        #expect(up.waitForStatus { !$0.serving.isEmpty } != nil, "\(up.logText)")
        let worker = try #require(pid_t(String(decoding: Files.read(escaped) ?? [], as: UTF8.self)))
        #expect(Processes.stat(of: worker)?.processGroup == worker, "the worker leads a group of its own")
        #expect(up.stop() == 1, "a process had to be killed after --grace: \(up.logText)")
        #expect(waitUntil(timeout: 10) { Processes.stat(of: worker).map { $0.state == "Z" } ?? true }, "the setsid worker outlived up")
        #expect(up.waitForLog("had left its process group (setsid): killed too", timeout: 10), "\(up.logText)")
    }
}

extension UpResilienceTests {
    @Test("up --dual-stack: [::]:P also takes IPv4 connections; without it, [::] is IPv6 only")
    func dualStackListen() throws {
        let dual = try UpProcess(["--listen", "[::]:0", "--dual-stack", "--", hello])
        let address = try dual.servingAddress()
        #expect(try httpGet(SocketAddress(ip: .loopbackIPv4, port: address.port)).hasPrefix("hello"))
        #expect(dual.stop() == 0, "\(dual.logText)")
        let only = try UpProcess(["--listen", "[::]:0", "--", hello])
        let v6 = try only.servingAddress()
        #expect(try httpGet(SocketAddress(ip: .loopbackIPv6, port: v6.port)).hasPrefix("hello"))
        #expect((try? httpGet(SocketAddress(ip: .loopbackIPv4, port: v6.port))) == nil, "IPv4 is not served")
        #expect(only.stop() == 0, "\(only.logText)")
    }
}

extension UpResilienceTests {
    @Test("kill -9 of up: its generation gets SIGTERM and stops, it does not serve on as an orphan", arguments: [[], ["--no-intercept"]])
    func programDoesNotOutliveUp(extra: [String]) throws {
        let up = try UpProcess(["--listen", "127.0.0.1:0"] + extra + ["--", hello])
        _ = try up.servingAddress()
        let program = try #require(up.status?.serving.first?.pid)
        up.signal(SIGKILL)
        _ = up.waitForExit()
        #expect(waitUntil(timeout: 20) { Processes.stat(of: program).map { $0.state == "Z" } ?? true }, "generation \(program) outlived up")
    }

    @Test("the private folder of a killed up is stale: the next up of the user removes it, and leaves a running up's alone")
    func staleRuntimeFolderRemoved() throws {
        let temporary = try TemporaryFolder()
        let environment = ProcessInfo.processInfo.environment.merging(["TMPDIR": temporary.path]) { $1 }
        func folders() -> [String] { ((try? FileManager.default.contentsOfDirectory(atPath: temporary.path)) ?? []).filter { $0.hasPrefix("portreuse-up.") } }
        let killed = try UpProcess(["--listen", "127.0.0.1:0", "--", hello], environment: environment)
        _ = try killed.servingAddress()
        killed.signal(SIGKILL)
        _ = killed.waitForExit()
        let stale = folders()
        #expect(stale.count == 1, "the killed up's folder: \(stale)")
        let running = try UpProcess(["--listen", "127.0.0.1:0", "--", hello], environment: environment)
        _ = try running.servingAddress()
        #expect(Set(folders()).isDisjoint(with: stale), "the stale folder \(stale) is still there: \(folders())")
        let kept = folders()
        #expect(kept.count == 1)
        let next = try UpProcess(["--listen", "127.0.0.1:0", "--", hello], environment: environment)
        _ = try next.servingAddress()
        #expect(Set(kept).isSubset(of: Set(folders())), "a running up's folder was removed")
        // An up that is PID 1 of a pid namespace of its own sees other pids than the host's: it too must leave a
        // running up's folder alone (its lock says it is alive, whatever the pid).
        if geteuid() == 0 {
            let contained = try UpProcess(["--listen", "127.0.0.1:0", "--", hello], environment: environment,
                                          launcher: ["/usr/bin/unshare", "--pid", "--fork", "--mount-proc", "--kill-child"])
            #expect(waitUntil(timeout: 20) { contained.status?.serving.isEmpty == false }, "\(contained.logText)")
            #expect(Set(kept).isSubset(of: Set(folders())), "an up in a pid namespace removed a running up's folder")
            let pid1 = try #require(Processes.descendants(of: contained.pid).first?.pid)
            kill(pid1, SIGTERM)  // to up itself: unshare does not forward it
            #expect(contained.waitForExit() == 0, "\(contained.logText)")
        }
        #expect(next.stop() == 0, "\(next.logText)")
        #expect(running.stop() == 0, "\(running.logText)")
        #expect(folders().isEmpty, "up leaves its folder behind at exit: \(folders())")
    }
}

extension UpResilienceTests {
    @Test("--shared-socket: a generation that makes the shared socket blocking where the older one took it non-blocking: up says so in the log")
    func blockingModeMismatchIsSaid() throws {
        let folder = try TemporaryFolder()
        let script = try folder.write("mode.py", """
            import os, signal, socket, sys, time
            marker = sys.argv[1]
            first = not os.path.exists(marker)
            open(marker, "a").close()
            s = socket.socket(fileno=3)
            s.setblocking(not first)  # the first non-blocking (as node), the next blocking (as a perl server)
            signal.signal(signal.SIGTERM, lambda *a: os._exit(0))
            socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b"READY=1", os.environ["NOTIFY_SOCKET"])
            time.sleep(60)
            """)
        let up = try UpProcess(["--listen", "127.0.0.1:0", "--ready", "notify", "--shared-socket", "--", systemPython, script, folder.path + "/marker"])
        _ = try up.servingAddress()
        up.signal(SIGHUP)
        #expect(up.waitForStatus { $0.serving.map(\.number) == [2] } != nil, "\(up.logText)")
        // The log is written by a thread of its own: wait for the line, not for the status file.
        #expect(up.waitForLog("made the shared socket blocking (O_NONBLOCK), and generation 1"), "\(up.logText)")
        #expect(up.stop() == 0, "\(up.logText)")
    }
}

extension UpResilienceTests {
    @Test("what a generation said before it exited is logged before its exit (STOPPING=1, then exited)")
    func lastWordsComeFirst() throws {
        let script = """
            import os, signal, socket, time
            n = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            def stop(*a):
                n.sendto(b"STOPPING=1", os.environ["NOTIFY_SOCKET"]); os._exit(0)
            signal.signal(signal.SIGTERM, stop)
            n.sendto(b"READY=1", os.environ["NOTIFY_SOCKET"])
            time.sleep(60)
            """
        let up = try UpProcess(["--listen", "127.0.0.1:0", "--ready", "notify", "--", systemPython, "-c", script])
        _ = try up.servingAddress()
        #expect(up.stop() == 0, "\(up.logText)")
        let log = up.logText
        let stopping = try #require(log.range(of: "is stopping"), "\(log)")
        let exited = try #require(log.range(of: "exited (exit status 0)"), "\(log)")
        #expect(stopping.lowerBound < exited.lowerBound, "\(log)")
    }
}
