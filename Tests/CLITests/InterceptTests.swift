import Foundation
import Glibc
import PortReuse
import PortReuseTools
import TestSupport
import Testing

// `portreuse run` through the kernel (seccomp user notification): Go servers (static and cgo), a static C
// program, --bind, --source, signals and exit statuses, the fallback when the filter is refused.

let go = installed("/usr/bin/go", "/usr/local/go/bin/go")

/// A tiny net/http server: `server ADDRESS NAME` prints "listening ADDR" (or "error: …" and exits 3) and
/// answers every request with NAME.
private let goServer = """
    package main

    import (
    \t"fmt"
    \t"net"
    \t"net/http"
    \t"os"
    )

    func main() {
    \tln, err := net.Listen("tcp", os.Args[1])
    \tif err != nil {
    \t\tfmt.Println("error:", err)
    \t\tos.Exit(3)
    \t}
    \tfmt.Println("listening", ln.Addr().String())
    \tname := os.Args[2]
    \thttp.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, name) }))
    }
    """

/// Builds Go `source` twice below the build folder `folder` (GOCACHE and GOPATH there too, so later runs are
/// quick; no network: the standard library only): `static` with CGO_ENABLED=0 and `cgo` with the default
/// (dynamically linked, cgo resolver). Their paths by name.
func buildGo(_ source: String, in folderName: String) -> Result<[String: String], BuildFailure> {
    guard let go else { return .failure(BuildFailure(message: "go is missing")) }
    let folder = productsFolder + "/" + folderName
    try? FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
    let file = folder + "/main.go"
    guard FileManager.default.createFile(atPath: file, contents: Data(source.utf8)) else {
        return .failure(BuildFailure(message: "cannot write \(file)"))
    }
    var base = environment()
    base["GOCACHE"] = folder + "/cache"
    base["GOPATH"] = folder + "/gopath"
    base["GO111MODULE"] = "off"
    base["GOFLAGS"] = nil
    base["GOTOOLCHAIN"] = "local"
    var built: [String: String] = [:]
    for (name, cgo) in [("static", "0"), ("cgo", "1")] {
        var variables = base
        variables["CGO_ENABLED"] = cgo
        guard let result = try? capture([go, "build", "-o", folder + "/" + name, file], environment: variables, timeout: 300), result.status == 0
        else { return .failure(BuildFailure(message: "go build (\(name)) failed")) }
        built[name] = folder + "/" + name
    }
    return .success(built)
}

/// The Go servers of these tests, built once per test run.
private let goPrograms: Result<(static: String, cgo: String), BuildFailure> = buildGo(goServer, in: "intercept-tests-go").map { ($0["static"]!, $0["cgo"]!) }

struct BuildFailure: Error, CustomStringConvertible {
    var message: String
    var description: String { message }
}

/// A C program that binds TCP 127.0.0.1:PORT twice, a UDP socket, a bad pointer and a Unix socket, and prints
/// each result (0 or the errno) and the options the kernel reports.
private let bindProbe = """
    #include <errno.h>
    #include <netinet/in.h>
    #include <stdio.h>
    #include <stdlib.h>
    #include <string.h>
    #include <sys/socket.h>
    #include <sys/un.h>
    #include <unistd.h>

    static int bound(int fd, int port) {
        struct sockaddr_in a;
        memset(&a, 0, sizeof a);
        a.sin_family = AF_INET;
        a.sin_port = htons(port);
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        return bind(fd, (struct sockaddr *)&a, sizeof a) == 0 ? 0 : errno;
    }
    static void options(const char *name, int fd) {
        int address = 0, port = 0;
        socklen_t length = sizeof address;
        getsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &address, &length);
        getsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &port, &length);
        printf("%s SO_REUSEADDR %d SO_REUSEPORT %d\\n", name, address != 0, port != 0);
    }
    int main(int argc, char **argv) {
        int port = atoi(argv[1]);
        int first = socket(AF_INET, SOCK_STREAM, 0), second = socket(AF_INET, SOCK_STREAM, 0);
        printf("first %d\\n", bound(first, port));
        listen(first, 8);
        printf("second %d\\n", bound(second, port));
        options("tcp", first);
        int udp = socket(AF_INET, SOCK_DGRAM, 0);
        printf("udp %d\\n", bound(udp, 0));
        options("udp", udp);
        int bad = socket(AF_INET, SOCK_STREAM, 0);
        printf("bad pointer %d\\n", bind(bad, (struct sockaddr *)8, sizeof(struct sockaddr_in)) == 0 ? 0 : errno);
        int local = socket(AF_UNIX, SOCK_STREAM, 0);
        struct sockaddr_un u;
        memset(&u, 0, sizeof u);
        u.sun_family = AF_UNIX;
        snprintf(u.sun_path + 1, sizeof u.sun_path - 1, "portreuse-intercept-%d", (int)getpid());
        printf("unix %d\\n", bind(local, (struct sockaddr *)&u, sizeof u) == 0 ? 0 : errno);
        options("unix", local);
        return 0;
    }
    """

