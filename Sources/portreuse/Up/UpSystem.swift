import Glibc
import PortReuse

/// The write end of the signal pipe, set once before any handler is installed.
nonisolated(unsafe) private var signalPipeWriteEnd: Int32 = -1

/// The handler of every signal `up` takes: one byte, the signal's number, into the pipe (async-signal-safe).
private func forwardSignal(_ signal: Int32) {
    let saved = errno
    var byte = UInt8(truncatingIfNeeded: signal)
    _ = write(signalPipeWriteEnd, &byte, 1)
    errno = saved
}

/// Signals as bytes in a pipe that the supervisor's poll loop reads: the self-pipe trick.
struct SignalPipe {
    let readEnd: Int32

    /// The signals `up` handles; children start with their default actions and an empty mask.
    static let handled: [Int32] = [SIGHUP, SIGTERM, SIGINT, SIGQUIT, SIGCHLD, SIGUSR2]

    init() throws(CommandFailure) {
        guard let ends = FileSystem.pipe(nonBlocking: true) else { throw CommandFailure("cannot create a pipe: \(FileSystem.errorText())") }
        readEnd = ends.read
        signalPipeWriteEnd = ends.write
        var action = sigaction()
        action.__sigaction_handler.sa_handler = forwardSignal
        sigemptyset(&action.sa_mask)
        action.sa_flags = SA_RESTART | SA_NOCLDSTOP  // no SIGCHLD when the probe pauses a generation
        for signal in Self.handled { sigaction(signal, &action, nil) }
        signal(SIGPIPE, SIG_IGN)
        var none = sigset_t()
        sigemptyset(&none)
        sigprocmask(SIG_SETMASK, &none, nil)  // a parent (a test runner's thread) may have blocked some
    }

    /// The signals that arrived since the last call, in order.
    func take() -> [Int32] {
        var buffer = [UInt8](repeating: 0, count: 64)
        var signals: [Int32] = []
        while true {
            let count = read(readEnd, &buffer, buffer.count)
            guard count > 0 else { return signals }
            signals += buffer[0..<count].map { Int32($0) }
        }
    }
}

/// A unix datagram socket that receives one generation's sd_notify messages (`NOTIFY_SOCKET`).
final class NotifyReceiver {
    let path: String
    let descriptor: Int32

    init(descriptor: Int32, path: String) {
        self.descriptor = descriptor
        self.path = path
    }

    /// A new socket at `path` (a stale file there is replaced).
    convenience init(path: String) throws(CommandFailure) {
        unlink(path)
        let descriptor = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        guard descriptor >= 0 else { throw CommandFailure("cannot create a notify socket: \(FileSystem.errorText())") }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else {
            close(descriptor)
            throw CommandFailure("the notify socket path \(path) is too long; set TMPDIR to a shorter folder")
        }
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: bytes) }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(descriptor, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard bound == 0 else {
            let text = FileSystem.errorText()
            close(descriptor)
            throw CommandFailure("cannot bind the notify socket \(path): \(text)")
        }
        self.init(descriptor: descriptor, path: path)
    }

    /// The assignments received since the last call (`READY=1`, `STATUS=…`), in order.
    func take() -> [String] {
        var buffer = [UInt8](repeating: 0, count: 4096)
        var lines: [String] = []
        while true {
            let count = recv(descriptor, &buffer, buffer.count, Int32(MSG_DONTWAIT))
            guard count > 0 else { return lines }
            lines += String(decoding: buffer[0..<count], as: UTF8.self).split(separator: "\n").map(String.init)
        }
    }

    deinit {
        close(descriptor)
        unlink(path)
    }
}

/// Starting a generation: `posix_spawn` with the sockets at 3, 4, … and nothing else inherited.
enum Spawner {
    /// Sets LISTEN_PID to the program's own pid, which only the program's process knows: a shell that
    /// exports its pid (`$$`) and then becomes the program (`exec`), keeping that pid.
    static let listenPIDWrapper = "LISTEN_PID=$$; export LISTEN_PID; exec \"$0\" \"$@\""

    private typealias CloseFrom = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32
    /// glibc 2.34+; Glibc's module map does not export it.
    private static let addCloseFrom: CloseFrom? = dlsym(dlopen(nil, RTLD_NOW), "posix_spawn_file_actions_addclosefrom_np")
        .map { unsafeBitCast($0, to: CloseFrom.self) }

    /// Starts `arguments` (the first is the executable's path) in a process group of its own, with
    /// `descriptors` as 3, 4, …, stdin from /dev/null, stdout and stderr shared with `up`, default signal
    /// actions and an empty signal mask. Returns its pid.
    static func spawn(_ arguments: [String], environment: [String], descriptors: [Int32], setListenPID: Bool) throws(CommandFailure) -> pid_t {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0)
        for (index, descriptor) in descriptors.enumerated() {
            posix_spawn_file_actions_adddup2(&actions, descriptor, 3 + Int32(index))
        }
        if let addCloseFrom { _ = addCloseFrom(&actions, 3 + Int32(descriptors.count)) }

        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var none = sigset_t(), defaults = sigset_t()
        sigemptyset(&none)
        sigemptyset(&defaults)
        for signal in SignalPipe.handled + [SIGPIPE] { sigaddset(&defaults, signal) }
        posix_spawnattr_setsigmask(&attributes, &none)
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        posix_spawnattr_setpgroup(&attributes, 0)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))

        let argv = setListenPID ? ["/bin/sh", "-c", listenPIDWrapper] + arguments : arguments
        var pid = pid_t()
        let code = FileSystem.withCStrings(argv) { argv in
            FileSystem.withCStrings(environment) { envp in posix_spawn(&pid, argv[0]!, &actions, &attributes, argv, envp) }
        }
        guard code == 0 else { throw CommandFailure("cannot start \(arguments[0]): \(FileSystem.errorText(code))") }
        return pid
    }

    /// Makes this process the reaper of its orphaned descendants (a generation's workers whose master
    /// died), so that `up` sees them exit. The corresponding C call is `prctl(PR_SET_CHILD_SUBREAPER, 1)`.
    static func becomeSubreaper() {
        typealias Prctl = @convention(c) (Int32, UInt, UInt, UInt, UInt) -> Int32
        guard let symbol = dlsym(dlopen(nil, RTLD_NOW), "prctl") else { return }
        _ = unsafeBitCast(symbol, to: Prctl.self)(36 /* PR_SET_CHILD_SUBREAPER */, 1, 0, 0, 0)
    }
}

/// An exit status as a person reads it.
struct ExitStatus: Hashable, Sendable, CustomStringConvertible {
    /// The wait status from `waitpid`.
    var raw: Int32

    var signal: Int32? { raw & 0x7F == 0 ? nil : raw & 0x7F }
    var code: Int32 { (raw >> 8) & 0xFF }
    var isSuccess: Bool { raw == 0 }

    var description: String {
        if let signal { return "killed by \(SignalName(signal))" }
        return "exit status \(code)"
    }
}
