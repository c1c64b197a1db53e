#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import PortReuseSystem
import SystemPackage

#if canImport(Glibc) || canImport(Darwin)
/// A socket as the operating system names it: a file descriptor on Linux, macOS and the BSDs.
public typealias SocketDescriptor = Int32

/// What Linux, macOS and the BSDs do alike; each one's own file holds only what differs.
extension Sys {
    package typealias Descriptor = SocketDescriptor
    static let invalidDescriptor: Descriptor = -1
    package static let defaultBacklog: Int32 = SOMAXCONN

    package static func lastError() -> Int32 { errno }

    package static func family(_ family: AddressFamily) -> Int32 { family == .ipv4 ? AF_INET : AF_INET6 }

    static let inProgress = EINPROGRESS
    static let interrupted = EINTR
    static let solSocket = SOL_SOCKET
    static let socketError = SO_ERROR
    static let socketTypeOption = SO_TYPE
    static let acceptConnections = SO_ACCEPTCONN
    package static let ipv6Level = Int32(IPPROTO_IPV6)
    package static let ipv6Only = IPV6_V6ONLY

    // The plain forwarders, alike on Linux and Darwin (the file-scope functions below reach the C calls, which
    // these members' own names shadow inside Sys).
    package static func close(_ s: Descriptor) -> Int32 { cClose(s) }
    static func bind(_ s: Descriptor, _ a: UnsafePointer<sockaddr>, _ l: socklen_t) -> Int32 { cBind(s, a, l) }
    static func connect(_ s: Descriptor, _ a: UnsafePointer<sockaddr>, _ l: socklen_t) -> Int32 { cConnect(s, a, l) }
    package static func listen(_ s: Descriptor, _ backlog: Int32) -> Int32 { cListen(s, backlog) }
    static func getsockname(_ s: Descriptor, _ a: UnsafeMutablePointer<sockaddr>, _ l: UnsafeMutablePointer<socklen_t>) -> Int32 { cGetsockname(s, a, l) }
    static func getpeername(_ s: Descriptor, _ a: UnsafeMutablePointer<sockaddr>, _ l: UnsafeMutablePointer<socklen_t>) -> Int32 { cGetpeername(s, a, l) }
    static func setsockopt(_ s: Descriptor, _ level: Int32, _ name: Int32, _ value: UnsafeRawPointer, _ length: socklen_t) -> Int32 {
        cSetsockopt(s, level, name, value, length)
    }
    package static func getsockopt(
        _ s: Descriptor, _ level: Int32, _ name: Int32, _ value: UnsafeMutableRawPointer, _ length: UnsafeMutablePointer<socklen_t>
    ) -> Int32 {
        cGetsockopt(s, level, name, value, length)
    }
    static func recv(_ s: Descriptor, _ buffer: UnsafeMutableRawBufferPointer) -> Int { cRecv(s, buffer.baseAddress, buffer.count, 0) }
    static func recvfrom(
        _ s: Descriptor, _ buffer: UnsafeMutableRawBufferPointer, _ a: UnsafeMutablePointer<sockaddr>, _ l: UnsafeMutablePointer<socklen_t>
    ) -> Int {
        cRecvfrom(s, buffer.baseAddress, buffer.count, 0, a, l)
    }

    /// The level and name of a reuse option, or `nil` where POSIX has no such option.
    static func constant(for option: ReuseOptions) -> (level: Int32, name: Int32)? {
        switch option {
        case .reuseAddress: (SOL_SOCKET, SO_REUSEADDR)
        case .reusePort: (SOL_SOCKET, SO_REUSEPORT)
        default: nil
        }
    }

    package static func setBlocking(_ s: Descriptor, _ blocking: Bool) -> Int32 { Files.setNonBlocking(PortReuseSystem.Descriptor(s), !blocking) ? 0 : -1 }

    /// Waits until the socket is readable (`forWriting` false) or writable, or `milliseconds` pass
    /// (-1: no limit). Returns 1 when ready, 0 on timeout, -1 on error.
    static func wait(_ s: Descriptor, forWriting: Bool, milliseconds: Int32) -> Int32 {
        var entry = pollfd(fd: s, events: Int16(forWriting ? POLLOUT : POLLIN), revents: 0)
        return poll(&entry, 1, milliseconds)
    }

    /// What ``waitReadable(_:orWake:)`` saw.
    package enum Wakeup {
        case readable, wake, failed
        /// The other end is gone and nothing is left to read (POLLHUP without POLLIN): a seccomp listener whose
        /// every process exited, a listening socket shut down.
        case hungUp
    }