@Suite("portreuse run through the kernel (seccomp)")
struct InterceptTests {
    func goServers() throws -> (static: String, cgo: String) {
        try goPrograms.get()
    }

    @Test("a static and a cgo Go server share one port under --policy shared; without run the second is refused",
          .enabled(if: go != nil, "go is missing (apt-get install golang-go): cannot build Go programs"))
    func goServersShare() throws {
        let programs = try goServers()
        let reservation = try PortReservation()
        let address = "127.0.0.1:\(reservation.port)"

        // Without run: Go sets SO_REUSEADDR alone, so a second server is refused, static or cgo.
        let plain = try Child([programs.static, address, "plain"], discardingStandardError: true)
        #expect(plain.line()?.hasPrefix("listening") == true)
        reservation.release()
        for program in [programs.static, programs.cgo] {
            let refused = try capture([program, address, "refused"], timeout: 20)
            #expect(refused.status == 3, "\(program)")
            #expect(refused.output.contains("address already in use"), "\(program): \(refused.output)")
        }
        plain.signal(SIGKILL)
        plain.waitForExit()

        // Under run both bind and both answer; auto picks the kernel for both, and says why.
        let verbose = try capture([portreuse, "run", "--verbose", "--", programs.cgo, "127.0.0.1:1", "x"], timeout: 20)
        #expect(verbose.stderr.contains("through the kernel (seccomp)"), "\(verbose.stderr)")
        #expect(verbose.stderr.contains("is a Go program"), "\(verbose.stderr)")
        let first = try Child([portreuse, "run", "--policy", "shared", "--", programs.static, address, "static"], discardingStandardError: true)
        #expect(first.line() == "listening \(address)")
        let second = try Child([portreuse, "run", "--policy", "shared", "--", programs.cgo, address, "cgo"], discardingStandardError: true)
        #expect(second.line() == "listening \(address)")
        var answers: [String: Int] = [:]
        for _ in 0..<40 { answers[try httpGet(SocketAddress(ip: .loopbackIPv4, port: reservation.port)), default: 0] += 1 }
        #expect(answers.values.reduce(0, +) == 40)
        #expect((answers["static"] ?? 0) > 0 && (answers["cgo"] ?? 0) > 0, "both servers answer: \(answers)")
        withExtendedLifetime((first, second)) {}
    }

    @Test("--bind moves a Go server to another port through the kernel",
          .enabled(if: go != nil, "go is missing (apt-get install golang-go): cannot build Go programs"))
    func bindRewritesGoServer() throws {
        let programs = try goServers()
        let reservation = try PortReservation()
        let server = try Child([portreuse, "run", "--bind", "127.0.0.1:\(reservation.port)", "--", programs.static, "127.0.0.1:1", "moved"],
                               discardingStandardError: true)
        #expect(server.line() == "listening 127.0.0.1:\(reservation.port)")
        reservation.release()
        #expect(try httpGet(SocketAddress(ip: .loopbackIPv4, port: reservation.port)) == "moved")
    }

