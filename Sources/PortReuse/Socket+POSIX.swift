#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

#if canImport(Glibc) || canImport(Darwin)
/// A socket as the operating system names it: a file descriptor on Linux, macOS and the BSDs.
public typealias SocketDescriptor = Int32

/// What Linux, macOS and the BSDs do alike; each one's own file holds only what differs.
extension Sys {
    typealias Descriptor = SocketDescriptor
    static let invalidDescriptor: Descriptor = -1
    static let defaultBacklog: Int32 = SOMAXCONN

    static func lastError() -> Int32 { errno }

    static func family(_ family: AddressFamily) -> Int32 { family == .ipv4 ? AF_INET : AF_INET6 }

    static let inProgress = EINPROGRESS
    static let interrupted = EINTR
    static let solSocket = SOL_SOCKET
    static let socketError = SO_ERROR
    static let socketTypeOption = SO_TYPE
    static let acceptConnections = SO_ACCEPTCONN
    static let ipv6Level = Int32(IPPROTO_IPV6)
    static let ipv6Only = IPV6_V6ONLY

    /// The level and name of a reuse option, or `nil` where POSIX has no such option.
    static func constant(for option: ReuseOptions) -> (level: Int32, name: Int32)? {
        switch option {
        case .reuseAddress: (SOL_SOCKET, SO_REUSEADDR)
        case .reusePort: (SOL_SOCKET, SO_REUSEPORT)
        default: nil
        }
    }

    static func setBlocking(_ s: Descriptor, _ blocking: Bool) -> Int32 {
        let flags = fcntl(s, F_GETFL)
        guard flags >= 0 else { return -1 }
        return fcntl(s, F_SETFL, blocking ? flags & ~O_NONBLOCK : flags | O_NONBLOCK)
    }

    /// Waits until the socket is readable (`forWriting` false) or writable, or `milliseconds` pass
    /// (-1: no limit). Returns 1 when ready, 0 on timeout, -1 on error.
    static func wait(_ s: Descriptor, forWriting: Bool, milliseconds: Int32) -> Int32 {
        var entry = pollfd(fd: s, events: Int16(forWriting ? POLLOUT : POLLIN), revents: 0)
        return poll(&entry, 1, milliseconds)
    }

    static func makeSockAddr(_ address: SocketAddress) -> (sockaddr_storage, socklen_t) {
        var storage = sockaddr_storage()
        switch address.ip.storage {
        case .v4(let raw):
            let length = MemoryLayout<sockaddr_in>.size
            withUnsafeMutableBytes(of: &storage) { bytes in
                let sin = bytes.baseAddress!.assumingMemoryBound(to: sockaddr_in.self)
                #if canImport(Darwin)
                sin.pointee.sin_len = UInt8(length)
                #endif
                sin.pointee.sin_family = sa_family_t(AF_INET)
                sin.pointee.sin_port = address.port.bigEndian
                sin.pointee.sin_addr.s_addr = raw
            }
            return (storage, socklen_t(length))
        case .v6(let high, let low, let scope):
            let length = MemoryLayout<sockaddr_in6>.size
            withUnsafeMutableBytes(of: &storage) { bytes in
                let sin6 = bytes.baseAddress!.assumingMemoryBound(to: sockaddr_in6.self)
                #if canImport(Darwin)
                sin6.pointee.sin6_len = UInt8(length)
                #endif
                sin6.pointee.sin6_family = sa_family_t(AF_INET6)
                sin6.pointee.sin6_port = address.port.bigEndian
                sin6.pointee.sin6_scope_id = scope
                withUnsafeMutableBytes(of: &sin6.pointee.sin6_addr) { target in
                    target.storeBytes(of: high, toByteOffset: 0, as: UInt64.self)
                    target.storeBytes(of: low, toByteOffset: 8, as: UInt64.self)
                }
            }
            return (storage, socklen_t(length))
        }
    }

