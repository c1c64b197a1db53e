import Foundation
import Glibc
import PortReuse
import TestSupport
import Testing

/// A TCP server that prints `listening PORT`, then `peer HOST PORT` for each connection, and answers HTTP:
/// `/fixed` with `hello`, anything else with the peer as `HOST PORT`. It waits `delay` seconds before each
/// answer (so that connections overlap) and lives at most 60 s.
private func peerServer(address: String = "127.0.0.1", delay: Double = 0) throws -> (Child, UInt16) {
    let script = """
        import socket, signal, sys, threading, time
        signal.alarm(60)
        family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
        s = socket.socket(family)
        s.bind((sys.argv[1], 0)); s.listen(16)
        print("listening", s.getsockname()[1], flush=True)
        def answer(c, peer):
            request = c.recv(4096).decode()
            time.sleep(float(sys.argv[2]))
            body = "hello\\n" if " /fixed " in request else "%s %d\\n" % (peer[0], peer[1])
            c.sendall(("HTTP/1.0 200 OK\\r\\nContent-Length: %d\\r\\n\\r\\n%s" % (len(body), body)).encode())
            c.close()
        while True:
            c, peer = s.accept()
            print("peer", peer[0], peer[1], flush=True)
            threading.Thread(target=answer, args=(c, peer), daemon=True).start()
        """
    let server = try Child([systemPython, "-c", script, address, String(delay)])
    let first = try #require(server.line(), "the server did not start")
    return (server, try #require(UInt16(first.split(separator: " ").last ?? "")))
}

/// A UDP server that prints `listening PORT`, then `peer HOST PORT DATA` for each datagram (at most 60 s).
private func datagramServer(address: String = "127.0.0.1") throws -> (Child, UInt16) {
    let script = """
        import socket, signal, sys
        signal.alarm(60)
        s = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((sys.argv[1], 0))
        print("listening", s.getsockname()[1], flush=True)
        while True:
            data, peer = s.recvfrom(4096)
            print("peer", peer[0], peer[1], data.decode(), flush=True)
        """
    let server = try Child([systemPython, "-c", script, address])
    let first = try #require(server.line(), "the server did not start")
    return (server, try #require(UInt16(first.split(separator: " ").last ?? "")))
}

private let curl = installed("/usr/bin/curl")

@Suite("portreuse run --source: outgoing connections from a chosen address and port")
struct SourceTests {
    @Test("curl leaves from the chosen source port, as the server sees it", .enabled(if: curl != nil, "curl is missing"))
    func curlFromSourcePort() throws {
        let (server, port) = try peerServer()
        let source = try freePort()
        let result = try capture([portreuse, "run", "--source", "127.0.0.1:\(source)", "--", curl!, "-sS", "http://127.0.0.1:\(port)/"])
        #expect(result.status == 0, "\(result.stderr)")
        #expect(result.output == "127.0.0.1 \(source)\n")
        #expect(server.line() == "peer 127.0.0.1 \(source)")
        #expect(result.stderr.isEmpty)
    }

    @Test("Python's http.client leaves from the chosen source port; an address alone keeps a free port")
    func httpClientFromSource() throws {
        let (server, port) = try peerServer()
        let client = "import http.client, sys; c = http.client.HTTPConnection('127.0.0.1', int(sys.argv[1])); c.request('GET', '/'); print(c.getresponse().read().decode(), end='')"
        let source = try freePort()
        let fromPort = try capture([portreuse, "run", "--source", ":\(source)", "--", systemPython, "-c", client, String(port)])
        #expect(fromPort.output == "127.0.0.1 \(source)\n", "\(fromPort.stderr)")
        #expect(server.line() == "peer 127.0.0.1 \(source)")

        let fromAddress = try capture([portreuse, "run", "--source", "127.0.0.2", "--", systemPython, "-c", client, String(port)])
        #expect(fromAddress.output.hasPrefix("127.0.0.2 "), "\(fromAddress.stderr)")
        #expect(server.line()?.hasPrefix("peer 127.0.0.2 ") == true)
    }

    @Test("two clients at once leave from one source port to two servers with --policy shared, not with exclusive", .enabled(if: curl != nil, "curl is missing"))
    func twoClientsOneSourcePort() throws {
        // Each server waits before it answers, so the two connections are open at the same time.
        let (first, firstPort) = try peerServer(delay: 1)
        let (second, secondPort) = try peerServer(delay: 1)
        let both = "\(curl!) -sS http://127.0.0.1:\(firstPort)/ & \(curl!) -sS http://127.0.0.1:\(secondPort)/; wait"

        let source = try freePort()
        let shared = try capture([portreuse, "run", "--policy", "shared", "--source", "127.0.0.1:\(source)", "--", "/bin/sh", "-c", both])
        #expect(shared.status == 0, "\(shared.stderr)")
        #expect(shared.output == "127.0.0.1 \(source)\n127.0.0.1 \(source)\n")
        #expect(first.line() == "peer 127.0.0.1 \(source)")
        #expect(second.line() == "peer 127.0.0.1 \(source)")

        let otherSource = try freePort()
        let exclusive = try capture([portreuse, "run", "--policy", "exclusive", "--source", "127.0.0.1:\(otherSource)", "--", "/bin/sh", "-c", both])
        #expect(exclusive.output.split(separator: "\n") == ["127.0.0.1 \(otherSource)"], "only one connection gets the port")
        #expect(exclusive.stderr.contains("could not be bound: Address already in use (EADDRINUSE)"))
        #expect(exclusive.shimLines.count == 1)
    }

    @Test("IPv6: curl to [::1] leaves from [::1] and the chosen port; an IPv4 source is skipped for it, said once", .enabled(if: curl != nil, "curl is missing"))
    func ipv6() throws {
        let (server, port) = try peerServer(address: "::1")
        // Used on [::1] and on 127.0.0.1: reserved on both for the whole test. curl binds the source beside
        // the reservation (the shim's shared policy sets SO_REUSEADDR), and the kernel never picks it as
        // another connection's ephemeral port meanwhile.
        let reservation = try PortReservation()
        let source = reservation.port
        let result = try capture([portreuse, "run", "--source", "[::1]:\(source)", "--", curl!, "-sS", "http://[::1]:\(port)/"])
        #expect(result.output == "::1 \(source)\n", "\(result.stderr)")
        #expect(server.line() == "peer ::1 \(source)")

        let skipped = try capture([portreuse, "run", "--source", "127.0.0.1:\(source)", "--", curl!, "-sS", "http://[::1]:\(port)/"])
        #expect(skipped.status == 0)
        #expect(!skipped.output.contains(" \(source)\n"), "left from a port of the kernel's choice")
        #expect(skipped.shimLines.count == 1)
        #expect(skipped.stderr.contains("PORTREUSE_SOURCE_ADDR=\"127.0.0.1\" not applied to connect [::1]:\(port): it is an IPv4 address and the connection goes to an IPv6 address"))
        withExtendedLifetime(reservation) {}
    }

    @Test("an IPv4 source on a dual-stack IPv6 socket that connects to an IPv4-mapped address becomes the mapped source")
    func mappedSource() throws {
        let (server, port) = try peerServer()
        let client = """
            import socket, sys
            s = socket.socket(socket.AF_INET6)
            s.connect(("::ffff:127.0.0.1", int(sys.argv[1])))
            print(s.getsockname()[0], s.getsockname()[1])
            """
        let source = try freePort()
        let result = try capture([portreuse, "run", "--source", "127.0.0.1:\(source)", "--", systemPython, "-c", client, String(port)])
        #expect(result.output == "::ffff:127.0.0.1 \(source)\n", "\(result.stderr)")
        #expect(server.line() == "peer 127.0.0.1 \(source)")
    }

    @Test("the program's stdout is byte for byte what it is without the shim, --verbose included", .enabled(if: curl != nil, "curl is missing"))
    func stdoutUnchanged() throws {
        let (server, port) = try peerServer()
        let command = [curl!, "-sS", "-i", "http://127.0.0.1:\(port)/fixed"]
        let plain = try capture(command)
        #expect(plain.status == 0)
        let source = try freePort()
        let shimmed = try capture([portreuse, "run", "--verbose", "--source", "127.0.0.1:\(source)", "--"] + command)
        #expect(shimmed.stdout == plain.stdout)
        #expect(shimmed.stderr.contains("connect fd"), "the verbose lines go to stderr: \(shimmed.stderr)")
        #expect(shimmed.stderr.contains("from 127.0.0.1:\(source)"))
        withExtendedLifetime(server) {}
    }

    @Test("a non-blocking connect leaves from the source, and its later connect() calls are left alone")
    func nonBlockingConnect() throws {
        let (server, port) = try peerServer()
        let client = """
            import errno, select, socket, sys
            s = socket.socket()
            s.setblocking(False)
            first = s.connect_ex(("127.0.0.1", int(sys.argv[1])))
            select.select([], [s], [], 5)
            second = s.connect_ex(("127.0.0.1", int(sys.argv[1])))
            print(errno.errorcode.get(first, first), errno.errorcode.get(second, second), s.getsockname()[1])
            """
        let source = try freePort()
        let result = try capture([portreuse, "run", "--source", ":\(source)", "--", systemPython, "-c", client, String(port)])
        // Linux answers the first connect() after the handshake completed with 0 (then EISCONN).
        #expect(result.output == "EINPROGRESS 0 \(source)\n", "\(result.stderr)")
        #expect(server.line() == "peer 127.0.0.1 \(source)")
        #expect(result.stderr.isEmpty)
    }

    @Test("UDP: connect() and then send, sendto() and sendmsg() on unbound sockets leave from the source")
    func datagrams() throws {
        let (server, port) = try datagramServer()
        let client = """
            import socket, sys
            port = int(sys.argv[1])
            a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            a.connect(("127.0.0.1", port)); a.send(b"connected")
            b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            b.sendto(b"sendto", ("127.0.0.1", port))
            c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            c.sendmsg([b"sendmsg"], [], 0, ("127.0.0.1", port))
            print("sent")
            """
        let source = try freePort(.udp)
        let result = try capture([portreuse, "run", "--source", "127.0.0.1:\(source)", "--", systemPython, "-c", client, String(port)])
        #expect(result.output == "sent\n", "\(result.stderr)")
        let lines = [server.line(), server.line(), server.line()]
        #expect(lines == ["peer 127.0.0.1 \(source) connected", "peer 127.0.0.1 \(source) sendto", "peer 127.0.0.1 \(source) sendmsg"])
    }

    @Test("a socket the program bound itself keeps its own address and port")
    func programBoundSocketLeftAlone() throws {
        let (server, port) = try peerServer()
        let client = """
            import socket, sys
            s = socket.socket()
            s.bind(("127.0.0.3", 0))
            s.connect(("127.0.0.1", int(sys.argv[1])))
            print(s.getsockname()[0])
            """
        let result = try capture([portreuse, "run", "--source", "127.0.0.1:\(try freePort())", "--", systemPython, "-c", client, String(port)])
        #expect(result.output == "127.0.0.3\n")
        #expect(server.line()?.hasPrefix("peer 127.0.0.3 ") == true)
    }

    /// connect() and bind() through ctypes with buffers that the test compares before and after the call,
    /// and errno as C sees it.
    static let memoryProbe = """
        import ctypes, socket, struct, sys
        libc = ctypes.CDLL(None, use_errno=True)
        def address(port):
            return ctypes.create_string_buffer(struct.pack("=H", socket.AF_INET) + struct.pack("!H", port) + socket.inet_aton("127.0.0.1") + bytes(8), 16)
        server = int(sys.argv[1])
        c = socket.socket()
        target = address(server); before = target.raw
        ctypes.set_errno(0)
        print("connect", libc.connect(c.fileno(), target, 16), ctypes.get_errno(), target.raw == before, c.getsockname()[1])
        b = socket.socket()
        wanted = address(0); before = wanted.raw
        print("bind", libc.bind(b.fileno(), wanted, 16), wanted.raw == before, b.getsockname()[1])
        """

    @Test("the shim binds copies: the addresses the program passes to connect() and bind() are unchanged")
    func memoryUntouched() throws {
        let (server, port) = try peerServer()
        let (source, bound) = (try freePort(), try freePort())
        let result = try capture([systemPython, "-c", Self.memoryProbe, String(port)],
                                 environment: shimmed(["PORTREUSE_SOURCE_PORT": String(source), "PORTREUSE_BIND_PORT": String(bound)]))
        #expect(result.output == "connect 0 0 True \(source)\nbind 0 True \(bound)\n", "\(result.stderr)")
        withExtendedLifetime(server) {}
    }

    @Test("a source that cannot be bound fails the connect with the bind's errno and one line saying why")
    func sourceBindFails() throws {
        let (server, port) = try peerServer()
        let holder = try Listener(tcp: "127.0.0.1:0", policy: .exclusive)
        let result = try capture([systemPython, "-c", Self.memoryProbe, String(port)],
                                 environment: shimmed(["PORTREUSE_SOURCE_ADDR": "127.0.0.1", "PORTREUSE_SOURCE_PORT": String(holder.localAddress.port)]))
        #expect(result.output.hasPrefix("connect -1 \(EADDRINUSE) True "), "\(result.output) \(result.stderr)")
        #expect(result.shimLines.count == 1)
        #expect(result.stderr.contains("connect to 127.0.0.1:\(port) fails: the source 127.0.0.1:\(holder.localAddress.port) could not be bound: Address already in use (EADDRINUSE)"))
        withExtendedLifetime(server) {}
    }

    @Test("bindp's BIND_ADDR and BIND_PORT apply to connect() as well as bind(), without the CLI")
    func bindpVariablesForClients() throws {
        let (server, port) = try peerServer()
        let source = try freePort()
        let client = "import socket, sys; s = socket.create_connection(('127.0.0.1', int(sys.argv[1]))); print(s.getsockname()[1])"
        let result = try capture([systemPython, "-c", client, String(port)], environment: shimmed(["BIND_ADDR": "127.0.0.1", "BIND_PORT": String(source), "REUSE_PORT": "1"]))
        #expect(result.output == "\(source)\n", "\(result.stderr)")
        #expect(server.line() == "peer 127.0.0.1 \(source)")
    }

    @Test("a bad --source is a clear error from the CLI; a bad variable is one line and the client runs unchanged")
    func badSource() throws {
        for (value, words) in [("127.0.0.1:99999", "is not a port"), ("udp:127.0.0.1:5000", "drop the network prefix"), ("[::1", "has no \"]\"")] {
            let result = try capture([portreuse, "run", "--source", value, "--", "/bin/true"])
            #expect(result.status == 64, "--source \(value)")
            #expect(result.stderr.contains("--source <address>"), "\(result.stderr)")
            #expect(result.stderr.contains(words), "--source \(value): \(result.stderr)")
        }

        let (server, port) = try peerServer()
        let client = "import http.client, sys; c = http.client.HTTPConnection('127.0.0.1', int(sys.argv[1])); c.request('GET', '/fixed'); print(c.getresponse().read().decode(), end='')"
        let plain = try capture([systemPython, "-c", client, String(port)], environment: environment())
        for (name, value) in [("PORTREUSE_SOURCE_PORT", "banana"), ("PORTREUSE_SOURCE_ADDR", "nowhere"), ("PORTREUSE_SOURCE_ADDR", "1.2.3")] {
            let result = try capture([systemPython, "-c", client, String(port)], environment: shimmed([name: value]))
            #expect(result.status == 0)
            #expect(result.stdout == plain.stdout)
            #expect(result.errorLines.count == 1, "\(result.stderr)")
            #expect(result.stderr.contains("\(name)=\"\(value)\" is ignored"))
        }
        withExtendedLifetime(server) {}
    }
}
