// nio-hello with one listener shared by all event loops and with one SO_REUSEPORT listener per loop, and
// nginx with `listen ... reuseport` as the reference, side by side in one run on loopback. Load from wrk: a keep-alive run (requests per second, p99) and a run with `Connection: close`
// (a new connection per request: connections per second, p99, and how evenly the connections spread over
// the loops or workers, max/min). Rounds interleave the servers, in a different order each round.
//
//   apt-get install wrk nginx-light          # Debian's packages
//   swift build -c release --product nio-hello && swift build -c release --product nio-bench
//   .build/release/nio-bench [rounds] [seconds per run] [loops]
import BenchmarkSupport
import Foundation
import Glibc

let arguments = CommandLine.arguments
let rounds = arguments.count > 1 ? Int(arguments[1]) ?? 3 : 3
let seconds = arguments.count > 2 ? Int(arguments[2]) ?? 5 : 5
let loops = arguments.count > 3 ? Int(arguments[3]) ?? 2 : 2
let keepAliveConnections = 64
let closeConnections = 32

func fail(_ message: String) -> Never {
    FileHandle.standardError.write(Data("nio-bench: \(message)\n".utf8))
    exit(1)
}

/// Prints at once (standard output may be a file).
func say(_ text: String) {
    FileHandle.standardOutput.write(Data((text + "\n").utf8))
}

/// The server under test, while it runs: Ctrl-C (SIGINT) or SIGTERM stops it and removes nginx's folders before
/// nio-bench exits, so that no nginx is left running on its own.
let running = NSLock()
nonisolated(unsafe) var serverUnderTest: Process?

/// Removes the folders this run made for nginx.
func removeNginxFolders() {
    let prefix = "nio-bench-nginx-\(getpid())-"
    let temporary = NSTemporaryDirectory()
    for name in (try? FileManager.default.contentsOfDirectory(atPath: temporary)) ?? [] where name.hasPrefix(prefix) {
        try? FileManager.default.removeItem(atPath: temporary + "/" + name)
    }
}

let interruptions = [SIGINT, SIGTERM].map { number in
    signal(number, SIG_IGN)
    let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
    source.setEventHandler {
        running.lock()
        if let process = serverUnderTest, process.isRunning {
            kill(process.processIdentifier, SIGTERM)
            process.waitUntilExit()
        }
        removeNginxFolders()
        FileHandle.standardError.write(Data("nio-bench: interrupted; the server under test is stopped\n".utf8))
        exit(128 + number)
    }
    source.resume()
    return source
}

let folder = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().deletingLastPathComponent().path
let nioHello = folder + "/nio-hello"
guard access(nioHello, X_OK) == 0 else { fail("\(nioHello) is missing: run `swift build -c release --product nio-hello` first") }
guard let wrk = (["/usr/bin/wrk", "/usr/local/bin/wrk"] as [String]).first(where: { access($0, X_OK) == 0 }) else {
    fail("wrk is missing: apt-get install wrk")
}
guard let nginx = (["/usr/sbin/nginx", "/usr/local/sbin/nginx"] as [String]).first(where: { access($0, X_OK) == 0 }) else {
    fail("nginx is missing: apt-get install nginx-light")
}

/// Runs a program to its end and returns its standard output.
func output(_ arguments: [String]) -> String {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: arguments[0])
    process.arguments = Array(arguments.dropFirst())
    let pipe = Pipe()
    process.standardOutput = pipe
    process.standardError = FileHandle.nullDevice
    do { try process.run() } catch { fail("cannot start \(arguments[0]): \(error)") }
    let data = pipe.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return String(decoding: data, as: UTF8.self)
}

/// Whether something accepts connections on 127.0.0.1:port.
func accepts(_ port: Int) -> Bool {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = UInt16(port).bigEndian
    address.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
    return withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    } == 0
}

/// A server under test.
struct Server {
    let label: String
    /// Starts it on a port; returns the process and how to read its per-loop (per-worker) connection counts.
    let start: (Int) -> (Process, () -> [Int])
}

