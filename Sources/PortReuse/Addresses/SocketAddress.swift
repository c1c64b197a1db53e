#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#elseif os(Windows)
import WinSDK
#endif

/// An IP address and a port: what `bind`, `connect` and `getsockname` speak about.
public struct SocketAddress: Hashable, Sendable, CustomStringConvertible {
    /// The IP address.
    public var ip: IPAddress
    /// The port, in host byte order; 0 asks the kernel to choose one.
    public var port: UInt16

    /// An address from its parts.
    public init(ip: IPAddress, port: UInt16) {
        self.ip = ip
        self.port = port
    }

    /// The IP version.
    public var family: AddressFamily { ip.family }

    /// `127.0.0.1:8080`, or `[::1]:8080` for IPv6.
    public var description: String {
        family == .ipv6 ? "[\(ip)]:\(port)" : "\(ip):\(port)"
    }

    /// Calls `body` with this address as a `sockaddr` and its length.
    func withSockAddr<R>(_ body: (UnsafePointer<sockaddr>, socklen_t) throws(PortReuseError) -> R) throws(PortReuseError) -> R {
        var (storage, length) = Sys.makeSockAddr(self)
        return try withUnsafePointer(to: &storage) { (pointer) throws(PortReuseError) -> R in
            try pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { (address) throws(PortReuseError) -> R in
                try body(address, length)
            }
        }
    }

    /// Reads an AF_INET or AF_INET6 address; `nil` for any other family.
    package init?(_ storage: sockaddr_storage) {
        guard let address = Sys.readSockAddr(storage) else { return nil }
        self = address
    }

    /// The most bytes of a socket address a program can pass (sizeof(struct sockaddr_storage)).
    package static let largestPassedLength = MemoryLayout<sockaddr_storage>.size

    /// The address a program passed to bind, connect or sendto, as read from its memory: whole for its family
    /// (AF_INET 16 bytes, AF_INET6 24: the kernel takes one without sin6_scope_id); `nil` for any other.
    package init?(passed bytes: [UInt8]) {
        guard bytes.count >= 2, bytes.count <= Self.largestPassedLength else { return nil }
        var storage = sockaddr_storage()
        withUnsafeMutableBytes(of: &storage) { $0.copyBytes(from: bytes) }
        switch Int32(storage.ss_family) {
        case Sys.family(.ipv4) where bytes.count >= MemoryLayout<sockaddr_in>.size: break
        case Sys.family(.ipv6) where bytes.count >= 24: break
        default: return nil
        }
        self.init(storage)
    }
}
