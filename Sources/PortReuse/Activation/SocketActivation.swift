import Synchronization
import SystemPackage

/// A socket handed to this process by systemd socket activation (`LISTEN_FDS`), by `portreuse up`, or by
/// any other peer that speaks the protocol (`systemd-socket-activate`).
public struct ActivatedSocket: Sendable, Hashable {
    /// The descriptor: 3 for the first socket, 4 for the next, and so on.
    public let descriptor: SocketDescriptor
    /// Its name from `LISTEN_FDNAMES` (`FileDescriptorName=` in a systemd unit, `NAME=` in
    /// `portreuse up --listen NAME=ADDR`), or `unknown` when the peer named none.
    public let name: String
    /// TCP or UDP, or `nil` for any other socket (a unix socket, say), which PortReuse leaves to the caller.
    public let transport: Transport?
    /// The bound address of an IPv4/IPv6 socket.
    public let localAddress: SocketAddress?
    /// Whether it is a listening TCP socket.
    public let isListening: Bool

    /// What an inherited descriptor is, read from the socket itself, without taking ownership of it (for a
    /// supervisor that passes descriptors on). The corresponding C calls are `getsockopt(SO_TYPE)`,
    /// `getsockname` and `getsockopt(SO_ACCEPTCONN)`.
    public init(describing descriptor: SocketDescriptor, name: String) {
        let probe = SocketHandle(adopting: descriptor)
        defer { _ = probe.takeDescriptor() }
        let transport = try? probe.transport()
        let address = try? probe.localAddress()
        self.descriptor = descriptor
        self.name = name
        self.transport = address == nil ? nil : transport
        self.localAddress = address
        self.isListening = transport == .tcp && (try? probe.option(Sys.solSocket, Sys.acceptConnections, label: "SO_ACCEPTCONN")) == 1
    }
}

/// The receiving end of systemd socket activation: the sockets a supervisor opened for this process.
///
/// The protocol: `LISTEN_PID` is this process's pid, `LISTEN_FDS=N` sockets start at descriptor 3, and
/// `LISTEN_FDNAMES` names them, colon-separated. Variables for another pid are ignored (they were meant for
/// a parent). The first call reads them, marks the descriptors close-on-exec and unsets the variables, so
/// that children do not take the sockets for theirs; later calls return the same sockets.
///
/// ```swift
/// let listener = try Listener.activated(named: "web", orBind: "0.0.0.0:8080")   // under `portreuse up`, systemd, or alone
/// try Readiness.notify(.ready)
/// ```
public enum SocketActivation {
    /// The environment variables of the protocol.
    public static let variables = ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"]

    /// The first descriptor of the protocol (`SD_LISTEN_FDS_START`).
    public static let firstDescriptor: SocketDescriptor = 3

    private static let received: Result<[ActivatedSocket], PortReuseError> = {
        let environment = Dictionary(uniqueKeysWithValues: variables.compactMap { name in Sys.environment(name).map { (name, $0) } })
        variables.forEach(Sys.unsetEnvironment)
        return Result { () throws(PortReuseError) in try parse(environment, processID: Sys.processID()) }
    }()

    private static let adopted = Mutex<Set<SocketDescriptor>>([])

    /// The sockets handed to this process, in order; empty when it was not socket-activated.
    /// Throws when the variables are malformed or name descriptors that are not open.
    public static func sockets() throws(PortReuseError) -> [ActivatedSocket] {
        try received.get()
    }

    /// Reads the protocol's variables (pure but for inspecting the descriptors), for ``sockets()`` and tests.
    static func parse(_ environment: [String: String], processID: Int32) throws(PortReuseError) -> [ActivatedSocket] {
        guard let pidText = environment["LISTEN_PID"], let countText = environment["LISTEN_FDS"] else { return [] }
        guard let pid = Int32(pidText) else {
            throw PortReuseError(.activation, diagnosis: .other("LISTEN_PID=\(pidText) is not a process id."))
        }
        guard pid == processID else { return [] }
        guard let count = Int(countText), count >= 0, count < 4096 else {
            throw PortReuseError(.activation, diagnosis: .other("LISTEN_FDS=\(countText) is not a count of descriptors."))
        }
        var names = environment["LISTEN_FDNAMES"].map { $0.split(separator: ":", omittingEmptySubsequences: false).map(String.init) } ?? []
        if names.count != count { names = Array(repeating: "unknown", count: count) }
        return try (0..<count).map { (index) throws(PortReuseError) -> ActivatedSocket in
            let descriptor = firstDescriptor + SocketDescriptor(index)
            guard Sys.setCloseOnExec(descriptor) == 0 else {
                throw PortReuseError(.activation, errno: Errno(rawValue: Sys.lastError()),
                    diagnosis: .other("LISTEN_FDS=\(count) names descriptor \(descriptor), which is not open."))
            }
            return ActivatedSocket(describing: descriptor, name: names[index])
        }
    }

