import Foundation
import Glibc
import PortReuse
import PortReuseTools
import TestSupport
import Testing
import PortReuseSystem

/// `portreuse up --health` and `--stop-delay` end to end: a real `up`, real HTTP clients, and `/metrics` read by
/// the real Prometheus parser (prometheus_client, which .ci/run installs with pip beside gunicorn).
@Suite("up: health endpoint, stop delay, metrics")
struct UpHealthTests {
    /// The health listener's address, from up's log line `health: http://ADDR/readyz, …`.
    static func healthAddress(_ up: UpProcess) throws -> SocketAddress {
        // First up itself, then its line: a failure says which of the two is missing.
        try #require(up.waitForStatus { $0.pid == up.pid } != nil, "up did not start:\n\(up.logText)")
        try #require(up.waitForLog("health: http://"), "no health line:\n\(up.logText)")
        let line = try #require(up.logText.components(separatedBy: "\n").first { $0.contains("health: http://") })
        let text = try #require(line.components(separatedBy: "http://").last?.components(separatedBy: "/readyz").first)
        let colon = try #require(text.lastIndex(of: ":"))
        return SocketAddress(ip: try #require(IPAddress(String(text[..<colon]))), port: try #require(UInt16(text[text.index(after: colon)...])))
    }

    /// Sends `request` as it is and reads until the server closes: the status code (0 when it closed without
    /// an answer) and the body.
    static func exchange(_ address: SocketAddress, _ request: String) throws -> (status: Int, body: String) {
        let connection = try Connection.dial(to: address, policy: .exclusive, timeout: .seconds(5))
        try connection.send(request)
        let response = String(decoding: try connection.receiveAll(timeout: .seconds(10)), as: UTF8.self)
        let status = response.split(separator: " ", maxSplits: 2).dropFirst().first.flatMap { Int($0) } ?? 0
        return (status, response.components(separatedBy: "\r\n\r\n").dropFirst().joined(separator: "\r\n\r\n"))
    }

    static func get(_ address: SocketAddress, _ path: String) throws -> (status: Int, body: String) {
        try exchange(address, "GET \(path) HTTP/1.1\r\nHost: test\r\n\r\n")
    }

    @Test("--health: /readyz 200 once ready, /livez 200, 404, 405, HEAD without a body")
    func endpoints() throws {
        let up = try UpProcess(["--listen", "127.0.0.1:0", "--health", "127.0.0.1:0", "--", hello, "--name", "H"])
        let health = try Self.healthAddress(up)
        _ = try up.servingAddress()
        #expect(try Self.get(health, "/readyz") == (200, "ready: generation 1 serves\n"))
        #expect(try Self.get(health, "/livez").status == 200)
        #expect(try Self.get(health, "/nope").status == 404)
        #expect(try Self.exchange(health, "POST /readyz HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n").status == 405)
        #expect(try Self.exchange(health, "HEAD /readyz HTTP/1.1\r\nHost: t\r\n\r\n") == (200, ""))
        #expect(up.stop() == 0)
    }

    @Test("bad requests (garbage, an oversized head, silent connections, 100 connections at once) neither block nor kill up")
    func badRequests() throws {
        let up = try UpProcess(["--listen", "127.0.0.1:0", "--health", "127.0.0.1:0", "--", hello, "--name", "B"])
        let health = try Self.healthAddress(up)
        let serving = try up.servingAddress()
        #expect(try Self.exchange(health, "\u{1}\u{2}garbage\r\n\r\n").status == 400)
        let oversized = try Self.exchange(health, "GET /readyz HTTP/1.1\r\nX: " + String(repeating: "a", count: 9000) + "\r\n\r\n")
        #expect(oversized.status == 431 || oversized.status == 0, "an oversized head is refused: \(oversized)")

        // Silent connections: past the limit (64) each new one evicts the oldest, the head deadline (2 s) ends the others.
        let started = Date()
        let silent = try (0..<100).map { _ in try Connection.dial(to: health, policy: .exclusive, timeout: .seconds(5)) }
        #expect(try httpGet(serving).hasPrefix("hello from B"), "the program serves meanwhile")
        #expect(kill(up.pid, 0) == 0)
        let ends = try silent.map { try $0.receiveAll(timeout: .seconds(10)).count }
        let waited = Date().timeIntervalSince(started)
        #expect(ends.allSatisfy { $0 == 0 }, "closed without an answer")
        #expect(waited >= 1.5 && waited < 6, "the silent connections were closed after about 2 s: \(waited) s")
        #expect(try Self.get(health, "/livez").status == 200)
        #expect(try Self.get(health, "/readyz").status == 200)
        #expect(up.stop() == 0)
    }

    @Test("200 slow and garbage connections: every probe with a 1 s timeout is answered; a bad request gets one 400 and closes at once; 405 for any other method")
    func slowClients() throws {
        let up = try UpProcess(["--listen", "127.0.0.1:0", "--health", "127.0.0.1:0", "--", hello, "--name", "L"])
        let health = try Self.healthAddress(up)
        _ = try up.servingAddress()
        #expect(try Self.get(health, "/readyz").status == 200)
        // 200 connections that trickle a byte at a time, and 20 that send garbage and stay open.
        var slow: [Connection] = []
        for index in 0..<220 {
            let connection = try Connection.dial(to: health, policy: .exclusive, timeout: .seconds(5))
            try connection.send(index < 200 ? "G" : "\u{1}\u{2}\u{3}")
            slow.append(connection)
        }
        // Probes as Kubernetes sends them, each given 1 s, while the slow clients go on trickling.
        var answered = 0
        for round in 0..<20 {
            for connection in slow.prefix(200) where round % 5 == 0 { try? connection.send("E") }
            let probe = try Connection.dial(to: health, policy: .exclusive, timeout: .seconds(1))
            try probe.send("GET \(round % 2 == 0 ? "/readyz" : "/livez") HTTP/1.1\r\nHost: probe\r\n\r\n")
            let response = String(decoding: (try? probe.receiveAll(timeout: .seconds(1))) ?? [], as: UTF8.self)
            if response.hasPrefix("HTTP/1.1 200") { answered += 1 }
        }
        #expect(answered == 20, "probes answered within 1 s under 200 slow clients: \(answered) of 20")
        withExtendedLifetime(slow) {}

        // A request line without a version: one 400, and the connection closes at once.
        let started = Date()
        let bad = try Connection.dial(to: health, policy: .exclusive, timeout: .seconds(5))
        try bad.send("GET /readyz\r\n\r\n")
        let badAnswer = String(decoding: try bad.receiveAll(timeout: .seconds(5)), as: UTF8.self)
        #expect(badAnswer.components(separatedBy: "HTTP/1.1 400").count == 2, "one 400: \(badAnswer)")
        #expect(Date().timeIntervalSince(started) < 1, "closed at once after its 400")
        for method in ["OPTIONS", "CONNECT", "DELETE"] {
            let target = method == "CONNECT" ? "example.com:443" : method == "OPTIONS" ? "*" : "/readyz"
            #expect(try Self.exchange(health, "\(method) \(target) HTTP/1.1\r\nHost: t\r\n\r\n").status == 405, "\(method)")
        }
        #expect(up.stop() == 0)
    }

    @Test("SIGTERM with --stop-delay: /readyz says 503 before any generation gets its stop signal, and a load through the delay sees no failure")
    func stopDelayUnderLoad() throws {
        let up = try UpProcess(["--listen", "127.0.0.1:0", "--health", "127.0.0.1:0", "--stop-delay", "3s", "--", hello, "--name", "S"])
        let health = try Self.healthAddress(up)
        let serving = try up.servingAddress()
        let load = HTTPLoad(serving, clients: 4)
        #expect(waitUntil { load.count > 20 })
        up.signal(SIGTERM)
        #expect(waitUntil(timeout: 2) { (try? Self.get(health, "/readyz").status) == 503 }, "\(up.logText)")
        let delaying = up.waitForStatus(timeout: 2) { $0.state.name == "delayingStop" }
        #expect(delaying?.generations.isEmpty == false && delaying?.generations.allSatisfy { $0.state == "ready" } == true,
                "every generation serves on, none has its stop signal: \(up.logText)")
        // The log is written by a thread of its own: its line may come a moment after /readyz flips.
        #expect(up.waitForLog("(--stop-delay)", timeout: 2), "\(up.logText)")
        let atFlip = up.logText
        #expect(!atFlip.contains("draining") && !atFlip.contains("is stopping"), "a generation got its stop signal before /readyz said 503:\n\(atFlip)")
        let before = load.count
        #expect(waitUntil { load.count > before + 50 }, "the generation serves on during the delay")
        let (answered, failures) = load.stop()
        #expect(!up.logText.contains("--stop-delay 3s is over"), "the load ran beyond the delay: the test proves nothing")
        #expect(failures.isEmpty, "\(failures.prefix(5))")
        #expect(answered > 70)
        #expect(up.waitForExit() == 0)
        let log = up.logText  // whole: up writes out its log before it exits
        let over = try #require(log.range(of: "--stop-delay 3s is over")), stopping = try #require(log.range(of: "is stopping"))
        #expect(over.lowerBound < stopping.lowerBound, "the generation heard STOPPING only after the delay")
    }

