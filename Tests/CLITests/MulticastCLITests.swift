import Foundation
import Glibc
import PortReuse
import TestSupport
import Testing


@Suite("portreuse listen and send, in a network namespace of their own")
struct MulticastCLITests {
    @Test(
        "three listeners in separate processes on one group and port each print every datagram sent, and no unicast one",
        .needsRoot("a network namespace of its own (unshare -n)"), arguments: AddressFamily.allCases)
    func threeReceivers(family: AddressFamily) throws {
        let namespace = try NetworkNamespace()
        let port = UInt16.random(in: 20_000...40_000)
        let group = family == .ipv4 ? "udp://239.1.2.3:\(port)" : "udp://[ff15::1234]:\(port)"
        let unicast = family == .ipv4 ? "udp://\(NetworkNamespace.address):\(port)" : "udp://[\(NetworkNamespace.address6)]:\(port)"
        let listeners = try (0..<3).map { _ in
            try Child(namespace.command([portreuse, "listen", group, "--count", "6", "--timeout", "20"]))
        }
        for listener in listeners {
            let banner = try #require(listener.line())
            #expect(banner.hasPrefix("listening on multicast group"), "\(banner)")
            #expect(banner.contains("joined on d0"), "the default interface is chosen and reported: \(banner)")
            #expect(banner.contains("SO_REUSEPORT"))
        }
        let sent = try run(namespace.command([portreuse, "send", group, "hello", "group", "--count", "5"]))
        #expect(sent.status == 0)
        #expect(sent.output.components(separatedBy: "\n").count == 5)
        #expect(sent.output.contains("multicast on d0"))
        // Unicast to the port: no listener is bound to that address, so none gets it.
        #expect(try run(namespace.command([portreuse, "send", unicast, "unicast"])).status == 0)
        #expect(try run(namespace.command([portreuse, "send", group, "end"])).status == 0)
        for listener in listeners {
            var texts: [String] = []
            while texts.count < 6, let line = listener.line(timeout: 10) { texts.append(line) }
            #expect(texts.count == 6)
            #expect(texts.prefix(5).allSatisfy { $0.hasSuffix("(11 bytes): hello group") }, "\(texts)")
            #expect(texts.last?.hasSuffix("(3 bytes): end") == true, "the unicast datagram never reached a group listener: \(texts)")
            #expect(listener.waitForExit() == 0, "--count 6 reached")
        }
    }

