import Foundation
import Glibc
import PortReuse
import TestSupport
import Testing

/// `portreuse up --adopt PID`: a running server that up did not start moves under up with no failed request.
@Suite("portreuse up --adopt", .serialized)
struct UpAdoptTests {
    let nobody = ["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]

    /// `python3 -m http.server` on a port the kernel picks, started by the test (not by up): the child and its port.
    func runningServer(in folder: TemporaryFolder) throws -> (Child, UInt16) {
        let server = try Child([systemPython, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1", "--directory", folder.path], discardingStandardError: true)
        let line = try #require(server.line(timeout: 20), "http.server said nothing")
        let port = try #require(line.components(separatedBy: " port ").dropFirst().first.flatMap { UInt16($0.prefix { $0.isNumber }) }, "\(line)")
        return (server, port)
    }

    @Test("a python3 -m http.server started by hand is adopted under a client's load with 0 failed, then reloaded")
    func adoptUnderLoad() throws {
        let folder = try TemporaryFolder()
        _ = try folder.write("index.html", "hello\n")
        let (old, port) = try runningServer(in: folder)
        let address = SocketAddress(ip: .loopbackIPv4, port: port)
        let load = HTTPLoad(address, clients: 1)
        #expect(waitUntil(timeout: 20) { load.count > 20 }, "the server does not answer")
        let up = try UpProcess(
            ["--adopt", "\(old.pid)", "--listen", "127.0.0.1:\(port)", "--stop-when-idle", "--grace", "10s", "--",
             systemPython, "-m", "http.server", "\(port)", "--bind", "127.0.0.1", "--directory", folder.path])
        #expect(up.waitForStatus { $0.serving.map(\.number) == [1] } != nil, "\(up.logText)")
        #expect(waitUntil(timeout: 30) { !old.isRunning }, "the adopted server handed over and exited: \(up.logText)")
        #expect(up.waitForLog("adopted pid \(old.pid) (python3) exited"), "\(up.logText)")
        #expect(up.waitForLog("got up's socket", timeout: 10), "generation 1 bound the adopted socket: \(up.logText)")
        let before = load.count
        up.signal(SIGHUP)
        #expect(up.waitForStatus { $0.serving.map(\.number) == [2] && $0.generations.count == 1 } != nil, "\(up.logText)")
        #expect(waitUntil(timeout: 20) { load.count > before + 20 })
        let (answered, failures) = load.stop()
        #expect(failures.isEmpty, "\(failures.count) failed of \(answered + failures.count): \(failures.prefix(3))\n\(up.logText)")
        #expect(try httpGet(address, "/index.html") == "hello\n")
        #expect(up.stop() == 0, "\(up.logText)")
    }

    @Test("what cannot be adopted is refused with exit 3 and the reason: no such process, no socket there, not listening, another user's")
    func refusals() throws {
        let folder = try TemporaryFolder()
        let (server, port) = try runningServer(in: folder)
        let other = try PortReservation()
        func adopt(_ pid: pid_t, _ listen: String, as user: [String] = []) throws -> (status: Int32, stderr: String) {
            let result = try capture(user + [portreuse, "up", "--adopt", "\(pid)", "--listen", listen, "--", "/bin/true"], timeout: 30)
            return (result.status, result.stderr)
        }
        var result = try adopt(999_999, "127.0.0.1:\(port)")
        #expect(result.status == 3 && result.stderr.contains("--adopt 999999: no such process"), "\(result)")
        result = try adopt(server.pid, "127.0.0.1:\(other.port)")
        #expect(result.status == 3 && result.stderr.contains("holds no TCP socket on 127.0.0.1:\(other.port)"), "\(result)")
        result = try adopt(server.pid, "127.0.0.1:\(port)", as: nobody)
        #expect(result.status == 3 && result.stderr.contains("runs as uid 0, not as you (uid 65534)"), "\(result)")
        let bound = try Child(python: """
            import socket, time
            s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1], flush=True); time.sleep(60)
            """)
        let boundPort = try bound.port()
        result = try adopt(bound.pid, "127.0.0.1:\(boundPort)")
        #expect(result.status == 3 && result.stderr.contains("is UNCONN, not listening"), "\(result)")
        #expect((try? httpGet(SocketAddress(ip: .loopbackIPv4, port: port))) != nil, "the server must be untouched")
        if isRoot {
            result = try adopt(2, "127.0.0.1:\(port)")
            #expect(result.status == 3 && result.stderr.contains("is a kernel thread"), "\(result)")
        }
    }

    @Test("root adopting a server of user nobody is refused unless asked in words (--adopt-any-user): its next versions would run as root",
          .needsRoot("a server of user nobody"))
    func anotherUsersServer() throws {
        let server = try Child(python: """
            import socket, time
            s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(); print(s.getsockname()[1], flush=True); time.sleep(60)
            """, asNobody: true)
        let port = try server.port()
        let refused = try capture([portreuse, "up", "--adopt", "\(server.pid)", "--listen", "127.0.0.1:\(port)", "--", "/bin/true"], timeout: 30)
        #expect(refused.status == 3, "\(refused.stderr)")
        #expect(refused.stderr.contains("runs as uid 65534") && refused.stderr.contains("--adopt-any-user"), "\(refused.stderr)")
        let asked = try capture([portreuse, "up", "--adopt", "\(server.pid)", "--adopt-any-user", "--listen", "127.0.0.1:\(port)", "--ready", "delay:0.1", "--", "/bin/true"], timeout: 30)
        #expect(!asked.stderr.contains("--adopt-any-user to run them"), "\(asked.stderr)")
    }

    @Test("--listen on a port another process holds: exit 3, the holder named, and advice up can follow (--adopt)")
    func portInUseAdvice() throws {
        let folder = try TemporaryFolder()
        let (server, port) = try runningServer(in: folder)
        let result = try capture([portreuse, "up", "--listen", "127.0.0.1:\(port)", "--", "/bin/true"], timeout: 30)
        #expect(result.status == 3)
        #expect(result.stderr.contains("held by") && result.stderr.contains("pid \(server.pid)"), "\(result.stderr)")
        #expect(result.stderr.contains("--adopt PID") && !result.stderr.contains("policy shared"), "\(result.stderr)")
    }
}