    // MARK: /metrics with prometheus_client

    /// The Python of the virtual environment .ci/run made for gunicorn, if it has prometheus_client.
    static let prometheusPython: String? = {
        guard let gunicorn = UpTests.gunicorn else { return nil }
        let python = URL(fileURLWithPath: gunicorn).resolvingSymlinksInPath().deletingLastPathComponent().appendingPathComponent("python3").path
        return (try? run([python, "-c", "import prometheus_client"]).status) == 0 ? python : nil
    }()

    static let scrapeScript = """
        import json, sys, urllib.request
        from prometheus_client.parser import text_string_to_metric_families
        response = urllib.request.urlopen(sys.argv[1], timeout=5)
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4"), response.headers["Content-Type"]
        samples, types = {}, {}
        for family in text_string_to_metric_families(response.read().decode()):
            types[family.name] = family.type
            for s in family.samples:
                samples[s.name + "{" + ",".join(f"{k}={v}" for k, v in sorted(s.labels.items())) + "}"] = s.value
        print(json.dumps({"samples": samples, "types": types}))
        """

    struct Scrape: Decodable {
        var samples: [String: Double]
        var types: [String: String]
        subscript(_ key: String) -> Double? { samples[key] }
    }

    /// `/metrics` parsed by prometheus_client (run through `launcher`, e.g. into a network namespace).
    static func scrape(_ health: SocketAddress, launcher: [String] = []) throws -> Scrape {
        let result = try capture(launcher + [prometheusPython!, "-c", scrapeScript, "http://\(health)/metrics"])
        try #require(result.status == 0, "prometheus_client: \(result.stderr)")
        return try JSONDecoder().decode(Scrape.self, from: Data(result.stdout))
    }

