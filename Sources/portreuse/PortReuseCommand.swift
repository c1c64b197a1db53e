import ArgumentParser
import PortReuse
import PortReuseTools

@main
struct PortReuseCommand: ParsableCommand {
    /// The version and the commit it was built from: `0.2.0 (commit 1a2b3c4)`.
    static let version = "\(BuildInfo.version) (commit \(BuildInfo.commit))"

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
        subcommands: [Demo.self, Up.self, Run.self, Who.self, Listen.self, Send.self, DemoWorker.self, UpWorkers.self]
    )
}
