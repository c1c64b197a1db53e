import Synchronization
import SystemPackage

/// Why an operation of PortReuse failed: the operation, the address, the system error and, where
/// PortReuse can tell, a diagnosis. Its ``description`` is a sentence a person can act on.
public struct PortReuseError: Error, Sendable, CustomStringConvertible {
    /// The operation that failed; for system calls, the call.
    public enum Operation: Sendable, Hashable, CustomStringConvertible {
        case parse, resolve, socket, bind, listen, accept, connect, send, receive, localAddress, remoteAddress, adopt, activation, notify
        /// Reading the interfaces (`getifaddrs`) or choosing one.
        case interfaces
        /// `setsockopt` with the option's C name.
        case setOption(String)
        /// `getsockopt` with the option's C name.
        case getOption(String)

        public var description: String {
            switch self {
            case .parse: "parse"
            case .resolve: "resolve"
            case .socket: "socket"
            case .bind: "bind"
            case .listen: "listen"
            case .accept: "accept"
            case .connect: "connect"
            case .send: "send"
            case .receive: "receive"
            case .localAddress: "getsockname"
            case .remoteAddress: "getpeername"
            case .adopt: "adopt"
            case .activation: "socket activation"
            case .notify: "sd_notify"
            case .interfaces: "interfaces"
            case .setOption(let name): "setsockopt \(name)"
            case .getOption(let name): "getsockopt \(name)"
            }
        }
    }

    /// The operation that failed.
    public var operation: Operation
    /// The address involved, as given or as resolved (`tcp:127.0.0.1:8080`), if any.
    public var address: String?
    /// The system error, if a system call failed.
    public var errno: Errno?
    /// What PortReuse found out about the failure, if anything. Some diagnoses (who holds a port in use) are
    /// found out only when first read, so that a caller that retries a bind and looks only at ``errno`` does not
    /// scan the kernel's tables on every attempt: they describe the system as it is at that first reading.
    public var diagnosis: Diagnosis? {
        get { settled ?? deferred?.value }
        set {
            settled = newValue
            deferred = nil
        }
    }

    private var settled: Diagnosis?
    private var deferred: DeferredDiagnosis?

    /// An error from its parts.
    public init(_ operation: Operation, address: String? = nil, errno: Errno? = nil, diagnosis: Diagnosis? = nil) {
        self.operation = operation
        self.address = address
        self.errno = errno
        self.settled = diagnosis
    }

    /// An error whose diagnosis `find` computes when it is first read (and then keeps).
    init(_ operation: Operation, address: String?, errno: Errno?, diagnosingLater find: @escaping @Sendable () -> Diagnosis?) {
        self.init(operation, address: address, errno: errno)
        deferred = DeferredDiagnosis(find)
    }

    /// The description, with `forms` in place of ``Address/acceptedForms`` for an invalid address: for an option
    /// that takes fewer forms than `Address` parses (no network prefix, UDP only).
    package func description(acceptedForms forms: String) -> String {
        guard case .invalidAddress(let reason) = diagnosis else { return description }
        return "invalid address \"\(address ?? "")\": \(reason). Accepted forms: \(forms)."
    }

    public var description: String {
        if case .invalidAddress = diagnosis {
            return "invalid address \"\(address ?? "")\": \(diagnosis!.sentence)"
        }
        var text = operation.description
        if let address { text += " \(address)" }
        if let errno { text += ": \(errno.description.lowercased()) (\(errno.symbol))" }
        if let diagnosis { text += (errno == nil ? ": " : ". ") + diagnosis.sentence }
        return text
    }
}

/// A diagnosis computed once, on first use, and shared by the copies of an error.
private final class DeferredDiagnosis: Sendable {
    private let find: @Sendable () -> Diagnosis?
    private let found = Mutex<Diagnosis??>(nil)

    init(_ find: @escaping @Sendable () -> Diagnosis?) { self.find = find }

    var value: Diagnosis? {
        found.withLock { found in
            if let known = found { return known }
            let computed = find()
            found = .some(computed)
            return computed
        }
    }
}

extension Errno {
    private static let symbols: [(Errno, String)] = [
        (.addressInUse, "EADDRINUSE"), (.addressNotAvailable, "EADDRNOTAVAIL"), (.permissionDenied, "EACCES"),
        (.notPermitted, "EPERM"), (.connectionRefused, "ECONNREFUSED"), (.timedOut, "ETIMEDOUT"),
        (.invalidArgument, "EINVAL"), (.badFileDescriptor, "EBADF"), (.notSocket, "ENOTSOCK"),
        (.addressFamilyNotSupported, "EAFNOSUPPORT"), (.tooManyOpenFiles, "EMFILE"), (.noSuchFileOrDirectory, "ENOENT"),
        (.connectionReset, "ECONNRESET"), (.networkUnreachable, "ENETUNREACH"), (.noRouteToHost, "EHOSTUNREACH"),
        (.protocolNotAvailable, "ENOPROTOOPT"), (.noSuchProcess, "ESRCH"), (.brokenPipe, "EPIPE"),
        (.resourceTemporarilyUnavailable, "EAGAIN"), (.interrupted, "EINTR"), (.socketIsConnected, "EISCONN"), (.socketNotConnected, "ENOTCONN"),
    ]

