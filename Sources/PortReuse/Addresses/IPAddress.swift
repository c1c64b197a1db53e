#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#elseif os(Windows)
import WinSDK
#endif

/// An IPv4 or IPv6 address, without a port.
///
/// A small value type: the bytes are kept in network order, exactly as `in_addr` and
/// `in6_addr` hold them, so converting to and from `sockaddr` copies 4 or 16 bytes.
public struct IPAddress: Hashable, Sendable, CustomStringConvertible {
    enum Storage: Hashable, Sendable {
        /// The four bytes of `in_addr.s_addr`, in memory order.
        case v4(UInt32)
        /// The sixteen bytes of `in6_addr`, in memory order, and the IPv6 scope (interface index).
        case v6(UInt64, UInt64, scope: UInt32)
    }

    var storage: Storage

    init(storage: Storage) { self.storage = storage }

    /// An IPv4 address from its four bytes, most significant first (`IPAddress(ipv4: 127, 0, 0, 1)`).
    public init(ipv4 a: UInt8, _ b: UInt8, _ c: UInt8, _ d: UInt8) {
        storage = .v4(UInt32(littleEndian: UInt32(a) | UInt32(b) << 8 | UInt32(c) << 16 | UInt32(d) << 24))
    }

    /// An IPv6 address from its sixteen bytes in network order, and an optional scope (interface index).
    public init(ipv6 bytes: [UInt8], scope: UInt32 = 0) {
        precondition(bytes.count == 16, "an IPv6 address has 16 bytes")
        var high: UInt64 = 0
        var low: UInt64 = 0
        withUnsafeMutableBytes(of: &high) { $0.copyBytes(from: bytes[0..<8]) }
        withUnsafeMutableBytes(of: &low) { $0.copyBytes(from: bytes[8..<16]) }
        storage = .v6(high, low, scope: scope)
    }

    /// Parses a numeric address: `127.0.0.1`, `::1`, `fe80::1%eth0`.
    ///
    /// Host names are not resolved here (see ``Address``). The corresponding C function is `inet_pton`.
    public init?(_ text: String) {
        if text.contains(":") {
            var zone: Substring = ""
            var literal = Substring(text)
            if let percent = text.firstIndex(of: "%") {
                literal = text[..<percent]
                zone = text[text.index(after: percent)...]
                if zone.isEmpty { return nil }
            }
            var raw = in6_addr()
            guard String(literal).withCString({ inet_pton(AF_INET6, $0, &raw) }) == 1 else { return nil }
            var scope: UInt32 = 0
            if !zone.isEmpty {
                if let number = UInt32(zone) {
                    scope = number
                } else {
                    scope = UInt32(String(zone).withCString { if_nametoindex($0) })
                    if scope == 0 { return nil }
                }
            }
            self = withUnsafeBytes(of: &raw) { IPAddress(ipv6: Array($0), scope: scope) }
        } else {
            var raw = in_addr()
            guard text.withCString({ inet_pton(AF_INET, $0, &raw) }) == 1 else { return nil }
            self = withUnsafeBytes(of: &raw) { IPAddress(storage: .v4($0.loadUnaligned(as: UInt32.self))) }
        }
    }

    /// `0.0.0.0`: every IPv4 address of this machine.
    public static let anyIPv4 = IPAddress(ipv4: 0, 0, 0, 0)
    /// `::`: every IPv6 address of this machine (and every IPv4 one on a dual-stack socket).
    public static let anyIPv6 = IPAddress(storage: .v6(0, 0, scope: 0))
    /// `127.0.0.1`.
    public static let loopbackIPv4 = IPAddress(ipv4: 127, 0, 0, 1)
    /// `::1`.
    public static let loopbackIPv6 = IPAddress(ipv6: Array(repeating: 0, count: 15) + [1])

    /// The IP version.
    public var family: AddressFamily {
        if case .v4 = storage { return .ipv4 }
        return .ipv6
    }

    /// The address bytes in network order (4 or 16 of them).
    public var bytes: [UInt8] {
        switch storage {
        case .v4(var raw):
            return withUnsafeBytes(of: &raw) { Array($0) }
        case .v6(var high, var low, _):
            return withUnsafeBytes(of: &high) { Array($0) } + withUnsafeBytes(of: &low) { Array($0) }
        }
    }

    /// The IPv6 scope (interface index) of a link-local address, 0 when none.
    public var scope: UInt32 {
        if case .v6(_, _, let scope) = storage { return scope }
        return 0
    }

    /// Whether this is the wildcard address (`0.0.0.0` or `::`).
    public var isUnspecified: Bool { bytes.allSatisfy { $0 == 0 } }

    /// Whether this is a loopback address (`127.0.0.0/8` or `::1`).
    public var isLoopback: Bool {
        let b = bytes
        return family == .ipv4 ? b[0] == 127 : (b.dropLast().allSatisfy { $0 == 0 } && b[15] == 1)
    }

    /// Whether this is a multicast group address (`224.0.0.0/4` or `ff00::/8`).
    public var isMulticast: Bool {
        let b = bytes
        return family == .ipv4 ? (b[0] & 0xF0) == 0xE0 : b[0] == 0xFF
    }

    /// The IPv4 address inside an IPv4-mapped IPv6 address (`::ffff:127.0.0.1`), else `nil`.
    public var unmappedIPv4: IPAddress? {
        let b = bytes
        guard family == .ipv6, b[0..<10].allSatisfy({ $0 == 0 }), b[10] == 0xFF, b[11] == 0xFF else { return nil }
        return IPAddress(ipv4: b[12], b[13], b[14], b[15])
    }

    /// The text form: `127.0.0.1`, `::1`, `fe80::1%eth0`. The corresponding C function is `inet_ntop`.
    public var description: String {
        var buffer = [CChar](repeating: 0, count: 64)
        switch storage {
        case .v4(var raw):
            _ = inet_ntop(AF_INET, &raw, &buffer, 64)
        case .v6(var high, var low, _):
            var raw = in6_addr()
            withUnsafeMutableBytes(of: &raw) { target in
                withUnsafeBytes(of: &high) { target.baseAddress!.copyMemory(from: $0.baseAddress!, byteCount: 8) }
                withUnsafeBytes(of: &low) { (target.baseAddress! + 8).copyMemory(from: $0.baseAddress!, byteCount: 8) }
            }
            _ = inet_ntop(AF_INET6, &raw, &buffer, 64)
        }
        let text = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        guard scope != 0 else { return text }
        var name = [CChar](repeating: 0, count: Int(IF_NAMESIZE) + 1)
        if if_indextoname(scope, &name) != nil {
            return text + "%" + String(decoding: name.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        }
        return text + "%\(scope)"
    }
}
