// socket + options + bind + listen + close: PortReuse's Listener against the same calls in plain C,
// interleaved round by round in one run so that both see the same machine.
//
//   swift run -c release socket-bench [iterations-per-round] [rounds]
import CBaseline
import Glibc
import PortReuse

let iterations = CommandLine.arguments.count > 1 ? Int(CommandLine.arguments[1]) ?? 20_000 : 20_000
let rounds = CommandLine.arguments.count > 2 ? Int(CommandLine.arguments[2]) ?? 15 : 15

func now() -> UInt64 {
    var time = timespec()
    clock_gettime(CLOCK_MONOTONIC, &time)
    return UInt64(time.tv_sec) * 1_000_000_000 + UInt64(time.tv_nsec)
}

func fixed3(_ value: Double) -> String {
    let thousandths = Int((value * 1000).rounded())
    let fraction = String(thousandths % 1000)
    return "\(thousandths / 1000)." + String(repeating: "0", count: 3 - fraction.count) + fraction
}

func median(_ values: [Double]) -> Double {
    let sorted = values.sorted()
    return sorted[sorted.count / 2]
}

let port = try Listener(tcp: "127.0.0.1:0", policy: .exclusive).localAddress.port
let address = SocketAddress(ip: .loopbackIPv4, port: port)

func runC() -> Double {
    let start = now()
    let code = c_listen_cycles(port, Int32(iterations))
    precondition(code == 0, "plain C failed: errno \(code)")
    return Double(now() - start) / Double(iterations)
}

func runPortReuse() throws -> Double {
    let start = now()
    for _ in 0..<iterations {
        let listener = try Listener(address: address, policy: .restartable)
        listener.close()
    }
    return Double(now() - start) / Double(iterations)
}

print("socket + SO_REUSEADDR + bind + listen + close on \(address), \(rounds) rounds x \(iterations), interleaved")
_ = runC()
_ = try runPortReuse()  // warm up both
var cTimes: [Double] = []
var oursTimes: [Double] = []
var ratios: [Double] = []
for round in 1...rounds {
    let c = runC()
    let ours = try runPortReuse()
    cTimes.append(c)
    oursTimes.append(ours)
    ratios.append(ours / c)
    print("round \(round): C \(Int(c)) ns  PortReuse \(Int(ours)) ns  ratio \(fixed3(ours / c))")
}
print("")
print("| per socket | median ns |")
print("|---|---|")
print("| plain C | \(Int(median(cTimes))) |")
print("| PortReuse Listener | \(Int(median(oursTimes))) |")
print("| ratio (median of per-round ratios) | \(fixed3(median(ratios))) |")