    /// Waits until `s` is readable, or `wake` is (or was closed); EINTR is retried. The corresponding C
    /// function is `poll`.
    package static func waitReadable(_ s: Descriptor, orWake wake: Descriptor) -> Wakeup {
        var entries = [pollfd(fd: s, events: Int16(POLLIN), revents: 0), pollfd(fd: wake, events: Int16(POLLIN), revents: 0)]
        let (result, _) = retryingInterrupts { poll(&entries, 2, -1) }
        if result < 0 || entries[0].revents & Int16(POLLNVAL | POLLERR) != 0 { return .failed }
        if entries[1].revents != 0 { return .wake }
        return entries[0].revents & Int16(POLLIN) == 0 && entries[0].revents & Int16(POLLHUP) != 0 ? .hungUp : .readable
    }

    /// Whether a failed accept should be tried again at once (a signal, a connection reset while queued);
    /// out of descriptors or memory it waits 10 ms first, so that an accept loop does not spin.
    package static func shouldRetryAccept(_ code: Int32) -> Bool {
        switch code {
        case EINTR, ECONNABORTED: return true
        case EMFILE, ENFILE, ENOBUFS, ENOMEM: usleep(10_000); return false
        default: return false
        }
    }

    package static func makeSockAddr(_ address: SocketAddress) -> (sockaddr_storage, socklen_t) {
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
        return addresses(of: list) { ($0.ai_addr, Int($0.ai_addrlen), $0.ai_next) }
    }

    /// The interfaces, with their flags and addresses. The corresponding C function is `getifaddrs`.
    static func interfaces() throws(PortReuseError) -> [NetworkInterface] {
        var list: UnsafeMutablePointer<ifaddrs>?
        guard getifaddrs(&list) == 0 else { throw PortReuseError(.interfaces, errno: Errno(rawValue: errno)) }
        defer { freeifaddrs(list) }
        var found: [NetworkInterface] = []
        var entry = list
        while let current = entry {
            entry = current.pointee.ifa_next
            let name = String(cString: current.pointee.ifa_name)
            let flags = UInt32(current.pointee.ifa_flags)
            if !found.contains(where: { $0.name == name }) {
                let index = if_nametoindex(name)
                guard index != 0 else { continue }
                found.append(NetworkInterface(
                    name: name, index: index, isUp: flags & UInt32(interfaceUp) != 0, isLoopback: flags & UInt32(interfaceLoopback) != 0,
                    supportsMulticast: flags & UInt32(interfaceMulticast) != 0, supportsBroadcast: flags & UInt32(interfaceBroadcast) != 0))
            }
            let position = found.firstIndex { $0.name == name }!
            if let address = socketAddress(current.pointee.ifa_addr) {
                found[position].addresses.append(address.ip)
                // The kernel routes the subnet's last address as broadcast whatever `brd` says (and many setups, such
                // as `ip addr add 10.0.0.1/24`, set none), so it is computed from the netmask.
                if case .v4(let raw) = address.ip.storage, flags & UInt32(interfaceBroadcast) != 0,
                    case .v4(let mask)? = socketAddress(current.pointee.ifa_netmask)?.ip.storage,
                    UInt32(bigEndian: mask).nonzeroBitCount < 31
                {
                    let broadcast = IPAddress(storage: .v4(raw | ~mask))
                    if !found[position].broadcastAddresses.contains(broadcast) { found[position].broadcastAddresses.append(broadcast) }
                }
            }
        }
        return found
    }

    /// An AF_INET or AF_INET6 address that the system points to; `nil` for any other family or none.
    private static func socketAddress(_ pointer: UnsafeMutablePointer<sockaddr>?) -> SocketAddress? {
        guard let pointer else { return nil }
        let family = Int32(pointer.pointee.sa_family)
        let length = family == AF_INET ? MemoryLayout<sockaddr_in>.size : family == AF_INET6 ? MemoryLayout<sockaddr_in6>.size : 0
        guard length > 0 else { return nil }
        var storage = sockaddr_storage()
        withUnsafeMutableBytes(of: &storage) { $0.copyMemory(from: UnsafeRawBufferPointer(start: pointer, count: length)) }
        return readSockAddr(storage)
    }

