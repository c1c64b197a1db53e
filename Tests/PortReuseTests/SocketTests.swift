import Glibc
@testable import PortReuse
import TestSupport
import Testing

@Suite("Sockets")
struct SocketTests {
    @Test("a listener reads back its port and serves a connection")
    func listenAndServe() throws {
        let listener = try Listener(tcp: "127.0.0.1:0")
        #expect(listener.localAddress.port != 0)
        #expect(listener.policy == .restartable)
        let client = try Connection.dial(tcp: "127.0.0.1:\(listener.localAddress.port)", timeout: .seconds(5))
        let server = try #require(try listener.accept(timeout: .seconds(5)))
        #expect(server.remoteAddress == client.localAddress)
        try client.send("ping")
        #expect(try server.receive(timeout: .seconds(5)) == Array("ping".utf8))
        try server.send("pong")
        try server.shutdownWrite()
        #expect(try client.receiveAll(timeout: .seconds(5)) == Array("pong".utf8))
    }

    @Test("dial from a port that is also listening: the local port is the shared one")
    func dialFromListeningPort() throws {
        let shared = try Listener(tcp: "127.0.0.1:0", policy: .shared)
        let remote = try Listener(tcp: "127.0.0.1:0")
        let connection = try Connection.dial(
            tcp: "127.0.0.1:\(remote.localAddress.port)", from: "127.0.0.1:\(shared.localAddress.port)", timeout: .seconds(5))
        #expect(connection.localAddress.port == shared.localAddress.port)
        let accepted = try #require(try remote.accept(timeout: .seconds(5)))
        #expect(accepted.remoteAddress.port == shared.localAddress.port)
        // The listener still accepts on its port.
        _ = try Connection.dial(to: shared.localAddress, timeout: .seconds(5))
        #expect(try shared.accept(timeout: .seconds(5)) != nil)
    }

    @Test("dialling the same 4-tuple twice is EADDRNOTAVAIL, and the error says why")
    func fourTupleCollision() throws {
        let shared = try Listener(tcp: "127.0.0.1:0", policy: .shared)
        let remote = try Listener(tcp: "127.0.0.1:0")
        let from = "127.0.0.1:\(shared.localAddress.port)", to = "127.0.0.1:\(remote.localAddress.port)"
        let first = try Connection.dial(tcp: to, from: from, timeout: .seconds(5))
        let error = #expect(throws: PortReuseError.self) { try Connection.dial(tcp: to, from: from, timeout: .seconds(5)) }
        #expect(error?.errno == .addressNotAvailable)
        #expect(error?.diagnosis == .fourTupleTaken(local: first.localAddress, remote: remote.localAddress))
        #expect(error?.description.contains("two connections cannot have the same local and remote address and port") == true)
    }

