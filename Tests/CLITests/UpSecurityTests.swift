import Foundation
import Glibc
import PortReuse
import PortReuseTools
import TestSupport
import Testing
import PortReuseSystem

/// What an attacker (user nobody) tried on main, each refused now: planted symlinks, pid files that name
/// other processes, state files that are not `up`'s.
@Suite("up: pid files, status files and signals are safe")
struct UpSecurityTests {
    static let nobody = ["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]

    /// A root-owned 0600 file the attacker wants overwritten.
    static func victim(in folder: TemporaryFolder) throws -> String {
        let path = try folder.write("victim", "secret\n")
        chmod(path, 0o600)
        return path
    }

    static func content(_ path: String) -> String? { try? String(contentsOfFile: path, encoding: .utf8) }

    @Test("a pid file in a folder another user owns is refused, and the symlink planted there is not followed",
          .needsRoot("a folder of user nobody beside a file of root"))
    func pidFileInForeignFolder() throws {
        let folder = try TemporaryFolder()
        chmod(folder.path, 0o755)
        let victim = try Self.victim(in: folder)
        let theirs = folder.path + "/nobody"
        mkdir(theirs, 0o755)
        chown(theirs, 65534, 65534)
        let planted = try capture(Self.nobody + ["/bin/ln", "-s", victim, theirs + "/app.pid"])
        #expect(planted.status == 0, "\(planted.stderr)")
        let up = try capture([portreuse, "up", "--listen", "127.0.0.1:0", "--pid-file", theirs + "/app.pid", "--", "/bin/sleep", "30"], timeout: 30)
        #expect(up.status == 1, "\(up.stderr)")
        #expect(up.stderr.contains("cannot write the pid file \(theirs)/app.pid"), "\(up.stderr)")
        #expect(up.stderr.contains("belongs to uid 65534"), "\(up.stderr)")
        #expect(Self.content(victim) == "secret\n", "root's file was overwritten")
        #expect(Files.list(theirs) == ["app.pid"], "nothing else was written there")
    }

    @Test("in a sticky shared folder (as /tmp) a planted pid-file symlink is replaced, never followed",
          .needsRoot("a symlink of user nobody in a sticky folder"))
    func plantedSymlinkInStickyFolder() throws {
        let folder = try TemporaryFolder()
        chmod(folder.path, 0o755)
        let victim = try Self.victim(in: folder)
        let shared = folder.path + "/shared"
        mkdir(shared, 0o777)
        chmod(shared, 0o1777)
        let planted = try capture(Self.nobody + ["/bin/ln", "-s", victim, shared + "/app.pid"])
        #expect(planted.status == 0, "\(planted.stderr)")
        let upFolder = try TemporaryFolder()
        let log = upFolder.path + "/up.log"
        let pid = try spawn([portreuse, "up", "--listen", "127.0.0.1:0", "--pid-file", shared + "/app.pid", "--", "/bin/sleep", "30"], log: log)
        defer { killAndReap(pid) }
        #expect(waitUntil(timeout: 30) { Files.status(of: shared + "/app.pid.status", following: true) != nil }, "\(Self.content(log) ?? "")")
        #expect(Self.content(victim) == "secret\n", "root's file was overwritten")
        var info = stat()
        #expect(lstat(shared + "/app.pid", &info) == 0 && info.st_mode & S_IFMT == S_IFREG, "the pid file is a file of up's now")
        #expect(Self.content(shared + "/app.pid") == "\(pid)\n")
        kill(pid, SIGTERM)
        #expect(reap(pid, timeout: 30)?.shellStatus == 0)
    }

    /// A pid file and a status file as an attacker would write them, naming `target`.
    static func forgedPIDFile(naming target: pid_t, in folder: TemporaryFolder) throws -> String {
        let pidFile = try folder.write("up.pid", "\(target)\n")
        var record = SupervisorRecord()
        record.nextNumber = 2
        let status = UpStatus(pid: target, processStartTime: nil, command: ["x"], startedAt: 0, sockets: [], record: record, writtenAt: 0)
        try status.write(to: UpStatus.path(forPIDFile: pidFile))
        return pidFile
    }

    @Test("up upgrade and up reload never signal a process that is not portreuse up, whoever wrote the pid file",
          .needsRoot("a process of user nobody"))
    func pidFileNamingOtherProcess() throws {
        let folder = try TemporaryFolder()
        let rootSleeper = try spawn(["/bin/sleep", "60"], log: folder.path + "/sleep.log")
        defer { killAndReap(rootSleeper) }
        let nobodySleeper = try spawn(Self.nobody + ["/bin/sleep", "60"], log: folder.path + "/nobody.log")
        defer { killAndReap(nobodySleeper) }
        #expect(waitUntil(timeout: 10) { KernelTables.processInfo(pid: nobodySleeper).uid == 65534 })

        for (target, words) in [(rootSleeper, "is not portreuse up"), (nobodySleeper, "runs as uid 65534")] {
            let pidFile = try Self.forgedPIDFile(naming: target, in: folder)
            for request in ["upgrade", "reload"] {
                let answer = try capture([portreuse, "up", request, "--pid-file", pidFile], timeout: 30)
                #expect(answer.status == 1, "\(request): \(answer.stderr)")
                #expect(answer.stderr.contains(words) && answer.stderr.contains("not signalled"), "\(request): \(answer.stderr)")
            }
            #expect(Processes.stat(of: target).map { $0.state != "Z" } == true, "pid \(target) was signalled")
        }
    }

    @Test("a stale pid file that names an unrelated process is replaced, and up starts")
    func stalePIDFile() throws {
        let folder = try TemporaryFolder()
        let sleeper = try spawn(["/bin/sleep", "60"], log: folder.path + "/sleep.log")
        defer { killAndReap(sleeper) }
        _ = try Self.forgedPIDFile(naming: sleeper, in: folder)
        let up = try UpProcess(["--listen", "127.0.0.1:0", "--", "/bin/sleep", "30"], folder: folder)
        #expect(up.waitForStatus { $0.pid == up.pid } != nil, "\(up.logText)")
        #expect(up.waitForLog("replacing the stale pid file"), "\(up.logText)")
        #expect(Self.content(up.pidFile) == "\(up.pid)\n")
        #expect(up.stop() == 0, "\(up.logText)")
    }

    @Test("PORTREUSE_UP_STATE naming a file up cannot read: a clear error, and the file is left alone")
    func unreadableState() throws {
        let folder = try TemporaryFolder()
        let notState = try folder.write("precious.txt", "not a state file\n")
        let up = try capture(
            [portreuse, "up", "--listen", "127.0.0.1:0", "--", "/bin/sleep", "5"],
            environment: ProcessInfo.processInfo.environment.merging(["PORTREUSE_UP_STATE": notState]) { $1 }, timeout: 30)
        #expect(up.status != 0)
        #expect(up.stderr.contains("cannot read the state of the previous portreuse up"), "\(up.stderr)")
        #expect(Self.content(notState) == "not a state file\n", "the file was deleted")
    }
}

extension UpSecurityTests {
    @Test("copies of a root up's pid and status files planted by user nobody: up reload refuses them and signals nothing",
          .needsRoot("files of user nobody beside a root up"))
    func plantedPidFileCopies() throws {
        let up = try UpProcess(["--listen", "127.0.0.1:0", "--", hello])
        _ = try up.servingAddress()
        let folder = try TemporaryFolder()
        chmod(folder.path, 0o1777)  // sticky and shared, as /tmp
        let copy = folder.path + "/copy.pid"
        // Copies as user nobody would make them (up's own folder is private, so they are made here and given to nobody).
        for (source, target) in [(up.pidFile, copy), (UpStatus.path(forPIDFile: up.pidFile), UpStatus.path(forPIDFile: copy))] {
            try #require(FileManager.default.createFile(atPath: target, contents: FileManager.default.contents(atPath: source)))
            try #require(chown(target, 65534, 65534) == 0)
        }
        let reload = try capture([portreuse, "up", "reload", "--pid-file", copy], timeout: 30)
        #expect(reload.status == 1, "\(reload.stdout)\(reload.stderr)")
        #expect(reload.stderr.contains("belongs to uid 65534") && reload.stderr.contains("nothing signalled"), "\(reload.stderr)")
        #expect(up.status?.generations.map(\.number) == [1], "the up was not reloaded: \(up.logText)")
        // Its own files still work.
        #expect(try capture([portreuse, "up", "reload", "--pid-file", up.pidFile], timeout: 60).status == 0, "\(up.logText)")
        #expect(up.stop() == 0)
    }

