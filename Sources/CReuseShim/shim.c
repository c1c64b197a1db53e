// The LD_PRELOAD shim of `portreuse run`: makes an unmodified program's sockets share their port, rebind at
// once after a restart, bind another address, or leave from a chosen source address and port.
//
// Rules this file keeps, because it runs inside programs it knows nothing about:
// - It never breaks its host. A bad setting is reported once on stderr and then treated as absent.
// - It only touches AF_INET and AF_INET6 sockets of type SOCK_STREAM or SOCK_DGRAM; everything else goes
//   straight to the next bind/connect/sendto/sendmsg (other preloaded libraries, then libc).
// - No allocation and no locking on the call path: the configuration is read once (pthread_once, run from
//   the constructor) and read-only afterwards; "said once" flags are atomic exchanges.
// - errno is what the program would see without the shim: saved on entry, restored before the real call.
// - Memory the program passed in is never written: a rewritten address is a copy.
// - It never writes to stdout. Messages go to the stderr the program started with, and not at all once
//   fd 2 refers to something else (a daemon that closed it and reused the number for a socket).
// - Writing a message never hurts the host: no SIGPIPE (blocked around the write, and consumed if the write
//   raised it), never a blocking write (a message that fd 2 cannot take at once is dropped), never a wait.
// - It never reads memory the program passed in that the kernel would refuse (EFAULT): the program's
//   addresses and msghdr are copied with process_vm_readv, and when that fails the call goes through untouched.
// - A bad setting is said once per process tree, not once per process: see `say_bad_settings`.
// - It never clears an option the program set itself: it only adds what the policy asks for.
#define _GNU_SOURCE
#include "CReuseShim.h"
#include "CReuseRules.h"

#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define EXPORT __attribute__((visibility("default")))

// MARK: - The policy table

// A copy of the Linux rows of SharingTable (Sources/PortReuse/Policy/SharingTable.swift); a test compares the two
// through portreuse_shim_policy_options. TCP and UDP differ: SO_REUSEADDR on UDP lets any user take the
// port's datagrams, so only unsafe-any-user sets it there.
struct policy_row {
    const char *name;
    int stream;   // SOCK_STREAM (TCP)
    int datagram; // SOCK_DGRAM (UDP)
};

enum { REUSEADDR = PORTREUSE_SHIM_REUSEADDR, REUSEPORT = PORTREUSE_SHIM_REUSEPORT };

static const struct policy_row policy_rows[] = {
    {"restartable", REUSEADDR, 0},
    {"shared", REUSEADDR | REUSEPORT, REUSEPORT},
    {"exclusive", 0, 0},
    {"unsafe-any-user", REUSEADDR | REUSEPORT, REUSEADDR | REUSEPORT},
};

static const struct policy_row *find_policy(const char *name) {
    for (size_t i = 0; i < sizeof policy_rows / sizeof policy_rows[0]; i++)
        if (strcmp(policy_rows[i].name, name) == 0) return &policy_rows[i];
    return NULL;
}

EXPORT int portreuse_shim_policy_options(const char *policy, int socket_type) {
    const struct policy_row *row = policy ? find_policy(policy) : NULL;
    if (row == NULL) return -1;
    switch (socket_type) {
    case SOCK_STREAM: return row->stream;
    case SOCK_DGRAM: return row->datagram;
    default: return -1;
    }
}

// Everything below interposes through glibc's dynamic loader (LD_PRELOAD, RTLD_NEXT). On macOS the
// equivalent would be DYLD_INSERT_LIBRARIES with a __DATA,__interpose section: not built here, so that
// the package still builds there (the README says what it would take).
#if defined(__linux__)

// MARK: - Configuration, read once

// An address and/or a port to bind, from a pair of variables (BIND_ADDR and BIND_PORT, for example).
struct endpoint {
    const char *address_variable, *port_variable; // where the values came from, for messages
    const char *address_text;                     // the value as written, for messages
    portreuse_rules_endpoint at;                  // what the rules put into the calls (CReuseRules)
};

static struct {
    int options[2];            // per socket kind (0: SOCK_STREAM, 1: SOCK_DGRAM): REUSEADDR | REUSEPORT
    int udp_reuseaddr_refused; // REUSE_ADDR=1 without unsafe-any-user: UDP sockets do not get SO_REUSEADDR
    int transparent;           // IP_TRANSPARENT / IPV6_TRANSPARENT before bind
    int verbose;
    struct endpoint bind_to;   // rewrites the address of bind()
    struct endpoint source;    // binds unbound sockets before connect(), sendto(), sendmsg()
    int bind_active, source_active;
    int options_only;          // a policy alone: bind() reads no address (its short path)
    int stderr_usable;         // fd 2 was open at start; its identity, to check before each message
    dev_t stderr_device;
    ino_t stderr_inode;
} config;

