import Foundation
import Glibc
import PortReuse
import TestSupport
import Testing
import PortReuseSystem
import PortReuseInterception

// `portreuse up` for programs that bind by themselves (issue 17): each generation starts under the bind
// filter, and a bind to the address up holds gets up's socket, so all generations share one accept queue.

/// A net/http server: `server ADDRESS NAME [EXTRA_ADDRESS | rebind]` prints "listening ADDR NAME" (or
/// "error: …" and exits 3), answers every request with NAME, and on SIGTERM shuts down gracefully, waited for
/// before main returns. With EXTRA_ADDRESS it serves "extra NAME" there too; with `rebind` it closes its
/// first listener and listens again before serving; with `late` it listens on ADDRESS again after 2 s; with `pid` NAME is followed by its pid.
private let goServer = """
    package main

    import (
    \t"context"
    \t"fmt"
    \t"net"
    \t"net/http"
    \t"os"
    \t"os/signal"
    \t"syscall"
    \t"time"
    )

    func main() {
    \taddress, name := os.Args[1], os.Args[2]
    \tmode := ""
    \tif len(os.Args) > 3 {
    \t\tmode = os.Args[3]
    \t}
    \tln, err := net.Listen("tcp", address)
    \tif err != nil {
    \t\tfmt.Println("error:", err)
    \t\tos.Exit(3)
    \t}
    \tif mode == "rebind" {
    \t\tln.Close()
    \t\tif ln, err = net.Listen("tcp", address); err != nil {
    \t\t\tfmt.Println("error: again:", err)
    \t\t\tos.Exit(3)
    \t\t}
    \t\tfmt.Println("bound again", ln.Addr().String())
    \t} else if mode == "late" {
    \t\tgo func() {
    \t\t\ttime.Sleep(2 * time.Second)
    \t\t\tlate, err := net.Listen("tcp", address)
    \t\t\tif err != nil {
    \t\t\t\tfmt.Println("error: late:", err)
    \t\t\t\treturn
    \t\t\t}
    \t\t\tfmt.Println("bound late", late.Addr().String())
    \t\t\tlate.Close()
    \t\t}()
    \t} else if mode != "" && mode != "pid" {
    \t\textra, err := net.Listen("tcp", mode)
    \t\tif err != nil {
    \t\t\tfmt.Println("error: extra:", err)
    \t\t\tos.Exit(3)
    \t\t}
    \t\tfmt.Println("extra listening", extra.Addr().String())
    \t\tgo http.Serve(extra, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "extra "+name) }))
    \t}
    \tif mode == "pid" {
    \t\tname = fmt.Sprintf("%s %d", name, os.Getpid())
    \t}
    \tserver := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, name) })}
    \tdone := make(chan struct{})
    \tgo func() {
    \t\tsignals := make(chan os.Signal, 1)
    \t\tsignal.Notify(signals, syscall.SIGTERM)
    \t\t<-signals
    \t\tctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
    \t\tdefer cancel()
    \t\tserver.Shutdown(ctx)
    \t\tclose(done)
    \t}()
    \tfmt.Println("listening", ln.Addr().String(), name)
    \tif err := server.Serve(ln); err != http.ErrServerClosed {
    \t\tfmt.Println("error:", err)
    \t\tos.Exit(3)
    \t}
    \t<-done
    }
    """

/// The Go server built twice (``buildGo(_:in:)``): `static` (CGO_ENABLED=0) and `cgo` (default).
private let goServers: Result<[String: String], BuildFailure> = buildGo(goServer, in: "up-intercept-tests-go")

private let python = installed("/usr/bin/python3")

/// A free port, given up just before up binds it (up needs the number in its command line and the program's).
private func freePort(_ transport: Transport = .tcp) throws -> UInt16 {
    let reservation = try PortReservation(transport)
    defer { reservation.release() }
    return reservation.port
}

/// How many lines of the log contain `text`.
private func count(_ text: String, in log: String) -> Int {
    log.components(separatedBy: "\n").filter { $0.contains(text) }.count
}

