import ArgumentParser
import PortReuse
import PortReuseInterception
import PortReuseTools
import PortReuseSystem

/// `portreuse run`: starts an unmodified program with the LD_PRELOAD shim, or under a seccomp filter whose
/// calls portreuse answers (`--intercept`), which sets the sharing policy's socket options before each of its
/// binds, can move its binds elsewhere, and can make its outgoing connections leave from a chosen source
/// address and port.
///
/// With the shim the program replaces portreuse (`execve`), so its stdin, stdout, stderr, signals, process id
/// and exit status are its own by construction. Through the kernel portreuse stays its parent (KernelRun).
struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a program unchanged, with its sockets sharing their port (LD_PRELOAD shim or seccomp).",
        usage: """
            portreuse run [--policy <policy>] [--bind <address>] [--source <address>] [--intercept <method>] [--transparent] [--verbose] [--] <command> [<argument> ...]
            portreuse run --print-library
            """,
        discussion: """
            The shim (\(ShimLibrary.fileName), found next to the portreuse executable) sets the policy's \
            socket options before every bind() of the program's IPv4 and IPv6 sockets, so that programs you \
            cannot change share a port, or bind again at once after a restart; with --source, their \
            connections leave from the address and port you choose. Unix sockets and everything else \
            are left alone, and options the program sets itself are kept. Child processes inherit the shim.

            Examples:
              Two servers on one port; the kernel spreads connections between them:
                portreuse run -- python3 -m http.server 8000 &
                portreuse run -- python3 -m http.server 8000 &
              Restart at once, even while old connections sit in TIME_WAIT:
                portreuse run --policy restartable -- ./server
              Move a program to another address and port:
                portreuse run --bind 127.0.0.1:9000 -- python3 -m http.server 8000
              Make connections leave from a chosen source address and port:
                portreuse run --source 127.0.0.1:5000 -- curl http://127.0.0.1:8000/
              The shim without portreuse (bindp's variable names work):
                LD_PRELOAD=$(portreuse run --print-library) REUSE_PORT=1 ./server

            The shim cannot reach statically linked programs (static musl or Rust builds) nor Go programs, \
            which make their system calls themselves. For those, --intercept auto (the default) goes through \
            the kernel instead: a seccomp filter hands the program's bind() calls (and connect(), sendto(), \
            sendmsg() with --source) to portreuse, which sets the options on the program's own socket. \
            portreuse then stays the program's parent (it does not execve the program) until the program \
            ends: it forwards SIGTERM, SIGINT, SIGHUP and SIGQUIT, and exits with the program's status \
            (128 + the signal that killed it). It needs Linux 5.9+ with seccomp allowed; where the filter is \
            refused, portreuse says so and uses the shim when the shim can reach the program. Neither way \
            reaches set-user-ID, set-group-ID or file-capability programs: portreuse run refuses them and \
            says why; `portreuse up` hands such programs a ready socket by socket activation instead.

            Exit status: the program's. Before it starts: 127 when the command is not found, 126 when it \
            cannot run or cannot be reached, 64 for bad arguments, 1 for anything else.
            """
    )

    @Option(help: "The sharing policy of every socket the program binds.")
    var policy: SharingPolicy = .shared

    @Option(
        name: .customLong("bind"),
        help: ArgumentHelp(
            "Rewrite every bind() to this address and/or port.",
            discussion: "ADDR:PORT, :PORT or PORT (keep the program's address), ADDR or [IPv6] (keep its port).",
            valueName: "address"),
        transform: { try EndpointRewrite.parse($0) })
    var bindTo: EndpointRewrite?

    @Option(
        help: ArgumentHelp(
            "Make outgoing connections leave from this address and/or port.",
            discussion: """
                ADDR:PORT, ADDR, [IPv6] or :PORT. Applies to sockets the program did not bind itself, before \
                connect() (TCP and UDP, blocking or not) and before sendto()/sendmsg() on UDP.
                """,
            valueName: "address"),
        transform: { try EndpointRewrite.parse($0) })
    var source: EndpointRewrite?

    @Flag(help: "Set IP_TRANSPARENT on bound sockets (bind non-local addresses, TPROXY); needs CAP_NET_ADMIN.")
    var transparent = false

    @Option(help: ArgumentHelp(
        "How to reach the program's socket calls: auto, kernel (seccomp) or preload (LD_PRELOAD).",
        discussion: "auto: the shim for dynamically linked programs, the kernel for static and Go programs.",
        valueName: "method"))
    var intercept: InterceptionMethod = .auto

    @Flag(help: "Say on stderr how the program is reached and what is changed: one line per call.")
    var verbose = false

    @Flag(help: "Print the path of the shim library and exit (for LD_PRELOAD=... without portreuse).")
    var printLibrary = false

    @Argument(parsing: .captureForPassthrough, help: ArgumentHelp("The program and its arguments.", valueName: "command"))
    var command: [String] = []

    mutating func validate() throws {
        if command.first == "--" { command.removeFirst() }
        if printLibrary {
            guard command.isEmpty else { throw ValidationError("--print-library takes no command") }
            return
        }
        guard let first = command.first else {
            throw ValidationError("give the program to run, as in: portreuse run -- python3 -m http.server 8000")
        }
        // The passthrough capture takes everything from the first unknown flag on, --help included.
        if ["-h", "--help", "-help"].contains(first) { throw CleanExit.helpRequest(Self.self) }
        if first.hasPrefix("-") {
            throw ValidationError("unknown option '\(first)' (put the program after --, as in: portreuse run -- PROGRAM \(first))")
        }
    }

    var shim: ShimConfiguration {
        ShimConfiguration(policy: policy, bind: bindTo, source: source, transparent: transparent, verbose: verbose)
    }

    func run() throws {
        try CommandFailure.reporting {
            let library = try ShimLibrary.locate()
            if printLibrary {
                print(library.path)
                return
            }
            let searchPath = Environment.value("PATH")
            let program = try Program.find(command[0], searchPath: searchPath)
            let inspection = try program.inspect(searchPath: searchPath)
            try program.checkABI(searchPath: searchPath)
            try program.checkNotUp(arguments: command)
            var (method, reason) = intercept.resolve(for: inspection)
            if method == .kernel, let missing = KernelRun.unsupportedReason() {
                guard inspection.preloadReaches else { throw CommandFailure("\(program.path): \(reason), and \(missing)", exitCode: 126) }
                printError("portreuse run: \(missing); using the LD_PRELOAD shim instead")
                (method, reason) = (.preload, "the kernel path is not available")
            }
            if verbose { printError("portreuse run: \(method == .kernel ? "through the kernel (seccomp)" : "LD_PRELOAD shim"): \(reason)") }
            if transparent && !Self.hasNetAdmin() {
                throw CommandFailure(
                    "--transparent needs CAP_NET_ADMIN, which this process lacks: run as root, or give the capability "
                        + "(for example: sudo setpriv --inh-caps +net_admin --ambient-caps +net_admin ... portreuse run ...)")
            }
            if method == .kernel {
                let rules = shim.interceptionRules(log: { line in printError("portreuse run: \(line)") })
                switch try KernelRun.run(command, path: program.path, rules: rules, announce: { printError("portreuse run: \($0)") }) {
                case .exited(let status):
                    if status != 0 { throw ExitCode(status) }
                    return
                case .refused(let code):
                    let why = "the kernel refused the seccomp filter (\(code))"
                    guard inspection.preloadReaches else {
                        throw CommandFailure("\(program.path): \(reason), and \(why): portreuse run cannot reach it", exitCode: 126)
                    }
                    printError("portreuse run: \(why); using the LD_PRELOAD shim instead")
                }
            }
            try program.checkShimReaches(searchPath: searchPath)
            if let go = inspection.goExecutable {
                // A cgo build loads libc, so the shim loads too, but Go's net package makes its own system calls.
                printError("portreuse run: warning: \(go.path) is a Go program (\(go.mark)): Go makes its own socket calls, so "
                    + "the LD_PRELOAD shim changes nothing in it; use --intercept kernel (or auto, the default)")
            }
            let (environment, dropped) = try shim.environment(ProcessSpawn.currentEnvironment(), library: library)
            if verbose {
                let settings = shim.variables.map { "\($0.name)=\($0.value)" }.joined(separator: " ")
                let note = dropped.isEmpty ? "" : "; left out inherited \(dropped.joined(separator: ", ")) (the flags say it all)"
                printError("portreuse run: \(program.path) with \(library.path), \(settings)\(note)")
            }
            try Self.replaceProcess(with: program, arguments: command, environment: environment)
        }
    }

    /// Whether CAP_NET_ADMIN (bit 12) is in this process's effective set, read from /proc/self/status.
    static func hasNetAdmin() -> Bool {
        guard let mask = Processes.field("CapEff", in: "/proc/self/status").flatMap({ UInt64($0, radix: 16) }) else { return false }
        return mask & (1 << 12) != 0
    }

    /// `execve`: the program takes this process's place. Returns only by throwing.
    static func replaceProcess(with program: Program, arguments: [String], environment: [String]) throws(CommandFailure) {
        let code = Processes.replaceImage(with: program.path, arguments: arguments, environment: environment)
        throw CommandFailure("cannot start \(program.path): \(code.description)", exitCode: code == .noSuchFileOrDirectory ? 127 : 126)
    }
}
