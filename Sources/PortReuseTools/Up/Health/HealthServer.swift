import NIOCore
import NIOHTTP1
import NIOPosix
import PortReuse
import PortReuseNIO
import Synchronization

/// `--health ADDR`: `up`'s own HTTP listener (never handed to a generation), served by SwiftNIO's HTTP/1 parser
/// on one event-loop thread of its own, so that a slow or hostile client never holds up the supervisor's loop.
///
/// Strict limits, since probes and scrapers need little: one request per connection (answered with
/// `Connection: close`), at most ``headLimit`` bytes read, ``connectionSeconds`` per connection, and at most
/// ``connectionLimit`` connections at once (more are closed as soon as they are accepted).
package final class HealthServer: Sendable {
    package static let headLimit = 8192
    package static let connectionSeconds: Int64 = 5
    package static let connectionLimit = 64

    private let group: MultiThreadedEventLoopGroup
    private let channel: Channel
    /// The address it listens on, port 0 resolved.
    package let localAddress: PortReuse.SocketAddress

    /// Binds `address` (policy restartable, so that an in-place upgrade binds it again at once) and serves `board`.
    package init(address: Address, board: HealthBoard) throws(CommandFailure) {
        let listener: Listener
        do {
            listener = try Listener(address, policy: .restartable, backlog: Int32(Self.connectionLimit))
        } catch {
            throw CommandFailure("--health \(address): \(error)", exitCode: 3)
        }
        localAddress = listener.localAddress
        // The loop's thread inherits this mask: up's signals reach only the supervisor's thread, and one that
        // arrives during an in-place upgrade stays pending across execve (not in a pipe that exec drops).
        Signals.setBlocked(SignalPipe.handled, true)
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        Signals.setBlocked(SignalPipe.handled, false)
        let open = Mutex(0)
        let bootstrap = ServerBootstrap(group: group)
            .childChannelOption(.allowRemoteHalfClosure, value: false)
            .childChannelInitializer { channel in
                let admitted = open.withLock { count in
                    guard count < Self.connectionLimit else { return false }
                    count += 1
                    return true
                }
                guard admitted else { return channel.close() }
                channel.closeFuture.whenComplete { _ in open.withLock { $0 -= 1 } }
                // Whatever the client does, the connection ends within connectionSeconds.
                let timeout = channel.eventLoop.scheduleTask(in: .seconds(Self.connectionSeconds)) { channel.close(promise: nil) }
                channel.closeFuture.whenComplete { _ in timeout.cancel() }
                return channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(HeadLimit())
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline(withPipeliningAssistance: false, withErrorHandling: true)
                    try channel.pipeline.syncOperations.addHandler(HealthHandler(board: board))
                }
            }
        do {
            channel = try bootstrap.serve(listener, backlog: Int32(Self.connectionLimit)).wait()
        } catch {
            try? group.syncShutdownGracefully()
            throw CommandFailure("--health \(address): \(error)", exitCode: 3)
        }
        self.group = group
    }

    /// Closes the listener and ends its thread.
    package func shutDown() {
        try? channel.close().wait()
        try? group.syncShutdownGracefully()
    }
}

/// Closes a connection that sends more than ``HealthServer/headLimit`` bytes, with a 431 written as raw bytes
/// (it sits before the HTTP encoder): no request these paths need comes near it.
private final class HeadLimit: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    private var received = 0

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = unwrapInboundIn(data)
        received += buffer.readableBytes
        guard received <= HealthServer.headLimit else {
            let answer = "HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            context.writeAndFlush(wrapInboundOut(context.channel.allocator.buffer(string: answer)), promise: nil)
            context.close(promise: nil)
            return
        }
        context.fireChannelRead(data)
    }
}

/// Answers the one request of a connection from its head (a body, if any, is not read), then closes.
private final class HealthHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart
    private let board: HealthBoard
    private var answered = false

    init(board: HealthBoard) { self.board = board }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard case .head(let head) = unwrapInboundIn(data), !answered else { return }
        answered = true
        let response = HealthEndpoint.respond(method: head.method.rawValue, target: head.uri, board: board)
        var headers = HTTPHeaders([("Content-Type", response.contentType), ("Connection", "close")])
        if let allow = response.allow { headers.add(name: "Allow", value: allow) }
        let body = context.channel.allocator.buffer(string: response.body)
        headers.add(name: "Content-Length", value: "\(body.readableBytes)")
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .init(statusCode: response.status), headers: headers))), promise: nil)
        if head.method != .HEAD { context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil) }
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in channel.close(promise: nil) }
    }
}
