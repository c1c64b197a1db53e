#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#elseif os(Windows)
import WinSDK
#endif
import SystemPackage

/// A listening TCP socket bound with a ``SharingPolicy``. It owns its descriptor.
///
/// ```swift
/// let listener = try Listener(tcp: "0.0.0.0:8080", policy: .shared)
/// print(listener.localAddress)              // 0.0.0.0:8080
/// let connection = try listener.accept()
/// ```
public final class Listener: SocketOwner {
    public let handle: SocketHandle
    /// The bound address, with the port the kernel chose when 0 was asked.
    public let localAddress: SocketAddress
    /// The policy the socket was bound with; `nil` for an adopted socket.
    public let policy: SharingPolicy?

    /// Parses `address` (see ``Address``), binds and listens.
    ///
    /// - Parameters:
    ///   - address: `8080`, `127.0.0.1:8080`, `[::1]:0`, `localhost:8080`, optionally after `tcp:`, `tcp4:` or `tcp6:`.
    ///   - policy: who else may bind the port; ``SharingPolicy/restartable`` by default.
    ///   - backlog: the accept queue length; the system maximum (`SOMAXCONN`) by default.
    ///   - dualStack: for an IPv6 address, accept IPv4 connections too (IPV6_V6ONLY 0); IPv6 only by default.
    public convenience init(
        tcp address: String, policy: SharingPolicy = .default, backlog: Int32? = nil, dualStack: Bool = false
    ) throws(PortReuseError) {
        try self.init(Address(address), policy: policy, backlog: backlog, dualStack: dualStack)
    }

    /// Binds and listens on a parsed address; a host name binds its first IPv4 address if it has one.
    public convenience init(
        _ address: Address, policy: SharingPolicy = .default, backlog: Int32? = nil, dualStack: Bool = false
    ) throws(PortReuseError) {
        let resolved = try address.checked(for: .tcp, operation: .bind).resolveForBinding(.tcp)
        try self.init(address: resolved, policy: policy, backlog: backlog, dualStack: dualStack)
    }

    /// Binds and listens on a socket address. The corresponding C functions are `socket`, `setsockopt`,
    /// `bind` and `listen`.
    public init(
        address: SocketAddress, policy: SharingPolicy = .default, backlog: Int32? = nil, dualStack: Bool = false
    ) throws(PortReuseError) {
        let handle = try SocketHandle.bound(to: address, transport: .tcp, policy: policy, dualStack: dualStack)
        let descriptor = try handle.live(.listen)
        do {
            // Linux checks SO_REUSEADDR conflicts again at listen(): only one of several such sockets may listen.
            _ = try retryingInterrupts(.listen, address.label(.tcp)) { Sys.listen(descriptor, backlog ?? Sys.defaultBacklog) }
        } catch {
            throw error.diagnosingBind(address, transport: .tcp, policy: policy)
        }
        self.handle = handle
        self.localAddress = address.port == 0 ? try handle.localAddress() : address
        self.policy = policy
    }

    /// Takes ownership of a listening TCP socket that this process received (socket activation, a parent).
    /// Throws, and leaves the descriptor open and unowned, when it is not a listening IPv4/IPv6 TCP socket.
    public init(adopting descriptor: SocketDescriptor) throws(PortReuseError) {
        (handle, localAddress) = try SocketHandle.adopt(descriptor, transport: .tcp, listening: true)
        self.policy = nil
    }

    /// Waits for a connection and accepts it. The corresponding C function is `accept4` (`accept` elsewhere).
    ///
    /// - Parameter retryOnInterrupt: when false, a signal ends the wait with an `EINTR` error (`.interrupted`),
    ///   so that a server can stop accepting on SIGTERM.
    public func accept(retryOnInterrupt: Bool = true) throws(PortReuseError) -> Connection {
        let descriptor = try handle.live(.accept)
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let connection = try retryingInterrupts(.accept, localAddress.label(.tcp), retry: retryOnInterrupt) {
            withUnsafeMutablePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Sys.accept(descriptor, $0, &length) }
            }
        }
        let socket = SocketHandle(adopting: connection)
        return Connection(handle: socket, local: (try? socket.localAddress()) ?? localAddress, remote: SocketAddress(storage))
    }

    /// Accepts a connection if one arrives within `timeout`; `nil` otherwise.
    ///
    /// A listener that other processes share (policy `shared`, or inherited by socket activation) may lose
    /// the connection it was woken for to another process; a blocking listener then waits for the next one.
    /// The file status flags (`O_NONBLOCK`) of an inherited listener belong to every process that holds it,
    /// so PortReuse never changes them.
    public func accept(timeout: Duration) throws(PortReuseError) -> Connection? {
        guard try handle.wait(forWriting: false, timeout: timeout, .accept) else { return nil }
        return try accept()
    }
}

extension SocketHandle {
    /// Takes `descriptor` over when it is an IPv4/IPv6 socket of `transport` (and listening, when asked), with
    /// its local address; else throws and leaves the descriptor open and unowned, as it was.
    static func adopt(
        _ descriptor: SocketDescriptor, transport: Transport, listening: Bool
    ) throws(PortReuseError) -> (handle: SocketHandle, localAddress: SocketAddress) {
        let handle = SocketHandle(adopting: descriptor)
        do {
            try handle.check(adopted: descriptor, transport: transport, listening: listening)
            return (handle, try handle.localAddress())
        } catch {
            _ = handle.takeDescriptor()
            throw error
        }
    }

    /// Checks that an adopted descriptor is an IPv4/IPv6 socket of `transport` (and listening, for TCP).
    func check(adopted descriptor: SocketDescriptor, transport expected: Transport, listening: Bool) throws(PortReuseError) {
        let actual: Transport?
        do {
            actual = try transport()
        } catch {
            let reason = error.errno == .notSocket ? "descriptor \(descriptor) is not a socket."
                : error.errno == .badFileDescriptor ? "descriptor \(descriptor) is not open." : error.description
            throw PortReuseError(.adopt, errno: error.errno, diagnosis: .unusableDescriptor(reason: reason))
        }
        guard actual == expected else {
            throw PortReuseError(.adopt, diagnosis: .unusableDescriptor(reason: "descriptor \(descriptor) is a \(actual.map(\.description) ?? "non-IP") socket, not a \(expected) one."))
        }
        guard (try? localAddress()) != nil else {
            throw PortReuseError(.adopt, diagnosis: .unusableDescriptor(reason: "descriptor \(descriptor) is not an IPv4 or IPv6 socket."))
        }
        if listening, try option(Sys.solSocket, Sys.acceptConnections, label: "SO_ACCEPTCONN") == 0 {
            throw PortReuseError(.adopt, diagnosis: .unusableDescriptor(reason: "descriptor \(descriptor) is a TCP socket that is not listening."))
        }
    }
}
