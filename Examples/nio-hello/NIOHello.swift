// nio-hello: the hello server on SwiftNIO and PortReuseNIO, for the README, the tests and nio-bench.
//
// One SO_REUSEPORT listener per event loop (or one listener for all loops, --layout single), taken from socket
// activation (`portreuse up`, systemd, `systemd-socket-activate`) when there is one, bound otherwise. It says
// READY=1 once it serves, answers every request with "hello from NAME pid PID", and on SIGTERM or SIGINT stops
// accepting, answers the connections it accepted (idle keep-alive ones close at once, the others after their
// answer) and exits 0.
//
//   swift run nio-hello --listen 127.0.0.1:8080
//   systemd-socket-activate -l 127.0.0.1:8080 .build/debug/nio-hello
//   portreuse up --listen 127.0.0.1:8080 -- .build/debug/nio-hello
import ArgumentParser
import Dispatch
import NIOCore
import NIOHTTP1
import NIOPosix
import PortReuse
import PortReuseNIO
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

@main
struct NIOHello: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "nio-hello",
        abstract: "A tiny HTTP server on SwiftNIO with one SO_REUSEPORT listener per event loop.",
        usage: """
            nio-hello --listen 127.0.0.1:8080
            nio-hello --listen 0.0.0.0:8080 --threads 4 --layout single
            systemd-socket-activate -l 127.0.0.1:8080 nio-hello
            portreuse up --listen 127.0.0.1:8080 -- nio-hello
            """,
        discussion: """
            It takes its listening socket from socket activation (portreuse up, systemd) or binds one itself, \
            says READY=1 to NOTIFY_SOCKET once it serves, answers every request with "hello from NAME pid PID", \
            and drains on SIGTERM. With --stats, GET /stats answers the connections each event loop accepted.
            """)

    @Option(help: "The address to bind when not socket-activated.")
    var listen = "127.0.0.1:8080"

    @Option(help: "The name of the activated socket to serve (LISTEN_FDNAMES); the first listening one by default.")
    var socketName: String?

    @Option(help: "The sharing policy when it binds by itself: \(SharingPolicy.allCases.map(\.rawValue).joined(separator: ", ")).",
        transform: { text in
            guard let policy = SharingPolicy(rawValue: text) else {
                throw ValidationError("unknown policy \"\(text)\": use one of \(SharingPolicy.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            return policy
        })
    var policy = SharingPolicy.shared

    @Option(help: "per-loop: one SO_REUSEPORT listener per event loop; single: one listener for all loops.",
        transform: { text in
            guard let layout = PortReuseServer.Layout(rawValue: text) else { throw ValidationError("unknown layout \"\(text)\": use per-loop or single") }
            return layout
        })
    var layout = PortReuseServer.Layout.listenerPerLoop

    @Option(help: "Event loops (threads); the number of CPUs by default.")
    var threads = System.coreCount

    @Option(help: "The name in each answer.")
    var name = "nio-hello"

    @Flag(help: "Answer GET /stats with the connections each event loop accepted.")
    var stats = false

    func validate() throws {
        guard (1...1024).contains(threads) else { throw ValidationError("--threads \(threads) must be between 1 and 1024") }
    }

    func run() async throws {
        let stop = StopSignals()
        let group = MultiThreadedEventLoopGroup(numberOfThreads: threads)
        let state = ServerState(loops: Array(group.makeIterator()))
        let answer = Answer(name: name, state: state, stats: stats)
        let server: PortReuseServer
        do {
            server = try await PortReuseServer.activated(
                named: socketName, orBind: listen, policy: policy, layout: layout, group: group
            ) { channel in
                state.accepted(channel)
                return channel.eventLoop.makeCompletedFuture {
                    // No pipelining assistance: HelloHandler answers each request as it ends, so answers keep the order.
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline(withPipeliningAssistance: false)
                    try channel.pipeline.syncOperations.addHandler(HelloHandler(answer: answer))
                }
            }
        } catch {
            try? await group.shutdownGracefully()
            throw error
        }
        let origin = server.isActivated ? "activated" : "bound"
        try Readiness.notify(.ready, .status("serving on \(server.localAddress)"))
        print("nio-hello: pid \(getpid()) serving on \(server.localAddress) (\(origin), \(server.layout), "
            + "\(server.listenerCount) listener\(server.listenerCount == 1 ? "" : "s"), \(threads) loops)")
        fflush(nil)  // stdout may be a pipe: the line must leave now

        await stop.wait()
        _ = try? Readiness.notify(.stopping)
        await server.close()  // this process's descriptors only: a supervisor keeps the socket and its queue
        await state.drain(within: .seconds(10))
        try await group.shutdownGracefully()
        print("nio-hello: pid \(getpid()) drained and stopped")
    }
}

/// SIGTERM and SIGINT as an awaitable event, taken by dispatch sources (the signals themselves are ignored).
/// Unchecked: the sources are set once in init and only kept alive after.
final class StopSignals: @unchecked Sendable {
    private let sources: [any DispatchSourceSignal]
    private let stream: AsyncStream<Void>
    private let continuation: AsyncStream<Void>.Continuation

    init() {
        (stream, continuation) = AsyncStream.makeStream(of: Void.self)
        var sources: [any DispatchSourceSignal] = []
        for number in [SIGTERM, SIGINT] {
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
            source.setEventHandler { [continuation] in continuation.yield() }
            source.resume()
            sources.append(source)
        }
        self.sources = sources
    }

    func wait() async {
        for await _ in stream { return }
    }
}

/// The connections each loop accepted, and the ones still open (for the drain).
final class ServerState: Sendable {
    private let loopIndex: [ObjectIdentifier: Int]
    private let counts: Mutex<[Int]>
    private let open = Mutex<[ObjectIdentifier: any Channel]>([:])

    init(loops: [any EventLoop]) {
        loopIndex = Dictionary(uniqueKeysWithValues: loops.enumerated().map { (ObjectIdentifier($0.element), $0.offset) })
        counts = Mutex(Array(repeating: 0, count: loops.count))
    }

    func accepted(_ channel: any Channel) {
        if let index = loopIndex[ObjectIdentifier(channel.eventLoop)] { counts.withLock { $0[index] += 1 } }
        let key = ObjectIdentifier(channel)
        open.withLock { $0[key] = channel }
        channel.closeFuture.whenComplete { [self] _ in _ = open.withLock { $0.removeValue(forKey: key) } }
    }

    var perLoop: [Int] { counts.withLock { $0 } }

    /// Set when the server stops: every answer from then on says `Connection: close`.
    let draining = Atomic<Bool>(false)

    /// Stops keep-alive: idle connections that were served close now, the others after their next answer
    /// (a connection accepted just before the stop still gets its request answered); then waits until all
    /// have closed or `limit` passed.
    func drain(within limit: Duration) async {
        draining.store(true, ordering: .relaxed)
        for channel in open.withLock({ Array($0.values) }) {
            channel.eventLoop.execute { channel.pipeline.fireUserInboundEventTriggered(Drain()) }
        }
        let clock = ContinuousClock()
        let deadline = clock.now + limit
        while clock.now < deadline, !open.withLock({ $0.isEmpty }) {
            try? await Task.sleep(for: .milliseconds(20))
        }
    }
}

/// The event that tells each connection's handler that the server stops.
struct Drain {}

/// What every request gets: the greeting is made once, and each answer shares its bytes.
struct Answer: Sendable {
    let state: ServerState
    let stats: Bool
    let greeting: ByteBuffer
    let headers: HTTPHeaders
    let closingHeaders: HTTPHeaders

    init(name: String, state: ServerState, stats: Bool) {
        self.state = state
        self.stats = stats
        greeting = ByteBuffer(string: "hello from \(name) pid \(getpid())\n")
        headers = Self.headers(length: greeting.readableBytes, closing: false)
        closingHeaders = Self.headers(length: greeting.readableBytes, closing: true)
    }

    static func headers(length: Int, closing: Bool) -> HTTPHeaders {
        HTTPHeaders([("Content-Type", "text/plain"), ("Content-Length", "\(length)")] + (closing ? [("Connection", "close")] : []))
    }

    /// The headers and the body for a request.
    func response(for uri: String, closing: Bool) -> (HTTPHeaders, ByteBuffer) {
        if stats && uri == "/stats" {
            let body = ByteBuffer(string: "connections accepted per event loop: " + state.perLoop.map(String.init).joined(separator: " ") + "\n")
            return (Self.headers(length: body.readableBytes, closing: closing), body)
        }
        return (closing ? closingHeaders : headers, greeting)
    }
}

/// Answers each request when it ends; keeps the connection open when the client asks for keep-alive.
final class HelloHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    let answer: Answer
    init(answer: Answer) { self.answer = answer }

    /// The head of the request in flight.
    private var pending: HTTPRequestHead?
    /// Requests answered on this connection.
    private var served = 0

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        // An idle keep-alive connection closes at once; one that has not sent its first request yet is answered.
        if event is Drain, pending == nil, served > 0 { context.close(promise: nil) }
        context.fireUserInboundEventTriggered(event)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            pending = head
        case .body:
            break
        case .end:
            guard let head = pending else { return }
            pending = nil
            served += 1
            let keepAlive = head.isKeepAlive && !answer.state.draining.load(ordering: .relaxed)
            let (headers, body) = answer.response(for: head.uri, closing: !keepAlive)
            context.write(wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: .ok, headers: headers))), promise: nil)
            context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
            let done = context.writeAndFlush(wrapOutboundOut(.end(nil)))
            if !keepAlive {
                let channel = context.channel
                done.whenComplete { _ in channel.close(promise: nil) }
            }
        }
    }
}