typedef int (*bind_function)(int, const struct sockaddr *, socklen_t);
typedef int (*connect_function)(int, const struct sockaddr *, socklen_t);
typedef ssize_t (*sendto_function)(int, const void *, size_t, int, const struct sockaddr *, socklen_t);
typedef ssize_t (*sendmsg_function)(int, const struct msghdr *, int);

// Used only when dlsym cannot find the next definition (it always can with a dynamic libc).
static int syscall_bind(int fd, const struct sockaddr *a, socklen_t l) { return (int)syscall(SYS_bind, fd, a, l); }
static int syscall_connect(int fd, const struct sockaddr *a, socklen_t l) { return (int)syscall(SYS_connect, fd, a, l); }
static ssize_t syscall_sendto(int fd, const void *b, size_t n, int f, const struct sockaddr *a, socklen_t l) {
    return syscall(SYS_sendto, fd, b, n, f, a, l);
}
static ssize_t syscall_sendmsg(int fd, const struct msghdr *m, int f) { return syscall(SYS_sendmsg, fd, m, f); }

static bind_function next_bind = syscall_bind;
static connect_function next_connect = syscall_connect;
static sendto_function next_sendto = syscall_sendto;
static sendmsg_function next_sendmsg = syscall_sendmsg;

// MARK: - Messages: one line each, formatted on the stack, written with one write(2)

struct line {
    char text[512];
    size_t used;
};

static void put(struct line *line, const char *text) {
    while (text && *text && line->used < sizeof line->text - 2) line->text[line->used++] = *text++;
}

static void put_number(struct line *line, unsigned long value) {
    char digits[24];
    size_t count = 0;
    do {
        digits[count++] = (char)('0' + value % 10);
        value /= 10;
    } while (value && count < sizeof digits);
    while (count && line->used < sizeof line->text - 2) line->text[line->used++] = digits[--count];
}

// A value from the environment, quoted, cut at 40 characters, with control and non-ASCII bytes as '?'.
static void put_value(struct line *line, const char *value) {
    put(line, "\"");
    size_t count = 0;
    for (; value[count] && count < 40; count++) {
        unsigned char c = (unsigned char)value[count];
        char printable[2] = {(c < 0x20 || c >= 0x7f) ? '?' : (char)c, 0};
        put(line, printable);
    }
    put(line, value[count] ? "...\"" : "\"");
}

// 127.0.0.1:80 or [::1]:80.
static void put_address(struct line *line, const struct sockaddr *address) {
    char text[INET6_ADDRSTRLEN + 1] = "?";
    if (address->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)address;
        inet_ntop(AF_INET, &in->sin_addr, text, sizeof text);
        put(line, text);
        put(line, ":");
        put_number(line, ntohs(in->sin_port));
    } else {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)address;
        inet_ntop(AF_INET6, &in6->sin6_addr, text, sizeof text);
        put(line, "[");
        put(line, text);
        put(line, "]:");
        put_number(line, ntohs(in6->sin6_port));
    }
}

static void put_options(struct line *line, int options) {
    if (options == 0) put(line, "none");
    if (options & REUSEADDR) put(line, "SO_REUSEADDR");
    if ((options & REUSEADDR) && (options & REUSEPORT)) put(line, "+");
    if (options & REUSEPORT) put(line, "SO_REUSEPORT");
}

// "Address already in use (EADDRINUSE)": untranslated, never allocates.
static void put_error(struct line *line, int code) {
    const char *description = strerrordesc_np(code), *name = strerrorname_np(code);
    put(line, description ? description : "error");
    put(line, " (");
    if (name) put(line, name);
    else put_number(line, (unsigned long)code);
    put(line, ")");
}

// Every line starts with who speaks: the shim, inside which program (children inherit LD_PRELOAD).
static void start(struct line *line) {
    line->used = 0;
    put(line, "portreuse shim (");
    put(line, program_invocation_short_name ? program_invocation_short_name : "?");
    put(line, "[");
    put_number(line, (unsigned long)getpid());
    put(line, "]): ");
}

