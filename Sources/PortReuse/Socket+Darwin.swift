#if canImport(Darwin)
import Darwin

/// macOS and the BSDs: the socket calls under the names every platform file gives them (shared POSIX parts
/// live in Socket+POSIX.swift). Written for Darwin and not compiled by the Linux CI; its policy table is
/// tested as data.
enum Sys {
    static let operatingSystem = OperatingSystem.darwin

    static func socketType(_ transport: Transport) -> Int32 { transport == .tcp ? SOCK_STREAM : SOCK_DGRAM }

    static func unixDatagramSocket() -> Descriptor {
        let s = Darwin.socket(AF_UNIX, SOCK_DGRAM, 0)
        if s >= 0 { prepare(s); _ = setBlocking(s, false) }  // sd_notify never waits for a slow supervisor
        return s
    }

    /// A new socket, close-on-exec and without SIGPIPE (Darwin has neither SOCK_CLOEXEC nor MSG_NOSIGNAL).
    static func socket(_ family: AddressFamily, _ transport: Transport) -> Descriptor {
        let s = Darwin.socket(Sys.family(family), socketType(transport), 0)
        if s >= 0 { prepare(s) }
        return s
    }

    static func accept(_ s: Descriptor, _ a: UnsafeMutablePointer<sockaddr>, _ l: UnsafeMutablePointer<socklen_t>) -> Descriptor {
        let connection = Darwin.accept(s, a, l)
        if connection >= 0 { prepare(connection) }
        return connection
    }

    private static func prepare(_ s: Descriptor) {
        _ = fcntl(s, F_SETFD, FD_CLOEXEC)
        var one: Int32 = 1
        _ = Darwin.setsockopt(s, SOL_SOCKET, SO_NOSIGPIPE, &one, socklen_t(MemoryLayout<Int32>.size))
    }

    static func send(_ s: Descriptor, _ buffer: UnsafeRawBufferPointer) -> Int {
        Darwin.send(s, buffer.baseAddress, buffer.count, 0)
    }

    static func sendto(_ s: Descriptor, _ buffer: UnsafeRawBufferPointer, _ a: UnsafePointer<sockaddr>, _ l: socklen_t) -> Int {
        Darwin.sendto(s, buffer.baseAddress, buffer.count, 0, a, l)
    }

    static func close(_ s: Descriptor) -> Int32 { Darwin.close(s) }
    static func bind(_ s: Descriptor, _ a: UnsafePointer<sockaddr>, _ l: socklen_t) -> Int32 { Darwin.bind(s, a, l) }
    static func connect(_ s: Descriptor, _ a: UnsafePointer<sockaddr>, _ l: socklen_t) -> Int32 { Darwin.connect(s, a, l) }
    static func listen(_ s: Descriptor, _ backlog: Int32) -> Int32 { Darwin.listen(s, backlog) }
    static func shutdownWrite(_ s: Descriptor) -> Int32 { Darwin.shutdown(s, SHUT_WR) }

    static func getsockname(_ s: Descriptor, _ a: UnsafeMutablePointer<sockaddr>, _ l: UnsafeMutablePointer<socklen_t>) -> Int32 {
        Darwin.getsockname(s, a, l)
    }

    static func getpeername(_ s: Descriptor, _ a: UnsafeMutablePointer<sockaddr>, _ l: UnsafeMutablePointer<socklen_t>) -> Int32 {
        Darwin.getpeername(s, a, l)
    }

    static func setsockopt(_ s: Descriptor, _ level: Int32, _ name: Int32, _ value: UnsafeRawPointer, _ length: socklen_t) -> Int32 {
        Darwin.setsockopt(s, level, name, value, length)
    }

    static func getsockopt(
        _ s: Descriptor, _ level: Int32, _ name: Int32, _ value: UnsafeMutableRawPointer, _ length: UnsafeMutablePointer<socklen_t>
    ) -> Int32 {
        Darwin.getsockopt(s, level, name, value, length)
    }

    static func recv(_ s: Descriptor, _ buffer: UnsafeMutableRawBufferPointer) -> Int {
        Darwin.recv(s, buffer.baseAddress, buffer.count, 0)
    }

    static func recvfrom(
        _ s: Descriptor, _ buffer: UnsafeMutableRawBufferPointer, _ a: UnsafeMutablePointer<sockaddr>, _ l: UnsafeMutablePointer<socklen_t>
    ) -> Int {
        Darwin.recvfrom(s, buffer.baseAddress, buffer.count, 0, a, l)
    }
}
#endif