@Suite("portreuse up: programs that bind by themselves get up's socket", .serialized)
struct UpInterceptTests {
    // http.server has no graceful stop (SIGTERM ends it in the middle of a request), so --stop-when-idle signals
    // it at a moment it holds no connection. One client at a time leaves such moments; under concurrent load on
    // a busy machine there may be none within the wait, and a request in flight is reset: the program's limit,
    // which the README states. A server with a graceful stop (the Go test below) reloads under 8 clients.
    @Test("python3 -m http.server --bind 127.0.0.1 serves under up and reloads 5 times under a client, 0 failed",
          .enabled(if: python != nil, "/usr/bin/python3 is missing"))
    func pythonHTTPServer() throws {
        let folder = try TemporaryFolder()
        try Data("hello\n".utf8).write(to: URL(fileURLWithPath: folder.path + "/index.html"))
        let port = try freePort()
        let up = try UpProcess(
            ["--listen", "127.0.0.1:\(port)", "--grace", "10s", "--stop-when-idle", "--", python!, "-m", "http.server", "\(port)", "--bind", "127.0.0.1",
             "--directory", folder.path])
        let address = try up.servingAddress()
        #expect(address.port == port)
        #expect(try httpGet(address, "/index.html") == "hello\n")
        #expect(up.waitForLog("got up's socket"), "\(up.logText)")
        let load = HTTPLoad(address, clients: 1)
        for number in 2...6 {
            up.signal(SIGHUP)
            #expect(up.waitForStatus { $0.serving.map(\.number) == [number] } != nil, "reload to \(number):\n\(up.logText)")
        }
        #expect(up.waitForStatus { _ in load.count > 50 } != nil)
        let (answered, failures) = load.stop()
        #expect(failures.isEmpty, "\(failures.count) failed of \(answered + failures.count): \(failures.prefix(3))\n\(up.logText)")
        #expect(up.waitForLog("got up's socket", count: 6, timeout: 10), "\(up.logText)")
        #expect(count("got up's socket", in: up.logText) == 6, "\(up.logText)")
        #expect(!up.logText.contains("Address already in use"), "\(up.logText)")
        #expect(up.stop() == 0, "\(up.logText)")
    }

    @Test("an unmodified Go net/http server (static and cgo) reloads 10 times under load with 0 failed requests",
          arguments: ["static", "cgo"])
    func goServerReloads(kind: String) throws {
        let server = try #require(try goServers.get()[kind])
        let port = try freePort()
        let up = try UpProcess(["--listen", "127.0.0.1:\(port)", "--", server, "127.0.0.1:\(port)", "go-\(kind)"])
        let address = try up.servingAddress()
        #expect(try httpGet(address) == "go-\(kind)")
        let load = HTTPLoad(address, clients: 8)
        var readyTimes: [Double] = []
        for number in 2...11 {
            up.signal(SIGHUP)
            let status = up.waitForStatus { $0.serving.map(\.number) == [number] }
            #expect(status != nil, "reload to \(number):\n\(up.logText)")
            if let seconds = status?.reloads.last(where: { $0.generation == number })?.seconds { readyTimes.append(seconds) }
        }
        #expect(up.waitForStatus { _ in load.count > 200 } != nil)
        let (answered, failures) = load.stop()
        #expect(answered > 200)
        #expect(failures.isEmpty, "\(failures.count) failed of \(answered + failures.count): \(failures.prefix(3))\n\(up.logText)")
        #expect(up.waitForLog("got up's socket", count: 11, timeout: 10), "\(up.logText)")
        #expect(count("got up's socket", in: up.logText) == 11, "\(up.logText)")
        #expect(!up.logText.contains("error:"), "\(up.logText)")
        #expect(up.stop() == 0, "\(up.logText)")
        let sorted = readyTimes.sorted()
        if !sorted.isEmpty {
            print("up-intercept go \(kind): \(answered) requests, 0 failed, 10 reloads, ready in \(Int(sorted[sorted.count / 2] * 1000)) ms (median)")
        }
    }