func nio(_ label: String, _ extra: [String]) -> Server {
    Server(label: label) { port in
        let process = Process()
        process.executableURL = URL(fileURLWithPath: nioHello)
        process.arguments = ["--listen", "127.0.0.1:\(port)", "--threads", "\(loops)", "--stats"] + extra
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        do { try process.run() } catch { fail("cannot start nio-hello: \(error)") }
        return (process, {
            let answer = output(["/usr/bin/curl", "-s", "http://127.0.0.1:\(port)/stats"])
            return answer.split(whereSeparator: \.isWhitespace).compactMap { Int($0) }
        })
    }
}

/// nginx with one `listen ... reuseport` socket per worker; requests with `Connection: close` are logged
/// with the worker's pid (buffered), which gives the spread; keep-alive requests are not logged.
let nginxServer = Server(label: "nginx, listen reuseport") { port in
    let directory = NSTemporaryDirectory() + "nio-bench-nginx-\(getpid())-\(port)"
    try? FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    chmod(directory, 0o755)
    let log = directory + "/connections.log"
    let configuration = """
        worker_processes \(loops);
        pid \(directory)/nginx.pid;
        error_log \(directory)/error.log;
        events { worker_connections 4096; }
        http {
            access_log off;
            client_body_temp_path \(directory)/body; proxy_temp_path \(directory)/proxy;
            fastcgi_temp_path \(directory)/fastcgi; uwsgi_temp_path \(directory)/uwsgi; scgi_temp_path \(directory)/scgi;
            map $http_connection $closing { close 1; default 0; }
            log_format worker "$pid";
            server {
                listen 127.0.0.1:\(port) reuseport backlog=4096;
                access_log \(log) worker buffer=256k flush=1s if=$closing;
                default_type text/plain;
                location / { return 200 "hello from nginx pid $pid\\n"; }
            }
        }
        """
    guard FileManager.default.createFile(atPath: directory + "/nginx.conf", contents: Data(configuration.utf8)) else {
        fail("cannot write \(directory)/nginx.conf")
    }
    let process = Process()
    process.executableURL = URL(fileURLWithPath: nginx)
    process.arguments = ["-p", directory, "-c", directory + "/nginx.conf", "-g", "daemon off;"]
    process.standardOutput = FileHandle.nullDevice
    process.standardError = FileHandle.nullDevice
    do { try process.run() } catch { fail("cannot start nginx: \(error)") }
    return (process, {
        usleep(1_200_000)  // the log's flush=1s
        let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
        var perWorker: [String: Int] = [:]
        for line in text.split(separator: "\n") { perWorker[String(line), default: 0] += 1 }
        return Array(perWorker.values) + Array(repeating: 0, count: max(0, loops - perWorker.count))
    })
}

/// What one wrk run measured.
struct Load {
    var requestsPerSecond = 0.0
    var p99Milliseconds = 0.0
    var requests = 0
    var errors = 0
}

func milliseconds(_ text: Substring) -> Double {
    for (unit, scale) in [("us", 0.001), ("ms", 1.0), ("s", 1000.0)] where text.hasSuffix(unit) {
        return (Double(text.dropLast(unit.count)) ?? .nan) * scale
    }
    return .nan
}

func wrkRun(port: Int, connections: Int, close: Bool, seconds: Int = seconds) -> Load {
    let threads = min(2, connections)
    let headers = close ? ["-H", "Connection: close"] : []
    let text = output([wrk, "-t\(threads)", "-c\(connections)", "-d\(seconds)s", "--latency"] + headers + ["http://127.0.0.1:\(port)/"])
    var load = Load()
    for line in text.split(separator: "\n") {
        let words = line.split(whereSeparator: \.isWhitespace)
        if line.hasPrefix("Requests/sec:"), let value = words.last.flatMap({ Double($0) }) { load.requestsPerSecond = value }
        if words.first == "99%", words.count == 2 { load.p99Milliseconds = milliseconds(words[1]) }
        if words.count > 2, words[1] == "requests", words[2] == "in" { load.requests = Int(words[0]) ?? 0 }
        if line.contains("Socket errors:") {
            load.errors += words.compactMap { Int($0.filter(\.isNumber)) }.reduce(0, +)
        }
        if line.contains("Non-2xx") { load.errors += Int(words.last ?? "") ?? 0 }
    }
    if load.requests == 0 { fail("wrk printed nothing usable:\n\(text)") }
    return load
}