    @Test("/metrics parses with prometheus_client: generations by phase, reloads by result, restarts, connections, accept queue and backlog",
          .enabled(if: prometheusPython != nil, "prometheus_client is not installed (.ci/run installs it with pip)"))
    func metrics() throws {
        // sleep never accepts: the connections the test opens wait in the accept queue.
        let up = try UpProcess(["--listen", "127.0.0.1:0", "--health", "127.0.0.1:0", "--ready", "delay:100ms", "--drain-timeout", "1s", "--", "/bin/sleep", "60"])
        let health = try Self.healthAddress(up)
        let serving = try up.servingAddress()
        let listener = "listener=\(serving),name=unknown"
        let first = try Self.scrape(health)
        #expect(first.types["portreuse_up_reloads"] == "counter" && first.types["portreuse_up_generations"] == "gauge")
        #expect(first["portreuse_up_generations{phase=ready}"] == 1 && first["portreuse_up_generations{phase=starting}"] == 0)
        #expect(first["portreuse_up_reloads_total{result=ready}"] == 0 && first["portreuse_up_restarts_total{}"] == 0)
        #expect(first["portreuse_up_last_reload_duration_seconds{}"] == nil, "no reload yet")
        #expect(first["portreuse_up_generation_connections{generation=1}"] == 0)
        let somaxconn = Double(try String(contentsOfFile: "/proc/sys/net/core/somaxconn", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines))!
        #expect(first["portreuse_up_listener_backlog{\(listener)}"] == min(4096, somaxconn))
        #expect(first["portreuse_up_listener_queue_depth{\(listener)}"] == 0)
        #expect(first["portreuse_up_ready{}"] == 1)

        let waiting = try (0..<3).map { _ in try Connection.dial(to: serving, policy: .exclusive, timeout: .seconds(5)) }
        #expect(try waitFor { try Self.scrape(health)["portreuse_up_listener_queue_depth{\(listener)}"] } == 3)
        up.signal(SIGHUP)
        #expect(up.waitForStatus { $0.serving.map(\.number) == [2] && $0.generations.count == 1 } != nil, "\(up.logText)")
        let second = try Self.scrape(health)
        #expect(second["portreuse_up_reloads_total{result=ready}"] == 1 && second["portreuse_up_reloads_total{result=failed}"] == 0)
        #expect((second["portreuse_up_last_reload_duration_seconds{}"] ?? 0) >= 0.1, "ready by delay:100ms")
        #expect(second["portreuse_up_generation_connections{generation=2}"] == 0)
        // Steered, generation 2 has a socket of its own; what waited on generation 1's, which never accepted, moves
        // to generation 2's when up retires it (after --drain-timeout), steered by eBPF; by classic BPF it is reset,
        // and counted.
        let classic = up.logText.contains("steered by classic BPF")
        #expect(second["portreuse_up_listener_queue_depth{\(listener)}"] == (classic ? 0 : 3), "\(up.logText)")
        #expect(second["portreuse_up_retired_queue_resets_total{}"] == (classic ? 3 : 0), "\(up.logText)")
        for counter in ["portreuse_up_tcp_listen_overflows_total{}", "portreuse_up_tcp_listen_drops_total{}"] {
            let (before, after) = (try #require(first[counter]), try #require(second[counter]))
            #expect(before >= 0 && after >= before, "\(counter): \(before) then \(after)")
        }
        withExtendedLifetime(waiting) {}
        #expect(up.stop() == 0)
    }

    @Test("/metrics: the connections a generation holds, counted from the kernel's tables",
          .enabled(if: prometheusPython != nil, "prometheus_client is not installed (.ci/run installs it with pip)"))
    func connections() throws {
        // Accepts and keeps every connection open.
        let keeper = "import socket\ns = socket.socket(fileno=3)\nheld = []\nwhile True:\n    held.append(s.accept()[0])\n"
        let up = try UpProcess(["--listen", "127.0.0.1:0", "--health", "127.0.0.1:0", "--ready", "delay:100ms", "--", systemPython, "-c", keeper])
        let health = try Self.healthAddress(up)
        let serving = try up.servingAddress()
        let clients = try (0..<4).map { _ in try Connection.dial(to: serving, policy: .exclusive, timeout: .seconds(5)) }
        #expect(try waitFor { try Self.scrape(health)["portreuse_up_generation_connections{generation=1}"].flatMap { $0 == 4 ? $0 : nil } } == 4, "\(up.logText)")
        withExtendedLifetime(clients) {}
        #expect(up.stop() == 0)
    }

    @Test("/metrics in a network namespace of its own: a full accept queue moves ListenOverflows and ListenDrops, a reload moves the reload counter",
          .enabled(if: isRoot && prometheusPython != nil, "needs root (unshare -n) and prometheus_client"))
    func listenDrops() throws {
        let namespace = try NetworkNamespace()
        // The program shrinks the shared socket's backlog to 1 (listen(fd, 1)) and never accepts.
        let shrink = "import socket, time\ns = socket.socket(fileno=3)\ns.listen(1)\ntime.sleep(60)\n"
        let up = try UpProcess(
            ["--listen", "127.0.0.1:0", "--health", "127.0.0.1:0", "--ready", "delay:200ms", "--no-intercept", "--", systemPython, "-c", shrink],
            launcher: namespace.command([]))
        let health = try Self.healthAddress(up)
        let serving = try up.servingAddress()
        let inside = namespace.command([])
        let before = try Self.scrape(health, launcher: inside)
        #expect(before["portreuse_up_listener_backlog{listener=\(serving),name=unknown}"] == 1)
        // Eight connections where two fit: the kernel drops the handshakes of the rest (the clients keep retrying).
        let clients = try namespace.run {
            try (0..<8).map { _ in
                let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
                var address = sockaddr_in(sin_family: sa_family_t(AF_INET), sin_port: serving.port.bigEndian, sin_addr: in_addr(s_addr: inet_addr("127.0.0.1")), sin_zero: (0, 0, 0, 0, 0, 0, 0, 0))
                _ = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
                try #require(fd >= 0)
                return fd
            }
        }
        defer { for fd in clients { close(fd) } }
        let drops = "portreuse_up_tcp_listen_drops_total{}", overflows = "portreuse_up_tcp_listen_overflows_total{}"
        let after = try #require(waitFor { () -> Scrape? in
            guard let scrape = try? Self.scrape(health, launcher: inside), (scrape[drops] ?? 0) > (before[drops] ?? 0) else { return nil }
            return scrape
        }, "ListenDrops did not move:\n\(up.logText)")
        #expect((after[overflows] ?? 0) > (before[overflows] ?? 0))
        #expect(after["portreuse_up_listener_queue_depth{listener=\(serving),name=unknown}"] == 2, "backlog 1 holds 2 connections")
        up.signal(SIGHUP)
        #expect(up.waitForStatus { $0.serving.map(\.number) == [2] } != nil, "\(up.logText)")
        let reloaded = try Self.scrape(health, launcher: inside)
        #expect(reloaded["portreuse_up_reloads_total{result=ready}"] == 1)
        #expect((reloaded[drops] ?? 0) >= (after[drops] ?? 0))
        #expect(up.stop() == 0)
    }

    @Test("bad --health and --stop-delay name the input and exit 64; a --health port in use exits 3")
    func badInput() throws {
        for (arguments, words) in [(["--health", "nonsense"], "--health nonsense"), (["--health", "udp:127.0.0.1:0"], "TCP address"), (["--stop-delay", "-1"], "--stop-delay -1")] {
            let result = try capture([portreuse, "up", "--listen", "127.0.0.1:0"] + arguments + ["--", "/bin/true"])
            #expect(result.status == 64 && result.stderr.contains(words), "\(arguments): \(result.status) \(result.stderr)")
        }
        let taken = try Listener(tcp: "127.0.0.1:0", policy: .exclusive)
        let result = try capture([portreuse, "up", "--listen", "127.0.0.1:0", "--health", "\(taken.localAddress)", "--", "/bin/sleep", "30"])
        #expect(result.status == 3 && result.stderr.contains("--health \(taken.localAddress)"), "\(result.status) \(result.stderr)")
    }
}

