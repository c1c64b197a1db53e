import ArgumentParser
import PortReuse
import PortReuseSystem
import PortReuseTools

/// `portreuse listen`: joins a multicast group (or binds a broadcast address) on a port shared with the group's
/// other receivers, and prints every datagram that arrives. The library's `GroupReceiver` does the work.
struct Listen: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Receive a multicast group's or a broadcast address's datagrams on a shared port, and print them.",
        usage: "portreuse listen [udp://]GROUP:PORT [--interface <interface>] [--policy <policy>] [--count <n>] [--timeout <seconds>] [--json]",
        discussion: """
            GROUP is a multicast group (224.0.0.0/4, or IPv6 ff00::/8 in brackets) or an IPv4 broadcast \
            address (255.255.255.255, or the broadcast address of one of this machine's subnets, such as \
            10.0.0.255). Several listeners, in one process or many, can receive the same group on one port: \
            each gets every datagram. The receiver binds the group address itself, not 0.0.0.0, so unicast \
            datagrams to the port never reach it and nothing bound beside it can take its datagrams.

            The first line says what was bound and joined, and on which interface (and why that one); then one \
            line per datagram: the sender, the length, and the text (escaped) or, for bytes that are not UTF-8, \
            hexadecimal. With --json, each line is one JSON object:
              {"event": "listening", "kind": "multicast" or "broadcast",
               "group": "239.1.2.3:5000", "bound": the bound address,
               "interface": {"name", "index", "reason"} or null,
               "policy": "shared", "options": ["SO_REUSEPORT"]}
              {"event": "datagram", "from": "10.0.0.5:40000", "bytes": 5,
               "text": "hello" (null when not UTF-8), "hex": "68656c6c6f"}

            Policies: shared (the default) lets receivers of your user share the port (SO_REUSEPORT on Linux \
            and BSD); unsafe-any-user adds SO_REUSEADDR, to share it with programs that set only SO_REUSEADDR \
            (most multicast programs) and with other users; exclusive admits no other receiver.

            Exit status: 0 when stopped by --count, or at --timeout after at least one datagram (and --count \
            reached when given); 1 when --timeout passed without them, or the socket failed; 64 for bad input.

            Examples:
              portreuse listen udp://239.1.2.3:5000
              portreuse listen udp://239.1.2.3:5000 --interface eth0 --count 1 --timeout 10
              portreuse listen 'udp://[ff15::1234]:5000' --json
              portreuse listen udp://255.255.255.255:9999
              portreuse listen udp://239.1.2.3:5000 --policy unsafe-any-user
                (beside programs that set only SO_REUSEADDR)
            Send to them with `portreuse send udp://239.1.2.3:5000 hello`.
            """)

    @Argument(help: ArgumentHelp(
        "The multicast group or broadcast address, and the port: udp://239.1.2.3:5000, udp://[ff15::1234]:5000.",
        valueName: "group"))
    var group: String

    @Option(help: ArgumentHelp(
        "The interface to join the group on: a name (eth0), an index, or one of its addresses.",
        discussion: "Default: the interface of the route to the group, which the first line names."))
    var interface: String?

    @Option(help: ArgumentHelp("Who else may receive on the port: shared, unsafe-any-user or exclusive (see above; default: shared).", valueName: "policy"),
            transform: { text in
                guard let policy = SharingPolicy(rawValue: text), policy != .restartable else {
                    throw ValidationError(text == "restartable"
                        ? "--policy restartable means nothing for a UDP receiver (UDP has no TIME_WAIT); use shared, unsafe-any-user or exclusive."
                        : "--policy \(text): expected shared, unsafe-any-user or exclusive")
                }
                return policy
            })
    var policy: SharingPolicy = .shared

    @Option(help: "Stop after this many datagrams.")
    var count: Int?

    @Option(help: "Stop after this many seconds.")
    var timeout: Double?

    @Flag(help: "Print one JSON object per line (described above) instead of text.")
    var json = false

    func validate() throws {
        if let count, count < 1 { throw ValidationError("--count must be 1 or more, not \(count).") }
        if let timeout, !(timeout > 0 && timeout <= 86_400 * 365) {
            throw ValidationError("--timeout must be a number of seconds above 0, not \(timeout).")
        }
        let address: Address
        do {
            address = try Address(group)
        } catch {
            throw ValidationError(error.description(acceptedForms: "udp://239.1.2.3:5000, 239.1.2.3:5000, udp://[ff02::1]:5000 or udp://255.255.255.255:5000"))
        }
        if address.network?.transport == .tcp {
            throw ValidationError("\"\(group)\": listen receives UDP datagrams; multicast and broadcast have no TCP. Write udp://\(group.split(separator: "/").last ?? "GROUP:PORT").")
        }
        guard case .ip(let ip) = address.host else {
            throw ValidationError("\"\(group)\" names no group: give a multicast group or a broadcast address with its port, as in udp://239.1.2.3:5000.")
        }
        guard address.port != 0 else {
            throw ValidationError("\"\(group)\": port 0 would be a port nobody sends to; give the group's port, as in udp://239.1.2.3:5000.")
        }
        if !ip.isMulticast {
            let interfaces = (try? NetworkInterface.all()) ?? []
            guard ip.family == .ipv4 && ip.isBroadcast(among: interfaces) else {
                let diagnosis: Diagnosis = ip.family == .ipv6
                    ? .notMulticastGroup(ip) : .notGroupAddress(ip, broadcastAddresses: interfaces.flatMap(\.broadcastAddresses))
                throw ValidationError("\"\(group)\": \(diagnosis.sentence)")
            }
            if let interface {
                throw ValidationError("--interface \(interface): a broadcast address names its subnet, so a broadcast receiver takes no interface.")
            }
        }
        try NetworkInterface.checkOption(interface)
    }

    func run() throws {
        try CommandFailure.reporting {
            let receiver: GroupReceiver
            do throws(PortReuseError) {
                receiver = try GroupReceiver(group, interface: interface, policy: policy)
            } catch {
                throw CommandFailure(error.description)
            }
            emit(banner(receiver))
            var received = 0
            let deadline = timeout.map { ContinuousClock.now + .milliseconds(Int64($0 * 1000)) }
            while count.map({ received < $0 }) ?? true {
                var wait: Duration?
                if let deadline {
                    wait = deadline - ContinuousClock.now
                    if wait! <= .zero { break }
                }
                let datagram: (bytes: [UInt8], sender: SocketAddress)?
                do throws(PortReuseError) {
                    datagram = try receiver.receive(timeout: wait)
                } catch {
                    throw CommandFailure(error.description)
                }
                guard let datagram else { break }
                received += 1
                emit(line(datagram.bytes, from: datagram.sender))
            }
            if received == 0 || count.map({ received < $0 }) == true { throw ExitCode(1) }
        }
    }

    private func banner(_ receiver: GroupReceiver) -> String {
        let options = (try? receiver.reuseOptions()) ?? []
        if json {
            let interface: JSON = receiver.interface.map { interface in
                .object([("name", .string(interface.name)), ("index", .number(Int64(interface.index))), ("reason", .string(receiver.interfaceReason))])
            } ?? .null
            return JSON.object([
                ("event", .string("listening")), ("kind", .string(receiver.kind.rawValue)), ("group", .string(receiver.group.description)),
                ("bound", .string(receiver.localAddress.description)), ("interface", interface),
                ("policy", .string(receiver.policy.rawValue)), ("options", .array(options.names.map(JSON.string))),
            ]).description
        }
        let place: String
        switch receiver.kind {
        case .multicast:
            place = "multicast group \(receiver.group), joined on \(receiver.interface.map { "\($0.name), index \($0.index)" } ?? "?") (\(receiver.interfaceReason))"
        case .broadcast:
            place = "broadcast address \(receiver.group) (\(receiver.interfaceReason)"
                + (receiver.interface.map { ": \($0.name)" } ?? "") + ")"
        }
        let bound = receiver.localAddress == receiver.group ? "" : "; bound to \(receiver.localAddress)"
        return "listening on \(place)\(bound); policy \(receiver.policy) (\(options))"
    }

    private func line(_ bytes: [UInt8], from sender: SocketAddress) -> String {
        let text = String(validating: bytes, as: UTF8.self)
        let hex = bytes.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
        if json {
            return JSON.object([
                ("event", .string("datagram")), ("from", .string(sender.description)), ("bytes", .number(Int64(bytes.count))),
                ("text", .optional(text, JSON.string)), ("hex", .string(hex)),
            ]).description
        }
        let shown = text.map(Self.escaped) ?? "hex " + hex
        return "from \(sender) (\(bytes.count) byte\(bytes.count == 1 ? "" : "s")): \(shown)"
    }

    /// Text with control characters escaped, so that one datagram stays one line.
    static func escaped(_ text: String) -> String { text.escapingControlCharacters() }

    /// One line on stdout, at once (a pipe would otherwise hold it until the buffer fills).
    private func emit(_ line: String) {
        print(line)
        Files.flushStandardOutput()
    }
}
