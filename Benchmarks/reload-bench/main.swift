// Restarts under load, four ways, in one run: 16 clients keep sending short HTTP requests to the hello
// example while it is restarted 100 times per style; the table counts requests sent and failed, and the p99
// latency, per style. Then real servers (uvicorn, hypercorn, php -S, node cluster, http.server; those installed),
// 20 reloads each under up with default flags and with --shared-socket, beside their own reloads as anchors
// (gunicorn with uvicorn's worker, nginx).
//
//   swift build -c release && .build/release/reload-bench [restarts (100)] [clients (16)]
//
// RELOAD_BENCH_LOG=FILE appends every server's stderr (up's log) to FILE; RELOAD_BENCH_UP_ARGS="--no-intercept"
// (words split at spaces) adds options to both `portreuse up` rows, for a comparison in two runs.
//
// Styles: naive stop-then-start; SO_REUSEPORT overlap (start the new server, then stop the old one) with
// net.ipv4.tcp_migrate_req=0 and =1; `portreuse up` (SIGHUP); and the steady state (up serving, no restart), to
// which p99 during up's reloads is a ratio. Everything runs inside a network namespace of
// its own (`unshare -n`, re-executed automatically; needs root), so the sysctl and the ports are private.
// Also measured, under the same load and begun together with each of up's reloads: hello's own start-up (spawn to
// READY=1, binding by itself) against up's reload time (SIGHUP to up's READY=1), both read from a NOTIFY_SOCKET
// of this benchmark; the median difference per pair, with its 95% interval (100 restarts give one of about ±3 ms).
import BenchmarkSupport
import Glibc
import PortReuse
import Synchronization
import PortReuseSystem

printLinesAsTheyCome()

func fail(_ message: String) -> Never {
    FileDescriptorOutput.error("reload-bench: \(message)")
    exit(1)
}

/// The count given as argument `index`, or `standard` when there is none.
func count(_ index: Int, _ what: String, standard: Int) -> Int {
    guard CommandLine.arguments.count > index else { return standard }
    let text = CommandLine.arguments[index]
    guard let value = Int(text), value > 0 else { fail("\(what) must be a whole number above 0, not \"\(text)\": reload-bench [restarts (100)] [clients (16)]") }
    return value
}
let restarts = count(1, "restarts", standard: 100)
let clients = count(2, "clients", standard: 16)

enum FileDescriptorOutput {
    static func error(_ text: String) { let bytes = Array((text + "\n").utf8); _ = bytes.withUnsafeBytes { write(2, $0.baseAddress, $0.count) } }
    static func say(_ text: String) { let bytes = Array((text + "\n").utf8); _ = bytes.withUnsafeBytes { write(1, $0.baseAddress, $0.count) } }
}
let say = FileDescriptorOutput.say

let folder = executableFolder
let hello = folder + "/hello"
let nioHello = folder + "/nio-hello"
let portreuse = folder + "/portreuse"

// MARK: A network namespace of our own

if getenv("RELOAD_BENCH_IN_NAMESPACE") == nil {
    guard geteuid() == 0 else { fail("needs root for a network namespace of its own (unshare -n)") }
    for tool in [hello, portreuse] where access(tool, X_OK) != 0 { fail("\(tool) is missing: swift build -c release") }
    setenv("RELOAD_BENCH_IN_NAMESPACE", "1", 1)
    let arguments = ["/usr/bin/unshare", "-n", "/bin/sh", "-c", "ip link set lo up && exec \"$0\" \"$@\""] + CommandLine.arguments
    let argv = arguments.map { strdup($0) } + [nil]
    execv(arguments[0], argv)
    fail("cannot run unshare: \(String(cString: strerror(errno)))")
}

func sysctl(_ name: String, _ value: String) {
    let path = "/proc/sys/" + name.replacingDots()
    let fd = open(path, O_WRONLY)
    guard fd >= 0 else { fail("cannot set \(name): \(String(cString: strerror(errno)))") }
    _ = value.withCString { write(fd, $0, strlen($0)) }
    close(fd)
}

extension String {
    func replacingDots() -> String { String(map { $0 == "." ? "/" : $0 }) }
}

