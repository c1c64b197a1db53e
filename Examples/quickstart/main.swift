import PortReuse

// Listen with the default policy, restartable: after a restart the port binds again at once.
let listener = try Listener(tcp: "127.0.0.1:0")
print("listening on", listener.localAddress)

// Two live listeners on one port: the kernel spreads connections between them.
let first = try Listener(tcp: "127.0.0.1:0", policy: .shared)
let second = try Listener(tcp: "127.0.0.1:\(first.localAddress.port)", policy: .shared)
print("shared port", second.localAddress.port)

// Dial out from the port that a shared listener holds (hole punching, peer-to-peer).
let connection = try Connection.dial(
    tcp: "127.0.0.1:\(listener.localAddress.port)", from: "127.0.0.1:\(first.localAddress.port)")
print("dialled from", connection.localAddress)

// A UDP socket shared with processes of the same user: SO_REUSEPORT, never SO_REUSEADDR.
let udp = try DatagramSocket(udp: "udp:127.0.0.1:0", policy: .shared)
print("UDP options", try udp.reuseOptions())

// Errors say what happened, who is in the way and what to do.
do {
    _ = try Listener(tcp: "127.0.0.1:\(listener.localAddress.port)", policy: .restartable)
} catch {
    print(error)
}

// Or ask first.
if case .inUse(let report) = try Address("127.0.0.1:\(first.localAddress.port)").availability(.restartable) {
    print("taken, by", report.holders.first?.ownerDescription ?? "a socket this process cannot see")
}
