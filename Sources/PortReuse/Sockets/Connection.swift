#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#elseif os(Windows)
import WinSDK
#endif
import SystemPackage

/// A connected TCP socket: accepted from a ``Listener``, or dialled with ``dial(tcp:from:policy:timeout:)``.
/// It owns its descriptor.
public final class Connection: SocketOwner {
    public let handle: SocketHandle
    /// The local end.
    public let localAddress: SocketAddress
    /// The remote end.
    public let remoteAddress: SocketAddress

    init(handle: SocketHandle, local: SocketAddress, remote: SocketAddress?) {
        self.handle = handle
        self.localAddress = local
        self.remoteAddress = remote ?? (try? handle.remoteAddress()) ?? local
    }

    /// Connects to `remote`, optionally from a local address and port that may also be listening (greuse's
    /// `Dial`): the local end is bound with `policy` first, so a port held by a ``Listener`` of policy
    /// ``SharingPolicy/shared`` can dial out too (NAT hole punching, peer-to-peer).
    ///
    /// - Parameters:
    ///   - remote: `203.0.113.5:443`, `[::1]:8080`, `example.com:80`; an empty host means this machine.
    ///   - local: the local end, such as `:8080` or `127.0.0.1:8080`; any free port when `nil`.
    ///   - policy: the local end's policy; ``SharingPolicy/shared`` by default, as a listener on the same port needs.
    ///   - timeout: how long to wait for the handshake; the system's limit when `nil`.
    public static func dial(
        tcp remote: String, from local: String? = nil, policy: SharingPolicy = .shared, timeout: Duration? = nil
    ) throws(PortReuseError) -> Connection {
        try dial(Address(remote), from: local.map { (text) throws(PortReuseError) in try Address(text) }, policy: policy, timeout: timeout)
    }

    /// Connects to a parsed address, trying each of its IP addresses in the resolver's order.
    public static func dial(
        _ remote: Address, from local: Address? = nil, policy: SharingPolicy = .shared, timeout: Duration? = nil
    ) throws(PortReuseError) -> Connection {
        let remote = try remote.checked(for: .tcp, operation: .connect)
        let local = try local?.checked(for: .tcp, operation: .bind)
        var candidates = try remote.resolve(.tcp).map { address in
            address.ip.isUnspecified ? SocketAddress(ip: address.family == .ipv4 ? .loopbackIPv4 : .loopbackIPv6, port: address.port) : address
        }
        if let family = local?.family { candidates.removeAll { $0.family != family } }
        guard !candidates.isEmpty else {
            throw PortReuseError(.connect, address: remote.description, diagnosis: .other("\(remote) has no address of the local end's IP version (\(local!))."))
        }
        var lastError: PortReuseError?
        for candidate in candidates {
            do {
                let from = try local.map { (local) throws(PortReuseError) in try local.resolveForBinding(.tcp, family: candidate.family) }
                return try dial(to: candidate, from: from, policy: policy, timeout: timeout)
            } catch {
                lastError = error
            }
        }
        throw lastError!
    }

    /// Connects to a socket address, optionally from a bound local one. The corresponding C functions are
    /// `socket`, `setsockopt`, `bind`, `connect` and `poll`.
    public static func dial(
        to remote: SocketAddress, from local: SocketAddress? = nil, policy: SharingPolicy = .shared, timeout: Duration? = nil
    ) throws(PortReuseError) -> Connection {
        let handle: SocketHandle
        if let local {
            handle = try SocketHandle.bound(to: local, transport: .tcp, policy: policy, dualStack: false)
        } else {
            let descriptor = try retryingInterrupts(.socket, remote.label(.tcp)) { Sys.socket(remote.family, .tcp) }
            handle = SocketHandle(adopting: descriptor)
        }
        try handle.connect(to: remote, timeout: timeout, fixedLocal: local.flatMap { $0.port == 0 ? nil : $0 })
        return Connection(handle: handle, local: try handle.localAddress(), remote: remote)
    }