    @Test("a bind to an address up does not hold runs untouched: the program serves an unrelated port itself")
    func unrelatedBindPassesThrough() throws {
        let server = try #require(try goServers.get()["static"])
        let port = try freePort()
        let other = try freePort()
        let up = try UpProcess(["--listen", "127.0.0.1:\(port)", "--", server, "127.0.0.1:\(port)", "main", "127.0.0.1:\(other)"])
        let address = try up.servingAddress()
        #expect(waitUntil(timeout: 10) { !PortHolder.find(port: other, transport: .tcp, states: [.listen], processes: false, options: false).isEmpty },
                "the program listens on 127.0.0.1:\(other) itself: \(up.logText)")
        #expect(try httpGet(address) == "main")
        #expect(try httpGet(SocketAddress(ip: .loopbackIPv4, port: other)) == "extra main")
        #expect(up.waitForLog("got up's socket", count: 1, timeout: 10), "\(up.logText)")
        #expect(count("got up's socket", in: up.logText) == 1, "\(up.logText)")
        #expect(!up.logText.contains(":\(other) of"), "the bind of the unrelated port was answered by up:\n\(up.logText)")
        // Not one of up's: the program's own socket, without the options of any policy.
        let holders = PortHolder.find(port: other, transport: .tcp, processes: true, options: false).filter { $0.state == .listen }
        #expect(holders.count == 1)
        #expect(holders.allSatisfy { !$0.processes.isEmpty && !$0.processes.contains { $0.pid == up.pid } }, "\(holders)")
        #expect(up.stop() == 0, "\(up.logText)")
    }

    @Test("a program that closes its swapped socket and binds again gets the held socket again, and reloads")
    func closeAndBindAgain() throws {
        let server = try #require(try goServers.get()["static"])
        let port = try freePort()
        let up = try UpProcess(["--listen", "127.0.0.1:\(port)", "--", server, "127.0.0.1:\(port)", "again", "rebind"])
        // Ready only once it accepts, which it does after its second bind.
        let address = try up.servingAddress()
        #expect(try httpGet(address) == "again")
        #expect(up.waitForLog("got up's socket", count: 2), "both binds got up's socket: \(up.logText)")
        #expect(count("got up's socket", in: up.logText) == 2, "\(up.logText)")
        let load = HTTPLoad(address, clients: 4)
        up.signal(SIGHUP)
        #expect(up.waitForStatus { $0.serving.map(\.number) == [2] } != nil, "\(up.logText)")
        #expect(up.waitForStatus { _ in load.count > 50 } != nil)
        let (answered, failures) = load.stop()
        #expect(failures.isEmpty, "\(failures.count) failed of \(answered + failures.count): \(failures.prefix(3))")
        #expect(up.waitForLog("got up's socket", count: 4, timeout: 10), "\(up.logText)")
        #expect(count("got up's socket", in: up.logText) == 4, "\(up.logText)")
        #expect(up.stop() == 0, "\(up.logText)")
    }
}


extension UpInterceptTests {
    @Test("the notification descriptor crosses up's in-place upgrade: a bind after the upgrade still gets up's socket")
    func bindAfterUpgrade() throws {
        let server = try #require(try goServers.get()["static"])
        let port = try freePort()
        let up = try UpProcess(["--listen", "127.0.0.1:\(port)", "--", server, "127.0.0.1:\(port)", "late", "late"])
        let address = try up.servingAddress()
        let upgrade = try capture([portreuse, "up", "upgrade", "--pid-file", up.pidFile], timeout: 30)
        #expect(upgrade.status == 0, "\(upgrade.stderr)\n\(up.logText)")
        #expect(up.waitForStatus { $0.upgrades == 1 } != nil, "\(up.logText)")
        #expect(up.waitForLog("bound late 127.0.0.1:\(port)", timeout: 10), "\(up.logText)")
        let log = up.logText
        let upgraded = try #require(log.range(of: "upgraded:"), "\(log)")
        #expect(log[upgraded.upperBound...].contains("got up's socket"), "the late bind was not answered by the new up:\n\(log)")
        #expect(!log.contains("error: late"), "\(log)")
        #expect(try httpGet(address) == "late")
        #expect(up.stop() == 0, "\(up.logText)")
    }

