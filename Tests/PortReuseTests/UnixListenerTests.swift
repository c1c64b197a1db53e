import Foundation
import Glibc
import PortReuse
import SystemPackage
import TestSupport
import Testing

/// `UnixListener`: a Unix-domain stream socket at a path, bound by the stale-file rule (issue 29).
@Suite("UnixListener: the stale-file rule")
struct UnixListenerTests {
    /// A client connection to `path`, or the errno.
    private func connect(_ path: String) -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: Array(path.utf8)) }
        let result = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
        return result == 0 ? 0 : errno
    }

    private func mode(_ path: String) -> UInt32? {
        var info = stat()
        return lstat(path, &info) == 0 ? UInt32(info.st_mode) & 0o7777 : nil
    }

    @Test("binds a free path, accepts, and removes only its own file")
    func bindAcceptRemove() throws {
        let folder = try TemporaryFolder()
        let path = folder.path + "/app.sock"
        let listener = try UnixListener(path: path)
        #expect(connect(path) == 0)
        let accepted = try #require(try listener.accept(timeout: .seconds(5)))
        accepted.close()
        #expect(listener.removeFile())
        #expect(mode(path) == nil, "the file is gone")
        #expect(!listener.removeFile(), "nothing left to remove")
    }

    @Test("a stale file (its server gone) is replaced; a live one is refused, naming who holds it")
    func staleAndLive() throws {
        let folder = try TemporaryFolder()
        let path = folder.path + "/app.sock"
        // A server that ended without removing its file.
        var first: UnixListener? = try UnixListener(path: path)
        first?.close()
        first = nil
        #expect(UnixSocketFile.inspect(path).state == .stale)
        let second = try UnixListener(path: path)
        #expect(connect(path) == 0, "the new listener answers at the path")
        do {
            _ = try UnixListener(path: path)
            Issue.record("a live socket was replaced")
        } catch {
            #expect(error.errno == .addressInUse)
            #expect(error.description.contains("is live") && error.description.contains("pid \(getpid())"), "\(error)")
        }
        #expect(connect(path) == 0, "the live one still answers")
        withExtendedLifetime(second) {}
    }

    @Test("a file that is not a socket is never replaced")
    func notASocket() throws {
        let folder = try TemporaryFolder()
        let path = try folder.write("app.sock", "data\n")
        do {
            _ = try UnixListener(path: path)
            Issue.record("a regular file was replaced")
        } catch {
            #expect(error.errno == .fileExists, "\(error)")
        }
        #expect(try String(contentsOfFile: path, encoding: .utf8) == "data\n")
    }

    @Test("the file gets exactly the permissions asked, whatever the umask, and is never wider meanwhile")
    func permissions() throws {
        let folder = try TemporaryFolder()
        let before = umask(0o077)
        defer { umask(before) }
        let listener = try UnixListener(path: folder.path + "/group.sock", permissions: [.ownerReadWrite, .groupReadWrite])
        #expect(mode(listener.path) == 0o660)
        let narrow = try UnixListener(path: folder.path + "/owner.sock", permissions: [.ownerReadWrite])
        #expect(mode(narrow.path) == 0o600)
    }

    @Test("a symbolic link at the path is not followed: the bind fails and the link's target is untouched")
    func symlink() throws {
        let folder = try TemporaryFolder()
        let target = try folder.write("target", "keep\n")
        let path = folder.path + "/app.sock"
        #expect(Glibc.symlink(target, path) == 0)
        #expect(throws: PortReuseError.self) { try UnixListener(path: path, permissions: [.ownerReadWrite, .groupReadWrite, .otherReadWrite]) }
        let kept = try String(contentsOfFile: target, encoding: .utf8)
        #expect(mode(target) == 0o644 && kept == "keep\n")
    }

    @Test("an abstract name binds, is refused while taken, and has no file to remove")
    func abstractName() throws {
        let name = "@portreuse-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let listener = try UnixListener(path: name)
        #expect(listener.isAbstract && !listener.removeFile())
        #expect(throws: PortReuseError.self) { try UnixListener(path: name) }
        listener.close()
        _ = try UnixListener(path: name)
    }

    @Test("adopting takes a listening Unix stream socket and knows its path; anything else is refused and left open")
    func adopting() throws {
        let folder = try TemporaryFolder()
        let original = try UnixListener(path: folder.path + "/app.sock")
        let descriptor = try #require(original.takeDescriptor())
        let adopted = try UnixListener(adopting: descriptor)
        #expect(adopted.path == folder.path + "/app.sock")
        #expect(adopted.removeFile())
        let tcp = try Listener(tcp: "127.0.0.1:0")
        #expect(throws: PortReuseError.self) { try UnixListener(adopting: tcp.handle.descriptor!) }
        #expect(fcntl(tcp.handle.descriptor!, F_GETFD) >= 0, "still open")
    }

    @Test("a path too long for sun_path is refused before anything is made")
    func tooLong() throws {
        #expect(throws: PortReuseError.self) { try UnixListener(path: "/tmp/" + String(repeating: "x", count: 200)) }
    }
}
