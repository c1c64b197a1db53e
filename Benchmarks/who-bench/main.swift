// `portreuse who PORT` against `ss -tanp "sport = :PORT"` with many connections open on loopback, timed
// process start to exit, interleaved round by round (the order alternates) in one run.
//
//   swift build -c release && .build/release/who-bench [connections] [rounds]
//
// The connections are held by two Python processes (/usr/bin/python3): a server with the listener and every
// accepted connection, and a client with the other ends. Both live at most 10 minutes and are killed when the
// benchmark ends.
import BenchmarkSupport
import Glibc
import PortReuse
import PortReuseSystem

printLinesAsTheyCome()

let connections = CommandLine.arguments.count > 1 ? Int(CommandLine.arguments[1]) ?? 10_000 : 10_000
let rounds = CommandLine.arguments.count > 2 ? Int(CommandLine.arguments[2]) ?? 11 : 11

func fail(_ message: String) -> Never {
    let bytes = Array("who-bench: \(message)\n".utf8)
    _ = bytes.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
    exit(1)
}

/// Prints at once (standard output may be a file, which `print` would buffer until exit).
func say(_ text: String) {
    let bytes = Array((text + "\n").utf8)
    _ = bytes.withUnsafeBytes { write(1, $0.baseAddress, $0.count) }
}


let folder = executableFolder
let portreuse = folder + "/portreuse"
guard access(portreuse, X_OK) == 0 else { fail("\(portreuse) is missing: run `swift build -c release` first") }
let candidates = ["/usr/bin/ss", "/bin/ss", "/usr/sbin/ss", "/sbin/ss"]
guard let ss = candidates.first(where: { path in access(path, X_OK) == 0 }) else {
    fail("ss is missing: install iproute2")
}
let python = "/usr/bin/python3"
guard access(python, X_OK) == 0 else { fail("\(python) is missing: install python3") }

var limit = rlimit()
getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit)
guard limit.rlim_max >= rlim_t(connections + 64) else {
    fail("each holder process needs \(connections + 64) descriptors but the hard limit is \(limit.rlim_max): "
        + "run with fewer connections or raise it (ulimit -Hn, as root)")
}

// The holders: the server accepts every connection and keeps it; a forked client keeps the other ends.
let script = """
    import os, resource, signal, socket, sys
    signal.alarm(600)
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    n = int(sys.argv[1])
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(4096)
    port = listener.getsockname()[1]
    client = os.fork()
    if client == 0:
        import ctypes
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with the server
        listener.close()
        ends = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
        signal.pause()
        os._exit(0)
    accepted = [listener.accept()[0] for _ in range(n)]
    print(port, flush=True)
    sys.stdin.readline()
    os.kill(client, signal.SIGKILL)
    os.waitpid(client, 0)
    """

/// A pipe whose ends are closed in programs started later (ProcessSpawn's dup2 onto 0 or 1 clears that for
/// the child's end), so that a child never holds the other end open.
func makePipe(_ ends: inout [Int32]) {
    guard let made = try? Files.pipe() else { fail("pipe: errno \(errno)") }
    ends = [made.read.rawValue, made.write.rawValue]
}

/// Starts a program with stdin and stdout as given (-1: /dev/null); returns its pid.
func spawn(_ arguments: [String], stdin: Int32 = -1, stdout: Int32 = -1, newGroup: Bool = false) -> pid_t {
    var spawn = ProcessSpawn(arguments)
    spawn.standardInput = stdin >= 0 ? .descriptor(Descriptor(stdin)) : .null
    spawn.standardOutput = stdout >= 0 ? .descriptor(Descriptor(stdout)) : .null
    spawn.newProcessGroup = newGroup
    do { return try spawn.start() } catch { fail("cannot start \(arguments[0]): \(error)") }
}

func wait(_ pid: pid_t) -> Int32 {
    var status: Int32 = 0
    while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
    return (status >> 8) & 0xFF
}

/// Runs a program to its end and returns its output.
func output(_ arguments: [String]) -> String {
    var pipeEnds: [Int32] = [0, 0]
    makePipe(&pipeEnds)
    let pid = spawn(arguments, stdout: pipeEnds[1])
    close(pipeEnds[1])
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let count = read(pipeEnds[0], &chunk, chunk.count)
        if count < 0 && errno == EINTR { continue }
        guard count > 0 else { break }
        bytes += chunk[0..<count]
    }
    close(pipeEnds[0])
    _ = wait(pid)
    return String(decoding: bytes, as: UTF8.self)
}

/// Wall time of one run, start to exit, in milliseconds.
func time(_ arguments: [String], status expected: Int32 = 0) -> Double {
    let start = now()
    let status = wait(spawn(arguments))
    let elapsed = Double(now() - start) / 1_000_000
    guard status == expected else { fail("\(arguments.joined(separator: " ")) exited with \(status), not \(expected)") }
    return elapsed
}

var toHolder: [Int32] = [0, 0]
var fromHolder: [Int32] = [0, 0]
makePipe(&toHolder)
makePipe(&fromHolder)
// The holders get a process group of their own, killed as one if anything goes wrong.
let holder = spawn([python, "-c", script, "\(connections)"], stdin: toHolder[0], stdout: fromHolder[1], newGroup: true)
close(toHolder[0])
close(fromHolder[1])
@MainActor func stopHolder() {
    close(toHolder[1])  // the server reads end of file, kills the client and exits
    _ = wait(holder)
    kill(-holder, SIGKILL)
}

