#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#elseif os(Windows)
import WinSDK
#endif
import PortReuseSystem
import Synchronization
import SystemPackage

/// An open socket that is closed exactly once: by ``close()``, or when the last reference goes away,
/// unless its descriptor was taken out with ``takeDescriptor()``.
///
/// ``Listener``, ``DatagramSocket`` and ``Connection`` each own one.
public final class SocketHandle: Sendable {
    /// The descriptor, or -1 once closed or taken. Int holds an Int32 fd and a Windows SOCKET alike.
    private let slot: Atomic<Int>

    /// Takes ownership of an open socket descriptor.
    public init(adopting descriptor: SocketDescriptor) {
        slot = Atomic(Int(truncatingIfNeeded: descriptor))
    }

    deinit { close() }

    /// The descriptor, or `nil` once the socket is closed or its descriptor was taken.
    /// It stays owned by this handle: do not close it.
    public var descriptor: SocketDescriptor? {
        let value = slot.load(ordering: .acquiring)
        return value == -1 ? nil : SocketDescriptor(truncatingIfNeeded: value)
    }

    /// Gives up ownership: returns the descriptor, which the caller must close (or hand on, for example to a
    /// child process or to SwiftNIO), and leaves this handle empty. `nil` if it was already taken or closed.
    public func takeDescriptor() -> SocketDescriptor? {
        let value = slot.exchange(-1, ordering: .acquiringAndReleasing)
        return value == -1 ? nil : SocketDescriptor(truncatingIfNeeded: value)
    }

    /// Closes the socket; later calls do nothing. The corresponding C function is `close`
    /// (`closesocket` on Windows). Not retried on EINTR: Linux releases the descriptor either way.
    public func close() {
        if let descriptor = takeDescriptor() { _ = Sys.close(descriptor) }
    }

    /// The descriptor for a system call, or an EBADF error once the socket is gone.
    func live(_ operation: PortReuseError.Operation) throws(PortReuseError) -> SocketDescriptor {
        guard let descriptor else { throw PortReuseError(operation, errno: .badFileDescriptor, diagnosis: .other("the socket is closed.")) }
        return descriptor
    }

    /// The address the socket is bound to. The corresponding C function is `getsockname`.
    public func localAddress() throws(PortReuseError) -> SocketAddress {
        let descriptor = try live(.localAddress)
        return try readAddress(.localAddress) { Sys.getsockname(descriptor, $0, $1) }
    }

    /// The address of the peer of a connected socket. The corresponding C function is `getpeername`.
    public func remoteAddress() throws(PortReuseError) -> SocketAddress {
        let descriptor = try live(.remoteAddress)
        return try readAddress(.remoteAddress) { Sys.getpeername(descriptor, $0, $1) }
    }

