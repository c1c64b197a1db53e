import Glibc
@testable import PortReuse
import TestSupport
import Testing

/// Every datagram that arrives within `timeout` of the last one, as text.
private func drain(_ receiver: GroupReceiver, timeout: Duration = .milliseconds(300)) throws -> [String] {
    var texts: [String] = []
    for _ in 0..<100 {
        guard let (bytes, _) = try receiver.receive(timeout: timeout) else { break }
        texts.append(String(decoding: bytes, as: UTF8.self))
    }
    return texts
}

/// A socket that sends from the namespace's d0 (made inside the namespace).
private func sender(_ family: AddressFamily) throws -> DatagramSocket {
    try DatagramSocket(address: SocketAddress(ip: family == .ipv4 ? .anyIPv4 : .anyIPv6, port: 0), policy: .exclusive)
}

private let group4 = "239.1.2.3"
private let group6 = "ff15::1234"

@Suite("Multicast and broadcast receivers, in a network namespace of their own")
struct MulticastTests {
    @Test(
        "several receivers on one group and port each get every datagram; one that leaves stops, and gets them again after join",
        .needsRoot("a network namespace of its own (unshare -n)"), arguments: AddressFamily.allCases)
    func leave(family: AddressFamily) throws {
        let namespace = try NetworkNamespace()
        let port = UInt16.random(in: 20_000...40_000)  // the namespace is empty: any port is free
        let groupText = family == .ipv4 ? "\(group4):\(port)" : "[\(group6)]:\(port)"
        let counts = try namespace.run { () throws -> [[String]] in
            let receivers = try (0..<3).map { _ in try GroupReceiver(groupText) }
            for receiver in receivers {
                #expect(receiver.kind == .multicast)
                #expect(receiver.interface?.name == "d0")
                #expect(receiver.interfaceReason.contains("route"))
                #expect(receiver.localAddress == receiver.group, "receivers bind the group address itself")
                #expect(try receiver.reuseOptions() == [.reusePort])
            }
            let socket = try sender(family)
            for index in 0..<3 { try socket.send(Array("first \(index)".utf8), to: receivers[0].group) }
            var seen = try receivers.map { try drain($0) }
            try receivers[0].leave()
            #expect(!receivers[0].isMember)
            for index in 0..<3 { try socket.send(Array("second \(index)".utf8), to: receivers[0].group) }
            seen += try receivers.map { try drain($0) }
            try receivers[0].join()
            try socket.send(Array("third".utf8), to: receivers[0].group)
            seen += try receivers.map { try drain($0) }
            return seen
        }
        let first = ["first 0", "first 1", "first 2"], second = ["second 0", "second 1", "second 2"]
        #expect(counts[0...2].allSatisfy { $0 == first })
        #expect(counts[3] == [], "a receiver that left gets none of the group's datagrams")
        #expect(counts[4] == second && counts[5] == second)
        #expect(counts[6...8].allSatisfy { $0 == ["third"] })
    }

    @Test(
        "a unicast datagram to the port reaches only the socket bound to that address, never the group's receivers",
        .needsRoot("a network namespace of its own (unshare -n)"), arguments: AddressFamily.allCases)
    func unicastNotDuplicated(family: AddressFamily) throws {
        let namespace = try NetworkNamespace()
        let port = UInt16.random(in: 20_000...40_000)
        let groupText = family == .ipv4 ? "\(group4):\(port)" : "[\(group6)]:\(port)"
        let local = SocketAddress(ip: IPAddress(family == .ipv4 ? NetworkNamespace.address : NetworkNamespace.address6)!, port: port)
        let (group, reached) = try namespace.run { () throws -> ([[String]], [String]) in
            let receivers = try (0..<3).map { _ in try GroupReceiver(groupText) }
            let socket = try sender(family)
            // Nothing bound to the unicast address yet: nobody gets it (the kernel answers port unreachable).
            try socket.send(Array("nobody".utf8), to: local)
            let plain = try DatagramSocket(address: local, policy: .exclusive)
            try socket.send(Array("unicast".utf8), to: local)
            try socket.send(Array("group".utf8), to: receivers[0].group)
            var reached: [String] = []
            while let (bytes, _) = try plain.receive(timeout: .milliseconds(300)) { reached.append(String(decoding: bytes, as: UTF8.self)) }
            return (try receivers.map { try drain($0) }, reached)
        }
        #expect(group.allSatisfy { $0 == ["group"] }, "each receiver gets the group's datagram and nothing else")
        #expect(reached == ["unicast"], "the unicast datagram arrives once, at its own address")
    }

