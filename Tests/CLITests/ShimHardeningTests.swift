import Foundation
import Glibc
import PortReuse
import TestSupport
import Testing

// The shim inside hostile hosts (issue 16): a stderr that kills or blocks, pointers the kernel would refuse,
// scopes that wrap, a process tree that repeats itself, and randomized settings.

/// Compiles a C program into `folder`; its path.
func compileC(_ source: String, named name: String, in folder: TemporaryFolder) throws -> String {
    let file = try folder.write(name + ".c", source)
    let binary = folder.path + "/" + name
    let build = try capture([gcc!, "-O0", "-o", binary, file])
    try #require(build.status == 0, "gcc \(name): \(build.stderr)")
    return binary
}

/// Runs `arguments` (from python, which resets SIGPIPE to its default for the child) with stderr a pipe
/// nobody reads ("closed"), a full pipe ("full") or a socket whose peer is gone ("socket"); prints
/// `status N OUTPUT`, or `timeout` when the program did not end within 5 seconds.
let hostileStderr = #"""
    import fcntl, os, socket, subprocess, sys
    mode, command = sys.argv[1], sys.argv[2:]
    if mode == "socket":
        target, peer = socket.socketpair()
        peer.close()
        target = target.detach()
    else:
        reader, target = os.pipe()
        if mode == "closed":
            os.close(reader)
        else:
            flags = fcntl.fcntl(target, fcntl.F_GETFL)
            fcntl.fcntl(target, fcntl.F_SETFL, flags | os.O_NONBLOCK)
            for size in (65536, 4096, 1):
                try:
                    while True:
                        os.write(target, b"x" * size)
                except BlockingIOError:
                    pass
            fcntl.fcntl(target, fcntl.F_SETFL, flags)
    try:
        done = subprocess.run(command, stderr=target, stdout=subprocess.PIPE, timeout=5)
        print(" ".join(part for part in ("status", str(done.returncode), done.stdout.decode().strip()) if part))
    except subprocess.TimeoutExpired:
        print("timeout")
    """#

/// Binds a UDP socket on 127.0.0.1 (REUSE_ADDR=1's warning is written then). With argument `pending`, it
/// blocks SIGPIPE and raises one first; with `blocked`, it only blocks SIGPIPE. Prints whether a SIGPIPE is
/// pending afterwards: the shim's own must never be left for the program.
let udpBinder = #"""
    #include <netinet/in.h>
    #include <signal.h>
    #include <stdio.h>
    #include <string.h>
    #include <sys/socket.h>
    int main(int argc, char **argv) {
        sigset_t pipe_only, pending;
        sigemptyset(&pipe_only);
        sigaddset(&pipe_only, SIGPIPE);
        if (argc > 1) sigprocmask(SIG_BLOCK, &pipe_only, NULL);
        if (argc > 1 && strcmp(argv[1], "pending") == 0) raise(SIGPIPE);
        int fd = socket(AF_INET, SOCK_DGRAM, 0);
        struct sockaddr_in address = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        int bound = bind(fd, (struct sockaddr *)&address, sizeof address);
        sigpending(&pending);
        printf("bound %d pending %d\n", bound, sigismember(&pending, SIGPIPE));
        return 0;
    }
    """#

/// Calls bind, connect, sendto and sendmsg with memory the kernel refuses (EFAULT) and prints what each
/// returned and errno: a bad pointer, and an address whose length runs past the end of a mapped page.
let faultingCalls = #"""
    #include <errno.h>
    #include <netinet/in.h>
    #include <stdio.h>
    #include <string.h>
    #include <sys/mman.h>
    #include <sys/socket.h>
    #include <unistd.h>
    #define SHOW(name, call) do { errno = 0; long result = (long)(call); int code = errno; printf("%s %ld %d\n", name, result, code); } while (0)
    int main(void) {
        long page = sysconf(_SC_PAGESIZE);
        char *pages = mmap(NULL, 2 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        munmap(pages + page, page);
        struct sockaddr_in *edge = (struct sockaddr_in *)(pages + page - 8); // 8 of its 16 bytes are mapped
        memset(edge, 0, 8);
        edge->sin_family = AF_INET;
        struct msghdr named = {.msg_name = (void *)1, .msg_namelen = 16};
        for (int type = SOCK_STREAM; type <= SOCK_DGRAM; type++) {
            int fd = socket(AF_INET, type, 0);
            SHOW("bind", bind(fd, (void *)1, 16));
            SHOW("bind-edge", bind(fd, (struct sockaddr *)edge, 16));
            SHOW("connect", connect(fd, (void *)1, 16));
            SHOW("connect-edge", connect(fd, (struct sockaddr *)edge, 16));
            SHOW("sendto", sendto(fd, "x", 1, MSG_FASTOPEN, (void *)1, 16));
            SHOW("sendmsg", sendmsg(fd, (void *)1, MSG_FASTOPEN));
            SHOW("sendmsg-name", sendmsg(fd, &named, MSG_FASTOPEN));
            close(fd);
        }
        return 0;
    }
    """#

@Suite("LD_PRELOAD shim in hostile hosts")
struct ShimHardeningTests {
    @Test("a stderr that is a closed pipe, a closed socket or a full pipe neither kills nor blocks the program",
          .enabled(if: gcc != nil, "gcc is missing"))
    func hostileStandardError() throws {
        let folder = try TemporaryFolder()
        let binder = try compileC(udpBinder, named: "udp-binder", in: folder)
        for mode in ["closed", "socket", "full"] {
            for (variables, command, expected) in [
                (["BIND_PORT": "99999"], ["/bin/true"], "status 0"),
                (["REUSE_ADDR": "1"], [binder], "status 0 bound 0 pending 0"),
                (["REUSE_ADDR": "1"], [binder, "blocked"], "status 0 bound 0 pending 0"),
                (["REUSE_ADDR": "1"], [binder, "pending"], "status 0 bound 0 pending 1"),
                (["PORTREUSE_VERBOSE": "1", "PORTREUSE_POLICY": "shared"], [binder], "status 0 bound 0 pending 0"),
            ] {
                // Only the command is shimmed (through env, itself shimmed), not the python that holds the pipe.
                let settings = (["LD_PRELOAD": shimLibrary].merging(variables) { a, _ in a }).map { "\($0.key)=\($0.value)" }.sorted()
                let result = try capture([systemPython, "-c", hostileStderr, mode, "/usr/bin/env"] + settings + command,
                                         environment: environment(), timeout: 30)
                #expect(result.output == expected + "\n", "stderr \(mode), \(variables), \(command): \(result.output) \(result.stderr)")
            }
        }
        // A writable stderr still gets the line.
        let plain = try capture([binder], environment: shimmed(["REUSE_ADDR": "1"]))
        #expect(plain.output == "bound 0 pending 0\n")
        #expect(plain.shimLines.count == 1 && plain.stderr.contains("REUSE_ADDR=1 is not applied to UDP sockets"))
    }

    @Test("memory the kernel refuses is never read: EFAULT as without the shim, never SIGSEGV",
          .enabled(if: gcc != nil, "gcc is missing"))
    func faultingPointers() throws {
        let folder = try TemporaryFolder()
        let program = try compileC(faultingCalls, named: "faulting", in: folder)
        let plain = try capture([program], environment: environment())
        try #require(plain.status == 0 && !plain.signalled)
        let lines = plain.output.split(separator: "\n")
        #expect(lines.count == 14)
        #expect(lines.allSatisfy { $0.hasSuffix(" -1 \(EFAULT)") }, "\(plain.output)")
        for variables in [[:], ["PORTREUSE_POLICY": "shared"], ["BIND_ADDR": "127.0.0.1", "BIND_PORT": "0"],
                          ["PORTREUSE_SOURCE_ADDR": "127.0.0.1", "PORTREUSE_POLICY": "exclusive", "PORTREUSE_VERBOSE": "1"]] {
            let shimmed = try capture([program], environment: shimmed(variables))
            #expect(!shimmed.signalled && shimmed.status == 0, "\(variables): signal \(shimmed.status)")
            #expect(shimmed.output == plain.output, "\(variables)")
            #expect(shimmed.stderr.isEmpty, "\(variables): \(shimmed.stderr)")
        }
    }

    @Test("an IPv6 scope is refused by the shim exactly when the CLI's parser refuses it, and never wraps")
    func scopesAsTheCLIReadsThem() throws {
        let zones = ["4294967297", "4294967296", "-1", "-0", "+5", "+", "-", "0", "1", "lo", "LO", "4294967295",
                     "04294967295", "00000000000000000001", " 1", "1 ", "1a", "0x1", "nosuchif0", "99999999999999999999", "%1"]
        for zone in zones {
            let text = "fe80::1%" + zone
            let result = try capture(["/bin/true"], environment: shimmed(["BIND_ADDR": text]))
            let refused = result.shimLines.contains { $0.contains("BIND_ADDR=\"") && $0.contains("is ignored") }
            #expect(refused == (IPAddress(text) == nil), "\(text): CLI \(IPAddress(text).map { "\($0.scope)" } ?? "refuses"), shim \(result.stderr)")
        }
        // fe80::1%4294967297 used to become scope 1 (lo), where fe80::1 cannot be bound: ignored, ::1 is bound.
        let program = "import socket\ns = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)\ns.bind(('::1', 0))\nprint(s.getsockname()[0])"
        let wrapped = try capture([systemPython, "-c", program], environment: shimmed(["BIND_ADDR": "fe80::1%4294967297"]))
        #expect(wrapped.output == "::1\n", "\(wrapped.stderr)")
        #expect(wrapped.shimLines.count == 1)
    }

    @Test("a bad setting is said once per process tree; the marker is set only when there was something to say")
    func oncePerTree() throws {
        let script = "for i in 1 2 3 4 5; do /bin/true; sh -c /bin/true; done; BIND_PORT=77777 sh -c 'sh -c /bin/true'; printenv PORTREUSE_SHIM_WARNED | wc -l"
        let result = try capture(["/bin/sh", "-c", script], environment: shimmed(["BIND_PORT": "99999", "REUSE_PORT": "banana"]))
        #expect(result.status == 0)
        #expect(result.output.trimmingCharacters(in: .whitespaces) == "1\n", "the marker is in the tree's environment")
        #expect(result.shimLines.count == 3, "\(result.stderr)")
        #expect(result.shimLines.filter { $0.contains("BIND_PORT=\"99999\"") }.count == 1)
        #expect(result.shimLines.filter { $0.contains("REUSE_PORT=\"banana\"") }.count == 1)
        #expect(result.shimLines.filter { $0.contains("BIND_PORT=\"77777\"") }.count == 1, "a new bad value is said, once")

        // Nothing bad, no marker: the program's environment is as it was.
        let clean = try capture(["/bin/sh", "-c", "env"], environment: shimmed(["PORTREUSE_POLICY": "shared"]))
        #expect(!clean.output.contains("PORTREUSE_SHIM_WARNED"))
        #expect(clean.stderr.isEmpty)
        // A stderr that could not take the line does not mark it as said: the next process says it.
        let lost = try capture(["/bin/sh", "-c", "exec 2>&-; LD_PRELOAD=\(shimLibrary) BIND_PORT=99999 sh -c 'exec 2>&1; /bin/true'"],
                               environment: environment())
        #expect(lost.output.contains("BIND_PORT=\"99999\" is ignored"), "\(lost.output)")
        // portreuse run starts a new tree: an inherited marker is left out.
        let run = try capture([portreuse, "run", "--", "/usr/bin/env"], environment: environment(["PORTREUSE_SHIM_WARNED": "0123456789abcdef"]))
        #expect(run.status == 0)
        #expect(!run.output.contains("PORTREUSE_SHIM_WARNED"))
    }
}
