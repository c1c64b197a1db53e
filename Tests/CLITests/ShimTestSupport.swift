import Foundation
import Glibc
import PortReuse
import TestSupport
import Testing

// Helpers for the tests of `portreuse run` and its shim: real programs (python3, curl, compiled C), run to
// their end with both outputs captured, or kept alive as servers with `Child`.

/// The built CLI.
let portreuse = productsFolder + "/portreuse"
/// The built shim, next to it.
let shimLibrary = productsFolder + "/libCReuseShim.so"

/// What a program did, with its two outputs kept apart.
struct Finished {
    /// The exit status, or the signal number when `signalled`.
    var status: Int32
    var signalled: Bool
    /// Stdout, byte for byte.
    var stdout: [UInt8]
    var stderr: String

    var output: String { String(decoding: stdout, as: UTF8.self) }
    /// Stderr's lines, without empty ones.
    var errorLines: [String] { stderr.split(separator: "\n").map(String.init) }
    /// Stderr's lines written by the shim.
    var shimLines: [String] { errorLines.filter { $0.hasPrefix("portreuse shim (") } }
}

/// Runs a program to its end (killed after `timeout` seconds) with stdout and stderr captured apart and
/// `input` on its stdin.
///
/// Started with `posix_spawn`, an empty signal mask and default signal actions, as a shell starts it:
/// Foundation's `Process` hands the child the signal mask of the calling thread, and Swift Testing runs on
/// dispatch worker threads that block SIGTERM and most other signals (swift-corelibs-foundation#4772).
func capture(_ arguments: [String], environment: [String: String]? = nil, input: String = "", timeout: Double = 60) throws -> Finished {
    var (stdinPipe, stdoutPipe, stderrPipe): ([Int32], [Int32], [Int32]) = ([0, 0], [0, 0], [0, 0])
    guard pipe2(&stdinPipe, O_CLOEXEC) == 0, pipe2(&stdoutPipe, O_CLOEXEC) == 0, pipe2(&stderrPipe, O_CLOEXEC) == 0 else {
        throw POSIXError(.init(rawValue: errno) ?? .EIO)
    }
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_adddup2(&actions, stdinPipe[0], 0)
    posix_spawn_file_actions_adddup2(&actions, stdoutPipe[1], 1)
    posix_spawn_file_actions_adddup2(&actions, stderrPipe[1], 2)
    var attributes = posix_spawnattr_t()
    posix_spawnattr_init(&attributes)
    defer { posix_spawnattr_destroy(&attributes) }
    var none = sigset_t()
    var all = sigset_t()
    sigemptyset(&none)
    sigfillset(&all)
    posix_spawnattr_setsigmask(&attributes, &none)
    posix_spawnattr_setsigdefault(&attributes, &all)
    posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))

    let entries = (environment ?? ProcessInfo.processInfo.environment).map { "\($0.key)=\($0.value)" }
    var pid = pid_t()
    let started = withCStrings(arguments) { argv in
        withCStrings(entries) { envp in posix_spawn(&pid, arguments[0], &actions, &attributes, argv, envp) }
    }
    for fd in [stdinPipe[0], stdoutPipe[1], stderrPipe[1]] { close(fd) }
    defer { for fd in [stdoutPipe[0], stderrPipe[0]] { close(fd) } }
    guard started == 0 else {
        close(stdinPipe[1])
        throw POSIXError(.init(rawValue: started) ?? .EIO)
    }
    var bytes = Array(input.utf8)[...]
    while !bytes.isEmpty {
        let written = bytes.withUnsafeBytes { write(stdinPipe[1], $0.baseAddress, $0.count) }
        if written <= 0 { break }
        bytes = bytes.dropFirst(written)
    }
    close(stdinPipe[1])

    var collected: [Int32: [UInt8]] = [:]
    var open = [stdoutPipe[0], stderrPipe[0]]
    let deadline = Date().addingTimeInterval(timeout)
    while !open.isEmpty, deadline.timeIntervalSinceNow > 0 {
        var polled = open.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
        guard poll(&polled, nfds_t(polled.count), Int32(max(1, deadline.timeIntervalSinceNow * 1000))) > 0 else { continue }
        for entry in polled where entry.revents != 0 {
            var chunk = [UInt8](repeating: 0, count: 65_536)
            let count = read(entry.fd, &chunk, chunk.count)
            if count > 0 { collected[entry.fd, default: []] += chunk[0..<count] } else { open.removeAll { $0 == entry.fd } }
        }
    }
    var status: Int32 = 0
    while waitpid(pid, &status, WNOHANG) == 0 {
        if deadline.timeIntervalSinceNow <= 0 { kill(pid, SIGKILL) }
        usleep(10_000)
    }
    let signal = status & 0x7F
    return Finished(
        status: signal == 0 ? (status >> 8) & 0xFF : signal, signalled: signal != 0,
        stdout: collected[stdoutPipe[0]] ?? [], stderr: String(decoding: collected[stderrPipe[0]] ?? [], as: UTF8.self))
}

/// pipe2 with O_CLOEXEC, so that no other test's child inherits a pipe end (the Glibc module hides pipe2).
private func pipe2(_ ends: inout [Int32], _ flags: Int32) -> Int32 {
    typealias Pipe2 = @convention(c) (UnsafeMutablePointer<Int32>, Int32) -> Int32
    let call = unsafeBitCast(dlsym(dlopen(nil, RTLD_NOW), "pipe2")!, to: Pipe2.self)
    return ends.withUnsafeMutableBufferPointer { call($0.baseAddress!, flags) }
}