    @Test("broadcast receivers on one port each get every broadcast, and no unicast datagram", .needsRoot("a network namespace of its own (unshare -n)"))
    func broadcast() throws {
        let namespace = try NetworkNamespace()
        let port = UInt16.random(in: 20_000...40_000)
        let seen = try namespace.run { () throws -> [[String]] in
            let receivers = try (0..<3).map { _ in try GroupReceiver("udp://\(NetworkNamespace.broadcast):\(port)") }
            #expect(receivers.allSatisfy { $0.kind == .broadcast && $0.interface?.name == "d0" })
            let socket = try sender(.ipv4)
            let target = SocketAddress(ip: IPAddress(NetworkNamespace.broadcast)!, port: port)
            #expect(throws: PortReuseError.self, "sending to a broadcast address needs SO_BROADCAST") {
                try socket.send(Array("refused".utf8), to: target)
            }
            try socket.setBroadcast(true)
            for index in 0..<3 { try socket.send(Array("hello \(index)".utf8), to: target) }
            try socket.send(Array("unicast".utf8), to: SocketAddress(ip: IPAddress(NetworkNamespace.address)!, port: port))
            return try receivers.map { try drain($0) }
        }
        #expect(seen.allSatisfy { $0 == ["hello 0", "hello 1", "hello 2"] })
    }

    @Test(
        "policy shared (SO_REUSEPORT) refuses a receiver that sets only SO_REUSEADDR; unsafe-any-user joins it",
        .needsRoot("a network namespace of its own (unshare -n)"))
    func reuseAddressReceivers() throws {
        let namespace = try NetworkNamespace()
        let port = UInt16.random(in: 20_000...40_000)
        let (shared, unsafe) = try namespace.run { () throws -> (Bool, [String]) in
            var refused = false
            // What most multicast programs do: SO_REUSEADDR alone, on the group address.
            let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
            defer { close(fd) }
            var one: Int32 = 1
            setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, 4)
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_port = port.bigEndian
            address.sin_addr.s_addr = UInt32(0xEF01_0203).bigEndian
            let bound = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            #expect(bound == 0)
            do {
                _ = try GroupReceiver("\(group4):\(port)")
            } catch {
                refused = (error as? PortReuseError)?.errno == .addressInUse
            }
            let receiver = try GroupReceiver("\(group4):\(port)", policy: .unsafeAnyUser)
            #expect(try receiver.reuseOptions() == [.reuseAddress, .reusePort])
            try sender(.ipv4).send(Array("both".utf8), to: receiver.group)
            return (refused, try drain(receiver))
        }
        #expect(shared, "EADDRINUSE beside a socket with SO_REUSEADDR alone")
        #expect(unsafe == ["both"])
    }

    @Test("bad group addresses and unknown interfaces are clear errors")
    func errors() throws {
        func diagnosis(_ body: () throws -> Void) -> Diagnosis? {
            do {
                try body()
                return nil
            } catch {
                return (error as? PortReuseError)?.diagnosis
            }
        }
        let unicast = diagnosis { _ = try GroupReceiver("10.1.2.3:5000") }
        guard case .notGroupAddress(let ip, let known)? = unicast else {
            Issue.record("expected notGroupAddress, got \(String(describing: unicast))")
            return
        }
        #expect(ip == IPAddress("10.1.2.3"))
        #expect(!known.contains(IPAddress("10.1.2.3")!))
        #expect(unicast!.sentence.contains("239.255.255.255") && unicast!.sentence.contains("255.255.255.255"))

        #expect(diagnosis { _ = try GroupReceiver("[fd00::1]:5000") } == .notMulticastGroup(IPAddress("fd00::1")!))
        #expect(diagnosis { _ = try GroupReceiver(multicast: SocketAddress(ip: .loopbackIPv4, port: 5000)) } == .notMulticastGroup(.loopbackIPv4))
        let loopbackBroadcast = diagnosis { _ = try GroupReceiver(broadcast: SocketAddress(ip: .loopbackIPv4, port: 5000)) }
        if case .notBroadcastAddress(let ip, _)? = loopbackBroadcast { #expect(ip == .loopbackIPv4) } else { Issue.record("\(String(describing: loopbackBroadcast))") }

        let unknown = diagnosis { _ = try GroupReceiver("239.1.2.3:5000", interface: "nosuch0") }
        guard case .unknownInterface(let given, let names)? = unknown else {
            Issue.record("expected unknownInterface, got \(String(describing: unknown))")
            return
        }
        #expect(given == "nosuch0")
        #expect(names.contains("lo"))
        #expect(unknown!.sentence.contains("nosuch0") && unknown!.sentence.contains("lo"))

        if case .invalidAddress? = diagnosis({ _ = try GroupReceiver("udp://:5000") }) {} else { Issue.record("a group without an address") }
        if case .invalidAddress? = diagnosis({ _ = try GroupReceiver("239.1.2.300:5000") }) {} else { Issue.record("a malformed group") }
        if case .wrongTransport? = diagnosis({ _ = try GroupReceiver("tcp://239.1.2.3:5000") }) {} else { Issue.record("a TCP group") }
        #expect(throws: PortReuseError.self) { _ = try GroupReceiver("255.255.255.255:5000", interface: "lo") }
    }

    @Test("interfaces: loopback is listed with its address, found by name, index and address")
    func interfaces() throws {
        let all = try NetworkInterface.all()
        let loopback = try #require(all.first { $0.isLoopback })
        #expect(loopback.addresses.contains(.loopbackIPv4))
        #expect(try NetworkInterface.find(loopback.name) == loopback)
        #expect(try NetworkInterface.find(String(loopback.index)) == loopback)
        #expect(try NetworkInterface.find("127.0.0.1") == loopback)
        #expect(IPAddress.broadcastIPv4.isBroadcast(among: []))
        #expect(!IPAddress.loopbackIPv4.isBroadcast(among: all))
    }
}

