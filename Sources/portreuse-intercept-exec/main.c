// portreuse-intercept-exec [--listen-pid] REPORT_FD PROGRAM [ARGUMENTS…]: the C trampoline of `portreuse up` (the same job as
// the hidden `portreuse intercept-exec`, without the start-up of a whole Swift program: about 3 ms instead of 10-15).
// Installs the bind filter on itself, sends the notification descriptor over REPORT_FD (SCM_RIGHTS, tag 0), or
// one byte with the errno when the kernel refuses (then exits 126), closes both and execs PROGRAM (a path).
// --listen-pid sets LISTEN_PID to its own pid first, which is the program's once it execs (no sh needed).
// The program gets SIGTERM when `up` dies (PR_SET_PDEATHSIG, kept across this exec): a killed `up` leaves no
// generation serving unnoticed as an orphan.
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include "CPortReuseSystem.h"

int main(int argc, char **argv) {
    int listen_pid = argc > 1 && strcmp(argv[1], "--listen-pid") == 0;
    if (listen_pid) {
        argv++;
        argc--;
    }
    if (argc < 3) {
        fprintf(stderr, "usage: portreuse-intercept-exec REPORT_FD PROGRAM [ARGUMENTS...]\n");
        return 64;
    }
    int report = atoi(argv[1]);
    pid_t parent = getppid();
    if (csystem_set_parent_death_signal(SIGTERM) != 0 || getppid() != parent) {
        // No death signal, or up died before it was set: the program must not start unsupervised.
        fprintf(stderr, "portreuse-intercept-exec: portreuse up is gone (or PR_SET_PDEATHSIG failed): not starting %s\n", argv[2]);
        return 126;
    }
    int calls[1] = {csystem_syscall_bind()};
    int notification = csystem_seccomp_listen(calls, 1);
    if (notification < 0) {
        unsigned char code = (unsigned char)(errno > 255 ? 255 : (errno < 1 ? 1 : errno));
        (void)send(report, &code, 1, MSG_NOSIGNAL);
        close(report);
        return 126;
    }
    if (csystem_send_descriptor(report, notification, 0) < 0) {
        fprintf(stderr, "portreuse-intercept-exec: cannot hand over the seccomp descriptor: %s\n", strerror(errno));
        return 126;
    }
    close(notification);
    close(report);
    if (listen_pid) {
        char pid[24];
        snprintf(pid, sizeof pid, "%d", (int)getpid());
        setenv("LISTEN_PID", pid, 1);
    }
    execv(argv[2], argv + 2);
    int code = errno;
    fprintf(stderr, "portreuse-intercept-exec: %s: %s\n", argv[2], strerror(code));
    return code == ENOENT ? 127 : 126;
}