    @Test("UDP: a program that binds the held UDP address gets up's socket and answers datagrams", .enabled(if: python != nil))
    func udpSwap() throws {
        let port = try freePort(.udp)
        let echo = """
            import socket
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("127.0.0.1", \(port)))
            while True:
                data, peer = s.recvfrom(2048)
                s.sendto(b"echo " + data, peer)
            """
        let up = try UpProcess(["--listen", "udp:127.0.0.1:\(port)", "--ready", "delay:300ms", "--", python!, "-c", echo])
        #expect(up.waitForStatus { !$0.serving.isEmpty } != nil, "\(up.logText)")
        let client = try DatagramSocket(udp: "127.0.0.1:0")
        let target = SocketAddress(ip: .loopbackIPv4, port: port)
        let answer = waitFor(timeout: 5, interval: 0.1) { () -> String? in
            _ = try? client.send(Array("ping".utf8), to: target)
            guard let got = try? client.receive(timeout: .milliseconds(200)) else { return nil }
            return String(decoding: got.bytes, as: UTF8.self)
        }
        #expect(answer == "echo ping", "\(up.logText)")
        #expect(up.waitForLog("(UDP) 127.0.0.1:\(port) of python3"), "\(up.logText)")
        #expect(up.waitForLog("got up's socket", timeout: 10), "\(up.logText)")
        #expect(up.stop() == 0, "\(up.logText)")
    }

    @Test("which bind gets which held socket: same IP, wildcards, and the families that cannot work")
    func familyRules() {
        func held(_ text: String, dualStack: Bool = false, transport: Transport = .tcp) -> SocketSwap.Held {
            let colon = text.lastIndex(of: ":")!
            let ip = IPAddress(String(text[..<colon]).trimmingCharacters(in: CharacterSet(charactersIn: "[]")))!
            return .init(descriptor: Descriptor(100), name: "x", transport: transport, address: SocketAddress(ip: ip, port: UInt16(text[text.index(after: colon)...])!),
                         dualStack: dualStack)
        }
        func decide(_ ip: String, _ family: AddressFamily, v6Only: Bool = false, _ list: [SocketSwap.Held], transport: Transport = .tcp) -> String {
            let requested = SocketAddress(ip: IPAddress(ip)!, port: 8080)
            switch SocketSwap.decide(requested: requested, programFamily: family, programIPv6Only: v6Only, transport: transport, held: list) {
            case .passThrough(let note): return note == nil ? "pass" : "pass+note"
            case .swap(let index, let note): return "swap \(index)" + (note == nil ? "" : "+note")
            case .refuse(let code, _): return code == EAFNOSUPPORT ? "EAFNOSUPPORT" : "errno \(code)"
            }
        }
        let v4 = [held("127.0.0.1:8080")], any4 = [held("0.0.0.0:8080")], any6 = [held("[::]:8080")], dual = [held("[::]:8080", dualStack: true)]
        #expect(decide("127.0.0.1", .ipv4, v4) == "swap 0")  // Python AF_INET, Go 127.0.0.1:P
        #expect(decide("::ffff:127.0.0.1", .ipv6, v4) == "swap 0")  // Java
        #expect(decide("127.0.0.2", .ipv4, v4) == "pass+note")
        #expect(decide("0.0.0.0", .ipv4, v4) == "pass+note")  // a wider bind than held: the kernel answers
        #expect(decide("127.0.0.1", .ipv4, v4, transport: .udp) == "pass")  // another transport
        #expect(decide("0.0.0.0", .ipv4, any4) == "swap 0")
        #expect(decide("::", .ipv6, any4) == "swap 0+note")  // Go's ":P" with --listen :P: IPv4 only, said
        #expect(decide("::", .ipv6, v6Only: true, any4) == "EAFNOSUPPORT")
        #expect(decide("0.0.0.0", .ipv4, any6) == "EAFNOSUPPORT")  // an IPv4 socket never gets an IPv6 one
        #expect(decide("0.0.0.0", .ipv4, dual) == "EAFNOSUPPORT")
        #expect(decide("::", .ipv6, dual) == "swap 0")
        #expect(decide("::", .ipv6, any6) == "swap 0+note")  // dual-stack program, IPv6-only socket: said
        #expect(decide("::", .ipv6, v6Only: true, any6) == "swap 0")
        #expect(decide("::", .ipv6, any4 + dual) == "swap 1")  // the same family first
        #expect(decide("127.0.0.1", .ipv4, [held("[::ffff:127.0.0.1]:8080")]) == "EAFNOSUPPORT")
        #expect(decide("::1", .ipv6, v4) == "pass+note")
    }
}

