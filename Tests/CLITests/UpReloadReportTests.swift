import Foundation
import Glibc
import PortReuse
import TestSupport
import Testing
import PortReuseSystem

/// `portreuse up reload --json`: the report of exactly the reload it caused.
@Suite("portreuse up reload --json")
struct UpReloadReportTests {
    /// A server on fd 3 that keeps every connection it accepts open until SIGTERM (then exits 0).
    static let holder = """
        import os, signal, socket
        s = socket.socket(fileno=3)
        signal.signal(signal.SIGTERM, lambda *a: os._exit(0))
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b"READY=1", os.environ["NOTIFY_SOCKET"])
        held = []
        while True:
            c, _ = s.accept(); held.append(c)
        """

    @Test("the report names its generation and result, the listen counters of its window, the peak queue and backlog, and the connections left on the old generation")
    func report() throws {
        let up = try UpProcess(["--listen", "127.0.0.1:0", "--ready", "notify", "--grace", "5", "--", systemPython, "-c", Self.holder])
        let address = try up.servingAddress()
        // Two connections the first generation accepts and keeps.
        let kept = try (0..<2).map { _ in try Connection.dial(to: address, policy: .exclusive, timeout: .seconds(5)) }
        #expect(waitUntil(timeout: 10) { PortHolder.find(port: address.port, transport: .tcp).first { $0.state == .listen }?.receiveQueue == 0 })
        let result = try capture([portreuse, "up", "reload", "--json", "--pid-file", up.pidFile], timeout: 60)
        #expect(result.status == 0, "\(result.stderr)")
        let report = try #require(try JSONSerialization.jsonObject(with: Data(result.output.utf8)) as? [String: Any], "\(result.output)")
        #expect(report["generation"] as? Int == 2)
        #expect(report["result"] as? String == "ready")
        #expect((report["seconds"] as? Double ?? -1) > 0)
        #expect(report["listenOverflows"] is Int && report["listenDrops"] is Int, "\(report)")
        #expect(report["peakAcceptQueue"] as? Int == 0, "nothing waited: \(report)")
        #expect((report["backlog"] as? Int ?? 0) > 0, "\(report)")
        #expect(report["connectionsOnOlderGenerations"] as? Int == 2, "\(report)")
        withExtendedLifetime(kept) {}
        // The human form says the same in words.
        let again = try capture([portreuse, "up", "reload", "--pid-file", up.pidFile], timeout: 60)
        #expect(again.output.hasPrefix("reloaded: generation 3 ready in") && again.output.contains("accept queue at most"), "\(again.output)")
        #expect(up.stop() == 0, "\(up.logText)")
    }

    @Test("a failed reload: its JSON says failed and why, and the exit status is 1")
    func failedReport() throws {
        let folder = try TemporaryFolder()
        // The first generation serves; every later one exits at once.
        let script = try folder.write("server.sh", """
            #!/bin/sh
            if [ -e "$1" ]; then exit 3; fi
            touch "$1"
            exec \(systemPython) -c "$2"
            """, executable: true)
        let up = try UpProcess(["--listen", "127.0.0.1:0", "--ready", "notify", "--", script, folder.path + "/started", Self.holder], folder: folder)
        _ = try up.servingAddress()
        let result = try capture([portreuse, "up", "reload", "--json", "--pid-file", up.pidFile], timeout: 60)
        #expect(result.status == 1)
        let report = try #require(try JSONSerialization.jsonObject(with: Data(result.output.utf8)) as? [String: Any], "\(result.output)")
        #expect(report["result"] as? String == "failed")
        #expect((report["reason"] as? String)?.contains("exited before it was ready") == true, "\(report)")
        #expect(report["connectionsOnOlderGenerations"] == nil)
        #expect(up.stop() == 0, "\(up.logText)")
    }

    @Test("a reload whose program cannot even start (removed since): up reload fails at once with the reason, the old generation serves on")
    func reloadThatCannotStart() throws {
        let folder = try TemporaryFolder()
        let script = try folder.write("server.sh", "#!/bin/sh\nexec \(systemPython) -c \"$1\"\n", executable: true)
        let up = try UpProcess(["--listen", "127.0.0.1:0", "--ready", "notify", "--", script, Self.holder], folder: folder)
        _ = try up.servingAddress()
        #expect(unlink(script) == 0)
        let started = Processes.monotonicNanoseconds
        let result = try capture([portreuse, "up", "reload", "--json", "--pid-file", up.pidFile], timeout: 60)
        #expect(result.status == 1, "\(result.output)\(result.stderr)")
        #expect(Processes.monotonicNanoseconds - started < 20_000_000_000, "the outcome comes at once, not after up reload's timeout")
        let report = try #require(try JSONSerialization.jsonObject(with: Data(result.output.utf8)) as? [String: Any], "\(result.output)")
        #expect(report["result"] as? String == "failed")
        #expect((report["reason"] as? String)?.contains("could not start") == true, "\(report)")
        #expect(up.status?.serving.map(\.number) == [1], "\(up.logText)")
        #expect(up.stop() == 0, "\(up.logText)")
    }
}
