// The one file compiled with _GNU_SOURCE: what Glibc's module map hides from Swift. See include/CPortReuseSystem.h.
#define _GNU_SOURCE
#include "CPortReuseSystem.h"

#include <errno.h>
#include <sys/socket.h>
#include <sys/types.h>

#ifdef __linux__
#include <fcntl.h>
#include <linux/audit.h>
#include <arpa/inet.h>
#include <linux/bpf.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <unistd.h>

int csystem_accept4(int fd, struct sockaddr *address, unsigned int *length, int flags) { return accept4(fd, address, length, flags); }
int csystem_pipe2(int ends[2], int flags) { return pipe2(ends, flags); }

// Raw system calls rather than glibc 2.36's wrappers, so that older glibc builds link too.
int csystem_pidfd_open(int pid) { return (int)syscall(SYS_pidfd_open, pid, 0); }
int csystem_pidfd_open_thread(int tid) { return (int)syscall(SYS_pidfd_open, tid, O_EXCL); }  // PIDFD_THREAD is O_EXCL
int csystem_attach_reuseport_cbpf(int fd, const csystem_bpf_instruction *program, unsigned short count) {
    _Static_assert(sizeof(csystem_bpf_instruction) == sizeof(struct sock_filter), "struct sock_filter");
    struct sock_fprog fprog = {.len = count, .filter = (struct sock_filter *)program};
    return setsockopt(fd, SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, &fprog, sizeof fprog);
}
static int csystem_bpf(int command, union bpf_attr *attributes) { return (int)syscall(SYS_bpf, command, attributes, sizeof *attributes); }

int csystem_reuseport_map_create(unsigned entries) {
    union bpf_attr attributes;
    memset(&attributes, 0, sizeof attributes);
    attributes.map_type = BPF_MAP_TYPE_REUSEPORT_SOCKARRAY;
    attributes.key_size = sizeof(uint32_t);
    attributes.value_size = sizeof(uint64_t);
    attributes.max_entries = entries;
    attributes.map_flags = 0;
    int map = csystem_bpf(BPF_MAP_CREATE, &attributes);
    if (map >= 0) fcntl(map, F_SETFD, FD_CLOEXEC);
    return map;
}

int csystem_reuseport_map_set(int map, unsigned key, int socket) {
    uint32_t index = key;
    uint64_t value = (uint64_t)socket;
    union bpf_attr attributes;
    memset(&attributes, 0, sizeof attributes);
    attributes.map_fd = (uint32_t)map;
    attributes.key = (uint64_t)(uintptr_t)&index;
    attributes.value = (uint64_t)(uintptr_t)&value;
    attributes.flags = BPF_ANY;
    return csystem_bpf(BPF_MAP_UPDATE_ELEM, &attributes);
}

