import NIOCore
import NIOPosix
import PortReuse

/// A SwiftNIO server on one port, with either one `SO_REUSEPORT` listener per event loop (the kernel spreads
/// connections across the loops, and each connection stays on the loop that accepted it) or one listener
/// whose connections SwiftNIO hands to the loops in turn.
///
/// It takes its listening sockets from socket activation (`portreuse up`, systemd) when there are any, and
/// binds them itself otherwise:
///
/// ```swift
/// let group = MultiThreadedEventLoopGroup(numberOfThreads: System.coreCount)
/// let server = try await PortReuseServer.activated(orBind: "0.0.0.0:8080", group: group) { channel in
///     channel.pipeline.configureHTTPServerPipeline().flatMap { channel.pipeline.addHandler(Hello()) }
/// }
/// try Readiness.notify(.ready)
/// try await server.closeFuture.get()
/// ```
public struct PortReuseServer: Sendable {
    /// How the listening sockets map to the event loops.
    public enum Layout: String, Sendable, Hashable, CaseIterable, CustomStringConvertible {
        /// One listening socket per event loop, all on the same port with `SO_REUSEPORT` (policy
        /// ``SharingPolicy/shared``): the kernel picks a listener for each new connection by a hash of its
        /// addresses, and the loop that accepts it also serves it. No loop hands work to another.
        case listenerPerLoop = "per-loop"
        /// One listening socket, accepted on one loop; SwiftNIO gives each connection to the next loop of the
        /// group in turn (`ServerBootstrap(group:)`, what most NIO servers do).
        case singleListener = "single"

        public var description: String { rawValue }
    }

    /// SwiftNIO's server channels, one per listening socket that this process bound, in the order of the
    /// group's event loops. Sockets handed over by socket activation have none: PortReuseNIO accepts from
    /// them itself (see ``activated(named:orBind:policy:layout:group:backlog:childChannelInitializer:)``).
    public let channels: [any Channel]
    /// The accept loops of handed-over sockets.
    private let acceptors: [SharedSocketAcceptor]
    /// How many listening sockets this server accepts from.
    public var listenerCount: Int { channels.count + acceptors.count }
    /// The address the listeners are bound to, with the port the kernel chose when 0 was asked.
    public let localAddress: PortReuse.SocketAddress
    /// How the listeners map to the loops.
    public let layout: Layout
    /// Whether the listening sockets came from socket activation rather than from binding.
    public let isActivated: Bool

    /// Binds the listeners of `layout` on `address` and serves each with a SwiftNIO `ServerBootstrap` whose
    /// accepted channels `childChannelInitializer` sets up.
    ///
    /// - Parameters:
    ///   - address: `8080`, `0.0.0.0:8080`, `[::]:0`, `localhost:8080`, optionally after `tcp:`, `tcp4:` or
    ///     `tcp6:`; with port 0, the first listener gets a port from the kernel and the others join it.
    ///   - policy: ``SharingPolicy/shared`` by default; ``Layout/listenerPerLoop`` with more than one loop needs
    ///     a policy that sets `SO_REUSEPORT` (`shared` or `unsafe-any-user`).
    ///   - layout: one listener per loop (the default) or a single one.
    ///   - group: the event loops; each gets a listener with ``Layout/listenerPerLoop``.
    ///   - backlog: the accept queue length of each listener; `SOMAXCONN` by default.
    ///   - dualStack: for an IPv6 address, accept IPv4 connections too.
    ///   - childChannelInitializer: sets up each accepted connection's pipeline, on the connection's loop.
    /// - Throws: ``PortReuseError`` for an invalid address, a policy that cannot share, or a port that cannot be
    ///   bound (it names the holder); SwiftNIO's errors when a channel cannot be registered. Listeners bound
    ///   before a failure are closed.
    public static func bind(
        tcp address: String,
        policy: SharingPolicy = .shared,
        layout: Layout = .listenerPerLoop,
        group: MultiThreadedEventLoopGroup,
        backlog: Int32? = nil,
        dualStack: Bool = false,
        childChannelInitializer: @escaping @Sendable (any Channel) -> EventLoopFuture<Void>
    ) async throws -> PortReuseServer {
        let loops = Array(group.makeIterator())
        let count = layout == .listenerPerLoop ? loops.count : 1
        if count > 1 && !SharingTable.current.options(policy, .tcp).contains(.reusePort) {
            throw PortReuseError(.bind, address: address, diagnosis: .other(
                "one listener per event loop (\(count) loops) needs SO_REUSEPORT, which the \(policy) policy does not set: "
                    + "use the shared policy, or the single-listener layout."))
        }
        var listeners: [Listener] = []
        do {
            let first = try Listener(tcp: address, policy: policy, backlog: backlog, dualStack: dualStack)
            listeners.append(first)
            for _ in 1..<max(count, 1) {
                listeners.append(try Listener(address: first.localAddress, policy: policy, backlog: backlog, dualStack: dualStack))
            }
        } catch {
            listeners.forEach { $0.close() }
            throw error
        }
        return try await serve(listeners, layout: layout, group: group, backlog: backlog ?? Listening.defaultBacklog,
            childChannelInitializer: childChannelInitializer)
    }

