import Glibc
import PortReuse
import TestSupport
import Testing

/// The Linux rows of DESIGN.md's platform table, pinned against this kernel.
@Suite("Linux platform facts")
struct LinuxFactsTests {
    /// Runs `body` in a network namespace of its own when root: its port space and TIME-WAIT table are empty, so
    /// no parallel test's outgoing connection takes the freed port between the close and the rebind (one full
    /// run here saw EADDRINUSE there). As another user, here.
    static func apart(_ body: @escaping @Sendable () throws -> Void) throws {
        if isRoot { try NetworkNamespace().run(body) } else { try body() }
    }

    @Test("TIME-WAIT: rebinding fails without SO_REUSEADDR and succeeds with restartable")
    func timeWaitRebind() throws {
        try Self.apart {
            let restartable = try Listener(tcp: "127.0.0.1:0", policy: .restartable)
            let port = restartable.localAddress.port
            try leaveTimeWait(on: restartable)
            restartable.close()
            #expect(PortHolder.find(port: port, transport: .tcp).contains { $0.state == .timeWait })

            let error = #expect(throws: PortReuseError.self) { try Listener(tcp: "127.0.0.1:\(port)", policy: .exclusive) }
            #expect(error?.errno == .addressInUse)
            guard case .portInUse(let report)? = error?.diagnosis, case .timeWait(_, reuseAddressSet: false) = report.reason else {
                Issue.record("diagnosis: \(String(describing: error?.diagnosis))")
                return
            }
            #expect(try Listener(tcp: "127.0.0.1:\(port)", policy: .restartable).localAddress.port == port)
        }
    }

    @Test("TIME-WAIT keeps the old socket's options: a new SO_REUSEADDR socket cannot rebind over an old one without it")
    func timeWaitKeepsOldOptions() throws {
        try Self.apart {
            let exclusive = try Listener(tcp: "127.0.0.1:0", policy: .exclusive)
            let port = exclusive.localAddress.port
            try leaveTimeWait(on: exclusive)
            exclusive.close()
            let error = #expect(throws: PortReuseError.self) { try Listener(tcp: "127.0.0.1:\(port)", policy: .restartable) }
            guard case .portInUse(let report)? = error?.diagnosis, case .timeWait(_, reuseAddressSet: true) = report.reason else {
                Issue.record("diagnosis: \(String(describing: error?.diagnosis))")
                return
            }
            #expect(error!.description.contains("did not set SO_REUSEADDR"))
        }
    }

    @Test("TIME-WAIT: SO_REUSEPORT on both rebinds; SO_REUSEADDR alone over an old SO_REUSEPORT-only socket fails")
    func timeWaitReusePort() throws {
        try Self.apart {
            let probe = try freePort()
            let (fd, code) = rawListener(port: probe, reuseAddress: false, reusePort: true)
            try #require(code == 0)
            let listener = try Listener(adopting: fd)
            let port = listener.localAddress.port
            try leaveTimeWait(on: listener)
            listener.close()
            #expect(rawListener(port: port, reuseAddress: true, reusePort: false).1 == EADDRINUSE)
            let (again, againCode) = rawListener(port: port, reuseAddress: false, reusePort: true)
            #expect(againCode == 0)
            close(again)
        }
    }

    @Test("two live listeners: restartable refuses the second, shared lets both accept")
    func twoListeners() throws {
        let first = try Listener(tcp: "127.0.0.1:0", policy: .restartable)
        let port = first.localAddress.port
        let error = #expect(throws: PortReuseError.self) { try Listener(tcp: "127.0.0.1:\(port)", policy: .restartable) }
        guard case .portInUse(let report)? = error?.diagnosis, case .policyDoesNotShare(.restartable) = report.reason else {
            Issue.record("diagnosis: \(String(describing: error?.diagnosis))")
            return
        }
        #expect(report.holders.first?.processes.contains { $0.pid == getpid() } == true)
        #expect(error!.description.contains("give both sockets policy shared"))

        let a = try Listener(tcp: "127.0.0.1:0", policy: .shared)
        let b = try Listener(tcp: "127.0.0.1:\(a.localAddress.port)", policy: .shared)
        let counts = try acceptCounts([a, b], connections: 64)
        #expect(counts.reduce(0, +) == 64)
        #expect(counts.allSatisfy { $0 > 0 }, "connections per listener: \(counts)")
    }