@Suite("Who on group-bound sockets, as data")
struct GroupSharingTests {
    private func holder(_ address: String, options: ReuseOptions, inode: UInt64, pid: Int32) -> PortHolder {
        let process = PortHolder.Process(pid: pid, descriptor: 3, name: "receiver", commandLine: ["receiver"], uid: 1000, user: nil)
        return PortHolder(
            transport: .udp, localAddress: SocketAddress(ip: IPAddress(address)!, port: 5000), remoteAddress: nil, state: .unconnected,
            uid: 1000, user: nil, inode: inode, receiveQueue: 0, processes: [process], options: options)
    }

    @Test("receivers bound to a group with SO_REUSEPORT: shared, each gets every datagram, not hijackable")
    func reusePortGroup() {
        let group = (1...3).map { holder("239.1.2.3", options: [.reusePort], inode: UInt64($0), pid: Int32(100 + $0)) }
        let sharing = SocketSharing.of(group[0], among: group, table: .linux, ownUID: 0)
        #expect(sharing.groupKind == .multicast)
        #expect(sharing.sameUserMayJoin == true && sharing.otherUsersMayJoin == false)
        #expect(!sharing.hijackable)
        #expect(sharing.verdict.contains("multicast group 239.1.2.3, shared by 3 processes"), "\(sharing.verdict)")
        #expect(sharing.verdict.contains("each gets every datagram"))
    }

    @Test("SO_REUSEADDR: hijackable on the wildcard address, not on a group address, where a newcomer only gets copies")
    func reuseAddress() {
        let onGroup = [holder("239.1.2.3", options: [.reuseAddress], inode: 1, pid: 101)]
        let groupSharing = SocketSharing.of(onGroup[0], among: onGroup, table: .linux, ownUID: 0)
        #expect(groupSharing.otherUsersMayJoin == true)
        #expect(!groupSharing.hijackable)
        #expect(groupSharing.verdict.contains("takes none from it"), "\(groupSharing.verdict)")

        let onWildcard = [holder("0.0.0.0", options: [.reuseAddress], inode: 2, pid: 102)]
        let wildcardSharing = SocketSharing.of(onWildcard[0], among: onWildcard, table: .linux, ownUID: 0)
        #expect(wildcardSharing.groupKind == nil)
        #expect(wildcardSharing.hijackable)
    }
}
