import ArgumentParser
import PortReuse
import PortReuseTools

@main
struct PortReuseCommand: ParsableCommand {
    static let version = "0.1.0"

    static let configuration = CommandConfiguration(
        commandName: "portreuse",
        abstract: "Share a TCP or UDP port between processes, and restart servers without dropping a connection.",
        discussion: """
            Policies (--policy; the same names as in the PortReuse library):
            \(SharingPolicy.allCases.map { "  \($0.rawValue.padding(16)) \($0.summary)" }.joined(separator: "\n"))

            Addresses: 8080, :8080, 127.0.0.1:8080, [::1]:8080, localhost:8080,
            each optionally after a network: tcp, tcp4, tcp6, udp, udp4, udp6
            (udp:[::1]:53).
            """,
        version: version,
        subcommands: [Demo.self, Up.self, Run.self, Who.self, Listen.self, Send.self, DemoWorker.self]
    )
}