int csystem_attach_reuseport_ebpf(int fd, int map, const unsigned *serving, unsigned serving_count, int probe, const uint16_t *ports, unsigned count,
                                  char *log, unsigned log_size) {
    struct bpf_insn program[32 + 256 + 2 * 256];
    int n = 0;
#define INSN(c, d, s, o, i) program[n++] = (struct bpf_insn){.code = (c), .dst_reg = (d), .src_reg = (s), .off = (o), .imm = (i)}
    if (count > 256) count = 256;
    if (serving_count == 0) {
        errno = EINVAL;
        return -1;
    }
    if (serving_count > 256) serving_count = 256;
    INSN(BPF_ALU64 | BPF_MOV | BPF_X, BPF_REG_6, BPF_REG_1, 0, 0);  // r6 = the context
    INSN(BPF_ALU64 | BPF_MOV | BPF_K, BPF_REG_7, 0, 0, (int32_t)serving[0]);  // r7 = the key of the (first) serving socket
    if (serving_count > 1) {
        // Several workers: the one at the connection's hash (the kernel's own hash of its addresses and ports) modulo their count.
        INSN(BPF_LDX | BPF_MEM | BPF_W, BPF_REG_5, BPF_REG_6, offsetof(struct sk_reuseport_md, hash), 0);
        INSN(BPF_ALU | BPF_MOD | BPF_K, BPF_REG_5, 0, 0, (int32_t)serving_count);
        for (unsigned i = 1; i < serving_count; i++) {
            INSN(BPF_JMP | BPF_JNE | BPF_K, BPF_REG_5, 0, 1, (int32_t)i);  // not this one: past the next
            INSN(BPF_ALU64 | BPF_MOV | BPF_K, BPF_REG_7, 0, 0, (int32_t)serving[i]);
        }
    }
    if (probe >= 0 && count > 0) {
        // The TCP source port, where the packet has one (a request that migrates from a closed listener has none).
        INSN(BPF_LDX | BPF_MEM | BPF_DW, BPF_REG_2, BPF_REG_6, offsetof(struct sk_reuseport_md, data), 0);
        INSN(BPF_LDX | BPF_MEM | BPF_DW, BPF_REG_3, BPF_REG_6, offsetof(struct sk_reuseport_md, data_end), 0);
        INSN(BPF_ALU64 | BPF_MOV | BPF_X, BPF_REG_4, BPF_REG_2, 0, 0);
        INSN(BPF_ALU64 | BPF_ADD | BPF_K, BPF_REG_4, 0, 0, 2);
        int too_short = n;
        INSN(BPF_JMP | BPF_JGT | BPF_X, BPF_REG_4, BPF_REG_3, 0, 0);  // past the end: to select
        INSN(BPF_LDX | BPF_MEM | BPF_H, BPF_REG_5, BPF_REG_2, 0, 0);  // the port as it lies in memory (network order)
        int first = n;
        for (unsigned i = 0; i < count; i++) INSN(BPF_JMP | BPF_JEQ | BPF_K, BPF_REG_5, 0, 0, (int32_t)htons(ports[i]));
        INSN(BPF_JMP | BPF_JA, 0, 0, 1, 0);  // no probe: past the next
        int to_probe = n;
        INSN(BPF_ALU64 | BPF_MOV | BPF_K, BPF_REG_7, 0, 0, probe);  // r7 = the key of the probe's socket
        for (unsigned i = 0; i < count; i++) program[first + i].off = (int16_t)(to_probe - (first + (int)i) - 1);
        program[too_short].off = (int16_t)(n - too_short - 1);
    }
    INSN(BPF_STX | BPF_MEM | BPF_W, BPF_REG_10, BPF_REG_7, -4, 0);  // the key on the stack
    INSN(BPF_ALU64 | BPF_MOV | BPF_X, BPF_REG_1, BPF_REG_6, 0, 0);
    INSN(BPF_LD | BPF_DW | BPF_IMM, BPF_REG_2, BPF_PSEUDO_MAP_FD, 0, map);  // r2 = the map (two instructions)
    INSN(0, 0, 0, 0, 0);
    INSN(BPF_ALU64 | BPF_MOV | BPF_X, BPF_REG_3, BPF_REG_10, 0, 0);
    INSN(BPF_ALU64 | BPF_ADD | BPF_K, BPF_REG_3, 0, 0, -4);
    INSN(BPF_ALU64 | BPF_MOV | BPF_K, BPF_REG_4, 0, 0, 0);
    INSN(BPF_JMP | BPF_CALL, 0, 0, 0, BPF_FUNC_sk_select_reuseport);  // an empty slot leaves the choice to the kernel's hash
    INSN(BPF_ALU64 | BPF_MOV | BPF_K, BPF_REG_0, 0, 0, SK_PASS);
    INSN(BPF_JMP | BPF_EXIT, 0, 0, 0, 0);
#undef INSN
    union bpf_attr attributes;
    memset(&attributes, 0, sizeof attributes);
    attributes.prog_type = BPF_PROG_TYPE_SK_REUSEPORT;
    attributes.expected_attach_type = BPF_SK_REUSEPORT_SELECT_OR_MIGRATE;
    attributes.insn_cnt = (uint32_t)n;
    attributes.insns = (uint64_t)(uintptr_t)program;
    attributes.license = (uint64_t)(uintptr_t)"Dual MIT/GPL";
    if (log && log_size > 0) {
        log[0] = 0;
        attributes.log_level = 1;
        attributes.log_buf = (uint64_t)(uintptr_t)log;
        attributes.log_size = log_size;
    }
    // The kernel may answer EAGAIN for a moment (a transient allocation failure, as libbpf knows it): try again.
    int loaded = -1;
    for (int attempt = 0; attempt < 5 && (loaded = csystem_bpf(BPF_PROG_LOAD, &attributes)) < 0 && errno == EAGAIN; attempt++) {}
    if (loaded < 0 && log && errno == ENOSPC) {  // the log was too small: load again without it
        attributes.log_level = 0;
        attributes.log_buf = 0;
        attributes.log_size = 0;
        loaded = csystem_bpf(BPF_PROG_LOAD, &attributes);
    }
    if (loaded < 0) return -1;
    int result = setsockopt(fd, SOL_SOCKET, SO_ATTACH_REUSEPORT_EBPF, &loaded, sizeof loaded);
    int saved = errno;
    close(loaded);
    errno = saved;
    return result;
}