    @Test("SO_REUSEADDR alone never lets two TCP sockets listen: the check is redone at listen()")
    func reuseAddressListenCheck() throws {
        let port = try freePort()
        let (first, firstCode) = rawListener(port: port, reuseAddress: true, reusePort: false)
        try #require(firstCode == 0)
        defer { close(first) }
        #expect(rawListener(port: port, reuseAddress: true, reusePort: false).1 == EADDRINUSE)
    }

    @Test("shared across two users is refused", .needsRoot("needs root to start a socket as user nobody"))
    func sharedAcrossUsers() throws {
        let nobody = try Child(python: pythonHolder(kind: "STREAM", reuseAddress: true, reusePort: true), asNobody: true)
        let port = try nobody.port()
        let error = #expect(throws: PortReuseError.self) { try Listener(tcp: "127.0.0.1:\(port)", policy: .shared) }
        guard case .portInUse(let report)? = error?.diagnosis, case .otherUser(uid: 65534, _) = report.reason else {
            Issue.record("diagnosis: \(String(describing: error?.diagnosis))")
            return
        }
        #expect(error!.description.contains("only among sockets of the same user"))
        #expect(error!.description.contains("python3"))
    }

    @Test("0.0.0.0:P beside 127.0.0.1:P: both listen with shared, and 127.0.0.1 goes to the specific one")
    func wildcardBesideSpecific() throws {
        let wildcard = try Listener(tcp: "0.0.0.0:0", policy: .shared)
        let port = wildcard.localAddress.port
        let specific = try Listener(tcp: "127.0.0.1:\(port)", policy: .shared)
        let counts = try acceptCounts([wildcard, specific], connections: 16)
        #expect(counts == [0, 16])
        #expect(throws: PortReuseError.self) { try Listener(tcp: "127.0.0.1:\(port)", policy: .restartable) }
    }

    @Test("127.0.0.1:P and 127.0.0.2:P need no options")
    func differentSpecificAddresses() throws {
        let one = try Listener(tcp: "127.0.0.1:0", policy: .exclusive)
        let two = try Listener(tcp: "127.0.0.2:\(one.localAddress.port)", policy: .exclusive)
        #expect(two.localAddress.port == one.localAddress.port)
    }

    @Test("UDP shared sets SO_REUSEPORT without SO_REUSEADDR and delivers to both sockets")
    func udpShared() throws {
        let a = try DatagramSocket(udp: "127.0.0.1:0", policy: .shared)
        let b = try DatagramSocket(udp: "127.0.0.1:\(a.localAddress.port)", policy: .shared)
        #expect(try a.reuseOptions() == [.reusePort])
        #expect(try b.reuseOptions() == [.reusePort])
        // The kernel hashes the 4-tuple: datagrams from 64 source ports land on both sockets.
        for index in 0..<64 {
            let sender = try DatagramSocket(udp: "127.0.0.1:0")
            try sender.send([UInt8(index)], to: a.localAddress)
        }
        let counts = [a, b].map { socket in
            var count = 0
            while (try? socket.receive(timeout: .milliseconds(200))) != nil { count += 1 }
            return count
        }
        #expect(counts.reduce(0, +) == 64)
        #expect(counts.allSatisfy { $0 > 0 }, "datagrams per socket: \(counts)")
    }

    @Test("UDP SO_REUSEADDR has no uid check: user nobody takes every datagram", .needsRoot("needs root to start a socket as user nobody"))
    func udpReuseAddressHijack() throws {
        let victim = try DatagramSocket(udp: "127.0.0.1:0", policy: .unsafeAnyUser)
        let port = victim.localAddress.port
        let thief = try Child(python: """
            import socket, signal, sys
            signal.alarm(30)
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", \(port)))
            s.settimeout(2)
            print("bound", flush=True)
            got = 0
            try:
                while True:
                    s.recv(100); got += 1
            except socket.timeout:
                pass
            print(got, flush=True)
            """, asNobody: true)
        #expect(thief.line() == "bound")
        let sender = try DatagramSocket(udp: "127.0.0.1:0")
        for index in 0..<20 { try sender.send([UInt8(index)], to: victim.localAddress) }
        #expect(thief.line(timeout: 10) == "20")
        #expect(try victim.receive(timeout: .milliseconds(100)) == nil)
    }

