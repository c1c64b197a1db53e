import PortReuseSystem

/// Servers whose graceful stop, readiness and hand-over `up` knows, matched by the executable's name (and, for an
/// interpreter, by its arguments): real servers disagree on what stops them gracefully, and a user should not
/// have to find out by losing requests. `--stop-signal`, `--ready` and `--protocol` override every field.
///
/// ``all`` is the one table: `up`'s defaults, its log line, docs/up.md and the README's table come from it, and
/// KnownServerTests verifies every row against the real program (a request in flight when the stop signal
/// arrives is answered, or, for a server that stops at once whatever the signal, is not).
package struct KnownServer: Sendable, CustomStringConvertible {
    /// The server's name, as the table and the log say it.
    package let name: String
    /// The executables' names that run it (a version suffix is allowed: `php8.2`, `python3.11`).
    package let executables: [String]
    /// Arguments that must follow, in order, for an interpreter (`-m http.server`); empty: any.
    package let arguments: [String]
    /// What stops it gracefully: it stops listening and finishes the requests it has.
    package let stopSignal: Int32
    /// Whether it stops at once whatever the signal (a request in flight is cut): then only `up`'s steering, which
    /// holds the stop until the old generation holds no connection, keeps its reloads whole.
    package var stopsAtOnce = false
    /// Whether it forks workers of its own (`up --workers N` would run N of it, each with its workers).
    package var forksWorkers = false
    /// How `up` learns that a generation serves.
    package let readiness: ReadinessCheck
    /// How it takes its sockets (`--protocol`); systemd's LISTEN_FDS also stands for a server that binds by
    /// itself, which up's bind filter hands its own socket.
    package let dialect: Dialect
    /// Why, in words (docs/up.md and `up --help`).
    package let why: String

    package var description: String { name }

    package static let all: [KnownServer] = [
        KnownServer(
            name: "haproxy", executables: ["haproxy"], arguments: [], stopSignal: Signal.user1, readiness: .probe, dialect: .systemd,
            why: "SIGTERM is its hard stop (every connection closed at once); SIGUSR1, its soft stop, stops listening and finishes what it has"),
        KnownServer(
            name: "nginx", executables: ["nginx"], arguments: [], stopSignal: Signal.quit, forksWorkers: true, readiness: .probe, dialect: Dialect.named("nginx")!,
            why: "SIGTERM and SIGINT are its fast shutdown; SIGQUIT is its graceful one; it takes inherited sockets from NGINX"),
        KnownServer(
            name: "unicorn", executables: ["unicorn", "unicorn_rails"], arguments: [], stopSignal: Signal.quit, forksWorkers: true, readiness: .probe,
            dialect: Dialect.named("unicorn")!,
            why: "SIGTERM and SIGINT stop it at once; SIGQUIT lets each worker finish its request; it takes inherited sockets from UNICORN_FD"),
        KnownServer(
            name: "lighttpd", executables: ["lighttpd"], arguments: [], stopSignal: Signal.interrupt, readiness: .probe, dialect: .systemd,
            why: "SIGTERM stops it at once (connections reset); SIGINT is its graceful shutdown"),
        KnownServer(
            name: "gunicorn", executables: ["gunicorn"], arguments: [], stopSignal: Signal.terminate, forksWorkers: true, readiness: .auto, dialect: .systemd,
            why: "SIGTERM is its graceful stop (SIGQUIT and SIGINT are quick: a request in flight gets a 500); it reads LISTEN_FDS and sends READY=1"),
        KnownServer(
            name: "php -S", executables: ["php"], arguments: ["-S"], stopSignal: Signal.terminate, stopsAtOnce: true, readiness: .probe, dialect: .systemd,
            why: "it stops at once whatever the signal: up's steering keeps reloads whole (the old generation's stop waits until it holds no connection)"),
        KnownServer(
            name: "python3 -m http.server", executables: ["python3", "python"], arguments: ["-m", "http.server"], stopSignal: Signal.terminate,
            stopsAtOnce: true, readiness: .probe, dialect: .systemd,
            why: "it stops at once whatever the signal: up's steering keeps reloads whole (the old generation's stop waits until it holds no connection)"),
    ]

    /// The row that runs `command`, or `nil`. `env` and its `NAME=value` assignments in front are looked through.
    package static func matching(_ command: [String]) -> KnownServer? {
        var words = command[...]
        if let first = words.first, Self.baseName(first) == "env" {
            words = words.dropFirst().drop { $0.contains("=") || $0.hasPrefix("-") }
        }
        guard let executable = words.first.map(Self.baseName) else { return nil }
        let rest = Array(words.dropFirst())
        return all.first { row in
            row.executables.contains { executable == $0 || (executable.hasPrefix($0) && executable.dropFirst($0.count).allSatisfy { $0.isNumber || $0 == "." }) }
                && (row.arguments.isEmpty || (0...max(0, rest.count - row.arguments.count)).contains { Array(rest.dropFirst($0).prefix(row.arguments.count)) == row.arguments })
        }
    }

    private static func baseName(_ path: String) -> String { path.split(separator: "/").last.map(String.init) ?? path }

    /// The table as docs/up.md and the README show it (a test compares them).
    package static var markdownTable: String {
        let header = "| server | matched by | stop signal | `--ready` | `--protocol` | why |\n|---|---|---|---|---|---|\n"
        return header + all.map { row in
            let matched = row.executables.map { "`\($0)\(row.arguments.isEmpty ? "" : " " + row.arguments.joined(separator: " "))`" }.joined(separator: ", ")
            return "| \(row.name) | \(matched) | \(SignalName(row.stopSignal)) | \(row.readiness) | \(row.dialect.name) | \(row.why) |\n"
        }.joined()
    }
}

