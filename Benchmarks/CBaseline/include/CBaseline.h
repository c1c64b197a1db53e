#ifndef CBASELINE_H
#define CBASELINE_H
#include <stdint.h>

/// socket + SO_REUSEADDR + bind(127.0.0.1:port) + listen + close, `iterations` times, in plain C.
/// Returns 0, or the errno of the first failure.
int c_listen_cycles(uint16_t port, int iterations);

#endif
