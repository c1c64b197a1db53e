import Dispatch
import NIOCore
import NIOPosix
import PortReuse
import Synchronization
import PortReuseSystem

/// Accepts connections from a listening socket that other processes accept from too (the one socket that
/// `portreuse up` or systemd hands to every generation of a server), and gives each connection to the next
/// event loop of a group (`ClientBootstrap.withConnectedSocket`).
///
/// Why not SwiftNIO's own server channel: every process that waits on a shared socket is woken for each new
/// connection and only one gets it; SwiftNIO's debug builds assert that a listener that woke it yields a
/// connection, and stopped the new generation during reloads (measured: 2 of 3 reloads). This loop takes
/// `EAGAIN` as the normal answer it is for a shared socket.
final class SharedSocketAcceptor: Sendable {
    let localAddress: PortReuse.SocketAddress
    /// Completes when the loop has stopped and closed this process's descriptor of the socket, and every
    /// connection it accepted has its channel (its initializer ran): a drain that starts then sees them all.
    let closeFuture: EventLoopFuture<Void>
    private let wake: (read: Descriptor, write: Descriptor)
    /// Set by the first ``close()``: later ones do nothing (the pipe's descriptor number may belong to
    /// something else by then).
    private let closed = Mutex(false)

    /// Starts accepting at once, handing connections to `loops` in turn. Takes ownership of the listener's descriptor.
    init(
        _ listener: Listener, loops: [any EventLoop],
        childChannelInitializer: @escaping @Sendable (any Channel) -> EventLoopFuture<Void>
    ) throws(PortReuseError) {
        localAddress = listener.localAddress
        let label = "tcp:\(listener.localAddress)"
        let pipe: (read: Descriptor, write: Descriptor)
        do {
            pipe = try Files.pipe()
        } catch {
            throw PortReuseError(.adopt, address: label, errno: error.errno, diagnosis: .other("cannot make the pipe that stops the acceptor."))
        }
        guard let descriptor = listener.takeDescriptor() else {
            Files.close(pipe.read)
            Files.close(pipe.write)
            throw PortReuseError(.adopt, address: label, errno: .badFileDescriptor,
                diagnosis: .unusableDescriptor(reason: "the listener's descriptor was already taken or closed."))
        }
        // What SwiftNIO does to every socket it serves; the flag is shared by every holder of the socket.
        _ = Sys.setBlocking(descriptor, false)
        wake = pipe
        let promise = loops[0].makePromise(of: Void.self)
        closeFuture = promise.futureResult
        DispatchQueue(label: "PortReuseNIO acceptor \(label)").async {
            let handedOver = DispatchGroup()
            Self.run(descriptor, wake: pipe.read, loops: loops, handedOver: handedOver, childChannelInitializer: childChannelInitializer)
            Files.close(Descriptor(descriptor))
            Files.close(pipe.read)
            // A connection accepted just before the stop may still be registering with its loop: a drain that
            // began meanwhile would not see it, and close it unanswered (the NIO reload test lost one request so).
            _ = handedOver.wait(timeout: .now() + 10)
            promise.succeed()
        }
    }

    /// Stops accepting and closes this process's descriptor; connections already handed over stay open.
    func close() {
        let first = closed.withLock { closed in
            defer { closed = true }
            return !closed
        }
        guard first else { return }
        try? Files.write([1], to: wake.write)
        Files.close(wake.write)
    }

    private static func run(
        _ descriptor: Int32, wake: Descriptor, loops: [any EventLoop], handedOver: DispatchGroup,
        childChannelInitializer: @escaping @Sendable (any Channel) -> EventLoopFuture<Void>
    ) {
        var next = 0
        while true {
            switch Sys.waitReadable(descriptor, orWake: wake.rawValue) {
            case .wake, .failed:
                return
            case .readable, .hungUp:
                // Take what is queued; EAGAIN means another process (or nobody) was quicker.
                for _ in 0..<256 {
                    let connection = Sys.accept(descriptor, nil, nil)
                    if connection >= 0 {
                        let loop = loops[next % loops.count]
                        next &+= 1
                        handedOver.enter()
                        ClientBootstrap(group: loop).channelInitializer(childChannelInitializer).withConnectedSocket(connection)
                            .whenComplete { _ in handedOver.leave() }
                        continue
                    }
                    if Sys.shouldRetryAccept(Sys.lastError()) { continue }
                    break
                }
            }
        }
    }
}
