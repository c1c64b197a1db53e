#ifndef CPORTREUSESYSTEM_H
#define CPORTREUSESYSTEM_H

/// The system calls that the Swift code needs and that Glibc's module map hides (they need _GNU_SOURCE, or
/// glibc has no wrapper for them): declared here with their real types, defined in system.c, which is the
/// only file compiled with _GNU_SOURCE. Swift reaches them through PortReuse's system layer only.
///
/// Every function returns what the C call returns (-1 and errno on failure) unless it says otherwise.
/// On systems other than Linux each one fails with ENOSYS.

// Only <stdint.h> here: a system header included from this module's header would make the module own its
// declarations, and Swift would then no longer find them in Glibc (SOCK_DGRAM, in release builds). Types are
// spelled out instead: pid_t is int, socklen_t unsigned int, ssize_t long, size_t unsigned long;
// struct sockaddr is passed as a pointer.
#include <stdint.h>

struct sockaddr;

/// `accept4`: accept a connection with SOCK_CLOEXEC/SOCK_NONBLOCK set atomically (`accept` + fcntl elsewhere).
int csystem_accept4(int fd, struct sockaddr *address, unsigned int *length, int flags);

/// `pipe2`: a pipe whose ends get `flags` (O_CLOEXEC, O_NONBLOCK) atomically.
int csystem_pipe2(int ends[2], int flags);

/// `pidfd_open(pid, 0)`: a descriptor that names the process `pid` and no other, ever (Linux 5.3+).
int csystem_pidfd_open(int pid);

/// `pidfd_open(tid, PIDFD_THREAD)`: a descriptor that names the thread `tid` and no other, ever (Linux 6.9+;
/// EINVAL before). A thread id is reused as soon as its thread is gone; this descriptor then names nothing.
int csystem_pidfd_open_thread(int tid);

/// One instruction of a classic BPF program (`struct sock_filter`).
typedef struct {
    uint16_t code;
    uint8_t jt;
    uint8_t jf;
    uint32_t k;
} csystem_bpf_instruction;

/// `setsockopt(fd, SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, …)`: the classic BPF program that picks, for each new
/// connection or datagram, the socket of `fd`'s SO_REUSEPORT group that gets it (its return value is an index in
/// the group, in join order; one out of range falls back to the kernel's hash). No capability needed (Linux 4.5+).
int csystem_attach_reuseport_cbpf(int fd, const csystem_bpf_instruction *program, unsigned short count);

/// A `BPF_MAP_TYPE_REUSEPORT_SOCKARRAY` of `entries` sockets of one SO_REUSEPORT group, by a key of the caller's
/// choosing (close-on-exec). A socket leaves it by itself when it closes or stops listening. -1 and errno (EPERM
/// without CAP_BPF, or where unprivileged BPF is off).
int csystem_reuseport_map_create(unsigned entries);
/// Puts the socket `socket` (listening, or a bound UDP socket, in the map's group) at `key`.
int csystem_reuseport_map_set(int map, unsigned key, int socket);

/// Loads and attaches to `fd`'s group (`SO_ATTACH_REUSEPORT_EBPF`) an eBPF program of type SK_REUSEPORT with
/// `BPF_SK_REUSEPORT_SELECT_OR_MIGRATE`: each new connection or datagram goes to the socket of `map` at one of the
/// `serving_count` keys of `serving` (by its hash modulo the count), those whose TCP source port is one of `ports`
/// to the one at key `probe` (if `probe` >= 0); and the connections queued on a listener that closes or shuts down
/// move to a serving one instead of being reset
/// (Linux 5.14+). The verifier's words go to `log` when it refuses the program. 0, or -1 and errno.
int csystem_attach_reuseport_ebpf(int fd, int map, const unsigned *serving, unsigned serving_count, int probe, const uint16_t *ports,
                                  unsigned count, char *log, unsigned log_size);

/// `pidfd_getfd(pidfd, target, 0)`: a duplicate of another process's descriptor (Linux 5.6+, ptrace rights).
int csystem_pidfd_getfd(int pidfd, int target);

