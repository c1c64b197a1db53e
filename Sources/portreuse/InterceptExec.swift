import ArgumentParser
import Glibc
import PortReuse
import PortReuseTools

/// `portreuse intercept-exec` (hidden): the trampoline of `portreuse run`'s kernel path. Between the fork and
/// the exec of the program, which Swift's posix_spawn cannot reach, it installs the seccomp filter on itself,
/// sends the notification descriptor to `portreuse run` over the Unix socket at --report-fd (SCM_RIGHTS),
/// closes its copy, and execs the program, found through PATH. The filter survives the exec.
struct InterceptExec: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: KernelRun.trampolineCommand,
        abstract: "The trampoline of portreuse run --intercept kernel (not for direct use).",
        shouldDisplay: false)

    @Option(help: "The Unix socket that gets the notification descriptor.")
    var reportFd: Int32

    @Flag(help: "Intercept connect(), sendto() and sendmsg() too (for --source).")
    var clients = false

    @Argument(parsing: .captureForPassthrough, help: ArgumentHelp("The program and its arguments.", valueName: "command"))
    var command: [String] = []

    mutating func validate() throws {
        if command.first == "--" { command.removeFirst() }
        guard !command.isEmpty else { throw ValidationError("give the program to run") }
    }

    func run() throws {
        try CommandFailure.reporting {
            let calls = InterceptionRules(policy: .shared, source: clients ? .init(ip: nil, port: 0) : nil).systemCalls
            do {
                try KernelRun.trampoline(report: reportFd, systemCalls: calls)
            } catch let failure as CommandFailure where failure.message.isEmpty {
                throw ExitCode(failure.exitCode)  // the parent says why
            }
            let searchPath = getenv("PATH").map { String(cString: $0) }
            let program = try Program.find(command[0], searchPath: searchPath)
            try Run.replaceProcess(with: program, arguments: command, environment: ProcessSpawn.currentEnvironment())
        }
    }
}
