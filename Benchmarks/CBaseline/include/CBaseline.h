#ifndef CBASELINE_H
#define CBASELINE_H
#include <stdint.h>

/// socket + SO_REUSEADDR + bind(127.0.0.1:port) + listen + close, `iterations` times, in plain C.
/// Returns 0, or the errno of the first failure.
int c_listen_cycles(uint16_t port, int iterations);

/// socket(type) + the options in `reuse_options` (1: SO_REUSEADDR, 2: SO_REUSEPORT, 4: first ask the
/// socket's type with getsockopt(SO_TYPE), as the shim does) + bind(127.0.0.1:port) + close, `iterations`
/// times, in plain C; the bind goes through whatever LD_PRELOAD interposes.
/// Returns 0, or the errno of the first failure.
int c_bind_cycles(uint16_t port, int type, int reuse_options, int iterations);

/// socket + bind to 127.0.0.1:`port`, which is held by a listener without SO_REUSEADDR, + close, `iterations`
/// times: each bind must fail with EADDRINUSE. Returns 0, or the first other errno.
int c_failed_bind_cycles(uint16_t port, int iterations);

/// The worker of shim-bench and intercept-bench: `warm_up` cycles of c_bind_cycles, then `iterations` timed on
/// the monotonic clock. Nanoseconds per cycle, or minus the errno of the first failure.
double c_bind_cycle_nanoseconds(uint16_t port, int type, int reuse_options, int warm_up, int iterations);

/// intercept-bench's anchor (Linux): puts this process's calls of system call number `call` (bind, connect) under
/// a seccomp user-notification filter whose notifications a thread of its own answers with
/// SECCOMP_USER_NOTIF_FLAG_CONTINUE at once: the kernel's round trip, without any supervisor's work. Call before
/// the timed loop; 0 or -errno.
int c_answer_with_continue(int call);

/// intercept-bench's client loop: a listener on 127.0.0.1:0 (a thread accepts and closes), then `warm_up` + timed
/// `iterations` of socket + connect + close (with a reset, so that no TIME-WAIT piles up). Nanoseconds per timed
/// cycle, or -errno.
double c_connect_cycle_nanoseconds(int warm_up, int iterations);

#endif
