#if os(Linux)
import CReuseRules
import Synchronization
import SystemPackage
import PortReuseSystem
import PortReuse

/// What `portreuse run`'s kernel path does to a program's socket calls: the same rules as the LD_PRELOAD
/// shim (Sources/CReuseShim/shim.c), applied from outside the program; the endpoint rewrite and the socket
/// options both set are one C implementation they share (CReuseRules).
package struct InterceptionRules: Sendable {
    /// The policy whose options (``SharingTable/options(_:_:)``) every bound AF_INET/AF_INET6 socket gets.
    package var policy: SharingPolicy
    /// Rewrites every bind (`--bind`).
    package var bind: EndpointRewrite?
    /// Binds unbound sockets here before connect(), sendto() and sendmsg() (`--source`).
    package var source: EndpointRewrite?
    /// IP_TRANSPARENT / IPV6_TRANSPARENT before bind.
    package var transparent: Bool
    /// Called with one line per call changed (`--verbose`), or `nil`.
    package var log: (@Sendable (String) -> Void)?
    /// Warnings said once whatever the verbosity (a second listener moved onto the first one's address by
    /// --bind), or `nil`.
    package var warn: (@Sendable (String) -> Void)?
    /// `portreuse up`: binds to a held address get the held socket; every other call runs untouched (no
    /// policy, no rewrite). Refusals are said through `log` (which is then always set).
    package var swap: SocketSwap?

    package init(policy: SharingPolicy, bind: EndpointRewrite? = nil, source: EndpointRewrite? = nil, transparent: Bool = false,
                 log: (@Sendable (String) -> Void)? = nil) {
        self.policy = policy
        self.bind = bind.flatMap { $0.isEmpty ? nil : $0 }
        self.source = source.flatMap { $0.isEmpty ? nil : $0 }
        self.transparent = transparent
        self.log = log
    }

    /// The rules of `portreuse up`: swap the held sockets in, touch nothing else.
    package static func swapping(_ swap: SocketSwap, log: @escaping @Sendable (String) -> Void) -> InterceptionRules {
        var rules = InterceptionRules(policy: .shared, log: log)
        rules.swap = swap
        return rules
    }

    /// Whether a bind only gets the policy's options (no rewrite, source, IP_TRANSPARENT, log or swap): then
    /// its address does not matter, and the interceptor takes the short path (``SocketCallInterceptor``).
    var onlySetsOptions: Bool { bind == nil && source == nil && !transparent && log == nil && swap == nil }

    /// Whether connect(), sendto() and sendmsg() must be intercepted too (only with a source).
    package var interceptsClients: Bool { source != nil }

    /// The system calls the filter hands to the interceptor under these rules.
    package var systemCalls: [Int32] {
        [SocketCall.bind] + (interceptsClients ? [SocketCall.connect, SocketCall.sendto, SocketCall.sendmsg] : [])
    }
}