/// Lines from the holder, at most two minutes to open every connection; `nil` with the reason otherwise.
var pending: [UInt8] = []
var holderProblem = ""
@MainActor func holderLine() -> String? {
    let deadline = now() + 120_000_000_000
    while true {
        if let newline = pending.firstIndex(of: 10) {
            let line = String(decoding: pending[..<newline], as: UTF8.self)
            pending.removeSubrange(...newline)
            return line
        }
        let left = Int64(deadline) - Int64(now())
        guard left > 0 else { holderProblem = "it did not open its connections within two minutes"; return nil }
        var entry = pollfd(fd: fromHolder[0], events: Int16(POLLIN), revents: 0)
        let ready = poll(&entry, 1, Int32(left / 1_000_000))
        if ready < 0 && errno == EINTR { continue }
        guard ready > 0 else { continue }
        var chunk = [UInt8](repeating: 0, count: 256)
        let count = read(fromHolder[0], &chunk, chunk.count)
        if count < 0 && errno == EINTR { continue }
        guard count > 0 else { holderProblem = "it exited before opening its connections (see its error above)"; return nil }
        pending += chunk[0..<count]
    }
}
say("opening \(connections) connections on 127.0.0.1 ...")
var port: UInt16?
while let line = holderLine() {
    if let number = UInt16(line) { port = number; break }
}
guard let port else {
    kill(-holder, SIGKILL)
    _ = wait(holder)
    fail("the holder failed: \(holderProblem)")
}

// Both tools must see the same thing before they are timed.
let who = [portreuse, "who", "tcp:\(port)"]
let reference = [ss, "-tanp", "sport = :\(port)"]
let whoText = output(who)
let ssLines = output(reference).split(separator: "\n").count - 1
guard whoText.contains("\(connections) established"), ssLines == connections + 1 else {
    stopHolder()
    fail("unexpected output: who says\n\(whoText)\nss lists \(ssLines) sockets")
}
say(whoText)

// A second question on the same machine: a port that nothing holds, beside the busy one.
var freePort: UInt16 = port
repeat { freePort = freePort == 65535 ? 1024 : freePort + 1 } while output([ss, "-tuanH", "sport = :\(freePort)"]).contains(":")
let whoFree = [portreuse, "who", "tcp:\(freePort)"]
let referenceFree = [ss, "-tanp", "sport = :\(freePort)"]

struct Scenario {
    var name: String
    var who: [String]
    var whoStatus: Int32
    var reference: [String]
    var whoTimes: [Double] = []
    var tableTimes: [Double] = []
    var referenceTimes: [Double] = []
    var ratios: [Double] = []
}
// A third: a small listener beside them, against the command a user compares with, `ss -tlnp` (listening
// sockets only). who also counts the port's established and TIME-WAIT connections, which makes the kernel walk
// its table of connections (every port's, in-kernel filter or not) that `ss -tl` never looks at.
let small = try Listener(tcp: "127.0.0.1:0", policy: .exclusive)
let whoSmall = [portreuse, "who", "tcp:\(small.localAddress.port)"]
let referenceSmall = [ss, "-tlnp", "sport = :\(small.localAddress.port)"]
var scenarios = [
    Scenario(name: "port with \(connections) connections", who: who, whoStatus: 0, reference: reference),
    Scenario(name: "free port beside them", who: whoFree, whoStatus: 1, reference: referenceFree),
    Scenario(name: "a small listener beside them, against ss -tlnp", who: whoSmall, whoStatus: 0, reference: referenceSmall),
]
say("")
say("portreuse who against ss -tanp \"sport = :PORT\" with \(connections) connections + 1 listener open,")
say("\(rounds) rounds, the order alternating, each run timed from start to exit")
for index in scenarios.indices {
    _ = time(scenarios[index].who, status: scenarios[index].whoStatus)
    _ = time(scenarios[index].reference)  // warm up
}
for round in 1...rounds {
    for index in scenarios.indices {
        let ours: Double
        let theirs: Double
        if round % 2 == 1 {
            ours = time(scenarios[index].who, status: scenarios[index].whoStatus)
            theirs = time(scenarios[index].reference)
        } else {
            theirs = time(scenarios[index].reference)
            ours = time(scenarios[index].who, status: scenarios[index].whoStatus)
        }
        // ss without -p: the kernel's table alone, no process lookup (a floor, not the reference).
        scenarios[index].tableTimes.append(time(scenarios[index].reference.map { $0 == "-tanp" ? "-tan" : $0 == "-tlnp" ? "-tln" : $0 }))
        scenarios[index].whoTimes.append(ours)
        scenarios[index].referenceTimes.append(theirs)
        scenarios[index].ratios.append(ours / theirs)
        say("round \(round), \(scenarios[index].name): who \(fixed(ours, 1)) ms  ss \(fixed(theirs, 1)) ms  ratio \(fixed(ours / theirs, 2))")
    }
}
stopHolder()

say("")
say("| median of \(rounds) rounds, ms | `ss -tanp \"sport = :PORT\"` | `portreuse who tcp:PORT` | who / ss | `ss -tan` (no processes) |")
say("|---|---|---|---|---|")
for scenario in scenarios {
    say("| \(scenario.name) | \(fixed(median(scenario.referenceTimes), 1)) | \(fixed(median(scenario.whoTimes), 1)) "
        + "| \(fixed(median(scenario.ratios), 2)) | \(fixed(median(scenario.tableTimes), 1)) |")
}
say("(who / ss: the median of the per-round ratios; the last column is the same ss without -p: the kernel's table alone)")
withExtendedLifetime(small) {}
