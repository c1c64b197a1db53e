#include "CBaseline.h"
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <time.h>
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
