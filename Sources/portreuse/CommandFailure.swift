import ArgumentParser
import Glibc

/// A failure a subcommand explains in one message, with the exit status it ends with.
struct CommandFailure: Error, CustomStringConvertible {
    /// What went wrong and what to do about it.
    var message: String
    /// The exit status: 1 by default; 126 and 127 as shells use them (found but cannot run; not found).
    var exitCode: Int32

    init(_ message: String, exitCode: Int32 = 1) {
        self.message = message
        self.exitCode = exitCode
    }

    var description: String { message }
}

extension CommandFailure {
    /// Runs `body`; a `CommandFailure` becomes `Error: MESSAGE` on stderr and its exit status.
    static func reporting(_ body: () throws -> Void) throws {
        do {
            try body()
        } catch let failure as CommandFailure {
            FileSystem.printError("Error: \(failure.message)")
            throw ExitCode(failure.exitCode)
        }
    }
}
