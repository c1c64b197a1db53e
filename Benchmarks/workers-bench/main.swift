// Worker pools (`portreuse up --workers N`), in one run: requests per second of single-process servers
// (python3 -m http.server, node without cluster) alone and under up with 1, 2 and 4 workers, side by side in
// interleaved rounds; the balance between the workers (how up's steering spreads connections, beside the anchor:
// the kernel's own SO_REUSEPORT hash, N copies of the program binding the port with SO_REUSEPORT under
// `portreuse run --policy shared`); then reloads of up --workers 2 under load, counting failed requests.
//
//   swift build -c release && .build/release/workers-bench [seconds per measurement (3)] [rounds (3)] [clients (16)]
//
// The clients open a new connection per request (steering picks a worker per connection) and run on the same
// machine: on 2 cores they take a share of the CPU the servers would scale into. Balance is (max − min) / mean of
// the workers' shares: answers by pid for node (it answers with its pid); CPU time for http.server (it does not).
import BenchmarkSupport
import Foundation
import Glibc
import PortReuse
import PortReuseSystem

printLinesAsTheyCome()

func fail(_ message: String) -> Never {
    FileHandle.standardError.write(Data("workers-bench: \(message)\n".utf8))
    exit(1)
}

func argument(_ index: Int, _ what: String, standard: Int) -> Int {
    guard CommandLine.arguments.count > index else { return standard }
    let text = CommandLine.arguments[index]
    guard let value = Int(text), value > 0 else {
        fail("\(what) must be a whole number above 0, not \"\(text)\": workers-bench [seconds (3)] [rounds (3)] [clients (16)]")
    }
    return value
}
let seconds = argument(1, "seconds", standard: 3)
let rounds = argument(2, "rounds", standard: 3)
let clients = argument(3, "clients", standard: 16)

let portreuse = executableFolder + "/portreuse"
guard FileManager.default.isExecutableFile(atPath: portreuse) else { fail("\(portreuse) is missing: swift build -c release first") }
let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("workers-bench-\(getpid())").path
try? FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
defer { try? FileManager.default.removeItem(atPath: scratch) }

func onPath(_ name: String) -> String? {
    (getenv("PATH").map { String(cString: $0) } ?? "/usr/bin:/bin").split(separator: ":").map { "\($0)/\(name)" }
        .first { FileManager.default.isExecutableFile(atPath: $0) }
}

/// A server that binds the port itself: under up the bind filter gives each worker its socket.
struct Program {
    var name: String
    var command: (_ port: UInt16) -> [String]
    /// Whether it answers with its pid (so that answers give the balance), else CPU time does.
    var answersPID: Bool
}

var programs: [Program] = [
    Program(name: "python3 -m http.server", command: { ["/usr/bin/python3", "-m", "http.server", "--bind", "127.0.0.1", "--directory", scratch, "\($0)"] }, answersPID: false),
]
if let node = onPath("node") {
    programs.append(Program(name: "node (no cluster)", command: {
        [node, "-e", "require('http').createServer((q, r) => r.end(String(process.pid))).listen(\($0), '127.0.0.1')"]
    }, answersPID: true))
} else {
    print("node is not on PATH: only python3 -m http.server is measured (apt-get install nodejs)")
}
try? "http.server\n".write(toFile: scratch + "/index.html", atomically: true, encoding: .utf8)

/// How one variant runs a program on a port: the processes it starts, and the pids that serve.
struct Variant {
    var name: String
    var workers: Int
    /// up --workers N, else N copies under portreuse run --policy shared (or, 1, the program alone).
    var underUp: Bool
}
let variants = [
    Variant(name: "alone", workers: 1, underUp: false),
    Variant(name: "up --workers 1", workers: 1, underUp: true),
    Variant(name: "up --workers 2", workers: 2, underUp: true),
    Variant(name: "up --workers 4", workers: 4, underUp: true),
    Variant(name: "kernel hash ×2", workers: 2, underUp: false),
    Variant(name: "kernel hash ×4", workers: 4, underUp: false),
]

func start(_ arguments: [String]) -> pid_t {
    var spawn = ProcessSpawn(arguments, environment: ProcessSpawn.currentEnvironment())
    spawn.standardOutput = .null
    spawn.standardError = getenv("WORKERS_BENCH_LOG").map { .appending(toFile: String(cString: $0)) } ?? .null
    spawn.newProcessGroup = true
    guard let pid = try? spawn.start() else { fail("cannot start \(arguments[0])") }
    return pid
}

/// The status file of the up started with `--pid-file`, as JSON.
func upStatus(_ pidFile: String) -> [String: Any]? {
    guard let data = FileManager.default.contents(atPath: pidFile + ".status") else { return nil }
    return (try? JSONSerialization.jsonObject(with: data)) as? [String: Any]
}

/// The generations of that up that serve, by number.
func serving(_ pidFile: String) -> [Int] {
    let generations = upStatus(pidFile)?["generations"] as? [[String: Any]] ?? []
    return generations.filter { $0["state"] as? String == "ready" }.compactMap { $0["number"] as? Int }
}

func waitFor(_ what: String, timeout: Double = 30, _ condition: () -> Bool) {
    let deadline = now() + UInt64(timeout * 1e9)
    while !condition() {
        guard now() < deadline else { fail("\(what) within \(Int(timeout)) s") }
        usleep(10_000)
    }
}