/// Calls `body` with a NULL-terminated array of C strings.
func withCStrings<R>(_ strings: [String], _ body: ([UnsafeMutablePointer<CChar>?]) -> R) -> R {
    let pointers = strings.map { strdup($0) } + [nil]
    defer { pointers.forEach { free($0) } }
    return body(pointers)
}

/// This process's environment with some variables set (a `nil` value removes one). Every shim variable
/// the tests' own environment might carry is removed first.
func environment(_ changes: [String: String?] = [:]) -> [String: String] {
    var result = ProcessInfo.processInfo.environment
    for name in ["LD_PRELOAD", "PORTREUSE_POLICY", "PORTREUSE_VERBOSE", "PORTREUSE_BIND_ADDR", "PORTREUSE_BIND_PORT",
                 "PORTREUSE_SOURCE_ADDR", "PORTREUSE_SOURCE_PORT", "REUSE_ADDR", "REUSE_PORT", "BIND_ADDR", "BIND_PORT",
                 "IP_TRANSPARENT"] {
        result[name] = nil
    }
    for (name, value) in changes { result[name] = value }
    return result
}

/// The environment with the shim preloaded and the given shim variables.
func shimmed(_ variables: [String: String?] = [:]) -> [String: String] {
    environment(variables.merging(["LD_PRELOAD": shimLibrary]) { first, _ in first })
}

/// A program that binds a TCP and a UDP socket on 127.0.0.1, port 0, and prints the options they ended up
/// with: the same output whatever port it gets, so runs can be compared byte for byte.
let optionProbe = """
    import socket
    for kind, name in ((socket.SOCK_STREAM, "TCP"), (socket.SOCK_DGRAM, "UDP")):
        s = socket.socket(socket.AF_INET, kind)
        s.bind(("127.0.0.1", 0))
        print(name, "SO_REUSEADDR", s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR),
              "SO_REUSEPORT", s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT))
    """

/// The options `optionProbe` prints for one policy, from `SharingTable.linux`.
func probeOutput(_ policy: SharingPolicy?) -> String {
    Transport.allCases.map { transport in
        let options = policy.map { SharingTable.linux.options($0, transport) } ?? []
        return "\(transport) SO_REUSEADDR \(options.contains(.reuseAddress) ? 1 : 0) SO_REUSEPORT \(options.contains(.reusePort) ? 1 : 0)\n"
    }.joined()
}

/// `GET path` over HTTP/1.0; the response body.
func httpGet(_ address: SocketAddress, _ path: String = "/") throws -> String {
    let connection = try Connection.dial(to: address, policy: .exclusive, timeout: .seconds(5))
    try connection.send("GET \(path) HTTP/1.0\r\nHost: test\r\n\r\n")
    let response = String(decoding: try connection.receiveAll(timeout: .seconds(10)), as: UTF8.self)
    return response.components(separatedBy: "\r\n\r\n").dropFirst().joined(separator: "\r\n\r\n")
}

/// A folder that is removed when the test drops it.
final class TemporaryFolder {
    let path: String

    init() throws {
        var template = Array("/tmp/portreuse-test-XXXXXX".utf8CString)
        guard let made = mkdtemp(&template) else { throw POSIXError(.init(rawValue: errno) ?? .EIO) }
        path = String(cString: made).resolvingSymlinks
    }

    /// Writes a file (made executable with `executable`) through a close-on-exec descriptor (see
    /// `copyExecutable`) and returns its path.
    @discardableResult
    func write(_ name: String, _ text: String, executable: Bool = false) throws -> String {
        let file = path + "/" + name
        let fd = open(file, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, executable ? 0o755 : 0o644)
        guard fd >= 0 else { throw POSIXError(.init(rawValue: errno) ?? .EIO) }
        defer { close(fd) }
        let bytes = Array(text.utf8)
        try #require(Glibc.write(fd, bytes, bytes.count) == bytes.count, "short write to \(file)")
        return file
    }

    deinit { try? FileManager.default.removeItem(atPath: path) }
}

/// A folder served by `python3 -m http.server`, with one file `who` that names the server.
func servedFolder(named name: String) throws -> TemporaryFolder {
    let folder = try TemporaryFolder()
    try folder.write("who", name)
    return folder
}

/// Copies a file with its mode in a `cp` process of its own, so that the copy is never open for writing in
/// this (test) process: a child that another test spawns meanwhile would inherit that descriptor from clone
/// to exec, even a close-on-exec one, and exec'ing the copy would then fail with "Text file busy".
func copyExecutable(_ source: String, to destination: String) throws {
    let copied = try capture(["/bin/cp", "--preserve=mode", source, destination])
    try #require(copied.status == 0, "cp \(source) \(destination): \(copied.stderr)")
}

/// A folder that every user can enter, with copies of portreuse and the shim: for programs run as user
/// nobody, who cannot reach the build folder when the package sits in a private folder (mktemp -d).
func productsForEveryone() throws -> TemporaryFolder {
    let folder = try TemporaryFolder()
    chmod(folder.path, 0o755)
    try copyExecutable(portreuse, to: folder.path + "/portreuse")
    try copyExecutable(shimLibrary, to: folder.path + "/libCReuseShim.so")
    return folder
}

/// Runs the rest as user nobody (needs root).
let asNobody = ["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]

/// The first of these programs that exists, or `nil`.
func installed(_ candidates: String...) -> String? {
    candidates.first { FileManager.default.isExecutableFile(atPath: $0) }
}

let gcc = installed("/usr/bin/gcc", "/usr/bin/cc")
let readelf = installed("/usr/bin/readelf")