    @Test("a static C program binds a port twice; options as the policy's row; bad pointers and Unix sockets as without run",
          .enabled(if: gcc != nil, "gcc is missing: cannot build a static program"))
    func staticCProgram() throws {
        let folder = try TemporaryFolder()
        let source = try folder.write("probe.c", bindProbe)
        let probe = folder.path + "/probe"
        let build = try capture([gcc!, "-static", "-O1", "-o", probe, source])
        try #require(build.status == 0, "gcc -static: \(build.stderr)")
        let port = try freePort()

        let plain = try capture([probe, String(port)], timeout: 20)
        #expect(plain.output == """
            first 0
            second \(EADDRINUSE)
            tcp SO_REUSEADDR 0 SO_REUSEPORT 0
            udp 0
            udp SO_REUSEADDR 0 SO_REUSEPORT 0
            bad pointer \(EFAULT)
            unix 0
            unix SO_REUSEADDR 0 SO_REUSEPORT 0

            """)
        for (policy, reuse) in [("shared", true), ("exclusive", false)] {
            let intercepted = try capture([portreuse, "run", "--verbose", "--policy", policy, "--", probe, String(port)], timeout: 20)
            #expect(intercepted.status == 0, "\(intercepted.stderr)")
            #expect(intercepted.stderr.contains("is statically linked"), "\(intercepted.stderr)")
            let udp = SharingTable.linux.options(policy == "shared" ? .shared : .exclusive, .udp)
            #expect(intercepted.output == """
                first 0
                second \(reuse ? 0 : EADDRINUSE)
                tcp SO_REUSEADDR \(reuse ? 1 : 0) SO_REUSEPORT \(reuse ? 1 : 0)
                udp 0
                udp SO_REUSEADDR \(udp.contains(.reuseAddress) ? 1 : 0) SO_REUSEPORT \(udp.contains(.reusePort) ? 1 : 0)
                bad pointer \(EFAULT)
                unix 0
                unix SO_REUSEADDR 0 SO_REUSEPORT 0

                """, "policy \(policy)")
        }
        // --intercept preload still refuses it, with the way out.
        let refused = try capture([portreuse, "run", "--intercept", "preload", "--", probe, String(port)], timeout: 20)
        #expect(refused.status == 126)
        #expect(refused.stderr.contains("--intercept kernel"), "\(refused.stderr)")
    }

    @Test("--source through the kernel: curl's connection leaves from the chosen port",
          .enabled(if: installed("/usr/bin/curl") != nil, "curl is missing"))
    func sourceThroughKernel() throws {
        let server = try Listener(tcp: "127.0.0.1:0", policy: .exclusive)
        let port = server.localAddress.port
        let source = try PortReservation()
        source.release()
        let result = try capture(
            [portreuse, "run", "--intercept", "kernel", "--source", "127.0.0.1:\(source.port)", "--",
             "/usr/bin/curl", "-s", "-m", "2", "-o", "/dev/null", "http://127.0.0.1:\(port)/"], timeout: 20)
        let connection = try #require(try server.accept(timeout: .seconds(10)))
        #expect(connection.remoteAddress.port == source.port)
        connection.close()
        _ = result
    }

    @Test("the program's exit status and signals: exit codes pass through, SIGTERM is forwarded, 128+signal")
    func statusAndSignals() throws {
        let exited = try capture([portreuse, "run", "--intercept", "kernel", "--", "/bin/sh", "-c", "exit 7"], timeout: 20)
        #expect(exited.status == 7)
        let missing = try capture([portreuse, "run", "--intercept", "kernel", "--", "no-such-program-here"], timeout: 20)
        #expect(missing.status == 127)

        let sleeper = try Child([portreuse, "run", "--intercept", "kernel", "--", "/bin/sh", "-c", "echo started; exec sleep 30"])
        #expect(sleeper.line() == "started")
        sleeper.signal(SIGTERM)
        #expect(sleeper.waitForExit(timeout: 10) == 128 + SIGTERM)
    }

    @Test("where the filter is refused (here: a listener exists already), the shim takes over, or exit 126 with the reason",
          .enabled(if: gcc != nil, "gcc is missing: cannot build a static program"))
    func refusedFilter() throws {
        // The outer run's filter has a listener; the kernel refuses a second one in the same tree (EBUSY).
        let dynamic = try capture(
            [portreuse, "run", "--intercept", "kernel", "--", portreuse, "run", "--intercept", "kernel", "--", systemPython, "-c", optionProbe],
            environment: environment(), timeout: 30)
        #expect(dynamic.status == 0, "\(dynamic.stderr)")
        #expect(dynamic.stderr.contains("using the LD_PRELOAD shim instead"), "\(dynamic.stderr)")
        #expect(dynamic.output == probeOutput(.shared))

        let folder = try TemporaryFolder()
        let source = try folder.write("hello.c", "#include <stdio.h>\nint main(void) { puts(\"ran\"); return 0; }\n")
        let build = try capture([gcc!, "-static", "-o", folder.path + "/static", source])
        try #require(build.status == 0, "gcc -static: \(build.stderr)")
        let refused = try capture([portreuse, "run", "--intercept", "kernel", "--", portreuse, "run", "--", folder.path + "/static"], timeout: 30)
        #expect(refused.status == 126)
        #expect(refused.output.isEmpty)
        #expect(refused.stderr.contains("the kernel refused the seccomp filter"), "\(refused.stderr)")
    }

    @Test("Go programs are told apart by their ELF sections (static and cgo); C programs and scripts are not Go",
          .enabled(if: go != nil, "go is missing (apt-get install golang-go): cannot build Go programs"))
    func goDetection() throws {
        let programs = try goServers()
        #expect(ExecutableFormat.goMark(programs.static) == "its .go.buildinfo section")
        #expect(ExecutableFormat.goMark(programs.cgo) == "its .go.buildinfo section")
        #expect(ExecutableFormat.goMark("/bin/sh") == nil)
        #expect(ExecutableFormat.goMark(systemPython) == nil)
        #expect(ExecutableFormat.goMark(portreuse) == nil)
        let script = try TemporaryFolder()
        let path = try script.write("server", "#!\(programs.static)\n", executable: true)
        let inspection = try Program.find(path, searchPath: nil).inspect(searchPath: nil)
        #expect(inspection.goExecutable?.path == programs.static)
        #expect(inspection.staticExecutable != nil)
    }
}

extension InterceptTests {
    @Test("--intercept preload on a cgo Go server: run says the shim changes nothing in it",
          .enabled(if: go != nil, "go is missing (apt-get install golang-go): cannot build Go programs"))
    func preloadOnGoWarns() throws {
        let programs = try goServers()
        let held = try Listener(tcp: "127.0.0.1:0", policy: .exclusive)  // the server fails at once (EADDRINUSE), after run's word
        let result = try capture([portreuse, "run", "--intercept", "preload", "--", programs.cgo, "\(held.localAddress)", "x"], timeout: 20)
        #expect(result.status == 3, "the shim did not make it share: \(result.output)")
        let stderr = result.stderr
        #expect(stderr.contains("is a Go program") && stderr.contains("use --intercept kernel"), "\(stderr)")
    }
}

extension InterceptTests {
    @Test("--bind: a bind to port 0 first (as Go's IPv6 probe) is no second listener: no warning")
    func portZeroIsNoListener() throws {
        let script = """
            import socket
            probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); probe.bind(("127.0.0.1", 0)); probe.close()
            s = socket.socket(); s.bind(("127.0.0.1", 1)); print("bound", s.getsockname()[1])
            """
        let reservation = try PortReservation()
        let run = try capture([portreuse, "run", "--intercept", "kernel", "--bind", "127.0.0.1:\(reservation.port)", "--", systemPython, "-c", script], timeout: 20)
        #expect(run.output == "bound \(reservation.port)\n", "\(run.stderr)")
        #expect(!run.stderr.contains("second listener"), "\(run.stderr)")
    }
}
