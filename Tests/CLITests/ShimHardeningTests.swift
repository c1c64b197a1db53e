import Foundation
import Glibc
import PortReuse
import TestSupport
import Testing
import PortReuseSystem

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

    /// A small random number generator with a seed (SplitMix64), so that a failing case can be run again.
    struct SeededGenerator: RandomNumberGenerator {
        var state: UInt64
        mutating func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
    }

    /// Binds, listens, connects (non-blocking, at most 200 ms), sends UDP with sendto and sendmsg on IPv4 and
    /// IPv6, and makes calls the kernel refuses with EFAULT. Prints "ok" and nothing else unless one of its own
    /// checks fails: errno after a successful call is what it was before, and EFAULT stays EFAULT.
    static let fuzzProgram = #"""
        #include <arpa/inet.h>
        #include <errno.h>
        #include <fcntl.h>
        #include <netinet/in.h>
        #include <poll.h>
        #include <stdio.h>
        #include <string.h>
        #include <sys/socket.h>
        #include <unistd.h>
        static int bad;
        static void check_errno(const char *what, long result) {
            if (result >= 0 && errno != 77) { printf("%s: errno %d after success\n", what, errno); bad = 1; }
        }
        static void check_fault(const char *what, long result) {
            if (result != -1 || errno != EFAULT) { printf("%s: %ld errno %d, not EFAULT\n", what, result, errno); bad = 1; }
        }
        static void exercise(int family, const char *loopback) {
            struct sockaddr_storage address;
            memset(&address, 0, sizeof address);
            socklen_t length;
            if (family == AF_INET) {
                struct sockaddr_in *in = (struct sockaddr_in *)&address;
                in->sin_family = AF_INET;
                inet_pton(AF_INET, loopback, &in->sin_addr);
                length = sizeof *in;
            } else {
                struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&address;
                in6->sin6_family = AF_INET6;
                inet_pton(AF_INET6, loopback, &in6->sin6_addr);
                length = sizeof *in6;
            }
            int listener = socket(family, SOCK_STREAM, 0);
            errno = 77;
            check_errno("bind tcp", bind(listener, (struct sockaddr *)&address, length));
            listen(listener, 8);
            struct sockaddr_storage at;
            socklen_t at_length = sizeof at;
            getsockname(listener, (struct sockaddr *)&at, &at_length);
            int client = socket(family, SOCK_STREAM | SOCK_NONBLOCK, 0);
            errno = 77;
            if (connect(client, (struct sockaddr *)&at, at_length) != 0 && errno == EINPROGRESS) {
                struct pollfd done = {.fd = client, .events = POLLOUT};
                poll(&done, 1, 200);
            }
            int datagram = socket(family, SOCK_DGRAM, 0);
            errno = 77;
            check_errno("bind udp", bind(datagram, (struct sockaddr *)&address, length));
            at_length = sizeof at;
            getsockname(datagram, (struct sockaddr *)&at, &at_length);
            int sender = socket(family, SOCK_DGRAM | SOCK_NONBLOCK, 0);
            errno = 77;
            check_errno("sendto", sendto(sender, "x", 1, 0, (struct sockaddr *)&at, at_length));
            struct iovec part = {.iov_base = "y", .iov_len = 1};
            struct msghdr message = {.msg_name = &at, .msg_namelen = at_length, .msg_iov = &part, .msg_iovlen = 1};
            int other = socket(family, SOCK_DGRAM | SOCK_NONBLOCK, 0);
            errno = 77;
            check_errno("sendmsg", sendmsg(other, &message, 0));
            int fresh = socket(family, SOCK_DGRAM, 0);
            check_fault("bind fault", bind(fresh, (void *)1, length));
            check_fault("connect fault", connect(fresh, (void *)1, length));
            check_fault("sendto fault", sendto(fresh, "x", 1, 0, (void *)1, length));
            check_fault("sendmsg fault", sendmsg(fresh, (void *)1, 0));
            close(listener); close(client); close(datagram); close(sender); close(other); close(fresh);
        }
        int main(void) {
            alarm(10);
            exercise(AF_INET, "127.0.0.1");
            exercise(AF_INET6, "::1");
            if (!bad) printf("ok\n");
            return 0;
        }
        """#

    /// Every variable the shim reads (its getenv calls), with values it takes and values it refuses.
    static func pools(port: String) -> [(name: String, valid: [String], invalid: [String])] {
        let booleans = ["1", "0", "yes", "no", "On", "FALSE", "true", "off"]
        let badBooleans = ["banana", "2", "-1", " 1", "\u{1B}[31mred"]
        let addresses = ["127.0.0.1", "127.0.0.2", "::1", "::ffff:127.0.0.1", "0.0.0.0", "::", "[::1]", "fe80::1%lo", "fe80::1%1", "::1%0", "127.1.2.3"]
        let badAddresses = ["nowhere", "999.1.1.1", "127.0.0.1:80", "fe80::1%4294967297", "fe80::1%-1", "fe80::1%", "localhost",
                            String(repeating: "9", count: 300), "::1%nosuchif0", "[::1"]
        let ports = ["0", port, "00", port]
        let badPorts = ["99999", "-1", "80x", " 80", "65536", "0000065536"]
        return [
            ("PORTREUSE_POLICY", ["restartable", "shared", "exclusive", "unsafe-any-user"], ["sharde", "SHARED", " shared", "\u{7F}"]),
            ("PORTREUSE_VERBOSE", booleans, badBooleans),
            ("REUSE_ADDR", booleans, badBooleans), ("REUSE_PORT", booleans, badBooleans), ("IP_TRANSPARENT", booleans, badBooleans),
            ("BIND_ADDR", addresses, badAddresses), ("BIND_PORT", ports, badPorts),
            ("PORTREUSE_BIND_ADDR", addresses, badAddresses), ("PORTREUSE_BIND_PORT", ports, badPorts),
            ("PORTREUSE_SOURCE_ADDR", addresses, badAddresses), ("PORTREUSE_SOURCE_PORT", ports, badPorts),
        ]
    }

    @Test("300 random combinations of the shim's variables: no crash, stdout the program's own, one line per bad variable",
          .enabled(if: gcc != nil, "gcc is missing"))
    func randomizedSettings() throws {
        let folder = try TemporaryFolder()
        let program = try compileC(Self.fuzzProgram, named: "fuzz", in: folder)
        let plain = try capture([program], environment: environment())
        try #require(plain.output == "ok\n", "without the shim: \(plain.output)")

        // The shim's variables, found in its source, are the ones the pools cover.
        let source = try String(contentsOfFile: packageRoot + "/Sources/CReuseShim/shim.c", encoding: .utf8)
        let reservation = try PortReservation()
        let pools = Self.pools(port: String(reservation.port))
        let reads = source.split(separator: "\n").filter { $0.contains("variable(\"") || $0.contains("read_boolean(\"") || $0.contains("read_endpoint(&") }
        let read = Set(reads.flatMap { line in
            line.split(separator: "\"").enumerated().filter { $0.offset % 2 == 1 }.map(\.element)
                .filter { $0.count > 3 && $0.allSatisfy { $0.isUppercase || $0 == "_" } }.map(String.init)
        })
        try #require(read == Set(pools.map(\.name)), "the pools must cover exactly what shim.c reads: \(read.sorted())")
        let seed = ProcessInfo.processInfo.environment["PORTREUSE_FUZZ_SEED"].flatMap { UInt64($0) } ?? 16_2026_12_01
        let cases = ProcessInfo.processInfo.environment["PORTREUSE_FUZZ_CASES"].flatMap { Int($0) } ?? 300
        var random = SeededGenerator(state: seed)
        var failures = 0
        let started = Processes.monotonicNanoseconds
        for index in 0..<cases where failures < 5 {
            var variables: [String: String] = [:]
            var bad: Set<String> = []
            for pool in pools {
                switch Int.random(in: 0..<6, using: &random) {
                case 0, 1: break  // unset
                case 2: variables[pool.name] = ""  // empty: unset too
                case 3, 4: variables[pool.name] = pool.valid.randomElement(using: &random)!
                default:
                    variables[pool.name] = pool.invalid.randomElement(using: &random)!
                    bad.insert(pool.name)
                }
            }
            let result = try capture([program], environment: shimmed(variables), timeout: 20)
            let verbose = ["1", "yes", "On", "true"].contains(variables["PORTREUSE_VERBOSE"] ?? "")
            let ignored = result.errorLines.filter { $0.contains(" is ignored: ") }
            let said = Set(ignored.compactMap { line in pools.map(\.name).first { line.contains("): \($0)=\"") } })
            let others = result.errorLines.filter { !$0.contains(" is ignored: ") }
            var problems: [String] = []
            if result.signalled || result.timedOut { problems.append("killed by signal \(result.status)\(result.timedOut ? " (timed out)" : "")") }
            if result.status != 0 && !result.signalled { problems.append("exit status \(result.status)") }
            if result.output != "ok\n" { problems.append("stdout \(result.output.debugDescription)") }
            if !result.errorLines.allSatisfy({ $0.hasPrefix("portreuse shim (fuzz[") }) { problems.append("stderr lines not the shim's") }
            if ignored.count != bad.count || said != bad { problems.append("bad \(bad.sorted()), said \(ignored.count): \(said.sorted())") }
            if !verbose && others.count > 6 { problems.append("\(others.count) other lines without PORTREUSE_VERBOSE") }
            if !problems.isEmpty {
                failures += 1
                let settings = variables.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value.debugDescription)" }.joined(separator: " ")
                Issue.record("seed \(seed) case \(index) (PORTREUSE_FUZZ_SEED=\(seed)): \(problems.joined(separator: "; "))\n  \(settings)\n  stderr: \(result.stderr)")
            }
        }
        let seconds = Double(Processes.monotonicNanoseconds - started) / 1e9
        print("randomizedSettings: seed \(seed), \(cases) cases in \(String(format: "%.1f", seconds)) s")
    }
}