/// Runs `program` as `variant` on a fresh port; returns the address, the pids that serve, and what stops it all.
func launch(_ program: Program, _ variant: Variant) -> (SocketAddress, [pid_t], () -> Void) {
    let port = freePort()
    let address = SocketAddress(ip: .loopbackIPv4, port: port)
    if variant.underUp {
        let pidFile = "\(scratch)/up-\(port).pid"
        let up = start([portreuse, "up", "--listen", "127.0.0.1:\(port)", "--workers", "\(variant.workers)", "--pid-file", pidFile, "--"] + program.command(port))
        waitFor("\(program.name) under up --workers \(variant.workers) ready") { !serving(pidFile).isEmpty }
        let pool = Processes.Tree().descendants(of: up)
        // With one worker the program is up's child; with more, the pool's children are the workers.
        let workers = variant.workers == 1 ? pool.filter { Processes.stat(of: $0.pid)?.parent == up }.map(\.pid)
            : pool.filter { candidate in pool.contains { Processes.stat(of: candidate.pid)?.parent == $0.pid } }.map(\.pid)
        return (address, workers, { stopAndWait(up) })
    }
    let copies = (0..<variant.workers).map { _ in
        start(variant.workers == 1 ? program.command(port) : [portreuse, "run", "--policy", "shared", "--"] + program.command(port))
    }
    waitFor("\(variant.workers) \(program.name) listening") {
        PortHolder.find(port: port, transport: .tcp, states: [.listen], processes: false, options: false).count == variant.workers
    }
    return (address, copies, { for pid in copies { stopAndWait(pid) } })
}

/// One measurement: requests per second over `seconds`, and the workers' shares.
func measure(_ program: Program, _ variant: Variant) -> (rps: Double, balance: Double?) {
    let (address, workers, stop) = launch(program, variant)
    defer { stop() }
    waitUntilAccepting(address)
    let warmup = HTTPLoad(address, clients: clients)
    warmup.start()
    usleep(300_000)
    _ = warmup.stop()
    let cpuBefore = workers.map(cpuMilliseconds)
    let load = HTTPLoad(address, clients: clients, countingBodies: program.answersPID)
    let began = now()
    load.start()
    usleep(useconds_t(seconds) * 1_000_000)
    let result = load.stop()
    let elapsed = Double(now() - began) / 1e9
    if result.failed > 0 { print("  (\(program.name), \(variant.name): \(result.failed) requests failed: \(result.errors))") }
    guard workers.count > 1 else { return (Double(result.sent - result.failed) / elapsed, nil) }
    let shares = program.answersPID ? workers.map { Double(result.bodies[String($0)] ?? 0) } : zip(workers.map(cpuMilliseconds), cpuBefore).map { $0 - $1 }
    let mean = shares.reduce(0, +) / Double(shares.count)
    return (Double(result.sent - result.failed) / elapsed, mean > 0 ? (shares.max()! - shares.min()!) / mean : nil)
}

print("workers-bench: \(seconds) s per measurement, \(rounds) rounds interleaved, \(clients) clients (new connection per request), \(sysconf(Int32(_SC_NPROCESSORS_ONLN))) cores")
for program in programs {
    var rps = [[Double]](repeating: [], count: variants.count)
    var balance = [[Double]](repeating: [], count: variants.count)
    for round in 1...rounds {
        for (index, variant) in variants.enumerated() {
            let (value, spread) = measure(program, variant)
            rps[index].append(value)
            if let spread { balance[index].append(spread) }
        }
        print("  \(program.name): round \(round) of \(rounds) done")
    }
    print("\n\(program.name)" + (program.answersPID ? " (balance from answers by pid)" : " (balance from the workers' CPU time)"))
    print("variant".padding(toLength: 18, withPad: " ", startingAt: 0) + "   req/s   × alone   balance (max − min) / mean")
    let alone = rps[0]
    for (index, variant) in variants.enumerated() {
        let ratio = median(zip(rps[index], alone).map { $0 / $1 })
        let spread = balance[index].isEmpty ? "-" : "\(fixed(median(balance[index]) * 100, 1)) %"
        print(variant.name.padding(toLength: 18, withPad: " ", startingAt: 0) + String(repeating: " ", count: max(0, 8 - "\(Int(median(rps[index])))".count))
            + "\(Int(median(rps[index])))   \(fixed3(ratio))     \(spread)")
    }
}

// Reloads of up --workers 2 under load: every request answered.
if let node = programs.last, node.answersPID {
    let reloads = 10
    let port = freePort()
    let pidFile = "\(scratch)/up-reloads.pid"
    let up = start([portreuse, "up", "--listen", "127.0.0.1:\(port)", "--workers", "2", "--pid-file", pidFile, "--"] + node.command(port))
    defer { stopAndWait(up) }
    waitFor("up --workers 2 ready") { !serving(pidFile).isEmpty }
    let load = HTTPLoad(SocketAddress(ip: .loopbackIPv4, port: port), clients: 8)
    load.start()
    var generation = serving(pidFile).max()!
    for _ in 0..<reloads {
        usleep(300_000)
        kill(up, SIGHUP)
        waitFor("the reload to generation \(generation + 1)") { serving(pidFile) == [generation + 1] }
        generation += 1
    }
    usleep(300_000)
    let result = load.stop()
    print("\n\(node.name), up --workers 2: \(reloads) reloads under 8 clients: \(result.sent - result.failed) answered, \(result.failed) failed"
        + (result.errors.isEmpty ? "" : " \(result.errors)"))
}
