import Logging
import PortReuse
import PortReuseSystem
import SystemPackage
import PortReuseInterception

/// The permissions and owner of the socket files of `unix:` --listen sockets (`--unix-mode`, `--unix-owner`,
/// `--unix-group`); nil: as the umask and the process make them.
package struct UnixFileSettings: Sendable {
    package var permissions: FilePermissions?
    package var owner: UInt32?
    package var group: UInt32?

    package init(permissions: FilePermissions? = nil, owner: UInt32? = nil, group: UInt32? = nil) {
        self.permissions = permissions
        self.owner = owner
        self.group = group
    }
}

/// What `portreuse up` serves with: the command's options, checked by the command before it gets here.
package struct UpOptions {
    package var listen: [ListenSpec]
    package var readiness: ReadinessCheck
    package var readyTimeout: Double
    package var grace: Double
    package var stopSignal: Int32
    package var pidFile: String?
    package var reuseport: Bool
    /// Whether IPv6 --listen sockets are dual-stack.
    package var dualStack: Bool
    /// Whether generations start under the bind filter (``SocketSwap``): `--no-intercept` says no.
    package var intercept = true
    /// `--stop-when-idle`: at most this many seconds.
    package var stopWhenIdle: Double?
    /// `--init`: exit with the serving generation's status after a stop (always so when `up` is PID 1).
    package var exitsWithProgram = false
    /// `--adopt PID`: take the --listen sockets from this running process, and stop it once generation 1 is ready.
    package var adopt: Int32?
    /// `--adopt-any-user`: adopt a server of another user, its next generations running as `up`'s user.
    package var adoptAnyUser = false
    /// How generations are told which descriptors are their sockets (`--protocol`).
    package var dialect = Dialect.systemd
    /// What up knows of the server it runs (``UpDefaults/note``), for the log line of each generation's start.
    package var serverNote: String?
    /// `--health ADDR`: `up`'s own HTTP listener for /readyz, /livez and /metrics.
    package var health: Address?
    /// `--stop-delay`: seconds between SIGTERM/SIGINT and the drain, while /readyz answers 503.
    package var stopDelay = 0.0
    /// Whether each generation gets TCP sockets of its own, steered by `up` (`--shared-socket` says no).
    package var steers = true
    /// `--drain-timeout`: how long a generation out of rotation may hold connections before its stop signal.
    package var drainTimeout = 10.0
    /// `--workers`: copies of the program in each generation.
    package var workers = 1
    /// The files of `unix:` --listen sockets.
    package var unixFiles = UnixFileSettings()
    /// The known server's name when it forks workers of its own (``UpDefaults/forksWorkers``).
    package var serverForksWorkers: String?
    /// The program and its arguments.
    package var command: [String]

    package init(
        listen: [ListenSpec], readiness: ReadinessCheck, readyTimeout: Double, grace: Double, stopSignal: Int32, pidFile: String?,
        reuseport: Bool, dualStack: Bool = false, command: [String]
    ) {
        self.dualStack = dualStack
        self.listen = listen
        self.readiness = readiness
        self.readyTimeout = readyTimeout
        self.grace = grace
        self.stopSignal = stopSignal
        self.pidFile = pidFile
        self.reuseport = reuseport
        self.command = command
    }

    /// Opens (or inherits) the sockets, claims the pid file, runs the supervisor until it stops, and cleans up;
    /// returns `up`'s exit status.
    package func serve() throws(CommandFailure) -> Int32 {
        let inherited = try UpgradeHandover.inherited()
        let searchPath = Environment.value("PATH")
        let program = try Program.find(command[0], searchPath: searchPath)
        var reusePortEnvironment: [String]?
        if reuseport {
            let library = try ShimLibrary.locate()
            try program.checkShimReaches(searchPath: searchPath)
            let shim = ShimConfiguration(policy: .shared, bind: nil, source: nil, transparent: false, verbose: false)
            reusePortEnvironment = try shim.environment(ProcessSpawn.currentEnvironment(), library: library).entries
            Self.warnAboutMigration()
        }
        let sockets: [HeldSocket]
        /// The socket files `up` made (its own `unix:` sockets, also those an earlier `up` of this process made), removed at the end.
        var unixFiles: [UnixListener] = []
        let runtimeFolder: String
        var adoption: Adoption?
        if let inherited {
            sockets = try inherited.sockets.map { (socket) throws(CommandFailure) in
                var held = try HeldSocket.describe(socket.descriptor, name: socket.name)
                held.backlog = socket.backlog
                held.openedByUp = socket.backlog != nil
                return held
            }
            unixFiles = sockets.filter { $0.openedByUp }.compactMap(\.unixFile)
            runtimeFolder = inherited.runtimeFolder
        } else if let adopt {
            let taken = try Adoption.take(from: adopt, listen: listen, floor: try HeldSocket.firstDescriptor(holding: listen.count), anyUser: adoptAnyUser)
            adoption = taken.0
            sockets = taken.1
            runtimeFolder = try RuntimeFolder.make()
        } else {
            (sockets, unixFiles) = reuseport ? ([], []) : try openSockets()
            runtimeFolder = try RuntimeFolder.make()
        }
        if let refusal = dialect.refusal(count: sockets.count, transports: sockets.map(\.transport)) {
            RuntimeFolder.remove(runtimeFolder)
            throw CommandFailure(refusal, exitCode: 64)
        }
        if let pidFile, inherited == nil {
            do {
                try Self.claim(pidFile: pidFile)
            } catch {
                RuntimeFolder.remove(runtimeFolder)
                throw error
            }
        }
        let interceptionOff = interceptionRefusal()
        let signals = try SignalPipe.make()
        var configuration = Supervisor.Configuration(
            command: [program.path] + command.dropFirst(), readiness: readiness, readyTimeout: readyTimeout, grace: grace,
            stopSignal: stopSignal, statusPath: pidFile.map(UpStatus.path(forPIDFile:)),
            reusePortEnvironment: reusePortEnvironment, reusePortListens: reuseport ? listen : [], arguments: CommandLine.arguments,
            intercepts: interceptionOff == nil)
        configuration.stopWhenIdle = stopWhenIdle
        configuration.exitsWithProgram = exitsWithProgram || Processes.currentID == 1
        configuration.dialect = dialect
        configuration.serverNote = serverNote
        configuration.stopDelay = stopDelay
        configuration.steers = steers && !reuseport && adoption == nil
        configuration.drainTimeout = drainTimeout
        configuration.workers = workers
        let logger = Logger(label: "portreuse.up") { _ in UpLogHandler() }
        let health: (server: HealthServer, board: HealthBoard)?
        do {
            health = try startHealth(listeners: HealthListener.of(sockets), logger: logger, afterUpgrade: inherited != nil)
        } catch {
            if let pidFile, inherited == nil { Files.remove(pidFile) }
            RuntimeFolder.remove(runtimeFolder)
            throw error
        }
        if let reason = interceptionOff, !reuseport { logger.info("generations start without the bind filter: \(reason)") }
        if steers && !configuration.steers {
            logger.info("every generation shares the held sockets (one accept queue): \(reuseport ? "--reuseport" : "--adopt") holds sockets up did not open")
        }
        if inherited == nil {
            let names = sockets.map { ListenSpec.label(name: $0.name, $0.label) }.joined(separator: " ")
            logger.info("holding \(sockets.isEmpty ? "no sockets (--reuseport)" : names); readiness: \(readiness)")
        }
        if workers > 1, let server = serverForksWorkers {
            logger.warning("\(server) forks workers of its own: --workers \(workers) runs \(workers) of it, each with its own workers; its own option for them is usually what you want")
        }
        if let adoption { logger.info("took the sockets of pid \(adoption.pid) (\(adoption.command)), which serves on until generation 1 is ready") }
        let supervisor = Supervisor(
            configuration: configuration, sockets: sockets, runtimeFolder: runtimeFolder, signals: signals,
            startedWall: inherited?.startedWall ?? Processes.wallClockSeconds, handover: inherited, health: health?.board,
            adopted: adoption.map(AdoptedProcess.init))
        let code = supervisor.run(startFirst: inherited == nil)
        health?.server.shutDown()
        if let pidFile {
            Files.remove(pidFile)
            Files.remove(UpStatus.path(forPIDFile: pidFile))
        }
        for file in unixFiles { file.removeFile() }  // (an in-place upgrade execs before this: the next up removes them)
        RuntimeFolder.remove(runtimeFolder)
        LogWriter.standardError.flush(timeout: 2)
        return code
    }

    /// The `--health` listener, on a board the supervisor publishes to. After an in-place upgrade a failed bind
    /// is only logged: the sockets and the program must survive it (the probes fail until the next upgrade).
    private func startHealth(listeners: [HealthListener], logger: Logger, afterUpgrade: Bool) throws(CommandFailure) -> (server: HealthServer, board: HealthBoard)? {
        guard let health else { return nil }
        let board = HealthBoard(listeners: listeners)
        do {
            let server = try HealthServer(address: health, board: board)
            logger.info("health: http://\(server.localAddress)/readyz, /livez and /metrics")
            return (server, board)
        } catch where afterUpgrade {
            logger.error("\(error.message): serving without the health listener")
            return nil
        }
    }

    /// Why generations start without the bind filter, or `nil` when they start under it.
    private func interceptionRefusal() -> String? {
        guard intercept else { return "--no-intercept" }
        guard !reuseport else { return "--reuseport" }
        #if os(Linux)
        return KernelRun.unsupportedReason()
        #else
        return "seccomp is Linux only"
        #endif
    }

    /// Opens the --listen sockets, or takes them from systemd when it handed `up` sockets (LISTEN_FDS):
    /// a --listen matches an inherited socket by name, or by address. With the socket files `up` made.
    private func openSockets() throws(CommandFailure) -> ([HeldSocket], [UnixListener]) {
        let inherited: [ActivatedSocket]
        do { inherited = try SocketActivation.sockets() } catch { throw CommandFailure("\(error)", exitCode: 3) }
        var unused = inherited.filter { $0.transport != nil || Sys.unixSocketName($0.descriptor) != nil }
        var files: [UnixListener] = []
        let floor = try HeldSocket.firstDescriptor(holding: listen.count + unused.count)
        if listen.isEmpty {
            guard !unused.isEmpty else {
                throw CommandFailure("give at least one --listen address (as in --listen 127.0.0.1:8080), or start up with sockets from systemd", exitCode: 64)
            }
            return (try unused.map { (socket) throws(CommandFailure) in try HeldSocket.hold(Descriptor(socket.descriptor), name: socket.name, floor: floor, backlog: nil) }, [])
        }
        var held: [HeldSocket] = []
        for spec in listen {
            if let index = unused.firstIndex(where: { Self.matches(spec, $0) }) {
                let socket = unused.remove(at: index)
                held.append(try HeldSocket.hold(Descriptor(socket.descriptor), name: spec.name == ListenSpec.defaultName ? socket.name : spec.name, floor: floor, backlog: nil))
                continue
            }
            if case .unix(let path) = spec.target {
                do {
                    let file = try UnixListener(
                        path: path, backlog: Sys.defaultBacklog, permissions: unixFiles.permissions,
                        owner: unixFiles.owner == nil && unixFiles.group == nil ? nil : (unixFiles.owner, unixFiles.group))
                    files.append(file)
                    held.append(try HeldSocket.hold(Descriptor(file.takeDescriptor()!), name: spec.name, floor: floor, backlog: Sys.defaultBacklog))
                } catch let failure as CommandFailure {
                    for file in files { file.removeFile() }
                    throw failure
                } catch {
                    for file in files { file.removeFile() }
                    throw CommandFailure("--listen \(spec): \(error)", exitCode: 3)
                }
                continue
            }
            do {
                let descriptor: SocketDescriptor?
                // What Listener(Address) and DatagramSocket(Address) bind: a host name's first IPv4 address if it has one.
                let first = try spec.address!.checked(for: spec.transport, operation: .bind).resolveForBinding(spec.transport)
                let dual = dualStack && first.family == .ipv6
                switch spec.transport {
                case .tcp:
                    // Shared (SO_REUSEPORT), so that each generation's own socket can join its group; a listener
                    // of anyone else on the address is refused first, as restartable refuses it.
                    if steers && first.port != 0 { _ = try Listener(address: first, policy: .restartable, dualStack: dual) }
                    descriptor = try Listener(address: first, policy: steers ? .shared : .restartable, dualStack: dual).takeDescriptor()
                case .udp:
                    if steers && first.port != 0 { _ = try DatagramSocket(address: first, policy: .restartable, dualStack: dual) }
                    descriptor = try DatagramSocket(address: first, policy: steers ? .shared : .restartable, dualStack: dual).takeDescriptor()
                }
                held.append(try HeldSocket.hold(Descriptor(descriptor!), name: spec.name, floor: floor, backlog: Sys.defaultBacklog))
            } catch let failure as CommandFailure {
                throw failure
            } catch let error as PortReuseError {
                if case .portInUse(let inUse)? = error.diagnosis, let holder = inUse.holders.first {
                    // The library's advice (policies) is not up's: up holds its own socket, with no --policy.
                    throw CommandFailure(
                        "--listen \(spec): the address is in use, held by \(holder.ownerDescription). up opens the port for its programs "
                            + "itself and cannot share it with a socket it did not open: stop that process, choose another --listen, "
                            + "or move that server under up with --adopt PID (it takes the running server's socket, losing no connection).",
                        exitCode: 3)
                }
                throw CommandFailure("--listen \(spec): \(error)", exitCode: 3)
            } catch {
                throw CommandFailure("--listen \(spec): \(error)", exitCode: 3)
            }
        }
        for socket in unused {
            held.append(try HeldSocket.hold(Descriptor(socket.descriptor), name: socket.name, floor: floor, backlog: nil))  // systemd's extra sockets go on too
        }
        return (held, files)
    }

    private static func matches(_ spec: ListenSpec, _ socket: ActivatedSocket) -> Bool {
        if spec.name != ListenSpec.defaultName { return spec.name == socket.name }
        if case .unix(let path) = spec.target { return Sys.unixSocketName(socket.descriptor) == path }
        guard socket.transport == spec.transport, let local = socket.localAddress,
            let wanted = try? spec.address?.resolve(spec.transport)
        else { return false }
        return wanted.contains { $0.port == local.port && ($0.ip == local.ip || $0.ip.isUnspecified && local.ip.isUnspecified) }
    }

    /// Writes our pid (never through a symbolic link, never in a folder others may write); refuses when the
    /// file names another running `up` of this user, and replaces a stale one.
    private static func claim(pidFile: String) throws(CommandFailure) {
        if let other = UpClient.readPID(pidFile), other != Processes.currentID {
            let startTime = UpStatus.read(from: UpStatus.path(forPIDFile: pidFile)).flatMap { $0.pid == other ? $0.processStartTime : nil }
            if let stale = UpIdentity.reasonNotUp(other, startTime: startTime) {
                printError("portreuse up: replacing the stale pid file \(pidFile) (pid \(other) \(stale))")
            } else {
                throw CommandFailure("\(pidFile) names pid \(other), a running portreuse up: another up uses this pid file")
            }
        }
        do {
            try Files.replace(pidFile, with: Array("\(Processes.currentID)\n".utf8))
        } catch {
            throw CommandFailure("cannot write the pid file \(pidFile): \(error); choose a folder of your own, as in --pid-file /run/app/app.pid")
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
