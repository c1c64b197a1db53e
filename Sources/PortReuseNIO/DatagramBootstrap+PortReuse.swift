import NIOCore
import NIOPosix
import PortReuse

extension DatagramBootstrap {
    /// Binds a UDP socket with a PortReuse sharing policy and serves it with this bootstrap.
    ///
    /// With ``SharingPolicy/shared`` several sockets (of this process, or of other processes of the same user)
    /// share the port and the kernel spreads datagrams between them by a hash of the sender's address;
    /// `SO_REUSEADDR`, which lets any user take the port's datagrams, comes only with ``SharingPolicy/unsafeAnyUser``.
    ///
    /// ```swift
    /// let channel = try await DatagramBootstrap(group: group)
    ///     .channelInitializer { channel in channel.pipeline.addHandler(Echo()) }
    ///     .bind(udp: "127.0.0.1:5353", policy: .shared)
    ///     .get()
    /// ```
    ///
    /// - Parameters:
    ///   - address: `5353`, `127.0.0.1:5353`, `[::1]:0`, optionally after `udp:`, `udp4:` or `udp6:`.
    ///   - policy: who else may bind the port; ``SharingPolicy/restartable`` (no option on UDP) by default.
    ///   - dualStack: for an IPv6 address, receive IPv4 datagrams too.
    /// - Throws: ``PortReuseError`` when the address is invalid or the socket cannot be bound.
    public func bind(udp address: String, policy: SharingPolicy = .default, dualStack: Bool = false) throws(PortReuseError) -> EventLoopFuture<Channel> {
        try serve(DatagramSocket(udp: address, policy: policy, dualStack: dualStack))
    }

    /// Serves a PortReuse ``DatagramSocket`` with this bootstrap: SwiftNIO takes its descriptor (the socket is
    /// left empty) and closes it when the channel closes.
    ///
    /// - Throws: ``PortReuseError`` when the socket's descriptor was already taken or closed.
    public func serve(_ socket: DatagramSocket) throws(PortReuseError) -> EventLoopFuture<Channel> {
        guard let descriptor = socket.takeDescriptor() else {
            throw PortReuseError(.adopt, address: "udp:\(socket.localAddress)", errno: .badFileDescriptor,
                diagnosis: .unusableDescriptor(reason: "the socket's descriptor was already taken or closed."))
        }
        return withBoundSocket(descriptor)
    }

    /// Serves the UDP socket that socket activation handed over (named `name`, or the first), or, when this
    /// process was not activated, a new socket on `address` with `policy`.
    ///
    /// - Throws: ``PortReuseError`` when the activation variables are malformed or the socket cannot be bound.
    public func activated(
        named name: String? = nil, orBind address: String, policy: SharingPolicy = .default
    ) throws(PortReuseError) -> EventLoopFuture<Channel> {
        try serve(DatagramSocket.activated(named: name, orBind: address, policy: policy))
    }
}
