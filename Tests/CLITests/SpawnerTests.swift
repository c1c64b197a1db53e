import Foundation
import Glibc
import PortReuse
import PortReuseTools
import TestSupport
import Testing
import PortReuseSystem
import PortReuseInterception

/// `up`'s and `portreuse run`'s spawn (`csystem_spawn`): what the program finds in its process when it
/// starts, with no trampoline between them and it, and what a start that cannot happen leaves.
@Suite("up's and run's spawn: the program's process as it starts")
struct SpawnerTests {
    /// Prints what the process was given, one `key value` a line, then exits.
    static let reporter = """
        import os, signal
        print("pid", os.getpid())
        print("listen_pid", os.environ.get("LISTEN_PID", "-"))
        print("stale", os.environ.get("STALE", "-"))
        print("group", os.getpgid(0))
        print("descriptors", ",".join(sorted(os.listdir("/proc/self/fd"), key=int)[:-1]))  # the last: listdir's own
        print("stdin", os.readlink("/proc/self/fd/0"))
        print("fd3", os.readlink("/proc/self/fd/3"))
        status = dict(line.split(":\\t", 1) for line in open("/proc/self/status").read().splitlines() if ":\\t" in line)
        print("blocked", status["SigBlk"].strip())
        print("ignored", status["SigIgn"].strip())
        print("seccomp", status["Seccomp"].strip())
        """

