import PortReuse
import PortReuseSystem

/// How `up --ready probe` learns that a new generation serves, on Linux.
///
/// First a cheap look that never touches traffic: is a thread of the generation blocked waiting for one of
/// up's sockets, in `accept`, `epoll_wait` (on an epoll set that holds the socket), `poll` or `select` (with
/// the socket among the descriptors), or `recv` for UDP? (`/proc/PID/task/TID/syscall`, `/proc/PID/fdinfo`,
/// and for poll/select the descriptor set read from `/proc/PID/mem`.) Then the proof the issue asks for:
/// a connection to the listener, accepted by the new generation. During the proof the other generations are
/// paused (SIGSTOP, a millisecond or two; connections queue meanwhile and nothing is refused), because the
/// kernel wakes the longest waiter first and would give the probe to the old generation.
package enum GenerationProbe {
    /// The system calls a serving process waits in, by number on this architecture.
    package enum Wait: Equatable {
        case accept(descriptor: Descriptor)
        case epoll(descriptor: Descriptor)
        case poll(array: UInt64, count: Int)
        case select(count: Int, readSet: UInt64)
        case receive(descriptor: Descriptor)
    }

    /// What a thread waits for, read from its syscall file (`/proc/PID/task/TID/syscall`; `/proc/PID/syscall` for
    /// a process's first thread): `nil` when it runs, waits in another call, or the file cannot be read.
    package static func wait(readingSyscallFile path: String) -> Wait? {
        guard let line = Files.read(path, limit: 256) else { return nil }
        let fields = String(decoding: line, as: UTF8.self).split(separator: " ")
        let arguments = fields.dropFirst().prefix(6).map { UInt64($0.dropFirst(2), radix: 16) ?? 0 }
        guard let number = fields.first.flatMap({ Int($0) }), arguments.count == 6 else { return nil }
        return wait(number, arguments)
    }

    /// What a thread waits for, from its system call number and arguments.
    package static func wait(_ number: Int, _ arguments: [UInt64]) -> Wait? {
        let descriptor = Descriptor(Int32(truncatingIfNeeded: arguments[0]))
        switch BlockingCall(number: number) {
        case .accept: return .accept(descriptor: descriptor)
        case .epoll: return .epoll(descriptor: descriptor)
        case .poll: return .poll(array: arguments[0], count: Int(arguments[1]))
        case .select: return .select(count: Int(arguments[0]), readSet: arguments[1])
        case .receive: return .receive(descriptor: descriptor)
        case nil: return nil
        }
    }


    /// The processes of a process group (a generation: its leader and every worker it forked). One `getpgid`
    /// per process of the host, not a read of its stat: the readiness probe asks every 10 ms while a
    /// generation starts.
    package static func processes(inGroup group: Int32) -> [Int32] {
        Files.list("/proc").compactMap { entry -> Int32? in
            guard let pid = Int32(entry), Processes.processGroup(of: pid) == group else { return nil }
            return pid
        }
    }

    /// Whether the /proc files the first look needs are there (not in every container).
    package static var canLook: Bool { Files.read("/proc/self/syscall", limit: 16) != nil }

    /// Whether a thread of a process in `group` is blocked waiting for the socket with inode `inode`.
    package static func isWaiting(group: Int32, on inode: UInt64) -> Bool {
        isWaiting(processes: processes(inGroup: group), on: inode)
    }

    /// Whether a thread of one of `processes` is blocked waiting for the socket with inode `inode`.
    package static func isWaiting(processes: [Int32], on inode: UInt64) -> Bool {
        processes.contains { pid in
            Files.list("/proc/\(pid)/task").contains { task in
                guard let wait = wait(readingSyscallFile: "/proc/\(pid)/task/\(task)/syscall") else { return false }
                return isWaiting(pid: pid, wait, on: inode)
            }
        }
    }

    private static func isWaiting(pid: Int32, _ wait: Wait, on inode: UInt64) -> Bool {
        switch wait {
        case .accept(let descriptor), .receive(let descriptor):
            return Processes.socketInode(of: pid, descriptor: descriptor) == inode
        case .epoll(let descriptor):
            // fdinfo of an epoll set: one "tfd: N events: … ino:HEX sdev:…" line per watched file.
            guard let info = Files.read("/proc/\(pid)/fdinfo/\(descriptor)", limit: 65_536) else { return false }
            let wanted = "ino:" + String(inode, radix: 16)
            return String(decoding: info, as: UTF8.self).split(separator: "\n").contains {
                $0.hasPrefix("tfd:") && $0.split(separator: " ").contains { $0 == wanted }
            }
        case .poll(let array, let count):
            guard count > 0, count <= 65_536, let bytes = readMemory(pid: pid, at: array, count: count * 8) else { return false }
            return (0..<count).contains { index in
                let entry = bytes[(index * 8)..<(index * 8 + 8)]
                let descriptor = Descriptor(entry.prefix(4).reversed().reduce(Int32(0)) { $0 << 8 | Int32($1) })
                let events = Int16(entry[entry.startIndex + 4]) | Int16(entry[entry.startIndex + 5]) << 8
                return events & Files.pollInput != 0 && Processes.socketInode(of: pid, descriptor: descriptor) == inode
            }
        case .select(let count, let readSet):
            guard count > 0, count <= 65_536, readSet != 0, let bits = readMemory(pid: pid, at: readSet, count: (count + 7) / 8) else { return false }
            return (0..<count).contains { (descriptor: Int) -> Bool in
                let isSet = bits[descriptor / 8] & UInt8(1 << (descriptor % 8)) != 0
                return isSet && Processes.socketInode(of: pid, descriptor: Descriptor(Int32(descriptor))) == inode
            }
        }
    }

    /// The inode of one of our own sockets.
    package static func inode(of descriptor: Descriptor) -> UInt64 { Files.status(of: descriptor)?.inode ?? 0 }

    private static func readMemory(pid: Int32, at address: UInt64, count: Int) -> [UInt8]? {
        Files.read("/proc/\(pid)/mem", offset: Int(bitPattern: UInt(address)), count: count, exactly: true)
    }

    /// The proof: connects to `listener` and waits (at most `timeout` nanoseconds) until the connection is
    /// accepted while every other generation is stopped: the kernel's socket for its server side has an inode
    /// (a queued connection has none; `accept` gives it a file) and no process of the paused groups holds it.
    /// The `pause` groups are stopped first, and only once every one of their processes is seen stopped
    /// (SIGSTOP is asynchronous: a generation idle in `accept` would otherwise take the probe itself) does the
    /// probe connect; they are always continued.
    package static func connectionIsAccepted(listener: SocketAddress, pausing groups: [Int32], timeout: UInt64) -> Bool {
        for group in groups { Processes.kill(-group, Signal.stop) }
        defer { for group in groups { Processes.kill(-group, Signal.continue) } }
        let stopDeadline = Processes.monotonicNanoseconds + timeout
        let paused = groups.flatMap { processes(inGroup: $0) }
        while !paused.allSatisfy(Processes.isStopped) {
            guard Processes.monotonicNanoseconds < stopDeadline else { return false }
            Processes.sleep(microseconds: 200)
        }
        let target = SocketAddress(ip: listener.ip.isUnspecified ? (listener.family == .ipv4 ? .loopbackIPv4 : .loopbackIPv6) : listener.ip, port: listener.port)
        guard let probe = try? Connection.dial(to: target, timeout: .milliseconds(Int(timeout / 1_000_000))) else { return false }
        let local = probe.localAddress
        defer { probe.close() }
        let deadline = Processes.monotonicNanoseconds + timeout
        while Processes.monotonicNanoseconds < deadline {
            let serverSide = PortHolder.find(port: listener.port, transport: .tcp, processes: false, options: false).first {
                $0.remoteAddress?.port == local.port && $0.state != .listen
            }
            if let serverSide, serverSide.inode != 0 {
                // The paused generations were seen stopped before the probe connected, so they cannot have
                // accepted it; the check below is the proof that they did not (a process of theirs that escaped
                // the stop), and a server that accepted and closed at once leaves no descriptor to find.
                if paused.contains(where: { holds($0, socketInode: serverSide.inode) }) { return false }
                return true
            }
            Processes.sleep(microseconds: 500)
        }
        return false
    }

    /// Whether process `pid` has a descriptor for the socket with inode `inode`.
    static func holds(_ pid: Int32, socketInode inode: UInt64) -> Bool {
        Processes.socketInodes(of: pid).contains(inode)
    }
}

