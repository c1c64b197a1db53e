/// A socket bound to a local port, as the kernel reports it, with the processes that hold it open.
///
/// Read from the kernel's socket tables (on Linux netlink sock_diag, or /proc/net/{tcp,tcp6,udp,udp6}) and /proc/PID/fd,
/// never from another tool's output. Where this process may (root, or ptrace rights over the holder), the
/// holder's reuse options are read from a duplicate of its socket (`pidfd_getfd`), which touches no traffic.
public struct PortHolder: Sendable, Hashable {
    /// The state of a socket, with the names `ss` uses.
    public enum State: String, Sendable, Hashable, CaseIterable, CustomStringConvertible {
        case established = "ESTAB", synSent = "SYN-SENT", synReceived = "SYN-RECV", finWait1 = "FIN-WAIT-1"
        case finWait2 = "FIN-WAIT-2", timeWait = "TIME-WAIT", closeWait = "CLOSE-WAIT", lastAck = "LAST-ACK"
        case listen = "LISTEN", closing = "CLOSING"
        /// Bound but neither listening nor connected: a UDP socket, or a TCP socket before `listen`.
        case unconnected = "UNCONN"

        public var description: String { rawValue }

        /// Whether a process holds the socket (every state but TIME-WAIT, which the kernel keeps alone).
        public var isLive: Bool { self != .timeWait }
    }

    /// A process that has the socket open.
    public struct Process: Sendable, Hashable {
        /// The process id.
        public var pid: Int32
        /// The descriptor number of the socket in that process.
        public var descriptor: Int32
        /// The short name (`comm`).
        public var name: String
        /// The command line, one argument an element; empty when unreadable.
        public var commandLine: [String]
        /// The process's effective user id, which may differ from the socket's owner (a server that binds as
        /// root and then runs its workers as another user); `nil` when unreadable.
        public var uid: UInt32?
        /// The name of that user, when the system knows the uid.
        public var user: String?