    static func readSockAddr(_ storage: sockaddr_storage) -> SocketAddress? {
        let family = Int32(storage.ss_family)
        return withUnsafeBytes(of: storage) { bytes -> SocketAddress? in
            switch family {
            case AF_INET:
                let sin = bytes.load(as: sockaddr_in.self)
                return SocketAddress(ip: IPAddress(storage: .v4(sin.sin_addr.s_addr)), port: UInt16(bigEndian: sin.sin_port))
            case AF_INET6:
                var sin6 = bytes.load(as: sockaddr_in6.self)
                let (high, low) = withUnsafeBytes(of: &sin6.sin6_addr) {
                    ($0.loadUnaligned(fromByteOffset: 0, as: UInt64.self), $0.loadUnaligned(fromByteOffset: 8, as: UInt64.self))
                }
                let ip = IPAddress(storage: .v6(high, low, scope: sin6.sin6_scope_id))
                return SocketAddress(ip: ip, port: UInt16(bigEndian: sin6.sin6_port))
            default:
                return nil
            }
        }
    }

    /// The addresses of a host name. The corresponding C function is `getaddrinfo`.
    static func resolve(name: String, family: AddressFamily?, transport: Transport) throws(PortReuseError) -> [IPAddress] {
        var hints = addrinfo()
        hints.ai_family = family.map(Sys.family) ?? AF_UNSPEC
        hints.ai_socktype = socketType(transport)
        var list: UnsafeMutablePointer<addrinfo>?
        let status = getaddrinfo(name, nil, &hints, &list)
        guard status == 0 else {
            let reason = String(cString: gai_strerror(status))
            throw PortReuseError(.resolve, address: name, diagnosis: .unknownHost(name: name, reason: reason))
        }
        defer { freeaddrinfo(list) }
        var found: [IPAddress] = []
        var entry = list
        while let current = entry {
            if let address = current.pointee.ai_addr {
                var storage = sockaddr_storage()
                withUnsafeMutableBytes(of: &storage) {
                    $0.copyMemory(from: UnsafeRawBufferPointer(start: address, count: Int(current.pointee.ai_addrlen)))
                }
                if let socketAddress = readSockAddr(storage) { found.append(socketAddress.ip) }
            }
            entry = current.pointee.ai_next
        }
        return found
    }

    /// The effective user id of this process.
    static func effectiveUserID() -> UInt32 { geteuid() }

    /// Sends one datagram to a unix datagram socket named by a path, or by `@name` for Linux's abstract
    /// namespace (how `NOTIFY_SOCKET` names it). Returns 0, or the error code.
    static func sendUnixDatagram(_ bytes: [UInt8], to path: String) -> Int32 {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        var pathBytes = Array(path.utf8)
        if pathBytes.first == UInt8(ascii: "@") { pathBytes[0] = 0 }
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        guard !pathBytes.isEmpty, pathBytes.count < capacity else { return ENAMETOOLONG }
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: pathBytes) }
        let length = socklen_t(MemoryLayout<sockaddr_un>.offset(of: \.sun_path)! + pathBytes.count + (pathBytes[0] == 0 ? 0 : 1))
        let fd = unixDatagramSocket()
        guard fd >= 0 else { return errno }
        defer { _ = close(fd) }
        let sent = bytes.withUnsafeBytes { buffer in
            withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { sendto(fd, buffer, $0, length) }
            }
        }
        return sent < 0 ? errno : 0
    }

    /// Marks a descriptor close-on-exec. The corresponding C function is `fcntl(F_SETFD)`.
    static func setCloseOnExec(_ descriptor: Descriptor) -> Int32 {
        let flags = fcntl(descriptor, F_GETFD)
        guard flags >= 0 else { return -1 }
        return fcntl(descriptor, F_SETFD, flags | FD_CLOEXEC)
    }

    static func processID() -> Int32 { getpid() }

    static func environment(_ name: String) -> String? { getenv(name).map { String(cString: $0) } }

    static func unsetEnvironment(_ name: String) { unsetenv(name) }

    /// CLOCK_MONOTONIC in microseconds, as systemd's MONOTONIC_USEC wants it.
    static func monotonicMicroseconds() -> UInt64 {
        var time = timespec()
        clock_gettime(CLOCK_MONOTONIC, &time)
        return UInt64(time.tv_sec) * 1_000_000 + UInt64(time.tv_nsec) / 1000
    }
}
#endif