    @Test("a TMPDIR other users may write into and that is not sticky: up refuses to keep its private folder there (exit 3)")
    func unsafeRuntimeFolder() throws {
        let folder = try TemporaryFolder()
        let open = folder.path + "/open"
        mkdir(open, 0o777)
        chmod(open, 0o777)
        let up = try capture([portreuse, "up", "--listen", "127.0.0.1:0", "--", "/bin/sleep", "5"], environment: environment(["TMPDIR": open]), timeout: 30)
        #expect(up.status == 3, "\(up.stderr)")
        #expect(up.stderr.contains("\(open) (TMPDIR)") && up.stderr.contains("not sticky"), "\(up.stderr)")
        #expect(Files.list(open).isEmpty, "nothing was created there")
    }

    @Test("up reload --timeout is the client's: it returns within it (exit 124) while up goes on with a slow start")
    func reloadTimeoutIsTheClients() throws {
        let folder = try TemporaryFolder()
        let marker = folder.path + "/started"
        // The first generation is ready at once; every later one only after 8 s.
        let script = try folder.write("slow.sh", "#!/bin/sh\nif [ -e \(marker) ]; then sleep 8; fi\ntouch \(marker)\nexec \(hello)\n", executable: true)
        let up = try UpProcess(["--listen", "127.0.0.1:0", "--ready", "notify", "--", script])
        _ = try up.servingAddress()
        let started = Date()
        let reload = try capture([portreuse, "up", "reload", "--timeout", "1s", "--pid-file", up.pidFile], timeout: 30)
        let waited = Date().timeIntervalSince(started)
        #expect(reload.status == 124, "\(reload.stdout)\(reload.stderr)")
        #expect(waited < 4, "waited \(waited) s for a --timeout of 1 s")
        #expect(reload.stderr.contains("goes on with it"), "\(reload.stderr)")
        #expect(up.waitForStatus(timeout: 30) { $0.serving.map(\.number) == [2] } != nil, "up finished the reload: \(up.logText)")
        #expect(up.stop() == 0)
    }
}
