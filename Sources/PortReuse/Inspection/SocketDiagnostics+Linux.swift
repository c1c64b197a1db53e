#if os(Linux)
import CPortReuseSystem  // <sys/socket.h> comes through it: SOCK_DGRAM and SOCK_CLOEXEC are seen from its module
import Glibc
import PortReuseSystem

/// Linux's socket tables through netlink sock_diag (`NETLINK_SOCK_DIAG`, `inet_diag_req_v2`), as `ss` reads
/// them: binary records instead of text, and a port filter that runs in the kernel, so that a port on a machine
/// with many sockets costs only its own sockets. It also lists TCP sockets that are bound but not listening
/// (Linux 6.8+), which /proc/net/tcp never shows.
///
/// The layouts are those of <linux/netlink.h> and <linux/inet_diag.h>, which Glibc's module map does not
/// import: netlink headers in host byte order, ports and addresses in network byte order.
enum SocketDiagnostics {
    private static let netlinkSockDiag: Int32 = 4  // NETLINK_SOCK_DIAG
    private static let sockDiagByFamily: UInt16 = 20  // SOCK_DIAG_BY_FAMILY
    private static let request: UInt16 = 0x1  // NLM_F_REQUEST
    private static let dump: UInt16 = 0x300  // NLM_F_ROOT | NLM_F_MATCH
    private static let done: UInt16 = 3  // NLMSG_DONE
    private static let error: UInt16 = 2  // NLMSG_ERROR
    private static let requestBytecode: UInt16 = 1  // INET_DIAG_REQ_BYTECODE
    private static let sourcePortAtLeast: UInt8 = 2  // INET_DIAG_BC_S_GE
    private static let sourcePortAtMost: UInt8 = 3  // INET_DIAG_BC_S_LE
    private static let boundInactive = 13  // TCP_BOUND_INACTIVE: a pseudo-state of sock_diag, Linux 6.8+