// MARK: Processes

/// The benchmark's own NOTIFY_SOCKET: READY=1 from hello (alone) or from up.
let notifyPath = "/tmp/reload-bench-\(getpid()).sock"
let notify: Int32 = {
    unlink(notifyPath)
    let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    var address = sockaddr_un()
    address.sun_family = sa_family_t(AF_UNIX)
    withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: Array(notifyPath.utf8)) }
    let bound = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
    guard bound == 0 else { fail("cannot bind \(notifyPath)") }
    return fd
}()

/// The next notify message and when it came, or `nil` once `deadline` (now()) has passed.
func nextNotify(until deadline: UInt64) -> (message: String, at: UInt64)? {
    var buffer = [UInt8](repeating: 0, count: 4096)
    while now() < deadline {
        var entry = pollfd(fd: notify, events: Int16(POLLIN), revents: 0)
        guard poll(&entry, 1, 100) > 0 else { continue }
        let count = recv(notify, &buffer, buffer.count, 0)
        if count > 0 { return (String(decoding: buffer[0..<count], as: UTF8.self), now()) }
    }
    return nil
}

/// Waits (at most `timeout` s) for a notify message containing `text`.
func waitForNotify(_ text: String, timeout: Double = 30) -> Bool {
    let deadline = now() + UInt64(timeout * 1e9)
    while let next = nextNotify(until: deadline) {
        if next.message.contains(text) { return true }
    }
    return false
}

func start(_ arguments: [String]) -> pid_t {
    var spawn = ProcessSpawn(arguments, environment: ["NOTIFY_SOCKET=\(notifyPath)", "PATH=/usr/bin:/bin"])
    spawn.standardError = getenv("RELOAD_BENCH_LOG").map { .appending(toFile: String(cString: $0)) } ?? .null  // the servers' logs
    spawn.standardOutput = .null  // uvicorn's access log, for one: never into the table
    guard let pid = try? spawn.start() else { fail("cannot start \(arguments[0])") }
    return pid
}

let pause: useconds_t = 150_000  // between restarts: the load runs against a settled server too

struct Row {
    var style: String
    var seconds: Double
    var sent: Int
    var failed: Int
    var p99: Double
    var errors: [String: Int]
}

func measure(_ style: String, keepAlive: Bool = false, times: Int = restarts, setUp: (SocketAddress) -> Void, restart: (SocketAddress) -> Void,
             tearDown: () -> Void) -> Row {
    let address = SocketAddress(ip: .loopbackIPv4, port: freePort())
    setUp(address)
    waitUntilAccepting(address)
    let load = HTTPLoad(address, clients: clients, keepAlive: keepAlive)
    let started = now()
    load.start()
    usleep(pause)
    for round in 1...times {
        restart(address)
        usleep(pause)
        FileDescriptorOutput.error("\r\(style): restart \(round)/\(times)   ")
    }
    let result = load.stop()
    tearDown()
    FileDescriptorOutput.error("")
    return Row(style: style, seconds: Double(now() - started) / 1e9, sent: result.sent, failed: result.failed, p99: result.p99, errors: result.errors)
}

// MARK: The styles

var rows: [Row] = []
var current: pid_t = 0

rows.append(measure("naive stop-then-start", setUp: { address in
    current = start([hello, "--listen", "\(address)", "--no-notify"])
}, restart: { address in
    stopAndWait(current)
    current = start([hello, "--listen", "\(address)", "--no-notify"])
    waitUntilAccepting(address)
}, tearDown: { stopAndWait(current) }))

for migrate in ["0", "1"] {
    sysctl("net.ipv4.tcp_migrate_req", migrate)
    rows.append(measure("SO_REUSEPORT overlap, tcp_migrate_req=\(migrate)", setUp: { address in
        current = start([hello, "--listen", "\(address)", "--policy", "shared"])
        _ = waitForNotify("READY=1")
    }, restart: { address in
        let next = start([hello, "--listen", "\(address)", "--policy", "shared"])
        guard waitForNotify("READY=1") else { fail("hello did not become ready") }
        stopAndWait(current)
        current = next
    }, tearDown: { stopAndWait(current) }))
}
sysctl("net.ipv4.tcp_migrate_req", "0")