    /// Adopts the first not yet adopted socket that matches; each socket is adopted at most once.
    static func adopt<T>(
        named name: String?, where matches: (ActivatedSocket) -> Bool, _ make: (SocketDescriptor) throws(PortReuseError) -> T
    ) throws(PortReuseError) -> T? {
        let all = try sockets()
        let chosen = adopted.withLock { taken -> ActivatedSocket? in
            guard let socket = all.first(where: { (name == nil || $0.name == name) && matches($0) && !taken.contains($0.descriptor) }) else { return nil }
            taken.insert(socket.descriptor)
            return socket
        }
        return try chosen.map { (socket) throws(PortReuseError) in try make(socket.descriptor) }
    }

    /// The activated listening TCP socket named `name` (the first one when `nil`), adopted as a ``Listener``;
    /// `nil` when there is none (not activated, or no such name). Each socket is adopted at most once.
    public static func listener(named name: String? = nil) throws(PortReuseError) -> Listener? {
        try adopt(named: name, where: \.isListening) { (descriptor) throws(PortReuseError) in try Listener(adopting: descriptor) }
    }

    /// The error for a process that socket activation handed sockets to, none of which it can serve (none is
    /// `wanted`, of that `name`); `nil` when this process was not activated, and may bind by itself. Binding by
    /// itself beside the supervisor's socket would race it, so the ``Listener/activated(named:orBind:policy:)``
    /// family throws this instead.
    public static func nothingToServe(named name: String?, wanted: String) throws(PortReuseError) -> PortReuseError? {
        let handed = try sockets()
        guard !handed.isEmpty else { return nil }
        let list = handed.map { socket in
            let kind = socket.isListening ? "a listening TCP socket" : socket.transport.map { "a \($0) socket that is not listening" } ?? "not a TCP or UDP socket"
            return "\(socket.descriptor) (\(socket.name)): \(kind)"
        }.joined(separator: "; ")
        return PortReuseError(.activation, diagnosis: .unusableDescriptor(reason:
            "socket activation handed over \(handed.count) descriptor\(handed.count == 1 ? "" : "s") (\(list)), but none is "
                + wanted + (name.map { " named \"\($0)\"" } ?? "")
                + ": give the supervisor such an address (portreuse up --listen [NAME=]ADDR, ListenStream= or ListenDatagram= in systemd)"
                + (name == nil ? "." : ", with that name (NAME= in --listen, FileDescriptorName= in systemd).")))
    }

    /// The activated UDP socket named `name` (the first one when `nil`), adopted as a ``DatagramSocket``.
    public static func datagramSocket(named name: String? = nil) throws(PortReuseError) -> DatagramSocket? {
        try adopt(named: name, where: { $0.transport == .udp }) { (descriptor) throws(PortReuseError) in try DatagramSocket(adopting: descriptor) }
    }
}

extension Listener {
    /// The listener handed over by socket activation (named `name`, or the first), or, when this process was
    /// not activated, a new listener on `address` with `policy`: one line for a server that runs under
    /// `portreuse up`, under systemd, and alone. Throws when sockets were handed over but none is a listening
    /// TCP socket of that name (see ``SocketActivation/nothingToServe(named:wanted:)``).
    public static func activated(
        named name: String? = nil, orBind address: String, policy: SharingPolicy = .default
    ) throws(PortReuseError) -> Listener {
        if let listener = try SocketActivation.listener(named: name) { return listener }
        if let error = try SocketActivation.nothingToServe(named: name, wanted: "a listening TCP socket") { throw error }
        return try Listener(tcp: address, policy: policy)
    }
}

extension DatagramSocket {
    /// The UDP socket handed over by socket activation (named `name`, or the first), or a new one on `address`.
    public static func activated(
        named name: String? = nil, orBind address: String, policy: SharingPolicy = .default
    ) throws(PortReuseError) -> DatagramSocket {
        if let socket = try SocketActivation.datagramSocket(named: name) { return socket }
        if let error = try SocketActivation.nothingToServe(named: name, wanted: "a UDP socket") { throw error }
        return try DatagramSocket(udp: address, policy: policy)
    }
}