extension UpHealthTests {
    @Test("in-place upgrades with --health leak no descriptor (SwiftNIO's epoll, eventfd and timerfd do not cross the exec)")
    func upgradesLeakNothing() throws {
        // A fixed --health port: with port 0 each new up would bind another one.
        let reservation = try PortReservation()
        let up = try UpProcess(["--listen", "127.0.0.1:0", "--health", "127.0.0.1:\(reservation.port)", "--", hello])
        _ = try up.servingAddress()
        reservation.release()
        let health = SocketAddress(ip: .loopbackIPv4, port: reservation.port)
        func descriptors() -> [String] {
            Files.list("/proc/\(up.pid)/fd").compactMap { try? Processes.readLink("/proc/\(up.pid)/fd/\($0)") }.filter { $0.hasPrefix("anon_inode:") }.sorted()
        }
        var counts: [Int] = []
        for round in 1...4 {
            let upgraded = try capture([portreuse, "up", "upgrade", "--pid-file", up.pidFile], timeout: 60)
            try #require(upgraded.status == 0, "upgrade \(round): \(upgraded.stderr)\n\(up.logText)")
            try #require(waitUntil { (try? Self.get(health, "/livez").status) == 200 }, "the new up serves --health again: \(up.logText)")
            counts.append(descriptors().count)
        }
        #expect(Set(counts).count == 1, "anon_inode descriptors after each upgrade: \(counts): \(descriptors())")
        #expect(up.stop() == 0)
    }
}