/// Answers the socket calls of a program (and of all its descendants) that a seccomp filter hands over with
/// SECCOMP_RET_USER_NOTIF, on one thread of its own.
///
/// The program runs its calls itself: the interceptor takes a duplicate of its socket (pidfd_getfd), sets the
/// policy's options on it, and lets the call go on (SECCOMP_USER_NOTIF_FLAG_CONTINUE). Where the address
/// changes (``InterceptionRules/bind``, or a source for an unbound socket), it binds the duplicate itself and
/// answers with that bind's result, so that the kernel never reads the program's memory a second time. A
/// pointer it cannot read, a socket that is not AF_INET/AF_INET6 stream or datagram, a descriptor that is not
/// a socket: the call goes on untouched, and the program gets what the kernel says without us.
package final class SocketCallInterceptor: @unchecked Sendable {
    /// The notification descriptor (of the filter ``ProcessSpawn`` installs in the program's process as it
    /// starts); closed with the interceptor.
    package let notificationDescriptor: Descriptor
    package let rules: InterceptionRules
    private let wake: (read: Descriptor, write: Descriptor)
    private let ended: (read: Descriptor, write: Descriptor)
    private let started = Atomic<Bool>(false)
    /// pidfds of the threads that called lately, by thread id (used by the serving thread only): saves a
    /// pidfd_open and a close per call. Each names exactly its thread (``callerPidfd(_:)``), so a reused id never
    /// reaches another process through it: pidfd_getfd then fails (ESRCH) and the id is opened again.
    private var pidfds: [Int32: Descriptor] = [:]
    /// The first address a --bind moved (``noteMoved(_:to:)``), and whether a second one was said.
    private var firstMoved: SocketAddress?
    private var saidMerged = false
    /// Lines said once so far (``sayOnce(_:)``): refusals on the program's behalf, a bind of an address up does not hold.
    private var saidOnce: Set<String> = []
    /// Binds given a held socket so far (`portreuse up`), for the log's sake.
    private var swapped = 0
    private let answered = Atomic<Int>(0)

    /// Takes ownership of `notificationDescriptor`.
    package init(notificationDescriptor: Descriptor, rules: InterceptionRules) throws(SystemError) {
        self.notificationDescriptor = notificationDescriptor
        self.rules = rules
        // Linux 6.6+: the notifying thread and this one hand the CPU to each other; older kernels say EINVAL.
        Seccomp.synchronizeWakeUps(notificationDescriptor)
        wake = try Files.pipe()
        do { ended = try Files.pipe() } catch {
            Files.close(wake.read)
            Files.close(wake.write)
            throw error
        }
    }

    deinit {
        for fd in [notificationDescriptor, wake.read, wake.write, ended.read] + Array(pidfds.values) { Files.close(fd) }
        if !started.load(ordering: .acquiring) { Files.close(ended.write) }
    }

    /// How many notifications were answered so far.
    package var answeredCount: Int { answered.load(ordering: .relaxed) }

    /// Runs ``serve()`` on a thread of its own (once).
    package func start() throws(SystemError) {
        guard !started.exchange(true, ordering: .acquiringAndReleasing) else { return }
        // A SystemThread takes no signal: a signal the process must see (a supervisor's SIGHUP during an upgrade
        // by exec) would otherwise run its handler on this thread.
        do {
            _ = try SystemThread.start(detached: true) { [self] in
                serve()
                Files.close(ended.write)  // stop() sees the end
            }
        } catch {
            started.store(false, ordering: .releasing)
            throw error
        }
    }

    /// Asks the thread to end and waits for it at most `timeout` seconds; whether it ended. Each answer is
    /// bounded (no call made on the program's behalf blocks), so the wait is one answer at most.
    @discardableResult
    package func stop(timeout: Double = 2) -> Bool {
        try? Files.write([1], to: wake.write)
        return waitUntilEnded(timeout: timeout)
    }

    /// Waits at most `timeout` seconds for the thread to end (every program gone, or ``stop(timeout:)``).
    package func waitUntilEnded(timeout: Double) -> Bool {
        guard started.load(ordering: .acquiring) else { return true }
        return Files.readable([ended.read], milliseconds: Int32(max(0, timeout) * 1000))[0]
    }

    /// Answers notifications until the notification descriptor fails or hangs up (every process under the
    /// filter is gone) or ``stop(timeout:)`` is called.
    package func serve() {
        while Sys.waitReadable(notificationDescriptor.rawValue, orWake: wake.read.rawValue) == .readable {
            // The receive blocks whatever O_NONBLOCK says: it runs only once poll saw a notification, so that
            // stop() is seen.
            do {
                if let notification = try Seccomp.receive(notificationDescriptor) { answer(notification) }
            } catch {
                return
            }
        }
    }

    // MARK: - Answers

    /// ``Seccomp/Answer``, or `none`: the notification is gone (the process died, or its call was interrupted),
    /// nothing to answer.
    private typealias Answer = Seccomp.Answer?

    private static let bindCall = SocketCall.bind
    private static let connectCall = SocketCall.connect
    private static let sendtoCall = SocketCall.sendto
    private static let sendmsgCall = SocketCall.sendmsg

    private func answer(_ notification: SeccompNotification) {
        let args = notification.arguments
        let decision: Answer
        guard notification.isNativeArchitecture else { return respond(notification.id, .proceed) }
        switch notification.call {
        case Self.bindCall:
            decision = bind(notification, fd: Descriptor(Int32(truncatingIfNeeded: args[0])), pointer: args[1], length: args[2])
        case Self.connectCall:
            decision = source("connect", notification, fd: Descriptor(Int32(truncatingIfNeeded: args[0])), pointer: args[1], length: args[2], sendFlags: nil)
        case Self.sendtoCall:
            decision = source("sendto", notification, fd: Descriptor(Int32(truncatingIfNeeded: args[0])), pointer: args[4], length: args[5],
                              sendFlags: Int32(truncatingIfNeeded: args[3]))
        case Self.sendmsgCall:
            // struct msghdr starts with msg_name (a pointer) and msg_namelen (a socklen_t).
            guard let header = read(notification.thread, at: args[1], count: 16) else { decision = .proceed; break }
            let name = header.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 0, as: UInt64.self) }
            let nameLength = header.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 8, as: UInt32.self) }
            decision = source("sendmsg", notification, fd: Descriptor(Int32(truncatingIfNeeded: args[0])), pointer: name, length: UInt64(nameLength),
                              sendFlags: Int32(truncatingIfNeeded: args[2]))
        default:
            decision = .proceed
        }
        respond(notification.id, decision)
    }

    private func respond(_ id: UInt64, _ answer: Answer) {
        guard let answer else { return }
        // Not delivered: the process died or its call was interrupted meanwhile; nothing more to do.
        Seccomp.answer(id, answer, on: notificationDescriptor)
        answered.add(1, ordering: .relaxed)
    }

    /// `count` bytes of process `pid` at `address`, or `nil` when they cannot all be read.
    private func read(_ pid: Int32, at address: UInt64, count: Int) -> [UInt8]? {
        guard address != 0, let bytes = try? Processes.readMemory(of: pid, at: address, count: count),
            bytes.count == count
        else { return nil }
        return bytes
    }

    /// The socket address a call passes (``SocketAddress/init(passed:)``), or `nil`.
    private func address(_ pid: Int32, at pointer: UInt64, length: UInt64) -> SocketAddress? {
        let length = Int(truncatingIfNeeded: Int32(truncatingIfNeeded: length))  // the kernel's int addrlen
        guard length >= 2, length <= SocketAddress.largestPassedLength, let bytes = read(pid, at: pointer, count: length) else { return nil }
        return SocketAddress(passed: bytes)
    }

    private enum Target {
        /// The program's socket (a duplicate) and its transport.
        case socket(SocketHandle, Transport)
        /// Not one of ours to touch: the call goes on.
        case skip
        /// The notification is no longer pending.
        case gone
    }

    /// The program's socket, duplicated, when it is an AF_INET/AF_INET6 stream or datagram socket of one of
    /// `families` (``duplicate(_:of:)`` proves the caller first).
    private func target(_ notification: SeccompNotification, fd: Descriptor, families: [AddressFamily]) -> Target {
        let handle: SocketHandle
        switch duplicate(fd, of: notification) {
        case .descriptor(let duplicate): handle = SocketHandle(adopting: duplicate)
        case .unavailable: return .skip
        case .gone: return .gone
        }
        guard let descriptor = handle.systemDescriptor, let family = SocketReadings.family(descriptor), families.contains(family),
            let transport = try? handle.transport()
        else { return .skip }
        return .socket(handle, transport)
    }

    private func bind(_ notification: SeccompNotification, fd: Descriptor, pointer: UInt64, length: UInt64) -> Answer {
        if rules.onlySetsOptions { return setOptionsAndProceed(notification, fd: fd) }
        guard let requested = address(notification.thread, at: pointer, length: length) else { return .proceed }
        if let swap = rules.swap { return swapBind(swap, notification, fd: fd, requested: requested) }
        let socket: SocketHandle, transport: Transport
        switch target(notification, fd: fd, families: [requested.family]) {
        case .socket(let handle, let kind): (socket, transport) = (handle, kind)
        case .skip: return .proceed
        case .gone: return .none
        }

        var rewritten: SocketAddress?
        var note = ""
        if let rewrite = rules.bind {
            switch apply(rewrite, to: requested, socket: socket, peer: nil) {
            case .success(let address):
                rewritten = address
                noteMoved(requested, to: address)
            case .failure(let reason):
                // The part that fits still applies: the port (as the shim does), and the line says what did not.
                if let port = rewrite.port {
                    rewritten = SocketAddress(ip: requested.ip, port: port)
                    noteMoved(requested, to: rewritten!)
                    note = "; the address of --bind \(rewrite) not applied (\(reason.text)), its port is"
                } else {
                    note = "; --bind \(rewrite) not applied: \(reason.text)"
                }
            }
        } else if let source = rules.source, requested.port == 0, requested.ip.isUnspecified,
            case .success(let address) = apply(source, to: requested, socket: socket, peer: nil)
        {
            // A bind to 0.0.0.0:0 or [::]:0 leaves the socket as unbound as before: it gets the source (issue 20).
            rewritten = address
            if transport == .tcp && source.port == nil, let descriptor = socket.descriptor { _ = portreuse_rules_set_bind_address_no_port(descriptor) }
        }
        // What portreuse does here runs with its own credentials: only what the program may do itself.
        var privileges: CallerPrivileges?
        if rules.transparent || rewritten != nil {
            guard let read = callerPrivileges(notification, socket: socket) else { return .none }
            privileges = read
        }
        let (options, transparent) = setOptions(socket, transport, caller: notification.thread, privileges: privileges)
        var code: Int32?
        if let target = rewritten {
            if let privileges, !privileges.mayBind(port: target.port) {
                code = Errno.permissionDenied.rawValue
                sayOnce("bind of \(target) for \(who(notification.thread)) (asked for \(requested)) refused with EACCES, as the kernel would refuse "
                    + "the program: \(privileges.refusal(port: target.port))")
            } else {
                code = bindDuplicate(socket, to: target, transport)
            }
        }
        if let log = rules.log {
            let outcome = code.map { $0 == 0 ? "" : ": \(Errno(rawValue: $0))" } ?? ""
            log("bind fd \(fd) (\(transport == .tcp ? "TCP" : "UDP")) \(requested)\(rewritten.map { " -> \($0)" } ?? "") of \(who(notification.thread)), "
                + "options \(options)\(transparent ? ", IP_TRANSPARENT" : "")\(outcome)\(note)")
        }
        return code.map { .result(errno: $0) } ?? .proceed
    }

    /// The caller's privileges (``CallerPrivileges``), or `nil` when its call is no longer pending: the
    /// notification is proven pending after /proc was read, so that they are the caller's own and not those of
    /// a thread that took its id since.
    private func callerPrivileges(_ notification: SeccompNotification, socket: SocketHandle) -> CallerPrivileges? {
        let namespace = socket.systemDescriptor.flatMap(SocketReadings.networkNamespace)
        let read = CallerPrivileges.of(thread: notification.thread, socketNamespace: namespace)
        guard Seccomp.isPending(notification.id, on: notificationDescriptor) else { return nil }
        return read ?? CallerPrivileges(capabilities: 0, unprivilegedPortStart: 1024, portStartIsAssumed: true)
    }

    /// Says a line whatever the verbosity, once per text (a refusal on the program's behalf, say): a program that retries in a
    /// loop does not flood its log.
    private func sayOnce(_ text: String) {
        guard !saidOnce.contains(text), saidOnce.count < 64 else { return }
        saidOnce.insert(text)
        (rules.warn ?? rules.log)?(text)
    }

    /// --bind moves every bind to one address: a program with two listeners (an API and an admin port) would
    /// have both on one port, splitting its connections. Said once, at the first bind of another address.
    private func noteMoved(_ requested: SocketAddress, to target: SocketAddress) {
        // A bind to port 0 is no listener of its own (Go binds [::1]:0 once to learn whether IPv6 works).
        guard requested.port != 0 else { return }
        guard let first = firstMoved else { return firstMoved = requested }
        guard first != requested, !saidMerged else { return }
        saidMerged = true
        rules.warn?("--bind moves a second listener, \(requested), onto the same address as the first, \(first) (now \(target)): both now "
            + "share one port and split its connections; --bind is for a program with one listener")
    }

    /// The short path of `portreuse run --policy P` (the hot one: a program that binds in a loop pays it each
    /// time): the program's socket gets the policy's options whatever address it binds, without reading the
    /// program's memory; its protocol (SO_PROTOCOL: TCP or UDP, 0 for a Unix socket) says which options, in one
    /// call. A bind the kernel then refuses (a bad pointer: EFAULT) fails as it would have.
    private func setOptionsAndProceed(_ notification: SeccompNotification, fd: Descriptor) -> Answer {
        let duplicate: Descriptor
        switch self.duplicate(fd, of: notification) {
        case .descriptor(let descriptor): duplicate = descriptor
        case .unavailable: return .proceed
        case .gone: return .none
        }
        let socket = SocketHandle(adopting: duplicate)
        if let transport = SocketReadings.transport(duplicate) { _ = setOptions(socket, transport) }
        return .proceed
    }

    /// `portreuse up`'s bind: the held socket under the program's descriptor, or the call untouched.
    private func swapBind(_ swap: SocketSwap, _ notification: SeccompNotification, fd: Descriptor, requested: SocketAddress) -> Answer {
        guard swap.holds(port: requested.port) else {  // the common case: no duplicate, nothing read
            // A listener the program makes beside up's (a wrong port in its configuration?) is said once.
            if requested.port != 0 {
                sayOnce("bind of \(requested) by \(who(notification.thread)): not an address up holds (up holds "
                    + swap.held.map { "\($0.address)" }.joined(separator: ", ") + "): the program serves it by itself, outside up's reloads")
            }
            return .proceed
        }
        let socket: SocketHandle, transport: Transport
        switch target(notification, fd: fd, families: [.ipv4, .ipv6]) {
        case .socket(let handle, let kind): (socket, transport) = (handle, kind)
        case .skip: return .proceed
        case .gone: return .none
        }
        guard let descriptor = socket.systemDescriptor else { return .proceed }
        let pid = notification.thread
        // A call that comes back after our answer (interrupted, restarted): the descriptor is ours already.
        let inode = Self.inode(descriptor)
        if let already = swap.held.first(where: { $0.workers.contains { Self.inode($0) == inode } }) {
            rules.log?("bind fd \(fd) \(requested) of \(who(notification.thread)): already \(already.name) \(already.address)")
            return .result(errno: 0)
        }
        // A socket bound already: the kernel says EINVAL itself.
        if let local = try? socket.localAddress(), local.port != 0 { return .proceed }
        let family = SocketReadings.family(descriptor) ?? .ipv4
        // An address of the other family (an AF_INET one on an AF_INET6 socket): the kernel says EAFNOSUPPORT or
        // EINVAL itself, as it would without up.
        guard requested.family == family else { return .proceed }
        let v6Only = family == .ipv6 && (try? socket.option(Sys.ipv6Level, Sys.ipv6Only, label: "IPV6_V6ONLY")) == 1
        let kind = transport == .tcp ? "TCP" : "UDP"
        switch SocketSwap.decide(requested: requested, programFamily: family, programIPv6Only: v6Only, transport: transport, held: swap.held) {
        case .passThrough(let note):
            if let note { rules.log?("bind fd \(fd) (\(kind)) \(requested) of \(who(notification.thread)) runs as it is: \(note)") }
            return .proceed
        case .refuse(let code, let reason):
            rules.log?("bind fd \(fd) (\(kind)) \(requested) of \(who(notification.thread)) fails with \(Errno(rawValue: code)): \(reason)")
            return .result(errno: code)
        case .swap(let index, let note):
            let held = swap.held[index].forWorker(swap.hasWorkers ? SocketSwap.workerIndex(of: pid) : nil)
            let nonBlocking = Files.isNonBlocking(descriptor)
            let modeWarning = nonBlocking.flatMap { swap.adoptMode(of: held, nonBlocking: $0, pid: pid) }
            if let modeWarning { rules.log?(modeWarning) }
            // Close-on-exec when it cannot be read, as almost every server opens its sockets.
            let closeOnExec = Processes.isCloseOnExec(fd, of: pid) ?? true
            do {
                try Seccomp.install(held.descriptor, as: fd, closeOnExec: closeOnExec, for: notification.id, on: notificationDescriptor)
            } catch where error.errno == .noSuchFileOrDirectory {
                return .none  // the call is gone (interrupted, the process died)
            } catch {
                rules.log?("bind fd \(fd) \(requested) of \(who(notification.thread)): cannot put \(held.name) \(held.address) in its place "
                    + "(SECCOMP_IOCTL_NOTIF_ADDFD: \(error.errno)): the kernel answers the bind")
                return .proceed
            }
            // One line for each of the first swaps, then one at each power of ten: a program that binds in a loop
            // does not fill the log (31,000 lines in 30 s before).
            swapped += 1
            if swapped <= 3 || swapped.isPowerOfTen {
                // "unknown" is the name systemd gives a socket without one (LISTEN_FDNAMES): not worth a word.
                rules.log?("bind fd \(fd) (\(kind)) \(requested) of \(who(notification.thread)): got up's socket \(held.address)"
                    + (held.name == "unknown" ? "" : " (\(held.name))")
                    + (nonBlocking == true ? ", non-blocking" : "") + (note.map { "; \($0)" } ?? "")
                    + (swapped > 3 ? " (bind \(swapped) given up's socket; the ones between are not logged)" : ""))
            }
            return .result(errno: 0)
        }
    }

    private static func inode(_ descriptor: Descriptor) -> UInt64 { Files.status(of: descriptor)?.inode ?? 0 }

    /// Binds an unbound socket to the source before it first talks to `peer`; `sendFlags` nil for connect().
    private func source(_ call: String, _ notification: SeccompNotification, fd: Descriptor, pointer: UInt64, length: UInt64,
                        sendFlags: Int32?) -> Answer {
        guard let sourceRule = rules.source, let peer = address(notification.thread, at: pointer, length: length) else { return .proceed }
        let socket: SocketHandle, transport: Transport
        switch target(notification, fd: fd, families: [.ipv4, .ipv6]) {
        case .socket(let handle, let kind): (socket, transport) = (handle, kind)
        case .skip: return .proceed
        case .gone: return .none
        }
        // Bound already (by the program, by a connect in progress, or by us): left alone.
        guard let local = try? socket.localAddress(), local.port == 0, local.ip.isUnspecified else { return .proceed }
        // sendto/sendmsg on a stream socket only connects with TCP Fast Open.
        if transport == .tcp, let flags = sendFlags, flags & SocketReadings.fastOpenFlag == 0 { return .proceed }
        let target: SocketAddress
        switch apply(sourceRule, to: local, socket: socket, peer: peer) {
        case .success(let address): target = address
        case .failure(let reason):
            rules.log?("\(call) fd \(fd) to \(peer) of \(who(notification.thread)): --source \(sourceRule) not applied: \(reason.text)")
            return .proceed
        }
        guard let privileges = callerPrivileges(notification, socket: socket) else { return .none }
        guard privileges.mayBind(port: target.port) else {
            sayOnce("\(call) of \(who(notification.thread)) from --source \(target) refused with EACCES, as the kernel would refuse the program's own bind: "
                + privileges.refusal(port: target.port))
            return .result(errno: Errno.permissionDenied.rawValue)
        }
        let (options, _) = setOptions(socket, transport, caller: notification.thread, privileges: privileges)
        if transport == .tcp && sourceRule.port == nil, let descriptor = socket.descriptor { _ = portreuse_rules_set_bind_address_no_port(descriptor) }
        let code = bindDuplicate(socket, to: target, transport)
        rules.log?("\(call) fd \(fd) to \(peer) of \(who(notification.thread)) from \(target), options \(options)"
            + (code == 0 ? "" : ": the source could not be bound: \(Errno(rawValue: code))"))
        return code == 0 ? .proceed : .result(errno: code)
    }

    /// Sets the policy's options for the transport, and IP_TRANSPARENT where the caller may set it itself
    /// (`privileges`, read when the rules ask for it); returns the options asked for and whether IP_TRANSPARENT
    /// was set. SO_REUSEPORT needs no privilege: the kernel checks its same-user rule against the socket's creator.
    private func setOptions(_ socket: SocketHandle, _ transport: Transport, caller: Int32 = 0, privileges: CallerPrivileges? = nil)
        -> (ReuseOptions, transparent: Bool)
    {
        let options = SharingTable.linux.options(rules.policy, transport)
        for (option, _) in ReuseOptions.all where options.contains(option) { try? socket.enable(option) }
        guard rules.transparent, let descriptor = socket.systemDescriptor, let family = SocketReadings.family(descriptor) else { return (options, false) }
        guard privileges?.maySetTransparent == true else {
            sayOnce("--transparent: IP_TRANSPARENT not set on a socket of \(who(caller)): it needs CAP_NET_RAW or CAP_NET_ADMIN, "
                + "which the program does not have; portreuse does not set it on the program's behalf (its bind of a non-local address fails as it would alone)")
            return (options, false)
        }
        return (options, portreuse_rules_set_transparent(descriptor.rawValue, Sys.family(family)) == 0)
    }

    private enum Duplicate {
        case descriptor(Descriptor)
        /// The caller's descriptor cannot be had (not open, no ptrace rights): the call goes on untouched.
        case unavailable
        /// The notification is no longer pending (the caller died, or its call was interrupted).
        case gone
    }

    /// A duplicate of descriptor `fd` of the thread that made the call. The notification names the caller by its
    /// thread id, which is reused as soon as that thread is gone: the pidfd is opened (or taken from the cache)
    /// first and the notification proven pending after, so that the pidfd names the caller itself and not a
    /// process that took its id since.
    private func duplicate(_ fd: Descriptor, of notification: SeccompNotification) -> Duplicate {
        let tid = notification.thread
        for attempt in 0..<2 {
            guard let (pidfd, cached) = callerPidfd(tid) else {
                return Seccomp.isPending(notification.id, on: notificationDescriptor) ? .unavailable : .gone
            }
            defer { if !cached { Files.close(pidfd) } }
            guard Seccomp.isPending(notification.id, on: notificationDescriptor) else { return .gone }
            do {
                return .descriptor(try Processes.duplicate(fd, of: pidfd))
            } catch where error.errno == .noSuchProcess && cached && attempt == 0 {
                // A cached pidfd whose thread is gone (its id now names the caller): open it anew.
                Files.close(pidfd)
                pidfds[tid] = nil
            } catch {
                return .unavailable
            }
        }
        return .unavailable
    }

    /// A pidfd for the calling thread `tid`, and whether it is kept in the cache. Only a pidfd that names exactly
    /// that thread is cached (a thread pidfd, Linux 6.9+, or a process pidfd where `tid` is the process itself):
    /// once the thread is gone it names nothing, so a reused id can never reach the thread's process through it.
    /// On older kernels, a thread that is not its process's first gets a pidfd of its process (Tgid in
    /// /proc/TID/status), used for this call only.
    private func callerPidfd(_ tid: Int32) -> (pidfd: Descriptor, cached: Bool)? {
        if let cached = pidfds[tid] { return (cached, true) }
        if let exact = (try? Processes.openThread(tid)) ?? (try? Processes.open(tid)) {
            if pidfds.count >= 64, let (oldest, old) = pidfds.first {  // a bound: any entry will do
                Files.close(old)
                pidfds[oldest] = nil
            }
            pidfds[tid] = exact
            return (exact, true)
        }
        return Self.threadGroup(of: tid).flatMap { try? Processes.open($0) }.map { ($0, false) }
    }

    /// The process (Tgid in /proc/TID/status) of thread `tid`, when it is not that process itself.
    private static func threadGroup(of tid: Int32) -> Int32? {
        guard let tgid = Processes.field("Tgid", in: "/proc/\(tid)/status").flatMap({ Int32($0) }), tgid != tid else { return nil }
        return tgid
    }

    /// 0, or the errno of bind() on the duplicate.
    private func bindDuplicate(_ socket: SocketHandle, to address: SocketAddress, _ transport: Transport) -> Int32 {
        do {
            try socket.bind(to: address, transport: transport)
            return 0
        } catch {
            return (error.errno ?? .invalidArgument).rawValue
        }
    }

    private struct Skipped: Error { let text: String }

    /// The endpoint's address and/or port put into `address`, of the socket's family, by the rule the shim
    /// applies too (`portreuse_rules_apply_endpoint`, CReuseRules); or why the address cannot apply.
    private func apply(_ endpoint: EndpointRewrite, to address: SocketAddress, socket: SocketHandle,
                       peer: SocketAddress?) -> Result<SocketAddress, Skipped> {
        var rule = portreuse_rules_endpoint()
        if let ip = endpoint.ip {
            rule.has_address = 1
            rule.family = Sys.family(ip.family)
            withUnsafeMutableBytes(of: &rule.address) { $0.copyBytes(from: ip.bytes) }
            rule.scope = ip.scope
        }
        if let port = endpoint.port {
            rule.has_port = 1
            rule.port = port
        }
        var (target, _) = Sys.makeSockAddr(address)
        let reason: UnsafePointer<CChar>?
        if let peer {
            var (peerStorage, _) = Sys.makeSockAddr(peer)
            reason = portreuse_rules_apply_endpoint(&rule, socket.descriptor ?? -1, &target, &peerStorage)
        } else {
            reason = portreuse_rules_apply_endpoint(&rule, socket.descriptor ?? -1, &target, nil)
        }
        if let reason { return .failure(Skipped(text: String(cString: reason))) }
        guard let result = SocketAddress(target) else { return .failure(Skipped(text: "not an IP address")) }
        return .success(result)
    }

    /// `name[pid]`, from /proc/PID/comm (only for log lines).
    private func who(_ pid: Int32) -> String {
        let name = Files.read("/proc/\(pid)/comm", limit: 64).map { String(decoding: $0.prefix { $0 != 10 }, as: UTF8.self) } ?? "?"
        return "\(name)[\(pid)]"
    }
}
extension Int {
    /// 10, 100, 1000, …
    fileprivate var isPowerOfTen: Bool {
        var value = self
        while value >= 10 && value % 10 == 0 { value /= 10 }
        return value == 1 && self >= 10
    }
}
#endif