// Writes the line to fd 2 in one call, only when fd 2 is still the stderr the program started with and can
// take it now: a full pipe or socket drops the line rather than block the host, and a pipe nobody reads any
// more neither kills the host with SIGPIPE nor leaves a SIGPIPE pending for it. Returns whether it was written.
static int emit(struct line *line) {
    int saved = errno, written = 0;
    struct stat now;
    if (config.stderr_usable && fstat(STDERR_FILENO, &now) == 0 && now.st_dev == config.stderr_device &&
        now.st_ino == config.stderr_inode) {
        line->text[line->used++] = '\n';
        struct pollfd ready = {.fd = STDERR_FILENO, .events = POLLOUT};
        // POLLERR: a pipe without readers (the write would raise SIGPIPE); no POLLOUT: full.
        if (poll(&ready, 1, 0) == 1 && (ready.revents & (POLLOUT | POLLERR | POLLHUP | POLLNVAL)) == POLLOUT) {
            if (S_ISSOCK(now.st_mode)) {
                written = send(STDERR_FILENO, line->text, line->used, MSG_NOSIGNAL | MSG_DONTWAIT) == (ssize_t)line->used;
            } else {
                // Lines are shorter than PIPE_BUF, so a pipe that polls writable takes the whole line at once.
                // SIGPIPE (a reader that left since poll) and SIGTTOU (a background job with `stty tostop`,
                // which would stop the host) are blocked for the write; a blocked SIGTTOU is not even raised.
                sigset_t blocked, previous, pending;
                sigemptyset(&blocked);
                sigaddset(&blocked, SIGPIPE);
                sigaddset(&blocked, SIGTTOU);
                pthread_sigmask(SIG_BLOCK, &blocked, &previous);
                int pipe_was_pending = sigpending(&pending) == 0 && sigismember(&pending, SIGPIPE) == 1;
                written = write(STDERR_FILENO, line->text, line->used) == (ssize_t)line->used;
                if (!pipe_was_pending && sigpending(&pending) == 0 && sigismember(&pending, SIGPIPE) == 1) {
                    sigset_t pipe_only;
                    sigemptyset(&pipe_only);
                    sigaddset(&pipe_only, SIGPIPE);
                    const struct timespec zero = {0, 0};
                    sigtimedwait(&pipe_only, NULL, &zero);
                }
                pthread_sigmask(SIG_SETMASK, &previous, NULL);
            }
        }
    }
    errno = saved;
    return written;
}

// Whether to say something that is said once per process (every time with PORTREUSE_VERBOSE=1).
static int say(int *said) { return config.verbose || __atomic_exchange_n(said, 1, __ATOMIC_RELAXED) == 0; }

static int said_udp_reuseaddr, said_reuseport_failed, said_transparent_failed, said_bind_skipped,
    said_source_skipped, said_source_failed, said_bind_merged;

// --bind moves every bind of the program to one address: a program with two listeners (an API and an admin
// port) would have both on one port, the connections split between them. The first moved bind's own address is
// kept here (per process); a second, different one is said once.
static struct sockaddr_storage first_moved;
static int has_first_moved;

