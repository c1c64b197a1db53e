/// The transport protocol of a socket.
public enum Transport: String, Sendable, Hashable, CaseIterable, CustomStringConvertible {
    /// A stream socket (`SOCK_STREAM`).
    case tcp
    /// A datagram socket (`SOCK_DGRAM`).
    case udp

    public var description: String { rawValue.uppercased() }
}

/// The IP version of an address.
public enum AddressFamily: String, Sendable, Hashable, CaseIterable, CustomStringConvertible {
    /// IPv4 (`AF_INET`).
    case ipv4
    /// IPv6 (`AF_INET6`).
    case ipv6

    public var description: String { self == .ipv4 ? "IPv4" : "IPv6" }
}

/// A network name as Go spells it (`tcp`, `tcp4`, `tcp6`, `udp`, `udp4`, `udp6`):
/// a transport, and optionally one IP version.
///
/// Addresses take it as a prefix: `tcp6:[::1]:8080`, `udp:5353`.
public enum Network: String, Sendable, Hashable, CaseIterable, CustomStringConvertible {
    case tcp, tcp4, tcp6, udp, udp4, udp6

    /// The transport this network uses.
    public var transport: Transport {
        switch self {
        case .tcp, .tcp4, .tcp6: .tcp
        case .udp, .udp4, .udp6: .udp
        }
    }

    /// The only IP version this network allows, or `nil` for both.
    public var family: AddressFamily? {
        switch self {
        case .tcp, .udp: nil
        case .tcp4, .udp4: .ipv4
        case .tcp6, .udp6: .ipv6
        }
    }

    /// The network for a transport and an optional IP version.
    public init(_ transport: Transport, family: AddressFamily? = nil) {
        switch (transport, family) {
        case (.tcp, nil): self = .tcp
        case (.tcp, .ipv4): self = .tcp4
        case (.tcp, .ipv6): self = .tcp6
        case (.udp, nil): self = .udp
        case (.udp, .ipv4): self = .udp4
        case (.udp, .ipv6): self = .udp6
        }
    }

    public var description: String { rawValue }
}
