import SystemPackage

/// The sending end of systemd's readiness protocol (`sd_notify`): tell the supervisor (`portreuse up`,
/// systemd) that this process is ready, reloading or stopping. Without `NOTIFY_SOCKET` every call does nothing.
///
/// ```swift
/// try Readiness.notify(.ready, .status("serving on :8080"))
/// ```
public enum Readiness {
    /// One assignment of the protocol.
    public enum State: Sendable, Hashable {
        /// `READY=1`: start-up finished; the supervisor may route traffic here and stop the old generation.
        case ready
        /// `RELOADING=1` with `MONOTONIC_USEC=`, as `Type=notify-reload` services must send it.
        case reloading
        /// `STOPPING=1`: shutting down.
        case stopping
        /// `STATUS=…`: one line for a person (`systemctl status`, `portreuse up` logs).
        case status(String)
        /// `MAINPID=…`: the main process is another one (a program that forks).
        case mainPID(Int32)
        /// `WATCHDOG=1`: keep-alive for `WatchdogSec=`.
        case watchdog
        /// `ERRNO=…`: why the service failed.
        case errno(Int32)
        /// Any other assignment, such as `EXTEND_TIMEOUT_USEC=5000000`.
        case custom(String)

        var assignment: String {
            switch self {
            case .ready: "READY=1"
            case .reloading: "RELOADING=1\nMONOTONIC_USEC=\(Sys.monotonicMicroseconds())"
            case .stopping: "STOPPING=1"
            case .status(let text): "STATUS=" + text.filter { $0 != "\n" }
            case .mainPID(let pid): "MAINPID=\(pid)"
            case .watchdog: "WATCHDOG=1"
            case .errno(let code): "ERRNO=\(code)"
            case .custom(let text): text
            }
        }
    }

    /// The socket messages go to (`NOTIFY_SOCKET`: a path, or `@name` in Linux's abstract namespace), if any.
    public static var socketPath: String? {
        Sys.environment("NOTIFY_SOCKET").flatMap { $0.isEmpty ? nil : $0 }
    }

    /// The message for some states: one assignment a line.
    public static func message(_ states: [State]) -> String {
        states.map(\.assignment).joined(separator: "\n")
    }

    /// Sends the states in one datagram to `NOTIFY_SOCKET`. Returns false, and does nothing, when the variable
    /// is unset (no supervisor listens); throws when it is set but the message cannot be delivered, also when
    /// the supervisor's queue is full (it never blocks, as `sd_notify` does not wait for a slow reader).
    /// The corresponding C function is `sd_notify`.
    @discardableResult
    public static func notify(_ states: State...) throws(PortReuseError) -> Bool {
        try notify(states)
    }

    /// The same as ``notify(_:)-(State...)`` for an array of states.
    @discardableResult
    public static func notify(_ states: [State]) throws(PortReuseError) -> Bool {
        guard let path = socketPath else { return false }
        let code = Sys.sendUnixDatagram(Array(message(states).utf8), to: path)
        guard code == 0 else {
            throw PortReuseError(.notify, address: path, errno: Errno(rawValue: code),
                diagnosis: .other("NOTIFY_SOCKET=\(path) does not accept readiness messages; is the supervisor still running?"))
        }
        return true
    }
}
