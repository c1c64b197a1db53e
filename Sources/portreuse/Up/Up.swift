import ArgumentParser
import PortReuse
import PortReuseTools
import PortReuseSystem
import SystemPackage

/// `portreuse up`: a zero-downtime supervisor. It opens the sockets once, hands them to the program by
/// systemd socket activation, and on a reload starts the new version beside the old one, switching over
/// only once the new one is ready.
struct Up: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a server and restart or upgrade it without refusing a single connection.",
        usage: """
            portreuse up --listen [NAME=]ADDR [--listen ...] [--protocol NAME] [--ready <mode>] [--ready-timeout S] [--grace S] [--stop-signal SIG] [--health ADDR] [--stop-delay S] [--pid-file PATH] -- <command> [<argument> ...]
            portreuse up reload --pid-file PATH
            portreuse up status [--json] --pid-file PATH
            portreuse up upgrade --pid-file PATH
            """,
        discussion: """
            up opens every --listen socket once (SO_REUSEADDR, so up itself can restart at once) and \
            starts the command with them by systemd socket activation: descriptors 3, 4, … with LISTEN_FDS, \
            LISTEN_FDNAMES and LISTEN_PID, and a NOTIFY_SOCKET for readiness. --protocol speaks another \
            supervisor's hand-over instead (\(Dialect.all.dropFirst().map(\.name).joined(separator: ", "))): the same \
            descriptors, that supervisor's variables. Programs that read LISTEN_FDS \
            (gunicorn, uvicorn --fd, systemd-aware servers, Swift servers using PortReuse's \
            Listener.activated) need no change.

            On SIGHUP (or `portreuse up reload`) up starts a new generation beside the old one, waits \
            until it is ready, then switches new connections over to it. Each generation has a socket (TCP or \
            UDP) of its own in one SO_REUSEPORT group that up holds and steers with a BPF program (eBPF where up \
            may load it, which also moves connections left queued on a retired socket; else classic BPF): only \
            up's readiness probe reaches a starting generation, and the old one gets no new connection after the \
            switch-over and its stop signal once it holds none (--drain-timeout at most), then --grace to finish. \
            --shared-socket hands every generation the same socket instead. A new generation that exits, shuts \
            its socket down or is not ready in time is stopped and the old one keeps serving. SIGHUPs that arrive while a new \
            generation starts are coalesced into one more reload after it. Any number of old generations may \
            drain side by side. SIGUSR2 (or `portreuse up upgrade`) replaces up's own binary in place, keeping the \
            sockets and the running program.

            Readiness (--ready): notify waits for READY=1 on NOTIFY_SOCKET; probe waits until the new \
            generation accepts a connection on the first TCP socket; delay:S waits S; auto (the default) \
            uses notify when the program sends anything, else probe.

            Servers up knows by the executable's name get their graceful stop signal, --ready and --protocol \
            without flags (the flags override; the log line of each generation's start says what was picked): \
            \(KnownServer.all.map { "\($0.name) (\(SignalName($0.stopSignal)))" }.joined(separator: ", ")). \
            See docs/up.md, "Servers up knows".

            Examples:
              Serve; the program gets 127.0.0.1:8080 as descriptor 3:
                portreuse up --listen 127.0.0.1:8080 --pid-file /tmp/app.pid -- ./app
              Reload with no failed request, and wait for the outcome:
                portreuse up reload --pid-file /tmp/app.pid     (or: kill -HUP PID)
              Named sockets, TCP and UDP:
                portreuse up --listen web=0.0.0.0:80 --listen dns=udp:0.0.0.0:53 -- ./app
              gunicorn reads LISTEN_FDS itself:
                portreuse up --listen 8000 -- gunicorn app:app
              A single-process server on both cores: 2 workers, each on a socket of its own:
                portreuse up --listen 127.0.0.1:8080 --workers 2 -- python3 -m http.server 8080 --bind 127.0.0.1
              A Unix-domain socket for a proxy (a stale file is replaced, a live one refused):
                portreuse up --listen unix:/tmp/app.sock --unix-mode 660 -- gunicorn app:app
              What runs now:
                portreuse up status --pid-file /tmp/app.pid
              Move a running server (pid 4242, started by hand) under up with no failed connection:
                portreuse up --adopt 4242 --listen 127.0.0.1:8080 -- ./server
              nginx, known: up speaks its NGINX="3;" and stops it with QUIT (its graceful stop):
                portreuse up --listen 127.0.0.1:8080 -- nginx -c /path/to/nginx.conf -g 'daemon off;'
              In a Kubernetes pod: probes on /readyz and /livez, metrics, 5 s out of rotation before the drain:
                portreuse up --listen 0.0.0.0:8080 --health 0.0.0.0:9090 --stop-delay 5s -- ./server
              A Server::Starter program (SERVER_STARTER_PORT; Starlet defers accept, so no probe):
                portreuse up --protocol server-starter --ready delay:2 --listen 127.0.0.1:5000 -- plackup -s Starlet app.psgi

            A program that binds a held address by itself (a Go, Python or Java server given the same \
            address) gets up's socket in place of its own: each generation starts under a seccomp filter \
            (Linux 5.9+) whose binds up answers, so all generations share one accept queue \
            (--no-intercept: LISTEN_FDS only).

            --reuseport is for programs that bind by themselves and cannot take sockets: each generation runs \
            under the `portreuse run` shim with SO_REUSEPORT and the generations overlap. The kernel then \
            resets the connections still queued on the old generation's socket when it closes, unless \
            net.ipv4.tcp_migrate_req=1 (sysctl -w net.ipv4.tcp_migrate_req=1); prefer socket activation.

            Exit status: 0 after a clean stop; 1 when a generation had to be killed after --grace; 3 when a \
            socket could not be opened; 4 when the program failed 5 times in a row without ever being ready; \
            64 for bad arguments; 126/127 when the command cannot run or is not found. up reload: 0 when \
            the new generation is ready, 1 when it failed.

            The flags --reload, --status and --upgrade of earlier releases still work (hidden) and will go \
            in the next release: use the subcommands.
            """,
        subcommands: [UpServe.self, UpReload.self, UpStatusCommand.self, UpUpgrade.self, UpCheckHandover.self],
        defaultSubcommand: UpServe.self
    )
}