    /// The option that joins (or leaves) `group` on `interface`: `IP_ADD_MEMBERSHIP`/`IP_DROP_MEMBERSHIP` with
    /// the interface's IPv4 address for IPv4, `IPV6_JOIN_GROUP`/`IPV6_LEAVE_GROUP` with its index for IPv6.
    static func membership(_ group: IPAddress, on interface: NetworkInterface, join: Bool) -> RawOption? {
        switch group.storage {
        case .v4(let raw):
            return ipv4Membership(group: raw, on: interface, join: join)
        case .v6:
            var request = ipv6_mreq()
            withUnsafeMutableBytes(of: &request.ipv6mr_multiaddr) { $0.copyBytes(from: group.bytes) }
            request.ipv6mr_interface = interface.index
            return RawOption(
                level: Int32(IPPROTO_IPV6), name: join ? ipv6JoinGroup : ipv6LeaveGroup,
                label: join ? "IPV6_JOIN_GROUP" : "IPV6_LEAVE_GROUP", value: request)
        }
    }

    /// `IP_MULTICAST_TTL` or `IPV6_MULTICAST_HOPS`: how many routers a multicast datagram may cross.
    static func multicastHops(_ family: AddressFamily, _ hops: UInt8) -> RawOption {
        family == .ipv4
            ? RawOption(level: Int32(IPPROTO_IP), name: IP_MULTICAST_TTL, label: "IP_MULTICAST_TTL", value: ipv4MulticastByte(hops))
            : RawOption(level: Int32(IPPROTO_IPV6), name: IPV6_MULTICAST_HOPS, label: "IPV6_MULTICAST_HOPS", value: Int32(hops))
    }

    /// `IP_MULTICAST_LOOP` or `IPV6_MULTICAST_LOOP`: whether this host's own receivers get what it sends.
    static func multicastLoopback(_ family: AddressFamily, _ on: Bool) -> RawOption {
        family == .ipv4
            ? RawOption(level: Int32(IPPROTO_IP), name: IP_MULTICAST_LOOP, label: "IP_MULTICAST_LOOP", value: ipv4MulticastByte(on ? 1 : 0))
            : RawOption(level: Int32(IPPROTO_IPV6), name: IPV6_MULTICAST_LOOP, label: "IPV6_MULTICAST_LOOP", value: UInt32(on ? 1 : 0))
    }

    /// `IP_MULTICAST_IF` (the interface's IPv4 address) or `IPV6_MULTICAST_IF` (its index): where multicast
    /// datagrams leave. `nil` for an IPv4 socket when the interface has no IPv4 address.
    static func multicastInterface(_ family: AddressFamily, _ interface: NetworkInterface) -> RawOption? {
        switch family {
        case .ipv4:
            guard case .v4(let raw)? = interface.address(.ipv4)?.storage else { return nil }
            return RawOption(level: Int32(IPPROTO_IP), name: IP_MULTICAST_IF, label: "IP_MULTICAST_IF", value: in_addr(s_addr: raw))
        case .ipv6:
            return RawOption(level: Int32(IPPROTO_IPV6), name: IPV6_MULTICAST_IF, label: "IPV6_MULTICAST_IF", value: interface.index)
        }
    }

    /// `SO_BROADCAST`: lets the socket send to a broadcast address.
    static func broadcast(_ on: Bool) -> RawOption {
        RawOption(level: SOL_SOCKET, name: SO_BROADCAST, label: "SO_BROADCAST", value: Int32(on ? 1 : 0))
    }

    /// The effective user id of this process.
    static func effectiveUserID() -> UInt32 { geteuid() }

