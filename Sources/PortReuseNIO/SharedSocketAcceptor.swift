import Dispatch
import NIOCore
import NIOPosix
import PortReuse

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
    /// Completes when the loop has stopped and closed this process's descriptor of the socket.
    let closeFuture: EventLoopFuture<Void>
    private let wake: (read: Int32, write: Int32)

    /// Starts accepting at once, handing connections to `loops` in turn. Takes ownership of the listener's descriptor.
    init(
        _ listener: Listener, loops: [any EventLoop],
        childChannelInitializer: @escaping @Sendable (any Channel) -> EventLoopFuture<Void>
    ) throws(PortReuseError) {
        localAddress = listener.localAddress
        let label = "tcp:\(listener.localAddress)"
        guard let pipe = SystemCalls.makePipe() else {
            throw PortReuseError(.adopt, address: label, errno: .init(rawValue: SystemCalls.lastError()),
                diagnosis: .other("cannot make the pipe that stops the acceptor."))
        }
        guard let descriptor = listener.takeDescriptor() else {
            SystemCalls.closeDescriptor(pipe.read)
            SystemCalls.closeDescriptor(pipe.write)
            throw PortReuseError(.adopt, address: label, errno: .badFileDescriptor,
                diagnosis: .unusableDescriptor(reason: "the listener's descriptor was already taken or closed."))
        }
        // What SwiftNIO does to every socket it serves; the flag is shared by every holder of the socket.
        _ = SystemCalls.setNonBlocking(descriptor)
        wake = pipe
        let promise = loops[0].makePromise(of: Void.self)
        closeFuture = promise.futureResult
        DispatchQueue(label: "PortReuseNIO acceptor \(label)").async {
            Self.run(descriptor, wake: pipe.read, loops: loops, childChannelInitializer: childChannelInitializer)
            SystemCalls.closeDescriptor(descriptor)
            SystemCalls.closeDescriptor(pipe.read)
            promise.succeed()
        }
    }

    /// Stops accepting and closes this process's descriptor; connections already handed over stay open.
    func close() {
        var byte: UInt8 = 1
        _ = SystemCalls.write(wake.write, &byte, 1)
        SystemCalls.closeDescriptor(wake.write)
    }

    private static func run(
        _ descriptor: Int32, wake: Int32, loops: [any EventLoop],
        childChannelInitializer: @escaping @Sendable (any Channel) -> EventLoopFuture<Void>
    ) {
        var next = 0
        while true {
            switch SystemCalls.waitReadable(descriptor, orWake: wake) {
            case .wake, .failed:
                return
            case .readable:
                // Take what is queued; EAGAIN means another process (or nobody) was quicker.
                for _ in 0..<256 {
                    let connection = SystemCalls.accept(descriptor)
                    if connection >= 0 {
                        let loop = loops[next % loops.count]
                        next &+= 1
                        _ = ClientBootstrap(group: loop).channelInitializer(childChannelInitializer).withConnectedSocket(connection)
                        continue
                    }
                    if SystemCalls.shouldRetryAccept(SystemCalls.lastError()) { continue }
                    break
                }
            }
        }
    }
}
