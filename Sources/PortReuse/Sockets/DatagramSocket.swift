#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#elseif os(Windows)
import WinSDK
#endif
import SystemPackage

/// A bound UDP socket with a ``SharingPolicy``. It owns its descriptor.
///
/// ```swift
/// let socket = try DatagramSocket(udp: "[::1]:5353", policy: .shared)
/// if let (bytes, sender) = try socket.receive(timeout: .seconds(1)) { … }
/// ```
public final class DatagramSocket: SocketOwner {
    public let handle: SocketHandle
    /// The bound address, with the port the kernel chose when 0 was asked.
    public let localAddress: SocketAddress
    /// The policy the socket was bound with; `nil` for an adopted socket.
    public let policy: SharingPolicy?

    /// Parses `address` (see ``Address``) and binds.
    ///
    /// - Parameters:
    ///   - address: `5353`, `127.0.0.1:5353`, `[::1]:0`, optionally after `udp:`, `udp4:` or `udp6:`.
    ///   - policy: who else may bind the port. ``SharingPolicy/shared`` sets only `SO_REUSEPORT` (same user);
    ///     `SO_REUSEADDR` on UDP comes only with ``SharingPolicy/unsafeAnyUser``.
    ///   - dualStack: for an IPv6 address, receive IPv4 datagrams too.
    public convenience init(udp address: String, policy: SharingPolicy = .default, dualStack: Bool = false) throws(PortReuseError) {
        try self.init(Address(address), policy: policy, dualStack: dualStack)
    }

    /// Binds a parsed address; a host name binds its first IPv4 address if it has one.
    public convenience init(_ address: Address, policy: SharingPolicy = .default, dualStack: Bool = false) throws(PortReuseError) {
        let resolved = try address.checked(for: .udp, operation: .bind).resolveForBinding(.udp)
        try self.init(address: resolved, policy: policy, dualStack: dualStack)
    }

    /// Binds a socket address. The corresponding C functions are `socket`, `setsockopt` and `bind`.
    public init(address: SocketAddress, policy: SharingPolicy = .default, dualStack: Bool = false) throws(PortReuseError) {
        handle = try SocketHandle.bound(to: address, transport: .udp, policy: policy, dualStack: dualStack)
        localAddress = address.port == 0 ? try handle.localAddress() : address
        self.policy = policy
    }

    /// Wraps a socket that was bound here (a multicast or broadcast receiver's).
    init(handle: SocketHandle, localAddress: SocketAddress, policy: SharingPolicy) {
        self.handle = handle
        self.localAddress = localAddress
        self.policy = policy
    }

    /// Takes ownership of a bound UDP socket that this process received. Throws, and leaves the descriptor
    /// open and unowned, when it is not an IPv4/IPv6 UDP socket.
    public init(adopting descriptor: SocketDescriptor) throws(PortReuseError) {
        (handle, localAddress) = try SocketHandle.adopt(descriptor, transport: .udp, listening: false)
        self.policy = nil
    }

    /// Sends one datagram. The corresponding C function is `sendto`.
    public func send(_ bytes: [UInt8], to address: SocketAddress) throws(PortReuseError) {
        let descriptor = try handle.live(.send)
        let code = try address.withSockAddr { (pointer, length) throws(PortReuseError) in
            bytes.withUnsafeBytes { buffer in retryingInterrupts { Sys.sendto(descriptor, buffer, pointer, length) }.1 }
        }
        guard code == 0 else { throw PortReuseError(.send, address: address.label(.udp), errno: Errno(rawValue: code)) }
    }

    /// Receives one datagram, waiting at most `timeout` (forever when `nil`); `nil` when none came in time.
    /// The corresponding C function is `recvfrom`.
    ///
    /// - Parameter retryOnInterrupt: when false, a signal ends the wait with an `EINTR` error.
    public func receive(
        maxLength: Int = 65_536, timeout: Duration? = nil, retryOnInterrupt: Bool = true
    ) throws(PortReuseError) -> (bytes: [UInt8], sender: SocketAddress)? {
        if let timeout, try !handle.wait(forWriting: false, timeout: timeout, .receive, retryOnInterrupt: retryOnInterrupt) { return nil }
        let descriptor = try handle.live(.receive)
        var buffer = [UInt8](repeating: 0, count: maxLength)
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let (count, code) = buffer.withUnsafeMutableBytes { bytes in
            retryingInterrupts(retry: retryOnInterrupt) {
                withUnsafeMutablePointer(to: &storage) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Sys.recvfrom(descriptor, bytes, $0, &length) }
                }
            }
        }
        guard code == 0 else { throw PortReuseError(.receive, address: localAddress.label(.udp), errno: Errno(rawValue: code)) }
        guard let sender = SocketAddress(storage) else {
            throw PortReuseError(.receive, diagnosis: .other("a datagram came from an address that is not IPv4 or IPv6."))
        }
        return (Array(buffer.prefix(count)), sender)
    }
}
