// What the LD_PRELOAD shim of `portreuse run` costs a program: socket + bind + close in plain C, the same
// loop in the same executable, run in worker processes with and without LD_PRELOAD, interleaved round by
// round (the order rotates each round) so that every variant sees the same machine.
//
//   swift build -c release --product CReuseShim && swift run -c release shim-bench [iterations-per-round] [rounds]
import BenchmarkSupport
import CBaseline
import Glibc
import PortReuse

printLinesAsTheyCome()

let arguments = CommandLine.arguments

// Worker: `shim-bench --worker TYPE OPTIONS PORT ITERATIONS` prints nanoseconds per cycle.
if arguments.count == 6, arguments[1] == "--worker" {
    let (type, options, port, iterations) = (Int32(arguments[2])!, Int32(arguments[3])!, UInt16(arguments[4])!, Int32(arguments[5])!)
    let nanoseconds = c_bind_cycle_nanoseconds(port, type, options, 1000, iterations)
    precondition(nanoseconds >= 0, "socket+bind+close failed: errno \(Int(-nanoseconds))")
    print(nanoseconds)
    exit(0)
}

let iterations = arguments.count > 1 ? Int(arguments[1]) ?? 20_000 : 20_000
let rounds = arguments.count > 2 ? Int(arguments[2]) ?? 15 : 15

var executable = [CChar](repeating: 0, count: 4096)
let length = readlink("/proc/self/exe", &executable, executable.count - 1)
let path = String(decoding: executable[0..<length].map { UInt8(bitPattern: $0) }, as: UTF8.self)
let shim = String(path[..<path.lastIndex(of: "/")!]) + "/libCReuseShim.so"
guard access(shim, R_OK) == 0 else {
    print("\(shim) is missing: build it first with swift build -c release --product CReuseShim")
    exit(1)
}

/// One way to run the loop: with or without the shim, its variables, and what the loop does itself before
/// bind (`c_bind_cycles`' bits: 1 SO_REUSEADDR, 2 SO_REUSEPORT, 4 getsockopt(SO_TYPE)).
struct Variant {
    var name: String
    var preload: Bool
    var variables: [String] = []
    var steps: Int32 = 0
}

/// Runs the loop once in a fresh worker process; nanoseconds per cycle.
func measure(_ variant: Variant, type: Int32, port: UInt16) -> Double {
    var environment = variant.variables + ["PATH=/usr/bin:/bin"]
    if variant.preload { environment.append("LD_PRELOAD=" + shim) }
    let argv = [path, "--worker", String(type), String(variant.steps), String(port), String(iterations)]
    return workerNanoseconds(argv, environment: environment, name: variant.name)
}

let port = try Listener(tcp: "127.0.0.1:0", policy: .exclusive).localAddress.port
print("socket + bind(127.0.0.1:\(port)) + close in C, \(rounds) rounds x \(iterations) per variant, interleaved")
print("shim: \(shim)")

for (transport, type) in [(Transport.tcp, Int32(SOCK_STREAM.rawValue)), (.udp, Int32(SOCK_DGRAM.rawValue))] {
    let shared = SharingTable.linux.options(.shared, transport)
    let variants = [
        Variant(name: "plain: no shim, no options", preload: false),
        Variant(name: "shim loaded, no variables (passes bind through)", preload: true),
        Variant(name: "no shim, the program sets shared's options itself", preload: false, steps: Int32(shared.rawValue)),
        Variant(name: "shim with PORTREUSE_POLICY=shared sets them", preload: true, variables: ["PORTREUSE_POLICY=shared"]),
        Variant(name: "no shim, the program asks SO_TYPE and sets the options", preload: false, steps: Int32(shared.rawValue) | 4),
    ]
    let times = interleaved(rounds: rounds, variants: variants.count) { measure(variants[$0], type: type, port: port) }
    func ratio(_ a: Int, _ b: Int) -> String { BenchmarkSupport.ratio(times, a, b) }
    printMedians("\(transport): socket + bind + close (\(shared) for shared)", names: variants.map(\.name), times: times)
    print("")
    print("| \(transport) ratios (median of per-round ratios) | |")
    print("|---|---|")
    print("| shim loaded, nothing to do / plain | \(ratio(1, 0)) |")
    print("| shim sets shared's options / the program sets them itself | \(ratio(3, 2)) |")
    print("| shim sets shared's options / plain (includes the options' own cost) | \(ratio(3, 0)) |")
    print("| shim sets shared's options / the program asks SO_TYPE and sets them (the shim's own work) | \(ratio(3, 4)) |")
}
