import PortReuse
import PortReuseSystem

/// What `portreuse who` was asked: a port (with a transport, family and addresses) or every port.
package struct WhoQuery {
    package var text: String?
    package var transports: [Transport]
    package var port: UInt16?
    package var family: AddressFamily?
    package var addresses: [SocketAddress]

    package init(text: String?, transports: [Transport], port: UInt16?, family: AddressFamily?, addresses: [SocketAddress]) {
        self.text = text
        self.transports = transports
        self.port = port
        self.family = family
        self.addresses = addresses
    }
}

/// What `portreuse who` prints: the reports as text for a person, or JSON (schema portreuse.who/1).
package struct WhoOutput {
    package static let schema = "portreuse.who/1"

    package let query: WhoQuery
    package let reports: [PortReport]
    package let probeUDP: Bool
    package let ownUID = Processes.effectiveUserID

    package init(query: WhoQuery, reports: [PortReport], probeUDP: Bool) {
        self.query = query
        self.reports = reports
        self.probeUDP = probeUDP
    }

    package var held: Bool { reports.contains(where: \.isHeld) }

    /// What could not be seen, in words.
    package var notes: [String] {
        let partial = reports.flatMap(\.hiddenSockets).filter { !$0.holder.processes.isEmpty }
        let hidden = reports.flatMap(\.hiddenSockets).filter { $0.holder.processes.isEmpty }
        let strangers = hidden.filter { $0.holder.uid != ownUID }.count
        let mine = hidden.count - strangers
        var notes: [String] = []
        if !partial.isEmpty {
            notes.append("the descriptors of other users' processes could not be read: \(partial.count == 1 ? "the socket" : "\(partial.count) sockets") "
                + "listed with processes may have more holders than shown: run as root to see them all")
        }
        if strangers > 0 {
            notes.append("\(strangers) socket\(strangers == 1 ? "" : "s") owned by other users: run as root to see \(strangers == 1 ? "its processes" : "their processes")")
        }
        if mine > 0 {
            notes.append("\(mine) socket\(mine == 1 ? "" : "s") of your user with no visible process (not dumpable, or in another PID namespace): run as root to see more")
        }
        return notes
    }

    // MARK: text

    package func text(style: Style) -> String {
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
        if !report.warnings.isEmpty && !report.sockets.isEmpty {
            lines += report.warnings.map { "  " + style.dim("warning") + "  " + style.red($0) }
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
    package func document() -> JSON {
        func counts(_ counts: PortReport.ConnectionCounts) -> JSON {
            .object([("established", .number(Int64(counts.established))), ("timeWait", .number(Int64(counts.timeWait))), ("other", .number(Int64(counts.other)))])
        }
        func bool(_ value: Bool?) -> JSON { .optional(value, JSON.bool) }
        func string(_ value: String?) -> JSON { .optional(value, JSON.string) }
        func number<N: BinaryInteger>(_ value: N?) -> JSON { .optional(value) { .number(Int64($0)) } }

        let ports = reports.filter { $0.isHeld || query.port != nil }.map { report -> JSON in
            let sockets = report.sockets.map { socket -> JSON in
                let holder = socket.holder
                let processes = holder.processes.map(Self.json)
                let sharing = socket.sharing
                return .object([
                    ("address", .string(holder.localAddress.description)), ("ip", .string(holder.localAddress.ip.description)),
                    ("family", .string(holder.localAddress.family.rawValue)), ("state", .string(holder.state.rawValue)),
                    ("inode", number(holder.inode)), ("uid", number(holder.uid)), ("user", string(holder.user)),
                    ("dualStack", bool(holder.dualStack)),
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
                ("warnings", .array(report.warnings.map(JSON.string))), ("sockets", .array(sockets)),
            ])
        }
        return .object([
            ("schema", .string(WhoOutput.schema)),
            ("query", .object([
                ("text", string(query.text)), ("all", .bool(query.port == nil)),
                ("transports", .array(query.transports.map { .string($0.rawValue) })), ("port", number(query.port)),
            ])),
            ("privileged", .bool(ownUID == 0)), ("held", .bool(held)),
            ("hiddenSockets", number(reports.flatMap(\.hiddenSockets).count)), ("notes", .array(notes.map(JSON.string))),
            ("ports", .array(ports)),
        ])
    }

    package func json() -> String { document().description }

    /// A process that holds a socket, as both schemas print it: `pid`, `fd`, `name`, `uid`, `user`, `commandLine`.
    static func json(_ process: PortHolder.Process) -> JSON {
        .object([
            ("pid", .number(Int64(process.pid))), ("fd", .number(Int64(process.descriptor))), ("name", .string(process.name)),
            ("uid", .optional(process.uid) { .number(Int64($0)) }), ("user", .optional(process.user, JSON.string)),
            ("commandLine", .array(process.commandLine.map(JSON.string))),
        ])
    }
}