extension Up {
    /// `--health`: a TCP address with a port (0 picks one, which up's log shows).
    static func healthAddress(_ text: String) throws -> Address {
        let address: Address
        do { address = try Address(text) } catch { throw ValidationError("--health \(text): \(error)") }
        guard address.network?.transport ?? .tcp == .tcp else { throw ValidationError("--health \(text): the health endpoint speaks HTTP: give a TCP address, as in 127.0.0.1:9090") }
        return address
    }
}

/// The pid file that names a running `up`: shared by serving and by the commands that talk to it.
struct UpPIDFile: ParsableArguments {
    @Option(help: ArgumentHelp("The pid file of the running up (its status is PATH.status).", valueName: "path"))
    var pidFile: String
}

/// `portreuse up reload`: asks the running up to reload and waits for the outcome of exactly that reload.
struct UpReload: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "reload",
        abstract: "Reload the up of --pid-file and wait until the new generation is ready or failed (exit 0 or 1; 124 past --timeout).",
        discussion: """
            Example:
              portreuse up reload --pid-file /tmp/app.pid     (the same as kill -HUP, but waits and reports)
              portreuse up reload --json --pid-file /tmp/app.pid   (the report of exactly this reload, for scripts)
            """)

    @OptionGroup var target: UpPIDFile

    @Option(parsing: .unconditional, help: ArgumentHelp("How long to wait for the new generation's outcome, as in 30s (default: 60s); past it, exit 124 and up goes on with the reload.", valueName: "duration"),
        transform: { try Seconds(parsing: $0, option: "--timeout") })
    var timeout = Seconds(60)

    @Flag(help: "Print this reload's record as one JSON object: generation, result, seconds, listenOverflows, listenDrops, peakAcceptQueue, backlog, connectionsOnOlderGenerations, workers.")
    var json = false

    func run() throws {
        try CommandFailure.reporting { try UpClient(pidFile: target.pidFile, timeout: timeout.value).run(json ? .reloadJSON : .reload) }
    }
}

