#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#elseif os(Windows)
import WinSDK
#endif

/// An endpoint as a person writes it: `8080`, `:8080`, `127.0.0.1:8080`, `[::1]:8080`,
/// `localhost:8080`, optionally after a network (`tcp:`, `tcp4:`, `tcp6:`, `udp:`, `udp4:`, `udp6:`,
/// or the URL-like `udp://`).
///
/// Parsing never touches the network; ``resolve(_:)`` turns a host name into IP addresses.
public struct Address: Hashable, Sendable, CustomStringConvertible {
    /// The host part of an address.
    public enum Host: Hashable, Sendable {
        /// No host given (`8080`, `:8080`): the wildcard address of the network's IP version.
        case unspecified
        /// A numeric IP address.
        case ip(IPAddress)
        /// A host name, resolved with `getaddrinfo` when the address is used.
        case name(String)
    }

    /// The network named by the prefix, or `nil` when none was written.
    public var network: Network?
    /// The host.
    public var host: Host
    /// The port; 0 asks the kernel to choose one.
    public var port: UInt16

    /// An address from its parts.
    public init(network: Network? = nil, host: Host = .unspecified, port: UInt16) {
        self.network = network
        self.host = host
        self.port = port
    }

    /// An address that names exactly one socket address.
    public init(_ address: SocketAddress, transport: Transport? = nil) {
        self.init(network: transport.map { Network($0) }, host: .ip(address.ip), port: address.port)
    }

    /// The forms ``init(_:)`` accepts, for error messages and help texts.
    public static let acceptedForms =
        "8080, :8080, 127.0.0.1:8080, [::1]:8080, localhost:8080 or 0.0.0.0:0, each optionally prefixed by a network "
        + "(tcp, tcp4, tcp6, udp, udp4, udp6), as in udp:[::1]:53"

    /// Parses an address, or throws an error that names the input, what is wrong with it and the accepted forms.
    public init(_ text: String) throws(PortReuseError) {
        func bad(_ reason: String) -> PortReuseError {
            PortReuseError(.parse, address: text, diagnosis: .invalidAddress(reason: reason))
        }
        guard !text.isEmpty else { throw bad("it is empty") }
        guard text.allSatisfy({ $0.isASCII && !$0.isWhitespace }) else {
            throw bad("it contains spaces or characters outside ASCII")
        }

        var rest = Substring(text)
        var network: Network?
        if let colon = rest.firstIndex(of: ":"), colon != rest.startIndex {
            let prefix = rest[..<colon].lowercased()
            if let named = Network(rawValue: prefix) {
                network = named
                rest = rest[rest.index(after: colon)...]
                if rest.hasPrefix("//") { rest = rest.dropFirst(2) }
            } else if prefix.hasPrefix("tcp") || prefix.hasPrefix("udp"),
                prefix.dropFirst(3).allSatisfy(\.isNumber)
            {
                throw bad("\"\(prefix)\" is not a network (use tcp, tcp4, tcp6, udp, udp4 or udp6)")
            }
        }
        guard !rest.isEmpty else { throw bad("the port is missing") }

        var hostText: Substring = ""
        var portText: Substring
        if rest.allSatisfy(\.isNumber) {
            portText = rest
        } else if rest.first == "[" {
            guard let close = rest.firstIndex(of: "]") else { throw bad("the \"[\" of an IPv6 address has no \"]\"") }
            hostText = rest[rest.index(after: rest.startIndex)..<close]
            let after = rest[rest.index(after: close)...]
            guard after.first == ":" else {
                throw bad(after.isEmpty ? "the port is missing after \"]\"" : "expected \":PORT\" after \"]\"")
            }
            portText = after.dropFirst()
            guard !hostText.isEmpty else { throw bad("the brackets hold no address") }
        } else {
            guard let colon = rest.lastIndex(of: ":") else {
                // "-5", "+80", "8080.5": meant as a port, and not one.
                if let first = rest.first, first == "-" || first == "+" || first.isNumber, rest.dropFirst().allSatisfy({ $0.isNumber || $0 == "." }) {
                    throw bad("\"\(rest)\" is not a port (0 to 65535)")
                }
                throw bad("the port is missing (write HOST:PORT)")
            }
            hostText = rest[..<colon]
            portText = rest[rest.index(after: colon)...]
            if hostText.contains(":") { throw bad("an IPv6 address needs brackets, as in [::1]:8080") }
        }

        guard !portText.isEmpty else { throw bad("the port is missing") }
        guard portText.allSatisfy(\.isNumber), portText.count <= 5, let port = Int(portText), port <= 65535 else {
            throw bad("\"\(portText)\" is not a port (0 to 65535)")
        }

        var host = Host.unspecified
        if !hostText.isEmpty {
            if let ip = IPAddress(String(hostText)) {
                host = .ip(ip)
                if let family = network?.family, family != ip.family {
                    throw bad("\(ip) is an \(ip.family) address but the network \(network!) is \(family) only")
                }
            } else if hostText.contains(":") {
                throw bad("\"\(hostText)\" is not an IPv6 address")
            } else if Address.looksNumeric(hostText) {
                throw bad("\"\(hostText)\" is a number, not an address: write an IPv4 address as four decimal numbers, as in 127.0.0.1")
            } else if Address.isHostName(hostText) {
                host = .name(String(hostText))
            } else {
                throw bad("\"\(hostText)\" is neither an IP address nor a host name")
            }
        }
        self.init(network: network, host: host, port: UInt16(port))
    }

