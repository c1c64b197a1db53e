#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import PortReuseSystem

#if canImport(Glibc) || canImport(Darwin)

/// A Unix-domain socket's name, a file or an abstract name (`@name`, Linux), and who holds it: what
/// `portreuse who unix:PATH` reports.
///
/// It is where the other "address already in use" lives: a server that ended without removing its socket file
/// leaves it behind, and every restart's `bind` fails until someone deletes it, while deleting a live one cuts
/// a running server off. The rule a server follows: a **stale** file (nothing accepts behind it) may be
/// replaced, a **live** one (something accepts) must not.
public struct UnixSocketFile: Sendable {
    /// What is at the name.
    public enum State: String, Sendable {
        /// Nothing: no file (or no socket with that abstract name).
        case free
        /// A socket file that nothing accepts behind: a server that ended left it.
        case stale
        /// Something accepts connections on it (or, for a datagram socket, receives).
        case live
        /// A file that is not a socket: no server may replace it.
        case notASocket = "not-a-socket"
    }

    /// One socket bound to the name.
    public struct Socket: Sendable {
        /// The kernel's inode number of the socket (not of the file).
        public var inode: UInt64
        /// `stream`, `dgram` or `seqpacket`.
        public var type: String
        /// Whether it listens (a stream or seqpacket socket).
        public var listening: Bool
        /// The processes that hold it.
        public var processes: [PortHolder.Process]
    }

    /// The name as given: a path, or `@name` for an abstract socket.
    public var path: String
    public var state: State
    /// The sockets bound to the name (from the kernel's table; Linux).
    public var sockets: [Socket]
    /// Whether some processes' descriptors were hidden (another user's, without root), so a holder may be missing.
    public var processesMayBeMissing: Bool
    /// What the state means, and what to do, in a sentence.
    public var explanation: String

    /// Whether the name is abstract (`@name`): no file, gone with its last socket.
    public var isAbstract: Bool { path.hasPrefix("@") }

    /// Looks at the name: the file, a connection attempt (which a live server accepts and this closes at once
    /// without sending anything), and the kernel's table of Unix sockets with the processes that hold them.
    public static func inspect(_ path: String) -> UnixSocketFile {
        let absolute = path.hasPrefix("/") || path.hasPrefix("@") ? path : currentFolder() + "/" + path
        let (sockets, hidden) = bound(to: [path, absolute])
        var report = UnixSocketFile(path: path, state: .free, sockets: sockets, processesMayBeMissing: hidden, explanation: "")
        if report.isAbstract {
            report.state = sockets.isEmpty ? .free : .live
            report.explanation = sockets.isEmpty ? "no socket has this abstract name" : "a socket is bound to this abstract name"
            return report
        }
        var info = stat()
        guard lstat(path, &info) == 0 else {
            report.explanation = errno == ENOENT ? "no such file" : "cannot look at it: \(Files.errorText())"
            return report
        }
        guard info.st_mode & S_IFMT == S_IFSOCK else {
            report.state = .notASocket
            report.explanation = "this file is not a socket: a server must not replace it"
            return report
        }
        switch accepts(path) {
        case true?:
            report.state = .live
            report.explanation = "something accepts connections on it: a new server must not replace it"
        case false?:
            report.state = .stale
            report.explanation = "a socket file that nothing accepts behind (its server ended without removing it): "
                + "a new server may replace it, and rm \(path) is safe"
        case nil:
            // No permission to connect: the kernel's table says whether something listens there.
            report.state = sockets.contains { $0.listening || $0.type == "dgram" } ? .live : .stale
            report.explanation = "no permission to connect to it; the kernel's table shows "
                + (report.state == .live ? "a socket bound to it" : "no socket bound to it")
        }
        return report
    }

    /// Whether something accepts a connection on the socket file at `path` (a stream, seqpacket or datagram
    /// socket), or `nil` when connecting is not allowed.
    static func accepts(_ path: String) -> Bool? {
        guard let (unix, length) = Sys.unixAddress(path) else { return false }
        var address = unix
        for type in [SOCK_STREAM, SOCK_SEQPACKET, SOCK_DGRAM] {
            #if canImport(Glibc)
            let fd = socket(AF_UNIX, Int32(type.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
            #else
            let fd = socket(AF_UNIX, type, 0)
            #endif
            guard fd >= 0 else { continue }
            defer { close(fd) }
            let result = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, length) }
            }
            if result == 0 { return true }
            switch errno {
            case EAGAIN, EINPROGRESS: return true  // a listener whose queue is full: live, and busy
            case EPROTOTYPE: continue  // another socket type is bound there
            case EACCES, EPERM: return nil
            default: return false  // ECONNREFUSED: nothing accepts behind the file
            }
        }
        return false
    }

    private static func currentFolder() -> String {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        return getcwd(&buffer, buffer.count).map { String(cString: $0) } ?? "."
    }

    #if os(Linux)
    /// The sockets bound to one of `names`, from /proc/net/unix (`Num RefCount Protocol Flags Type St Inode Path`):
    /// listening ones, and unconnected datagram ones; not the connections a listener accepted, which show its path too.
    static func bound(to names: [String]) -> ([Socket], hidden: Bool) {
        guard let table = Files.read("/proc/net/unix") else { return ([], false) }
        var found: [Socket] = []
        for line in String(decoding: table, as: UTF8.self).split(separator: "\n").dropFirst() {
            let fields = line.split(separator: " ", maxSplits: 7, omittingEmptySubsequences: true)
            guard fields.count == 8, names.contains(String(fields[7])),
                let flags = UInt32(fields[3], radix: 16), let type = UInt32(fields[4], radix: 16), let state = UInt32(fields[5], radix: 16),
                let inode = UInt64(fields[6])
            else { continue }
            let listening = flags & 0x10000 != 0  // __SO_ACCEPTCON
            let name = type == 1 ? "stream" : type == 2 ? "dgram" : type == 5 ? "seqpacket" : "type \(type)"
            guard listening || (type == 2 && state == 1) else { continue }  // 1: SS_UNCONNECTED
            found.append(Socket(inode: inode, type: name, listening: listening, processes: []))
        }
        let (byInode, hidden) = KernelTables.processes(holding: Set(found.map(\.inode)))
        for index in found.indices { found[index].processes = byInode[found[index].inode] ?? [] }
        return (found, hidden && !found.isEmpty)
    }
    #else
    static func bound(to names: [String]) -> ([Socket], hidden: Bool) { ([], false) }
    #endif
}
#endif