/// `portreuse up status`: what runs now.
struct UpStatusCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "Show the generations, sockets and reloads of the up of --pid-file.",
        discussion: """
            Example:
              portreuse up status --pid-file /tmp/app.pid
              portreuse up status --json --pid-file /tmp/app.pid | python3 -m json.tool
            """)

    @OptionGroup var target: UpPIDFile

    @Flag(help: "Print JSON (schema portreuse.up/1).")
    var json = false

    func run() throws {
        try CommandFailure.reporting { try UpClient(pidFile: target.pidFile, timeout: 0).run(json ? .statusJSON : .status) }
    }
}

/// `portreuse up upgrade`: in-place upgrade of up's own binary.
struct UpUpgrade: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "upgrade",
        abstract: "Ask the up of --pid-file to replace its own binary in place, keeping sockets and program.",
        discussion: """
            Example:
              cp .build/release/portreuse /usr/local/bin/portreuse && portreuse up upgrade --pid-file /tmp/app.pid
            """)

    @OptionGroup var target: UpPIDFile

    func run() throws {
        try CommandFailure.reporting { try UpClient(pidFile: target.pidFile, timeout: 60).run(.upgrade) }
    }
}

/// `portreuse up check-handover PATH` (hidden): what a running `up` asks of a new binary before it becomes it.
struct UpCheckHandover: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check-handover", abstract: "Read the state an upgrading up hands over (used by up itself).", shouldDisplay: false)

    @Argument(help: ArgumentHelp("The state file.", valueName: "path"))
    var path: String

    func run() throws {
        try CommandFailure.reporting {
            let state = try UpgradeHandover.read(from: path)
            print("ok: \(state.record.generations.count) generation(s), \(state.sockets.count) socket(s)")
        }
    }
}

