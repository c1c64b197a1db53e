import Foundation
import Glibc
import PortReuse
import TestSupport
import Testing

// What `portreuse run --intercept kernel` does on a program's behalf runs with portreuse's credentials (issue 27,
// items 1 and 2): a program gets exactly what it could get by itself, and portreuse acts on the very process that
// made the call, never on one that took its thread id. Each test runs in namespaces of its own (`unshare`), so
// that ports below 1024 and a small pid_max touch nothing else.

/// `deputy [drop] MODE`: drops to user nobody first when asked (setresgid/setresuid, as a server does after it
/// starts, with no capability left), then:
/// - `bind PORT`: binds TCP 127.0.0.1:PORT; prints `bind ERRNO port BOUND`.
/// - `source`: listens on 127.0.0.1:0, connects a second socket to it; prints `connect ERRNO from LOCALPORT`.
/// - `transparent`: binds TCP 192.0.2.1:8080 (not a local address); prints `transparent ERRNO`.
private let deputy = """
    #include <arpa/inet.h>
    #include <errno.h>
    #include <netinet/in.h>
    #include <stdio.h>
    #include <stdlib.h>
    #include <string.h>
    #include <sys/socket.h>
    #include <unistd.h>

    static struct sockaddr_in address(const char *ip, int port) {
        struct sockaddr_in a;
        memset(&a, 0, sizeof a);
        a.sin_family = AF_INET;
        a.sin_port = htons(port);
        inet_pton(AF_INET, ip, &a.sin_addr);
        return a;
    }
    static int port_of(int s) {
        struct sockaddr_in a;
        socklen_t l = sizeof a;
        return getsockname(s, (struct sockaddr *)&a, &l) == 0 ? ntohs(a.sin_port) : -1;
    }
    int main(int argc, char **argv) {
        int i = 1;
        if (strcmp(argv[i], "drop") == 0) {
            if (setresgid(65534, 65534, 65534) != 0 || setresuid(65534, 65534, 65534) != 0) { perror("drop"); return 2; }
            i++;
        }
        if (strcmp(argv[i], "bind") == 0) {
            int s = socket(AF_INET, SOCK_STREAM, 0);
            struct sockaddr_in a = address("127.0.0.1", atoi(argv[i + 1]));
            int r = bind(s, (struct sockaddr *)&a, sizeof a);
            printf("bind %d port %d\\n", r == 0 ? 0 : errno, port_of(s));
        } else if (strcmp(argv[i], "source") == 0) {
            int listener = socket(AF_INET, SOCK_STREAM, 0);
            struct sockaddr_in a = address("127.0.0.1", 0);
            if (bind(listener, (struct sockaddr *)&a, sizeof a) != 0 || listen(listener, 8) != 0) { perror("listener"); return 2; }
            a.sin_port = htons(port_of(listener));
            int client = socket(AF_INET, SOCK_STREAM, 0);
            int r = connect(client, (struct sockaddr *)&a, sizeof a);
            printf("connect %d from %d\\n", r == 0 ? 0 : errno, port_of(client));
        } else if (strcmp(argv[i], "transparent") == 0) {
            int s = socket(AF_INET, SOCK_STREAM, 0);
            struct sockaddr_in a = address("192.0.2.1", 8080);
            int r = bind(s, (struct sockaddr *)&a, sizeof a);
            printf("transparent %d\\n", r == 0 ? 0 : errno);
        }
        return 0;
    }
    """