int csystem_pidfd_getfd(int pidfd, int target) { return (int)syscall(SYS_pidfd_getfd, pidfd, target, 0); }
int csystem_pidfd_send_signal(int pidfd, int signal) { return (int)syscall(SYS_pidfd_send_signal, pidfd, signal, NULL, 0); }

int csystem_pidfd_inode_id(int pid, unsigned long long *id) {
    int pidfd = csystem_pidfd_open(pid);
    if (pidfd < 0) return -1;
    struct statfs filesystem;
    struct stat status;
    int ok = fstatfs(pidfd, &filesystem) == 0 && fstat(pidfd, &status) == 0;
    int on_pidfs = ok && filesystem.f_type == 0x50494446;  // PID_FS_MAGIC; before 6.9 every pidfd is one anon inode
    close(pidfd);
    if (!ok) return -1;
    if (!on_pidfs) {
        errno = ENOSYS;
        return -1;
    }
    *id = (unsigned long long)status.st_ino;
    return 0;
}
int csystem_set_child_subreaper(int on) { return prctl(PR_SET_CHILD_SUBREAPER, on ? 1 : 0, 0, 0, 0); }
int csystem_set_parent_death_signal(int signal) { return prctl(PR_SET_PDEATHSIG, signal, 0, 0, 0); }
int csystem_set_no_new_privileges(void) { return prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); }
int csystem_setns(int fd, int nstype) { return setns(fd, nstype); }
int csystem_clone_newnet(void) { return CLONE_NEWNET; }

long csystem_getxattr(const char *path, const char *name, void *value, unsigned long size) { return getxattr(path, name, value, size); }

long csystem_read_process_memory(int pid, uint64_t address, void *buffer, unsigned long length) {
    struct iovec local = {buffer, length};
    struct iovec remote = {(void *)(uintptr_t)address, length};
    return process_vm_readv(pid, &local, 1, &remote, 1, 0);
}

// MARK: seccomp user notification

int csystem_syscall_bind(void) { return SYS_bind; }
int csystem_syscall_connect(void) { return SYS_connect; }
int csystem_syscall_sendto(void) { return SYS_sendto; }
int csystem_syscall_sendmsg(void) { return SYS_sendmsg; }