    @Test("UDP shared is refused to another user: the hijack above needs SO_REUSEADDR", .needsRoot("needs root to start a socket as user nobody"))
    func udpSharedRefusesOtherUser() throws {
        let nobody = try Child(python: pythonHolder(kind: "DGRAM", reusePort: true), asNobody: true)
        let port = try nobody.port()
        let error = #expect(throws: PortReuseError.self) { try DatagramSocket(udp: "127.0.0.1:\(port)", policy: .shared) }
        #expect(error?.errno == .addressInUse)
    }

    /// Connects `connections` times to the first listener's port and counts what each listener accepts.
    func acceptCounts(_ listeners: [Listener], connections: Int) throws -> [Int] {
        let target = SocketAddress(ip: .loopbackIPv4, port: listeners[0].localAddress.port)
        var clients: [Connection] = []
        for _ in 0..<connections { clients.append(try Connection.dial(to: target, policy: .exclusive, timeout: .seconds(5))) }
        return try listeners.map { listener in
            var count = 0
            while try listener.accept(timeout: .milliseconds(100)) != nil { count += 1 }
            return count
        }
    }
}

/// The bind bucket remembers its first SO_REUSEPORT socket (issue 16, item 2; measured on Linux 6.18).
///
/// net/ipv4/inet_connection_sock.c: inet_csk_update_fastreuse() records in the port's bind bucket the uid and
/// address of the SO_REUSEPORT socket that joined it (tb->fastuid, tb->fast_v6_rcv_saddr, tb->fast_ipv6_only),
/// and inet_csk_get_port() skips inet_csk_bind_conflict() when sk_reuseport_match() finds the new socket
/// alike. Another user's socket keeps the bucket alive after that first socket closed, so the cache outlives it:
/// a user who binds [::]:P IPv6-only with SO_REUSEPORT (no conflict with an IPv4 0.0.0.0:P) and closes it may
/// then bind [::]:P dual-stack, which the conflict check alone refuses.
@Suite("Linux platform facts: the bind bucket")
struct BindBucketFactsTests {
    /// As user nobody: binds [::]:PORT with SO_REUSEPORT, first IPv6-only then closed when `prime`, then
    /// dual-stack, and says what the kernel answered for each ("OK" or the errno).
    static let attacker = """
        import socket, sys
        port, prime = int(sys.argv[1]), sys.argv[2] == "prime"
        def v6(only):
            s = socket.socket(socket.AF_INET6); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1 if only else 0)
            s.bind(("::", port)); s.listen(); return s
        answers = []
        for only in ([True, False] if prime else [False]):
            try:
                s = v6(only); answers.append("OK")
                if only: s.close()
            except OSError as e: answers.append(str(e.errno))
        print(" ".join(answers))
        """

    static func attack(port: UInt16, prime: Bool) throws -> String {
        let run = try capture(
            ["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", systemPython, "-c", attacker, "\(port)", prime ? "prime" : "direct"])
        return run.output.split(separator: "\n").first.map(String.init) ?? ""
    }

    @Test("another user's dual-stack [::]:P beside root's 0.0.0.0:P: refused, but accepted once an IPv6-only SO_REUSEPORT socket of theirs bound and closed",
          .needsRoot("a socket of user nobody beside one of root"))
    func primedBucket() throws {
        let root = try Listener(tcp: "0.0.0.0:0", policy: .restartable)
        let port = root.localAddress.port
        #expect(try Self.attack(port: port, prime: false) == "98", "EADDRINUSE without the first step")
        #expect(try Self.attack(port: port, prime: true) == "OK OK", "the kernel's bucket cache lets the dual-stack bind in")
    }

    @Test("a dual-stack [::]:P held by root keeps both halves: neither step works for another user",
          .needsRoot("a socket of user nobody beside one of root"))
    func dualStackHolds() throws {
        let root = try Listener(tcp: "[::]:0", policy: .restartable, dualStack: true)
        let port = root.localAddress.port
        #expect(try Self.attack(port: port, prime: true) == "98 98")
    }
}
