// What `portreuse run` costs a program's bind() through each of its paths: a socket + bind + close loop in C
// (CBaseline), run in worker processes plain, with the program setting shared's options itself, under the
// LD_PRELOAD shim, and through the kernel (seccomp user notification answered by portreuse), interleaved
// round by round (the order rotates each round) so that every variant sees the same machine.
//
//   swift build -c release && .build/release/intercept-bench [iterations-per-round] [rounds]
import BenchmarkSupport
import CBaseline
import Glibc
import CPortReuseSystem
import PortReuse
import PortReuseSystem

printLinesAsTheyCome()

let arguments = CommandLine.arguments

// Worker: `intercept-bench --worker TYPE OPTIONS PORT ITERATIONS [round-trip]` prints nanoseconds per cycle of
// socket + bind + close; TYPE 0: of socket + connect + close instead (a listener of its own). `round-trip`: under a
// filter on that call whose notifications a thread of the worker answers with CONTINUE (the kernel's cost alone).
if arguments.count >= 6, arguments[1] == "--worker" {
    let (type, options, port, iterations) = (Int32(arguments[2])!, Int32(arguments[3])!, UInt16(arguments[4])!, Int32(arguments[5])!)
    if arguments.count == 7 {
        let code = c_answer_with_continue(type == 0 ? csystem_syscall_connect() : csystem_syscall_bind())
        precondition(code == 0, "cannot install the filter: errno \(-code)")
    }
    let nanoseconds = type == 0 ? c_connect_cycle_nanoseconds(200, iterations) : c_bind_cycle_nanoseconds(port, type, options, 200, iterations)
    precondition(nanoseconds >= 0, "the loop failed: errno \(Int(-nanoseconds))")
    print(nanoseconds)
    exit(0)
}

let iterations = arguments.count > 1 ? Int(arguments[1]) ?? 5_000 : 5_000
let rounds = arguments.count > 2 ? Int(arguments[2]) ?? 9 : 9

let path = try Processes.currentExecutable()
let folder = String(path[..<path.lastIndex(of: "/")!])
let portreuse = folder + "/portreuse"
guard access(portreuse, X_OK) == 0, access(folder + "/libCReuseShim.so", R_OK) == 0 else {
    print("\(portreuse) or libCReuseShim.so is missing: build them first with swift build -c release")
    exit(1)
}

struct Variant {
    var name: String
    /// portreuse run's arguments before `--`, or `nil` for none.
    var run: [String]?
    var steps: Int32 = 0
    /// The worker answers its own binds with CONTINUE: the anchor.
    var roundTripOnly = false
}

/// Runs the loop once in a fresh worker process; nanoseconds per cycle.
func measure(_ variant: Variant, type: Int32, port: UInt16) -> Double {
    let worker = [path, "--worker", String(type), String(variant.steps), String(port), String(iterations)] + (variant.roundTripOnly ? ["round-trip"] : [])
    return workerNanoseconds(variant.run.map { [portreuse, "run"] + $0 + ["--"] + worker } ?? worker, environment: ["PATH=/usr/bin:/bin"], name: variant.name)
}

let port = try Listener(tcp: "127.0.0.1:0", policy: .exclusive).localAddress.port
print("socket + bind(127.0.0.1:\(port)) + close in C, \(rounds) rounds x \(iterations) per variant, interleaved")
print("portreuse: \(portreuse)")

for (transport, type) in [(Transport.tcp, Int32(SOCK_STREAM.rawValue)), (.udp, Int32(SOCK_DGRAM.rawValue))] {
    let shared = SharingTable.linux.options(.shared, transport)
    let variants = [
        Variant(name: "plain: no options", run: nil),
        Variant(name: "plain: the program sets shared's options itself", run: nil, steps: Int32(shared.rawValue)),
        Variant(name: "portreuse run --intercept preload (LD_PRELOAD shim)", run: ["--intercept", "preload", "--policy", "shared"]),
        Variant(name: "portreuse run --intercept kernel (seccomp)", run: ["--intercept", "kernel", "--policy", "shared"]),
        Variant(name: "anchor: the kernel's round trip alone (a C thread answers CONTINUE)", run: nil, steps: Int32(shared.rawValue), roundTripOnly: true),
    ]
    let times = interleaved(rounds: rounds, variants: variants.count) { measure(variants[$0], type: type, port: port) }
    func ratio(_ a: Int, _ b: Int) -> String { BenchmarkSupport.ratio(times, a, b) }
    printMedians("\(transport): socket + bind + close (\(shared) for shared)", names: variants.map(\.name), times: times)
    print("")
    print("| \(transport) ratios (median of per-round ratios) | |")
    print("|---|---|")
    print("| preload / plain | \(ratio(2, 0)) |")
    print("| kernel / plain | \(ratio(3, 0)) |")
    print("| kernel / the program sets the options itself | \(ratio(3, 1)) |")
    print("| kernel / preload | \(ratio(3, 2)) |")
    print("| anchor (the round trip alone, options set by the program) / the program sets the options itself | \(ratio(4, 1)) |")
    print("| anchor / plain | \(ratio(4, 0)) |")
    print("| kernel / anchor | \(ratio(3, 4)) |")
}

// Clients: connect() under --source, which the kernel path must intercept (the shim does it in-process).
let connectVariants = [
    Variant(name: "plain connect", run: nil),
    Variant(name: "portreuse run --intercept preload --source 127.0.0.1", run: ["--intercept", "preload", "--source", "127.0.0.1"]),
    Variant(name: "portreuse run --intercept kernel --source 127.0.0.1", run: ["--intercept", "kernel", "--source", "127.0.0.1"]),
    Variant(name: "anchor: the kernel's round trip alone on connect()", run: nil, roundTripOnly: true),
]
let connectTimes = interleaved(rounds: rounds, variants: connectVariants.count) { measure(connectVariants[$0], type: 0, port: port) }
printMedians("TCP: socket + connect(127.0.0.1) + close, with a listener accepting", names: connectVariants.map(\.name), times: connectTimes)
print("")
print("| connect ratios (median of per-round ratios) | |")
print("|---|---|")
print("| preload / plain | \(BenchmarkSupport.ratio(connectTimes, 1, 0)) |")
print("| kernel / plain | \(BenchmarkSupport.ratio(connectTimes, 2, 0)) |")
print("| anchor / plain | \(BenchmarkSupport.ratio(connectTimes, 3, 0)) |")
print("| kernel / anchor | \(BenchmarkSupport.ratio(connectTimes, 2, 3)) |")
