import PortReuse
import PortReuseSystem

/// `up --adopt PID`: a running server that `up` did not start hands over its listening sockets. `up` takes a
/// duplicate of each (pidfd_open + pidfd_getfd, which needs ptrace rights over the process: root, or the same
/// user where kernel.yama.ptrace_scope allows it), so the server and `up` hold the very same socket, one accept
/// queue; generation 1 starts on it, and once it is ready the adopted process gets its stop signal. Nothing
/// queued is lost: the connections wait in the queue that `up` keeps.
package struct Adoption {
    package let pid: Int32
    /// A pidfd of the adopted process: its signals and its exit go through it (no pid reuse can misdirect them).
    package let pidfd: Descriptor
    /// Its name and its command line, for the log.
    package let name: String
    package let command: String

    /// Finds `pid`'s socket on each of `listen` (by address, in the kernel's tables as `who` reads them) and
    /// takes a duplicate of it, held at `floor` or above. Throws, with exit status 3, what is wrong: no such
    /// process, no socket of it on the address, a TCP socket that is not listening, or no right to take it.
    package static func take(from pid: Int32, listen: [ListenSpec], floor: Descriptor, anyUser: Bool = false) throws(CommandFailure) -> (Adoption, [HeldSocket]) {
        guard pid > 0, let pidfd = try? Processes.open(pid) else {
            throw CommandFailure("--adopt \(pid): no such process (give the pid of the running server, as `portreuse who PORT` shows it)", exitCode: 3)
        }
        let info = KernelTables.processInfo(pid: pid)
        if (try? Processes.readLink("/proc/\(pid)/exe")) == nil, Processes.exists(pid), info.commandLine.isEmpty, Processes.effectiveUserID == 0 {
            Files.close(pidfd)
            throw CommandFailure("--adopt \(pid) (\(info.name)) is a kernel thread: it holds no socket", exitCode: 3)
        }
        // The generations run as up's user: adopting another user's server would run its next versions as this one.
        if let uid = info.uid, uid != Processes.effectiveUserID, Processes.effectiveUserID == 0, !anyUser {
            Files.close(pidfd)
            throw CommandFailure(
                "--adopt \(pid) (\(info.name)) runs as uid \(uid), and up runs as uid \(Processes.effectiveUserID): its next generations would run as uid \(Processes.effectiveUserID), "
                    + "not as the server's user. Run up as that user, or say --adopt-any-user to run them as up's user anyway", exitCode: 3)
        }
        let adoption = Adoption(
            pid: pid, pidfd: pidfd, name: info.name, command: info.commandLine.isEmpty ? info.name : info.commandLine.joined(separator: " "))
        var held: [HeldSocket] = []
        do throws(CommandFailure) {
            for spec in listen {
                let descriptor = try adoption.descriptor(for: spec)
                let copy: Descriptor
                do { copy = try Processes.duplicate(descriptor, of: pidfd) } catch {
                    if error.errno == .noSuchProcess || !Processes.exists(pid) {
                        throw CommandFailure("--adopt \(pid): it exited while up took its sockets; nothing was adopted", exitCode: 3)
                    }
                    throw CommandFailure("--adopt \(pid): cannot take its descriptor \(descriptor) (\(spec)): \(error.errno.description). "
                        + adoption.rightsAdvice(uid: info.uid), exitCode: 3)
                }
                held.append(try HeldSocket.hold(copy, name: spec.name, floor: floor, backlog: nil))
            }
        } catch {
            for socket in held { Files.close(socket.descriptor) }
            Files.close(pidfd)
            throw error
        }
        return (adoption, held)
    }

    /// The descriptor number under which the process holds its socket on `spec`.
    private func descriptor(for spec: ListenSpec) throws(CommandFailure) -> Descriptor {
        let wanted: SocketAddress
        guard let address = spec.address else { throw CommandFailure("--adopt takes TCP and UDP sockets, not --listen \(spec)", exitCode: 64) }
        do { wanted = try address.checked(for: spec.transport, operation: .bind).resolveForBinding(spec.transport) } catch {
            throw CommandFailure("--listen \(spec): \(error)", exitCode: 64)
        }
        guard wanted.port != 0 else {
            throw CommandFailure("--adopt needs the port the process listens on: --listen \(spec) has port 0", exitCode: 64)
        }
        let onPort = PortHolder.find(port: wanted.port, transport: spec.transport, processes: false, options: false).filter { holder in
            holder.remoteAddress == nil
                && (holder.localAddress.ip == wanted.ip || holder.localAddress.ip.isUnspecified && wanted.ip.isUnspecified)
        }
        let entries = Files.list("/proc/\(pid)/fd")
        guard !entries.isEmpty else {
            if !Processes.exists(pid) { throw CommandFailure("--adopt \(pid): it exited while up took its sockets; nothing was adopted", exitCode: 3) }
            throw CommandFailure("--adopt \(pid): cannot read /proc/\(pid)/fd: \(Files.errorText()) (\(rightsAdvice(uid: KernelTables.processInfo(pid: pid).uid)))", exitCode: 3)
        }
        for entry in entries {
            guard let descriptor = Descriptor(entry), let inode = Processes.socketInode(of: pid, descriptor: descriptor),
                let holder = onPort.first(where: { $0.inode == inode })
            else { continue }
            guard spec.transport == .udp || holder.state == .listen else {
                throw CommandFailure("--adopt \(pid): its socket on \(holder.localAddress) (descriptor \(descriptor)) is \(holder.state), not listening: "
                    + "adopt it once it listens", exitCode: 3)
            }
            return descriptor
        }
        let others = onPort.isEmpty ? "nothing listens there" : "the sockets there belong to other processes (see portreuse who \(wanted.port))"
        throw CommandFailure("--adopt \(pid) (\(name)) holds no \(spec.transport) socket on \(wanted): \(others)", exitCode: 3)
    }

    /// Why pidfd_getfd may be denied, in words, and what to do.
    private func rightsAdvice(uid: UInt32?) -> String {
        if let uid, uid != Processes.effectiveUserID, Processes.effectiveUserID != 0 {
            return "It runs as uid \(uid), not as you (uid \(Processes.effectiveUserID)): run up as root or as that user"
        }
        let scope = Files.read("/proc/sys/kernel/yama/ptrace_scope", limit: 8).map { String(decoding: $0, as: UTF8.self).filter(\.isNumber) }
        if let scope, scope != "0", Processes.effectiveUserID != 0 {
            return "kernel.yama.ptrace_scope=\(scope) lets only a parent or CAP_SYS_PTRACE take another process's descriptors: run up as root "
                + "(or with CAP_SYS_PTRACE), or sysctl -w kernel.yama.ptrace_scope=0"
        }
        return "Taking another process's descriptor needs ptrace rights over it (root, or CAP_SYS_PTRACE)"
    }
}
