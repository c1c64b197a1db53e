import ArgumentParser
import PortReuse
import PortReuseSystem
import PortReuseTools

/// `portreuse send`: sends a datagram to a multicast group, a broadcast address or any UDP address, so that a
/// group can be checked from the shell (with `portreuse listen` at the other end).
struct Send: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Send a UDP datagram to a multicast group, a broadcast address or any UDP address.",
        usage: "portreuse send [udp://]ADDRESS:PORT [<message> ...] [--interface <interface>] [--hops <n>] [--no-loopback] [--count <n>] [--interval <seconds>]",
        discussion: """
            The message is the words given, joined by spaces; with none, all of standard input is one datagram \
            (at most 65,507 bytes). Multicast datagrams leave on the interface of the route to the group unless \
            --interface names one, cross --hops routers (1, the default, keeps them on the local network) and \
            come back to this host's own receivers unless --no-loopback. A broadcast address (255.255.255.255, \
            or a subnet's, such as 10.0.0.255) gets SO_BROADCAST, which sending to it needs.

            One line per datagram on stdout says what was sent where. Exit status: 0 when every datagram was \
            sent, 1 when the system refused one, 64 for bad input.

            Examples:
              portreuse send udp://239.1.2.3:5000 hello
              portreuse send udp://239.1.2.3:5000 tick --count 5 --interval 1
              date | portreuse send 'udp://[ff15::1234]:5000' --interface eth0
              portreuse send udp://255.255.255.255:9999 anyone there
            """)

    @Argument(help: ArgumentHelp("Where to send: udp://239.1.2.3:5000, udp://[ff15::1234]:5000, udp://10.0.0.255:9999.", valueName: "address"))
    var destination: String

    @Argument(help: ArgumentHelp("The message; standard input when none is given.", valueName: "message"))
    var message: [String] = []

    @Option(help: "The interface multicast datagrams leave on: a name (eth0), an index, or one of its addresses.")
    var interface: String?

    @Option(help: "How many routers a multicast datagram may cross (IP_MULTICAST_TTL, IPV6_MULTICAST_HOPS); 0 keeps it on this host.")
    var hops: UInt8 = 1

    @Flag(name: .customLong("no-loopback"), help: "Keep multicast datagrams from this host's own receivers (IP_MULTICAST_LOOP 0).")
    var noLoopback = false

    // .unconditional: "--count -1" is a value to refuse with a clear message, not a missing one.
    @Option(parsing: .unconditional, help: "Send the datagram this many times.")
    var count = 1

    @Option(parsing: .unconditional, help: "Seconds to wait between datagrams.")
    var interval: Double = 0

    func validate() throws {
        guard count >= 1 && count <= 1_000_000 else { throw ValidationError("--count must be 1 to 1000000, not \(count).") }
        guard interval >= 0 && interval <= 3600 else { throw ValidationError("--interval must be 0 to 3600 seconds, not \(interval).") }
        let address: Address
        do {
            address = try Address(destination)
        } catch {
            throw ValidationError(error.description(acceptedForms: "udp://239.1.2.3:5000, udp://127.0.0.1:9000, 127.0.0.1:9000, udp://[::1]:9000 or localhost:9000"))
        }
        if address.network?.transport == .tcp { throw ValidationError("\"\(destination)\": send sends UDP datagrams; write udp:// instead.") }
        guard address.host != .unspecified else {
            throw ValidationError("\"\(destination)\" names no destination: give an address and a port, as in udp://239.1.2.3:5000.")
        }
        guard address.port != 0 else { throw ValidationError("\"\(destination)\": port 0 cannot be sent to; give the receivers' port.") }
        try NetworkInterface.checkOption(interface)
    }

    func run() throws {
        try CommandFailure.reporting {
            let payload = message.isEmpty ? readStandardInput() : Array(message.joined(separator: " ").utf8)
            guard payload.count <= 65_507 else {
                throw CommandFailure("the message has \(payload.count) bytes; a UDP datagram holds at most 65,507. Send less.", exitCode: 64)
            }
            do throws(PortReuseError) {
                let resolved = try Address(destination).resolve(.udp)
                let target = resolved.first { $0.family == .ipv4 } ?? resolved[0]
                let socket = try DatagramSocket(address: SocketAddress(ip: target.family == .ipv4 ? .anyIPv4 : .anyIPv6, port: 0), policy: .exclusive)
                var how = ""
                if target.ip.isMulticast {
                    let chosen: (interface: NetworkInterface, reason: String)
                    if let interface {
                        chosen = (try NetworkInterface.find(interface), "named")
                    } else {
                        chosen = try NetworkInterface.forMulticast(to: target.ip)
                    }
                    try socket.setMulticastInterface(chosen.interface)
                    try socket.setMulticastHops(hops)
                    try socket.setMulticastLoopback(!noLoopback)
                    how = " (multicast on \(chosen.interface.name), \(chosen.reason); hops \(hops); loopback \(noLoopback ? "off" : "on"))"
                } else if target.ip.isBroadcast() {
                    try socket.setBroadcast(true)
                    how = " (broadcast)"
                }
                for index in 0..<count {
                    if index > 0 && interval > 0 { Processes.sleep(microseconds: UInt32(interval * 1_000_000)) }
                    try socket.send(payload, to: target)
                    print("sent \(payload.count) byte\(payload.count == 1 ? "" : "s") to \(target) from port \(socket.localAddress.port)\(how)")
                    Files.flushStandardOutput()
                }
            } catch {
                throw CommandFailure(error.description)
            }
        }
    }

    /// Standard input, up to one byte more than a datagram holds (so that a longer message is refused).
    private func readStandardInput() -> [UInt8] { Files.read(descriptor: .standardInput, limit: 65_508) ?? [] }
}