    @Test("who reports duplicate-bound group receivers: each gets every datagram; SO_REUSEADDR there is not a hijack", .needsRoot("a network namespace of its own (unshare -n)"))
    func who() throws {
        let namespace = try NetworkNamespace()
        let port = UInt16.random(in: 20_000...40_000)
        let shared = try (0..<2).map { _ in try Child(namespace.command([portreuse, "listen", "udp://239.1.2.3:\(port)", "--timeout", "20", "--json"])) }
        for listener in shared { _ = try #require(listener.line()) }
        let report = try run(namespace.command([portreuse, "who", "udp:\(port)", "--json"]))
        #expect(report.status == 0)
        let document = try #require(try JSONSerialization.jsonObject(with: Data(report.output.utf8)) as? [String: Any])
        let ports = try #require(document["ports"] as? [[String: Any]])
        let sockets = try #require(ports.first?["sockets"] as? [[String: Any]])
        #expect(sockets.count == 2)
        for socket in sockets {
            let sharing = try #require(socket["sharing"] as? [String: Any])
            #expect(socket["address"] as? String == "239.1.2.3:\(port)")
            #expect(sharing["group"] as? String == "multicast")
            #expect(sharing["hijackable"] as? Bool == false)
            #expect(sharing["otherUsersMayJoin"] as? Bool == false)
            #expect((sharing["verdict"] as? String)?.contains("each gets every datagram sent to 239.1.2.3") == true, "\(sharing)")
        }

        // Receivers that set SO_REUSEADDR (policy unsafe-any-user) on another port: any user may join, yet takes nothing.
        let open = try Child(namespace.command([portreuse, "listen", "udp://239.1.2.3:\(port + 1)", "--policy", "unsafe-any-user", "--timeout", "20"]))
        #expect(try #require(open.line()).contains("SO_REUSEADDR+SO_REUSEPORT"))
        let text = try run(namespace.command([portreuse, "who", "udp:\(port + 1)"]))
        #expect(text.output.contains("multicast group 239.1.2.3, one receiver"), "\(text.output)")
        #expect(text.output.contains("takes none from it"))
        #expect(text.output.contains("of another user: yes"))

        // Broadcast receivers: the same story on a subnet's broadcast address.
        let broadcast = try (0..<2).map { _ in
            try Child(namespace.command([portreuse, "listen", "udp://\(NetworkNamespace.broadcast):\(port + 2)", "--timeout", "20"]))
        }
        for listener in broadcast { #expect(try #require(listener.line()).hasPrefix("listening on broadcast address")) }
        let broadcastReport = try run(namespace.command([portreuse, "who", "udp:\(port + 2)", "--json"]))
        let broadcastDocument = try #require(try JSONSerialization.jsonObject(with: Data(broadcastReport.output.utf8)) as? [String: Any])
        let broadcastSockets = try #require((broadcastDocument["ports"] as? [[String: Any]])?.first?["sockets"] as? [[String: Any]])
        #expect(broadcastSockets.count == 2)
        for socket in broadcastSockets {
            let sharing = try #require(socket["sharing"] as? [String: Any])
            #expect(sharing["group"] as? String == "broadcast")
            #expect((sharing["verdict"] as? String)?.hasPrefix("broadcast address \(NetworkNamespace.broadcast), shared by 2 processes") == true, "\(sharing)")
        }
    }

    @Test("bad groups, unknown interfaces and bad options are clear errors with status 64")
    func errors() throws {
        let cases: [([String], String)] = [
            (["listen", "udp://10.1.2.3:5000"], "is neither a multicast group nor a broadcast address"),
            (["listen", "udp://[fd00::1]:5000"], "is not a multicast group address"),
            (["listen", "udp://239.1.2.3:5000", "--interface", "nosuch0"], "no interface is named \"nosuch0\""),
            (["listen", "udp://239.1.2.300:5000"], "invalid address"),
            (["listen", "tcp://239.1.2.3:5000"], "listen receives UDP datagrams"),
            (["listen", "udp://239.1.2.3:0"], "port 0"),
            (["listen", "udp://:5000"], "names no group"),
            (["listen", "udp://239.1.2.3:5000", "--policy", "restartable"], "restartable means nothing"),
            (["listen", "udp://255.255.255.255:5000", "--interface", "lo"], "takes no interface"),
            (["send", "udp://239.1.2.3:5000", "x", "--interface", "nosuch0"], "no interface is named \"nosuch0\""),
            (["send", "udp://239.1.2.3:0", "x"], "port 0"),
            (["send", "tcp://127.0.0.1:5000", "x"], "write udp://"),
        ]
        // Inside a namespace when possible, so that even a regression that binds or sends touches no real network;
        // --timeout bounds a listener that should have refused.
        let namespace = isRoot ? try NetworkNamespace() : nil
        for (arguments, message) in cases {
            let command = [portreuse] + arguments + (arguments[0] == "listen" ? ["--timeout", "1"] : [])
            let (status, error) = try runCapturingError(namespace?.command(command) ?? command)
            #expect(status == 64, "\(arguments)")
            #expect(error.contains(message), "\(arguments): \(error)")
        }
    }
}

/// Runs a program to its end (at most 30 s) and returns its exit status and its stderr.
private func runCapturingError(_ arguments: [String]) throws -> (Int32, String) {
    let finished = try capture(arguments, timeout: 30)
    return (finished.status, finished.stderr)
}

@Suite("portreuse listen and send: help")
struct MulticastHelpTests {
    @Test("--help teaches: examples, exit statuses, the hijack trade-off, the JSON lines")
    func help() throws {
        let listen = try run([portreuse, "listen", "--help"])
        #expect(listen.status == 0)
        for text in ["portreuse listen udp://239.1.2.3:5000", "Exit status", "\"event\": \"datagram\"", "unsafe-any-user", "binds the group address"] {
            #expect(listen.output.contains(text), "listen --help lacks \(text)")
        }
        #expect(!listen.output.contains("restartable"), "listen --help offers a policy it refuses")
        #expect(!listen.output.contains("described below"), "the JSON lines are described above the options")
        let send = try run([portreuse, "send", "--help"])
        #expect(send.status == 0)
        for text in ["portreuse send udp://239.1.2.3:5000 hello", "SO_BROADCAST", "--hops", "--no-loopback"] {
            #expect(send.output.contains(text), "send --help lacks \(text)")
        }
    }
}
