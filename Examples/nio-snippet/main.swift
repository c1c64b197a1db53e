import NIOCore
import NIOHTTP1
import NIOPosix
import PortReuse
import PortReuseNIO

let group = MultiThreadedEventLoopGroup(numberOfThreads: System.coreCount)

// One SO_REUSEPORT listener per event loop on one port: the kernel spreads connections over the loops,
// and the loop that accepts a connection serves it. Under `portreuse up` or systemd it serves the
// handed-over socket instead, and binds only when it was not activated.
let server = try await PortReuseServer.activated(orBind: "0.0.0.0:8080", group: group) { channel in
    channel.eventLoop.makeCompletedFuture {
        try channel.pipeline.syncOperations.configureHTTPServerPipeline()
        try channel.pipeline.syncOperations.addHandler(HelloHandler())
    }
}
try Readiness.notify(.ready)   // READY=1 to NOTIFY_SOCKET; does nothing when no supervisor listens
try await server.closeFuture.get()

// Or a plain bootstrap on a PortReuse socket, with a policy and PortReuse's errors:
let channel = try await ServerBootstrap(group: group)
    .childChannelInitializer { channel in channel.eventLoop.makeSucceededVoidFuture() }  // your handlers
    .bind(tcp: "127.0.0.1:8080", policy: .shared)
    .get()

// A UDP port that several sockets (of this user) share; datagrams spread by sender:
let udp = try await DatagramBootstrap(group: group)
    .channelInitializer { channel in channel.eventLoop.makeSucceededVoidFuture() }  // your handlers
    .bind(udp: "127.0.0.1:5353", policy: .shared)
    .get()