    private func readAddress(
        _ operation: PortReuseError.Operation,
        _ call: (UnsafeMutablePointer<sockaddr>, UnsafeMutablePointer<socklen_t>) -> Int32
    ) throws(PortReuseError) -> SocketAddress {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let result = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { call($0, &length) }
        }
        guard result == 0 else { throw PortReuseError(operation, errno: Errno(rawValue: Sys.lastError())) }
        guard let address = SocketAddress(storage) else {
            throw PortReuseError(operation, diagnosis: .unusableDescriptor(reason: "the socket is not an IPv4 or IPv6 socket."))
        }
        return address
    }

    /// Sets an integer socket option. The corresponding C function is `setsockopt`.
    package func setOption(_ level: Int32, _ name: Int32, _ value: Int32, label: @autoclosure () -> String) throws(PortReuseError) {
        let descriptor = try live(.setOption(label()))
        var value = value
        guard Sys.setsockopt(descriptor, level, name, &value, socklen_t(MemoryLayout<Int32>.size)) == 0 else {
            throw PortReuseError(.setOption(label()), errno: Errno(rawValue: Sys.lastError()))
        }
    }

    /// Reads an integer socket option. The corresponding C function is `getsockopt`.
    package func option(_ level: Int32, _ name: Int32, label: @autoclosure () -> String) throws(PortReuseError) -> Int32 {
        let descriptor = try live(.getOption(label()))
        var value: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        guard Sys.getsockopt(descriptor, level, name, &value, &length) == 0 else {
            throw PortReuseError(.getOption(label()), errno: Errno(rawValue: Sys.lastError()))
        }
        return value
    }

    /// Sets every option in `options` to 1 (the sharing table says which, per policy).
    package func enable(_ options: ReuseOptions) throws(PortReuseError) {
        for (option, name) in ReuseOptions.all where options.contains(option) {
            guard let constant = Sys.constant(for: option) else {
                throw PortReuseError(.setOption(name), diagnosis: .other("\(name) does not exist on \(OperatingSystem.current)."))
            }
            try setOption(constant.level, constant.name, 1, label: name)
        }
    }

    /// The reuse options that are set on this socket, read back from the kernel.
    public func reuseOptions() throws(PortReuseError) -> ReuseOptions {
        var found: ReuseOptions = []
        for (option, name) in ReuseOptions.all {
            guard let constant = Sys.constant(for: option) else { continue }
            if try self.option(constant.level, constant.name, label: name) != 0 { found.insert(option) }
        }
        return found
    }

    /// Whether an IPv6 socket also accepts IPv4 (IPV6_V6ONLY is 0). Always false for IPv4 sockets.
    public func isDualStack() throws(PortReuseError) -> Bool {
        guard try localAddress().family == .ipv6 else { return false }
        return try option(Sys.ipv6Level, Sys.ipv6Only, label: "IPV6_V6ONLY") == 0
    }

    /// The transport of the socket, read from the kernel (`SO_TYPE`).
    package func transport() throws(PortReuseError) -> Transport? {
        switch try option(Sys.solSocket, Sys.socketTypeOption, label: "SO_TYPE") {
        case Sys.socketType(.tcp): .tcp
        case Sys.socketType(.udp): .udp
        default: nil
        }
    }

    /// Makes the socket blocking or not. The corresponding C function is `fcntl` (`ioctlsocket` on Windows).
    func setBlocking(_ blocking: Bool) throws(PortReuseError) {
        let descriptor = try live(.setOption("O_NONBLOCK"))
        guard Sys.setBlocking(descriptor, blocking) == 0 else {
            throw PortReuseError(.setOption("O_NONBLOCK"), errno: Errno(rawValue: Sys.lastError()))
        }
    }

    /// Waits until the socket is readable (or writable); false when `timeout` passed first. A signal ends the
    /// wait with an EINTR error unless `retryOnInterrupt`.
    func wait(
        forWriting: Bool, timeout: Duration?, _ operation: PortReuseError.Operation, retryOnInterrupt: Bool = true
    ) throws(PortReuseError) -> Bool {
        let descriptor = try live(operation)
        let milliseconds = timeout.map { Int32(clamping: $0.components.seconds * 1000 + $0.components.attoseconds / 1_000_000_000_000_000) } ?? -1
        // A signal that interrupts the wait starts it again from the whole timeout.
        return try retryingInterrupts(operation, nil, retry: retryOnInterrupt) { Sys.wait(descriptor, forWriting: forWriting, milliseconds: milliseconds) } > 0
    }
}

/// Runs a system call that returns -1 on failure, retrying when a signal interrupted it (EINTR);
/// a failure becomes a ``PortReuseError`` that names the operation and the address.
@inline(__always)
func retryingInterrupts<T: FixedWidthInteger>(
    _ operation: PortReuseError.Operation, _ address: @autoclosure () -> String?, retry: Bool = true, _ call: () -> T
) throws(PortReuseError) -> T {
    let (result, code) = retryingInterrupts(retry: retry, call)
    guard code == 0 else { throw PortReuseError(operation, address: address(), errno: Errno(rawValue: code)) }
    return result
}

/// The same without throwing, for closures of APIs that only rethrow untyped errors: the result, and the
/// error code when it failed (0 when it did not).
@inline(__always)
func retryingInterrupts<T: FixedWidthInteger>(retry: Bool = true, _ call: () -> T) -> (T, Int32) {
    while true {
        let result = call()
        if result != T(truncatingIfNeeded: -1) { return (result, 0) }
        let code = Sys.lastError()
        if code != Sys.interrupted || !retry { return (result, code) }
    }
}

/// Types that own one socket share these accessors.
public protocol SocketOwner: Sendable {
    /// The owned socket.
    var handle: SocketHandle { get }
}

extension SocketOwner {
    /// The descriptor, still owned by this value; `nil` once closed or taken.
    public var descriptor: SocketDescriptor? { handle.descriptor }

    /// Gives up ownership of the descriptor (for SwiftNIO, or to pass to a child process); see
    /// ``SocketHandle/takeDescriptor()``.
    public func takeDescriptor() -> SocketDescriptor? { handle.takeDescriptor() }

    /// Closes the socket; later calls do nothing.
    public func close() { handle.close() }

    /// The reuse options set on the socket, read back from the kernel.
    public func reuseOptions() throws(PortReuseError) -> ReuseOptions { try handle.reuseOptions() }
}

#if canImport(Glibc) || canImport(Darwin)
extension SocketHandle {
    /// Takes ownership of `descriptor`, a socket the system layer gave (a duplicate of another process's, say).
    package convenience init(adopting descriptor: Descriptor) { self.init(adopting: descriptor.rawValue) }

    /// The descriptor as the system layer's type; `nil` once closed or taken.
    package var systemDescriptor: Descriptor? { descriptor.map(Descriptor.init(_:)) }
}
#endif