    /// Sends one datagram to a unix datagram socket named by a path, or by `@name` for Linux's abstract
    /// namespace (how `NOTIFY_SOCKET` names it). Returns 0, or the error code.
    static func sendUnixDatagram(_ bytes: [UInt8], to path: String) -> Int32 {
        guard let (named, length) = unixAddress(path) else { return ENAMETOOLONG }
        var address = named
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

    /// The address of a unix socket named by a path, or by `@name` in Linux's abstract namespace; `nil` when
    /// the name is empty or longer than `sun_path` holds.
    package static func unixAddress(_ path: String) -> (sockaddr_un, socklen_t)? {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        var pathBytes = Array(path.utf8)
        if pathBytes.first == UInt8(ascii: "@") { pathBytes[0] = 0 }
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        guard !pathBytes.isEmpty, pathBytes.count < capacity else { return nil }
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: pathBytes) }
        return (address, socklen_t(MemoryLayout<sockaddr_un>.offset(of: \.sun_path)! + pathBytes.count + (pathBytes[0] == 0 ? 0 : 1)))
    }

    /// The name a unix socket is bound to: its path, or `@name` for an abstract one; nil for another kind of
    /// socket, or an unnamed one. The corresponding C function is `getsockname`.
    package static func unixSocketName(_ descriptor: Descriptor) -> String? {
        var address = sockaddr_un()
        var length = socklen_t(MemoryLayout<sockaddr_un>.size)
        let result = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { cGetsockname(descriptor, $0, &length) } }
        let offset = MemoryLayout<sockaddr_un>.offset(of: \.sun_path)!
        guard result == 0, address.sun_family == sa_family_t(AF_UNIX), Int(length) > offset else { return nil }
        var bytes = withUnsafeBytes(of: address.sun_path) { Array($0.prefix(Int(length) - offset)) }
        if bytes.first == 0 {
            bytes[0] = UInt8(ascii: "@")  // abstract: the whole length is the name
        } else if let end = bytes.firstIndex(of: 0) {
            bytes = Array(bytes[..<end])
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// Whether `descriptor` is a listening stream socket (SO_ACCEPTCONN, SO_TYPE).
    package static func isListeningStream(_ descriptor: Descriptor) -> Bool {
        var value: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        guard getsockopt(descriptor, SOL_SOCKET, SO_ACCEPTCONN, &value, &length) == 0, value != 0 else { return false }
        length = socklen_t(MemoryLayout<Int32>.size)
        return getsockopt(descriptor, SOL_SOCKET, SO_TYPE, &value, &length) == 0 && value == Int32(socketType(.tcp))
    }

    /// A non-blocking, close-on-exec unix datagram socket bound to `path` (a stale file there is replaced):
    /// where a supervisor receives sd_notify messages. The corresponding C functions are `socket` and `bind`.
    package static func unixDatagramReceiver(at path: String) throws(SystemError) -> Descriptor {
        guard let (named, length) = unixAddress(path) else { throw SystemError("bind \(path)", .fileNameTooLong) }
        var address = named
        if !path.hasPrefix("@") { unlink(path) }
        let descriptor = try systemCall("socket") { unixDatagramSocket() }
        do {
            _ = try systemCall("bind \(path)") {
                withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { cBind(descriptor, $0, length) } }
            }
        } catch {
            _ = cClose(descriptor)
            throw error
        }
        return descriptor
    }

    /// Marks a descriptor close-on-exec. The corresponding C function is `fcntl(F_SETFD)`.
    static func setCloseOnExec(_ descriptor: Descriptor) -> Int32 { Files.setCloseOnExec(PortReuseSystem.Descriptor(descriptor)) ? 0 : -1 }

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
@inline(__always) private func cClose(_ s: Int32) -> Int32 { close(s) }
@inline(__always) private func cBind(_ s: Int32, _ a: UnsafePointer<sockaddr>, _ l: socklen_t) -> Int32 { bind(s, a, l) }
@inline(__always) private func cConnect(_ s: Int32, _ a: UnsafePointer<sockaddr>, _ l: socklen_t) -> Int32 { connect(s, a, l) }
@inline(__always) private func cListen(_ s: Int32, _ backlog: Int32) -> Int32 { listen(s, backlog) }
@inline(__always) private func cGetsockname(_ s: Int32, _ a: UnsafeMutablePointer<sockaddr>, _ l: UnsafeMutablePointer<socklen_t>) -> Int32 { getsockname(s, a, l) }
@inline(__always) private func cGetpeername(_ s: Int32, _ a: UnsafeMutablePointer<sockaddr>, _ l: UnsafeMutablePointer<socklen_t>) -> Int32 { getpeername(s, a, l) }
@inline(__always) private func cSetsockopt(_ s: Int32, _ level: Int32, _ name: Int32, _ value: UnsafeRawPointer, _ length: socklen_t) -> Int32 {
    setsockopt(s, level, name, value, length)
}
@inline(__always) private func cGetsockopt(_ s: Int32, _ level: Int32, _ name: Int32, _ value: UnsafeMutableRawPointer, _ length: UnsafeMutablePointer<socklen_t>) -> Int32 {
    getsockopt(s, level, name, value, length)
}
@inline(__always) private func cRecv(_ s: Int32, _ buffer: UnsafeMutableRawPointer?, _ count: Int, _ flags: Int32) -> Int { recv(s, buffer, count, flags) }
@inline(__always) private func cRecvfrom(
    _ s: Int32, _ buffer: UnsafeMutableRawPointer?, _ count: Int, _ flags: Int32, _ a: UnsafeMutablePointer<sockaddr>, _ l: UnsafeMutablePointer<socklen_t>
) -> Int {
    recvfrom(s, buffer, count, flags, a, l)
}

#endif