let servers = [
    nio("(a) NIO, one listener for all loops", ["--layout", "single"]),
    nio("(b) NIO, one SO_REUSEPORT listener per loop", ["--layout", "per-loop"]),
    nginxServer,
]

struct Measured {
    var keepAlive: [Load] = []
    var close: [Load] = []
    var spreads: [Double] = []
    var connections: [Int] = []
}
var results = Array(repeating: Measured(), count: servers.count)

say("nio-bench: \(rounds) rounds, \(seconds) s per wrk run, \(loops) loops (nginx: workers), "
    + "keep-alive with \(keepAliveConnections) connections, Connection: close with \(closeConnections)")
for round in 0..<rounds {
    let order = (0..<servers.count).map { (round + $0) % servers.count }
    for index in order {
        let server = servers[index]
        let port = Int(freePort())
        running.lock()
        let (process, perLoop) = server.start(port)
        serverUnderTest = process
        running.unlock()
        var ready = false
        for _ in 0..<200 where !ready { usleep(25_000); ready = accepts(port) }
        guard ready else { process.terminate(); fail("\(server.label) did not start on port \(port)") }
        _ = wrkRun(port: port, connections: 8, close: false, seconds: 1)  // warm-up
        let before = perLoop()
        let closing = wrkRun(port: port, connections: closeConnections, close: true)
        let after = perLoop()
        let keepAlive = wrkRun(port: port, connections: keepAliveConnections, close: false)
        running.lock()
        kill(process.processIdentifier, SIGTERM)
        process.waitUntilExit()
        serverUnderTest = nil
        running.unlock()
        let counts = before.count == after.count ? zip(after, before).map { $0 - $1 } : after
        let spread = Double(counts.max() ?? 0) / Double(max(1, counts.min() ?? 0))
        results[index].keepAlive.append(keepAlive)
        results[index].close.append(closing)
        results[index].spreads.append(spread)
        results[index].connections.append(counts.reduce(0, +))
        say("round \(round + 1): \(server.label): keep-alive \(fixed(keepAlive.requestsPerSecond, 0)) req/s, "
            + "close \(fixed(closing.requestsPerSecond, 0)) conn/s, connections per loop \(counts)")
    }
}

removeNginxFolders()

let nginxIndex = servers.count - 1
let nginxKeepAlive = median(results[nginxIndex].keepAlive.map(\.requestsPerSecond))
let nginxClose = median(results[nginxIndex].close.map(\.requestsPerSecond))
say("")
say("| server (\(loops) loops or workers), median of \(rounds) rounds | keep-alive req/s | p99 ms | vs nginx | close: conn/s | p99 ms | vs nginx | connections | spread max/min | errors |")
say("|---|---|---|---|---|---|---|---|---|---|")
for (index, server) in servers.enumerated() {
    let result = results[index]
    let keepAlive = median(result.keepAlive.map(\.requestsPerSecond))
    let close = median(result.close.map(\.requestsPerSecond))
    let errors = (result.keepAlive + result.close).map(\.errors).reduce(0, +)
    say("| \(server.label) | \(fixed(keepAlive, 0)) | \(fixed(median(result.keepAlive.map(\.p99Milliseconds)), 2)) "
        + "| \(fixed3(keepAlive / nginxKeepAlive)) | \(fixed(close, 0)) | \(fixed(median(result.close.map(\.p99Milliseconds)), 2)) "
        + "| \(fixed3(close / nginxClose)) | \(Int(median(result.connections.map(Double.init)))) "
        + "| \(fixed3(median(result.spreads))) | \(errors) |")
}

/// The median over rounds of a per-round ratio between two servers.
func ratio(_ results: [Measured], _ numerator: Int, _ denominator: Int, _ value: (Measured) -> [Load]) -> String {
    fixed3(median(zip(value(results[numerator]), value(results[denominator])).map { $0.requestsPerSecond / $1.requestsPerSecond }))
}
say("")
say("median of per-round ratios | keep-alive req/s | close conn/s")
say("(b) per loop / (a) one listener | \(ratio(results, 1, 0, \.keepAlive)) | \(ratio(results, 1, 0, \.close))")
say("(b) per loop / nginx | \(ratio(results, 1, nginxIndex, \.keepAlive)) | \(ratio(results, 1, nginxIndex, \.close))")