extension UpInterceptTests {
    /// The figure of the README: `swift test --filter UpInterceptTests/reloadVersusStartUp`.
    @Test("reload time of a swapped-socket Go server vs its own start-up: the spawn and the swap add little")
    func reloadVersusStartUp() throws {
        let server = try #require(try goServers.get()["static"])
        func median(_ values: [Double]) -> Double { values.sorted()[values.count / 2] }
        func firstAnswer(_ address: SocketAddress, otherThan old: String?, timeout: Double = 10) -> String? {
            waitFor(timeout: timeout, interval: 0.0002) { () -> String? in
                guard let body = try? httpGet(address), body != old else { return nil }
                return body
            }
        }
        // A reload under up: from SIGHUP until the new generation answers. Steered, every connection goes to the
        // old generation until the new one is ready (up's probe, steered to it alone, is accepted) and the program
        // is replaced: the time is the new one's start-up, the probe and the cutover. Each round also times its
        // own start-up (spawned directly, until it answers), side by side, since this machine's speed drifts.
        let port = try freePort()
        let up = try UpProcess(["--listen", "127.0.0.1:\(port)", "--", server, "127.0.0.1:\(port)", "up", "pid"])
        let address = try up.servingAddress()
        var own: [Double] = []
        var reload: [Double] = []
        for number in 2...16 {
            let ownPort = try freePort()
            var start = Processes.monotonicNanoseconds
            var spawn = ProcessSpawn([server, "127.0.0.1:\(ownPort)", "own", "pid"])
            spawn.standardOutput = .null
            let pid = try spawn.start()
            #expect(firstAnswer(SocketAddress(ip: .loopbackIPv4, port: ownPort), otherThan: nil) != nil)
            own.append(Double(Processes.monotonicNanoseconds - start) / 1e6)
            kill(pid, SIGKILL)
            _ = reap(pid, timeout: 5)

            let old = try httpGet(address)
            start = Processes.monotonicNanoseconds
            up.signal(SIGHUP)
            #expect(firstAnswer(address, otherThan: old) != nil, "\(up.logText)")
            reload.append(Double(Processes.monotonicNanoseconds - start) / 1e6)
            #expect(up.waitForStatus { $0.serving.map(\.number) == [number] && $0.generations.count == 1 } != nil, "\(up.logText)")
        }
        #expect(up.stop() == 0, "\(up.logText)")
        let (ownMedian, reloadMedian) = (median(own), median(reload))
        print(String(format: "up-intercept reload vs start-up (Go net/http, static, 15 each, interleaved): own start-up to first answer %.1f ms, "
            + "reload (SIGHUP to the new generation's first answer) %.1f ms: %+.1f ms", ownMedian, reloadMedian, reloadMedian - ownMedian))
        #expect(reloadMedian - ownMedian < 50, "own \(own), reload \(reload)")
    }
}

