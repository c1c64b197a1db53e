import Foundation
import Glibc
import PortReuse
import TestSupport
import Testing

/// `portreuse who unix:PATH`: who holds a Unix-domain socket file (or an abstract name), and whether it is stale.
@Suite("portreuse who unix:")
struct WhoUnixTests {
    /// who's JSON answer for `name`, and its exit status.
    func who(_ name: String) throws -> (status: Int32, document: [String: Any]) {
        let (status, output) = try run([portreuse, "who", "--json", "unix:" + name], timeout: 30)
        let object = try JSONSerialization.jsonObject(with: Data(output.utf8))
        return (status, try #require(object as? [String: Any], "not a JSON object: \(output)"))
    }

    /// A Python process that binds `name` (`\0`-prefixed for an abstract one) as `kind`, listens for a stream,
    /// prints "bound" and waits (at most 30 s).
    func holder(_ name: String, kind: String = "SOCK_STREAM") throws -> Child {
        let child = try Child(python: """
            import socket, sys, time
            s = socket.socket(socket.AF_UNIX, socket.\(kind)); s.bind(\(pythonString(name)))
            if socket.\(kind) == socket.SOCK_STREAM: s.listen()
            print("bound", flush=True); time.sleep(30)
            """)
        #expect(child.line(timeout: 20) == "bound")
        return child
    }

    func pythonString(_ text: String) -> String { "'" + text.replacingOccurrences(of: "\0", with: "\\0") + "'" }

    @Test("a live socket file: its listening stream socket and the process that holds it; exit 0")
    func live() throws {
        let folder = try TemporaryFolder()
        let path = folder.path + "/app.sock"
        let server = try holder(path)
        let (status, document) = try who(path)
        #expect(status == 0)
        #expect(document["schema"] as? String == "portreuse.who.unix/1")
        #expect(document["state"] as? String == "live" && document["held"] as? Bool == true)
        let sockets = try #require(document["sockets"] as? [[String: Any]])
        #expect(sockets.count == 1 && sockets.first?["type"] as? String == "stream" && sockets.first?["listening"] as? Bool == true, "\(sockets)")
        let processes = try #require(sockets.first?["processes"] as? [[String: Any]])
        #expect(processes.map { $0["pid"] as? Int } == [Int(server.pid)])
    }

    @Test("a socket file its server left behind is stale (exit 1, and the text says removing it is safe); none is free; a plain file is not a socket")
    func staleFreeAndNotASocket() throws {
        let folder = try TemporaryFolder()
        let stale = folder.path + "/left.sock"
        let leaver = try Child(python: """
            import socket
            s = socket.socket(socket.AF_UNIX); s.bind(\(pythonString(stale))); s.listen(); s.close()
            print("closed", flush=True)
            """)
        #expect(leaver.line(timeout: 20) == "closed")
        #expect(leaver.waitForExit() == 0)
        let (status, document) = try who(stale)
        #expect(status == 1 && document["state"] as? String == "stale", "\(document)")
        #expect((document["sockets"] as? [Any])?.isEmpty == true)
        let text = try capture([portreuse, "who", "unix:" + stale])
        #expect(text.status == 1 && text.output.contains("stale") && text.output.contains("rm \(stale) is safe"), "\(text.output)")

        #expect(try who(folder.path + "/none.sock").document["state"] as? String == "free")
        let plain = try folder.write("plain", "not a socket\n")
        let (plainStatus, plainDocument) = try who(plain)
        #expect(plainStatus == 1 && plainDocument["state"] as? String == "not-a-socket")
    }

    @Test("an abstract name (unix:@NAME) and a bound datagram socket are live while their process holds them")
    func abstractAndDatagram() throws {
        let name = "portreuse-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let abstract = try holder("\0" + name)
        let (status, document) = try who("@" + name)
        #expect(status == 0 && document["state"] as? String == "live" && document["abstract"] as? Bool == true, "\(document)")
        withExtendedLifetime(abstract) {}

        let folder = try TemporaryFolder()
        let path = folder.path + "/datagrams.sock"
        let receiver = try holder(path, kind: "SOCK_DGRAM")
        let (dgramStatus, dgram) = try who(path)
        #expect(dgramStatus == 0 && dgram["state"] as? String == "live", "\(dgram)")
        let sockets = try #require(dgram["sockets"] as? [[String: Any]])
        #expect(sockets.first?["type"] as? String == "dgram" && sockets.first?["listening"] as? Bool == false, "\(sockets)")
        withExtendedLifetime(receiver) {}
    }

    @Test("bad input: exit status 2 with what is wrong", arguments: [
        (["unix:"], "give the socket file's path"), (["unix:/tmp/x.sock", "80"], "give it alone"), (["--all", "unix:/tmp/x.sock"], "give it alone"),
        (["unix:/" + String(repeating: "a", count: 120)], "at most 107 bytes"),
    ])
    func badInput(_ arguments: [String], _ message: String) throws {
        let result = try capture([portreuse, "who"] + arguments)
        #expect(result.status == 2)
        #expect(result.stderr.contains(message), "\(result.stderr)")
    }
}
