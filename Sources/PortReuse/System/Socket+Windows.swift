#if os(Windows)
import WinSDK

/// A socket as the operating system names it: a Winsock SOCKET on Windows.
public typealias SocketDescriptor = SOCKET

/// Windows (Winsock 2): the socket calls and constants under the names every platform file gives them.
/// Written for Windows and not compiled by the Linux CI; its policy table is tested as data.
package enum Sys {
    package typealias Descriptor = SocketDescriptor
    static let invalidDescriptor: Descriptor = INVALID_SOCKET
    static let operatingSystem = OperatingSystem.windows
    package static let defaultBacklog: Int32 = SOMAXCONN

    /// Winsock needs WSAStartup once per process before any socket call.
    private static let started: Bool = {
        var data = WSADATA()
        return WSAStartup(0x0202, &data) == 0
    }()

    package static func lastError() -> Int32 { WSAGetLastError() }
    package static func family(_ family: AddressFamily) -> Int32 { family == .ipv4 ? AF_INET : AF_INET6 }
    static func socketType(_ transport: Transport) -> Int32 { transport == .tcp ? SOCK_STREAM : SOCK_DGRAM }

    static let inProgress = WSAEWOULDBLOCK
    static let interrupted = WSAEINTR
    static let solSocket = SOL_SOCKET
    static let socketError = SO_ERROR
    static let socketTypeOption = SO_TYPE
    static let acceptConnections = SO_ACCEPTCONN
    package static let ipv6Level = Int32(IPPROTO_IPV6.rawValue)
    package static let ipv6Only = IPV6_V6ONLY

    static func constant(for option: ReuseOptions) -> (level: Int32, name: Int32)? {
        switch option {
        case .reuseAddress: (SOL_SOCKET, SO_REUSEADDR)
        case .exclusiveAddressUse: (SOL_SOCKET, ~SO_REUSEADDR)  // SO_EXCLUSIVEADDRUSE
        default: nil
        }
    }

    /// A new socket that child processes do not inherit.
    static func socket(_ family: AddressFamily, _ transport: Transport) -> Descriptor {
        guard started else { return INVALID_SOCKET }
        return WSASocketW(Sys.family(family), socketType(transport), 0, nil, 0, DWORD(WSA_FLAG_OVERLAPPED | WSA_FLAG_NO_HANDLE_INHERIT))
    }

    package static func close(_ s: Descriptor) -> Int32 { closesocket(s) }
    static func bind(_ s: Descriptor, _ a: UnsafePointer<sockaddr>, _ l: socklen_t) -> Int32 { WinSDK.bind(s, a, l) }
    static func connect(_ s: Descriptor, _ a: UnsafePointer<sockaddr>, _ l: socklen_t) -> Int32 { WinSDK.connect(s, a, l) }
    package static func listen(_ s: Descriptor, _ backlog: Int32) -> Int32 { WinSDK.listen(s, backlog) }
    static func shutdownWrite(_ s: Descriptor) -> Int32 { WinSDK.shutdown(s, SD_SEND) }

    static func accept(_ s: Descriptor, _ a: UnsafeMutablePointer<sockaddr>, _ l: UnsafeMutablePointer<socklen_t>) -> Descriptor {
        WinSDK.accept(s, a, l)
    }

    static func getsockname(_ s: Descriptor, _ a: UnsafeMutablePointer<sockaddr>, _ l: UnsafeMutablePointer<socklen_t>) -> Int32 {
        WinSDK.getsockname(s, a, l)
    }

    static func getpeername(_ s: Descriptor, _ a: UnsafeMutablePointer<sockaddr>, _ l: UnsafeMutablePointer<socklen_t>) -> Int32 {
        WinSDK.getpeername(s, a, l)
    }

    static func setsockopt(_ s: Descriptor, _ level: Int32, _ name: Int32, _ value: UnsafeRawPointer, _ length: socklen_t) -> Int32 {
        WinSDK.setsockopt(s, level, name, value.assumingMemoryBound(to: CChar.self), length)
    }

    package static func getsockopt(
        _ s: Descriptor, _ level: Int32, _ name: Int32, _ value: UnsafeMutableRawPointer, _ length: UnsafeMutablePointer<socklen_t>
    ) -> Int32 {
        WinSDK.getsockopt(s, level, name, value.assumingMemoryBound(to: CChar.self), length)
    }

    static func send(_ s: Descriptor, _ buffer: UnsafeRawBufferPointer) -> Int {
        Int(WinSDK.send(s, buffer.baseAddress?.assumingMemoryBound(to: CChar.self), Int32(buffer.count), 0))
    }

    static func sendto(_ s: Descriptor, _ buffer: UnsafeRawBufferPointer, _ a: UnsafePointer<sockaddr>, _ l: socklen_t) -> Int {
        Int(WinSDK.sendto(s, buffer.baseAddress?.assumingMemoryBound(to: CChar.self), Int32(buffer.count), 0, a, l))
    }

    static func recv(_ s: Descriptor, _ buffer: UnsafeMutableRawBufferPointer) -> Int {
        Int(WinSDK.recv(s, buffer.baseAddress?.assumingMemoryBound(to: CChar.self), Int32(buffer.count), 0))
    }

    static func recvfrom(
        _ s: Descriptor, _ buffer: UnsafeMutableRawBufferPointer, _ a: UnsafeMutablePointer<sockaddr>, _ l: UnsafeMutablePointer<socklen_t>
    ) -> Int {
        Int(WinSDK.recvfrom(s, buffer.baseAddress?.assumingMemoryBound(to: CChar.self), Int32(buffer.count), 0, a, l))
    }

    // Multicast and broadcast: the same names as in Socket+POSIX.swift. Winsock's option structures are
    // written as tuples of the same layout, which avoids spelling IN_ADDR's unions.

    /// The adapters, with their state and addresses. The corresponding C function is `GetAdaptersAddresses`.
    static func interfaces() throws(PortReuseError) -> [NetworkInterface] {
        var size: ULONG = 16_384
        var buffer: [UInt8] = []
        var status: ULONG = ULONG(ERROR_BUFFER_OVERFLOW)
        for _ in 0..<3 where status == ULONG(ERROR_BUFFER_OVERFLOW) {
            buffer = [UInt8](repeating: 0, count: Int(size))
            status = buffer.withUnsafeMutableBytes {
                GetAdaptersAddresses(ULONG(AF_UNSPEC), ULONG(GAA_FLAG_SKIP_ANYCAST | GAA_FLAG_SKIP_DNS_SERVER), nil,
                    $0.baseAddress!.assumingMemoryBound(to: IP_ADAPTER_ADDRESSES.self), &size)
            }
        }
        guard status == ULONG(ERROR_SUCCESS) else {
            throw PortReuseError(.interfaces, diagnosis: .other("GetAdaptersAddresses failed with error \(status)."))
        }
        var found: [NetworkInterface] = []
        buffer.withUnsafeMutableBytes { bytes in
            var entry: UnsafeMutablePointer<IP_ADAPTER_ADDRESSES>? = bytes.baseAddress!.assumingMemoryBound(to: IP_ADAPTER_ADDRESSES.self)
            while let adapter = entry {
                entry = adapter.pointee.Next
                let name = String(decodingCString: adapter.pointee.FriendlyName, as: UTF16.self)
                let index = adapter.pointee.IfIndex != 0 ? adapter.pointee.IfIndex : adapter.pointee.Ipv6IfIndex
                var interface = NetworkInterface(
                    name: name, index: UInt32(index), isUp: adapter.pointee.OperStatus == IfOperStatusUp,
                    isLoopback: adapter.pointee.IfType == IFTYPE(IF_TYPE_SOFTWARE_LOOPBACK),
                    supportsMulticast: adapter.pointee.Flags & ULONG(IP_ADAPTER_NO_MULTICAST) == 0,
                    supportsBroadcast: adapter.pointee.IfType != IFTYPE(IF_TYPE_SOFTWARE_LOOPBACK))
                var unicast = adapter.pointee.FirstUnicastAddress
                while let address = unicast {
                    unicast = address.pointee.Next
                    guard let pointer = address.pointee.Address.lpSockaddr else { continue }
                    let length = Int(address.pointee.Address.iSockaddrLength)
                    var storage = sockaddr_storage()
                    withUnsafeMutableBytes(of: &storage) { $0.copyMemory(from: UnsafeRawBufferPointer(start: pointer, count: min(length, $0.count))) }
                    guard let ip = readSockAddr(storage)?.ip else { continue }
                    interface.addresses.append(ip)
                    let prefix = Int(address.pointee.OnLinkPrefixLength)
                    if case .v4(let raw) = ip.storage, prefix < 31, interface.supportsBroadcast {
                        let mask = prefix == 0 ? UInt32(0) : UInt32.max << UInt32(32 - prefix)
                        interface.broadcastAddresses.append(IPAddress(storage: .v4(raw | ~mask.bigEndian)))
                    }
                }
                found.append(interface)
            }
        }
        return found
    }

    /// IP_ADD_MEMBERSHIP/IP_DROP_MEMBERSHIP (ip_mreq: the group and the interface's IPv4 address) or
    /// IPV6_ADD_MEMBERSHIP/IPV6_DROP_MEMBERSHIP (ipv6_mreq: the group and the interface index).
    static func membership(_ group: IPAddress, on interface: NetworkInterface, join: Bool) -> RawOption? {
        switch group.storage {
        case .v4(let raw):
            guard case .v4(let local)? = interface.address(.ipv4)?.storage else { return nil }
            return RawOption(
                level: Int32(IPPROTO_IP.rawValue), name: join ? IP_ADD_MEMBERSHIP : IP_DROP_MEMBERSHIP,
                label: join ? "IP_ADD_MEMBERSHIP" : "IP_DROP_MEMBERSHIP", value: (raw, local))
        case .v6(let high, let low, _):
            return RawOption(
                level: Int32(IPPROTO_IPV6.rawValue), name: join ? IPV6_ADD_MEMBERSHIP : IPV6_DROP_MEMBERSHIP,
                label: join ? "IPV6_ADD_MEMBERSHIP" : "IPV6_DROP_MEMBERSHIP", value: (high, low, interface.index))
        }
    }

    static func multicastHops(_ family: AddressFamily, _ hops: UInt8) -> RawOption {
        family == .ipv4
            ? RawOption(level: Int32(IPPROTO_IP.rawValue), name: IP_MULTICAST_TTL, label: "IP_MULTICAST_TTL", value: DWORD(hops))
            : RawOption(level: Int32(IPPROTO_IPV6.rawValue), name: IPV6_MULTICAST_HOPS, label: "IPV6_MULTICAST_HOPS", value: DWORD(hops))
    }

    /// On Windows the loop option applies to the receiving socket.
    static func multicastLoopback(_ family: AddressFamily, _ on: Bool) -> RawOption {
        family == .ipv4
            ? RawOption(level: Int32(IPPROTO_IP.rawValue), name: IP_MULTICAST_LOOP, label: "IP_MULTICAST_LOOP", value: DWORD(on ? 1 : 0))
            : RawOption(level: Int32(IPPROTO_IPV6.rawValue), name: IPV6_MULTICAST_LOOP, label: "IPV6_MULTICAST_LOOP", value: DWORD(on ? 1 : 0))
    }

    static func multicastInterface(_ family: AddressFamily, _ interface: NetworkInterface) -> RawOption? {
        switch family {
        case .ipv4:
            guard case .v4(let raw)? = interface.address(.ipv4)?.storage else { return nil }
            return RawOption(level: Int32(IPPROTO_IP.rawValue), name: IP_MULTICAST_IF, label: "IP_MULTICAST_IF", value: raw)
        case .ipv6:
            return RawOption(level: Int32(IPPROTO_IPV6.rawValue), name: IPV6_MULTICAST_IF, label: "IPV6_MULTICAST_IF", value: DWORD(interface.index))
        }
    }

    static func broadcast(_ on: Bool) -> RawOption {
        RawOption(level: SOL_SOCKET, name: SO_BROADCAST, label: "SO_BROADCAST", value: DWORD(on ? 1 : 0))
    }

    /// Windows delivers only the groups a socket joined: nothing to switch off.
    static func onlyJoinedGroups(_ family: AddressFamily) -> RawOption? { nil }

    static func setBlocking(_ s: Descriptor, _ blocking: Bool) -> Int32 {
        var nonBlocking: u_long = blocking ? 0 : 1
        return ioctlsocket(s, FIONBIO, &nonBlocking)
    }

    static func wait(_ s: Descriptor, forWriting: Bool, milliseconds: Int32) -> Int32 {
        var entry = WSAPOLLFD(fd: s, events: Int16(forWriting ? POLLOUT : POLLIN), revents: 0)
        return WSAPoll(&entry, 1, milliseconds)
    }

    /// sockaddr_in and sockaddr_in6 have the same layout as on Linux; Winsock spells the address unions
    /// differently, so the fields are written by offset.
    package static func makeSockAddr(_ address: SocketAddress) -> (sockaddr_storage, socklen_t) {
        var storage = sockaddr_storage()
        let length: Int
        withUnsafeMutableBytes(of: &storage) { bytes in
            bytes.storeBytes(of: address.port.bigEndian, toByteOffset: 2, as: UInt16.self)
            switch address.ip.storage {
            case .v4(let raw):
                bytes.storeBytes(of: UInt16(AF_INET), toByteOffset: 0, as: UInt16.self)
                bytes.storeBytes(of: raw, toByteOffset: 4, as: UInt32.self)
            case .v6(let high, let low, let scope):
                bytes.storeBytes(of: UInt16(AF_INET6), toByteOffset: 0, as: UInt16.self)
                bytes.storeBytes(of: high, toByteOffset: 8, as: UInt64.self)
                bytes.storeBytes(of: low, toByteOffset: 16, as: UInt64.self)
                bytes.storeBytes(of: scope, toByteOffset: 24, as: UInt32.self)
            }
        }
        length = address.family == .ipv4 ? 16 : 28
        return (storage, socklen_t(length))
    }

    static func readSockAddr(_ storage: sockaddr_storage) -> SocketAddress? {
        withUnsafeBytes(of: storage) { bytes -> SocketAddress? in
            let port = UInt16(bigEndian: bytes.loadUnaligned(fromByteOffset: 2, as: UInt16.self))
            switch Int32(bytes.loadUnaligned(as: UInt16.self)) {
            case AF_INET:
                return SocketAddress(ip: IPAddress(storage: .v4(bytes.loadUnaligned(fromByteOffset: 4, as: UInt32.self))), port: port)
            case AF_INET6:
                let ip = IPAddress(storage: .v6(
                    bytes.loadUnaligned(fromByteOffset: 8, as: UInt64.self),
                    bytes.loadUnaligned(fromByteOffset: 16, as: UInt64.self),
                    scope: bytes.loadUnaligned(fromByteOffset: 24, as: UInt32.self)))
                return SocketAddress(ip: ip, port: port)
            default:
                return nil
            }
        }
    }

    static func resolve(name: String, family: AddressFamily?, transport: Transport) throws(PortReuseError) -> [IPAddress] {
        guard started else { throw PortReuseError(.resolve, address: name, diagnosis: .unknownHost(name: name, reason: "WSAStartup failed")) }
        var hints = ADDRINFOA()
        hints.ai_family = family.map(Sys.family) ?? AF_UNSPEC
        hints.ai_socktype = socketType(transport)
        var list: UnsafeMutablePointer<ADDRINFOA>?
        let status = getaddrinfo(name, nil, &hints, &list)
        guard status == 0 else {
            throw PortReuseError(.resolve, address: name, diagnosis: .unknownHost(name: name, reason: "getaddrinfo error \(status)"))
        }
        defer { freeaddrinfo(list) }
        return addresses(of: list) { ($0.ai_addr, Int($0.ai_addrlen), $0.ai_next) }
    }

    /// Windows has no numeric user ids; port sharing there is not per user anyway.
    static func effectiveUserID() -> UInt32 { 0 }

    /// systemd's protocols do not exist on Windows: readiness notification is unsupported there.
    static func sendUnixDatagram(_ bytes: [UInt8], to path: String) -> Int32 { WSAEOPNOTSUPP }

    /// Winsock sockets are created non-inheritable (WSA_FLAG_NO_HANDLE_INHERIT) already.
    static func setCloseOnExec(_ descriptor: Descriptor) -> Int32 { 0 }

    static func processID() -> Int32 { Int32(bitPattern: GetCurrentProcessId()) }

    static func environment(_ name: String) -> String? { getenv(name).map { String(cString: $0) } }

    static func unsetEnvironment(_ name: String) { _ = _putenv_s(name, "") }

    static func monotonicMicroseconds() -> UInt64 { UInt64(GetTickCount64()) * 1000 }
}
#endif