    @Test("dialling from a port held by a restartable listener names the holder")
    func dialFromUnsharedPort() throws {
        let listener = try Listener(tcp: "127.0.0.1:0", policy: .restartable)
        let remote = try Listener(tcp: "127.0.0.1:0")
        let error = #expect(throws: PortReuseError.self) {
            try Connection.dial(tcp: "127.0.0.1:\(remote.localAddress.port)", from: "127.0.0.1:\(listener.localAddress.port)")
        }
        guard case .portInUse(let report)? = error?.diagnosis, case .holderDidNotShare(certain: let certain) = report.reason else {
            Issue.record("diagnosis: \(String(describing: error?.diagnosis))")
            return
        }
        #expect(certain == isRoot)
        #expect(error?.description.contains("SO_REUSEPORT") == true)
    }

    @Test("a refused connection says nothing listens")
    func refused() throws {
        let port = try freePort()
        let error = #expect(throws: PortReuseError.self) { try Connection.dial(tcp: "127.0.0.1:\(port)", timeout: .seconds(5)) }
        #expect(error?.errno == .connectionRefused)
        #expect(error?.description.contains("nothing listens there") == true)
    }

    @Test("availability: free, held and joinable")
    func availability() throws {
        let port = try freePort()
        #expect(try Address("127.0.0.1:\(port)").availability() == .available)
        let holder = try Listener(tcp: "127.0.0.1:\(port)", policy: .restartable)
        guard case .inUse(let report) = try Address("127.0.0.1:\(port)").availability(.restartable) else {
            Issue.record("a held port is available")
            return
        }
        #expect(report.holders.first?.state == .listen)
        if case .inUse = try Address("127.0.0.1:\(port)").availability(.shared) {} else { Issue.record("shared may not join a restartable listener") }
        holder.close()
        let shared = try Listener(tcp: "127.0.0.1:\(port)", policy: .shared)
        #expect(try Address("127.0.0.1:\(port)").availability(.shared) == .available)
        shared.close()
    }

    @Test("UDP availability reads the holders' options instead of probing", .needsRoot("reading another process's socket options takes ptrace rights"))
    func udpAvailability() throws {
        let holder = try DatagramSocket(udp: "127.0.0.1:0", policy: .shared)
        let address = try Address("udp:127.0.0.1:\(holder.localAddress.port)")
        #expect(try address.availability(.shared) == .available)
        let exclusive = try DatagramSocket(udp: "127.0.0.1:0", policy: .exclusive)
        if case .inUse = try Address("udp:127.0.0.1:\(exclusive.localAddress.port)").availability(.shared) {} else {
            Issue.record("shared may not join an exclusive UDP socket")
        }
    }

    @Test("IPv6: IPv6-only by default, dual-stack when asked")
    func ipv6() throws {
        let only = try Listener(tcp: "[::1]:0")
        #expect(try only.handle.isDualStack() == false)
        let dual = try Listener(tcp: "[::]:0", dualStack: true)
        #expect(try dual.handle.isDualStack())
        _ = try Connection.dial(tcp: "127.0.0.1:\(dual.localAddress.port)", timeout: .seconds(5))
        let accepted = try #require(try dual.accept(timeout: .seconds(5)))
        #expect(accepted.remoteAddress.ip.unmappedIPv4 == .loopbackIPv4)
        let error = #expect(throws: PortReuseError.self) { try Listener(tcp: "127.0.0.1:0", dualStack: true) }
        #expect(error?.diagnosis == .dualStackNeedsIPv6)
        let udp = try DatagramSocket(udp: "udp6:[::1]:0", policy: .shared)
        #expect(udp.localAddress.family == .ipv6)
    }

    @Test("an address that is not on this machine says so")
    func notLocal() {
        let error = #expect(throws: PortReuseError.self) { try Listener(tcp: "192.0.2.1:0") }
        #expect(error?.errno == .addressNotAvailable)
        #expect(error?.diagnosis == .addressNotLocal(IPAddress("192.0.2.1")!))
        #expect(error?.description.contains("not an address of this machine") == true)
    }

    @Test("binding a privileged port without privilege says how to get it", .needsRoot("needs root to start a process as user nobody"))
    func privilegedPort() throws {
        // The kernel's answer, as user nobody:
        let child = try Child(python: """
            import socket, signal
            signal.alarm(10)
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", 1))
                print("bound", flush=True)
            except PermissionError as e:
                print(e.errno, flush=True)
            """, asNobody: true)
        #expect(child.line() == "\(EACCES)")
        // and PortReuse's reading of it.
        let error = PortReuseError(.bind, address: "tcp:127.0.0.1:1", errno: .permissionDenied)
        let diagnosed = error.diagnosingBind(SocketAddress(ip: .loopbackIPv4, port: 1), transport: .tcp, policy: .restartable)
        #expect(diagnosed.description.contains("only privileged processes may bind such ports"))
        #expect(diagnosed.description.contains("CAP_NET_BIND_SERVICE"))
    }

    @Test("adopting descriptors: a listener is adopted, anything else is refused and left open")
    func adopt() throws {
        let original = try Listener(tcp: "127.0.0.1:0")
        let fd = try #require(original.takeDescriptor())
        #expect(original.descriptor == nil)
        let adopted = try Listener(adopting: fd)
        #expect(adopted.localAddress == original.localAddress)
        #expect(adopted.policy == nil)

        var pipeEnds: [Int32] = [0, 0]
        #expect(pipe(&pipeEnds) == 0)
        defer { close(pipeEnds[0]); close(pipeEnds[1]) }
        let notSocket = #expect(throws: PortReuseError.self) { try Listener(adopting: pipeEnds[0]) }
        #expect(notSocket?.description.contains("descriptor \(pipeEnds[0]) is not a socket") == true)
        #expect(fcntl(pipeEnds[0], F_GETFD) >= 0)

        let udp = try DatagramSocket(udp: "127.0.0.1:0")
        let udpFD = try #require(udp.descriptor)
        let wrong = #expect(throws: PortReuseError.self) { try Listener(adopting: udpFD) }
        #expect(wrong?.description.contains("is a UDP socket, not a TCP one") == true)
        #expect(try DatagramSocket(adopting: try #require(udp.takeDescriptor())).localAddress == udp.localAddress)
    }

    @Test("a socket closes exactly once; a taken descriptor stays open")
    func closeOnce() throws {
        let listener = try Listener(tcp: "127.0.0.1:0")
        listener.close()
        listener.close()
        #expect(listener.descriptor == nil)
        #expect(listener.takeDescriptor() == nil)
        let error = #expect(throws: PortReuseError.self) { try listener.accept() }
        #expect(error?.errno == .badFileDescriptor)

        let kept: Int32
        do {
            let other = try Listener(tcp: "127.0.0.1:0")
            kept = try #require(other.takeDescriptor())
        }
        #expect(fcntl(kept, F_GETFD) >= 0)
        close(kept)
    }

    @Test("the kernel's tables name our own listener, its process and its options")
    func holders() throws {
        let listener = try Listener(tcp: "127.0.0.1:0", policy: .shared)
        let holders = PortHolder.find(port: listener.localAddress.port, transport: .tcp)
        let mine = try #require(holders.first { $0.state == .listen })
        #expect(mine.localAddress == listener.localAddress)
        #expect(mine.uid == geteuid())
        let process = try #require(mine.processes.first)
        #expect(process.pid == getpid())
        #expect(process.descriptor == listener.descriptor)
        #expect(mine.options == [.reuseAddress, .reusePort])
        #expect(mine.ownerDescription.contains("pid \(getpid())"))
    }
}