csystem_wait_kind csystem_syscall_wait_kind(long number) {
    // Not a switch: some of these calls do not exist on every architecture (arm64 has no accept, poll, select
    // or epoll_wait of their own), and two names may share a number nowhere.
#define CSYSTEM_WAIT(name, kind) if (number == SYS_##name) return kind;
#ifdef SYS_accept
    CSYSTEM_WAIT(accept, csystem_wait_accept)
#endif
    CSYSTEM_WAIT(accept4, csystem_wait_accept)
#ifdef SYS_epoll_wait
    CSYSTEM_WAIT(epoll_wait, csystem_wait_epoll)
#endif
    CSYSTEM_WAIT(epoll_pwait, csystem_wait_epoll)
#ifdef SYS_epoll_pwait2
    CSYSTEM_WAIT(epoll_pwait2, csystem_wait_epoll)
#endif
#ifdef SYS_poll
    CSYSTEM_WAIT(poll, csystem_wait_poll)
#endif
    CSYSTEM_WAIT(ppoll, csystem_wait_poll)
#ifdef SYS_select
    CSYSTEM_WAIT(select, csystem_wait_select)
#endif
    CSYSTEM_WAIT(pselect6, csystem_wait_select)
    CSYSTEM_WAIT(recvfrom, csystem_wait_receive)
    CSYSTEM_WAIT(recvmsg, csystem_wait_receive)
    CSYSTEM_WAIT(recvmmsg, csystem_wait_receive)
#undef CSYSTEM_WAIT
    return csystem_wait_none;
}

uint32_t csystem_audit_arch(void) {
#if defined(__x86_64__)
    return AUDIT_ARCH_X86_64;
#elif defined(__aarch64__)
    return AUDIT_ARCH_AARCH64;
#else
    return 0;
#endif
}

int csystem_seccomp_listen(const int *syscalls, int count) {
    uint32_t arch = csystem_audit_arch();
    if (arch == 0 || count < 1 || count > 8) {
        errno = arch == 0 ? ENOSYS : EINVAL;
        return -1;
    }
    // Load arch; not ours -> allow. Load nr; each listed -> notify; else allow.
    struct sock_filter program[4 + 8 + 2];
    int n = 0;
    program[n++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch));
    program[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, arch, 1, 0);
    program[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
    program[n++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr));
    for (int i = 0; i < count; i++) {
        // Jump to the notify return (the last instruction) on a match; the allow return sits just before it.
        int remaining = count - 1 - i;
        program[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (uint32_t)syscalls[i], (uint8_t)(remaining + 1), 0);
    }
    program[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
    program[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_USER_NOTIF);
    struct sock_fprog filter = {.len = (unsigned short)n, .filter = program};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return -1;
    // WAIT_KILLABLE_RECV (5.19+): once the supervisor has received a call, only a fatal signal interrupts the
    // wait. Without it a signal restarts the call after the supervisor may have bound the socket already.
#ifndef SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV
#define SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV (1UL << 5)
#endif
    int fd = (int)syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER,
                          SECCOMP_FILTER_FLAG_NEW_LISTENER | SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV, &filter);
    if (fd < 0 && errno == EINVAL)
        fd = (int)syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER, &filter);
    return fd;
}

int csystem_seccomp_receive(int notify_fd, csystem_notification *notification) {
    // The kernel may have a larger struct than these headers: ask for its size once.
    static struct seccomp_notif_sizes sizes;
    if (sizes.seccomp_notif == 0 && syscall(SYS_seccomp, SECCOMP_GET_NOTIF_SIZES, 0, &sizes) != 0) return -1;
    unsigned char buffer[512];
    if (sizes.seccomp_notif > sizeof buffer) {
        errno = EOVERFLOW;
        return -1;
    }
    memset(buffer, 0, sizes.seccomp_notif);
    if (ioctl(notify_fd, SECCOMP_IOCTL_NOTIF_RECV, buffer) != 0) return -1;
    struct seccomp_notif *request = (struct seccomp_notif *)buffer;
    notification->id = request->id;
    notification->pid = request->pid;
    notification->syscall = request->data.nr;
    notification->arch = request->data.arch;
    notification->instruction_pointer = request->data.instruction_pointer;
    for (int i = 0; i < 6; i++) notification->args[i] = request->data.args[i];
    return 0;
}