    /// `0x50`, `0x7f.1`: what inet_aton and getaddrinfo would read as a number (0.0.0.80), which nobody means.
    static func looksNumeric(_ text: Substring) -> Bool {
        guard text.first?.isNumber == true else { return false }
        let lowered = text.lowercased()
        return lowered.contains("x") && lowered.allSatisfy { "0123456789abcdefx.".contains($0) }
    }

    static func isHostName(_ text: Substring) -> Bool {
        guard text.count <= 253, text.first != ".", text.first != "-" else { return false }
        return text.allSatisfy { $0.isLetter || $0.isNumber || $0 == "-" || $0 == "." || $0 == "_" }
            && !text.allSatisfy { $0.isNumber || $0 == "." }
    }

    /// The canonical text form, such as `tcp:127.0.0.1:8080` or `udp6:[::1]:53`.
    public var description: String {
        let prefix = network.map { "\($0):" } ?? ""
        switch host {
        case .unspecified: return "\(prefix):\(port)"
        case .ip(let ip): return prefix + SocketAddress(ip: ip, port: port).description
        case .name(let name): return "\(prefix)\(name):\(port)"
        }
    }

    /// The IP version the network asks for, or that a numeric host has.
    public var family: AddressFamily? {
        if case .ip(let ip) = host { return ip.family }
        return network?.family
    }

    /// The socket addresses this address names, in the resolver's order.
    ///
    /// An unspecified host gives the wildcard address (`0.0.0.0`, or `::` for `tcp6`/`udp6`); a numeric host
    /// gives itself; a host name is resolved with `getaddrinfo`, keeping only the network's IP version.
    /// The corresponding C function is `getaddrinfo`.
    public func resolve(_ transport: Transport? = nil) throws(PortReuseError) -> [SocketAddress] {
        switch host {
        case .unspecified:
            return [SocketAddress(ip: family == .ipv6 ? .anyIPv6 : .anyIPv4, port: port)]
        case .ip(let ip):
            return [SocketAddress(ip: ip, port: port)]
        case .name(let name):
            let found = try Sys.resolve(name: name, family: network?.family, transport: transport ?? network?.transport ?? .tcp)
            var unique: [SocketAddress] = []
            for ip in found where !unique.contains(where: { $0.ip == ip }) {
                unique.append(SocketAddress(ip: ip, port: port))
            }
            guard !unique.isEmpty else {
                throw PortReuseError(.resolve, address: description, diagnosis: .unknownHost(name: name, reason: "it has no \(network?.family?.description ?? "IP") address"))
            }
            return unique
        }
    }

    /// The one address a socket binds: the address of IP version `family` when the host has one (the first
    /// IPv4 address of a host name, by default, as Go's `Listen` does), else the first address. An unspecified
    /// host on a network of both versions gives the wildcard of `family`.
    package func resolveForBinding(_ transport: Transport, family: AddressFamily = .ipv4) throws(PortReuseError) -> SocketAddress {
        if host == .unspecified && self.family == nil {
            return SocketAddress(ip: family == .ipv4 ? .anyIPv4 : .anyIPv6, port: port)
        }
        let all = try resolve(transport)
        return all.first { $0.family == family } ?? all[0]
    }

    /// Checks that this address may be used for `transport`; returns it with the network filled in.
    package func checked(for transport: Transport, operation: PortReuseError.Operation) throws(PortReuseError) -> Address {
        if let network, network.transport != transport {
            throw PortReuseError(operation, address: description, diagnosis: .wrongTransport(expected: transport, given: network))
        }
        var copy = self
        copy.network = Network(transport, family: family)
        return copy
    }
}
