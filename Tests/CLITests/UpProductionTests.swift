import Foundation
import Glibc
import PortReuse
import Synchronization
import TestSupport
import Testing
import PortReuseSystem

/// `portreuse up` in production: bursts of reloads, slow drains, systemd's notify protocol and sockets,
/// UDP, and upgrading up itself.
@Suite("portreuse up in production")
struct UpProductionTests {
    @Test("5 reloads in one second under load: nothing lost, coalesced, one serving generation at the end")
    func burstOfReloads() throws {
        // Each generation takes 400 ms to start: the first SIGHUP starts generation 2, and the four others
        // are sent once up shows it starting, each after up took in the one before (a reload pending).
        let up = try UpProcess(["--listen", "127.0.0.1:0", "--", hello, "--startup-ms", "400"])
        let address = try up.servingAddress()
        let load = HTTPLoad(address, clients: 8)
        up.signal(SIGHUP)
        #expect(up.waitForStatus { $0.generations.contains { $0.number == 2 } } != nil, "\(up.logText)")
        for _ in 0..<4 {
            up.signal(SIGHUP)
            #expect(up.waitForStatus { $0.reloadPending || $0.generations.contains { $0.number > 2 } } != nil, "\(up.logText)")
        }
        let end = try #require(up.waitForStatus { !$0.reloadPending && $0.generations.count == 1 && $0.serving.first?.number ?? 0 > 1 && !$0.generations.contains { $0.state == "starting" } }, "\(up.logText)")
        let (answered, failures) = load.stop()
        #expect(failures.isEmpty, "\(failures.count) failed of \(answered + failures.count): \(failures.prefix(3))")
        #expect(answered > 50)
        // The first SIGHUP starts generation 2; those that arrive while a generation starts make one more reload.
        #expect(end.serving[0].number == 3 || end.serving[0].number == 4, "\(up.logText)")
        #expect(up.waitForLog("one more reload follows once it is ready", timeout: 10))
        #expect(up.stop() == 0)
    }

