import ArgumentParser
import PortReuse
import PortReuseSystem
import PortReuseTools

/// `portreuse who`: who holds a port, how it is shared, and whether another process or user could bind it.
/// The library's `PortReport` does the work; this file parses the question and prints the answer.
struct Who: ParsableCommand {
    static let schema = WhoOutput.schema

    static let configuration = CommandConfiguration(
        commandName: "who",
        abstract: "Show who holds a port, how it is shared, and whether another process or user could bind it.",
        usage: """
            portreuse who [tcp:|udp:][ADDR:]PORT [--json] [--probe-udp]
              portreuse who --all [--json] [--probe-udp]
              portreuse who unix:PATH|unix:@NAME [--json]
            """,
        discussion: """
            For each socket bound to the port: the protocol, the local address, the state (LISTEN, or UNCONN for a bound UDP socket) with the ESTABLISHED and TIME-WAIT connections on its address, every process that holds it (pid, user, command line; a socket inherited by child processes lists each one), its SO_REUSEADDR/SO_REUSEPORT options, and its sharing: whether a new socket of the same user could join it now, whether one of another user could, and a verdict ("shared by 4 processes of user www", "exclusive", "UDP socket bound with SO_REUSEADDR: any local user can bind this port and receive its datagrams").

            Everything is read from the kernel: its socket tables, /proc/PID/fd, and a duplicate of each holder's socket (pidfd_getfd) for its exact options, which touches no traffic. That needs root (or the holder's user). Without it, who shows what it can see and says what is hidden, and learns how a TCP socket of your own user shares from a probe: a socket bound beside it that never listens, so it receives nothing, closed at once. A UDP probe cannot be that safe: a UDP socket receives as soon as it is bound, so a probe beside a SO_REUSEPORT group may be handed one of the group's datagrams, and one beside a SO_REUSEADDR socket takes every datagram while it exists. So who makes UDP probes only with --probe-udp.

            Where a port can be hijacked (another user binds it and receives its traffic): on a UDP socket that set SO_REUSEADDR, since Linux checks no user for it, unless the socket is bound to a multicast group or broadcast address: it then receives only datagrams sent to that address, of which every socket bound there gets a copy, so a socket bound beside it takes nothing from it (who says so, and does not call it hijackable). SO_REUSEPORT groups admit only sockets of the same user, and on Linux no other user can join a live TCP socket.

            Addresses: \(Address.acceptedForms). A port alone means TCP and UDP at every address; tcp4, tcp6, udp4 and udp6 keep one IP version; an address keeps the sockets that compete with a socket bound to it (the same address, or a wildcard on either side).

            Unix-domain sockets (unix:PATH, or unix:@NAME for an abstract name): whether the socket file is live \
            (something accepts connections on it: a new server must not replace it), stale (a socket file that \
            nothing accepts behind, left by a server that ended: safe to replace or remove), free, or not a socket; \
            and the sockets bound to it with the processes that hold them. JSON: schema "\(WhoUnixOutput.schema)".

            Exit status:
              0  something holds the port (with --all: some socket is listed; for unix:, the socket is live)
              1  nothing holds it
              2  bad input: the error names it and lists the accepted forms

            JSON (--json): one object on one line, schema "\(schema)". Fields keep their meaning within a schema version; new fields may be added.
            \(WhoSchema.help)

            Examples:
              portreuse who 8080                 TCP and UDP port 8080
              portreuse who tcp:127.0.0.1:8080   one address, TCP only
              portreuse who udp:53 --probe-udp   learn UDP sharing without root
              portreuse who --all --json         every listening and bound socket
              portreuse who unix:/run/app.sock   who holds a socket file, and whether it is stale
            """)

    /// The port (and anything unexpected, so that who can reject it with status 2: the argument parser's own
    /// status for bad input is 64, and it would answer an unknown option before who sees it).
    @Argument(parsing: .allUnrecognized, help: ArgumentHelp(
        "The port, optionally after a network and an address: 8080, tcp:8080, udp:[::1]:53, 127.0.0.1:8080; or unix:PATH.",
        valueName: "[tcp:|udp:][ADDR:]PORT"))
    var arguments: [String] = []

    @Flag(help: "Show every listening TCP socket and every bound UDP socket instead of one port.")
    var all = false

    @Flag(help: "Print JSON (schema \(Who.schema), described below) instead of text.")
    var json = false

    @Flag(name: .customLong("probe-udp"), help: ArgumentHelp(
        "Where a UDP socket's options are unreadable, learn its sharing by binding a probe beside it.",
        discussion: "The probe may receive a datagram meant for that socket, which is then lost."))
    var probeUDP = false