/// hello's own start-up, under the same load: spawn to READY=1, binding a port of its own.
func helloStartup() -> Double {
    let started = now()
    let pid = start([hello, "--listen", "127.0.0.1:0"])
    guard waitForNotify("READY=1") else { fail("hello did not become ready") }
    let elapsed = Double(now() - started) / 1e6
    stopAndWait(pid)
    return elapsed
}

/// A reload of `up` and hello's own start-up, begun together (which one first alternates), so that both run
/// under the same load at the same moment: what slows one down slows the other. Both READY=1 come to this
/// benchmark's socket; up's names its generation. Milliseconds from SIGHUP, and from the spawn, to each.
func reloadBesideStartup(of up: pid_t, reloadFirst: Bool) -> (reload: Double, startup: Double) {
    var reloadStarted: UInt64 = 0, startupStarted: UInt64 = 0, alone: pid_t = 0
    for reload in [reloadFirst, !reloadFirst] {
        if reload {
            reloadStarted = now()
            kill(up, SIGHUP)
        } else {
            startupStarted = now()
            alone = start([hello, "--listen", "127.0.0.1:0"])
        }
    }
    var reloaded: UInt64?, started: UInt64?
    let deadline = now() + 30_000_000_000
    while reloaded == nil || started == nil, let next = nextNotify(until: deadline) {
        guard next.message.contains("READY=1") else { continue }
        if next.message.contains("generation") { reloaded = reloaded ?? next.at } else { started = started ?? next.at }
    }
    guard let reloaded, let started else { fail("a reload, or the start-up beside it, did not finish within 30 s") }
    stopAndWait(alone)
    return (Double(reloaded - reloadStarted) / 1e6, Double(started - startupStarted) / 1e6)
}

/// `portreuse up` with RELOAD_BENCH_UP_ARGS, serving hello on `address`.
func upCommand(_ address: SocketAddress) -> [String] {
    let extra = getenv("RELOAD_BENCH_UP_ARGS").map { String(cString: $0).split(separator: " ").map(String.init) } ?? []
    return [portreuse, "up", "--listen", "\(address)"] + extra + ["--", hello]
}

var reloadTimes: [Double] = []
var startupTimes: [Double] = []
/// up's own CPU time (not its generations'), from its readiness to its stop, per row.
var upCPU: [String: Double] = [:]
rows.append(measure("portreuse up (SIGHUP)", setUp: { address in
    current = start(upCommand(address))
    guard waitForNotify("READY=1") else { fail("portreuse up did not become ready") }
    upCPU["reloads"] = -cpuMilliseconds(current)
}, restart: { _ in
    let pair = reloadBesideStartup(of: current, reloadFirst: reloadTimes.count % 2 == 0)
    reloadTimes.append(pair.reload)
    startupTimes.append(pair.startup)
}, tearDown: {
    upCPU["reloads"]! += cpuMilliseconds(current)
    stopAndWait(current)
}))
// The same load on the same path, `up` serving, and the same side work (a hello started and stopped beside it)
// but no reload: what p99 during reloads is compared with.
rows.append(measure("steady state: portreuse up, no reload", setUp: { address in
    current = start(upCommand(address))
    guard waitForNotify("READY=1") else { fail("portreuse up did not become ready") }
    upCPU["steady"] = -cpuMilliseconds(current)
}, restart: { _ in
    _ = helloStartup()
}, tearDown: {
    upCPU["steady"]! += cpuMilliseconds(current)
    stopAndWait(current)
}))
// Keep-alive clients against nio-hello, which closes its idle keep-alive connections at once when it stops:
// a client that sends on one at that moment sees an end of file or a reset. The race is the program's (any
// server that closes idle connections has it); this row measures it, with and without reloads.
if access(nioHello, X_OK) == 0 {
    for reloading in [false, true] {
        rows.append(measure(reloading ? "portreuse up (SIGHUP), keep-alive clients, nio-hello" : "steady state, keep-alive clients, nio-hello", keepAlive: true, setUp: { address in
            current = start([portreuse, "up", "--listen", "\(address)", "--", nioHello, "--threads", "2"])
            guard waitForNotify("READY=1") else { fail("portreuse up did not become ready") }
        }, restart: { _ in
            guard reloading else { return }
            kill(current, SIGHUP)
            guard waitForNotify("READY=1") else { fail("the reload did not finish") }
        }, tearDown: { stopAndWait(current) }))
    }
} else {
    say("(no keep-alive rows: \(nioHello) is missing; swift build -c release --product nio-hello)")
}
// MARK: Real programs, default flags

