import PortReuse
import ArgumentParser
import PortReuseSystem

/// A failure a subcommand explains in one message, with the exit status it ends with.
package struct CommandFailure: Error, CustomStringConvertible {
    /// What went wrong and what to do about it.
    package var message: String
    /// The exit status: 1 by default; 126 and 127 as shells use them (found but cannot run; not found).
    package var exitCode: Int32

    package init(_ message: String, exitCode: Int32 = 1) {
        self.message = message
        self.exitCode = exitCode
    }

    package var description: String { message }
}

extension CommandFailure {
    /// Runs `body`; a `CommandFailure` becomes `Error: MESSAGE` on stderr and its exit status.
    package static func reporting(_ body: () throws -> Void) throws {
        do {
            try body()
        } catch let failure as CommandFailure {
            printError("Error: \(failure.message)")
            throw ExitCode(failure.exitCode)
        }
    }
}

extension CommandFailure {
    /// The real path of this executable (`readlink("/proc/self/exe")`), or the failure that says why not.
    package static func executable() throws(CommandFailure) -> String {
        do {
            return try Processes.currentExecutable()
        } catch {
            throw CommandFailure("cannot find this executable through /proc/self/exe: \(error.errno.description)")
        }
    }
}
