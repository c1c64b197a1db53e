import Foundation
import Glibc
import PortReuse
import TestSupport
import Testing
import PortReuseSystem

/// `portreuse up` as a container's entrypoint: PID 1 of a pid namespace of its own (`unshare --pid --fork
/// --mount-proc`; the network is the host's, so the test reaches its port on loopback).
@Suite("portreuse up as PID 1", .serialized)
struct UpInitTests {
    /// `up` started as PID 1 of a new pid namespace. The namespace dies with it: `--kill-child` SIGKILLs up if
    /// unshare is killed, and the kernel then kills everything in the namespace.
    final class InitUp {
        let folder: TemporaryFolder
        let unshare: pid_t
        let up: pid_t
        var log: String { (try? String(contentsOfFile: folder.path + "/up.log", encoding: .utf8)) ?? "" }
        var status: UpSnapshot? {
            FileManager.default.contents(atPath: folder.path + "/up.pid.status").flatMap { try? JSONDecoder().decode(UpSnapshot.self, from: $0) }
        }
        private var exit: Int32?

        init(_ arguments: [String]) throws {
            folder = try TemporaryFolder()
            unshare = try spawn(
                ["/usr/bin/unshare", "--pid", "--fork", "--mount-proc", "--kill-child", portreuse, "up", "--pid-file", folder.path + "/up.pid"]
                    + arguments, log: folder.path + "/up.log")
            let unshare = unshare
            let found = waitFor(timeout: 20) { Processes.descendants(of: unshare).first?.pid }
            up = try #require(found, "unshare started nothing")
        }

        /// The host's view of the descendants of PID 1 whose command line contains `text`.
        func descendants(containing text: String) -> [pid_t] {
            Processes.descendants(of: up).map(\.pid).filter { pid in
                String(decoding: (FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") ?? Data()).map { $0 == 0 ? 32 : $0 }, as: UTF8.self)
                    .contains(text)
            }
        }

        /// Waits for up (and so unshare) to exit: up's exit status as unshare passes it on.
        func waitForExit(timeout: Double = 40) -> Int32? {
            if exit == nil { exit = reap(unshare, timeout: timeout)?.shellStatus }
            return exit
        }

        deinit {
            if exit == nil { killAndReap(unshare) }
        }
    }

    /// A server on fd 3 that says READY=1 and exits with `code` on SIGTERM.
    static let server = """
        import os, signal, socket, sys
        code = int(sys.argv[1])
        s = socket.socket(fileno=3)
        signal.signal(signal.SIGTERM, lambda *a: os._exit(code))
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b"READY=1", os.environ["NOTIFY_SOCKET"])
        s.settimeout(60)
        while True:
            c, _ = s.accept(); c.recv(4096); c.sendall(b"HTTP/1.0 200 OK\\r\\n\\r\\npid1\\n"); c.close()
        """

    @Test("an orphan re-parented to PID 1 is reaped; SIGTERM drains and up exits 0 as the program did", .needsRoot("a pid namespace of its own (unshare --pid)"))
    func reapsOrphansAndStops() throws {
        let reservation = try PortReservation()
        // The generation leaves an orphan behind (a subshell's `sleep`), then serves.
        let up = try InitUp(["--listen", "127.0.0.1:\(reservation.port)", "--", "/bin/sh", "-c",
                             "(sleep 0.77 &); exec \(systemPython) -c \"$0\" 0", Self.server])
        #expect(waitUntil(timeout: 20) { up.status?.serving.isEmpty == false }, "\(up.log)")
        reservation.release()
        #expect(up.status?.pid == 1, "up is PID 1 in its namespace")
        #expect(try httpGet(SocketAddress(ip: .loopbackIPv4, port: reservation.port)) == "pid1\n")
        // The orphan runs under PID 1, then exits; a PID 1 that did not wait for it would leave a zombie.
        let orphan = try #require(waitFor(timeout: 10) { up.descendants(containing: "sleep 0.77").first }, "no orphan seen")
        #expect(Processes.stat(of: orphan)?.parent == up.up, "the orphan is PID 1's child")
        #expect(waitUntil(timeout: 10) { Processes.stat(of: orphan) == nil }, "the orphan \(orphan) was not reaped: \(String(describing: Processes.stat(of: orphan)))")
        kill(up.up, SIGTERM)
        #expect(up.waitForExit() == 0, "\(up.log)")
    }

    @Test("PID 1 exits with the status of the program it stopped (exit 7 on SIGTERM), as the program itself would", .needsRoot("a pid namespace of its own (unshare --pid)"))
    func exitsWithTheProgramsStatus() throws {
        let up = try InitUp(["--listen", "127.0.0.1:0", "--", systemPython, "-c", Self.server, "7"])
        #expect(waitUntil(timeout: 20) { up.status?.serving.isEmpty == false }, "\(up.log)")
        kill(up.up, SIGTERM)
        #expect(up.waitForExit() == 7, "\(up.log)")
    }

    @Test("as PID 1, a program that keeps crashing restarts with backoff, then up gives up with exit 4", .needsRoot("a pid namespace of its own (unshare --pid)"))
    func crashingProgramBacksOff() throws {
        let up = try InitUp(["--listen", "127.0.0.1:0", "--", "/bin/sh", "-c", "exit 3"])
        #expect(up.waitForExit(timeout: 60) == 4, "\(up.log)")
        #expect(up.log.contains("restarting in 200ms") && up.log.contains("restarting in 400ms"), "\(up.log)")
        #expect(up.log.contains("giving up"), "\(up.log)")
    }

    @Test("SIGUSR1 and SIGWINCH go to the serving generation; up keeps running")
    func forwardsUserSignals() throws {
        let folder = try TemporaryFolder()
        let script = """
            import os, signal, socket, sys, time
            path = sys.argv[1]
            signal.signal(signal.SIGUSR1, lambda *a: open(path, "a").write("USR1\\n"))
            signal.signal(signal.SIGWINCH, lambda *a: open(path, "a").write("WINCH\\n"))
            signal.signal(signal.SIGTERM, lambda *a: os._exit(0))
            socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b"READY=1", os.environ["NOTIFY_SOCKET"])
            time.sleep(60)
            """
        let up = try UpProcess(["--listen", "127.0.0.1:0", "--", systemPython, "-c", script, folder.path + "/signals"])
        _ = try up.servingAddress()
        up.signal(SIGUSR1)
        #expect(waitUntil(timeout: 10) { (try? String(contentsOfFile: folder.path + "/signals", encoding: .utf8)) == "USR1\n" }, "\(up.logText)")
        up.signal(SIGWINCH)
        #expect(waitUntil(timeout: 10) { (try? String(contentsOfFile: folder.path + "/signals", encoding: .utf8)) == "USR1\nWINCH\n" }, "\(up.logText)")
        #expect(up.waitForLog("SIGUSR1 forwarded to generation 1", timeout: 10), "\(up.logText)")
        #expect(up.stop() == 0, "\(up.logText)")
    }
}
