// socket + options + bind + listen + close: PortReuse's Listener against the same calls in plain C,
// interleaved round by round in one run so that both see the same machine. Then a bind that fails with
// EADDRINUSE (a caller's retry loop): PortReuse's typed error against plain C, and what describing it costs.
//
//   swift run -c release socket-bench [iterations-per-round] [rounds]
import BenchmarkSupport
import CBaseline
import Glibc
import PortReuse

printLinesAsTheyCome()

let iterations = CommandLine.arguments.count > 1 ? Int(CommandLine.arguments[1]) ?? 20_000 : 20_000
let rounds = CommandLine.arguments.count > 2 ? Int(CommandLine.arguments[2]) ?? 15 : 15

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

// A bind that fails: the error must be cheap while nobody reads its diagnosis (who holds the port).
let held = try Listener(tcp: "127.0.0.1:0", policy: .exclusive)
let heldAddress = held.localAddress

func runFailedC() -> Double {
    let start = now()
    let code = c_failed_bind_cycles(heldAddress.port, Int32(iterations))
    precondition(code == 0, "plain C failed bind: errno \(code)")
    return Double(now() - start) / Double(iterations)
}

func runFailedPortReuse() -> Double {
    let start = now()
    for _ in 0..<iterations {
        do {
            _ = try Listener(address: heldAddress, policy: .restartable)
            preconditionFailure("the bind should fail")
        } catch {
            precondition(error.errno == .addressInUse)
        }
    }
    return Double(now() - start) / Double(iterations)
}

print("")
print("socket + SO_REUSEADDR + bind (EADDRINUSE) + close on \(heldAddress), \(rounds) rounds x \(iterations), interleaved")
var failedRatios: [Double] = []
var failedC: [Double] = []
var failedOurs: [Double] = []
for round in 1...rounds {
    let c = runFailedC()
    let ours = runFailedPortReuse()
    failedC.append(c)
    failedOurs.append(ours)
    failedRatios.append(ours / c)
    print("round \(round): C \(Int(c)) ns  PortReuse \(Int(ours)) ns  ratio \(fixed3(ours / c))")
}
var describing: [Double] = []
for _ in 0..<5 {
    let start = now()
    do { _ = try Listener(address: heldAddress, policy: .restartable) } catch { _ = error.description }
    describing.append(Double(now() - start))
}
print("")
print("| failed bind | median ns |")
print("|---|---|")
print("| plain C | \(Int(median(failedC))) |")
print("| PortReuse, errno only | \(Int(median(failedOurs))) |")
print("| ratio (median of per-round ratios) | \(fixed3(median(failedRatios))) |")
print("| PortReuse, error described (holders found) | \(Int(median(describing))) |")