int csystem_seccomp_id_valid(int notify_fd, uint64_t id) { return ioctl(notify_fd, SECCOMP_IOCTL_NOTIF_ID_VALID, &id); }

int csystem_seccomp_respond(int notify_fd, uint64_t id, int continue_call, int64_t value, int error) {
    struct seccomp_notif_resp response;
    memset(&response, 0, sizeof response);
    response.id = id;
    if (continue_call) {
        response.flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE;
    } else {
        response.val = error ? 0 : value;
        response.error = error ? -error : 0;
    }
    return ioctl(notify_fd, SECCOMP_IOCTL_NOTIF_SEND, &response);
}

#ifndef SECCOMP_IOCTL_NOTIF_SET_FLAGS
#define SECCOMP_IOCTL_NOTIF_SET_FLAGS SECCOMP_IOW(4, __u64)
#endif
#ifndef SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP
#define SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP (1UL << 0)
#endif

int csystem_seccomp_sync_wakeup(int notify_fd) {
    return ioctl(notify_fd, SECCOMP_IOCTL_NOTIF_SET_FLAGS, SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP);
}

int csystem_seccomp_add_fd(int notify_fd, uint64_t id, int source_fd, int target_fd, int close_on_exec) {
    struct seccomp_notif_addfd request;
    memset(&request, 0, sizeof request);
    request.id = id;
    request.flags = SECCOMP_ADDFD_FLAG_SETFD;
    request.srcfd = (uint32_t)source_fd;
    request.newfd = (uint32_t)target_fd;
    request.newfd_flags = close_on_exec ? O_CLOEXEC : 0;
    return ioctl(notify_fd, SECCOMP_IOCTL_NOTIF_ADDFD, &request);
}

int csystem_send_descriptor(int socket, int descriptor, unsigned char tag) {
    union {
        struct cmsghdr header;
        char space[CMSG_SPACE(sizeof(int))];
    } control;
    memset(&control, 0, sizeof control);
    struct iovec part = {&tag, 1};
    struct mmsghdr message;
    memset(&message, 0, sizeof message);
    message.msg_hdr.msg_iov = &part;
    message.msg_hdr.msg_iovlen = 1;
    message.msg_hdr.msg_control = control.space;
    message.msg_hdr.msg_controllen = sizeof control.space;
    struct cmsghdr *header = CMSG_FIRSTHDR(&message.msg_hdr);
    header->cmsg_level = SOL_SOCKET;
    header->cmsg_type = SCM_RIGHTS;
    header->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(header), &descriptor, sizeof(int));
    int sent;
    do sent = sendmmsg(socket, &message, 1, MSG_NOSIGNAL);
    while (sent < 0 && errno == EINTR);
    return sent == 1 ? 0 : -1;
}

int csystem_receive_descriptor(int socket, unsigned char *tag, int *descriptor) {
    union {
        struct cmsghdr header;
        char space[CMSG_SPACE(sizeof(int) * 4)];
    } control;
    memset(&control, 0, sizeof control);
    struct iovec part = {tag, 1};
    struct msghdr message;
    memset(&message, 0, sizeof message);
    message.msg_iov = &part;
    message.msg_iovlen = 1;
    message.msg_control = control.space;
    message.msg_controllen = sizeof control.space;
    *descriptor = -1;
    ssize_t received;
    do received = recvmsg(socket, &message, MSG_CMSG_CLOEXEC);
    while (received < 0 && errno == EINTR);
    if (received < 0) return -1;
    for (struct cmsghdr *header = CMSG_FIRSTHDR(&message); header; header = CMSG_NXTHDR(&message, header)) {
        if (header->cmsg_level != SOL_SOCKET || header->cmsg_type != SCM_RIGHTS) continue;
        size_t count = (header->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < count; i++) {
            int fd;
            memcpy(&fd, CMSG_DATA(header) + i * sizeof(int), sizeof fd);
            if (*descriptor < 0) *descriptor = fd;
            else close(fd);  // one is expected: never leak the rest
        }
    }
    return (int)received;
}


