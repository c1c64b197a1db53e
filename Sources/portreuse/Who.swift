import ArgumentParser
import PortReuse

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// `portreuse who`: who holds a port, how it is shared, and whether another process or user could bind it.
/// The library's `PortReport` does the work; this file parses the question and prints the answer.
struct Who: ParsableCommand {
    static let schema = "portreuse.who/1"

    static let configuration = CommandConfiguration(
        commandName: "who",
        abstract: "Show who holds a port, how it is shared, and whether another process or user could bind it.",
        usage: """
            portreuse who [tcp:|udp:][ADDR:]PORT [--json] [--probe-udp]
              portreuse who --all [--json] [--probe-udp]
            """,
        discussion: """
            For each socket bound to the port: the protocol, the local address, the state (LISTEN, or UNCONN for a bound UDP socket) with the ESTABLISHED and TIME-WAIT connections on its address, every process that holds it (pid, user, command line; a socket inherited by child processes lists each one), its SO_REUSEADDR/SO_REUSEPORT options, and its sharing: whether a new socket of the same user could join it now, whether one of another user could, and a verdict ("shared by 4 processes of user www", "exclusive", "UDP socket bound with SO_REUSEADDR: any local user can bind this port and receive its datagrams").

            Everything is read from the kernel: its socket tables, /proc/PID/fd, and a duplicate of each holder's socket (pidfd_getfd) for its exact options, which touches no traffic. That needs root (or the holder's user). Without it, who shows what it can see and says what is hidden, and learns how a TCP socket of your own user shares from a probe: a socket bound beside it that never listens, so it receives nothing, closed at once. A UDP probe cannot be that safe: a UDP socket receives as soon as it is bound, so a probe beside a SO_REUSEPORT group may be handed one of the group's datagrams, and one beside a SO_REUSEADDR socket takes every datagram while it exists. So who makes UDP probes only with --probe-udp.

            Where a port can be hijacked (another user binds it and receives its traffic): on a UDP socket that set SO_REUSEADDR, since Linux checks no user for it, unless the socket is bound to a multicast group or broadcast address: it then receives only datagrams sent to that address, of which every socket bound there gets a copy, so a socket bound beside it takes nothing from it (who says so, and does not call it hijackable). SO_REUSEPORT groups admit only sockets of the same user, and on Linux no other user can join a live TCP socket.

            Addresses: \(Address.acceptedForms). A port alone means TCP and UDP at every address; tcp4, tcp6, udp4 and udp6 keep one IP version; an address keeps the sockets that compete with a socket bound to it (the same address, or a wildcard on either side).

            Exit status:
              0  something holds the port (with --all: some socket is listed)
              1  nothing holds it
              2  bad input: the error names it and lists the accepted forms

            JSON (--json): one object on one line, schema "\(schema)". Fields keep their meaning within a schema version; new fields may be added.
              schema            "\(schema)"
              query             {"text": the argument or null, "all": bool,
                                 "transports": ["tcp", "udp"], "port": number or null}
              privileged        whether who ran as root (it sees every process, option)
              held              whether anything holds the port (exit status 0)
              hiddenSockets     how many listed sockets have processes who cannot see
              notes             [string]: what is hidden, and how to see it
              ports             one object per transport and port:
                transport       "tcp" or "udp"
                port            the port number
                held            whether a socket or a connection holds it
                connections     {"established", "timeWait", "other"}: TCP
                                connections on the port
                restartableMayBind  only connections hold the port: whether a
                                new listener with SO_REUSEADDR can bind now;
                                else null
                sockets         one object per bound socket:
                  address       "127.0.0.1:8080", "[::1]:8080"
                  ip            "127.0.0.1", "::1"
                  family        "ipv4" or "ipv6"
                  state         "LISTEN", "UNCONN", or "ESTAB" (connected UDP)
                  inode         the kernel's socket inode
                  uid, user     the socket's owner, the user that created it
                                (user: null when the uid has no name)
                  receiveQueue  listener: connections waiting for accept;
                                UDP: bytes waiting to be read
                  options       ["SO_REUSEADDR", "SO_REUSEPORT"] as read from
                                the socket, [] for none, null when unreadable
                  connections   {"established", "timeWait", "other"} on this
                                socket's address
                  processesHidden  whether its processes could not be seen
                  processes     [{"pid", "fd", "name", "uid", "user",
                                  "commandLine": [string]}]
                  sharing       {"sameUserMayJoin": bool or null,
                                 "otherUsersMayJoin": bool or null,
                                 "hijackable": bool,
                                 "source": "options", "probe" or "rules",
                                 "verdict": string,
                                 "group": "multicast" or "broadcast" when
                                 bound to such an address (every socket
                                 there gets each datagram), else null}

            Examples:
              portreuse who 8080                 TCP and UDP port 8080
              portreuse who tcp:127.0.0.1:8080   one address, TCP only
              portreuse who udp:53 --probe-udp   learn UDP sharing without root
              portreuse who --all --json         every listening and bound socket
            """)

