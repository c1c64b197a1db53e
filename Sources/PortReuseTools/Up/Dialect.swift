import PortReuse
import PortReuseSystem

/// How a supervisor tells its program which descriptors are its sockets (`--protocol NAME`): `up` speaks each
/// one, so a program written for nginx's, Server::Starter's, einhorn's, gunicorn's, unicorn's, puma's or catflap's
/// hand-over runs under `up` unchanged. The sockets are always descriptors 3, 4, … in `--listen` order (not
/// close-on-exec); a dialect only says what the environment tells the program about them.
///
/// ``all`` is the one table: the CLI's names, the environment of each generation, the variables `up` strips from
/// what it inherited, the default stop signals and docs/up.md's table all come from it.
package struct Dialect: Sendable, CustomStringConvertible {
    /// What a dialect's variables are made of, for one generation.
    package struct Context: Sendable {
        /// The sockets as the generation numbers them (3, 4, …), in `--listen` order.
        package var sockets: [(number: Int32, name: String, transport: Transport, endpoint: Endpoint)]
        /// The generation's number (1 for the first).
        package var generation: Int
        /// `up`'s own pid: the generation's parent.
        package var supervisorPID: Int32
    }

    /// The `--protocol` name.
    package let name: String
    /// Whose hand-over it is, for docs/up.md.
    package let supervisor: String
    /// Every variable the dialect owns (a trailing `*`: any name with that prefix): `up` strips them all, of
    /// every dialect, from what it inherited, so that only the chosen dialect's, made for this generation, reach it.
    package let variables: [String]
    /// What asks a program of this supervisor to stop gracefully (`--stop-signal` overrides it).
    package let stopSignal: Int32
    /// How many sockets it can express (`nil`: any number).
    package let maximumSockets: Int?
    /// Whether it can name a UDP socket.
    package let carriesUDP: Bool
    /// Whether the spawn sets `LISTEN_PID` and `LISTEN_PIDFDID` (systemd's) in the program's own process, before
    /// it execs: values only that process knows.
    package let setsListenPID: Bool
    /// What the tests run it with, for docs/up.md.
    package let testedWith: String
    /// What a user should know, for docs/up.md.
    package let notes: String
    /// The variables `up` sets for a generation (besides `NOTIFY_SOCKET`, which every dialect gets).
    let assignments: @Sendable (Context) -> [(String, String)]
    /// Whether the program takes its inherited TCP sockets as its own supervisor hands them: non-blocking. nginx
    /// never sets O_NONBLOCK on an inherited socket (its old master made it so); on a blocking one a worker
    /// woken with the others blocks in accept() with the connection it accepted before unserved, and ignores its
    /// stop. `up` makes the held sockets non-blocking before each generation of such a dialect starts.
    package var nonBlockingSockets = false

    package var description: String { name }

    /// The dialect named `name`, or `nil`.
    package static func named(_ name: String) -> Dialect? { all.first { $0.name == name } }

    package static let systemd = all[0]

    /// The generation's variables, as `NAME=value` entries.
    package func environment(_ context: Context) -> [String] {
        assignments(context).map { "\($0.0)=\($0.1)" }
    }

    /// Why this dialect cannot hand over these sockets, with what to do instead; `nil` when it can.
    package func refusal(count: Int, transports: [Transport]) -> String? {
        if let maximumSockets, count > maximumSockets {
            return "--protocol \(name) hands over \(maximumSockets) socket only, and up holds \(count): give one --listen, or use --protocol systemd"
        }
        if !carriesUDP, transports.contains(.udp) {
            return "--protocol \(name) cannot name a UDP socket: drop the udp: --listen, or use --protocol systemd"
        }
        return nil
    }

    /// Whether `entry` (`NAME=value`) is a variable of any dialect: `up` never passes one it inherited on.
    package static func isDialectVariable(_ entry: String) -> Bool {
        guard let equals = entry.firstIndex(of: "=") else { return false }
        let name = entry[..<equals]
        return all.contains { dialect in
            dialect.variables.contains { $0.hasSuffix("*") ? name.hasPrefix($0.dropLast()) : name == $0 }
        }
    }

    // MARK: The table

    package static let all: [Dialect] = [
        Dialect(
            name: "systemd", supervisor: "systemd socket activation (the default)",
            variables: ["LISTEN_FDS", "LISTEN_FDNAMES", "LISTEN_PID", "LISTEN_PIDFDID"], stopSignal: Signal.terminate,
            maximumSockets: nil, carriesUDP: true, setsListenPID: true,
            testedWith: "gunicorn, Swift (PortReuse), SwiftNIO, Python `socket.fromfd`, systemd-socket-activate",
            notes: "LISTEN_PID and LISTEN_PIDFDID (the inode number of the program's pidfd, as systemd 254+ sets it; none where pidfds are not on pidfs) are set in the program's own process before it execs",
            assignments: { context in
                [("LISTEN_FDS", "\(context.sockets.count)"), ("LISTEN_FDNAMES", context.sockets.map(\.name).joined(separator: ":"))]
            }),
        Dialect(
            name: "nginx", supervisor: "nginx's binary upgrade", variables: ["NGINX"], stopSignal: Signal.quit,
            maximumSockets: nil, carriesUDP: true, setsListenPID: false, testedWith: "nginx 1.22 (nginx-light)",
            notes: "nginx matches each inherited socket to a `listen` directive by address and acts as already daemonised; run it with `-g 'daemon off;'`",
            assignments: { context in [("NGINX", context.sockets.map { "\($0.number);" }.joined())] }, nonBlockingSockets: true),
        Dialect(
            name: "server-starter", supervisor: "Server::Starter (`start_server`)",
            variables: ["SERVER_STARTER_PORT", "SERVER_STARTER_GENERATION"], stopSignal: Signal.terminate,
            maximumSockets: nil, carriesUDP: true, setsListenPID: false, testedWith: "Starlet (`plackup -s Starlet`)",
            notes: "keys as `start_server` writes them: `8000` for an IPv4 wildcard, `host:port`, `[v6]:port`",
            assignments: { context in
                [
                    ("SERVER_STARTER_PORT", context.sockets.map { "\(serverStarterKey($0.endpoint))=\($0.number)" }.joined(separator: ";")),
                    ("SERVER_STARTER_GENERATION", "\(context.generation)"),
                ]
            }),
        Dialect(
            name: "einhorn", supervisor: "einhorn",
            variables: ["EINHORN_FD_COUNT", "EINHORN_FD_*", "EINHORN_FDS", "EINHORN_MASTER_PID", "EINHORN_SOCK_PATH", "EINHORN_SOCK_FD"],
            stopSignal: Signal.user2, maximumSockets: nil, carriesUDP: true, setsListenPID: false,
            testedWith: "a test program that reads them as einhorn's Go and Ruby clients do",
            notes: "EINHORN_MASTER_PID is up's pid, the program's parent, as `Einhorn::Worker.ensure_worker!` checks; no command socket, so no `worker:ack` (readiness: probe)",
            assignments: { context in
                [("EINHORN_FD_COUNT", "\(context.sockets.count)")]
                    + context.sockets.enumerated().map { ("EINHORN_FD_\($0.offset)", "\($0.element.number)") }
                    + [("EINHORN_FDS", context.sockets.map { "\($0.number)" }.joined(separator: " ")), ("EINHORN_MASTER_PID", "\(context.supervisorPID)")]
            }),
        Dialect(
            name: "gunicorn", supervisor: "gunicorn's re-exec (USR2)", variables: ["GUNICORN_FD", "GUNICORN_PID"],
            stopSignal: Signal.terminate, maximumSockets: nil, carriesUDP: false, setsListenPID: false,
            testedWith: "gunicorn (PyPI)",
            notes: "gunicorn reads GUNICORN_FD only beside GUNICORN_PID (its old master; here up, its parent): it then ignores its own USR2 (\"Parent exists\") and writes its `--pid` file as PATH.2",
            assignments: { context in
                [("GUNICORN_FD", context.sockets.map { "\($0.number)" }.joined(separator: ",")), ("GUNICORN_PID", "\(context.supervisorPID)")]
            }),
        Dialect(
            name: "unicorn", supervisor: "unicorn's re-exec (USR2)", variables: ["UNICORN_FD"], stopSignal: Signal.quit,
            maximumSockets: nil, carriesUDP: false, setsListenPID: false,
            testedWith: "a test program that reads it as unicorn's `HttpServer#start` does",
            notes: "QUIT is unicorn's graceful stop (TERM stops at once)",
            assignments: { context in [("UNICORN_FD", context.sockets.map { "\($0.number)" }.joined(separator: ","))] }),
        Dialect(
            name: "puma", supervisor: "puma's hot restart", variables: ["PUMA_INHERIT_*"], stopSignal: Signal.terminate,
            maximumSockets: nil, carriesUDP: false, setsListenPID: false,
            testedWith: "a test program that reads them as puma's `Binder#create_inherited_fds` does",
            notes: "puma uses an inherited socket for the `--bind` whose URL is the same (`tcp://127.0.0.1:8080`)",
            assignments: { context in
                context.sockets.enumerated().map { ("PUMA_INHERIT_\($0.offset)", "\($0.element.number):\(pumaURL($0.element.endpoint))") }
            }),
        Dialect(
            name: "catflap", supervisor: "catflap and systemfd's `LISTEN_FD`", variables: ["LISTEN_FD"], stopSignal: Signal.terminate,
            maximumSockets: 1, carriesUDP: true, setsListenPID: false,
            testedWith: "a test program that reads it as catflap's clients do",
            notes: "one socket only",
            assignments: { context in context.sockets.first.map { [("LISTEN_FD", "\($0.number)")] } ?? [] }),
    ]

    /// A socket's key in `SERVER_STARTER_PORT`, as `start_server --port` writes it.
    static func serverStarterKey(_ endpoint: Endpoint) -> String {
        switch endpoint {
        case .ip(let address): address.family == .ipv4 && address.ip.isUnspecified ? "\(address.port)" : "\(address)"
        case .unix(let path): path
        }
    }

    /// A socket's URL as puma's `--bind` writes it: `tcp://127.0.0.1:8080`, `unix:///run/app.sock`.
    static func pumaURL(_ endpoint: Endpoint) -> String {
        switch endpoint {
        case .ip(let address): "tcp://\(address)"
        case .unix(let path): "unix://\(path)"
        }
    }

    /// docs/up.md's table of dialects, made from ``all`` (a test checks that the page shows exactly this).
    package static var markdownTable: String {
        let example = Context(
            sockets: [
                (3, "web", .tcp, .ip(SocketAddress(ip: IPAddress("127.0.0.1")!, port: 8080))),
                (4, "admin", .tcp, .ip(SocketAddress(ip: IPAddress("::1")!, port: 8443))),
            ],
            generation: 2, supervisorPID: 4242)
        let rows = all.map { dialect in
            var shown = example
            if let maximum = dialect.maximumSockets { shown.sockets = Array(shown.sockets.prefix(maximum)) }
            let variables = dialect.environment(shown).map { "`\($0)`" }.joined(separator: " ")
            return "| `\(dialect.name)` | \(dialect.supervisor) | \(variables) | \(SignalName(dialect.stopSignal)) | \(dialect.testedWith) | \(dialect.notes) |"
        }
        return (["| `--protocol` | hand-over of | a generation gets (for `--listen web=127.0.0.1:8080 --listen admin=[::1]:8443`, generation 2, up's pid 4242) | stop signal | tested with | notes |",
                 "|---|---|---|---|---|---|"] + rows).joined(separator: "\n")
    }
}
