import Foundation
import Glibc
import PortReuse
import TestSupport
import Testing

// Helpers for the tests of `portreuse run` and its shim: real programs (python3, curl, compiled C), run to
// their end with both outputs captured (TestSupport's `capture`), or kept alive as servers with `Child`.

/// The built CLI.
let portreuse = productsFolder + "/portreuse"
/// The built shim, next to it.
let shimLibrary = productsFolder + "/libCReuseShim.so"

extension Finished {
    /// Stderr's lines written by the shim.
    var shimLines: [String] { errorLines.filter { $0.hasPrefix("portreuse shim (") } }
}

/// This process's environment with some variables set (a `nil` value removes one). Every shim variable
/// the tests' own environment might carry is removed first.
func environment(_ changes: [String: String?] = [:]) -> [String: String] {
    var result = ProcessInfo.processInfo.environment
    for name in ["LD_PRELOAD", "PORTREUSE_POLICY", "PORTREUSE_VERBOSE", "PORTREUSE_BIND_ADDR", "PORTREUSE_BIND_PORT",
                 "PORTREUSE_SOURCE_ADDR", "PORTREUSE_SOURCE_PORT", "REUSE_ADDR", "REUSE_PORT", "BIND_ADDR", "BIND_PORT",
                 "IP_TRANSPARENT", "PORTREUSE_SHIM_WARNED"] {
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
    // A server that closes without a word (a sloppy stop) failed this request: never an empty success.
    guard !response.isEmpty else { throw EmptyAnswer(address: address) }
    return response.components(separatedBy: "\r\n\r\n").dropFirst().joined(separator: "\r\n\r\n")
}

struct EmptyAnswer: Error, CustomStringConvertible {
    var address: SocketAddress
    var description: String { "\(address) closed the connection without an answer" }
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