/// The inode number of a pidfd of process `pid` on pidfs (Linux 6.9+): the id systemd 254+ passes as
/// `LISTEN_PIDFDID` and libsystemd compares with its own. Returns 0 and sets `*id`, or -1 (errno ENOSYS when
/// pidfds are not on pidfs, where their inode numbers name no process).
int csystem_pidfd_inode_id(int pid, unsigned long long *id);

/// `pidfd_send_signal(pidfd, signal, NULL, 0)`: a signal to exactly the process the pidfd names (Linux 5.1+).
int csystem_pidfd_send_signal(int pidfd, int signal);

/// `prctl(PR_SET_CHILD_SUBREAPER, on)`: orphaned descendants are re-parented to this process.
int csystem_set_child_subreaper(int on);

/// `prctl(PR_SET_PDEATHSIG, signal)`: this process gets `signal` when the thread that forked it dies.
int csystem_set_parent_death_signal(int signal);

/// `prctl(PR_SET_NO_NEW_PRIVS, 1)`: execve never grants privileges again (setuid, file capabilities).
int csystem_set_no_new_privileges(void);

/// `setns(fd, nstype)`: move the calling thread into the namespace `fd` names.
int csystem_setns(int fd, int nstype);

/// CLONE_NEWNET, for `csystem_setns`.
int csystem_clone_newnet(void);

/// `getxattr`: the value of an extended attribute (size 0: only its length).
long csystem_getxattr(const char *path, const char *name, void *value, unsigned long size);

/// What `csystem_spawn` starts, and how.
typedef struct {
    /// The program's path (a name with search_path), its arguments and its environment (NULL-terminated).
    const char *path;
    char *const *argv;
    char *const *envp;
    /// Descriptors the program gets as 3, 4, …; each must be 3 + count or above. Every other one above 2 is closed,
    /// unless keep_descriptors is set (then those without close-on-exec pass on, as through an exec).
    const int *descriptors;
    int count;
    int keep_descriptors;
    /// The program's stdin, stdout and stderr: CSYSTEM_SPAWN_INHERIT, a descriptor of ours (dup2'ed), or for stdout
    /// and stderr CSYSTEM_SPAWN_OTHER (wherever the program's other output goes).
    int stdin_fd;
    int stdout_fd;
    int stderr_fd;
    /// Whether `path` is a name looked up in the caller's PATH (execvpe's rules, as posix_spawnp) rather than a path.
    int search_path;
    /// Whether the program leads a process group of its own.
    int new_process_group;
    /// The signal the program gets when the calling thread dies (PR_SET_PDEATHSIG), or 0.
    int death_signal;
    /// Whether LISTEN_PID is the program's pid, and LISTEN_PIDFDID the inode number of its pidfd where pidfds have one.
    int set_listen_pid;
    /// The system calls (at most 8) that go to a supervisor (`csystem_seccomp_listen`), whose notification
    /// descriptor the caller gets; no filter when filter_count is 0.
    const int *filter_calls;
    int filter_count;
} csystem_spawn_request;

/// The standard stream values of `csystem_spawn_request` that are not descriptors.
enum { CSYSTEM_SPAWN_INHERIT = -1, CSYSTEM_SPAWN_OTHER = -2 };

/// Where `csystem_spawn` failed.
enum { CSYSTEM_SPAWN_SETUP = 1, CSYSTEM_SPAWN_PARENT_GONE = 2, CSYSTEM_SPAWN_FILTER = 3, CSYSTEM_SPAWN_EXEC = 4 };

/// Starts a program (the one spawn of PortReuse: `ProcessSpawn` in Swift) with no trampoline: a child that shares our memory until it execs
/// (clone(CLONE_VM | CLONE_VFORK), as posix_spawn does) sets default signal actions, the process group, the death
/// signal, the standard streams, the descriptors, the seccomp filter (handing its notification descriptor back over a socket pair)
/// and LISTEN_PID, then execs the program with an empty signal mask. Returns the pid, with `*notification` the
/// filter's descriptor (close-on-exec) or -1; or -1 with errno and `*failed_step` (a CSYSTEM_SPAWN_ value) when
/// nothing runs (a child that failed is reaped).
int csystem_spawn(const csystem_spawn_request *request, int *notification, int *failed_step);