extension GenerationProbe {
    /// `--stop-when-idle`: pauses `target` (as kill() takes it: -GROUP for a process group, or one pid; SIGSTOP,
    /// until every process is stopped, at most 50 ms) and sends `signal` to `main` only if none of them holds a
    /// TCP connection (a socket that is not
    /// listening): a program that dies at once on its stop signal then loses no request in flight, and the
    /// connections that arrive meanwhile wait in the shared queue for the new generation. A signal the program
    /// does not handle ends it on SIGCONT before any of its code runs (so nothing more is accepted); a handled one
    /// may let a thread accept a connection it had just seen. Always continues them; whether it was sent.
    package static func signalWhenIdle(pausing target: Int32, main: Int32, signal: Int32) -> Bool {
        guard Processes.kill(target, Signal.stop) else { return false }
        defer { Processes.kill(target, Signal.continue) }
        let members = target < 0 ? processes(inGroup: -target) : [target]
        let stopped = waitForStop(members)
        guard stopped else { return false }
        let connections = connectionInodes()
        if members.contains(where: { !Processes.socketInodes(of: $0).isDisjoint(with: connections) }) { return false }
        return Processes.kill(main, signal)
    }

    private static func waitForStop(_ members: [Int32]) -> Bool {
        let deadline = Processes.monotonicNanoseconds + 50_000_000
        while Processes.monotonicNanoseconds < deadline {
            if members.allSatisfy(Processes.isStopped) { return true }
            Processes.sleep(microseconds: 200)
        }
        return false
    }

    /// The inodes of every TCP socket that is a connection (neither listening nor TIME-WAIT, which no process
    /// holds), from sock_diag: binary records, not the text of /proc/net/tcp, which on a host with many
    /// TIME-WAIT sockets is megabytes to read while the generation is paused.
    private static func connectionInodes() -> Set<UInt64> {
        let states = Set(PortHolder.State.allCases).subtracting([.listen, .timeWait, .unconnected])
        return Set(PortHolder.all(transport: .tcp, states: states, processes: false, options: false).map(\.inode).filter { $0 != 0 })
    }
}
