import NIOCore
import NIOPosix
import PortReuse

extension ServerBootstrap {
    /// Binds a listening socket with a PortReuse sharing policy and serves it with this bootstrap.
    ///
    /// PortReuse creates the socket (`socket`, the policy's options from ``SharingTable``, `bind`, `listen`),
    /// so a port in use comes back as a ``PortReuseError`` that names the holder and why it blocks this socket;
    /// SwiftNIO then adopts it (`withBoundSocket(_:)`).
    ///
    /// ```swift
    /// let channel = try await ServerBootstrap(group: group)
    ///     .childChannelInitializer { channel in … }
    ///     .bind(tcp: "0.0.0.0:8080", policy: .shared)
    ///     .get()
    /// ```
    ///
    /// - Parameters:
    ///   - address: `8080`, `127.0.0.1:8080`, `[::1]:0`, `localhost:8080`, optionally after `tcp:`, `tcp4:` or `tcp6:`.
    ///   - policy: who else may bind the port; ``SharingPolicy/restartable`` by default.
    ///   - backlog: the accept queue length; the system maximum (`SOMAXCONN`) by default.
    ///   - dualStack: for an IPv6 address, accept IPv4 connections too.
    /// - Throws: ``PortReuseError`` when the address is invalid or the socket cannot be bound; the future fails
    ///   when SwiftNIO cannot register the socket.
    public func bind(
        tcp address: String, policy: SharingPolicy = .default, backlog: Int32? = nil, dualStack: Bool = false
    ) throws(PortReuseError) -> EventLoopFuture<Channel> {
        let listener = try Listener(tcp: address, policy: policy, backlog: backlog, dualStack: dualStack)
        return try serve(listener, backlog: backlog ?? Listening.defaultBacklog)
    }

    /// Serves a PortReuse ``Listener`` with this bootstrap: SwiftNIO takes its descriptor (the listener is
    /// left empty) and closes it when the channel closes.
    ///
    /// SwiftNIO calls `listen(fd, 128)` on every socket it adopts, which would shrink a longer accept queue;
    /// this method sets the queue back to `backlog` once the channel is registered.
    ///
    /// - Parameters:
    ///   - listener: a listening socket, bound by PortReuse or adopted from socket activation.
    ///   - backlog: the accept queue length to keep; `SOMAXCONN` by default (what PortReuse and systemd listen with).
    /// - Throws: ``PortReuseError`` when the listener's descriptor was already taken or closed.
    public func serve(_ listener: Listener, backlog: Int32 = Listening.defaultBacklog) throws(PortReuseError) -> EventLoopFuture<Channel> {
        guard let descriptor = listener.takeDescriptor() else {
            throw PortReuseError(.adopt, address: "tcp:\(listener.localAddress)", errno: .badFileDescriptor,
                diagnosis: .unusableDescriptor(reason: "the listener's descriptor was already taken or closed."))
        }
        return withBoundSocket(descriptor).flatMapThrowing { channel in
            // On the channel's loop: while the channel is open, the descriptor is still the one it owns.
            if channel.isActive { try Listening.restoreBacklog(descriptor, backlog, address: listener.localAddress) }
            return channel
        }
    }
}

/// What PortReuseNIO needs of `listen` after SwiftNIO adopted a socket.
public enum Listening {
    /// The accept queue length PortReuse listens with when none is given: the system maximum, `SOMAXCONN`.
    public static let defaultBacklog: Int32 = Sys.defaultBacklog

    /// Calls `listen` again on a listening socket, which on Linux and BSD only changes its queue length.
    static func restoreBacklog(_ descriptor: SocketDescriptor, _ backlog: Int32, address: PortReuse.SocketAddress) throws {
        guard Sys.listen(descriptor, backlog) == 0 else {
            throw PortReuseError(.listen, address: "tcp:\(address)", errno: .init(rawValue: Sys.lastError()))
        }
    }
}
