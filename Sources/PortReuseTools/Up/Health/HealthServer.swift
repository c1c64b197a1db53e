import NIOCore
import NIOHTTP1
import NIOPosix
import PortReuse
import PortReuseNIO
import Synchronization
import PortReuseSystem

/// `--health ADDR`: `up`'s own HTTP listener (never handed to a generation), served by SwiftNIO's HTTP/1 parser
/// on one event-loop thread of its own, so that a slow or hostile client never holds up the supervisor's loop.
///
/// Probes and scrapers need little, and a probe must be answered within its timeout (Kubernetes': 1 s) even
/// while slow or garbage connections are open: one request per connection (answered with `Connection: close`),
/// at most ``headLimit`` bytes read, ``headSeconds`` for the request's head and ``connectionSeconds`` for the
/// whole connection, and at most ``connectionLimit`` connections at once. At the limit a new connection evicts
/// the oldest one still waiting for its head: a newcomer (a probe sends its request at once) is never the one
/// refused, and a client that trickles one byte a second holds a place for ``headSeconds`` at most.
package final class HealthServer: Sendable {
    package static let headLimit = 8192
    package static let headSeconds: Int64 = 2
    package static let connectionSeconds: Int64 = 5
    package static let connectionLimit = 64
    /// The kernel's queue of connections not yet accepted: a burst of connections waits here, not refused.
    static let backlog: Int32 = 1024

    private let group: MultiThreadedEventLoopGroup
    private let channel: Channel
    /// The address it listens on, port 0 resolved.
    package let localAddress: PortReuse.SocketAddress

    /// Binds `address` (policy restartable, so that an in-place upgrade binds it again at once) and serves `board`.
    package init(address: Address, board: HealthBoard) throws(CommandFailure) {
        let listener: Listener
        do {
            listener = try Listener(address, policy: .restartable, backlog: Self.backlog)
        } catch {
            throw CommandFailure("--health \(address): \(error)", exitCode: 3)
        }
        localAddress = listener.localAddress
        // The loop's thread inherits this mask: up's signals reach only the supervisor's thread, and one that
        // arrives during an in-place upgrade stays pending across execve (not in a pipe that exec drops).
        Signals.setBlocked(SignalPipe.handled, true)
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        Signals.setBlocked(SignalPipe.handled, false)
        let waiting = WaitingConnections(limit: Self.connectionLimit)
        let bootstrap = ServerBootstrap(group: group)
            .childChannelOption(.allowRemoteHalfClosure, value: false)
            .childChannelInitializer { channel in
                waiting.admit(channel)
                let head = channel.eventLoop.scheduleTask(in: .seconds(Self.headSeconds)) { channel.close(promise: nil) }
                let whole = channel.eventLoop.scheduleTask(in: .seconds(Self.connectionSeconds)) { channel.close(promise: nil) }
                channel.closeFuture.whenComplete { _ in
                    head.cancel()
                    whole.cancel()
                    waiting.remove(channel)
                }
                return channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(HeadLimit())
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline(withPipeliningAssistance: false, withErrorHandling: false)
                    try channel.pipeline.syncOperations.addHandler(HealthHandler(board: board) {
                        head.cancel()
                        waiting.remove(channel)
                    })
                }
            }
        do {
            channel = try bootstrap.serve(listener, backlog: Self.backlog).wait()
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

/// The connections still waiting for their request's head, oldest first: at the limit, admitting one closes the
/// oldest.
private final class WaitingConnections: Sendable {
    private let limit: Int
    private let channels = Mutex<[ObjectIdentifier: (order: UInt64, channel: Channel)]>([:])
    private let counter = Atomic<UInt64>(0)

    init(limit: Int) { self.limit = limit }

    func admit(_ channel: Channel) {
        let order = counter.add(1, ordering: .relaxed).newValue
        let evicted: Channel? = channels.withLock { waiting in
            waiting[ObjectIdentifier(channel)] = (order, channel)
            guard waiting.count > limit, let oldest = waiting.min(by: { $0.value.order < $1.value.order }) else { return nil }
            waiting[oldest.key] = nil
            return oldest.value.channel
        }
        evicted?.close(promise: nil)
    }

    /// It got its head (it is being answered), or it closed.
    func remove(_ channel: Channel) {
        _ = channels.withLock { $0.removeValue(forKey: ObjectIdentifier(channel)) }
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

/// Answers the one request of a connection from its head (a body, if any, is not read), then closes. A request
/// the parser refuses gets one 400 and the connection closes at once; nothing after it is read.
private final class HealthHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart
    private let board: HealthBoard
    private let headArrived: () -> Void
    private var answered = false

    init(board: HealthBoard, headArrived: @escaping () -> Void) {
        self.board = board
        self.headArrived = headArrived
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard case .head(let head) = unwrapInboundIn(data), !answered else { return }
        answered = true
        headArrived()
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

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        let channel = context.channel
        guard error is HTTPParserError, !answered else { return channel.close(promise: nil) }
        answered = true
        let head = HTTPResponseHead(version: .http1_1, status: .badRequest, headers: HTTPHeaders([("Connection", "close"), ("Content-Length", "0")]))
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in channel.close(promise: nil) }
    }
}