static int same_address(const struct sockaddr_storage *a, const struct sockaddr_storage *b) {
    if (a->ss_family != b->ss_family) return 0;
    if (a->ss_family == AF_INET) {
        const struct sockaddr_in *x = (const struct sockaddr_in *)a, *y = (const struct sockaddr_in *)b;
        return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    const struct sockaddr_in6 *x = (const struct sockaddr_in6 *)a, *y = (const struct sockaddr_in6 *)b;
    return x->sin6_port == y->sin6_port && memcmp(&x->sin6_addr, &y->sin6_addr, sizeof x->sin6_addr) == 0;
}

// MARK: - Parsing the environment (once, at load)

// Bad settings are collected while the configuration is read, and said together at its end.
static struct bad_setting {
    const char *variable, *value, *why;
} bad_settings[16];
static size_t bad_count;

static void report_bad(const char *variable, const char *value, const char *why) {
    if (bad_count < sizeof bad_settings / sizeof bad_settings[0])
        bad_settings[bad_count++] = (struct bad_setting){variable, value, why};
}

// Children inherit LD_PRELOAD and the variables: a shell script's twenty processes would each say the same
// bad setting. A process that says bad settings puts a fingerprint of each (FNV-1a of its name and value, 16
// hex digits, comma-separated) in its own environment, which its children inherit; a process says only the
// bad settings whose fingerprint it did not inherit, and passes on the fingerprints of its own bad settings
// that were said (by it or before it). Nothing is set when there is nothing to say, and a line that stderr
// could not take is not marked as said. This runs at load, before main and before the program starts
// threads: setenv is safe there.
static const char warned_variable[] = "PORTREUSE_SHIM_WARNED";

static void fingerprint(const struct bad_setting *setting, char text[17]) {
    uint64_t hash = 0xcbf29ce484222325u;
    const char *parts[2] = {setting->variable, setting->value};
    for (int part = 0; part < 2; part++) {
        for (const char *c = parts[part];; c++) {
            hash = (hash ^ (unsigned char)*c) * 0x100000001b3u;
            if (*c == 0) break;
        }
    }
    for (int i = 0; i < 16; i++) text[i] = "0123456789abcdef"[(hash >> (60 - 4 * i)) & 15];
    text[16] = 0;
}

// Whether the comma-separated list `said` holds `print`.
static int was_said(const char *said, const char *print) {
    for (const char *entry = said; entry && *entry;) {
        if (strncmp(entry, print, 16) == 0 && (entry[16] == ',' || entry[16] == 0)) return 1;
        entry = strchr(entry, ',');
        if (entry) entry++;
    }
    return 0;
}

static void say_bad_settings(void) {
    if (bad_count == 0) return;
    const char *inherited = getenv(warned_variable);
    char marker[sizeof bad_settings / sizeof bad_settings[0] * 17 + 1];
    size_t used = 0, unchanged = 1;
    for (size_t i = 0; i < bad_count; i++) {
        char print[17];
        fingerprint(&bad_settings[i], print);
        int said = was_said(inherited, print);
        if (!said) {
            unchanged = 0;
            struct line line;
            start(&line);
            put(&line, bad_settings[i].variable);
            put(&line, "=");
            put_value(&line, bad_settings[i].value);
            put(&line, " is ignored: ");
            put(&line, bad_settings[i].why);
            said = emit(&line);
        }
        if (said) {
            if (used) marker[used++] = ',';
            memcpy(marker + used, print, 16);
            used += 16;
        }
    }
    marker[used] = 0;
    if (!unchanged && used) setenv(warned_variable, marker, 1);
}

// The value of a variable, or NULL when it is unset or empty (an empty value means "not set").
static const char *variable(const char *name) {
    const char *value = getenv(name);
    return (value && *value) ? value : NULL;
}

static int equals_ignoring_case(const char *a, const char *b) {
    for (; *a && *b; a++, b++) {
        char x = (*a >= 'A' && *a <= 'Z') ? (char)(*a + 32) : *a, y = (*b >= 'A' && *b <= 'Z') ? (char)(*b + 32) : *b;
        if (x != y) return 0;
    }
    return *a == *b;
}

// 1 or 0 for a valid boolean (1/0, true/false, yes/no, on/off), -1 when unset or bad (reported).
static int read_boolean(const char *name) {
    const char *value = variable(name);
    if (value == NULL) return -1;
    static const char *const yes[] = {"1", "true", "yes", "on"}, *const no[] = {"0", "false", "no", "off"};
    for (int i = 0; i < 4; i++) {
        if (equals_ignoring_case(value, yes[i])) return 1;
        if (equals_ignoring_case(value, no[i])) return 0;
    }
    report_bad(name, value, "expected 1 or 0 (also true/false, yes/no, on/off)");
    return -1;
}

static int read_port(const char *name, uint16_t *port) {
    const char *value = variable(name);
    if (value == NULL) return 0;
    unsigned long number = 0;
    size_t digits = 0;
    for (; value[digits] >= '0' && value[digits] <= '9' && digits < 6; digits++)
        number = number * 10 + (unsigned long)(value[digits] - '0');
    if (value[digits] != 0 || number > 65535) {
        report_bad(name, value, "not a port number (0 to 65535)");
        return 0;
    }
    *port = (uint16_t)number;
    return 1;
}

// The scope after an IPv6 address's %, read as the CLI reads it (IPAddress.init?(_:) in
// Sources/PortReuse/Addresses): a decimal number from 0 to 4294967295 (UInt32's parser: an optional + or -
// sign, where "-0" is 0 and any other negative number is refused, then digits only), else the name of an
// interface. Anything else is refused: never a number that wraps (4294967297 is not scope 1).
static int read_scope(const char *zone, uint32_t *scope) {
    if (*zone == 0) return 0;
    const char *digits = zone + (*zone == '+' || *zone == '-');
    uint64_t number = 0;
    size_t count = 0;
    for (; digits[count] >= '0' && digits[count] <= '9' && number <= UINT32_MAX; count++)
        number = number * 10 + (uint64_t)(digits[count] - '0');
    if (count > 0 && digits[count] == 0 && number <= UINT32_MAX && (*zone != '-' || number == 0)) {
        *scope = (uint32_t)number;
        return 1;
    }
    unsigned index = if_nametoindex(zone);
    *scope = index;
    return index != 0;
}

// A numeric IPv4 or IPv6 address, IPv6 optionally in brackets and with a %scope (interface name or index).
// The shim never resolves host names: it runs inside the program, on its bind path.
static int read_address(const char *name, struct endpoint *endpoint) {
    const char *value = variable(name);
    if (value == NULL) return 0;
    char text[INET6_ADDRSTRLEN + IF_NAMESIZE + 4];
    size_t length = strlen(value);
    if (length >= sizeof text) {
        report_bad(name, value, "not an IP address (too long)");
        return 0;
    }
    memcpy(text, value, length + 1);
    char *literal = text;
    if (literal[0] == '[' && length > 2 && literal[length - 1] == ']') {
        literal[length - 1] = 0;
        literal++;
    }
    if (inet_pton(AF_INET, literal, endpoint->at.address) == 1) {
        endpoint->at.family = AF_INET;
    } else {
        char *percent = strchr(literal, '%');
        uint32_t scope = 0;
        int scope_valid = 1;
        if (percent) {
            *percent = 0;
            scope_valid = read_scope(percent + 1, &scope);
        }
        if (inet_pton(AF_INET6, literal, endpoint->at.address) != 1 || !scope_valid) {
            report_bad(name, value,
                       percent ? "not an IPv6 address followed by % and an interface name or a number from 0 to 4294967295"
                               : "not an IP address (the shim takes numeric addresses such as 127.0.0.1 or ::1; "
                                 "portreuse run --bind/--source also resolve host names)");
            return 0;
        }
        endpoint->at.family = AF_INET6;
        endpoint->at.scope = scope;
    }
    endpoint->address_text = value;
    return 1;
}

// Reads an address variable and a port variable into an endpoint; returns whether either was valid.
static int read_endpoint(struct endpoint *endpoint, const char *address_variable, const char *port_variable) {
    memset(endpoint, 0, sizeof *endpoint);
    endpoint->address_variable = address_variable;
    endpoint->port_variable = port_variable;
    endpoint->at.has_address = read_address(address_variable, endpoint);
    endpoint->at.has_port = read_port(port_variable, &endpoint->at.port);
    return endpoint->at.has_address || endpoint->at.has_port;
}

static void load(void) {
    int saved = errno;

    void *found;
    if ((found = dlsym(RTLD_NEXT, "bind"))) next_bind = (bind_function)found;
    if ((found = dlsym(RTLD_NEXT, "connect"))) next_connect = (connect_function)found;
    if ((found = dlsym(RTLD_NEXT, "sendto"))) next_sendto = (sendto_function)found;
    if ((found = dlsym(RTLD_NEXT, "sendmsg"))) next_sendmsg = (sendmsg_function)found;

    struct stat error_output;
    if (fstat(STDERR_FILENO, &error_output) == 0) {
        config.stderr_usable = 1;
        config.stderr_device = error_output.st_dev;
        config.stderr_inode = error_output.st_ino;
    }

    config.verbose = read_boolean("PORTREUSE_VERBOSE") == 1;

    // Options: the policy's row, then bindp's REUSE_ADDR / REUSE_PORT, which override one option each.
    int stream = 0, datagram = 0, unsafe = 0;
    const char *policy_name = variable("PORTREUSE_POLICY");
    if (policy_name) {
        const struct policy_row *row = find_policy(policy_name);
        if (row) {
            stream = row->stream;
            datagram = row->datagram;
            unsafe = strcmp(row->name, "unsafe-any-user") == 0;
        } else {
            report_bad("PORTREUSE_POLICY", policy_name, "expected restartable, shared, exclusive or unsafe-any-user");
        }
    }
    int reuse_address = read_boolean("REUSE_ADDR"), reuse_port = read_boolean("REUSE_PORT");
    if (reuse_address == 1) {
        stream |= REUSEADDR;
        // SO_REUSEADDR on UDP lets any local user bind the port and take its datagrams: only when asked in words.
        if (unsafe) datagram |= REUSEADDR;
        else config.udp_reuseaddr_refused = 1;
    } else if (reuse_address == 0) {
        stream &= ~REUSEADDR;
        datagram &= ~REUSEADDR;
    }
    if (reuse_port == 1) {
        stream |= REUSEPORT;
        datagram |= REUSEPORT;
    } else if (reuse_port == 0) {
        stream &= ~REUSEPORT;
        datagram &= ~REUSEPORT;
    }
    config.options[0] = stream;
    config.options[1] = datagram;
    config.transparent = read_boolean("IP_TRANSPARENT") == 1;

    // Addresses: bindp's pair applies to bind() and to connect(); our own pairs to one each, and win.
    struct endpoint bindp;
    int has_bindp = read_endpoint(&bindp, "BIND_ADDR", "BIND_PORT");
    if (!read_endpoint(&config.bind_to, "PORTREUSE_BIND_ADDR", "PORTREUSE_BIND_PORT") && has_bindp)
        config.bind_to = bindp;
    if (!read_endpoint(&config.source, "PORTREUSE_SOURCE_ADDR", "PORTREUSE_SOURCE_PORT") && has_bindp)
        config.source = bindp;

    int bind_has_options = stream || datagram || config.udp_reuseaddr_refused || config.transparent;
    config.bind_active = bind_has_options || config.bind_to.at.has_address || config.bind_to.at.has_port;
    config.source_active = config.source.at.has_address || config.source.at.has_port;
    config.options_only = bind_has_options && !config.transparent && !config.udp_reuseaddr_refused && !config.verbose &&
                          !config.bind_to.at.has_address && !config.bind_to.at.has_port && !config.source_active;

    say_bad_settings();
    errno = saved;
}

static pthread_once_t loaded = PTHREAD_ONCE_INIT;

// Reads the configuration before main(); pthread_once also covers a library whose constructor binds a
// socket before this one has run.
__attribute__((constructor)) static void load_at_start(void) { pthread_once(&loaded, load); }

static inline void ensure_loaded(void) { pthread_once(&loaded, load); }

// MARK: - Reading the program's memory

// Copies `length` bytes of the program's memory at `from` to `to`; 0 when the kernel cannot read all of
// them, so that the call goes through untouched and the kernel answers EFAULT, as without the shim. A bad
// pointer is never dereferenced: process_vm_readv on this process reads through the kernel, which fails
// with EFAULT rather than raising SIGSEGV. Where a seccomp filter refuses process_vm_readv (EPERM, ENOSYS)
// the memory is read directly, as a plain program would. Keeps errno.
static int copy_in(void *to, const void *from, size_t length) {
    if (length == 0) return 1;
    if (from == NULL) return 0;
    int saved = errno;
    struct iovec local = {.iov_base = to, .iov_len = length}, remote = {.iov_base = (void *)from, .iov_len = length};
    ssize_t copied = process_vm_readv(getpid(), &local, 1, &remote, 1, 0);
    int code = errno;
    errno = saved;
    if (copied == (ssize_t)length) return 1;
    if (copied < 0 && (code == EPERM || code == ENOSYS)) {
        memcpy(to, from, length);
        return 1;
    }
    return 0;
}

// MARK: - Socket helpers

static int is_inet(sa_family_t family) { return family == AF_INET || family == AF_INET6; }

// 0 for SOCK_STREAM, 1 for SOCK_DGRAM, -1 for anything else (or not a socket).
static int socket_kind(int fd, int *type) {
    socklen_t length = sizeof *type;
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, type, &length) != 0) return -1;
    return *type == SOCK_STREAM ? 0 : *type == SOCK_DGRAM ? 1 : -1;
}