/// Servers nobody here wrote, each reloaded by `up` with its default flags (steered generations) and, side by
/// side, with `--shared-socket` (one accept queue for all generations, the design before): whatever a program's
/// own stop does to the connections it just accepted shows in the second row and must not in the first. Anchors:
/// the programs' own reloads where they have one (gunicorn with uvicorn's worker, nginx), SIGHUP under the same load.
struct Program {
    var name: String
    var executable: String
    /// The command after `--` (or the whole command for an anchor), for the address and a folder with `files`.
    var command: (_ executable: String, _ address: SocketAddress, _ folder: String) -> [String]
    var files: [String: String] = [:]
    var upOptions: [String] = []
}

func onPath(_ name: String) -> String? {
    if name.hasPrefix("/") { return access(name, X_OK) == 0 ? name : nil }
    let path = getenv("PATH").map { String(cString: $0) } ?? "/usr/bin:/bin"
    return path.split(separator: ":").map { "\($0)/\(name)" }.first { access($0, X_OK) == 0 }
}

let asgi = """
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"asgi"})
    """
let programs = [
    Program(name: "uvicorn --fd 3", executable: "uvicorn", command: { [$0, "--app-dir", $2, "--fd", "3", "app:app"] }, files: ["app.py": asgi]),
    Program(name: "hypercorn --bind fd://3", executable: "hypercorn", command: { [$0, "--bind", "fd://3", $2 + "/app.py:app"] }, files: ["app.py": asgi]),
    Program(name: "php -S", executable: "php", command: { [$0, "-S", "\($1)", "-t", $2] }, files: ["index.php": "<?php echo \"php\\n\";"]),
    Program(name: "node cluster, 2 workers", executable: "node", command: { [$0, $2 + "/cluster.js", "\($1.port)"] }, files: ["cluster.js": """
        const cluster = require('cluster'), http = require('http');
        if (cluster.isPrimary) { for (let i = 0; i < 2; i++) cluster.fork(); }
        else { http.createServer((req, res) => res.end('node\\n')).listen(Number(process.argv[2]), '127.0.0.1'); }
        """]),
    Program(name: "python3 -m http.server", executable: "/usr/bin/python3",
            command: { [$0, "-m", "http.server", "--bind", "127.0.0.1", "--directory", $2, "\($1.port)"] }, files: ["index.html": "http.server\n"]),
]
let anchors = [
    Program(name: "gunicorn -k uvicorn.workers.UvicornWorker, its own SIGHUP", executable: "gunicorn",
            command: { [$0, "-k", "uvicorn.workers.UvicornWorker", "-w", "2", "-b", "\($1)", "--chdir", $2, "app:app"] }, files: ["app.py": asgi]),
    Program(name: "nginx, its own SIGHUP", executable: "/usr/sbin/nginx", command: { [$0, "-p", $2, "-e", $2 + "/error.log", "-c", $2 + "/nginx.conf", "-g", "daemon off;"] }),
]
let programRestarts = min(restarts, 20)

