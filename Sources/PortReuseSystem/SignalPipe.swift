#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

#if canImport(Glibc) || canImport(Darwin)
/// The write end of the signal pipe, set once before any handler is installed.
nonisolated(unsafe) private var signalPipeWriteEnd: Int32 = -1

/// The handler of every signal `up` (and the worker pool) takes: one byte, the signal's number, into the pipe (async-signal-safe).
private func forwardSignal(_ signal: Int32) {
    let saved = errno
    var byte = UInt8(truncatingIfNeeded: signal)
    _ = write(signalPipeWriteEnd, &byte, 1)
    errno = saved
}

/// Signals as bytes in a pipe that the supervisor's poll loop reads: the self-pipe trick.
package struct SignalPipe {
    package let readEnd: Descriptor
    private let writeEnd: Descriptor

    /// The signals `up` handles; children start with their default actions and an empty mask.
    package static let handled: [Int32] = [SIGHUP, SIGTERM, SIGINT, SIGQUIT, SIGCHLD, SIGUSR2, SIGUSR1, SIGWINCH]

    /// The pipe, with `up`'s handlers installed for ``handled`` (`installingHandlers` false: a pipe nothing
    /// writes to, for a supervisor driven by a test, which must not take the test process's signals).
    package init(installingHandlers: Bool = true) throws(SystemError) {
        let ends = try Files.pipe(nonBlocking: true)
        readEnd = ends.read
        writeEnd = ends.write
        guard installingHandlers else { return }
        signalPipeWriteEnd = ends.write.rawValue
        Signals.handle(Self.handled, restart: true, with: forwardSignal)  // SA_NOCLDSTOP: no SIGCHLD when the probe pauses a generation
        Signals.ignore(SIGPIPE)
        Signals.unblockAll()  // a parent (a test runner's thread) may have blocked some
    }

    /// Puts `signal` into the pipe as the handler does: a test drives a supervisor's real signal path with it.
    package func deliver(_ signal: Int32) {
        try? Files.write([UInt8(truncatingIfNeeded: signal)], to: writeEnd)  // EAGAIN: the pipe is full
    }

    /// The signals that arrived since the last call, in order.
    package func take() -> [Int32] {
        var buffer = [UInt8](repeating: 0, count: 64)
        var signals: [Int32] = []
        while true {
            let count = read(readEnd.rawValue, &buffer, buffer.count)
            guard count > 0 else { return signals }
            signals += buffer[0..<count].map { Int32($0) }
        }
    }
}

#endif