static socklen_t length_of(sa_family_t family) {
    return family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6);
}

// 0.0.0.0:0 or [::]:0: a bind that asks for no address and no port.
static int is_unspecified_any_port(const struct sockaddr_storage *address) {
    if (address->ss_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)address;
        return in->sin_port == 0 && in->sin_addr.s_addr == htonl(INADDR_ANY);
    }
    const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)address;
    return in6->sin6_port == 0 && IN6_IS_ADDR_UNSPECIFIED(&in6->sin6_addr);
}

// Sets the policy's options (and IP_TRANSPARENT) on a socket about to be bound; returns the options set.
static int set_options(int fd, sa_family_t family, int kind) {
    static const int one = 1;
    int options = config.options[kind];
    if (options & REUSEADDR) setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if ((options & REUSEPORT) && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0 &&
        say(&said_reuseport_failed)) {
        struct line line;
        start(&line);
        put(&line, "SO_REUSEPORT could not be set: ");
        put_error(&line, errno);
        put(&line, "; the socket is bound without it");
        emit(&line);
    }
    if (kind == 1 && config.udp_reuseaddr_refused && say(&said_udp_reuseaddr)) {
        struct line line;
        start(&line);
        put(&line, "REUSE_ADDR=1 is not applied to UDP sockets: SO_REUSEADDR on UDP lets any local user bind the "
                   "port and take its datagrams; set PORTREUSE_POLICY=unsafe-any-user if that is what you want");
        emit(&line);
    }
    int transparent_error = config.transparent ? portreuse_rules_set_transparent(fd, family) : 0;
    if (transparent_error) {
        if (say(&said_transparent_failed)) {
            struct line line;
            start(&line);
            put(&line, family == AF_INET ? "IP_TRANSPARENT" : "IPV6_TRANSPARENT");
            put(&line, " could not be set: ");
            put_error(&line, transparent_error);
            put(&line, transparent_error == EPERM ? "; it needs CAP_NET_ADMIN (run as root, or grant the capability); "
                                                    "the socket is bound without it"
                                                  : "; the socket is bound without it");
            emit(&line);
        }
    }
    return options;
}

