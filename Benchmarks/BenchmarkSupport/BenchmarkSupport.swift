@preconcurrency import Glibc
import PortReuse
import PortReuseSystem

// What the benchmarks share: a monotonic clock, the median, and ratios printed with three decimals.

/// Makes stdout line-buffered, so that each result line shows as it is measured also when the output is piped
/// (`| tee`): every benchmark calls it first.
public func printLinesAsTheyCome() { setvbuf(stdout, nil, _IOLBF, 0) }

/// Nanoseconds on the monotonic clock.
public func now() -> UInt64 {
    var time = timespec()
    clock_gettime(CLOCK_MONOTONIC, &time)
    return UInt64(time.tv_sec) * 1_000_000_000 + UInt64(time.tv_nsec)
}

/// `1.053`: a ratio with three decimals.
public func fixed3(_ value: Double) -> String { fixed(value, 3) }

/// `value` with `digits` decimals.
public func fixed(_ value: Double, _ digits: Int) -> String {
    var scale = 1.0
    for _ in 0..<digits { scale *= 10 }
    let scaled = Int((value * scale).rounded())
    let sign = scaled < 0 ? "-" : ""  // -0.4 keeps its sign, and the fraction of -3.4 is 4, not -4
    let whole = scaled.magnitude / UInt(scale)
    let fraction = String(scaled.magnitude % UInt(scale))
    return sign + (digits == 0 ? "\(whole)" : "\(whole)." + String(repeating: "0", count: digits - fraction.count) + fraction)
}

/// The median (the mean of the middle two of an even count).
public func median(_ values: [Double]) -> Double {
    let sorted = values.sorted()
    return sorted.count % 2 == 1 ? sorted[sorted.count / 2] : (sorted[sorted.count / 2 - 1] + sorted[sorted.count / 2]) / 2
}

/// A confidence interval of at least 95% for the median of `values`, from their order statistics alone (no
/// assumption about their distribution): the values at ranks n/2 ∓ 0.98·√n. With fewer than 6 values, their range.
public func medianInterval(_ values: [Double]) -> (low: Double, high: Double) {
    let sorted = values.sorted()
    guard sorted.count >= 6 else { return (sorted.first ?? 0, sorted.last ?? 0) }
    let half = 0.98 * Double(sorted.count).squareRoot()
    let low = Int((Double(sorted.count) / 2 - half).rounded(.down))
    let high = Int((Double(sorted.count) / 2 + half).rounded(.up))
    return (sorted[max(0, low - 1)], sorted[min(sorted.count - 1, high)])
}

/// Runs `measure(variant)` once for every variant in each of `rounds` rounds, the order rotated each round so
/// that no variant always runs first on a warm (or cold) machine; the times by variant.
public func interleaved(rounds: Int, variants: Int, _ measure: (Int) -> Double) -> [[Double]] {
    var times = Array(repeating: [Double](), count: variants)
    for round in 0..<rounds {
        for step in 0..<variants {
            let index = (step + round) % variants
            times[index].append(measure(index))
        }
    }
    return times
}

/// The median of the per-round ratios of variant `a` to variant `b`, with three decimals.
public func ratio(_ times: [[Double]], _ a: Int, _ b: Int) -> String { fixed3(median(zip(times[a], times[b]).map { $0 / $1 })) }

/// A Markdown table of each variant's median time.
public func printMedians(_ title: String, names: [String], times: [[Double]]) {
    print("")
    print("| \(title) | median ns |")
    print("|---|---|")
    for (index, name) in names.enumerated() { print("| \(name) | \(Int(median(times[index]))) |") }
}

/// The folder of this executable: the other products (`portreuse`, `hello`) are built beside it.
public let executableFolder: String = {
    var buffer = [CChar](repeating: 0, count: 4096)
    let length = readlink("/proc/self/exe", &buffer, buffer.count - 1)
    let path = String(decoding: buffer[0..<max(length, 0)].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    return String(path[..<(path.lastIndex(of: "/") ?? path.endIndex)])
}()

/// Runs one worker process of a benchmark (`argv`, with `environment`, its stderr the benchmark's) and reads the
/// number it prints on its first line: nanoseconds per cycle. A worker that fails stops the benchmark, naming `name`.
public func workerNanoseconds(_ argv: [String], environment: [String], name: String) -> Double {
    var spawn = ProcessSpawn(argv, environment: environment)
    spawn.standardError = .descriptor(.standardError)
    guard let finished = try? spawn.run(timeout: 600) else { fatalError("cannot start a worker") }
    let text = String(decoding: finished.standardOutput, as: UTF8.self).split(separator: "\n").first ?? ""
    guard finished.status.raw == 0, let nanoseconds = Double(text) else { fatalError("worker failed (\(name)): \(text)") }
    return nanoseconds
}
