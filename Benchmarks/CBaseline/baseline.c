#include "CBaseline.h"
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <time.h>
#include <pthread.h>
#include <unistd.h>

/// 127.0.0.1:`port`.
static struct sockaddr_in loopback(uint16_t port) {
    struct sockaddr_in address = {0};
    address.sin_family = AF_INET;
    address.sin_port = htons(port);
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return address;
}

int c_listen_cycles(uint16_t port, int iterations) {
    struct sockaddr_in address = loopback(port);
    for (int i = 0; i < iterations; i++) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) return errno;
        int one = 1;
        if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
            bind(fd, (struct sockaddr *)&address, sizeof address) != 0 || listen(fd, SOMAXCONN) != 0) {
            int code = errno;
            close(fd);
            return code;
        }
        close(fd);
    }
    return 0;
}

int c_bind_cycles(uint16_t port, int type, int reuse_options, int iterations) {
    struct sockaddr_in address = loopback(port);
    int one = 1;
    for (int i = 0; i < iterations; i++) {
        int fd = socket(AF_INET, type | SOCK_CLOEXEC, 0);
        if (fd < 0) return errno;
        int type_seen = 0;
        socklen_t type_length = sizeof type_seen;
        if (((reuse_options & 4) && getsockopt(fd, SOL_SOCKET, SO_TYPE, &type_seen, &type_length) != 0) ||
            ((reuse_options & 1) && setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0) ||
            ((reuse_options & 2) && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0) ||
            bind(fd, (struct sockaddr *)&address, sizeof address) != 0) {
            int code = errno;
            close(fd);
            return code;
        }
        close(fd);
    }
    return 0;
}

int c_failed_bind_cycles(uint16_t port, int iterations) {
    struct sockaddr_in address = loopback(port);
    for (int i = 0; i < iterations; i++) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) return errno;
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        int failed = bind(fd, (struct sockaddr *)&address, sizeof address) != 0 ? errno : 0;
        close(fd);
        if (failed != EADDRINUSE) return failed ? failed : -1;
    }
    return 0;
}

double c_bind_cycle_nanoseconds(uint16_t port, int type, int reuse_options, int warm_up, int iterations) {
    int code = c_bind_cycles(port, type, reuse_options, warm_up);
    if (code != 0) return -code;
    struct timespec start, end;
    clock_gettime(CLOCK_MONOTONIC, &start);
    code = c_bind_cycles(port, type, reuse_options, iterations);
    clock_gettime(CLOCK_MONOTONIC, &end);
    if (code != 0) return -code;
    return ((double)(end.tv_sec - start.tv_sec) * 1e9 + (double)(end.tv_nsec - start.tv_nsec)) / iterations;
}

static void *accept_and_close(void *argument) {
    int listener = *(int *)argument;
    for (;;) {
        int connection = accept(listener, NULL, NULL);
        if (connection >= 0) close(connection);
        else if (errno != EINTR && errno != ECONNABORTED) return NULL;
    }
}

double c_connect_cycle_nanoseconds(int warm_up, int iterations) {
    static int listener = -1;
    struct sockaddr_in address = loopback(0);
    socklen_t length = sizeof address;
    listener = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (listener < 0 || bind(listener, (struct sockaddr *)&address, sizeof address) != 0 || listen(listener, SOMAXCONN) != 0 ||
        getsockname(listener, (struct sockaddr *)&address, &length) != 0)
        return -errno;
    pthread_t thread;
    if (pthread_create(&thread, NULL, accept_and_close, &listener) != 0) return -EAGAIN;
    struct linger reset = {1, 0};  // closed with a reset: no TIME-WAIT piles up on the client's ports
    struct timespec start = {0}, end;
    for (int i = 0; i < warm_up + iterations; i++) {
        if (i == warm_up) clock_gettime(CLOCK_MONOTONIC, &start);
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) return -errno;
        if (connect(fd, (struct sockaddr *)&address, sizeof address) != 0) {
            int code = errno;
            close(fd);
            return -code;
        }
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &reset, sizeof reset);
        close(fd);
    }
    clock_gettime(CLOCK_MONOTONIC, &end);
    return ((double)(end.tv_sec - start.tv_sec) * 1e9 + (double)(end.tv_nsec - start.tv_nsec)) / iterations;
}

#ifdef __linux__
// The anchor of intercept-bench: the kernel's round trip alone. The bind (or connect) filter of portreuse itself
// (CPortReuseSystem: the same program, flags and synchronous wake-up) on this process, whose notifications a
// thread of its own answers with CONTINUE at once: no memory read, no descriptor taken, no option set.
#include <poll.h>
#include "CPortReuseSystem.h"

static void *continue_every_call(void *argument) {
    int descriptor = *(int *)argument;
    for (;;) {
        struct pollfd entry = {descriptor, POLLIN, 0};  // as portreuse does: poll, then receive
        if (poll(&entry, 1, -1) < 0 && errno != EINTR) return NULL;
        if (entry.revents & (POLLHUP | POLLERR | POLLNVAL)) return NULL;
        csystem_notification notification;
        if (csystem_seccomp_receive(descriptor, &notification) != 0) continue;
        (void)csystem_seccomp_respond(descriptor, notification.id, 1, 0, 0);
    }
}

int c_answer_with_continue(int call) {
    static int descriptor = -1;
    int calls[1] = {call};
    descriptor = csystem_seccomp_listen(calls, 1);
    if (descriptor < 0) return -errno;
    (void)csystem_seccomp_sync_wakeup(descriptor);
    pthread_t thread;
    int code = pthread_create(&thread, NULL, continue_every_call, &descriptor);
    return code == 0 ? 0 : -code;
}
#endif