/// Under `run --bind 127.0.0.1:PORT`: a thread binds a socket (portreuse caches a pidfd for its thread id) and
/// exits; the process keeps an unrelated, unbound socket at descriptor 50 and forks until a child gets the
/// thread's old id as its pid (in a pid namespace with a small pid_max); that child binds its own socket at
/// descriptor 50. Prints `child PORT` (where the child's socket is bound), then `parent PORT` (the process's
/// own socket at 50), or `no reuse` when no child got the id within 3000 forks.
private let reuserProgram = """
    #define _GNU_SOURCE
    #include <arpa/inet.h>
    #include <netinet/in.h>
    #include <pthread.h>
    #include <stdio.h>
    #include <string.h>
    #include <sys/socket.h>
    #include <sys/syscall.h>
    #include <sys/wait.h>
    #include <unistd.h>

    static pid_t thread_id;
    static int bind_any(int s) {
        struct sockaddr_in a;
        memset(&a, 0, sizeof a);
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        return bind(s, (struct sockaddr *)&a, sizeof a);
    }
    static int port_of(int s) {
        struct sockaddr_in a;
        socklen_t l = sizeof a;
        return getsockname(s, (struct sockaddr *)&a, &l) == 0 ? ntohs(a.sin_port) : -1;
    }
    static void *thread(void *unused) {
        thread_id = (pid_t)syscall(SYS_gettid);
        int s = socket(AF_INET, SOCK_STREAM, 0);
        bind_any(s);
        close(s);
        return NULL;
    }
    int main(void) {
        pthread_t t;
        pthread_create(&t, NULL, thread, NULL);
        pthread_join(t, NULL);
        dup2(socket(AF_INET, SOCK_STREAM, 0), 50);
        int pipe_ends[2];
        pipe(pipe_ends);
        for (int i = 0; i < 3000; i++) {
            pid_t child = fork();
            if (child == 0) {
                if (getpid() != thread_id) _exit(0);
                dup2(socket(AF_INET, SOCK_STREAM, 0), 50);
                bind_any(50);
                dprintf(pipe_ends[1], "child %d\\n", port_of(50));
                _exit(0);
            }
            waitpid(child, NULL, 0);
            if (child == thread_id) {
                char line[64] = {0};
                read(pipe_ends[0], line, sizeof line - 1);
                printf("%sparent %d\\n", line, port_of(50));
                return 0;
            }
        }
        printf("no reuse\\n");
        return 0;
    }
    """

@Suite("run --intercept kernel acts only as the program may, on the very caller", .serialized)
struct InterceptPrivilegeTests {
    /// `source` built static (the kernel path's own case: the shim cannot reach it) into a folder user nobody can
    /// read; the folder (kept until the test ends) and the program's path.
    private func build(_ source: String, named name: String) throws -> (TemporaryFolder, String) {
        let folder = try TemporaryFolder()
        chmod(folder.path, 0o755)
        let file = try folder.write(name + ".c", source)
        let built = try capture([gcc!, "-static", "-O1", "-pthread", "-o", folder.path + "/" + name, file])
        try #require(built.status == 0, "gcc -static \(name): \(built.stderr)")
        return (folder, folder.path + "/" + name)
    }

    /// `portreuse run --intercept kernel OPTIONS -- PROGRAM…` in a network namespace of its own with loopback up
    /// (after `setup`, shell commands run there first); its stdout, and its stderr.
    private func inNamespace(_ options: [String], _ program: [String], setup: String = "") throws -> (output: String, stderr: String) {
        let script = "ip link set lo up && \(setup.isEmpty ? "" : setup + " && ")exec \"$@\""
        let result = try capture(["/usr/bin/unshare", "-n", "/bin/sh", "-c", script, "sh", portreuse, "run", "--intercept", "kernel"]
            + options + ["--"] + program, timeout: 30)
        return (result.output, result.stderr)
    }

    @Test("--bind to a port below 1024: EACCES for a program that dropped to nobody, as without portreuse; root's still bound",
          .needsRoot("a network namespace of its own (unshare -n)"), .enabled(if: gcc != nil, "gcc is missing"))
    func privilegedBindRewrite() throws {
        let (folder, deputy) = try build(deputy, named: "deputy")
        defer { withExtendedLifetime(folder) {} }
        let dropped = try inNamespace(["--bind", ":81"], [deputy, "drop", "bind", "8080"])
        #expect(dropped.output == "bind \(EACCES) port 0\n", "\(dropped.stderr)")
        #expect(dropped.stderr.contains("refused with EACCES") && dropped.stderr.contains("CAP_NET_BIND_SERVICE"), "\(dropped.stderr)")
        // The same program binding port 81 by itself gets what portreuse now answers.
        let alone = try capture(["/usr/bin/unshare", "-n", "/bin/sh", "-c", "ip link set lo up && exec \"$@\"", "sh", deputy, "drop", "bind", "81"])
        #expect(alone.output == "bind \(EACCES) port 0\n")
        let root = try inNamespace(["--bind", ":81"], [deputy, "bind", "8080"])
        #expect(root.output == "bind 0 port 81\n", "\(root.stderr)")
        let unprivileged = try inNamespace(["--bind", ":8081"], [deputy, "drop", "bind", "8080"])
        #expect(unprivileged.output == "bind 0 port 8081\n", "\(unprivileged.stderr)")
        // The namespace's own setting is read: with the privileged range starting at 80, port 81 is anyone's.
        let lowered = try inNamespace(["--bind", ":81"], [deputy, "drop", "bind", "8080"], setup: "sysctl -qw net.ipv4.ip_unprivileged_port_start=80")
        #expect(lowered.output == "bind 0 port 81\n", "\(lowered.stderr)")
    }

