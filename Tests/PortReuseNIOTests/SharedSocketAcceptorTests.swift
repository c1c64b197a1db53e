import Glibc
import NIOCore
import NIOPosix
import PortReuse
@testable import PortReuseNIO
import Testing
import PortReuseSystem

@Suite("PortReuseNIO: the shared socket acceptor")
struct SharedSocketAcceptorTests {
    @Test("close() twice closes once: descriptors opened in between are left alone")
    func closeIsIdempotent() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let listener = try Listener(tcp: "127.0.0.1:0")
        let acceptor = try SharedSocketAcceptor(listener, loops: [group.next()]) { $0.eventLoop.makeSucceededFuture(()) }
        acceptor.close()
        try await acceptor.closeFuture.get()
        // The acceptor's pipe and socket numbers are free now; a new pipe is likely to get one of them.
        let other = try Files.pipe()
        defer { Files.close(other.read); Files.close(other.write) }
        acceptor.close()
        try Files.write([42], to: other.write)
        #expect(Files.read(descriptor: other.read, limit: 1) == [42], "the second close() must not touch this pipe")
        try await group.shutdownGracefully()
    }
}
