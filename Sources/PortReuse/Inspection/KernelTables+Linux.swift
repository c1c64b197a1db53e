#if os(Linux)
import Glibc
import PortReuseSystem

/// Linux: the kernel's socket tables (netlink sock_diag, as `ss` reads them; /proc/net where sock_diag is
/// refused), the processes that hold each socket (/proc/PID/fd) and their sockets' options (a `pidfd_getfd`
/// duplicate, closed at once).
package enum KernelTables {
    static func holders(
        transport: Transport, port: UInt16?, states: Set<PortHolder.State>? = nil, family: AddressFamily? = nil, withProcesses: Bool,
        withOptions: Bool, processStates: Set<PortHolder.State>? = nil
    ) -> [PortHolder] {
        var found = SocketDiagnostics.holders(transport: transport, port: port, states: states, family: family)
            ?? procNetHolders(transport: transport, port: port, states: states, family: family)
        var users: [UInt32: String?] = [:]
        for index in found.indices {
            guard let uid = found[index].uid else { continue }
            if users[uid] == nil { users[uid] = userName(uid) }
            found[index].user = users[uid] ?? nil
        }
        if withProcesses { attachProcesses(&found, states: processStates, withOptions: withOptions) }
        return found
    }

    /// The sockets from the text tables in /proc/net: what `ss` also falls back to where sock_diag is missing
    /// (a kernel without the inet_diag or udp_diag module). They list no TCP socket that is bound but not listening.
    static func procNetHolders(transport: Transport, port: UInt16?, states: Set<PortHolder.State>?, family: AddressFamily? = nil) -> [PortHolder] {
        var found: [PortHolder] = []
        let name = transport == .tcp ? "/proc/net/tcp" : "/proc/net/udp"
        let files = family.map { [$0 == .ipv4 ? name : name + "6"] } ?? [name, name + "6"]
        for file in files {
            guard let text = Files.read(file) else { continue }
            parseTable(text, transport: transport, port: port, states: states, into: &found)
        }
        return found
    }

    // MARK: /proc/net/{tcp,udp}[6]

    /// One line: `sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...`, addresses in hex as the
    /// kernel keeps them in memory (so the parsed words are already in network byte order).
    static func parseTable(
        _ text: [UInt8], transport: Transport, port wanted: UInt16?, states: Set<PortHolder.State>?, into found: inout [PortHolder]
    ) {
        var lineStart = text.firstIndex(of: UInt8(ascii: "\n")).map { $0 + 1 } ?? text.count  // skip the header
        var fields: [Range<Int>] = []
        fields.reserveCapacity(12)
        while lineStart < text.count {
            let lineEnd = text[lineStart...].firstIndex(of: UInt8(ascii: "\n")) ?? text.count
            defer { lineStart = lineEnd + 1 }
            fields.removeAll(keepingCapacity: true)
            var index = lineStart
            while index < lineEnd && fields.count < 10 {
                while index < lineEnd && text[index] == UInt8(ascii: " ") { index += 1 }
                let start = index
                while index < lineEnd && text[index] != UInt8(ascii: " ") { index += 1 }
                if start < index { fields.append(start..<index) }
            }
            guard fields.count >= 10,
                let local = parseEndpoint(text[fields[1]]),
                wanted == nil || local.port == wanted,
                let stateCode = parseHex(text[fields[3]]),
                let state = state(stateCode, transport: transport),
                states == nil || states!.contains(state),
                let remote = parseEndpoint(text[fields[2]]),
                let uid = parseDecimal(text[fields[7]]),
                let inode = parseDecimal(text[fields[9]])
            else { continue }
            let queues = text[fields[4]]
            let colon = queues.firstIndex(of: UInt8(ascii: ":")) ?? queues.endIndex
            let receiveQueue = colon < queues.endIndex ? parseHex(queues[(colon + 1)...]) ?? 0 : 0
            found.append(PortHolder(
                transport: transport, localAddress: local,
                remoteAddress: remote.port == 0 && remote.ip.isUnspecified ? nil : remote,
                state: state, uid: state == .timeWait ? nil : UInt32(uid), user: nil, inode: inode,
                receiveQueue: Int(receiveQueue), processes: [], options: nil))
        }
    }

    static func state(_ code: UInt64, transport: Transport) -> PortHolder.State? {
        switch code {
        case 0x01: .established
        case 0x02: .synSent
        case 0x03: .synReceived
        case 0x04: .finWait1
        case 0x05: .finWait2
        case 0x06: .timeWait
        case 0x07: .unconnected
        case 0x08: .closeWait
        case 0x09: .lastAck
        case 0x0A: .listen
        case 0x0B: .closing
        default: nil
        }
    }

    /// `0100007F:1F90` (IPv4) or 32 hex digits then `:PORT` (IPv6): each 8-digit word is a 32-bit value in
    /// host order whose memory bytes are the address bytes.
    static func parseEndpoint(_ field: ArraySlice<UInt8>) -> SocketAddress? {
        guard let colon = field.firstIndex(of: UInt8(ascii: ":")),
            let port = parseHex(field[(colon + 1)...]), port <= 0xFFFF
        else { return nil }
        let hex = field[..<colon]
        switch hex.count {
        case 8:
            guard let word = parseHex(hex) else { return nil }
            return SocketAddress(ip: IPAddress(storage: .v4(UInt32(word))), port: UInt16(port))
        case 32:
            var words: [UInt32] = []
            var start = hex.startIndex
            while start < hex.endIndex {
                guard let word = parseHex(hex[start..<(start + 8)]) else { return nil }
                words.append(UInt32(word))
                start += 8
            }
            let bytes = words.withUnsafeBytes { Array($0) }
            return SocketAddress(ip: IPAddress(ipv6: bytes), port: UInt16(port))
        default:
            return nil
        }
    }

    static func parseHex(_ digits: ArraySlice<UInt8>) -> UInt64? {
        guard !digits.isEmpty, digits.count <= 16 else { return nil }
        var value: UInt64 = 0
        for digit in digits {
            let nibble: UInt8
            switch digit {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): nibble = digit - UInt8(ascii: "0")
            case UInt8(ascii: "A")...UInt8(ascii: "F"): nibble = digit - UInt8(ascii: "A") + 10
            case UInt8(ascii: "a")...UInt8(ascii: "f"): nibble = digit - UInt8(ascii: "a") + 10
            default: return nil
            }
            value = value << 4 | UInt64(nibble)
        }
        return value
    }

    static func parseDecimal<Digits: Collection<UInt8>>(_ digits: Digits) -> UInt64? {
        guard !digits.isEmpty, digits.count <= 19 else { return nil }
        var value: UInt64 = 0
        for digit in digits {
            guard digit >= UInt8(ascii: "0"), digit <= UInt8(ascii: "9") else { return nil }
            value = value * 10 + UInt64(digit - UInt8(ascii: "0"))
        }
        return value
    }

    // MARK: processes

    /// Fills in the processes of the sockets in `states` (all when `nil`) by reading the links in /proc/PID/fd
    /// (`socket:[INODE]`), and the options of each such socket through its first process.
    /// Other users' processes are unreadable without root; their sockets keep an empty list.
    static func attachProcesses(_ found: inout [PortHolder], states: Set<PortHolder.State>? = nil, withOptions: Bool) {
        let wanted = Set(found.filter { $0.inode != 0 && (states?.contains($0.state) ?? true) }.map(\.inode))
        let (byInode, unreadable) = processes(holding: wanted)
        for index in found.indices where wanted.contains(found[index].inode) {
            found[index].processes += byInode[found[index].inode] ?? []
            if unreadable { found[index].processesMayBeMissing = true }
            if withOptions, found[index].options == nil, let first = found[index].processes.first {
                (found[index].options, found[index].dualStack) = readOptions(pid: first.pid, descriptor: first.descriptor)
            }
        }
    }

    /// The processes that hold each socket of `inodes` (any socket: TCP, UDP, Unix), by a pass over /proc/PID/fd;
    /// `unreadable` when some process's descriptors were hidden from us (another user's, without root).
    ///
    /// This reads every descriptor of every process, so it avoids allocating per descriptor, and it leaves a
    /// process's folder early once that process has shown every wanted socket.
    package static func processes(holding inodes: Set<UInt64>) -> (byInode: [UInt64: [PortHolder.Process]], unreadable: Bool) {
        var byInode: [UInt64: [PortHolder.Process]] = [:]
        guard !inodes.isEmpty, let proc = opendir("/proc") else { return ([:], false) }
        defer { closedir(proc) }
        let procFD = dirfd(proc)
        var users: [UInt32: String?] = [:]
        var seen = Set<UInt64>()
        var unreadable = false
        let link = UnsafeMutablePointer<CChar>.allocate(capacity: 64)
        defer { link.deallocate() }
        while let entry = readdir(proc) {
            guard let pid = decimalName(entry), pid > 0, pid <= Int32.max else { continue }
            let fdFolder = openat(procFD, "\(pid)/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
            guard fdFolder >= 0 else {
                if errno == EACCES || errno == EPERM { unreadable = true }  // not gone: hidden from us
                continue
            }
            guard let fds = fdopendir(fdFolder) else { close(fdFolder); continue }
            defer { closedir(fds) }
            var info: (name: String, commandLine: [String], uid: UInt32?)?
            seen.removeAll(keepingCapacity: true)
            while let fdEntry = readdir(fds) {
                guard let fd = decimalName(fdEntry) else { continue }
                let length = withUnsafePointer(to: &fdEntry.pointee.d_name) { name in
                    name.withMemoryRebound(to: CChar.self, capacity: 256) { readlinkat(dirfd(fds), $0, link, 64) }
                }
                // "socket:[12345]"
                guard length > 9, link[0] == CChar(UInt8(ascii: "s")), link[6] == CChar(UInt8(ascii: ":")),
                    let inode = link.withMemoryRebound(to: UInt8.self, capacity: length, { parseDecimal(UnsafeBufferPointer(start: $0 + 8, count: length - 9)) }),
                    inodes.contains(inode)
                else { continue }
                if info == nil { info = processInfo(pid: Int32(pid)) }
                let user: String? = info!.uid.flatMap { uid in
                    if users[uid] == nil { users[uid] = userName(uid) }
                    return users[uid] ?? nil
                }
                byInode[inode, default: []].append(PortHolder.Process(
                    pid: Int32(pid), descriptor: Int32(fd), name: info!.name, commandLine: info!.commandLine, uid: info!.uid, user: user))
                seen.insert(inode)
                if seen.count == inodes.count { break }
            }
        }
        return (byInode, unreadable)
    }

    /// The number a /proc entry is named by (a pid, a descriptor), or `nil` for any other name.
    private static func decimalName(_ entry: UnsafeMutablePointer<dirent>) -> Int? {
        withUnsafeBytes(of: &entry.pointee.d_name) { raw in
            var value = 0
            var index = 0
            while index < raw.count && index < 10 && raw[index] != 0 {
                let digit = raw[index]
                guard digit >= UInt8(ascii: "0"), digit <= UInt8(ascii: "9") else { return nil }
                value = value * 10 + Int(digit - UInt8(ascii: "0"))
                index += 1
            }
            return index == 0 || (index < raw.count && raw[index] != 0) ? nil : value
        }
    }

    /// The short name, the command line and the effective uid of a process, from /proc/PID/{comm,cmdline,status}.
    package static func processInfo(pid: Int32) -> (name: String, commandLine: [String], uid: UInt32?) {
        var name = Files.read("/proc/\(pid)/comm").map { String(decoding: $0, as: UTF8.self) } ?? "?"
        if name.hasSuffix("\n") { name.removeLast() }
        let raw = Files.read("/proc/\(pid)/cmdline") ?? []
        var commandLine = raw.split(separator: 0, omittingEmptySubsequences: false).map { String(decoding: $0, as: UTF8.self) }
        // setproctitle (nginx, postgres) pads the rewritten title with NULs, as empty arguments: trimmed, as ps does.
        while commandLine.last == "" { commandLine.removeLast() }
        // comm is cut at 15 bytes; the program's file name is whole (unless it rewrote its argv, as nginx does).
        if let program = commandLine.first?.split(separator: "/").last, program.hasPrefix(name) { name = String(program) }
        // "Uid:\treal\teffective\tsaved\tfs"
        var uid: UInt32?
        if let status = Files.read("/proc/\(pid)/status"), let line = status.split(separator: UInt8(ascii: "\n")).first(where: { $0.starts(with: Array("Uid:".utf8)) }) {
            let numbers = line.dropFirst(4).split { $0 == UInt8(ascii: "\t") || $0 == UInt8(ascii: " ") }
            if numbers.count >= 2, let effective = parseDecimal(numbers[1]), effective <= UInt64(UInt32.max) { uid = UInt32(effective) }
        }
        return (name, commandLine, uid)
    }

    // MARK: options of another process's socket

    /// Reads SO_REUSEADDR and SO_REUSEPORT, and for IPv6 IPV6_V6ONLY, from another process's socket through a
    /// duplicate of it; `nil`s when not allowed (no ptrace rights) or not supported (Linux before 5.6).
    static func readOptions(pid: Int32, descriptor: Int32) -> (ReuseOptions?, dualStack: Bool?) {
        guard let duplicate = try? Processes.duplicate(Descriptor(descriptor), ofProcess: pid) else { return (nil, nil) }
        let handle = SocketHandle(adopting: duplicate.rawValue)
        let options = try? handle.reuseOptions()
        let dualStack = (try? handle.localAddress())?.family == .ipv6 ? try? handle.isDualStack() : nil
        return (options, dualStack)
    }

    // MARK: helpers

    /// The first port an unprivileged process may bind (net.ipv4.ip_unprivileged_port_start).
    static func firstUnprivilegedPort() -> Int {
        guard let text = Files.read("/proc/sys/net/ipv4/ip_unprivileged_port_start") else { return 1024 }
        return Int(String(decoding: text, as: UTF8.self).filter(\.isNumber)) ?? 1024
    }

    static func userName(_ uid: UInt32) -> String? { Processes.userName(uid) }
}

#else

/// Other systems: PortReuse has no socket tables to read there; diagnoses say less.
enum KernelTables {
    static func holders(
        transport: Transport, port: UInt16?, states: Set<PortHolder.State>? = nil, family: AddressFamily? = nil, withProcesses: Bool,
        withOptions: Bool, processStates: Set<PortHolder.State>? = nil
    ) -> [PortHolder] { [] }

    static func firstUnprivilegedPort() -> Int { OperatingSystem.current == .windows ? 0 : 1024 }
}
#endif