@Suite("Errors")
struct ErrorTests {
    @Test("getpeername on a socket that is not connected fails as getpeername, not getsockname")
    func remoteAddressNamesItsCall() throws {
        let listener = try Listener(tcp: "127.0.0.1:0")
        let handle = SocketHandle(adopting: try #require(listener.takeDescriptor()))
        do {
            _ = try handle.remoteAddress()
            Issue.record("a listening socket has no peer")
        } catch {
            #expect(error.operation == .remoteAddress)
            #expect(error.errno == .socketNotConnected)
            #expect(error.description.hasPrefix("getpeername"), "\(error)")
        }
    }

    @Test("EADDRINUSE: who holds the port is found when the error is first read, not at every failed bind")
    func portInUseDiagnosisIsDeferred() throws {
        let holder = try Listener(tcp: "127.0.0.1:0", policy: .exclusive)
        let address = holder.localAddress
        var caught: PortReuseError?
        do { _ = try Listener(address: address, policy: .restartable) } catch { caught = error }
        let error = try #require(caught)
        #expect(error.errno == .addressInUse)
        // The holder goes away before anybody reads the diagnosis: it describes the port as it is then.
        holder.close()
        guard case .portInUse(let report)? = error.diagnosis else { Issue.record("no diagnosis: \(error)"); return }
        #expect(report.reason == .noVisibleHolder, "\(report.reason)")
        let copy = error
        #expect(copy.description == error.description, "copies share the one diagnosis")
    }

    @Test("EADDRINUSE read at once names this process as the holder")
    func portInUseDiagnosisNamesHolder() throws {
        let holder = try Listener(tcp: "127.0.0.1:0", policy: .exclusive)
        do {
            _ = try Listener(address: holder.localAddress, policy: .restartable)
            Issue.record("the port is held")
        } catch {
            guard case .portInUse(let report)? = error.diagnosis else { Issue.record("no diagnosis: \(error)"); return }
            #expect(report.reason == .policyDoesNotShare(.restartable))
            #expect(report.holders.first?.processes.contains { $0.pid == getpid() } == true, "\(report.holders)")
        }
    }
}
