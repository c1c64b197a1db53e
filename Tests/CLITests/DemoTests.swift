import Foundation
import Glibc
import PortReuse
import PortReuseTools
import TestSupport
import Testing
import PortReuseSystem

/// `portreuse demo`, run whole with small settings: the figures it prints, its text when piped, bad input,
/// and Ctrl-C stopping everything it started.
@Suite("portreuse demo")
struct DemoTests {
    let portreuse = productsFolder + "/portreuse"

    /// The parsed `--json` line.
    private func object(_ text: String) throws -> [String: Any] {
        let line = try #require(text.split(separator: "\n").last.map(String.init))
        return try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any], "not JSON: \(text)")
    }

    @Test("--json: every worker got connections, the restarts through up lost nothing, the naive ones are counted")
    func figures() throws {
        let (status, output) = try run([portreuse, "demo", "--workers", "3", "--seconds", "1.5", "--restarts", "2", "--clients", "4", "--json"], timeout: 60)
        #expect(status == 0, "\(output)")
        let figures = try object(output)
        #expect(figures["schema"] as? String == "portreuse.demo/1")
        #expect(figures["passed"] as? Bool == true)

        let pain = try #require(figures["pain"] as? [String: Any])
        let exclusive = try #require(pain["exclusive"] as? [String: Any])
        #expect(exclusive["rebound"] as? Bool == false)
        #expect(exclusive["errno"] as? String == "EADDRINUSE")
        #expect((exclusive["error"] as? String)?.contains("TIME-WAIT") == true)
        // The old server was exclusive too: restartable alone on the new one would not bind; the advice says so.
        #expect((exclusive["error"] as? String)?.contains("if the server that made them set it too") == true, "\(exclusive)")
        #expect((pain["restartable"] as? [String: Any])?["rebound"] as? Bool == true)

        let sharing = try #require(figures["sharing"] as? [String: Any])
        let workers = try #require(sharing["workers"] as? [[String: Any]])
        #expect(workers.count == 3)
        for worker in workers { #expect((worker["connections"] as? Int ?? 0) > 0, "\(worker)") }
        #expect(Set(workers.compactMap { $0["pid"] as? Int }).count == 3)
        #expect(sharing["failed"] as? Int == 0)
        #expect(sharing["unchangedProgramsShared"] as? Bool == (Spawner.filterRefusal() == nil ? true : nil), "\(sharing)")

        let zeroDowntime = try #require(figures["zeroDowntime"] as? [String: Any])
        let up = try #require(zeroDowntime["up"] as? [String: Any])
        #expect((up["sent"] as? Int ?? 0) > 0)
        #expect(up["failed"] as? Int == 0, "\(up)")
        #expect(up["reloadsFailed"] as? Int == 0)
        #expect((up["reloadMilliseconds"] as? [Int])?.count == 2)
        #expect((up["servedBy"] as? Int ?? 0) >= 4, "the new generations' workers must have served too: \(up)")
        // The headline: the worker bound the port itself, and each of the 3 generations' 2 workers got up's socket.
        if Spawner.filterRefusal() == nil {
            #expect(up["swappedBinds"] as? Int == 6, "\(up)")
        } else {
            #expect(up["swappedBinds"] is NSNull, "\(up)")
        }
        let naive = try #require(zeroDowntime["naive"] as? [String: Any])
        #expect((naive["sent"] as? Int ?? 0) > 0)
        #expect(naive["failed"] is Int)
        #expect(naive["errors"] is [String: Any])
        #expect((naive["downMilliseconds"] as? [Int])?.count == 2)
        #expect(naive["reloadsFailed"] == nil && naive["servedBy"] == nil, "nothing reloads the naive worker: \(naive)")
    }

    @Test("piped, the demo prints plain text: the four parts, a bar per worker, who's report, the table")
    func plainText() throws {
        let (status, output) = try run([portreuse, "demo", "--workers", "2", "--seconds", "1", "--restarts", "1", "--clients", "4"], timeout: 60)
        #expect(status == 0, "\(output)")
        #expect(!output.contains("\u{1B}"), "escape codes in piped output")
        for text in ["1. The pain", "address already in use (EADDRINUSE)", "2. Sharing", "shared by 2 processes of user",
                     "3. Zero downtime", "portreuse up (SIGHUP)", "naive stop-then-start", "4. Summary", "no request lost"] {
            #expect(output.contains(text), "missing \"\(text)\" in:\n\(output)")
        }
        #expect(output.split(separator: "\n").filter { $0.hasPrefix("  worker ") && $0.contains("#") }.count == 2, "\(output)")

        // docs/demo.md's sample run has the same parts, in the same words.
        let section = try String(contentsOfFile: packageRoot + "/docs/demo.md", encoding: .utf8)
        let sample = try #require(section.components(separatedBy: "```text\n").dropFirst().first?.components(separatedBy: "```").first)
        let headings = sample.split(separator: "\n").filter { $0.first?.isNumber == true && $0.dropFirst().hasPrefix(". ") }
        #expect(headings.count == 4, "\(sample)")
        for heading in headings {
            let words = heading.split(separator: ":").first.map(String.init) ?? ""
            #expect(output.contains(words), "docs/demo.md's sample says \"\(heading)\", the demo no longer does")
        }
        for text in ["swift run portreuse demo", "--workers", "--seconds", "--json"] { #expect(section.contains(text)) }
    }

    @Test("bad input names the option and the accepted range, exits 64, starts nothing", arguments: [
        (["--workers", "0"], "--workers 0: give 1 to 32"),
        (["--seconds", "0"], "--seconds 0.0: give 0.5 to 60"),
        (["--restarts", "100"], "--restarts 100: give 1 to 50"),
    ])
    func badInput(arguments: [String], message: String) throws {
        let (status, output) = try run(["/bin/sh", "-c", "exec \"$0\" \"$@\" 2>&1", portreuse, "demo"] + arguments)
        #expect(status == 64)
        #expect(output.contains(message), "\(output)")
    }

    @Test("Ctrl-C stops the workers it started and exits 130")
    func interrupted() throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("demo-test-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let log = folder + "/out"
        let pid = try spawn([portreuse, "demo", "--workers", "2", "--seconds", "20"], log: log)
        var reaped = false
        defer { if !reaped { killAndReap(pid) } }
        // Wait until the workers are up: "2 processes each bound 127.0.0.1:PORT".
        let port = waitFor(timeout: 15, interval: 0.05) { () -> String? in
            let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
            return text.components(separatedBy: "each bound 127.0.0.1:").dropFirst().first?.prefix { $0.isNumber }.description
        }
        let found = try #require(port, "the demo never started its workers")
        let workers = processes(containing: "127.0.0.1:\(found)")
        #expect(workers.count == 2, "\(workers)")
        kill(pid, SIGINT)
        let status = reap(pid, timeout: 15)
        reaped = status != nil
        #expect(reaped, "the demo did not exit within 15 s of SIGINT")
        #expect(status?.code == 130)
        #expect(processes(containing: "127.0.0.1:\(found)").isEmpty, "workers left behind")
        let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
        #expect(text.contains("interrupted by SIGINT; stopped everything it started"), "\(text)")
    }

    @Test("kill -9 of the demo while its up serves: up and every worker stop, nothing serves on as an orphan")
    func killedDemoLeavesNothing() throws {
        let folder = try TemporaryFolder()
        let pid = try spawn([portreuse, "demo", "--workers", "2", "--seconds", "20"], log: folder.path + "/out")
        var reaped = false
        defer { if !reaped { killAndReap(pid) } }
        func commandLine(_ child: pid_t) -> [String] {
            (FileManager.default.contents(atPath: "/proc/\(child)/cmdline") ?? Data()).split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
        }
        // Once up runs (its generation too), everything below the demo is what must go with it.
        let started = waitFor(timeout: 60, interval: 0.05) { () -> [pid_t]? in
            let below = Processes.descendants(of: pid).map(\.pid)
            let hasUp = below.contains { commandLine($0).dropFirst().first == "up" }
            return hasUp && below.count >= 3 ? below : nil
        }
        let below = try #require(started, "the demo never started up")
        kill(pid, SIGKILL)
        reaped = reap(pid, timeout: 10) != nil
        let gone = waitUntil(timeout: 20) { below.allSatisfy { Processes.stat(of: $0).map { $0.state == "Z" } ?? true } }
        #expect(gone, "left running: \(below.filter { Processes.stat(of: $0) != nil }.map { "\($0): \(commandLine($0).joined(separator: " "))" })")
    }

    /// Pids whose command line contains `text` (the demo's workers name their port).
    private func processes(containing text: String) -> [Int32] {
        ((try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []).compactMap { entry in
            guard let pid = Int32(entry), let data = FileManager.default.contents(atPath: "/proc/\(entry)/cmdline") else { return nil }
            let line = String(decoding: data.map { $0 == 0 ? 32 : $0 }, as: UTF8.self)
            return line.contains("demo-worker") && line.contains(text) ? pid : nil
        }
    }
}