// MARK: supervised spawn

// What the child of csystem_spawn shares with its parent (CLONE_VM): the request, the environment it
// completes, and how it failed.
struct spawn_child {
    const csystem_spawn_request *request;
    char **envp;
    char *listen_pid;      // the value part of "LISTEN_PID=", filled in by the child; NULL when not asked
    char *listen_pidfdid;  // likewise, "LISTEN_PIDFDID="
    int pidfdid_index;     // its entry in envp, cut off (NULL) when the pidfd has no inode id
    int report;            // the child's end of the socket pair for the notification descriptor, or -1
    int parent;
    int failed_step;
    int error;
};

static void decimal(char *out, unsigned long long value) {
    char digits[24];
    int n = 0;
    do digits[n++] = (char)('0' + value % 10);
    while ((value /= 10) && n < 23);
    while (n) *out++ = digits[--n];
    *out = 0;
}

// Runs in the child, on its own stack but in the parent's memory, until execve: system calls only, nothing
// that allocates or takes a lock.
static int spawn_child_main(void *argument) {
    struct spawn_child *child = argument;
    const csystem_spawn_request *request = child->request;
    struct sigaction standard;
    memset(&standard, 0, sizeof standard);
    standard.sa_handler = SIG_DFL;
    for (int signal = 1; signal < NSIG; signal++) {
        if (signal != SIGKILL && signal != SIGSTOP) (void)sigaction(signal, &standard, NULL);  // glibc's own ones refuse: fine
    }
    child->failed_step = CSYSTEM_SPAWN_SETUP;
    if (request->new_process_group && setpgid(0, 0) != 0) goto fail;
    if (request->death_signal) {
        if (prctl(PR_SET_PDEATHSIG, request->death_signal, 0, 0, 0) != 0) goto fail;
        if (getppid() != child->parent) {
            child->failed_step = CSYSTEM_SPAWN_PARENT_GONE;
            errno = ESRCH;
            goto fail;
        }
    }
    // The streams first: their sources may be any descriptor, and the mappings below only write 3 and above.
    if (request->stdin_fd >= 0 && dup2(request->stdin_fd, 0) < 0) goto fail;
    if (request->stdout_fd >= 0 && dup2(request->stdout_fd, 1) < 0) goto fail;
    if (request->stderr_fd >= 0 && dup2(request->stderr_fd, 2) < 0) goto fail;
    if (request->stdout_fd == CSYSTEM_SPAWN_OTHER && dup2(2, 1) < 0) goto fail;
    if (request->stderr_fd == CSYSTEM_SPAWN_OTHER && dup2(1, 2) < 0) goto fail;
    // Each source is at 3 + count or above (the caller checks), so no mapping overwrites one still to be made;
    // dup2 clears close-on-exec on the target.
    for (int i = 0; i < request->count; i++) {
        if (dup2(request->descriptors[i], 3 + i) < 0) goto fail;
    }
    if (request->filter_count > 0) {
        child->failed_step = CSYSTEM_SPAWN_FILTER;
        int notification = csystem_seccomp_listen(request->filter_calls, request->filter_count);
        if (notification < 0) goto fail;
        child->failed_step = CSYSTEM_SPAWN_SETUP;
        if (csystem_send_descriptor(child->report, notification, 0) < 0) goto fail;
        close(notification);
    }
    if (child->listen_pid) {
        decimal(child->listen_pid, (unsigned long long)getpid());
        unsigned long long id;
        if (csystem_pidfd_inode_id(getpid(), &id) == 0) decimal(child->listen_pidfdid, id);
        else child->envp[child->pidfdid_index] = NULL;
    }
    unsigned int first = 3 + (unsigned int)request->count;
    if (!request->keep_descriptors && syscall(SYS_close_range, first, ~0U, 0) != 0) {
        for (int fd = (int)first; fd < 65536; fd++) close(fd);  // Linux before 5.9
    }
    sigset_t none;
    sigemptyset(&none);
    child->failed_step = CSYSTEM_SPAWN_EXEC;
    sigprocmask(SIG_SETMASK, &none, NULL);
    if (request->search_path) execvpe(request->path, request->argv, child->envp);
    else execve(request->path, request->argv, child->envp);
fail:
    child->error = errno ? errno : EINVAL;
    _exit(127);
}