/// `up`'s stop signal, readiness and `--protocol`: the flags given, else the known server's, else the defaults
/// (SIGTERM, auto, systemd); and the words that say so in the log.
package struct UpDefaults: Sendable {
    package var stopSignal: Int32
    package var readiness: ReadinessCheck
    package var dialect: Dialect
    /// What the known server set and what the flags kept, for the log line of each generation's start.
    package var note: String?
    /// The known server's name when it forks workers of its own (said once with `--workers`).
    package var forksWorkers: String?

    /// A known server's `--protocol` applies where it can hand over `listen` (and not with `reuseport`, where up
    /// hands over no socket).
    package init(command: [String], stopSignal: Int32?, readiness: ReadinessCheck?, dialect: Dialect?, listen: [ListenSpec], reuseport: Bool) {
        let known = KnownServer.matching(command)
        let knownDialect = known.map(\.dialect).flatMap { reuseport || $0.refusal(count: listen.count, transports: listen.map(\.transport)) != nil ? nil : $0 }
        self.dialect = dialect ?? knownDialect ?? .systemd
        self.stopSignal = stopSignal ?? (known?.stopSignal ?? self.dialect.stopSignal)
        self.readiness = readiness ?? known?.readiness ?? .auto
        guard let known else { return }
        forksWorkers = known.forksWorkers ? known.name : nil
        var set: [String] = []
        var kept: [String] = []
        if stopSignal == nil { set.append("stop signal \(SignalName(known.stopSignal))") } else { kept.append("--stop-signal") }
        if readiness == nil { set.append("--ready \(known.readiness)") } else { kept.append("--ready") }
        if dialect != nil { kept.append("--protocol") } else if knownDialect != nil, known.dialect.name != Dialect.systemd.name { set.append("--protocol \(known.dialect.name)") }
        note = "known server \(known.name)" + (set.isEmpty ? "" : ": " + set.joined(separator: ", "))
            + (kept.isEmpty ? "" : "; yours: " + kept.joined(separator: ", "))
    }
}