extension UpHealthTests {
    @Test("/metrics counts listen drops from up's start: those of the namespace before it are not its own",
          .enabled(if: isRoot && prometheusPython != nil, "needs root (unshare -n) and prometheus_client"))
    func listenDropsFromStart() throws {
        let namespace = try NetworkNamespace()
        // A listener of someone else's with a queue of 1 that never accepts, and 8 connections to it: drops.
        let full = try Child(namespace.command([systemPython, "-c", """
            import socket, time
            s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(1); print(s.getsockname()[1], flush=True); time.sleep(60)
            """]))
        let port = try full.port()
        let clients = try namespace.run {
            (0..<8).map { _ in
                let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
                var address = sockaddr_in(sin_family: sa_family_t(AF_INET), sin_port: port.bigEndian, sin_addr: in_addr(s_addr: inet_addr("127.0.0.1")), sin_zero: (0, 0, 0, 0, 0, 0, 0, 0))
                _ = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
                return fd
            }
        }
        defer { for fd in clients { close(fd) } }
        let netstat = { () -> UInt64 in
            let text = (try? capture(namespace.command(["/bin/cat", "/proc/net/netstat"])).output) ?? ""
            return KernelReadings.netstat(Array(text.utf8), group: "TcpExt", names: ["ListenDrops"])["ListenDrops"] ?? 0
        }
        try #require(waitUntil { netstat() > 0 }, "the namespace counted no drop")
        let up = try UpProcess(["--listen", "127.0.0.1:0", "--health", "127.0.0.1:0", "--", hello], launcher: namespace.command([]))
        let health = try Self.healthAddress(up)
        _ = try up.servingAddress()
        let scrape = try Self.scrape(health, launcher: namespace.command([]))
        #expect(netstat() > 0)
        #expect(scrape["portreuse_up_tcp_listen_drops_total{}"] == 0, "drops before up started are not up's")
        #expect(up.stop() == 0)
    }
}