static int has_prefix(const char *text, const char *prefix) { return strncmp(text, prefix, strlen(prefix)) == 0; }

int csystem_spawn(const csystem_spawn_request *request, int *notification, int *failed_step) {
    *notification = -1;
    *failed_step = CSYSTEM_SPAWN_SETUP;
    struct spawn_child child = {.request = request, .report = -1, .parent = getpid()};
    // The environment: the caller's, and with set_listen_pid LISTEN_PID and LISTEN_PIDFDID last, for the child to fill in.
    int entries = 0;
    while (request->envp[entries]) entries++;
    child.envp = calloc((size_t)entries + 3, sizeof(char *));
    char listen_pid[16 + 24], listen_pidfdid[16 + 24];
    if (!child.envp) return -1;
    int n = 0;
    for (int i = 0; i < entries; i++) {
        if (request->set_listen_pid && (has_prefix(request->envp[i], "LISTEN_PID=") || has_prefix(request->envp[i], "LISTEN_PIDFDID="))) continue;
        child.envp[n++] = request->envp[i];
    }
    if (request->set_listen_pid) {
        strcpy(listen_pid, "LISTEN_PID=");
        strcpy(listen_pidfdid, "LISTEN_PIDFDID=");
        child.listen_pid = listen_pid + strlen(listen_pid);
        child.listen_pidfdid = listen_pidfdid + strlen(listen_pidfdid);
        child.envp[n++] = listen_pid;
        child.pidfdid_index = n;
        child.envp[n++] = listen_pidfdid;
    }
    child.envp[n] = NULL;
    int ends[2] = {-1, -1};
    if (request->filter_count > 0) {
        // Non-blocking: the message is there when the parent resumes (the child sends before it execs), and a
        // child killed before it sent leaves EAGAIN, where a datagram socket would otherwise wait for ever.
        if (socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, ends) != 0) goto fail_early;
        // Above every target of the mappings, so that none lands on it.
        int moved = fcntl(ends[1], F_DUPFD_CLOEXEC, 3 + request->count);
        close(ends[1]);
        ends[1] = moved;
        if (moved < 0) goto fail_early;
        child.report = moved;
    }
    const size_t stack_size = 256 * 1024;
    void *stack = mmap(NULL, stack_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    if (stack == MAP_FAILED) goto fail_early;
    // Every signal blocked until the child has reset the handlers: none of ours may run in it.
    sigset_t all, previous;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &previous);
    int saved = errno;
    pid_t pid = clone(spawn_child_main, (char *)stack + stack_size, CLONE_VM | CLONE_VFORK | SIGCHLD, &child);
    int clone_error = errno;
    pthread_sigmask(SIG_SETMASK, &previous, NULL);
    errno = saved;
    munmap(stack, stack_size);
    if (pid < 0) {
        errno = clone_error;
        goto fail_early;
    }
    if (child.error) {
        // It ran no program: reaped here, never seen by the caller's reaper.
        int status;
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
        *failed_step = child.failed_step;
        errno = child.error;
        pid = -1;
    } else if (request->filter_count > 0) {
        unsigned char tag = 1;
        // Sent before the child's execve; none (-1) if the child was killed before it could send.
        if (csystem_receive_descriptor(ends[0], &tag, notification) <= 0 || tag != 0) {
            if (*notification >= 0) close(*notification);
            *notification = -1;
        }
    }
    if (ends[0] >= 0) close(ends[0]);
    if (ends[1] >= 0) close(ends[1]);
    free(child.envp);
    return pid;