        /// The command line as one line of text, as a shell would take it back: arguments with spaces or quotes
        /// in single quotes, arguments with control characters (a newline) in `$'…'` with escapes; the short name
        /// in brackets when the command line is unreadable (a zombie, or a kernel thread).
        public var commandText: String {
            guard !commandLine.isEmpty else { return "[\(name)]" }
            return commandLine.map { argument in
                if argument.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7F }) {
                    return "$'" + argument.escapingControlCharacters(also: "'") + "'"
                }
                guard argument.isEmpty || argument.contains(where: { " '\"\\$`;&|<>()*?[]#~!{}".contains($0) }) else { return argument }
                var quoted = "'"
                for character in argument { quoted += character == "'" ? "'\\''" : String(character) }
                return quoted + "'"
            }.joined(separator: " ")
        }
    }

    /// The transport.
    public var transport: Transport
    /// The local address and port.
    public var localAddress: SocketAddress
    /// The peer, for a connected socket.
    public var remoteAddress: SocketAddress?
    /// The state.
    public var state: State
    /// The owner's user id; `nil` for TIME-WAIT sockets, which no process owns.
    public var uid: UInt32?
    /// The owner's user name, when the system knows the uid.
    public var user: String?
    /// The kernel's inode number for the socket (0 for TIME-WAIT).
    public var inode: UInt64
    /// For a listener, the connections waiting in its accept queue; else the bytes waiting to be read.
    public var receiveQueue: Int
    /// The processes that have it open; empty when none is visible (another user's, without root).
    public var processes: [Process]
    /// For an IPv6 socket, whether it is dual-stack (IPV6_V6ONLY off), when that could be read (`pidfd_getfd`,
    /// or a socket of this process); `nil` when unknown or for IPv4.
    public var dualStack: Bool?
    /// Whether ``processes`` may be incomplete: the descriptors of some process could not be read (another
    /// user's, without root), and that process may hold this socket too.
    public var processesMayBeMissing = false
    /// The reuse options set on it, when they could be read (`pidfd_getfd`); `nil` when unknown.
    public var options: ReuseOptions?
    /// For a listener read through sock_diag, the length its accept queue may reach (the `listen` backlog,
    /// `idiag_wqueue`); `nil` for other sockets and where only /proc/net could be read (it does not show it).
    public var backlog: Int? = nil

    /// Whether this socket and a socket bound to `address` compete for the same port: the same port,
    /// and the same IP address or a wildcard on either side (an IPv6 wildcard may be dual-stack).
    public func overlaps(_ address: SocketAddress) -> Bool {
        guard localAddress.port == address.port else { return false }
        let mine = localAddress.ip, theirs = address.ip
        if mine == theirs { return true }
        if mine.unmappedIPv4 == theirs || theirs.unmappedIPv4 == mine { return true }
        if mine.isUnspecified && (mine.family == theirs.family || mine.family == .ipv6) { return true }
        if theirs.isUnspecified && (mine.family == theirs.family || theirs.family == .ipv6) { return true }
        return false
    }

    /// Who holds it, in words: `python3 (pid 812, user www-data)`, or `a process of user www-data (uid 33)`.
    public var ownerDescription: String {
        let userText = user.map { "user \($0)" } ?? uid.map { "uid \($0)" } ?? "no user"
        guard let first = processes.first else {
            guard let uid else { return "the kernel (no process owns a TIME-WAIT socket)" }
            return "a process of \(userText)" + (user != nil ? " (uid \(uid))" : "")
        }
        let others = Set(processes.map(\.pid)).count - 1
        return "\(first.name) (pid \(first.pid), \(userText))" + (others > 0 ? " and \(others) other process\(others == 1 ? "" : "es")" : "")
    }

    /// The sockets bound to `port` of `transport`, in `states` (every state when `nil`) and of `family` (both
    /// when `nil`), with their processes and, where readable, their options. Empty where the platform has no
    /// socket tables PortReuse can read (only Linux does).
    ///
    /// On Linux each family is one walk of the kernel's whole connection table, which holds every network
    /// namespace's sockets, TIME-WAIT ones included: on a busy host, asking for one family halves the cost.
    public static func find(
        port: UInt16, transport: Transport, states: Set<State>? = nil, family: AddressFamily? = nil, processes: Bool = true, options: Bool = true
    ) -> [PortHolder] {
        KernelTables.holders(transport: transport, port: port, states: states, family: family, withProcesses: processes, withOptions: options)
    }

    /// The TCP socket whose local end is `local` and remote end `remote` (the server side of a connection, seen
    /// from its client's addresses swapped), without its processes: one sock_diag request for that socket alone.
    /// `nil` when there is none, or off Linux. Its ``inode`` is 0 until a process accepted it.
    package static func tcpSocket(local: SocketAddress, remote: SocketAddress) -> PortHolder? {
        #if os(Linux)
        SocketDiagnostics.tcpSocket(local: local, remote: remote)
        #else
        nil
        #endif
    }

    /// Every socket of `transport` in the given states (all states when `nil`), for `portreuse who --all`.
    public static func all(transport: Transport, states: Set<State>? = nil, processes: Bool = true, options: Bool = true) -> [PortHolder] {
        KernelTables.holders(transport: transport, port: nil, states: states, withProcesses: processes, withOptions: options)
    }
}

extension String {
    /// The text with control characters as C escapes (`\\n`, `\\t`, `\\r`, `\\x1b`), backslashes doubled and
    /// each character of `also` after a backslash: one line, safe on a terminal, and in `$'…'` a shell reads it back.
    package func escapingControlCharacters(also special: String = "") -> String {
        var out = ""
        for scalar in unicodeScalars {
            switch scalar {
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case "\\": out += "\\\\"
            case _ where special.unicodeScalars.contains(scalar): out += "\\" + String(scalar)
            case _ where scalar.value < 0x20 || scalar.value == 0x7F:
                out += "\\x" + (scalar.value < 16 ? "0" : "") + String(scalar.value, radix: 16)
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out
    }
}