static void say_skipped(const char *call, const struct endpoint *endpoint, const struct sockaddr *address,
                        const char *why, int port_applied) {
    struct line line;
    start(&line);
    put(&line, endpoint->address_variable);
    put(&line, "=");
    put_value(&line, endpoint->address_text ? endpoint->address_text : "");
    put(&line, " not applied to ");
    put(&line, call);
    put(&line, " ");
    put_address(&line, address);
    put(&line, ": ");
    put(&line, why);
    if (port_applied) {
        put(&line, "; its port ");
        put_number(&line, endpoint->at.port);
        put(&line, " is applied");
    }
    put(&line, config.verbose ? "" : " (said once)");
    emit(&line);
}

// Binds a socket that the program did not bind to the source endpoint, before it connects or sends to
// `peer`. `send_flags` are those of sendto()/sendmsg(), -1 for connect(). Returns 0 when the call may go on
// (bound, or left alone), -1 with errno set when the bind failed.
static int bind_source(const char *call, int fd, const struct sockaddr *peer, int send_flags) {
    struct sockaddr_storage source;
    socklen_t length = sizeof source;
    if (getsockname(fd, (struct sockaddr *)&source, &length) != 0 || !is_inet(source.ss_family)) return 0;
    // Bound already: by the program (an address, a port, or both), by a connect in progress, or by us.
    if (source.ss_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)&source;
        if (in->sin_port != 0 || in->sin_addr.s_addr != htonl(INADDR_ANY)) return 0;
    } else {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)&source;
        if (in6->sin6_port != 0 || !IN6_IS_ADDR_UNSPECIFIED(&in6->sin6_addr)) return 0;
    }
    int type = 0, kind = socket_kind(fd, &type);
    if (kind < 0) return 0;
    // sendto/sendmsg on a stream socket only connects with TCP Fast Open.
    if (kind == 0 && send_flags != -1 && !(send_flags & MSG_FASTOPEN)) return 0;

    const char *skipped = portreuse_rules_apply_endpoint(&config.source.at, fd, &source, peer);
    if (skipped) {
        if (say(&said_source_skipped)) say_skipped(call, &config.source, peer, skipped, 0);
        return 0;
    }
    int options = set_options(fd, source.ss_family, kind);
    // With an address but no port, let connect() choose the port per 4-tuple, as it does unbound.
    if (kind == 0 && !config.source.at.has_port) (void)portreuse_rules_set_bind_address_no_port(fd);

    if (next_bind(fd, (const struct sockaddr *)&source, length_of(source.ss_family)) != 0) {
        int code = errno;
        if (say(&said_source_failed)) {
            struct line line;
            start(&line);
            put(&line, call);
            put(&line, " to ");
            put_address(&line, peer);
            put(&line, " fails: the source ");
            put_address(&line, (const struct sockaddr *)&source);
            put(&line, " could not be bound: ");
            put_error(&line, code);
            emit(&line);
        }
        errno = code;
        return -1;
    }
    if (config.verbose) {
        struct line line;
        start(&line);
        put(&line, call);
        put(&line, " fd ");
        put_number(&line, (unsigned long)fd);
        put(&line, " to ");
        put_address(&line, peer);
        put(&line, " from ");
        put_address(&line, (const struct sockaddr *)&source);
        put(&line, ", options ");
        put_options(&line, options);
        emit(&line);
    }
    return 0;
}

