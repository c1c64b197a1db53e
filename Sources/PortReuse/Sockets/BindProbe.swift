import SystemPackage

/// A bind made only to ask the kernel a question, closed at once: could a socket with these options bind
/// this address now?
///
/// A TCP probe is bound but never listens, so it receives nothing: no connection can reach it. A UDP probe
/// receives datagrams while it is bound: beside sockets with `SO_REUSEPORT` it joins their group and may be
/// handed a datagram meant for them, and beside sockets with `SO_REUSEADDR` it is the last socket bound and
/// takes every unicast datagram. So UDP probes are made only when the caller asks for them
/// (``PortReport/Probes/udp``).
enum BindProbe {
    /// What the kernel answered.
    enum Outcome: Sendable, Hashable {
        /// The bind succeeded (the probe was closed at once).
        case bound
        /// EADDRINUSE: a socket on the port does not admit this one.
        case inUse
        /// Any other error (EACCES below the first unprivileged port, EADDRNOTAVAIL, ...): no answer.
        case failed(Errno)
    }

    /// socket, the options, IPV6_V6ONLY=1 for IPv6, bind, close: the one bind path of PortReuse
    /// (``SocketHandle/bound(to:transport:policy:dualStack:options:prepare:)``) with `options` instead of a
    /// policy's row; nothing is listened on, sent or received, and a failure is never diagnosed (nobody reads it).
    static func bind(_ address: SocketAddress, transport: Transport, options: ReuseOptions) -> Outcome {
        do {
            let handle = try SocketHandle.bound(to: address, transport: transport, policy: .exclusive, dualStack: false, options: options)
            handle.close()
            return .bound
        } catch {
            if error.errno == .addressInUse { return .inUse }
            return .failed(error.errno ?? .invalidArgument)
        }
    }

    /// `true` when bound, `false` on EADDRINUSE, `nil` when the kernel gave no answer.
    static func admits(_ address: SocketAddress, transport: Transport, options: ReuseOptions) -> Bool? {
        switch bind(address, transport: transport, options: options) {
        case .bound: true
        case .inUse: false
        case .failed: nil
        }
    }
}
