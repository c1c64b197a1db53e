#if os(Linux)
import CPortReuseSystem
import Glibc
import SystemPackage

/// One system call a seccomp filter handed to its supervisor (`struct seccomp_notif`), waiting for an answer.
package struct SeccompNotification: Sendable {
    /// The kernel's cookie for this call: every answer names it, and it stays valid while the call waits.
    package var id: UInt64
    /// The thread that made the call (its id, which the kernel reuses once the thread is gone).
    package var thread: Int32
    /// The system call's number on this architecture (``SocketCall``).
    package var call: Int32
    /// Whether the call came in this architecture's calling convention (a 32-bit call on x86-64 does not).
    package var isNativeArchitecture: Bool
    /// The call's six arguments, as the kernel read them from the caller's registers.
    package var arguments: [UInt64]
}

/// The supervisor's end of a seccomp user-notification filter (Linux 5.9+; the filter itself is installed by
/// ``ProcessSpawn``): receives a program's intercepted calls and answers them, each call by its
/// ``SeccompNotification/id``. A notification whose caller died or whose call was interrupted is no longer
/// pending: answering it fails with ENOENT, which these functions take as "nothing more to do".
package enum Seccomp {
    /// Asks the kernel to hand the CPU straight between a notifying thread and the supervisor
    /// (SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP, Linux 6.6+); whether it took it (older kernels say EINVAL).
    @discardableResult
    package static func synchronizeWakeUps(_ notifications: Descriptor) -> Bool { csystem_seccomp_sync_wakeup(notifications.rawValue) == 0 }

    /// The next notification, or `nil` when the one that woke the caller is gone (its caller died between poll
    /// and receive, or a signal interrupted the wait). Blocks until one comes, whatever O_NONBLOCK says: call it
    /// once poll saw the descriptor readable.
    package static func receive(_ notifications: Descriptor) throws(SystemError) -> SeccompNotification? {
        var raw = csystem_notification()
        do {
            _ = try systemCall("SECCOMP_IOCTL_NOTIF_RECV", retryOnInterrupt: false) { csystem_seccomp_receive(notifications.rawValue, &raw) }
        } catch where error.errno == .noSuchFileOrDirectory || error.errno == .interrupted {
            return nil
        }
        let arguments = [raw.args.0, raw.args.1, raw.args.2, raw.args.3, raw.args.4, raw.args.5]
        return SeccompNotification(id: raw.id, thread: Int32(bitPattern: raw.pid), call: raw.syscall,
                                   isNativeArchitecture: raw.arch == csystem_audit_arch(), arguments: arguments)
    }

    /// Whether call `id` still waits for its answer. Proven after reading anything about the caller by its thread
    /// id (/proc, a pidfd): then what was read is the caller's, not that of a thread that took the id since.
    package static func isPending(_ id: UInt64, on notifications: Descriptor) -> Bool {
        csystem_seccomp_id_valid(notifications.rawValue, id) == 0
    }

    /// How a call is answered.
    package enum Answer: Sendable, Equatable {
        /// The call runs as the program made it (SECCOMP_USER_NOTIF_FLAG_CONTINUE).
        case proceed
        /// The call does not run: it returns 0, or fails with this errno.
        case result(errno: Int32)
    }

    /// Answers call `id`; whether the answer reached it (false: the call is gone, nothing more to do).
    @discardableResult
    package static func answer(_ id: UInt64, _ answer: Answer, on notifications: Descriptor) -> Bool {
        switch answer {
        case .proceed: csystem_seccomp_respond(notifications.rawValue, id, 1, 0, 0) == 0
        case .result(let code): csystem_seccomp_respond(notifications.rawValue, id, 0, 0, code) == 0
        }
    }

    /// Puts `descriptor` into the calling process of `id` under the number `target`, replacing what was there
    /// (SECCOMP_IOCTL_NOTIF_ADDFD), close-on-exec when asked. Throws ENOENT when the call is gone.
    package static func install(_ descriptor: Descriptor, as target: Descriptor, closeOnExec: Bool, for id: UInt64, on notifications: Descriptor)
        throws(SystemError)
    {
        // EBADF: `target` is the other process's number, not a descriptor of this one.
        _ = try systemCall("SECCOMP_IOCTL_NOTIF_ADDFD", unacceptable: [.badAddress]) {
            csystem_seccomp_add_fd(notifications.rawValue, id, descriptor.rawValue, target.rawValue, closeOnExec ? 1 : 0)
        }
    }
}
#endif