// Copies a destination into `peer` when the source setting applies to it: a whole AF_INET or AF_INET6
// address (the kernel takes an IPv6 address without its last field, sin6_scope_id, as RFC 2133 defined it)
// that the kernel can read. A destination longer than sockaddr_storage is one the kernel refuses (EINVAL).
static int copy_peer(const struct sockaddr *address, socklen_t length, struct sockaddr_storage *peer) {
    if (!config.source_active || address == NULL || length < sizeof(sa_family_t) || length > sizeof *peer) return 0;
    memset(peer, 0, sizeof *peer);
    if (!copy_in(peer, address, length)) return 0;
    if (peer->ss_family == AF_INET) return length >= sizeof(struct sockaddr_in);
    return peer->ss_family == AF_INET6 && length >= offsetof(struct sockaddr_in6, sin6_scope_id);
}

// MARK: - The interposed calls

EXPORT int bind(int fd, const struct sockaddr *address, socklen_t length) {
    ensure_loaded();
    if (config.options_only) {
        // The short path of a policy alone (the common case, and a program that binds in a loop pays it each time):
        // the address is not read at all; the socket's protocol (SO_PROTOCOL: TCP, MPTCP or UDP; 0 for a Unix
        // socket) says which options, in one call. A bind the kernel then refuses (a bad pointer) fails as it would.
        int saved = errno, protocol = 0;
        socklen_t size = sizeof protocol;
        if (getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &protocol, &size) == 0) {
            int kind = protocol == IPPROTO_TCP || protocol == IPPROTO_MPTCP ? 0 : protocol == IPPROTO_UDP ? 1 : -1;
            if (kind >= 0) (void)set_options(fd, AF_INET, kind);
        }
        errno = saved;
        return next_bind(fd, address, length);
    }
    if ((!config.bind_active && !config.source_active) || address == NULL || length < sizeof(sa_family_t) ||
        length > sizeof(struct sockaddr_storage))
        return next_bind(fd, address, length);
    int saved = errno;
    // `asked` is what the program passed (for messages), `copy` what may be rewritten.
    struct sockaddr_storage asked, copy;
    memset(&asked, 0, sizeof asked);
    int type = 0, kind = -1;
    if (!copy_in(&asked, address, length) || !is_inet(asked.ss_family) || (kind = socket_kind(fd, &type)) < 0) {
        errno = saved;
        return next_bind(fd, address, length);
    }
    copy = asked;
    const struct sockaddr *bound = address;
    socklen_t bound_length = length;
    if (config.bind_to.at.has_address || config.bind_to.at.has_port) {
        const char *skipped = portreuse_rules_apply_endpoint(&config.bind_to.at, fd, &copy, NULL);
        if (skipped && say(&said_bind_skipped)) say_skipped("bind", &config.bind_to, (const struct sockaddr *)&asked, skipped, config.bind_to.at.has_port);
        if (!skipped || config.bind_to.at.has_port) {  // the port applies even where the address cannot
            bound = (const struct sockaddr *)&copy;
            if (bound_length < length_of(copy.ss_family)) bound_length = length_of(copy.ss_family);
            if (!has_first_moved) {
                first_moved = asked;
                has_first_moved = 1;
            } else if (!same_address(&first_moved, &asked) && say(&said_bind_merged)) {
                struct line line;
                start(&line);
                put(&line, "--bind moves a second listener of this process, ");
                put_address(&line, (const struct sockaddr *)&asked);
                put(&line, ", onto the same address as the first, ");
                put_address(&line, (const struct sockaddr *)&first_moved);
                put(&line, ": both now share one port and split its connections; --bind is for a program with one listener");
                emit(&line);
            }
        }
    } else if (config.source_active && is_unspecified_any_port(&asked)) {
        // A bind to 0.0.0.0:0 or [::]:0 (node's dgram, Java's DatagramSocket before they send) asks for nothing:
        // the socket is as unbound as before, so it gets the source, as connect() and sendto() would give it.
        if (!portreuse_rules_apply_endpoint(&config.source.at, fd, &copy, NULL)) {
            bound = (const struct sockaddr *)&copy;
            if (bound_length < length_of(copy.ss_family)) bound_length = length_of(copy.ss_family);
            int one = 1;
            if (kind == 0 && !config.source.at.has_port) (void)portreuse_rules_set_bind_address_no_port(fd);
        }
    }
    int options = set_options(fd, asked.ss_family, kind);

    if (config.verbose) {
        struct line line;
        start(&line);
        put(&line, "bind fd ");
        put_number(&line, (unsigned long)fd);
        put(&line, kind == 0 ? " (TCP) " : " (UDP) ");
        put_address(&line, (const struct sockaddr *)&asked);
        if (bound != address) {
            put(&line, " -> ");
            put_address(&line, bound);
        }
        put(&line, ", options ");
        put_options(&line, options);
        if (config.transparent) put(&line, ", IP_TRANSPARENT");
        emit(&line);
    }
    errno = saved;
    return next_bind(fd, bound, bound_length);
}

