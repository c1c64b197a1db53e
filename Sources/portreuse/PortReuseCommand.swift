import ArgumentParser
import PortReuse

@main
struct PortReuseCommand: ParsableCommand {
    static let version = "0.1.0"

    static let configuration = CommandConfiguration(
        commandName: "portreuse",
        abstract: "Share a TCP or UDP port between processes, and restart servers without dropping a connection.",
        discussion: """
            Policies (the same names as the PortReuse library):
              restartable      rebind at once after a restart (SO_REUSEADDR on TCP); the default
              shared           several live sockets on one port, same user only (SO_REUSEPORT)
              exclusive        nobody else may bind the port
              unsafe-any-user  any local user may bind the port too (SO_REUSEADDR on UDP): hijackable

            Addresses: \(Address.acceptedForms).
            """,
        version: version,
        subcommands: []
    )
}