    /// Serves the listening sockets that socket activation handed over (every one named `name`, or the first
    /// listening one when `name` is `nil`),
    /// or, when this process was not activated, binds them as ``bind(tcp:policy:layout:group:backlog:dualStack:childChannelInitializer:)``
    /// does. One line for a server that runs under `portreuse up`, under systemd, and alone.
    ///
    /// A supervisor usually hands over one socket, which it keeps open across reloads so that no queued
    /// connection is lost, and every generation of the server accepts from it. PortReuseNIO accepts from such
    /// a socket with a loop of its own, which takes "another process was quicker" (`EAGAIN`) in its stride,
    /// and hands the connections to the event loops in turn (``Layout/singleListener``, whatever `layout`
    /// says; ``layout`` tells which one was used). Several `SO_REUSEPORT` sockets of one `name` are spread
    /// across the loops with ``Layout/listenerPerLoop``. The socket is made non-blocking, as SwiftNIO makes
    /// every socket it serves; that flag is shared by every process that holds the socket.
    ///
    /// - Throws: ``PortReuseError`` when the activation variables are malformed, when this process was
    ///   activated but none of its sockets is a listening TCP socket (of that name), or when the socket cannot
    ///   be bound.
    public static func activated(
        named name: String? = nil,
        orBind address: String,
        policy: SharingPolicy = .shared,
        layout: Layout = .listenerPerLoop,
        group: MultiThreadedEventLoopGroup,
        backlog: Int32? = nil,
        childChannelInitializer: @escaping @Sendable (any Channel) -> EventLoopFuture<Void>
    ) async throws -> PortReuseServer {
        var adopted: [Listener] = []
        while adopted.count < 1024, let listener = try SocketActivation.listener(named: name) {
            adopted.append(listener)
            if name == nil { break }  // no name: the first listening socket, as Listener.activated takes it
        }
        guard !adopted.isEmpty else {
            // Activated, but with nothing this server can serve: binding by itself would race the supervisor's socket.
            if let error = try SocketActivation.nothingToServe(named: name, wanted: "a listening TCP socket") { throw error }
            return try await bind(tcp: address, policy: policy, layout: layout, group: group, backlog: backlog,
                childChannelInitializer: childChannelInitializer)
        }
        // A handed-over socket is shared with the supervisor and with the other generations of this server:
        // PortReuseNIO's own accept loop serves it (see SharedSocketAcceptor for why not SwiftNIO's).
        let loops = Array(group.makeIterator())
        let actual: Layout = adopted.count > 1 ? layout : .singleListener
        var acceptors: [SharedSocketAcceptor] = []
        do {
            for (index, listener) in adopted.enumerated() {
                let targets = actual == .listenerPerLoop ? [loops[index % loops.count]] : loops
                acceptors.append(try SharedSocketAcceptor(listener, loops: targets, childChannelInitializer: childChannelInitializer))
            }
        } catch {
            adopted.forEach { $0.close() }
            acceptors.forEach { $0.close() }
            throw error
        }
        return PortReuseServer(channels: [], acceptors: acceptors, localAddress: adopted[0].localAddress, layout: actual, isActivated: true)
    }

    /// Hands each listener to a bootstrap: with one listener per loop, listener i accepts and serves on loop
    /// i modulo the loop count; a single listener accepts on one loop and spreads connections over the group.
    private static func serve(
        _ listeners: [Listener], layout: Layout, group: MultiThreadedEventLoopGroup, backlog: Int32,
        childChannelInitializer: @escaping @Sendable (any Channel) -> EventLoopFuture<Void>
    ) async throws -> PortReuseServer {
        let loops = Array(group.makeIterator())
        let address = listeners[0].localAddress
        var channels: [any Channel] = []
        do {
            for (index, listener) in listeners.enumerated() {
                let bootstrap: ServerBootstrap
                switch layout {
                case .listenerPerLoop:
                    let loop = loops[index % loops.count]
                    bootstrap = ServerBootstrap(group: loop, childGroup: loop)
                case .singleListener:
                    bootstrap = ServerBootstrap(group: group)
                }
                channels.append(try await bootstrap.childChannelInitializer(childChannelInitializer).serve(listener, backlog: backlog).get())
            }
        } catch {
            listeners.forEach { $0.close() }  // those not yet handed to SwiftNIO
            for channel in channels { try? await channel.close() }
            throw error
        }
        return PortReuseServer(channels: channels, acceptors: [], localAddress: address, layout: layout, isActivated: false)
    }

    /// Completes when every listener has closed.
    public var closeFuture: EventLoopFuture<Void> {
        let futures = channels.map(\.closeFuture) + acceptors.map(\.closeFuture)
        return EventLoopFuture.andAllComplete(futures, on: futures[0].eventLoop)
    }

    /// Stops accepting: closes this process's descriptor of every listener and waits until they are closed.
    /// Connections already accepted stay open; a supervisor's copy of an activated socket stays open too, so
    /// the next generation keeps the queue.
    public func close() async {
        for channel in channels { try? await channel.close() }
        acceptors.forEach { $0.close() }
        for acceptor in acceptors { try? await acceptor.closeFuture.get() }
    }
}
