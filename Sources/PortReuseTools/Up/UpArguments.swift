import ArgumentParser
import PortReuse
import PortReuseSystem

/// `--listen [NAME=]ADDR`: a socket `up` opens once and hands to every generation.
package struct ListenSpec: Hashable, Sendable, CustomStringConvertible {
    /// The name in `LISTEN_FDNAMES` (`unknown` when none is given, as systemd does).
    package var name: String
    /// An IP address (TCP unless it says `udp:`), or a Unix-domain stream socket's path (`unix:PATH`, `unix:@NAME`).
    package var target: Target

    package enum Target: Hashable, Sendable {
        case network(Address)
        case unix(String)
    }

    package static let defaultName = "unknown"

    /// The IP address; nil for a Unix-domain path.
    package var address: Address? { if case .network(let address) = target { address } else { nil } }
    /// A Unix-domain stream socket is `.tcp`: a stream, with an accept queue.
    package var transport: Transport { address?.network?.transport ?? .tcp }

    package init(parsing text: String) throws {
        var name = Self.defaultName, rest = Substring(text)
        // NAME=ADDR; an address never contains '='.
        if let equals = text.firstIndex(of: "=") {
            name = String(text[..<equals])
            rest = text[text.index(after: equals)...]
            guard !name.isEmpty, name.count <= 255,
                name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "-_.".contains($0)) })
            else {
                throw ValidationError(
                    "--listen \(text): the name '\(name)' must be 1 to 255 letters, digits, '-', '_' or '.' (it goes into LISTEN_FDNAMES)")
            }
        }
        if rest.hasPrefix("unix:") {
            let path = String(rest.dropFirst(5))
            // sun_path holds 107 bytes and a NUL; a file's socket is bound beside it under a longer temporary name first.
            guard !path.isEmpty, path != "@", path.utf8.count <= 90, !path.utf8.contains(0) else {
                throw ValidationError("--listen \(text): a Unix socket's path is 1 to 90 bytes (as in unix:/run/app.sock), or @NAME for an abstract one")
            }
            target = .unix(path)
        } else {
            do {
                target = .network(try Address(String(rest)))
            } catch {
                throw ValidationError("--listen \(text): \(error)")
            }
        }
        self.name = name
    }

    package var description: String {
        switch target {
        case .network(let address): Self.label(name: name, "\(address)")
        case .unix(let path): Self.label(name: name, "unix:\(path)")
        }
    }

    /// `NAME=address`, or the address alone for a socket without a name (systemd calls it "unknown", which
    /// would read like an error in a log line).
    package static func label(name: String, _ address: String) -> String { name == defaultName ? address : "\(name)=\(address)" }
}

/// `--ready`: how `up` learns that a generation serves.
package enum ReadinessCheck: Hashable, Sendable, CustomStringConvertible {
    /// Notify if the child sends anything on NOTIFY_SOCKET, else probe.
    case auto
    /// Wait for `READY=1` on NOTIFY_SOCKET.
    case notify
    /// Wait until a connection to the first TCP listener is accepted by the new generation.
    case probe
    /// Wait a fixed time.
    case delay(Double)

    package init(parsing text: String) throws {
        switch text {
        case "auto": self = .auto
        case "notify": self = .notify
        case "probe": self = .probe
        default:
            guard text.hasPrefix("delay:") else {
                throw ValidationError("--ready \(text): expected auto, notify, probe or delay:SECONDS (as in delay:2 or delay:500ms)")
            }
            self = .delay(try Seconds(parsing: String(text.dropFirst(6)), option: "--ready delay").value)
        }
    }

    package var description: String {
        switch self {
        case .auto: "auto"
        case .notify: "notify"
        case .probe: "probe"
        case .delay(let seconds): "delay:\(Seconds(seconds))"
        }
    }
}

/// A duration in seconds: `30`, `1.5`, `30s`, `500ms`, `2m`.
package struct Seconds: Hashable, Sendable, CustomStringConvertible {
    package var value: Double

    package init(_ value: Double) { self.value = value }

    package init(parsing text: String, option: String) throws {
        let units: [(String, Double)] = [("ms", 0.001), ("s", 1), ("m", 60)]
        var number = Substring(text), scale = 1.0
        for (suffix, factor) in units where text.hasSuffix(suffix) {
            number = text.dropLast(suffix.count)
            scale = factor
            break
        }
        // Decimal only: Double("0x10") is 16, and "inf" or "1e3" are no durations anybody writes.
        guard !number.isEmpty, number.allSatisfy({ $0.isASCII && ($0.isNumber || $0 == ".") }),
            let value = Double(number), value.isFinite, value >= 0, value * scale <= 86_400
        else {
            throw ValidationError("\(option) \(text): expected a duration such as 30, 1.5, 30s, 500ms or 2m (at most a day)")
        }
        self.value = value * scale
    }

    package var nanoseconds: UInt64 { UInt64(value * 1e9) }

    package var description: String {
        value < 1 && value > 0 ? "\(Int((value * 1000).rounded()))ms" : (value == value.rounded() ? "\(Int(value))s" : "\((value * 100).rounded() / 100)s")
    }
}

/// A signal by name (`TERM`, `SIGTERM`, `term`) or number.
extension SignalName {
    /// `--stop-signal`: a name with or without SIG, or a number from 1 to 64.
    package static func parse(_ text: String) throws -> SignalName {
        guard let signal = SignalName(parsing: text) else {
            throw ValidationError(
                "--stop-signal \(text): not a signal; use a name such as TERM, INT, QUIT, USR1, WINCH, or a number from 1 to 64")
        }
        return signal
    }
}

extension Dialect {
    /// `--protocol`: a name from ``Dialect/all``.
    package static func parse(_ text: String) throws -> Dialect {
        guard let dialect = named(text) else {
            throw ValidationError("--protocol \(text): not a protocol up speaks; use one of \(all.map(\.name).joined(separator: ", "))")
        }
        return dialect
    }
}