    @Test("--source with a port below 1024: the connect of a program that dropped to nobody fails with EACCES",
          .needsRoot("a network namespace of its own (unshare -n)"), .enabled(if: gcc != nil, "gcc is missing"))
    func privilegedSource() throws {
        let (folder, deputy) = try build(deputy, named: "deputy")
        defer { withExtendedLifetime(folder) {} }
        let dropped = try inNamespace(["--source", "127.0.0.1:99"], [deputy, "drop", "source"])
        #expect(dropped.output == "connect \(EACCES) from 0\n", "\(dropped.stderr)")
        let root = try inNamespace(["--source", "127.0.0.1:99"], [deputy, "source"])
        #expect(root.output == "connect 0 from 99\n", "\(root.stderr)")
    }

    @Test("--transparent: no IP_TRANSPARENT for a program without CAP_NET_RAW, so its non-local bind fails as alone",
          .needsRoot("a network namespace of its own (unshare -n)"), .enabled(if: gcc != nil, "gcc is missing"))
    func transparentNeedsCapability() throws {
        let (folder, deputy) = try build(deputy, named: "deputy")
        defer { withExtendedLifetime(folder) {} }
        let dropped = try inNamespace(["--transparent"], [deputy, "drop", "transparent"])
        #expect(dropped.output == "transparent \(EADDRNOTAVAIL)\n", "\(dropped.stderr)")
        #expect(dropped.stderr.contains("IP_TRANSPARENT not set"), "\(dropped.stderr)")
        let root = try inNamespace(["--transparent"], [deputy, "transparent"])
        #expect(root.output == "transparent 0\n", "\(root.stderr)")
    }

    @Test("a thread id reused by another process: the bind lands on the caller's socket, not on the first process's",
          .needsRoot("a pid namespace with a small pid_max (unshare --pid)"), .enabled(if: gcc != nil, "gcc is missing"))
    func reusedThreadID() throws {
        let (folder, reuser) = try build(reuserProgram, named: "reuser")
        defer { withExtendedLifetime(folder) {} }
        let script = "ip link set lo up && echo 400 > /proc/sys/kernel/pid_max && echo 300 > /proc/sys/kernel/ns_last_pid && exec \"$@\""
        let result = try capture(["/usr/bin/unshare", "-n", "--pid", "--fork", "--mount-proc", "/bin/sh", "-c", script, "sh",
                                  portreuse, "run", "--intercept", "kernel", "--bind", "127.0.0.1:8080", "--", reuser], timeout: 60)
        try #require(result.output != "no reuse\n", "no child got the thread's id: \(result.stderr)")
        #expect(result.output == "child 8080\nparent 0\n", "\(result.stderr)")
    }
}

@Suite("run refuses what it cannot reach")
struct ForeignABITests {
    /// The first 64 bytes of an ELF file of `class` (1: 32-bit) for `machine` (3: i386, 62: x86-64), no segments.
    static func elfHeader(class elfClass: UInt8, machine: UInt16) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: 64)
        bytes[0..<4] = [0x7F, 0x45, 0x4C, 0x46]
        bytes[4] = elfClass
        bytes[5] = 1  // little-endian
        bytes[6] = 1
        bytes[16] = 2  // ET_EXEC
        bytes[18] = UInt8(machine & 0xFF)
        bytes[19] = UInt8(machine >> 8)
        if elfClass == 1 { bytes[42] = 32 } else { bytes[54] = 56 }  // e_phentsize, no program headers
        return bytes
    }

    @Test("a 32-bit or x32 program: exit 126 before it runs, saying that neither the shim nor the kernel path reaches it",
          arguments: [(UInt8(1), UInt16(3), "a 32-bit program (ELFCLASS32, i386)"), (UInt8(1), UInt16(62), "an x32 program (ELFCLASS32, x86-64)")])
    func refused(_ elfClass: UInt8, _ machine: UInt16, _ words: String) throws {
        let folder = try TemporaryFolder()
        let path = folder.path + "/program"
        try #require(FileManager.default.createFile(atPath: path, contents: Data(Self.elfHeader(class: elfClass, machine: machine)), attributes: [.posixPermissions: 0o755]))
        for intercept in ["auto", "kernel", "preload"] {
            let run = try capture([portreuse, "run", "--intercept", intercept, "--policy", "shared", "--", path], timeout: 20)
            #expect(run.status == 126, "\(intercept): \(run.stderr)")
            #expect(run.stderr.contains(words) && run.stderr.contains("portreuse up"), "\(intercept): \(run.stderr)")
        }
    }
}
