// portreuse-intercept-exec [--listen-pid] REPORT_FD|- PROGRAM [ARGUMENTS…]: the C trampoline through which `portreuse up`
// starts every generation (and the demo its processes), the same job as the hidden `portreuse intercept-exec` without
// the start-up of a whole Swift program: about 1 ms instead of 10-15.
// With REPORT_FD, it installs the bind filter on itself, sends the notification descriptor over REPORT_FD (SCM_RIGHTS,
// tag 0), or one byte with the errno when the kernel refuses (then exits 126), and closes both; with `-`, no filter.
// Then it execs PROGRAM (a path). --listen-pid sets LISTEN_PID to its own pid first, which is the program's once it
// execs (no sh needed), and LISTEN_PIDFDID to the inode number of its pidfd (systemd 254+).
// The program gets SIGTERM when its parent dies (PR_SET_PDEATHSIG, kept across this exec):
// a killed `up` leaves no generation serving unnoticed as an orphan.
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include "CPortReuseSystem.h"

// SwiftPM links every executable with swiftrt.o, which registers the image with the Swift runtime; this program has
// no Swift in it, and these two definitions (with -static-stdlib in Package.swift) keep libswiftCore and libstdc++
// from being loaded at each start (about 1.3 ms of every generation's start-up).
void swift_addNewDSOImage(const void *image) { (void)image; }
_Bool _swift_backtrace_isThunkFunction(const char *name) {
    (void)name;
    return 0;
}

// Installs the bind filter and hands its notification descriptor over `report` (or the errno of a refusal).
static int install_filter(int report) {
    int calls[1] = {csystem_syscall_bind()};
    int notification = csystem_seccomp_listen(calls, 1);
    if (notification < 0) {
        unsigned char code = (unsigned char)(errno > 255 ? 255 : (errno < 1 ? 1 : errno));
        (void)send(report, &code, 1, MSG_NOSIGNAL);
        close(report);
        return -1;
    }
    if (csystem_send_descriptor(report, notification, 0) < 0) {
        fprintf(stderr, "portreuse-intercept-exec: cannot hand over the seccomp descriptor: %s\n", strerror(errno));
        return -1;
    }
    close(notification);
    close(report);
    return 0;
}

// LISTEN_PID, and LISTEN_PIDFDID as systemd 254+ sets it: the inode number of a pidfd of this process, which the
// program is once it execs (libsystemd 254+ ignores the sockets when it does not match). Where pidfds are not on
// pidfs the id names no process: then none, never one inherited from whoever started up.
static void set_listen_pid(void) {
    char text[24];
    snprintf(text, sizeof text, "%d", (int)getpid());
    setenv("LISTEN_PID", text, 1);
    unsigned long long id;
    if (csystem_pidfd_inode_id(getpid(), &id) == 0) {
        snprintf(text, sizeof text, "%llu", id);
        setenv("LISTEN_PIDFDID", text, 1);
    } else {
        unsetenv("LISTEN_PIDFDID");
    }
}

int main(int argc, char **argv) {
    int listen_pid = argc > 1 && strcmp(argv[1], "--listen-pid") == 0;
    if (listen_pid) {
        argv++;
        argc--;
    }
    if (argc < 3) {
        fprintf(stderr, "usage: portreuse-intercept-exec [--listen-pid] REPORT_FD|- PROGRAM [ARGUMENTS...]\n");
        return 64;
    }
    int filter = strcmp(argv[1], "-") != 0;
    int report = filter ? atoi(argv[1]) : -1;
    pid_t parent = getppid();
    if (csystem_set_parent_death_signal(SIGTERM) != 0 || getppid() != parent) {
        // No death signal, or up died before it was set: the program must not start unsupervised.
        fprintf(stderr, "portreuse-intercept-exec: portreuse up is gone (or PR_SET_PDEATHSIG failed): not starting %s\n", argv[2]);
        return 126;
    }
    if (filter && install_filter(report) != 0) return 126;
    if (listen_pid) set_listen_pid();
    execv(argv[2], argv + 2);
    int code = errno;
    fprintf(stderr, "portreuse-intercept-exec: %s: %s\n", argv[2], strerror(code));
    return code == ENOENT ? 127 : 126;
}