    @Test("a slow old generation finishes its long request while two more reloads happen")
    func slowDrainAcrossTwoReloads() throws {
        let up = try UpProcess(["--listen", "127.0.0.1:0", "--grace", "30", "--", hello, "--request-ms", "2500"])
        let address = try up.servingAddress()
        let first = try #require(up.status?.serving.first?.pid)
        let answer = Mutex<String?>(nil)
        let done = DispatchSemaphore(value: 0)
        Thread.detachNewThread {
            answer.withLock { $0 = (try? httpGet(address)) ?? "failed" }
            done.signal()
        }
        // The request is accepted by generation 1: a connection on the port that its process holds.
        #expect(waitUntil {
            PortHolder.find(port: address.port, transport: .tcp, options: false).contains { socket in
                socket.state == .established && socket.localAddress.port == address.port && socket.processes.contains { $0.pid == first }
            }
        }, "generation 1 never accepted the request")
        up.signal(SIGHUP)
        #expect(up.waitForStatus { $0.serving.map(\.number) == [2] } != nil)
        up.signal(SIGHUP)
        let during = up.waitForStatus { $0.serving.map(\.number) == [3] }
        #expect(during?.generations.contains { $0.number == 1 && $0.state == "draining" } == true, "generation 1 still drains: \(up.logText)")
        #expect(done.wait(timeout: .now() + 20) == .success)
        #expect(answer.withLock { $0 } == "hello from hello pid \(first)\n")
        #expect(up.waitForStatus { $0.generations.count == 1 } != nil)
        #expect(up.waitForLog("generation 1 (pid \(first)) exited (exit status 0)", timeout: 10), "\(up.logText)")
        #expect(up.stop() == 0)
    }

    @Test("under systemd: READY, RELOADING with MONOTONIC_USEC, READY, STOPPING, exactly as documented")
    func notifyProtocol() throws {
        let folder = try TemporaryFolder()
        let path = folder.path + "/notify.sock"
        let receiver = try UnixDatagramReceiver(path: path)
        var environment = ProcessInfo.processInfo.environment
        environment["NOTIFY_SOCKET"] = path
        let up = try UpProcess(["--listen", "127.0.0.1:0", "--", hello], environment: environment, folder: folder)
        _ = try up.servingAddress()
        let one = try #require(up.status?.serving.first?.pid)
        #expect(receiver.next() == "READY=1\nSTATUS=serving: generation 1 (pid \(one))")
        up.signal(SIGHUP)
        let reloading = try #require(receiver.next())
        let lines = reloading.split(separator: "\n")
        #expect(lines.count == 3 && lines[0] == "RELOADING=1" && lines[1].hasPrefix("MONOTONIC_USEC=") && lines[2] == "STATUS=reloading", "\(reloading)")
        let usec = try #require(UInt64(lines[1].dropFirst("MONOTONIC_USEC=".count)))
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        #expect(usec <= UInt64(now.tv_sec) * 1_000_000 + UInt64(now.tv_nsec) / 1000)
        let two = try #require(up.waitForStatus { $0.serving.map(\.number) == [2] }?.serving.first?.pid)
        #expect(receiver.next() == "READY=1\nSTATUS=serving: generation 2 (pid \(two)), 1 draining")
        #expect(up.stop() == 0)
        #expect(receiver.next() == "STOPPING=1\nSTATUS=stopping")
        #expect(receiver.next() == "STATUS=stopped")
        #expect(receiver.next(timeout: 0.3) == nil, "nothing else")
    }

    @Test("under systemd-socket-activate: up uses the socket it is handed instead of opening its own",
          .enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/systemd-socket-activate"), "systemd-socket-activate is not installed"))
    func socketsFromSystemd() throws {
        let port = try freePort()
        let up = try UpProcess(
            ["--listen", "127.0.0.1:\(port)", "--", hello, "--name", "via-systemd"],
            launcher: ["/usr/bin/systemd-socket-activate", "-l", "127.0.0.1:\(port)", "--fdname=web"])
        // systemd-socket-activate starts up on the first connection.
        let answer = waitFor(timeout: 10, interval: 0.05) { try? httpGet(SocketAddress(ip: .loopbackIPv4, port: port)) } ?? ""
        #expect(answer.hasPrefix("hello from via-systemd pid"), "\(up.logText)")
        let status = try #require(up.waitForStatus { !$0.serving.isEmpty }, "\(up.logText)")
        #expect(status.sockets.map(\.name) == ["web"] && status.sockets.first?.address == "127.0.0.1:\(port)", "the name comes from systemd: \(up.logText)")
        #expect(status.serving.first?.sockets == nil, "every generation shares systemd's socket: \(up.logText)")
        #expect(up.waitForLog("holding web=tcp:127.0.0.1:\(port)", timeout: 10), "the name comes from systemd: \(up.logText)")
        #expect(up.waitForLog("has no SO_REUSEPORT (a socket from systemd needs ReusePort=yes in its .socket unit): every generation shares it", timeout: 10),
                "without ReusePort=yes up says why it cannot steer: \(up.logText)")
        #expect(up.stop() == 0)
    }

    /// What systemd does for a .socket unit with `ReusePort=yes`: it opens the listener with SO_REUSEPORT, keeps it for
    /// as long as the unit lives, and execs the service with it as descriptor 3 (LISTEN_FDS=1, LISTEN_PID).
    static let reusePortLauncher = """
        import os, socket, sys, time
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind(("127.0.0.1", 0))
        s.listen(128)
        open(sys.argv[1], "w").write(str(s.getsockname()[1]))
        parent = os.getpid()
        if os.fork() == 0:
            end = time.time() + 120
            while os.getppid() == parent and time.time() < end:
                time.sleep(0.1)
            os._exit(0)
        if s.fileno() != 3:
            os.dup2(s.fileno(), 3)
        os.set_inheritable(3, True)
        os.environ.update(LISTEN_FDS="1", LISTEN_PID=str(os.getpid()), LISTEN_FDNAMES="web")
        os.execv(sys.argv[2], sys.argv[2:])
        """

    @Test("a socket from systemd with ReusePort=yes is steered: each generation gets its own, a sloppy stop loses nothing")
    func systemdReusePortSteered() throws {
        let folder = try TemporaryFolder()
        let script = try folder.write("sloppy.py", sloppyServer)
        let portFile = folder.path + "/port"
        let up = try UpProcess(
            ["--", systemPython, script, "plain", folder.path + "/marker"], folder: folder,
            launcher: [systemPython, "-c", Self.reusePortLauncher, portFile])
        let address = try up.servingAddress()
        #expect(String(address.port) == (try? String(contentsOfFile: portFile, encoding: .utf8)), "up serves systemd's socket")
        let outcome = up.reloadUnderLoad(address, times: 3, clients: 4)
        #expect(outcome.reloads == 3, "\(up.logText)")
        #expect(outcome.failures.isEmpty, "\(outcome.failures.count) failed: \(outcome.failures.prefix(3))\n\(up.logText)")
        let signalled = up.waitForStatus(timeout: 20) { !$0.generations.contains(where: \.signalWaits) }
        #expect(signalled != nil, "every old generation got its stop signal: \(up.logText)")
        #expect(signalled?.serving.first?.sockets != nil, "steered: the serving generation has a socket of its own: \(up.logText)")
        #expect(up.waitForLog("is idle (its queue is empty, it holds no connection): sent SIGTERM", count: 3, timeout: 20), "\(up.logText)")
        #expect(!up.logText.contains("has no SO_REUSEPORT"), "\(up.logText)")
        #expect(up.stop() == 0, "\(up.logText)")
    }

    static let udpCounter = """
        import os, signal, socket, sys
        sock = socket.fromfd(3, socket.AF_INET, socket.SOCK_DGRAM)
        sock.settimeout(0.05)
        stop = []
        signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
        signal.alarm(300)
        out = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        ready = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        ready.sendto(b"READY=1", os.environ["NOTIFY_SOCKET"])
        while not stop:
            try:
                data = sock.recv(64)
            except socket.timeout:
                continue
            os.write(out, data + b"\\n")
        """

    @Test("UDP: a numbered stream across 10 reloads; every datagram that reached the socket is read")
    func udpAcrossReloads() throws {
        let folder = try TemporaryFolder()
        let received = folder.path + "/received"
        let up = try UpProcess(["--listen", "udp:127.0.0.1:0", "--ready", "notify", "--", systemPython, "-c", Self.udpCounter, received], folder: folder)
        let address = try up.servingAddress()
        let sender = try DatagramSocket(udp: "127.0.0.1:0")
        let total = 3000
        let sent = DispatchSemaphore(value: 0)
        Thread.detachNewThread {
            for number in 0..<total {
                try? sender.send(Array("\(number)".utf8), to: address)
                usleep(1000)  // the sender's pace (3 s in all), not a wait: no assertion waits on it
            }
            sent.signal()
        }
        for number in 2...11 {
            up.signal(SIGHUP)
            #expect(up.waitForStatus { $0.serving.map(\.number) == [number] } != nil, "\(up.logText)")
        }
        #expect(sent.wait(timeout: .now() + 60) == .success)
        var numbers = Set<Int>()
        waitUntil(timeout: 10, interval: 0.05) {
            numbers = Set(((try? String(contentsOfFile: received, encoding: .utf8)) ?? "").split(separator: "\n").compactMap { Int($0) })
            return numbers.count >= total
        }
        #expect(numbers.count == total, "lost \(total - numbers.count) of \(total) datagrams across 10 reloads: \(Set(0..<total).subtracting(numbers).sorted().prefix(5))\n\(up.logText)")
        #expect(up.stop() == 0)
    }

    @Test("up upgrades itself in place under load: no failed request, same up pid, the program keeps its pid")
    func upgradeInPlace() throws {
        let up = try UpProcess(["--listen", "127.0.0.1:0", "--", hello])
        let address = try up.servingAddress()
        let before = try #require(up.status)
        let load = HTTPLoad(address, clients: 8)
        #expect(up.waitForStatus { _ in load.count > 50 } != nil)
        let upgrade = try capture([portreuse, "up", "--upgrade", "--pid-file", up.pidFile], timeout: 60)
        #expect(upgrade.status == 0, "\(upgrade.stderr)\n\(up.logText)")
        #expect(upgrade.output.hasPrefix("upgraded: portreuse up (pid \(up.pid)) runs the new binary"))
        let after = try #require(up.waitForStatus { $0.upgrades == 1 })
        #expect(after.pid == before.pid)
        #expect(after.serving.map(\.pid) == before.serving.map(\.pid), "the program was not restarted")
        let count = load.count
        #expect(up.waitForStatus { _ in load.count > count + 50 } != nil)
        // The upgraded up still reloads: it took over the sockets and the generations.
        up.signal(SIGHUP)
        #expect(up.waitForStatus { $0.serving.map(\.number) == [2] && $0.generations.count == 1 } != nil, "\(up.logText)")
        let (answered, failures) = load.stop()
        #expect(failures.isEmpty, "\(failures.count) failed of \(answered + failures.count): \(failures.prefix(3))")
        #expect(up.stop() == 0, "\(up.logText)")
    }
}