extension UpInterceptTests {
    @Test("where the kernel refuses the bind filter (here: up runs under another seccomp listener), up says so once and serves and reloads with LISTEN_FDS")
    func refusedFilterFallsBack() throws {
        // Through a shell: `portreuse run -- portreuse up` itself is refused (below); a runtime's seccomp supervisor
        // is what this stands for.
        let up = try UpProcess(["--listen", "127.0.0.1:0", "--", hello], launcher: [portreuse, "run", "--intercept", "kernel", "--", "/bin/sh", "-c", "exec \"$0\" \"$@\""])
        let address = try up.servingAddress()
        #expect((try? httpGet(address)) != nil)
        up.signal(SIGHUP)  // to run, which forwards it to up
        #expect(up.waitForStatus { $0.serving.map(\.number) == [2] && $0.generations.count == 1 } != nil, "\(up.logText)")
        #expect((try? httpGet(address)) != nil)
        #expect(count("the kernel refused the seccomp filter", in: up.logText) == 1, "\(up.logText)")
        #expect(!up.logText.contains("got up's socket"))
        #expect(up.stop() == 0, "\(up.logText)")
    }
}

@Suite("portreuse run through the kernel: when portreuse is gone")
struct InterceptorGoneTests {
    @Test("kill -9 of portreuse run: the program gets SIGTERM; one that ignores it gets ENOSYS from its next bind (as docs/run.md says)")
    func bindAfterRunDiedFailsWithENOSYS() throws {
        let folder = try TemporaryFolder()
        let script = """
            import errno, os, signal, socket, sys, time
            folder = sys.argv[1]
            def bind():
                s = socket.socket()
                try: s.bind(("127.0.0.1", 0)); return "ok"
                except OSError as e: return errno.errorcode.get(e.errno, str(e.errno))
                finally: s.close()
            signal.signal(signal.SIGTERM, lambda *a: open(folder + "/term", "w").write("SIGTERM"))
            open(folder + "/first", "w").write(bind())
            end = time.time() + 30
            while not os.path.exists(folder + "/go") and time.time() < end: time.sleep(0.01)
            open(folder + "/second", "w").write(bind())
            """
        let path = try folder.write("binder.py", script)
        let run = try spawn([portreuse, "run", "--intercept", "kernel", "--policy", "shared", "--", systemPython, path, folder.path], log: folder.path + "/run.log")
        defer { killAndReap(run) }
        // Written by open() then write(): wait for the text, not for the file.
        let first = waitFor(timeout: 20) { (try? String(contentsOfFile: folder.path + "/first", encoding: .utf8)).flatMap { $0.isEmpty ? nil : $0 } }
        #expect(first == "ok", "\((try? String(contentsOfFile: folder.path + "/run.log", encoding: .utf8)) ?? "")")
        let program = try #require(Processes.descendants(of: run).first?.pid)
        defer { kill(program, SIGKILL) }
        kill(run, SIGKILL)
        _ = reap(run, timeout: 10)
        _ = FileManager.default.createFile(atPath: folder.path + "/go", contents: nil)
        let second = waitFor(timeout: 20) { (try? String(contentsOfFile: folder.path + "/second", encoding: .utf8)).flatMap { $0.isEmpty ? nil : $0 } }
        #expect(second == "ENOSYS")
        #expect((try? String(contentsOfFile: folder.path + "/term", encoding: .utf8)) == "SIGTERM", "the program got SIGTERM when run died")
    }
}

extension InterceptorGoneTests {
    @Test("processes killed in the middle of an intercepted bind (40 of them) leave portreuse run answering the others")
    func killedDuringNotification() throws {
        let script = """
            import os, signal, socket, time
            def binder():
                while True:
                    s = socket.socket(); s.bind(("127.0.0.1", 0)); s.close()
            children = []
            for _ in range(40):
                pid = os.fork()
                if pid == 0: binder()
                time.sleep(0.02)
                os.kill(pid, signal.SIGKILL); os.waitpid(pid, 0)
            s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen()
            print("ok", s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT))
            """
        let result = try capture([portreuse, "run", "--intercept", "kernel", "--policy", "shared", "--", systemPython, "-c", script], timeout: 60)
        #expect(result.status == 0, "\(result.stderr)")
        #expect(result.output == "ok 1\n", "\(result.output) \(result.stderr)")
    }
}