/// `portreuse up [serve] …`: hold the sockets and supervise the program (the default subcommand).
struct UpServe: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Hold the --listen sockets and run the program on them, reloading it on SIGHUP (the default).",
        usage: "portreuse up --listen [NAME=]ADDR [--listen ...] [options] -- <command> [<argument> ...]")

    @Option(
        name: .customLong("listen"),
        help: ArgumentHelp(
            "A socket to hold and hand over: [NAME=]ADDR, as in 8080, 127.0.0.1:8080, web=[::1]:443, udp:0.0.0.0:53, unix:/run/app.sock.",
            discussion: "Repeat for several. NAME goes into LISTEN_FDNAMES (default: unknown). unix:PATH (or unix:@NAME, abstract) is a Unix-domain stream socket: a stale file there is replaced, a live one refused; up removes it when it stops.", valueName: "address"),
        transform: { try ListenSpec(parsing: $0) })
    var listen: [ListenSpec] = []

    @Option(help: ArgumentHelp("How to know a generation is ready: auto, notify, probe or delay:SECONDS (default: a known server's, else auto).", valueName: "mode"), transform: { try ReadinessCheck(parsing: $0) })
    var ready: ReadinessCheck?

    @Option(parsing: .unconditional, help: ArgumentHelp("How long a new generation may take to become ready, as in 60, 1.5, 500ms, 2m (default: 60s).", valueName: "duration"), transform: { try Seconds(parsing: $0, option: "--ready-timeout") })
    var readyTimeout: Seconds?

    @Option(parsing: .unconditional, help: ArgumentHelp("How long an old generation may drain after the stop signal before SIGKILL (default: 30s).", valueName: "duration"), transform: { try Seconds(parsing: $0, option: "--grace") })
    var grace: Seconds?

    @Option(help: ArgumentHelp("The signal that asks a generation to stop: TERM, INT, QUIT, WINCH, … (default: a known server's, else the --protocol's, else TERM).", valueName: "signal"), transform: { try SignalName.parse($0) })
    var stopSignal: SignalName?

    @Option(
        name: .customLong("protocol"),
        help: ArgumentHelp(
            "How the program learns its sockets: \(Dialect.all.map(\.name).joined(separator: ", ")) (default: a known server's, else systemd).",
            discussion: "The environment of another supervisor, so that a program written for it runs unchanged; also sets the default --stop-signal (nginx, unicorn: QUIT; einhorn: USR2).",
            valueName: "name"),
        transform: { try Dialect.parse($0) })
    var dialect: Dialect?

    @Option(help: ArgumentHelp("Write up's pid here (and its status to PATH.status) for up reload, up status and up upgrade.", valueName: "path"))
    var pidFile: String?

    @Flag(help: "Fallback for programs that bind by themselves: run each generation under the shim with SO_REUSEPORT.")
    var reuseport = false

    @Flag(name: .customLong("dual-stack"), help: ArgumentHelp(
        "Open IPv6 --listen addresses dual-stack (IPV6_V6ONLY off): [::]:P then takes IPv4 too, and no other user can take either half of the port."))
    var dualStack = false

    @Flag(name: .customLong("init"), help: ArgumentHelp(
        "Exit with the status of the generation that served when up was stopped (its exit code, or 128 + signal), as a container's entrypoint should; always so when up is PID 1."))
    var exitsWithProgram = false

    @Option(help: ArgumentHelp(
        "Take the --listen sockets from this running server (pidfd_getfd: root, or the same user as ptrace allows), start generation 1 on them, and send the server the stop signal once it is ready.",
        valueName: "pid"))
    var adopt: Int32?

    @Flag(help: "With --adopt: adopt a server that runs as another user; its next generations then run as up's user (refused without it).")
    var adoptAnyUser = false

    @Flag(help: "Start each generation with LISTEN_FDS only, without the bind filter that gives a program binding a held address the held socket.")
    var noIntercept = false

    @Flag(help: "Send a draining generation its stop signal at a moment it holds no connection (within 5 s), for programs that die at once on it (python3 -m http.server). Steered generations always drain so.")
    var stopWhenIdle = false

    @Option(
        parsing: .unconditional,
        help: ArgumentHelp(
            "How long a generation taken out of rotation may keep connections before it gets the stop signal anyway, as in 10s (default: 10s).",
            discussion: "After a reload's cutover the old generation gets no new connection; its stop signal waits until its queue is empty and it holds no connection.",
            valueName: "duration"),
        transform: { try Seconds(parsing: $0, option: "--drain-timeout") })
    var drainTimeout: Seconds?

    @Flag(help: "Hand every generation the same socket (one accept queue), instead of a socket of its own steered by up.")
    var sharedSocket = false

    @Option(
        help: ArgumentHelp("The permissions of the unix: --listen socket files up creates, in octal, as in 660 (default: as the umask makes them).", valueName: "mode"),
        transform: { text in
            guard let mode = UInt16(text, radix: 8), mode <= 0o777 else { throw ValidationError("--unix-mode \(text): give octal permissions such as 660 or 0600") }
            return mode
        })
    var unixMode: UInt16?

    @Option(help: ArgumentHelp("The owner (user name or id) of the unix: --listen socket files up creates (needs privilege).", valueName: "user"))
    var unixOwner: String?

    @Option(help: ArgumentHelp("The group (name or id) of the unix: --listen socket files up creates, as in www-data for a proxy of that group.", valueName: "group"))
    var unixGroup: String?

    @Option(
        help: ArgumentHelp(
            "Run each generation as N copies of the program, each on a socket of its own that up steers to.",
            discussion: "New connections are spread over the serving generation's workers by their hash; a worker that exits is replaced alone. For single-process servers (python3 -m http.server, node without cluster): a program that forks its own workers (gunicorn -w, nginx) would run N times over.",
            valueName: "n"))
    var workers = 1

    @Option(
        help: ArgumentHelp(
            "Serve up's own HTTP endpoints on this TCP address: /readyz, /livez and /metrics (Prometheus), as in 127.0.0.1:9090 or :9090.",
            discussion: "/readyz: 200 while a generation is ready and up is not stopping, else 503; /livez: 200 while the supervisor runs. Never handed to the program.",
            valueName: "address"),
        transform: { try Up.healthAddress($0) })
    var health: Address?

    @Option(
        parsing: .unconditional,
        help: ArgumentHelp(
            "On SIGTERM or SIGINT, answer 503 on /readyz and keep serving this long before draining, as in 5s (default: 0).",
            discussion: "The preStop sleep of a Kubernetes pod, built in; reloads are refused meanwhile, a second SIGTERM stops at once.",
            valueName: "duration"),
        transform: { try Seconds(parsing: $0, option: "--stop-delay") })
    var stopDelay: Seconds?

    @Flag(help: .hidden)
    var reload = false

    @Flag(help: .hidden)
    var status = false

    @Flag(help: .hidden)
    var json = false

    @Flag(help: .hidden)
    var upgrade = false

    @Argument(parsing: .captureForPassthrough, help: ArgumentHelp("The program and its arguments.", valueName: "command"))
    var command: [String] = []

    var isClient: Bool { reload || status || upgrade }

    mutating func validate() throws {
        if command.first == "--" { command.removeFirst() }
        if let first = command.first, ["-h", "--help", "-help"].contains(first) { throw CleanExit.helpRequest(Self.self) }
        if [reload, status, upgrade].filter({ $0 }).count > 1 { throw ValidationError("choose one of --reload, --status and --upgrade") }
        if json && !status { throw ValidationError("--json goes with --status") }
        if isClient {
            guard pidFile != nil else { throw ValidationError("--reload, --status and --upgrade need the --pid-file of the running up") }
            guard command.isEmpty else { throw ValidationError("--reload, --status and --upgrade take no command") }
            let given: [(String, Bool)] = [
                ("--listen", !listen.isEmpty), ("--ready", ready != nil), ("--ready-timeout", readyTimeout != nil), ("--grace", grace != nil),
                ("--stop-signal", stopSignal != nil), ("--protocol", dialect != nil), ("--reuseport", reuseport), ("--no-intercept", noIntercept), ("--stop-when-idle", stopWhenIdle),
                ("--drain-timeout", drainTimeout != nil), ("--shared-socket", sharedSocket), ("--workers", workers != 1),
                ("--adopt", adopt != nil), ("--adopt-any-user", adoptAnyUser), ("--init", exitsWithProgram), ("--health", health != nil), ("--stop-delay", stopDelay != nil),
            ]
            let serving = given.filter(\.1).map(\.0)
            if !serving.isEmpty {
                let options = serving.joined(separator: ", ")
                throw ValidationError(
                    "\(options) \(serving.count == 1 ? "serves a program and does" : "serve a program and do") nothing beside --reload, --status or --upgrade; drop \(serving.count == 1 ? "it" : "them") (see portreuse up reload --help)")
            }
            return
        }
        guard let first = command.first else {
            throw ValidationError("give the program to run after --, as in: portreuse up --listen 127.0.0.1:8080 -- python3 server.py")
        }
        if first.hasPrefix("-") {
            throw ValidationError("unknown option '\(first)' (put the program after --, as in: portreuse up --listen 8080 -- PROGRAM)")
        }
        guard options.readyTimeout > 0 else { throw ValidationError("--ready-timeout must be more than 0") }
        if case .delay(let seconds) = options.readiness, seconds >= options.readyTimeout {
            throw ValidationError("--ready delay:\(Seconds(seconds)) must be shorter than --ready-timeout \(Seconds(options.readyTimeout))")
        }
        if let adopt {
            guard adopt > 0 else { throw ValidationError("--adopt \(adopt): give the pid of the running server (portreuse who PORT shows it)") }
            guard !listen.isEmpty else { throw ValidationError("--adopt needs the --listen addresses to take from pid \(adopt), as in --adopt \(adopt) --listen 127.0.0.1:8080") }
            guard !reuseport else { throw ValidationError("--adopt and --reuseport do not go together: up holds the adopted sockets") }
        } else if adoptAnyUser {
            throw ValidationError("--adopt-any-user goes with --adopt PID")
        }
        if let refusal = (dialect ?? .systemd).refusal(count: listen.count, transports: listen.map(\.transport)) { throw ValidationError(refusal) }
        let unix = listen.filter { $0.address == nil }
        if unixMode != nil || unixOwner != nil || unixGroup != nil {
            guard unix.contains(where: { if case .unix(let path) = $0.target { !path.hasPrefix("@") } else { false } }) else {
                throw ValidationError("--unix-mode, --unix-owner and --unix-group set the files of unix: --listen sockets (as in --listen unix:/run/app.sock); there is none")
            }
        }
        if let unixOwner, Processes.userID(unixOwner) == nil { throw ValidationError("--unix-owner \(unixOwner): no such user") }
        if let unixGroup, Processes.groupID(unixGroup) == nil { throw ValidationError("--unix-group \(unixGroup): no such group") }
        if !unix.isEmpty && (reuseport || adopt != nil) {
            throw ValidationError("--listen \(unix[0]): a Unix-domain socket is opened and held by up; it does not go with \(reuseport ? "--reuseport" : "--adopt")")
        }
        guard (1...WorkerPoolOptions.maximum).contains(workers) else {
            throw ValidationError("--workers \(workers): give 1 to \(WorkerPoolOptions.maximum) (one per core is the usual choice)")
        }
        if workers > 1 && reuseport {
            throw ValidationError(
                "--workers and --reuseport do not go together: each worker gets a socket of up's; drop --reuseport (the bind filter gives a program that binds by itself its worker's socket)")
        }
        if reuseport && dialect != nil { throw ValidationError("--protocol hands over up's sockets, and --reuseport holds none: drop one of them") }
        if reuseport && (listen.isEmpty || listen.contains { ($0.address?.port ?? 0) == 0 }) {
            throw ValidationError("--reuseport needs the --listen addresses the program binds (with their ports), to see when a generation listens")
        }
    }

    var options: UpOptions {
        // The flags given, else what up knows of the server (KnownServer), else the defaults.
        let defaults = UpDefaults(
            command: command, stopSignal: stopSignal?.number, readiness: ready, dialect: dialect, listen: listen, reuseport: reuseport)
        var options = UpOptions(
            listen: listen, readiness: defaults.readiness, readyTimeout: readyTimeout?.value ?? 60, grace: grace?.value ?? 30,
            stopSignal: defaults.stopSignal, pidFile: pidFile, reuseport: reuseport, dualStack: dualStack, command: command)
        options.intercept = !noIntercept
        options.dialect = defaults.dialect
        options.serverNote = defaults.note
        options.stopWhenIdle = stopWhenIdle ? 5 : nil
        options.adopt = adopt
        options.adoptAnyUser = adoptAnyUser
        options.exitsWithProgram = exitsWithProgram
        options.health = health
        options.stopDelay = stopDelay?.value ?? 0
        options.drainTimeout = drainTimeout?.value ?? 10
        options.steers = !sharedSocket
        options.workers = workers
        options.unixFiles = UnixFileSettings(
            permissions: unixMode.map { FilePermissions(rawValue: CModeT($0)) }, owner: unixOwner.flatMap(Processes.userID), group: unixGroup.flatMap(Processes.groupID))
        options.serverForksWorkers = defaults.forksWorkers
        return options
    }

    func run() throws {
        try CommandFailure.reporting {
            if isClient {
                let request: UpClient.Request = reload ? .reload : upgrade ? .upgrade : json ? .statusJSON : .status
                try UpClient(pidFile: pidFile!, timeout: 60).run(request)
                return
            }
            let code = try options.serve()
            if code != 0 { throw ExitCode(code) }
        }
    }
}