extension UpProductionTests {
    @Test("an upgrade to a binary that does not run is refused; the running up carries on and still reloads")
    func failedUpgrade() throws {
        let folder = try TemporaryFolder()
        let (up, copy) = try Self.upOfCopy(folder)
        let pid = up.pid
        let pidFile = up.pidFile
        let ready = try #require(up.waitForStatus { !$0.serving.isEmpty })
        // A broken release lands at the same path (renamed over it, as package managers do).
        try folder.write("broken", "#!/bin/sh\nexit 1\n", executable: true)
        #expect(rename(folder.path + "/broken", copy) == 0)
        let upgrade = try capture([portreuse, "up", "--upgrade", "--pid-file", pidFile], timeout: 60)
        #expect(upgrade.status == 1)
        #expect(upgrade.stderr.contains("upgrade failed"), "\(upgrade.stderr)")
        #expect(up.waitForStatus { $0.upgradeFailures == 1 } != nil, "\(up.logText)")
        #expect(up.waitForLog("--version did not succeed", timeout: 10), "\(up.logText)")
        #expect(kill(pid, 0) == 0, "the old up still runs")
        #expect(up.status?.serving.map(\.pid) == ready.serving.map(\.pid))
        kill(pid, SIGHUP)
        #expect(up.waitForStatus { $0.serving.map(\.number) == [2] } != nil, "\(up.logText)")
    }
}