/// `process_vm_readv` of one range: reads `length` bytes at `address` in process `pid` (ptrace rights).
/// Returns the number of bytes read.
long csystem_read_process_memory(int pid, uint64_t address, void *buffer, unsigned long length);

// MARK: seccomp user notification (Linux 5.9+ for ADDFD, 5.14 for ADDFD_FLAG_SEND)

/// One intercepted system call, as the kernel reports it (struct seccomp_notif, flattened).
typedef struct {
    uint64_t id;
    uint32_t pid;
    int32_t syscall;
    uint32_t arch;
    uint64_t instruction_pointer;
    uint64_t args[6];
} csystem_notification;

/// The system call numbers on this architecture, and the architecture the filter accepts.
int csystem_syscall_bind(void);
int csystem_syscall_connect(void);
int csystem_syscall_sendto(void);
int csystem_syscall_sendmsg(void);
uint32_t csystem_audit_arch(void);

/// What a thread blocked in system call `number` waits for (`/proc/PID/task/TID/syscall`), by the names of
/// this architecture's calls: the readiness probe of `up` reads it.
typedef enum {
    csystem_wait_none = 0,
    csystem_wait_accept,   ///< accept, accept4: argument 0 is the socket.
    csystem_wait_epoll,    ///< epoll_wait, epoll_pwait, epoll_pwait2: argument 0 is the epoll descriptor.
    csystem_wait_poll,     ///< poll, ppoll: arguments 0 and 1 are the pollfd array and its count.
    csystem_wait_select,   ///< select, pselect6: arguments 0 and 1 are the count and the read set.
    csystem_wait_receive,  ///< recvfrom, recvmsg, recvmmsg: argument 0 is the socket.
} csystem_wait_kind;
csystem_wait_kind csystem_syscall_wait_kind(long number);

/// Installs a seccomp filter on the calling thread that hands the listed system calls of this architecture
/// to a supervisor (SECCOMP_RET_USER_NOTIF) and allows everything else, after PR_SET_NO_NEW_PRIVS.
/// Survives execve and is inherited by every child. Returns the notification descriptor (close-on-exec).
int csystem_seccomp_listen(const int *syscalls, int count);

/// Waits for the next notification (blocking; use poll for readiness). 0, or -1 and errno.
int csystem_seccomp_receive(int notify_fd, csystem_notification *notification);

/// Whether the notification `id` is still pending (the process did not die, its call was not interrupted).
/// 0 when it is, -1 and errno (ENOENT) when not.
int csystem_seccomp_id_valid(int notify_fd, uint64_t id);

/// Answers `id`: with `continue_call` the original call runs as if nothing happened; else it returns
/// `value` (when `error` is 0) or fails with -`error`... `error` is a positive errno here.
int csystem_seccomp_respond(int notify_fd, uint64_t id, int continue_call, int64_t value, int error);

/// Asks the kernel to switch synchronously between a notifying thread and the supervisor, on one CPU
/// (SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP, Linux 6.6+): each answer costs two wake-ups less. 0, or -1 and errno.
int csystem_seccomp_sync_wakeup(int notify_fd);

/// Puts `source_fd` into the notifying process under the number `target_fd` (replacing what was there),
/// with O_CLOEXEC when `close_on_exec`. Returns the number it got there.
int csystem_seccomp_add_fd(int notify_fd, uint64_t id, int source_fd, int target_fd, int close_on_exec);

/// Sends `descriptor` and one byte `tag` over the Unix socket `socket` (SCM_RIGHTS). Uses sendmmsg, not
/// sendmsg: the seccomp filter of `portreuse run --source` hands sendmsg to a supervisor, and the spawned child
/// that sends its notification descriptor must not wait on the supervisor that has yet to receive it.
int csystem_send_descriptor(int socket, int descriptor, unsigned char tag);

/// Receives one byte and at most one descriptor (made close-on-exec) sent by `csystem_send_descriptor` or a
/// plain write: returns the number of bytes (0 at end of file), with `*descriptor` -1 when none came.
int csystem_receive_descriptor(int socket, unsigned char *tag, int *descriptor);

#endif
