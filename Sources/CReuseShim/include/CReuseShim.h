#ifndef CREUSESHIM_H
#define CREUSESHIM_H

/// The LD_PRELOAD shim of `portreuse run` (libCReuseShim.so). Loaded into a program, it interposes
/// bind(), connect(), sendto() and sendmsg() for AF_INET and AF_INET6 sockets: it sets the socket options
/// of a sharing policy before the socket is bound, rewrites the address a program binds, and binds a
/// client socket to a chosen source address and port before it connects. It is configured by environment
/// variables only (see the README, section "portreuse run").
///
/// Besides the interposed calls, the library exports this one function, so that a test can compare the
/// shim's copy of the policy table with SharingTable.linux.

/// Bits of the result of portreuse_shim_policy_options: the raw values of ReuseOptions in Swift.
#define PORTREUSE_SHIM_REUSEADDR 1
#define PORTREUSE_SHIM_REUSEPORT 2

/// The options the shim sets for `policy` ("restartable", "shared", "exclusive", "unsafe-any-user") on a
/// socket of `socket_type` (SOCK_STREAM or SOCK_DGRAM): a combination of PORTREUSE_SHIM_REUSEADDR and
/// PORTREUSE_SHIM_REUSEPORT, or -1 for an unknown policy or socket type.
int portreuse_shim_policy_options(const char *policy, int socket_type);

#endif
