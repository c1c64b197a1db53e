#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

#if canImport(Glibc) || canImport(Darwin)
/// The few C calls PortReuseNIO makes itself, under one name per platform (the socket work lives in PortReuse).
enum SystemCalls {
    static let maximumBacklog: Int32 = SOMAXCONN

    static func listen(_ descriptor: Int32, _ backlog: Int32) -> Int32 {
        #if canImport(Glibc)
        Glibc.listen(descriptor, backlog)
        #else
        Darwin.listen(descriptor, backlog)
        #endif
    }

    static func lastError() -> Int32 { errno }

    static func closeDescriptor(_ descriptor: Int32) { _ = close(descriptor) }

    static func write(_ descriptor: Int32, _ bytes: UnsafeRawPointer, _ count: Int) -> Int {
        #if canImport(Glibc)
        Glibc.write(descriptor, bytes, count)
        #else
        Darwin.write(descriptor, bytes, count)
        #endif
    }

    /// A pipe whose ends are close-on-exec. The corresponding C functions are `pipe` and `fcntl`.
    static func makePipe() -> (read: Int32, write: Int32)? {
        var ends: [Int32] = [-1, -1]
        guard pipe(&ends) == 0 else { return nil }
        for end in ends { _ = fcntl(end, F_SETFD, FD_CLOEXEC) }
        return (ends[0], ends[1])
    }

    /// Sets O_NONBLOCK. The corresponding C function is `fcntl`.
    static func setNonBlocking(_ descriptor: Int32) -> Int32 {
        let flags = fcntl(descriptor, F_GETFL)
        guard flags >= 0 else { return -1 }
        return fcntl(descriptor, F_SETFL, flags | O_NONBLOCK)
    }

    enum Readiness { case readable, wake, failed }

    /// Waits until `descriptor` is readable, or `wake` is (or closed). The corresponding C function is `poll`.
    static func waitReadable(_ descriptor: Int32, orWake wake: Int32) -> Readiness {
        var entries = [pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0), pollfd(fd: wake, events: Int16(POLLIN), revents: 0)]
        while true {
            let result = poll(&entries, 2, -1)
            if result < 0 && errno == EINTR { continue }
            if result < 0 || entries[0].revents & Int16(POLLNVAL | POLLERR) != 0 { return .failed }
            if entries[1].revents != 0 { return .wake }
            return .readable
        }
    }

    #if canImport(Glibc)
    /// Glibc's module map hides accept4 (it needs _GNU_SOURCE), so it is looked up once.
    private typealias Accept4 = @convention(c) (Int32, UnsafeMutablePointer<sockaddr>?, UnsafeMutablePointer<socklen_t>?, Int32) -> Int32
    private static let accept4: Accept4 = unsafeBitCast(dlsym(dlopen(nil, RTLD_NOW), "accept4")!, to: Accept4.self)
    #endif

    /// Accepts one connection, close-on-exec; -1 and errno when there is none. The corresponding C function
    /// is `accept4` (`accept` elsewhere).
    static func accept(_ descriptor: Int32) -> Int32 {
        #if canImport(Glibc)
        accept4(descriptor, nil, nil, Int32(SOCK_CLOEXEC.rawValue))
        #else
        let connection = Darwin.accept(descriptor, nil, nil)
        if connection >= 0 { _ = fcntl(connection, F_SETFD, FD_CLOEXEC) }
        return connection
        #endif
    }

    /// Whether a failed accept should be tried again at once (a signal, a connection reset while queued);
    /// out of descriptors or memory, it waits 10 ms first, so that the acceptor does not spin.
    static func shouldRetryAccept(_ code: Int32) -> Bool {
        switch code {
        case EINTR, ECONNABORTED: return true
        case EMFILE, ENFILE, ENOBUFS, ENOMEM: usleep(10_000); return false
        default: return false
        }
    }
}
#endif
