import PortReuse

/// What `portreuse who unix:PATH` prints: who holds a Unix-domain socket file (or an abstract name, `@name`), and
/// whether the file is stale, as text for a person or JSON (schema portreuse.who.unix/1).
package struct WhoUnixOutput {
    package static let schema = "portreuse.who.unix/1"
    package static let prefix = "unix:"

    package let report: UnixSocketFile

    package init(_ report: UnixSocketFile) { self.report = report }

    /// The exit status's meaning: something holds the name.
    package var held: Bool { report.state == .live }

    package func text(style: Style) -> String {
        let word = switch report.state {
        case .live: style.green(report.state.rawValue)
        case .stale, .notASocket: style.yellow(report.state.rawValue)
        case .free: report.state.rawValue
        }
        var lines = ["\(style.bold(Self.prefix + report.path)): \(word): \(report.explanation)"]
        for socket in report.sockets {
            lines.append("  \(socket.type) socket\(socket.listening ? ", listening" : ""), inode \(socket.inode)")
            for process in socket.processes {
                lines.append("    pid \(process.pid) \(process.name)\(process.user.map { " (user \($0))" } ?? ""), fd \(process.descriptor): \(process.commandText)")
            }
            if socket.processes.isEmpty { lines.append("    no process seen" + (report.processesMayBeMissing ? " (some are hidden: run as root to see them)" : "")) }
        }
        if report.processesMayBeMissing, !report.sockets.isEmpty { lines.append(style.dim("  other users' processes are hidden without root: a holder may be missing")) }
        return lines.joined(separator: "\n")
    }

    package func document() -> JSON {
        .object([
            ("schema", .string(Self.schema)), ("path", .string(report.path)), ("abstract", .bool(report.isAbstract)),
            ("state", .string(report.state.rawValue)), ("held", .bool(held)), ("explanation", .string(report.explanation)),
            ("processesMayBeMissing", .bool(report.processesMayBeMissing)),
            ("sockets", .array(report.sockets.map { socket in
                .object([
                    ("inode", .number(Int64(socket.inode))), ("type", .string(socket.type)), ("listening", .bool(socket.listening)),
                    ("processes", .array(socket.processes.map(WhoOutput.json))),
                ])
            })),
        ])
    }

    package func json() -> String { document().description }
}