extension UpProductionTests {
    /// Starts an `up` of a copy of the binary (so that a test may put another binary at its path).
    static func upOfCopy(_ folder: TemporaryFolder) throws -> (up: UpProcess, copy: String) {
        let copy = folder.path + "/portreuse"
        #expect(try capture(["/bin/cp", portreuse, copy]).status == 0)
        let pid = try spawn([copy, "up", "--pid-file", folder.path + "/up.pid", "--listen", "127.0.0.1:0", "--", hello], log: folder.path + "/up.log")
        return (UpProcess(pid: pid, folder: folder), copy)
    }

    @Test("a SIGHUP that arrives while up upgrades itself is a reload in the new up, not its death")
    func reloadDuringUpgrade() throws {
        let up = try UpProcess(["--listen", "127.0.0.1:0", "--", hello])
        _ = try up.servingAddress()
        up.signal(SIGUSR2)
        #expect(up.waitForStatus { $0.upgrading != nil || $0.upgrades == 1 } != nil, "the upgrade began: \(up.logText)")
        up.signal(SIGHUP)
        let after = up.waitForStatus { $0.upgrades == 1 && $0.serving.map(\.number) == [2] && $0.generations.count == 1 }
        #expect(after != nil, "\(up.logText)")
        #expect(after?.pid == up.pid)
        #expect(up.stop() == 0, "\(up.logText)")
    }

    @Test("a SIGTERM that arrives while up upgrades itself stops it cleanly (exit 0), the program with it")
    func stopDuringUpgrade() throws {
        let up = try UpProcess(["--listen", "127.0.0.1:0", "--", hello])
        _ = try up.servingAddress()
        let program = try #require(up.status?.serving.first?.pid)
        up.signal(SIGUSR2)
        #expect(up.waitForStatus { $0.upgrading != nil || $0.upgrades == 1 } != nil, "the upgrade began: \(up.logText)")
        up.signal(SIGTERM)
        #expect(up.waitForExit() == 0, "\(up.logText)")
        #expect(waitUntil(timeout: 10) { !Processes.exists(program) }, "the program outlived up")
    }

    @Test("an upgrade to a binary that answers --version but cannot run up is refused before exec; up carries on")
    func upgradeToBinaryThatCannotServe() throws {
        let folder = try TemporaryFolder()
        let (up, copy) = try Self.upOfCopy(folder)
        let ready = try #require(up.waitForStatus { !$0.serving.isEmpty })
        try folder.write("liar", "#!/bin/sh\nif [ \"$1\" = --version ]; then echo 9.9.9; exit 0; fi\necho 'cannot start' >&2\nexit 1\n", executable: true)
        #expect(rename(folder.path + "/liar", copy) == 0)
        let upgrade = try capture([portreuse, "up", "upgrade", "--pid-file", up.pidFile], timeout: 60)
        #expect(upgrade.status == 1, "\(upgrade.stderr)")
        #expect(up.waitForStatus { $0.upgradeFailures == 1 } != nil, "\(up.logText)")
        #expect(up.waitForLog("cannot take over", timeout: 10), "\(up.logText)")
        #expect(up.waitForLog("cannot start", timeout: 10), "what the binary said is in the log: \(up.logText)")
        #expect(Processes.exists(up.pid), "the old up still runs")
        #expect(up.status?.serving.map(\.pid) == ready.serving.map(\.pid))
        up.signal(SIGHUP)
        #expect(up.waitForStatus { $0.serving.map(\.number) == [2] } != nil, "\(up.logText)")
    }
}

/// A unix datagram socket that receives sd_notify messages, as systemd's NOTIFY_SOCKET does.
final class UnixDatagramReceiver {
    let descriptor: Int32

    init(path: String) throws {
        descriptor = try Sys.unixDatagramReceiver(at: path)
    }

    /// The next message, or nil after `timeout` seconds.
    func next(timeout: Double = 20) -> String? {
        var entry = pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)
        guard poll(&entry, 1, Int32(timeout * 1000)) > 0 else { return nil }
        var buffer = [UInt8](repeating: 0, count: 4096)
        let count = recv(descriptor, &buffer, buffer.count, 0)
        return count > 0 ? String(decoding: buffer[0..<count], as: UTF8.self) : nil
    }

    deinit { close(descriptor) }
}