    /// The port (and anything unexpected, so that who can reject it with status 2: the argument parser's own
    /// status for bad input is 64, and it would answer an unknown option before who sees it).
    @Argument(parsing: .allUnrecognized, help: ArgumentHelp(
        "The port, optionally after a network and an address: 8080, tcp:8080, udp:[::1]:53, 127.0.0.1:8080.",
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

    /// What was asked.
    struct Query {
        var text: String?
        var transports: [Transport]
        var port: UInt16?
        var family: AddressFamily?
        var addresses: [SocketAddress]
    }

    /// Bad input: the message names the input and says how to fix it.
    struct BadInput: Error {
        var message: String
    }

    func validate() throws {
        do {
            _ = try query()
        } catch {
            printError("Error: \(error.message)")
            printError("Usage: portreuse who [tcp:|udp:][ADDR:]PORT [--json] [--probe-udp]")
            printError("       portreuse who --all [--json] [--probe-udp]")
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

    func run() throws {
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
struct WhoOutput {
    let query: Who.Query
    let reports: [PortReport]
    let probeUDP: Bool
    let ownUID = geteuid()

    var held: Bool { reports.contains(where: \.isHeld) }

    /// What could not be seen, in words.
    var notes: [String] {
        let hidden = reports.flatMap(\.hiddenSockets)
        let strangers = hidden.filter { $0.holder.uid != ownUID }.count
        let mine = hidden.count - strangers
        var notes: [String] = []
        if strangers > 0 {
            notes.append("\(strangers) socket\(strangers == 1 ? "" : "s") owned by other users: run as root to see \(strangers == 1 ? "its processes" : "their processes")")
        }
        if mine > 0 {
            notes.append("\(mine) socket\(mine == 1 ? "" : "s") of your user with no visible process (not dumpable, or in another PID namespace): run as root to see more")
        }
        return notes
    }

    // MARK: text

    func text(style: Style) -> String {
        var lines: [String] = []
        for report in reports where report.isHeld {
            if !lines.isEmpty { lines.append("") }
            lines += text(report, style: style)
        }
        if lines.isEmpty {
            guard let port = query.port else { return "No socket is listening or bound." }
            let what = query.transports.map(\.description).joined(separator: " or ")
            let family = query.family.map { " (\($0))" } ?? ""
            let address = query.addresses.isEmpty ? "" : " on " + query.addresses.map(\.ip.description).joined(separator: " or ")
            return "Nothing holds \(what) port \(port)\(family)\(address)."
        }
        let notes = notes
        if !notes.isEmpty {
            lines.append("")
            lines += notes.map { style.yellow($0) }
        }
        return lines.joined(separator: "\n")
    }

    private func counts(_ counts: PortReport.ConnectionCounts) -> String {
        var parts: [String] = []
        if counts.established > 0 { parts.append("\(counts.established) established") }
        if counts.timeWait > 0 { parts.append("\(counts.timeWait) time-wait") }
        if counts.other > 0 { parts.append("\(counts.other) other connection\(counts.other == 1 ? "" : "s")") }
        return parts.joined(separator: ", ")
    }

    private func text(_ report: PortReport, style: Style) -> [String] {
        var lines: [String] = []
        // Sockets with the same address, state and sharing make one block.
        var blocks: [[PortReport.Socket]] = []
        for socket in report.sockets {
            if let last = blocks.last?.first, last.holder.localAddress == socket.holder.localAddress,
                last.holder.state == socket.holder.state, last.sharing == socket.sharing
            {
                blocks[blocks.count - 1].append(socket)
            } else {
                blocks.append([socket])
            }
        }
        for block in blocks {
            let first = block[0]
            if !lines.isEmpty { lines.append("") }
            let connections = counts(first.connections)
            lines.append(style.bold("\(report.transport) \(first.holder.localAddress)") + "  \(first.holder.state)"
                + (block.count > 1 ? "  \(block.count) sockets" : "") + (connections.isEmpty ? "" : "  \(connections)"))
            let sharing = first.sharing
            let verdict = sharing.hijackable ? style.red(sharing.verdict)
                : sharing.verdict.hasPrefix("unknown") || sharing.sameUserMayJoin == nil ? style.yellow(sharing.verdict)
                : style.green(sharing.verdict)
            lines.append("  " + style.dim("verdict") + "  " + verdict)
            let owner = first.holder.user.map { "user \($0)" } ?? first.holder.uid.map { "uid \($0)" } ?? "its user"
            let source: String
            switch sharing.source {
            case .options: source = "from the socket's options"
            case .probe: source = "learned by a probe bind"
            case .rules: source = "from the kernel's rules; options unreadable"
            }
            lines.append("  " + style.dim("join   ") + "  new socket of \(owner): \(yesNo(sharing.sameUserMayJoin))"
                + " · of another user: \(yesNo(sharing.otherUsersMayJoin)) · \(source)")
            if report.transport == .udp && sharing.source == .rules && !probeUDP
                && (sharing.sameUserMayJoin == nil || sharing.otherUsersMayJoin == nil)
            {
                lines.append("  " + style.dim("hint   ") + "  --probe-udp finds out by binding beside it, which may take one of its datagrams")
            }
            var rows: [[String]] = [["PID", "FD", "USER", "OPTIONS", "COMMAND"]]
            for socket in block {
                let holder = socket.holder
                let options = holder.options?.description ?? "unknown"
                let socketUser = holder.user ?? holder.uid.map(String.init) ?? "-"
                if holder.processes.isEmpty {
                    let why = socket.processesHidden
                        ? (holder.uid != ownUID ? "(another user's process: run as root to see it)" : "(not visible: run as root to see it)")
                        : "(no process in this PID namespace holds it)"
                    rows.append(["-", "-", socketUser, options, why])
                }
                for process in holder.processes {
                    rows.append(["\(process.pid)", "\(process.descriptor)", process.user ?? process.uid.map(String.init) ?? socketUser, options, process.commandText])
                }
            }
            lines += table(rows, indent: "  ", style: style)
        }
        let claimed = Set(report.sockets.map(\.holder.localAddress.ip)).compactMap { ip in
            report.sockets.first { $0.holder.localAddress.ip == ip }?.connections.total
        }.reduce(0, +)
        let counts = report.connectionCounts
        if report.sockets.isEmpty && counts.total > 0 {
            let addresses = Set(report.connections.map(\.localAddress))
            let place = addresses.count == 1 ? "\(addresses.first!)" : "port \(report.port)"
            lines.append(style.bold("\(report.transport) \(place)") + "  no socket bound  " + self.counts(counts))
            let verdict: String
            switch report.restartableMayBind {
            case true?:
                verdict = style.green("only connections hold the port; a new listener with SO_REUSEADDR (policy restartable) can bind now")
            case false?:
                verdict = style.yellow("only connections hold the port; a new listener cannot bind until they are gone (TIME-WAIT lasts up "
                    + "to 60 s): the socket that made them did not set SO_REUSEADDR, and they keep its options")
            case nil:
                verdict = style.yellow("only connections hold the port; whether a new listener can bind now is unknown")
            }
            lines.append("  " + style.dim("verdict") + "  " + verdict)
        } else if counts.total > claimed {
            lines.append("  " + style.dim("also") + "  \(counts.total - claimed) connection\(counts.total - claimed == 1 ? "" : "s") on port \(report.port) at addresses no listed socket holds")
        }
        return lines
    }

    private func yesNo(_ answer: Bool?) -> String {
        switch answer {
        case true?: "yes"
        case false?: "no"
        case nil: "unknown"
        }
    }

    /// Columns padded to their widest cell; the last one is not padded. The header row is dimmed.
    private func table(_ rows: [[String]], indent: String, style: Style) -> [String] {
        let columns = rows.map(\.count).max() ?? 0
        let widths = (0..<columns).map { column in rows.map { column < $0.count ? $0[column].count : 0 }.max() ?? 0 }
        return rows.enumerated().map { index, row in
            let cells = row.enumerated().map { column, cell in
                column == row.count - 1 ? cell : cell.padding(widths[column])
            }
            let line = indent + cells.joined(separator: "  ")
            return index == 0 ? style.dim(line) : line
        }
    }

    // MARK: JSON

    /// The document of schema `portreuse.who/1`, in the order the help text documents it.
    func document() -> JSON {
        func counts(_ counts: PortReport.ConnectionCounts) -> JSON {
            .object([("established", .number(Int64(counts.established))), ("timeWait", .number(Int64(counts.timeWait))), ("other", .number(Int64(counts.other)))])
        }
        func bool(_ value: Bool?) -> JSON { .optional(value, JSON.bool) }
        func string(_ value: String?) -> JSON { .optional(value, JSON.string) }
        func number<N: BinaryInteger>(_ value: N?) -> JSON { .optional(value) { .number(Int64($0)) } }

        let ports = reports.filter { $0.isHeld || query.port != nil }.map { report -> JSON in
            let sockets = report.sockets.map { socket -> JSON in
                let holder = socket.holder
                let processes = holder.processes.map { process -> JSON in
                    .object([
                        ("pid", number(process.pid)), ("fd", number(process.descriptor)), ("name", .string(process.name)),
                        ("uid", number(process.uid)), ("user", string(process.user)),
                        ("commandLine", .array(process.commandLine.map(JSON.string))),
                    ])
                }
                let sharing = socket.sharing
                return .object([
                    ("address", .string(holder.localAddress.description)), ("ip", .string(holder.localAddress.ip.description)),
                    ("family", .string(holder.localAddress.family.rawValue)), ("state", .string(holder.state.rawValue)),
                    ("inode", number(holder.inode)), ("uid", number(holder.uid)), ("user", string(holder.user)),
                    ("receiveQueue", number(holder.receiveQueue)),
                    ("options", .optional(holder.options) { .array($0.names.map(JSON.string)) }),
                    ("connections", counts(socket.connections)), ("processesHidden", .bool(socket.processesHidden)),
                    ("processes", .array(processes)),
                    ("sharing", .object([
                        ("sameUserMayJoin", bool(sharing.sameUserMayJoin)), ("otherUsersMayJoin", bool(sharing.otherUsersMayJoin)),
                        ("hijackable", .bool(sharing.hijackable)), ("source", .string(sharing.source.rawValue)),
                        ("verdict", .string(sharing.verdict)), ("group", string(sharing.groupKind?.rawValue)),
                    ])),
                ])
            }
            return .object([
                ("transport", .string(report.transport.rawValue)), ("port", number(report.port)), ("held", .bool(report.isHeld)),
                ("connections", counts(report.connectionCounts)), ("restartableMayBind", bool(report.restartableMayBind)),
                ("sockets", .array(sockets)),
            ])
        }
        return .object([
            ("schema", .string(Who.schema)),
            ("query", .object([
                ("text", string(query.text)), ("all", .bool(query.port == nil)),
                ("transports", .array(query.transports.map { .string($0.rawValue) })), ("port", number(query.port)),
            ])),
            ("privileged", .bool(ownUID == 0)), ("held", .bool(held)),
            ("hiddenSockets", number(reports.flatMap(\.hiddenSockets).count)), ("notes", .array(notes.map(JSON.string))),
            ("ports", .array(ports)),
        ])
    }

    func json() -> String { document().description }
}
