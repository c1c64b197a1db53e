#if os(Linux)
import CPortReuseSystem
import Glibc
import SystemPackage

/// Processes on Linux: pidfds, signals, reaping, namespaces, another process's memory. Each function says which
/// C call it wraps and throws a ``SystemError`` that names it.
package enum Processes {
    /// A descriptor naming the process `pid` and no other, ever. The corresponding C call is `pidfd_open`
    /// (Linux 5.3+).
    package static func open(_ pid: pid_t) throws(SystemError) -> Descriptor {
        Descriptor(try systemCall("pidfd_open") { csystem_pidfd_open(pid) })
    }

    /// A descriptor naming the thread `tid` and no other, ever: once the thread is gone it names nothing, even
    /// when its id is reused. The corresponding C call is `pidfd_open` with `PIDFD_THREAD` (Linux 6.9+; EINVAL
    /// before).
    package static func openThread(_ tid: pid_t) throws(SystemError) -> Descriptor {
        Descriptor(try systemCall("pidfd_open") { csystem_pidfd_open_thread(tid) })
    }

    /// A duplicate of descriptor `target` of the process `pidfd` names (close-on-exec): the very socket or file,
    /// shared with that process. Needs ptrace rights over it. The corresponding C call is `pidfd_getfd` (5.6+).
    /// `target` is the other process's number.
    package static func duplicate(_ target: Descriptor, of pidfd: Descriptor) throws(SystemError) -> Descriptor {
        // EBADF: the process no longer holds `target` (it closed it meanwhile), not a bug here.
        Descriptor(try systemCall("pidfd_getfd", unacceptable: [.badAddress]) { csystem_pidfd_getfd(pidfd.rawValue, target.rawValue) })
    }

    /// A duplicate of descriptor `target` of process `pid`; see ``duplicate(_:of:)``.
    package static func duplicate(_ target: Descriptor, ofProcess pid: pid_t) throws(SystemError) -> Descriptor {
        let pidfd = try open(pid)
        defer { Files.close(pidfd) }
        return try duplicate(target, of: pidfd)
    }

    /// Sends `signal` to exactly the process `pidfd` names, even if its pid was reused since. The corresponding
    /// C call is `pidfd_send_signal`.
    package static func signal(_ pidfd: Descriptor, _ signal: Int32) throws(SystemError) {
        _ = try systemCall("pidfd_send_signal") { csystem_pidfd_send_signal(pidfd.rawValue, signal) }
    }

    /// Sends `signal` to a process (pid > 0) or a process group (pid < 0); whether it was sent. A process that
    /// is gone (ESRCH) or not ours (EPERM) is an answer, not an error; a signal number that is not one (EINVAL)
    /// is a programmer's error and stops the program. The corresponding C call is `kill`.
    @discardableResult
    package static func kill(_ pid: pid_t, _ signal: Int32) -> Bool {
        if Glibc.kill(pid, signal) == 0 { return true }
        precondition(errno != EINVAL, "kill(\(pid), \(signal)): \(signal) is not a signal")
        return false
    }

    /// Replaces this process's image with `path` (`environment`: `NAME=value` entries, `nil` for this process's
    /// own), after flushing what stdio buffered; returns only when that failed, with why. The corresponding C
    /// call is `execve`.
    package static func replaceImage(with path: String, arguments: [String], environment: [String]? = nil) -> Errno {
        fflush(nil)  // what print() buffered must not be lost with this process image
        let code = Files.withCStrings(arguments) { argv in
            Files.withCStrings(environment ?? ProcessSpawn.currentEnvironment()) { envp in
                execve(path, argv, envp)
                return errno
            }
        }
        return Errno(rawValue: code)
    }

    /// Whether process `pid` exists (EPERM: it exists, as another user's). The corresponding C call is `kill(pid, 0)`.
    package static func exists(_ pid: pid_t) -> Bool {
        Glibc.kill(pid, 0) == 0 || errno == EPERM
    }

    /// Whether any process of group `group` still exists (EPERM: it exists, as another user's).
    package static func groupExists(_ group: pid_t) -> Bool { exists(-group) }

    /// What /proc/PID/stat says of a process: its state, parent, process group and start time.
    package struct Stat: Sendable, Equatable {
        /// `R` running, `S` sleeping, `T` stopped, `t` traced, `Z` zombie, …
        package var state: Character
        package var parent: pid_t
        package var processGroup: pid_t
        /// When it started, in clock ticks since boot: with the pid, it names one process for good.
        package var startTime: UInt64
    }

    /// The process's /proc/PID/stat, or `nil` when it is gone (or unreadable).
    package static func stat(of pid: pid_t) -> Stat? {
        guard pid > 0, let text = Files.read("/proc/\(pid)/stat", limit: 4096), let close = text.lastIndex(of: UInt8(ascii: ")")) else {
            return nil
        }
        // After "pid (comm)": state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime
        // cutime cstime priority nice threads itrealvalue starttime (fields 3 to 22).
        let fields = text[(close + 1)...].split(separator: UInt8(ascii: " "))
        guard fields.count > 19, let state = fields[0].first, let parent = pid_t(String(decoding: fields[1], as: UTF8.self)),
            let group = pid_t(String(decoding: fields[2], as: UTF8.self)), let start = UInt64(String(decoding: fields[19], as: UTF8.self))
        else { return nil }
        return Stat(state: Character(Unicode.Scalar(state)), parent: parent, processGroup: group, startTime: start)
    }

    /// Whether every thread of `pid` is stopped (or the process is gone): SIGSTOP is asynchronous, and a
    /// thread busy in the kernel (an `accept` under way) finishes that call before it stops, while
    /// /proc/PID/stat shows only the main thread's state.
    package static func isStopped(_ pid: pid_t) -> Bool {
        let threads = Files.list("/proc/\(pid)/task").compactMap { pid_t($0) }
        return threads.allSatisfy { thread in
            guard let text = Files.read("/proc/\(pid)/task/\(thread)/stat", limit: 4096), let close = text.lastIndex(of: UInt8(ascii: ")")),
                close + 2 < text.count
            else { return true }
            return [UInt8(ascii: "T"), UInt8(ascii: "Z"), UInt8(ascii: "X")].contains(text[close + 2])
        }
    }

    /// The soft and hard limits on this process's descriptors (RLIMIT_NOFILE). The corresponding C call is
    /// `getrlimit`.
    package static func descriptorLimits() -> (soft: UInt64, hard: UInt64) {
        var limit = rlimit()
        guard getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return (1024, 1024) }
        return (UInt64(limit.rlim_cur), UInt64(limit.rlim_max))
    }

    /// Raises the soft descriptor limit to `wanted` (at most the hard limit); returns the soft limit then in
    /// force. The corresponding C call is `setrlimit`.
    @discardableResult
    package static func raiseDescriptorLimit(to wanted: UInt64) -> UInt64 {
        let (soft, hard) = descriptorLimits()
        guard soft < wanted else { return soft }
        var limit = rlimit(rlim_cur: rlim_t(min(wanted, hard)), rlim_max: rlim_t(hard))
        return setrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit) == 0 ? UInt64(limit.rlim_cur) : soft
    }

    /// The processes descended from `pid` (children, their children, …), each with its start time, from one
    /// pass over /proc.
    package static func descendants(of pid: pid_t) -> [(pid: pid_t, startTime: UInt64)] {
        Tree().descendants(of: pid)
    }

    /// Every process's parent, from one pass over /proc. A pass reads every process's stat, so its cost grows
    /// with the host's processes: a caller that needs the descendants of several processes reads one tree.
    package struct Tree {
        private var children: [pid_t: [(pid_t, UInt64)]] = [:]

        package init() {
            for entry in Files.list("/proc") {
                guard let child = pid_t(entry), let stat = stat(of: child) else { continue }
                children[stat.parent, default: []].append((child, stat.startTime))
            }
        }

        /// Every process, each with its start time, as they were when the tree was read.
        package var all: [(pid: pid_t, startTime: UInt64)] { children.values.flatMap { $0.map { (pid: $0.0, startTime: $0.1) } } }

        /// The processes descended from `pid`, each with its start time, as they were when the tree was read.
        package func descendants(of pid: pid_t) -> [(pid: pid_t, startTime: UInt64)] {
            var found: [(pid: pid_t, startTime: UInt64)] = []
            var queue = [pid]
            while let next = queue.popLast(), found.count < 100_000 {
                for (child, start) in children[next] ?? [] {
                    found.append((child, start))
                    queue.append(child)
                }
            }
            return found
        }
    }

    /// Whether the process `pid` that started at `startTime` is still there (not a later process with its pid).
    package static func isAlive(_ pid: pid_t, startedAt startTime: UInt64) -> Bool {
        guard let stat = stat(of: pid) else { return false }
        return stat.startTime == startTime && stat.state != "Z" && stat.state != "X"
    }

    /// Makes this process the reaper of its orphaned descendants. The corresponding C call is
    /// `prctl(PR_SET_CHILD_SUBREAPER, 1)`.
    package static func becomeSubreaper() throws(SystemError) {
        _ = try systemCall("prctl(PR_SET_CHILD_SUBREAPER)") { csystem_set_child_subreaper(1) }
    }

    /// Asks the kernel to send `signal` to this process when its parent thread dies. The corresponding C call is
    /// `prctl(PR_SET_PDEATHSIG)`.
    package static func setParentDeathSignal(_ signal: Int32) throws(SystemError) {
        _ = try systemCall("prctl(PR_SET_PDEATHSIG)") { csystem_set_parent_death_signal(signal) }
    }

    /// Moves the calling thread into the network namespace `descriptor` names. The corresponding C call is
    /// `setns(fd, CLONE_NEWNET)`.
    package static func enterNetworkNamespace(_ descriptor: Descriptor) throws(SystemError) {
        _ = try systemCall("setns") { csystem_setns(descriptor.rawValue, csystem_clone_newnet()) }
    }

    /// Reads `count` bytes at `address` in process `pid` (ptrace rights needed); fewer when the range ends in an
    /// unmapped page. The corresponding C call is `process_vm_readv`.
    package static func readMemory(of pid: pid_t, at address: UInt64, count: Int) throws(SystemError) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        // EFAULT: the address is not the other process's memory (what it passed to its call), not this one's bug.
        let read = try systemCall("process_vm_readv", unacceptable: []) {
            bytes.withUnsafeMutableBytes { csystem_read_process_memory(pid, address, $0.baseAddress, UInt(count)) }
        }
        return Array(bytes[0..<read])
    }

    /// Whether a file carries file capabilities (the `security.capability` extended attribute, as `getcap`
    /// shows). The corresponding C call is `getxattr`.
    package static func hasFileCapabilities(_ path: String) -> Bool {
        csystem_getxattr(path, "security.capability", nil, 0) > 0
    }

    /// The real path of this executable, without the " (deleted)" the kernel adds once the file was replaced.
    /// The id of the user named `name` (or given as a number). The corresponding C function is `getpwnam_r`.
    package static func userID(_ name: String) -> UInt32? {
        if let number = UInt32(name) { return number }
        var entry = passwd()
        var result: UnsafeMutablePointer<passwd>?
        var buffer = [CChar](repeating: 0, count: 16_384)
        guard getpwnam_r(name, &entry, &buffer, buffer.count, &result) == 0, result != nil else { return nil }
        return entry.pw_uid
    }

    /// The id of the group named `name` (or given as a number). The corresponding C function is `getgrnam_r`.
    package static func groupID(_ name: String) -> UInt32? {
        if let number = UInt32(name) { return number }
        var entry = group()
        var result: UnsafeMutablePointer<group>?
        var buffer = [CChar](repeating: 0, count: 65_536)
        guard getgrnam_r(name, &entry, &buffer, buffer.count, &result) == 0, result != nil else { return nil }
        return entry.gr_gid
    }

    /// The corresponding C call is `readlink("/proc/self/exe")`.
    package static func currentExecutable() throws(SystemError) -> String {
        let path = try readLink("/proc/self/exe")
        return path.hasSuffix(" (deleted)") ? String(path.dropLast(10)) : path
    }

    /// The target of a symbolic link (a /proc/PID/fd entry, say). The corresponding C call is `readlink`.
    package static func readLink(_ path: String) throws(SystemError) -> String {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let length = try systemCall("readlink") { readlink(path, &buffer, Int(PATH_MAX)) }
        return String(decoding: buffer[0..<length].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// The inode of the socket process `pid` has at `descriptor`, from its `socket:[INODE]` link in /proc/PID/fd;
    /// `nil` for anything else, or when the process is gone or unreadable.
    package static func socketInode(of pid: pid_t, descriptor: Descriptor) -> UInt64? {
        guard let text = try? readLink("/proc/\(pid)/fd/\(descriptor)"), text.hasPrefix("socket:["), text.hasSuffix("]") else { return nil }
        return UInt64(text.dropFirst(8).dropLast())
    }

    /// Whether descriptor `descriptor` of process `pid` is close-on-exec (O_CLOEXEC in the `flags:` line of
    /// /proc/PID/fdinfo/FD), or `nil` when that cannot be read.
    package static func isCloseOnExec(_ descriptor: Descriptor, of pid: pid_t) -> Bool? {
        field("flags", in: "/proc/\(pid)/fdinfo/\(descriptor)").flatMap { Int($0, radix: 8) }.map { $0 & Int(O_CLOEXEC) != 0 }
    }

    /// The value of the `key:` line of a small /proc file (/proc/PID/status, /proc/PID/fdinfo/FD), its blanks
    /// removed (`CapEff:\t000001ff` gives `000001ff`); `nil` when the file cannot be read or has no such line.
    package static func field(_ key: String, in path: String) -> String? {
        guard let bytes = Files.read(path, limit: 8192) else { return nil }
        let prefix = key + ":"
        for line in String(decoding: bytes, as: UTF8.self).split(separator: "\n") where line.hasPrefix(prefix) {
            return String(line.dropFirst(prefix.count).filter { $0 != " " && $0 != "\t" })
        }
        return nil
    }

    /// The inodes of the sockets process `pid` has open; empty when the process is gone or unreadable.
    package static func socketInodes(of pid: pid_t) -> Set<UInt64> {
        Set(Files.list("/proc/\(pid)/fd").compactMap { entry in Descriptor(entry).flatMap { socketInode(of: pid, descriptor: $0) } })
    }

    /// Waits for a child to change state: its pid and wait status, or `nil` with `noHang` when none has.
    /// The corresponding C call is `waitpid`.
    package static func wait(_ pid: pid_t = -1, noHang: Bool) throws(SystemError) -> (pid: pid_t, status: ExitStatus)? {
        var status: Int32 = 0
        let found = try systemCall("waitpid") { waitpid(pid, &status, noHang ? WNOHANG : 0) }
        return found == 0 ? nil : (found, ExitStatus(raw: status))
    }

    /// This process's id. The corresponding C function is `getpid`.
    package static var currentID: pid_t { getpid() }

    /// This process's effective user id (what the kernel checks). The corresponding C function is `geteuid`.
    package static var effectiveUserID: UInt32 { geteuid() }

    /// This process's real user and group ids (who started it). The corresponding C functions are `getuid`, `getgid`.
    package static var realUserID: UInt32 { getuid() }
    package static var realGroupID: UInt32 { getgid() }

    /// The name of user `uid`, or `nil`. The corresponding C function is `getpwuid_r`.
    package static func userName(_ uid: UInt32) -> String? {
        var entry = passwd()
        var result: UnsafeMutablePointer<passwd>?
        var buffer = [CChar](repeating: 0, count: 16_384)
        guard getpwuid_r(uid, &entry, &buffer, buffer.count, &result) == 0, result != nil, let name = entry.pw_name else { return nil }
        return String(cString: name)
    }

    /// The name of group `gid`, or `nil`. The corresponding C function is `getgrgid_r`.
    package static func groupName(_ gid: UInt32) -> String? {
        var entry = group()
        var result: UnsafeMutablePointer<group>?
        var buffer = [CChar](repeating: 0, count: 65_536)
        guard getgrgid_r(gid, &entry, &buffer, buffer.count, &result) == 0, result != nil, let name = entry.gr_name else { return nil }
        return String(cString: name)
    }

    /// The process group of `pid`, or `nil` when it is gone. The corresponding C function is `getpgid`.
    package static func processGroup(of pid: pid_t) -> pid_t? {
        let group = getpgid(pid)
        return group < 0 ? nil : group
    }

    /// Sleeps the calling thread for `microseconds` (a signal may end it early). The corresponding C function is `usleep`.
    package static func sleep(microseconds: UInt32) { usleep(microseconds) }

    /// Ends this process with `code`, flushing stdio. The corresponding C function is `exit`.
    package static func exit(_ code: Int32) -> Never { Glibc.exit(code) }

    /// The local time of day now: hour, minute, second and millisecond (for log lines).
    package static var localTimeOfDay: (hour: Int, minute: Int, second: Int, millisecond: Int) {
        var time = timespec()
        clock_gettime(CLOCK_REALTIME, &time)
        var parts = tm()
        var seconds = time.tv_sec
        localtime_r(&seconds, &parts)
        return (Int(parts.tm_hour), Int(parts.tm_min), Int(parts.tm_sec), time.tv_nsec / 1_000_000)
    }

    /// The monotonic clock in nanoseconds (CLOCK_MONOTONIC: it carries on across execve, never jumps).
    package static var monotonicNanoseconds: UInt64 {
        var time = timespec()
        clock_gettime(CLOCK_MONOTONIC, &time)
        return UInt64(time.tv_sec) * 1_000_000_000 + UInt64(time.tv_nsec)
    }

    /// The wall clock in seconds since 1970 (CLOCK_REALTIME), for what a person reads.
    package static var wallClockSeconds: Double {
        var time = timespec()
        clock_gettime(CLOCK_REALTIME, &time)
        return Double(time.tv_sec) + Double(time.tv_nsec) / 1e9
    }
}

/// The numbers of the socket calls a seccomp filter may hand to a supervisor, on this architecture.
package enum SocketCall {
    package static var bind: Int32 { csystem_syscall_bind() }
    package static var connect: Int32 { csystem_syscall_connect() }
    package static var sendto: Int32 { csystem_syscall_sendto() }
    package static var sendmsg: Int32 { csystem_syscall_sendmsg() }
}

/// The blocking system calls a thread may wait in (its number read from `/proc/PID/task/TID/syscall`), told
/// apart by the names of this architecture's calls (`csystem_syscall_wait_kind`), not by numbers written here.
package enum BlockingCall: Sendable {
    /// accept, accept4: argument 0 is the socket.
    case accept
    /// epoll_wait, epoll_pwait, epoll_pwait2: argument 0 is the epoll descriptor.
    case epoll
    /// poll, ppoll: arguments 0 and 1 are the pollfd array and its count.
    case poll
    /// select, pselect6: arguments 0 and 1 are the count and the read set.
    case select
    /// recvfrom, recvmsg, recvmmsg: argument 0 is the socket.
    case receive

    /// The call with this number, or `nil` for any other.
    package init?(number: Int) {
        switch csystem_syscall_wait_kind(number) {
        case csystem_wait_accept: self = .accept
        case csystem_wait_epoll: self = .epoll
        case csystem_wait_poll: self = .poll
        case csystem_wait_select: self = .select
        case csystem_wait_receive: self = .receive
        default: return nil
        }
    }
}

/// How a process ended, as `waitpid` reports it and a person reads it.
package struct ExitStatus: Hashable, Sendable, Codable, CustomStringConvertible {
    /// The wait status from `waitpid`.
    package var raw: Int32

    package init(raw: Int32) { self.raw = raw }

    /// The signal that killed it, if one did.
    package var signal: Int32? { raw & 0x7F == 0 ? nil : raw & 0x7F }
    /// Its exit code (0 when a signal killed it).
    package var code: Int32 { (raw >> 8) & 0xFF }
    package var isSuccess: Bool { raw == 0 }
    /// What a shell reports: the exit code, or 128 + the signal.
    package var shellStatus: Int32 { signal.map { 128 + $0 } ?? code }

    package var description: String {
        if let signal { return "killed by \(SignalName(signal))" }
        return "exit status \(code)"
    }
}

/// A signal by number, read and shown by name (`TERM`, `SIGTERM`, `15`).
package struct SignalName: Hashable, Sendable, CustomStringConvertible {
    package var number: Int32

    package static let table: [(String, Int32)] = [
        ("HUP", SIGHUP), ("INT", SIGINT), ("QUIT", SIGQUIT), ("KILL", SIGKILL), ("USR1", SIGUSR1), ("USR2", SIGUSR2),
        ("TERM", SIGTERM), ("WINCH", SIGWINCH), ("CONT", SIGCONT), ("STOP", SIGSTOP), ("ALRM", SIGALRM), ("PWR", SIGPWR),
        ("ILL", SIGILL), ("TRAP", SIGTRAP), ("ABRT", SIGABRT), ("BUS", SIGBUS), ("FPE", SIGFPE), ("SEGV", SIGSEGV),
        ("PIPE", SIGPIPE), ("CHLD", SIGCHLD), ("TSTP", SIGTSTP), ("SYS", SIGSYS),
    ]

    package init(_ number: Int32) { self.number = number }

    /// A name with or without SIG, in any case, or a number from 1 to 64; `nil` for anything else.
    package init?(parsing text: String) {
        var name = text.uppercased()
        if name.hasPrefix("SIG") { name = String(name.dropFirst(3)) }
        if let found = Self.table.first(where: { $0.0 == name }) {
            number = found.1
        } else if text.allSatisfy(\.isASCII), let value = Int32(text), value > 0, value < 65 {
            number = value
        } else {
            return nil
        }
    }

    package var description: String { Self.table.first { $0.1 == number }.map { "SIG" + $0.0 } ?? "signal \(number)" }
}
#endif