    /// Sends all of `bytes`. The corresponding C function is `send`.
    public func send(_ bytes: [UInt8]) throws(PortReuseError) {
        let descriptor = try handle.live(.send)
        var offset = 0
        while offset < bytes.count {
            let (count, code) = bytes.withUnsafeBytes { buffer in
                retryingInterrupts { Sys.send(descriptor, UnsafeRawBufferPointer(rebasing: buffer[offset...])) }
            }
            guard code == 0 else { throw PortReuseError(.send, address: remoteAddress.label(.tcp), errno: Errno(rawValue: code)) }
            offset += count
        }
    }

    /// Sends the UTF-8 bytes of `text`.
    public func send(_ text: String) throws(PortReuseError) { try send(Array(text.utf8)) }

    /// Receives up to `maxLength` bytes, waiting at most `timeout` (forever when `nil`). An empty result means
    /// the peer closed its end. The corresponding C function is `recv`.
    ///
    /// - Parameter retryOnInterrupt: when false, a signal ends the wait with an `EINTR` error.
    public func receive(maxLength: Int = 65_536, timeout: Duration? = nil, retryOnInterrupt: Bool = true) throws(PortReuseError) -> [UInt8] {
        if let timeout, try !handle.wait(forWriting: false, timeout: timeout, .receive, retryOnInterrupt: retryOnInterrupt) {
            throw PortReuseError(.receive, address: remoteAddress.label(.tcp), diagnosis: .timedOut(seconds: timeout.seconds))
        }
        let descriptor = try handle.live(.receive)
        var buffer = [UInt8](repeating: 0, count: maxLength)
        let (count, code) = buffer.withUnsafeMutableBytes { bytes in retryingInterrupts(retry: retryOnInterrupt) { Sys.recv(descriptor, bytes) } }
        guard code == 0 else { throw PortReuseError(.receive, address: remoteAddress.label(.tcp), errno: Errno(rawValue: code)) }
        return Array(buffer.prefix(count))
    }

    /// Receives until the peer closes its end or `limit` bytes arrived, waiting at most `timeout` for each read.
    public func receiveAll(limit: Int = 1 << 20, timeout: Duration? = nil) throws(PortReuseError) -> [UInt8] {
        var all: [UInt8] = []
        while all.count < limit {
            let chunk = try receive(maxLength: min(65_536, limit - all.count), timeout: timeout)
            if chunk.isEmpty { break }
            all += chunk
        }
        return all
    }

    /// Closes the sending direction; the peer reads the end of the stream. The corresponding C function is `shutdown`.
    public func shutdownWrite() throws(PortReuseError) {
        let descriptor = try handle.live(.send)
        _ = try retryingInterrupts(.send, remoteAddress.label(.tcp)) { Sys.shutdownWrite(descriptor) }
    }
}

extension SocketHandle {
    /// connect, made non-blocking so that it can time out and survive signals, then blocking again.
    func connect(to remote: SocketAddress, timeout: Duration?, fixedLocal: SocketAddress?) throws(PortReuseError) {
        let descriptor = try live(.connect)
        try setBlocking(false)
        let started = try remote.withSockAddr { (pointer, length) throws(PortReuseError) -> Int32 in
            Sys.connect(descriptor, pointer, length) == 0 ? 0 : Sys.lastError()
        }
        var code = started
        if started == Sys.inProgress || started == Sys.interrupted {
            guard try wait(forWriting: true, timeout: timeout, .connect) else {
                throw PortReuseError(.connect, address: remote.label(.tcp), errno: .timedOut, diagnosis: .timedOut(seconds: timeout?.seconds ?? 0))
            }
            code = try option(Sys.solSocket, Sys.socketError, label: "SO_ERROR")
        }
        if code != 0 {
            var error = PortReuseError(.connect, address: remote.label(.tcp), errno: Errno(rawValue: code))
            switch error.errno {
            case .connectionRefused?: error.diagnosis = .refused
            case .addressNotAvailable?: error.diagnosis = fixedLocal.map { .fourTupleTaken(local: $0, remote: remote) }
            default: break
            }
            throw error
        }
        try setBlocking(true)
    }
}

extension Duration {
    /// The duration in seconds, as a Double.
    var seconds: Double { Double(components.seconds) + Double(components.attoseconds) / 1e18 }
}