    /// The C name of this error, such as `EADDRINUSE`, or `errno N` for the rare ones.
    public var symbol: String {
        Self.symbols.first { $0.0 == self }?.1 ?? "errno \(rawValue)"
    }
}

/// What PortReuse found out about a failure, beyond the system error.
public enum Diagnosis: Sendable, Hashable {
    /// The text is not an address; `reason` says what is wrong with it.
    case invalidAddress(reason: String)
    /// A host name did not resolve.
    case unknownHost(name: String, reason: String)
    /// The address names a network of the other transport (`udp:53` given to a TCP listener).
    case wrongTransport(expected: Transport, given: Network)
    /// Dual-stack was asked for an IPv4 address.
    case dualStackNeedsIPv6
    /// The port is in use; the report names the holders and why they block this socket.
    case portInUse(PortInUse)
    /// Binding a port below the system's first unprivileged port needs privilege.
    case privilegedPort(port: UInt16, firstUnprivileged: Int)
    /// No interface of this machine has the address.
    case addressNotLocal(IPAddress)
    /// A connection with the same local and remote address and port already exists.
    case fourTupleTaken(local: SocketAddress, remote: SocketAddress)
    /// Nothing listens at the remote address.
    case refused
    /// The operation did not finish in time.
    case timedOut(seconds: Double)
    /// The descriptor is not what the operation needs; `reason` says what it is.
    case unusableDescriptor(reason: String)
    /// A multicast receiver was given an address that is not a multicast group.
    case notMulticastGroup(IPAddress)
    /// A receiver was given an IPv4 address that is neither a multicast group nor a broadcast address here;
    /// `broadcastAddresses` lists the subnets' broadcast addresses there are.
    case notGroupAddress(IPAddress, broadcastAddresses: [IPAddress])
    /// A broadcast receiver was given an address that is not a broadcast address here; `known` lists those there are.
    case notBroadcastAddress(IPAddress, known: [IPAddress])
    /// No interface has this name, index or address; `known` lists the names there are.
    case unknownInterface(given: String, known: [String])
    /// Anything else, said in words.
    case other(String)

    /// The diagnosis as a sentence.
    public var sentence: String {
        switch self {
        case .invalidAddress(let reason):
            return "\(reason). Accepted forms: \(Address.acceptedForms)."
        case .unknownHost(let name, let reason):
            return "the host name \"\(name)\" did not resolve (\(reason)); check its spelling or give an IP address."
        case .wrongTransport(let expected, let given):
            return "the address names the network \(given), but this is a \(expected) socket; "
                + "drop the prefix or write \(expected.rawValue):… instead."
        case .dualStackNeedsIPv6:
            return "a dual-stack socket needs an IPv6 address such as [::]:8080."
        case .portInUse(let report):
            return report.sentence
        case .privilegedPort(let port, let first):
            return "port \(port) is below \(first), and only privileged processes may bind such ports: use a port of "
                + "\(first) or more, run as root, grant the binary CAP_NET_BIND_SERVICE "
                + "(setcap cap_net_bind_service=+ep BINARY), or lower net.ipv4.ip_unprivileged_port_start."
        case .addressNotLocal(let ip):
            return "\(ip) is not an address of this machine (no interface has it): bind "
                + (ip.family == .ipv4 ? "0.0.0.0" : "[::]") + " or an address that `ip addr` lists."
        case .fourTupleTaken(let local, let remote):
            return "a connection from \(local) to \(remote) already exists, and two connections cannot have the same "
                + "local and remote address and port: dial from another local port, or to another remote one."
        case .refused:
            return "nothing listens there."
        case .timedOut(let seconds):
            return "no answer within \(seconds) s."
        case .unusableDescriptor(let reason):
            return reason
        case .notMulticastGroup(let ip):
            return "\(ip) is not a multicast group address: IPv4 groups are 224.0.0.0 to 239.255.255.255 (239.0.0.0/8 "
                + "is for an organisation's own use, as in 239.1.2.3:5000), IPv6 groups start with ff (ff15::1234 is "
                + "site-local, ff02:: link-local, as in [ff15::1234]:5000)."
        case .notGroupAddress(let ip, let known):
            return "\(ip) is neither a multicast group nor a broadcast address: multicast groups are 224.0.0.0 to "
                + "239.255.255.255 (as in 239.1.2.3:5000; IPv6 groups start with ff, as in [ff15::1234]:5000), broadcast "
                + "addresses are 255.255.255.255" + known.map { ", \($0)" }.joined() + "."
        case .notBroadcastAddress(let ip, let known):
            return "\(ip) is not a broadcast address here: give 255.255.255.255 or the broadcast address of an "
                + "interface's subnet" + (known.isEmpty ? " (no interface has one)." : " (\(known.map(\.description).joined(separator: ", ")))." )
        case .unknownInterface(let given, let known):
            return "no interface is named \"\(given)\" or has that index or address; "
                + (known.isEmpty ? "this machine has none." : "the interfaces here are \(known.joined(separator: ", ")) (see `ip link`).")
        case .other(let text):
            return text
        }
    }
}