    typealias Query = WhoQuery

    /// Bad input: the message names the input and says how to fix it.
    struct BadInput: Error {
        var message: String
    }

    func validate() throws {
        do {
            if try unixName() == nil { _ = try query() }
        } catch {
            printError("Error: \(error.message)")
            printError("Usage: portreuse who [tcp:|udp:][ADDR:]PORT [--json] [--probe-udp]")
            printError("       portreuse who --all [--json] [--probe-udp]")
            printError("       portreuse who unix:PATH [--json]")
            printError("See 'portreuse who --help'.")
            throw ExitCode(2)
        }
    }

    func query() throws(BadInput) -> Query {
        let arguments = arguments.filter { $0 != "--" }
        if let option = arguments.first(where: { $0.hasPrefix("-") && $0.count > 1 && !$0.dropFirst().allSatisfy(\.isNumber) }) {
            throw BadInput(message: "unknown option \"\(option)\"; who takes --all, --json, --probe-udp and --help.")
        }
        if arguments.count > 1 {
            throw BadInput(message: "one port at a time, not \(arguments.map { "\"\($0)\"" }.joined(separator: " and ")); or --all for every one.")
        }
        let target = arguments.first
        if all {
            if let target { throw BadInput(message: "give a port (\"\(target)\") or --all, not both.") }
            return Query(text: nil, transports: Transport.allCases, port: nil, family: nil, addresses: [])
        }
        guard let target else {
            throw BadInput(message: "which port? Give one, as in `portreuse who 8080`, or --all. Accepted forms: \(Address.acceptedForms).")
        }
        let address: Address
        do {
            address = try Address(target)
        } catch {
            throw BadInput(message: error.description)
        }
        guard address.port != 0 else {
            throw BadInput(message: "invalid address \"\(target)\": port 0 asks the kernel to choose a port, and nothing "
                + "holds it; give the port to look at. Accepted forms: \(Address.acceptedForms).")
        }
        var addresses: [SocketAddress] = []
        if address.host != .unspecified {
            do {
                addresses = try address.resolve()
            } catch {
                throw BadInput(message: error.description)
            }
        }
        let transports = address.network.map { [$0.transport] } ?? Transport.allCases
        return Query(text: target, transports: transports, port: address.port, family: address.network?.family, addresses: addresses)
    }

    /// The Unix-domain socket name asked about (`unix:PATH`), or `nil` for a port.
    func unixName() throws(BadInput) -> String? {
        guard let target = arguments.first(where: { $0.hasPrefix(WhoUnixOutput.prefix) }) else { return nil }
        let name = String(target.dropFirst(WhoUnixOutput.prefix.count))
        if all || probeUDP || arguments.count > 1 {
            throw BadInput(message: "\"\(target)\" is a Unix-domain socket: give it alone (with --json at most), not with a port, --all or --probe-udp.")
        }
        guard !name.isEmpty, name != "@" else {
            throw BadInput(message: "\"\(target)\": give the socket file's path (unix:/run/app.sock) or an abstract name (unix:@name).")
        }
        guard name.utf8.count < 108 else {
            throw BadInput(message: "\"\(target)\": a Unix-domain socket's name has at most 107 bytes, and this one has \(name.utf8.count).")
        }
        return name
    }

    func run() throws {
        if let name = try unixName() {
            let output = WhoUnixOutput(UnixSocketFile.inspect(name))
            print(json ? output.json() : output.text(style: .standardOutput))
            if !output.held { throw ExitCode(1) }
            return
        }
        let query = try query()
        let probes: PortReport.Probes = probeUDP ? [.tcp, .udp] : [.tcp]
        var reports: [PortReport]
        if let port = query.port {
            reports = query.transports.map { PortReport.find(port: port, transport: $0, competingWith: query.addresses, probes: probes) }
        } else {
            reports = query.transports.flatMap { PortReport.all(transport: $0, probes: probes) }
        }
        if let family = query.family {
            for index in reports.indices {
                reports[index].sockets.removeAll { $0.holder.localAddress.family != family }
                reports[index].connections.removeAll { $0.localAddress.family != family }
            }
        }
        let output = WhoOutput(query: query, reports: reports, probeUDP: probeUDP)
        print(json ? output.json() : output.text(style: .standardOutput))
        if !output.held { throw ExitCode(1) }
    }
}

/// The answer, as text for people or as JSON for scripts.