/// A folder with `files`, and nginx's configuration for `address` when asked.
func programFolder(_ program: Program, address: SocketAddress) -> String {
    var template = Array("/tmp/reload-bench-XXXXXX".utf8CString)
    guard let made = mkdtemp(&template) else { fail("cannot make a folder in /tmp") }
    let folder = String(cString: made)
    var files = program.files
    if program.executable.hasSuffix("nginx") {
        files["nginx.conf"] = """
            worker_processes 2; pid \(folder)/nginx.pid;
            events { worker_connections 1024; }
            http { access_log off; client_body_temp_path \(folder)/body; proxy_temp_path \(folder)/proxy; fastcgi_temp_path \(folder)/fastcgi;
                   uwsgi_temp_path \(folder)/uwsgi; scgi_temp_path \(folder)/scgi;
                   server { listen \(address); location / { return 200 "nginx\\n"; } } }
            """
    }
    for (name, text) in files {
        guard let file = fopen(folder + "/" + name, "w") else { fail("cannot write \(name)") }
        fputs(text, file)
        fclose(file)
    }
    return folder
}

for program in programs {
    guard let executable = onPath(program.executable) else {
        say("(no row for \(program.name): \(program.executable) is not installed)")
        continue
    }
    for shared in [false, true] {
        var folder = ""
        rows.append(measure("up, \(program.name)\(shared ? ", --shared-socket" : "")", times: programRestarts, setUp: { address in
            folder = programFolder(program, address: address)
            current = start([portreuse, "up", "--listen", "\(address)"] + (shared ? ["--shared-socket"] : []) + program.upOptions + ["--"]
                + program.command(executable, address, folder))
            guard waitForNotify("READY=1", timeout: 60) else { fail("portreuse up with \(program.name) did not become ready") }
        }, restart: { _ in
            kill(current, SIGHUP)
            guard waitForNotify("READY=1", timeout: 60) else { fail("a reload of \(program.name) did not finish") }
        }, tearDown: { stopAndWait(current) }))
    }
}
for anchor in anchors {
    guard let executable = onPath(anchor.executable) else {
        say("(no anchor row for \(anchor.name): \(anchor.executable) is not installed)")
        continue
    }
    rows.append(measure(anchor.name, times: programRestarts, setUp: { address in
        current = start(anchor.command(executable, address, programFolder(anchor, address: address)))
    }, restart: { _ in
        kill(current, SIGHUP)
        usleep(500_000)  // neither says when its reload is done: half a second each, more than either takes here
    }, tearDown: { stopAndWait(current) }))
}
unlink(notifyPath)

// MARK: The table

say("")
say("\(clients) clients, \(restarts) restarts per style, loopback in a network namespace of its own")
say("")
say("| style | seconds | requests sent | per second | failed | p99 latency ms | failures |")
say("|---|---|---|---|---|---|---|")
for row in rows {
    let errors = row.errors.sorted { $0.value > $1.value }.map { "\($0.key) \($0.value)" }.joined(separator: ", ")
    say("| \(row.style) | \(fixed(row.seconds, 1)) | \(row.sent) | \(Int(Double(row.sent) / max(row.seconds, 0.001))) | \(row.failed) | \(fixed(row.p99, 1)) | \(errors.isEmpty ? "-" : errors) |")
}
if let steady = rows.first(where: { $0.style.hasPrefix("steady state: portreuse up") }), let up = rows.first(where: { $0.style == "portreuse up (SIGHUP)" }), steady.p99 > 0 {
    say("")
    say("p99 during up's reloads / steady state: \(fixed(up.p99 / steady.p99, 2)) (target <= 1.2)")
}
// Each reload began together with a start-up: the difference is taken per pair. Start-ups under this load vary
// by tens of milliseconds from one to the next, so the median's 95% interval is printed beside it.
let differences = zip(reloadTimes, startupTimes).map { $0 - $1 }
let interval = medianInterval(differences)
say("")
say("| median of \(restarts) | ms |")
say("|---|---|")
say("| hello's own start-up under the same load (spawn to READY=1) | \(fixed(median(startupTimes), 1)) |")
say("| up's reload (SIGHUP to READY=1 of the new generation) | \(fixed(median(reloadTimes), 1)) |")
say("| difference, per pair (target <= 5); its 95% interval | \(fixed(median(differences), 1)); \(fixed(interval.low, 1)) to \(fixed(interval.high, 1)) |")
say("| up's own CPU time per reload (steady state: per round) | \(fixed((upCPU["reloads"] ?? 0) / Double(restarts), 1)) (\(fixed((upCPU["steady"] ?? 0) / Double(restarts), 1))) |")
