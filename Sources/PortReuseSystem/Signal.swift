#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

#if canImport(Glibc) || canImport(Darwin)
/// The signals the tools send, handle and forward, by name: the numbers of this system (no code above the system
/// layer reads C's names). ``SignalName`` shows one, and parses one from a person's words.
package enum Signal {
    package static let hangUp = SIGHUP
    package static let interrupt = SIGINT
    package static let quit = SIGQUIT
    package static let kill = SIGKILL
    package static let user1 = SIGUSR1
    package static let user2 = SIGUSR2
    package static let pipe = SIGPIPE
    package static let terminate = SIGTERM
    package static let child = SIGCHLD
    package static let `continue` = SIGCONT
    package static let stop = SIGSTOP
    package static let windowChange = SIGWINCH
    package static let abort = SIGABRT
    package static let bus = SIGBUS
    package static let segmentationFault = SIGSEGV
}

/// The environment of this process. The corresponding C functions are `getenv`, `setenv` and `unsetenv`.
package enum Environment {
    /// The value of `name`, or `nil` when it is not set.
    package static func value(_ name: String) -> String? { getenv(name).map { String(cString: $0) } }

    /// Sets `name` to `value` (replacing what it was).
    package static func set(_ name: String, _ value: String) { setenv(name, value, 1) }

    /// Removes `name`.
    package static func unset(_ name: String) { unsetenv(name) }
}
#endif
