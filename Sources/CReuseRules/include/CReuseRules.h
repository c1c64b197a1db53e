#ifndef CREUSERULES_H
#define CREUSERULES_H

// The rules both paths of `portreuse run` apply to a program's socket calls, written once: the LD_PRELOAD shim
// (CReuseShim, linked against libc alone) links this code, and the seccomp interceptor (PortReuseInterception)
// calls it from Swift. The policy rows are the third copy of SharingTable's Linux rows, kept apart on purpose
// (the library stays pure Swift) and compared by a test.
//
// Only <stdint.h> here (see CPortReuseSystem.h for why): addresses are passed as pointers to a struct
// sockaddr_storage (or any struct sockaddr), spelled void *.
#include <stdint.h>

// Linked into the shim without being exported from it: the program it is loaded into never sees these names.
#define PORTREUSE_RULES_HIDDEN __attribute__((visibility("hidden")))

/// An address and/or a port put into a program's socket calls: `--bind` (BIND_ADDR, BIND_PORT) and `--source`.
typedef struct {
    /// Whether there is an address; its family (AF_INET or AF_INET6); its bytes in network order (4 of them
    /// for AF_INET); the IPv6 scope (an interface index, or 0).
    int has_address;
    int family;
    uint8_t address[16];
    uint32_t scope;
    /// Whether there is a port, and the port in host order.
    int has_port;
    uint16_t port;
} portreuse_rules_endpoint;

/// Puts the endpoint's address and/or port into `target`, an address of the socket's family (AF_INET or
/// AF_INET6). `peer` is the destination of a connect(), sendto() or sendmsg(), or NULL for bind(); `fd` is the
/// socket (its IPV6_V6ONLY is read). Returns NULL, or why the endpoint's address cannot apply to this socket
/// (for bind() its port is applied even then, where it fits: the caller says so).
///
/// IPv4 on an IPv6 socket becomes the IPv4-mapped address (::ffff:a.b.c.d), which is what a dual-stack socket
/// uses for IPv4; it is skipped where it cannot work: an IPV6_V6ONLY socket, or a connection that goes to an
/// address of the other IP version. An IPv4-mapped address on an IPv4 socket becomes the plain IPv4 address.
PORTREUSE_RULES_HIDDEN const char *portreuse_rules_apply_endpoint(const portreuse_rules_endpoint *endpoint, int fd, void *target,
                                                                  const void *peer);

/// Sets IP_TRANSPARENT (IPV6_TRANSPARENT for AF_INET6) on a socket of `family`: 0, or the errno.
PORTREUSE_RULES_HIDDEN int portreuse_rules_set_transparent(int fd, int family);

/// Sets IP_BIND_ADDRESS_NO_PORT on a TCP socket bound to a source address without a port, so that connect()
/// picks the port per 4-tuple as it does unbound: 0, or the errno.
PORTREUSE_RULES_HIDDEN int portreuse_rules_set_bind_address_no_port(int fd);

#endif