    func run(filter: Bool) throws -> (fields: [String: String], notification: Descriptor?) {
        let pipe = try Files.pipe()
        defer { Files.close(pipe.read) }
        // A socket of ours at a high number, as up keeps them; the program must get it as 3 and nothing else.
        let listener = try Listener(tcp: "127.0.0.1:0", policy: .exclusive)
        let held = Descriptor(fcntl(try #require(listener.descriptor), F_DUPFD_CLOEXEC, 200))
        defer { Files.close(held) }
        // SIGHUP ignored and SIGUSR1 blocked here: the program must not inherit either. (Python itself ignores
        // SIGPIPE and SIGXFSZ, so the test looks at SIGHUP alone.)
        let previous = signal(SIGHUP, SIG_IGN)
        defer { signal(SIGHUP, previous) }
        var block = sigset_t(), old = sigset_t()
        sigemptyset(&block)
        sigaddset(&block, SIGUSR1)
        pthread_sigmask(SIG_BLOCK, &block, &old)
        defer { pthread_sigmask(SIG_SETMASK, &old, nil) }
        let environment = ["PATH=/usr/bin:/bin", "LISTEN_PID=1", "STALE=kept"]
        let pid: pid_t
        var notification: Descriptor?
        if filter {
            switch try Spawner.spawnIntercepted(
                [systemPython, "-c", Self.reporter], environment: environment, descriptors: [held], setListenPID: true, output: pipe.write)
            {
            case .started(let started, let descriptor):
                (pid, notification) = (started, descriptor)
            case .refused(let code):
                Issue.record("the kernel refused the filter: \(code)")
                return ([:], nil)
            case .failed(let reason):
                Issue.record("\(reason)")
                return ([:], nil)
            }
        } else {
            pid = try Spawner.spawn([systemPython, "-c", Self.reporter], environment: environment, descriptors: [held], setListenPID: true, output: pipe.write)
        }
        Files.close(pipe.write)
        let status = try Processes.wait(pid, noHang: false)
        #expect(status?.status.raw == 0, "\(String(describing: status))")
        let fields = Self.fields(Files.read(descriptor: pipe.read, limit: 1 << 16) ?? [])
        #expect(fields["fd3"] == "socket:[\(GenerationProbe.inode(of: held))]")
        return (fields, notification)
    }

    /// The `key value` lines a program printed.
    static func fields(_ output: [UInt8]) -> [String: String] {
        var fields: [String: String] = [:]
        for line in String(decoding: output, as: UTF8.self).split(separator: "\n") {
            let parts = line.split(separator: " ", maxSplits: 1).map(String.init)
            if parts.count == 2 { fields[parts[0]] = parts[1] }
        }
        return fields
    }

    @Test("without the filter: only stdin, stdout, stderr and the socket at 3; an empty mask, SIGHUP not ignored, a group of its own, LISTEN_PID its pid")
    func plain() throws {
        let (fields, _) = try run(filter: false)
        #expect(fields["descriptors"] == "0,1,2,3", "\(fields)")
        #expect(fields["stdin"] == "/dev/null")
        #expect(fields["listen_pid"] == fields["pid"] && fields["pid"] != nil, "\(fields)")
        #expect(fields["group"] == fields["pid"])
        #expect(fields["stale"] == "kept")
        #expect(fields["blocked"] == "0000000000000000")
        #expect(fields["ignored"].flatMap { UInt64($0, radix: 16) }.map { $0 & 1 == 0 } == true, "SIGHUP ignored: \(fields)")
        #expect(fields["seccomp"] == "0")
    }

    @Test("under the bind filter: the same process, in seccomp filter mode, and up holds the notification descriptor",
          .enabled(if: KernelRun.unsupportedReason() == nil, "no seccomp user notification here"))
    func filtered() throws {
        let (fields, notification) = try run(filter: true)
        let descriptor = try #require(notification)
        defer { Files.close(descriptor) }
        #expect(fcntl(descriptor.rawValue, F_GETFD) & FD_CLOEXEC != 0)
        #expect(fields["seccomp"] == "2", "\(fields)")
        #expect(fields["listen_pid"] == fields["pid"] && fields["pid"] != nil, "\(fields)")
        #expect(fields["descriptors"] == "0,1,2,3", "the report socket and the notification descriptor must not reach the program: \(fields)")
    }

    @Test("portreuse run's start (foreground): the caller's group, stdin and descriptors that are not close-on-exec, argv[0] as given, under the filter",
          .enabled(if: KernelRun.unsupportedReason() == nil, "no seccomp user notification here"))
    func foreground() throws {
        let pipe = try Files.pipe()
        defer { Files.close(pipe.read) }
        let ours = try Files.pipe()  // both close-on-exec
        defer { Files.close(ours.read); Files.close(ours.write) }
        let inherited = Descriptor(fcntl(ours.read.rawValue, F_DUPFD, 300))  // not close-on-exec: it passes on, as through an exec
        defer { Files.close(inherited) }
        let script = """
            import os
            print("argv0", open("/proc/self/cmdline").read().split("\\0")[0])
            print("group", os.getpgid(0))
            print("stdin", os.readlink("/proc/self/fd/0"))
            for name, fd in (("inherited", \(inherited)), ("closeonexec", \(ours.write))):
                print(name, os.readlink(f"/proc/self/fd/{fd}") if os.path.exists(f"/proc/self/fd/{fd}") else "-")
            status = dict(line.split(":\\t", 1) for line in open("/proc/self/status").read().splitlines() if ":\\t" in line)
            print("seccomp", status["Seccomp"].strip())
            """
        let start = try Spawner.start(
            ["reporter", "-c", script], path: systemPython, environment: ["PATH=/usr/bin:/bin"], output: pipe.write,
            filter: InterceptionRules(policy: .shared).systemCalls, attachment: .foreground)
        Files.close(pipe.write)
        guard case .started(let pid, let notification) = start else {
            Issue.record("\(start)")
            return
        }
        let descriptor = try #require(notification)
        defer { Files.close(descriptor) }
        let status = try Processes.wait(pid, noHang: false)
        #expect(status?.status.raw == 0, "\(String(describing: status))")
        let fields = Self.fields(Files.read(descriptor: pipe.read, limit: 1 << 16) ?? [])
        #expect(fields["argv0"] == "reporter", "\(fields)")
        #expect(fields["group"] == "\(getpgid(0))", "\(fields)")
        #expect(fields["stdin"] == (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/fd/0")), "\(fields)")
        #expect(fields["inherited"] == (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/fd/\(inherited)")), "\(fields)")
        #expect(fields["closeonexec"] == "-", "\(fields)")
        #expect(fields["seccomp"] == "2", "\(fields)")
    }

    @Test("a program that cannot be executed, or a descriptor in the way of the mapping: a clear error")
    func refused() throws {
        do {
            let pid = try Spawner.spawn(["/nonexistent/program"], environment: [], descriptors: [], setListenPID: false)
            Issue.record("started \(pid)")
        } catch {
            #expect(error.message.contains("/nonexistent/program") && error.message.contains("No such file"), "\(error.message)")
        }
        do {
            let pid = try Spawner.spawn(["/bin/true"], environment: [], descriptors: [.standardOutput], setListenPID: false)
            Issue.record("started \(pid)")
        } catch {
            #expect(error.message.contains("below 4"), "\(error.message)")
        }
    }
}