extension UpInterceptTests {
    /// Binds the held address `argv[2]` times (closing each socket), then an IPv4 address on an IPv6 socket
    /// (a 16-byte sockaddr_in, through libc: Python would not pass one), writing that bind's errno to `argv[3]`.
    static let binder = """
        import ctypes, os, socket, struct, sys, time
        port, count, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
        for _ in range(count):
            s = socket.socket(); s.bind(("127.0.0.1", port)); s.close()
        libc = ctypes.CDLL(None, use_errno=True)
        v6 = socket.socket(socket.AF_INET6)
        address = struct.pack("=H", socket.AF_INET) + struct.pack("!H", port) + socket.inet_aton("127.0.0.1") + bytes(8)
        result = libc.bind(v6.fileno(), address, len(address))
        open(out, "w").write(str(ctypes.get_errno() if result != 0 else 0))
        time.sleep(60)
        """

    @Test("200 binds of the held address log a handful of lines, not 200; an IPv4 address on an IPv6 socket fails as without up (EINVAL)")
    func bindsInALoopAndWrongFamily() throws {
        let folder = try TemporaryFolder()
        let script = try folder.write("binder.py", Self.binder)
        let reservation = try PortReservation()
        let up = try UpProcess(["--listen", "127.0.0.1:\(reservation.port)", "--ready", "delay:100ms", "--", systemPython, script,
                                "\(reservation.port)", "200", folder.path + "/errno"])
        _ = try up.servingAddress()
        reservation.release()
        let errno = waitFor { (try? String(contentsOfFile: folder.path + "/errno", encoding: .utf8)).flatMap { $0.isEmpty ? nil : $0 } }
        #expect(errno == "\(EINVAL)", "the kernel's answer to a 16-byte address on an IPv6 socket: \(up.logText)")
        #expect(up.waitForLog("bind 100 given up's socket"), "\(up.logText)")
        let lines = up.logText.components(separatedBy: "\n").filter { $0.contains("got up's socket") }.count
        #expect(lines <= 6, "\(lines) lines for 200 binds")
        #expect(up.stop() == 0)
    }
}

extension UpInterceptTests {
    @Test("portreuse run -- portreuse up is refused (exit 64), saying to run up directly: run would answer the binds up and its programs make")
    func runWrappingUpIsRefused() throws {
        let result = try capture([portreuse, "run", "--intercept", "kernel", "--", portreuse, "up", "--listen", "127.0.0.1:0", "--", "/bin/true"], timeout: 20)
        #expect(result.status == 64, "\(result.stderr)")
        #expect(result.stderr.contains("Run `portreuse up …` directly"), "\(result.stderr)")
    }
}

extension UpInterceptTests {
    @Test("a program that listens on another address than the held one (a wrong port in its configuration) is named once in the log")
    func bindOfAnotherAddressIsNamed() throws {
        let other = try PortReservation()
        other.release()
        let script = """
            import socket, time
            for _ in range(3):
                s = socket.socket(); s.bind(("127.0.0.1", \(other.port))); s.close()
            time.sleep(60)
            """
        let up = try UpProcess(["--listen", "127.0.0.1:0", "--ready", "delay:100ms", "--", systemPython, "-c", script])
        _ = try up.servingAddress()
        #expect(up.waitForLog("127.0.0.1:\(other.port)"), "\(up.logText)")
        let lines = up.logText.components(separatedBy: "\n").filter { $0.contains("not an address up holds") }
        #expect(lines.count == 1 && lines[0].contains("up holds 127.0.0.1:"), "\(lines)")
        #expect(up.stop() == 0)
    }
}