    /// The sockets of `transport` in `states` (all when `nil`) on local port `port` (all when `nil`) of `family`
    /// (both when `nil`: one walk of the kernel's table each), or `nil` when the kernel refuses the request (no
    /// sock_diag, or no udp_diag module).
    static func holders(transport: Transport, port: UInt16?, states: Set<PortHolder.State>?, family: AddressFamily? = nil) -> [PortHolder]? {
        let fd = socket(AF_NETLINK, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), netlinkSockDiag)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var mask: UInt32 = 0
        for code in 0...boundInactive {
            guard let state = KernelTables.state(UInt64(code), transport: transport) ?? (code == boundInactive ? .unconnected : nil) else { continue }
            if states?.contains(state) ?? true { mask |= 1 << UInt32(code) }
        }
        var found: [PortHolder] = []
        for family in family.map({ [$0 == .ipv4 ? AF_INET : AF_INET6] }) ?? [AF_INET, AF_INET6] {
            let message = requestMessage(family: UInt8(family), transport: transport, states: mask, port: port)
            let sent = message.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, 0) }
            guard sent == message.count, receive(fd, transport: transport, states: states, into: &found) else { return nil }
        }
        return found
    }

    /// The TCP socket whose local end is `local` and remote end `remote`, found by one request for exactly that
    /// socket (no walk of the table: tens of microseconds); `nil` when there is none or sock_diag is refused.
    static func tcpSocket(local: SocketAddress, remote: SocketAddress) -> PortHolder? {
        guard local.family == remote.family else { return nil }
        let fd = socket(AF_NETLINK, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), netlinkSockDiag)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var body: [UInt8] = [UInt8(local.family == .ipv4 ? AF_INET : AF_INET6), UInt8(IPPROTO_TCP), 0, 0]
        append(UInt32.max, to: &body)  // every state
        append(local.port.bigEndian, to: &body)
        append(remote.port.bigEndian, to: &body)
        for ip in [local.ip, remote.ip] { body += ip.bytes + [UInt8](repeating: 0, count: 16 - ip.bytes.count) }
        append(UInt32(0), to: &body)  // any interface
        append(UInt32.max, to: &body)  // INET_DIAG_NOCOOKIE
        append(UInt32.max, to: &body)
        var message: [UInt8] = []
        append(UInt32(16 + body.count), to: &message)
        append(sockDiagByFamily, to: &message)
        append(request, to: &message)  // one socket: no dump
        append(UInt32(1), to: &message)
        append(UInt32(0), to: &message)
        message += body
        let sent = message.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, 0) }
        guard sent == message.count else { return nil }
        var reply = [UInt8](repeating: 0, count: 1024)
        let count = reply.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        guard count >= 16 + 72 else { return nil }  // NLMSG_ERROR (ENOENT: no such socket) is shorter
        return reply.withUnsafeBytes { bytes in
            bytes.loadUnaligned(fromByteOffset: 4, as: UInt16.self) == sockDiagByFamily
                ? holder(UnsafeRawBufferPointer(rebasing: bytes[16..<(16 + 72)]), transport: .tcp) : nil
        }
    }

    /// nlmsghdr, inet_diag_req_v2 and, for one port, a bytecode attribute: sport >= port, then sport <= port.
    private static func requestMessage(family: UInt8, transport: Transport, states: UInt32, port: UInt16?) -> [UInt8] {
        var body: [UInt8] = [family, UInt8(transport == .tcp ? IPPROTO_TCP : IPPROTO_UDP), 0, 0]
        append(states, to: &body)
        body += [UInt8](repeating: 0, count: 48)  // inet_diag_sockid: no socket in particular
        if let port {
            // Each comparison is 8 bytes (an op and the port in the next op's `no` field). On success jump 8
            // bytes on; on failure past the end (length + 4), which rejects the socket.
            var bytecode: [UInt8] = []
            bytecode += [sourcePortAtLeast, 8]
            append(UInt16(16 + 4), to: &bytecode)
            bytecode += [0, 0]
            append(port, to: &bytecode)
            bytecode += [sourcePortAtMost, 8]
            append(UInt16(8 + 4), to: &bytecode)
            bytecode += [0, 0]
            append(port, to: &bytecode)
            append(UInt16(4 + bytecode.count), to: &body)  // nlattr
            append(requestBytecode, to: &body)
            body += bytecode
        }
        var message: [UInt8] = []
        append(UInt32(16 + body.count), to: &message)
        append(sockDiagByFamily, to: &message)
        append(request | dump, to: &message)
        append(UInt32(1), to: &message)  // sequence
        append(UInt32(0), to: &message)  // port id: the kernel fills it in
        return message + body
    }

    private static func append<T: FixedWidthInteger>(_ value: T, to bytes: inout [UInt8]) {
        withUnsafeBytes(of: value) { bytes += $0 }
    }

    /// Reads replies until NLMSG_DONE; false on NLMSG_ERROR or a failed read.
    private static func receive(_ fd: Int32, transport: Transport, states: Set<PortHolder.State>?, into found: inout [PortHolder]) -> Bool {
        let capacity = 65536
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: capacity, alignment: 8)
        defer { buffer.deallocate() }
        while true {
            guard let count = try? systemCall("recv", { recv(fd, buffer, capacity, 0) }), count > 0 else { return false }
            var offset = 0
            while offset + 16 <= count {
                let length = Int(buffer.loadUnaligned(fromByteOffset: offset, as: UInt32.self))
                let type = buffer.loadUnaligned(fromByteOffset: offset + 4, as: UInt16.self)
                guard length >= 16, offset + length <= count else { return false }
                switch type {
                case done:
                    return true
                case error:
                    return false
                case sockDiagByFamily where length >= 16 + 72:
                    if let holder = holder(UnsafeRawBufferPointer(start: buffer + offset + 16, count: 72), transport: transport),
                        states?.contains(holder.state) ?? true
                    {
                        found.append(holder)
                    }
                default:
                    break
                }
                offset += (length + 3) & ~3
            }
        }
    }

    /// An inet_diag_msg: family, state, timer, retransmits, inet_diag_sockid (sport, dport, src[16], dst[16],
    /// interface, cookie[2]), expires, rqueue, wqueue, uid, inode.
    private static func holder(_ record: UnsafeRawBufferPointer, transport: Transport) -> PortHolder? {
        let code = Int(record[1])
        guard let state = KernelTables.state(UInt64(code), transport: transport) ?? (code == boundInactive ? .unconnected : nil) else { return nil }
        func endpoint(port offset: Int, address: Int) -> SocketAddress? {
            let port = UInt16(bigEndian: record.loadUnaligned(fromByteOffset: offset, as: UInt16.self))
            switch Int32(record[0]) {
            case AF_INET:
                return SocketAddress(ip: IPAddress(storage: .v4(record.loadUnaligned(fromByteOffset: address, as: UInt32.self))), port: port)
            case AF_INET6:
                let high = record.loadUnaligned(fromByteOffset: address, as: UInt64.self)
                let low = record.loadUnaligned(fromByteOffset: address + 8, as: UInt64.self)
                return SocketAddress(ip: IPAddress(storage: .v6(high, low, scope: 0)), port: port)
            default:
                return nil
            }
        }
        guard let local = endpoint(port: 4, address: 8), let remote = endpoint(port: 6, address: 24) else { return nil }
        let receiveQueue = record.loadUnaligned(fromByteOffset: 56, as: UInt32.self)
        let sendQueue = record.loadUnaligned(fromByteOffset: 60, as: UInt32.self)  // a listener's: its backlog
        let uid = record.loadUnaligned(fromByteOffset: 64, as: UInt32.self)
        let inode = record.loadUnaligned(fromByteOffset: 68, as: UInt32.self)
        return PortHolder(
            transport: transport, localAddress: local,
            remoteAddress: remote.port == 0 && remote.ip.isUnspecified ? nil : remote,
            state: state, uid: state == .timeWait ? nil : uid, user: nil, inode: UInt64(inode),
            receiveQueue: Int(receiveQueue), processes: [], options: nil, backlog: state == .listen ? Int(sendQueue) : nil)
    }
}
#endif
