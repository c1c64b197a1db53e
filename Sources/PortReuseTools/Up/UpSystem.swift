import PortReuse
import PortReuseSystem

extension NotifyReceiver {
    /// A new notify socket at `path` for a generation (or a worker): its failure in the words `up` says.
    package static func make(path: String) throws(CommandFailure) -> NotifyReceiver {
        do {
            return try NotifyReceiver(path: path)
        } catch where error.errno == .fileNameTooLong {
            throw CommandFailure("the notify socket path \(path) is too long; set TMPDIR to a shorter folder")
        } catch {
            throw CommandFailure("cannot create the notify socket \(path): \(error)")
        }
    }
}

extension SignalPipe {
    /// The signal pipe of `up` (or of a worker pool), its handlers installed: its failure in `up`'s words.
    package static func make() throws(CommandFailure) -> SignalPipe {
        do { return try SignalPipe() } catch { throw CommandFailure("cannot create the signal pipe: \(error)") }
    }
}