EXPORT int connect(int fd, const struct sockaddr *address, socklen_t length) {
    ensure_loaded();
    struct sockaddr_storage peer;
    if (copy_peer(address, length, &peer)) {
        int saved = errno;
        if (bind_source("connect", fd, (const struct sockaddr *)&peer, -1) != 0) return -1;
        errno = saved;
    }
    return next_connect(fd, address, length);
}

EXPORT ssize_t sendto(int fd, const void *buffer, size_t size, int flags, const struct sockaddr *address,
                      socklen_t length) {
    ensure_loaded();
    struct sockaddr_storage peer;
    if (copy_peer(address, length, &peer)) {
        int saved = errno;
        if (bind_source("sendto", fd, (const struct sockaddr *)&peer, flags) != 0) return -1;
        errno = saved;
    }
    return next_sendto(fd, buffer, size, flags, address, length);
}

EXPORT ssize_t sendmsg(int fd, const struct msghdr *message, int flags) {
    ensure_loaded();
    // Only with a source setting is the message looked at at all; the header is copied before its fields
    // are read. The kernel cuts a longer msg_namelen to sizeof(struct sockaddr_storage); so does this.
    struct msghdr header;
    struct sockaddr_storage peer;
    if (config.source_active && message != NULL && copy_in(&header, message, sizeof header) &&
        copy_peer((const struct sockaddr *)header.msg_name,
                  header.msg_namelen > sizeof peer ? (socklen_t)sizeof peer : header.msg_namelen, &peer)) {
        int saved = errno;
        if (bind_source("sendmsg", fd, (const struct sockaddr *)&peer, flags) != 0) return -1;
        errno = saved;
    }
    return next_sendmsg(fd, message, flags);
}

#endif // __linux__
