// The rules of the shim and the interceptor. See include/CReuseRules.h.
#include "CReuseRules.h"

#include <errno.h>

#if defined(__linux__)
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif
#ifndef IPV6_TRANSPARENT
#define IPV6_TRANSPARENT 75
#endif

static int is_mapped(const struct in6_addr *address) { return IN6_IS_ADDR_V4MAPPED(address); }

// Whether a peer address on an IPv6 socket is IPv4: AF_INET (Linux maps it for UDP) or ::ffff:a.b.c.d.
static int peer_is_ipv4(const struct sockaddr *peer) {
    return peer->sa_family == AF_INET || is_mapped(&((const struct sockaddr_in6 *)peer)->sin6_addr);
}

const char *portreuse_rules_apply_endpoint(const portreuse_rules_endpoint *endpoint, int fd, void *target_storage,
                                           const void *peer_address) {
    struct sockaddr_storage *target = target_storage;
    const struct sockaddr *peer = peer_address;
    if (target->ss_family == AF_INET) {
        struct sockaddr_in *in = (struct sockaddr_in *)target;
        struct in_addr address = in->sin_addr;
        if (endpoint->has_address) {
            if (endpoint->family == AF_INET) memcpy(&address, endpoint->address, 4);
            else if (is_mapped((const struct in6_addr *)endpoint->address)) memcpy(&address, &endpoint->address[12], 4);
            else {
                if (endpoint->has_port) in->sin_port = htons(endpoint->port);  // the part that fits
                return "it is an IPv6 address and this is an IPv4 socket";
            }
        }
        in->sin_addr = address;
        if (endpoint->has_port) in->sin_port = htons(endpoint->port);
        return NULL;
    }
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)target;
    struct in6_addr address = in6->sin6_addr;
    uint32_t scope = in6->sin6_scope_id;
    if (endpoint->has_address) {
        if (endpoint->family == AF_INET6) {
            memcpy(&address, endpoint->address, 16);
            scope = endpoint->scope;
        } else {
            memset(&address, 0, sizeof address);
            address.s6_addr[10] = address.s6_addr[11] = 0xff;
            memcpy(&address.s6_addr[12], endpoint->address, 4);
            scope = 0;
        }
        if (!peer && endpoint->has_port) in6->sin6_port = htons(endpoint->port);  // the part that fits, for bind()
        if (peer && peer_is_ipv4(peer) != is_mapped(&address))
            return is_mapped(&address) ? "it is an IPv4 address and the connection goes to an IPv6 address"
                                       : "it is an IPv6 address and the connection goes to an IPv4 address";
        if (!peer && is_mapped(&address)) {
            int only = 0;
            socklen_t length = sizeof only;
            if (getsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &only, &length) == 0 && only)
                return "it is an IPv4 address and this IPv6 socket is IPv6-only (IPV6_V6ONLY)";
        }
    }
    in6->sin6_addr = address;
    in6->sin6_scope_id = scope;
    if (endpoint->has_port) in6->sin6_port = htons(endpoint->port);
    return NULL;
}

static int set_on(int fd, int level, int name) {
    static const int one = 1;
    return setsockopt(fd, level, name, &one, sizeof one) == 0 ? 0 : errno;
}

int portreuse_rules_set_transparent(int fd, int family) {
    return family == AF_INET ? set_on(fd, IPPROTO_IP, IP_TRANSPARENT) : set_on(fd, IPPROTO_IPV6, IPV6_TRANSPARENT);
}

int portreuse_rules_set_bind_address_no_port(int fd) { return set_on(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT); }

#else  // Not Linux: the shim and the interceptor are Linux only.
const char *portreuse_rules_apply_endpoint(const portreuse_rules_endpoint *endpoint, int fd, void *target, const void *peer) {
    (void)endpoint, (void)fd, (void)target, (void)peer;
    return "not supported on this system";
}
int portreuse_rules_set_transparent(int fd, int family) { (void)fd, (void)family; return ENOSYS; }
int portreuse_rules_set_bind_address_no_port(int fd) { (void)fd; return ENOSYS; }
#endif