fail_early:
    saved = errno;
    if (ends[0] >= 0) close(ends[0]);
    if (ends[1] >= 0) close(ends[1]);
    free(child.envp);
    errno = saved;
    return -1;
}

#else  // Not Linux: nothing here exists.

#define CSYSTEM_MISSING { errno = ENOSYS; return -1; }
int csystem_accept4(int fd, struct sockaddr *address, unsigned int *length, int flags) CSYSTEM_MISSING
int csystem_pipe2(int ends[2], int flags) CSYSTEM_MISSING
int csystem_pidfd_open(int pid) CSYSTEM_MISSING
int csystem_pidfd_open_thread(int tid) CSYSTEM_MISSING
int csystem_attach_reuseport_cbpf(int fd, const csystem_bpf_instruction *program, unsigned short count) CSYSTEM_MISSING
int csystem_reuseport_map_create(unsigned entries) CSYSTEM_MISSING
int csystem_reuseport_map_set(int map, unsigned key, int socket) CSYSTEM_MISSING
int csystem_attach_reuseport_ebpf(int fd, int map, const unsigned *serving, unsigned serving_count, int probe, const uint16_t *ports, unsigned count,
                                  char *log, unsigned log_size) CSYSTEM_MISSING
int csystem_pidfd_getfd(int pidfd, int target) CSYSTEM_MISSING
int csystem_pidfd_send_signal(int pidfd, int signal) CSYSTEM_MISSING
int csystem_pidfd_inode_id(int pid, unsigned long long *id) CSYSTEM_MISSING
int csystem_set_child_subreaper(int on) CSYSTEM_MISSING
int csystem_set_parent_death_signal(int signal) CSYSTEM_MISSING
int csystem_set_no_new_privileges(void) CSYSTEM_MISSING
int csystem_setns(int fd, int nstype) CSYSTEM_MISSING
int csystem_clone_newnet(void) { return 0; }
long csystem_getxattr(const char *path, const char *name, void *value, unsigned long size) CSYSTEM_MISSING
int csystem_spawn(const csystem_spawn_request *request, int *notification, int *failed_step) CSYSTEM_MISSING
long csystem_read_process_memory(int pid, uint64_t address, void *buffer, unsigned long length) CSYSTEM_MISSING
int csystem_syscall_bind(void) { return -1; }
int csystem_syscall_connect(void) { return -1; }
int csystem_syscall_sendto(void) { return -1; }
int csystem_syscall_sendmsg(void) { return -1; }
uint32_t csystem_audit_arch(void) { return 0; }
csystem_wait_kind csystem_syscall_wait_kind(long number) { return csystem_wait_none; }
int csystem_seccomp_listen(const int *syscalls, int count) CSYSTEM_MISSING
int csystem_seccomp_receive(int notify_fd, csystem_notification *notification) CSYSTEM_MISSING
int csystem_seccomp_id_valid(int notify_fd, uint64_t id) CSYSTEM_MISSING
int csystem_seccomp_respond(int notify_fd, uint64_t id, int continue_call, int64_t value, int error) CSYSTEM_MISSING
int csystem_seccomp_add_fd(int notify_fd, uint64_t id, int source_fd, int target_fd, int close_on_exec) CSYSTEM_MISSING
int csystem_seccomp_sync_wakeup(int notify_fd) CSYSTEM_MISSING
int csystem_send_descriptor(int socket, int descriptor, unsigned char tag) CSYSTEM_MISSING
int csystem_receive_descriptor(int socket, unsigned char *tag, int *descriptor) CSYSTEM_MISSING
#endif
