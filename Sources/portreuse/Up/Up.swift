import ArgumentParser
import Glibc
import PortReuse
import PortReuseTools

/// `portreuse up`: a zero-downtime supervisor. It opens the sockets once, hands them to the program by
/// systemd socket activation, and on a reload starts the new version beside the old one, switching over
/// only once the new one is ready.
struct Up: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a server and restart or upgrade it without refusing a single connection.",
        usage: """
            portreuse up --listen [NAME=]ADDR [--listen ...] [--ready <mode>] [--ready-timeout S] [--grace S] [--stop-signal SIG] [--pid-file PATH] -- <command> [<argument> ...]
            portreuse up --reload --pid-file PATH
            portreuse up --status [--json] --pid-file PATH
            portreuse up --upgrade --pid-file PATH
            """,
        discussion: """
            up opens every --listen socket once (policy restartable, so up itself can restart at once) and \
            starts the command with them by systemd socket activation: descriptors 3, 4, … with LISTEN_FDS, \
            LISTEN_FDNAMES and LISTEN_PID, and a NOTIFY_SOCKET for readiness. Programs that read LISTEN_FDS \
            (gunicorn, uvicorn --fd, systemd-aware servers, Swift servers using PortReuse's \
            Listener.activated) need no change.

            On SIGHUP (or `portreuse up --reload`) up starts a new generation on the same sockets, waits \
            until it is ready, then sends the old one the stop signal and gives it --grace to finish. Old and \
            new share one accept queue, so no connection is refused or reset. A new generation that exits or \
            is not ready in time is stopped and the old one keeps serving. SIGHUPs that arrive while a new \
            generation starts are coalesced into one more reload after it. Any number of old generations may \
            drain side by side. SIGUSR2 (or --upgrade) replaces up's own binary in place, keeping the \
            sockets and the running program.

            Readiness (--ready): notify waits for READY=1 on NOTIFY_SOCKET; probe waits until the new \
            generation accepts a connection on the first TCP socket; delay:S waits S; auto (the default) \
            uses notify when the program sends anything, else probe.

            Examples:
              Serve; the program gets 127.0.0.1:8080 as descriptor 3:
                portreuse up --listen 127.0.0.1:8080 --pid-file /tmp/app.pid -- python3 server.py
              Reload with no failed request, and wait for the outcome:
                portreuse up --reload --pid-file /tmp/app.pid     (or: kill -HUP PID)
              Named sockets, TCP and UDP:
                portreuse up --listen web=0.0.0.0:80 --listen dns=udp:0.0.0.0:53 -- ./app
              gunicorn reads LISTEN_FDS itself:
                portreuse up --listen 8000 -- gunicorn app:app
              What runs now:
                portreuse up --status --pid-file /tmp/app.pid

            --reuseport is for programs that bind by themselves and cannot take sockets: each generation runs \
            under the `portreuse run` shim with SO_REUSEPORT and the generations overlap. The kernel then \
            resets the connections still queued on the old generation's socket when it closes, unless \
            net.ipv4.tcp_migrate_req=1 (sysctl -w net.ipv4.tcp_migrate_req=1); prefer socket activation.

            Exit status: 0 after a clean stop; 1 when a generation had to be killed after --grace; 3 when a \
            socket could not be opened; 4 when the program failed 5 times in a row without ever being ready; \
            64 for bad arguments; 126/127 when the command cannot run or is not found. With --reload: 0 when \
            the new generation is ready, 1 when it failed.
            """
    )

    @Option(
        name: .customLong("listen"),
        help: ArgumentHelp(
            "A socket to hold and hand over: [NAME=]ADDR, as in 8080, 127.0.0.1:8080, web=[::1]:443, udp:0.0.0.0:53.",
            discussion: "Repeat for several. NAME goes into LISTEN_FDNAMES (default: unknown).", valueName: "address"),
        transform: { try ListenSpec(parsing: $0) })
    var listen: [ListenSpec] = []

    @Option(help: ArgumentHelp("How to know a generation is ready: auto, notify, probe or delay:SECONDS.", valueName: "mode"), transform: { try ReadinessCheck(parsing: $0) })
    var ready: ReadinessCheck = .auto

    @Option(help: ArgumentHelp("How long a new generation may take to become ready.", valueName: "duration"), transform: { try Seconds(parsing: $0, option: "--ready-timeout") })
    var readyTimeout = Seconds(60)

    @Option(help: ArgumentHelp("How long an old generation may drain after the stop signal before SIGKILL.", valueName: "duration"), transform: { try Seconds(parsing: $0, option: "--grace") })
    var grace = Seconds(30)

    @Option(help: ArgumentHelp("The signal that asks a generation to stop (TERM, INT, QUIT, WINCH, …).", valueName: "signal"), transform: { try SignalName.parse($0) })
    var stopSignal = SignalName(SIGTERM)

    @Option(help: ArgumentHelp("Write up's pid here (and its status to PATH.status) for --reload, --status and --upgrade.", valueName: "path"))
    var pidFile: String?

    @Flag(help: "Fallback for programs that bind by themselves: run each generation under the shim with SO_REUSEPORT.")
    var reuseport = false

    @Flag(help: "Ask the up of --pid-file to reload, and wait until the new generation is ready or failed.")
    var reload = false

    @Flag(help: "Show the generations, sockets and reloads of the up of --pid-file.")
    var status = false

    @Flag(help: "With --status: print JSON (schema portreuse.up/1).")
    var json = false

    @Flag(help: "Ask the up of --pid-file to replace its own binary in place, keeping sockets and program.")
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
            return
        }
        guard let first = command.first else {
            throw ValidationError("give the program to run after --, as in: portreuse up --listen 127.0.0.1:8080 -- python3 server.py")
        }
        if first.hasPrefix("-") {
            throw ValidationError("unknown option '\(first)' (put the program after --, as in: portreuse up --listen 8080 -- PROGRAM)")
        }
        guard readyTimeout.value > 0 else { throw ValidationError("--ready-timeout must be more than 0") }
        if case .delay(let seconds) = ready, seconds >= readyTimeout.value {
            throw ValidationError("--ready delay:\(Seconds(seconds)) must be shorter than --ready-timeout \(readyTimeout)")
        }
        if reuseport && (listen.isEmpty || listen.contains { $0.address.port == 0 }) {
            throw ValidationError("--reuseport needs the --listen addresses the program binds (with their ports), to see when a generation listens")
        }
    }

    func run() throws {
        try CommandFailure.reporting {
            if isClient {
                try UpClient(pidFile: pidFile!, timeout: readyTimeout.value).run(reload: reload, status: status, json: json)
                return
            }
            let code = try serve()
            if code != 0 { throw ExitCode(code) }
        }
    }

    private func serve() throws(CommandFailure) -> Int32 {
        let inherited = try UpgradeHandover.inherited()
        let searchPath = getenv("PATH").map { String(cString: $0) }
        let program = try Program.find(command[0], searchPath: searchPath)
        var reusePortEnvironment: [String]?
        if reuseport {
            let library = try ShimLibrary.locate()
            try program.checkShimReaches(searchPath: searchPath)
            let shim = ShimConfiguration(policy: .shared, bind: nil, source: nil, transparent: false, verbose: false)
            reusePortEnvironment = try shim.environment(ShimConfiguration.currentEnvironment(), library: library).entries
            Self.warnAboutMigration()
        }
        let sockets: [HeldSocket]
        let runtimeFolder: String
        if let inherited {
            sockets = try inherited.sockets.map { (socket) throws(CommandFailure) in try HeldSocket.describe(socket.descriptor, name: socket.name) }
            runtimeFolder = inherited.runtimeFolder
        } else {
            sockets = reuseport ? [] : try openSockets()
            runtimeFolder = try Self.makeRuntimeFolder()
        }
        if let pidFile, inherited == nil {
            try Self.claim(pidFile: pidFile)
        }
        let signals = try SignalPipe()
        let supervisor = Supervisor(
            configuration: .init(
                command: [program.path] + command.dropFirst(), readiness: ready, readyTimeout: readyTimeout.value, grace: grace.value,
                stopSignal: stopSignal.number, statusPath: pidFile.map(UpStatus.path(forPIDFile:)),
                reusePortEnvironment: reusePortEnvironment, reusePortListens: reuseport ? listen : [], arguments: CommandLine.arguments),
            sockets: sockets, runtimeFolder: runtimeFolder, signals: signals, startedWall: inherited?.startedWall ?? Processes.wallClockSeconds)
        if let inherited {
            supervisor.adopt(inherited)
        } else {
            let names = sockets.map { "\($0.name)=\($0.transport.rawValue):\($0.address)" }.joined(separator: " ")
            supervisor.logger.info("holding \(sockets.isEmpty ? "no sockets (--reuseport)" : names); readiness: \(ready)")
        }
        let code = supervisor.run(startFirst: inherited == nil)
        if let pidFile {
            unlink(pidFile)
            unlink(UpStatus.path(forPIDFile: pidFile))
        }
        rmdir(runtimeFolder)
        return code
    }

    /// Opens the --listen sockets, or takes them from systemd when it handed `up` sockets (LISTEN_FDS):
    /// a --listen matches an inherited socket by name, or by address.
    private func openSockets() throws(CommandFailure) -> [HeldSocket] {
        let inherited: [ActivatedSocket]
        do { inherited = try SocketActivation.sockets() } catch { throw CommandFailure("\(error)", exitCode: 3) }
        var unused = inherited.filter { $0.transport != nil }
        if listen.isEmpty {
            guard !unused.isEmpty else {
                throw CommandFailure("give at least one --listen address (as in --listen 127.0.0.1:8080), or start up with sockets from systemd", exitCode: 64)
            }
            return try unused.map { (socket) throws(CommandFailure) in try HeldSocket.hold(socket.descriptor, name: socket.name) }
        }
        var held: [HeldSocket] = []
        for spec in listen {
            if let index = unused.firstIndex(where: { Self.matches(spec, $0) }) {
                let socket = unused.remove(at: index)
                held.append(try HeldSocket.hold(socket.descriptor, name: spec.name == ListenSpec.defaultName ? socket.name : spec.name))
                continue
            }
            do {
                let descriptor: Int32?
                switch spec.transport {
                case .tcp: descriptor = try Listener(spec.address, policy: .restartable).takeDescriptor()
                case .udp: descriptor = try DatagramSocket(spec.address, policy: .restartable).takeDescriptor()
                }
                held.append(try HeldSocket.hold(descriptor!, name: spec.name))
            } catch let failure as CommandFailure {
                throw failure
            } catch {
                throw CommandFailure("--listen \(spec): \(error)", exitCode: 3)
            }
        }
        for socket in unused {
            held.append(try HeldSocket.hold(socket.descriptor, name: socket.name))  // systemd's extra sockets go on too
        }
        return held
    }

    private static func matches(_ spec: ListenSpec, _ socket: ActivatedSocket) -> Bool {
        if spec.name != ListenSpec.defaultName { return spec.name == socket.name }
        guard socket.transport == spec.transport, let local = socket.localAddress,
            let wanted = try? spec.address.resolve(spec.transport)
        else { return false }
        return wanted.contains { $0.port == local.port && ($0.ip == local.ip || $0.ip.isUnspecified && local.ip.isUnspecified) }
    }

    private static func makeRuntimeFolder() throws(CommandFailure) -> String {
        let base = getenv("TMPDIR").map { String(cString: $0) } ?? "/tmp"
        var template = Array("\(base)/portreuse-up.XXXXXX".utf8CString)
        guard mkdtemp(&template) != nil else {
            throw CommandFailure("cannot create a private folder in \(base) for the notify sockets: \(Files.errorText())")
        }
        return String(decoding: template.dropLast().map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// Writes our pid; refuses when another live `up` holds the file.
    private static func claim(pidFile: String) throws(CommandFailure) {
        if let other = UpClient.readPID(pidFile), other != getpid(), kill(other, 0) == 0 || errno == EPERM {
            throw CommandFailure("\(pidFile) names pid \(other), which is running: another portreuse up uses this pid file")
        }
        guard Files.write(Array("\(getpid())\n".utf8), toFile: pidFile) else {
            throw CommandFailure("cannot write the pid file \(pidFile): \(Files.errorText())")
        }
    }

    /// --reuseport: says once when the kernel will reset connections queued on an old generation's socket.
    private static func warnAboutMigration() {
        guard let text = Files.read("/proc/sys/net/ipv4/tcp_migrate_req", limit: 8) else { return }
        if String(decoding: text, as: UTF8.self).hasPrefix("0") {
            printError(
                "portreuse up: warning: net.ipv4.tcp_migrate_req=0: connections queued on an old generation's socket are reset "
                    + "when it closes. Turn it on with: sysctl -w net.ipv4.tcp_migrate_req=1 (or use socket activation: drop --reuseport)")
        }
    }
}
