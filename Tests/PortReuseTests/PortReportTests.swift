import Glibc
@testable import PortReuse
import TestSupport
import Testing

/// A socket as the kernel's tables would report it, for the sharing rule as data.
private func holder(
    _ transport: Transport, _ state: PortHolder.State = .listen, options: ReuseOptions?, uid: UInt32? = 1000,
    address: String = "127.0.0.1", port: UInt16 = 8080, inode: UInt64 = 1
) -> PortHolder {
    PortHolder(
        transport: transport, localAddress: SocketAddress(ip: IPAddress(address)!, port: port), remoteAddress: nil,
        state: state, uid: state == .timeWait ? nil : uid, user: nil, inode: inode, receiveQueue: 0, processes: [],
        options: options)
}

@Suite("Sharing rules, as data")
struct SharingRuleTests {
    let linux = SharingTable.linux

    @Test("Linux TCP: a live listener admits SO_REUSEPORT of the same uid only; SO_REUSEADDR never")
    func linuxTCP() {
        let shared = holder(.tcp, options: [.reuseAddress, .reusePort])
        #expect(linux.admits([.reusePort], uid: 1000, beside: shared) == true)
        #expect(linux.admits([.reusePort], uid: 1001, beside: shared) == false)
        #expect(linux.admits([.reusePort], uid: nil, beside: shared) == false)
        #expect(linux.admits([.reuseAddress], uid: 1000, beside: shared) == false)
        #expect(linux.admits([.reuseAddress, .reusePort], uid: 1000, beside: holder(.tcp, options: [.reuseAddress])) == false)
        // A bound socket that does not listen admits SO_REUSEADDR (only one of them will ever listen).
        #expect(linux.admits([.reuseAddress], uid: nil, beside: holder(.tcp, .unconnected, options: [.reuseAddress])) == true)
    }

    @Test("Linux TCP with unknown options: another user is refused anyway; the same user is unknown")
    func linuxTCPUnknown() {
        let unknown = holder(.tcp, options: nil)
        #expect(linux.admits([.reuseAddress, .reusePort], uid: nil, beside: unknown) == false)
        #expect(linux.admits([.reuseAddress, .reusePort], uid: 1000, beside: unknown) == nil)
        #expect(linux.admits([], uid: 1000, beside: unknown) == false)
    }

    @Test("Linux UDP: SO_REUSEADDR admits anyone; SO_REUSEPORT the same uid")
    func linuxUDP() {
        #expect(linux.admits([.reuseAddress], uid: nil, beside: holder(.udp, .unconnected, options: [.reuseAddress])) == true)
        #expect(linux.admits([.reusePort], uid: nil, beside: holder(.udp, .unconnected, options: [.reusePort])) == false)
        #expect(linux.admits([.reusePort], uid: 1000, beside: holder(.udp, .unconnected, options: [.reusePort])) == true)
        #expect(linux.admits([.reuseAddress, .reusePort], uid: nil, beside: holder(.udp, .unconnected, options: nil)) == nil)
    }

    @Test("Linux TIME-WAIT: the same option on both, any uid")
    func linuxTimeWait() {
        #expect(linux.admits([.reuseAddress], uid: 1, beside: holder(.tcp, .timeWait, options: [.reuseAddress])) == true)
        #expect(linux.admits([.reuseAddress], uid: 1, beside: holder(.tcp, .timeWait, options: [.reusePort])) == false)
        #expect(linux.admits([], uid: 1, beside: holder(.tcp, .timeWait, options: nil)) == false)
        #expect(linux.admits([.reuseAddress], uid: 1, beside: holder(.tcp, .timeWait, options: nil)) == nil)
    }

    @Test("macOS/BSD and Windows, as documented")
    func otherSystems() {
        let darwin = SharingTable.darwin
        #expect(darwin.admits([.reusePort], uid: nil, beside: holder(.tcp, options: [.reusePort], address: "0.0.0.0")) == true)
        #expect(darwin.admits([.reusePort], uid: nil, beside: holder(.tcp, options: [.reusePort])) == false)
        let windows = SharingTable.windows
        #expect(windows.admits([.reuseAddress], uid: nil, beside: holder(.udp, .unconnected, options: [])) == true)
        #expect(windows.admits([.reuseAddress], uid: nil, beside: holder(.udp, .unconnected, options: [.exclusiveAddressUse])) == false)
    }

    @Test("verdicts: shared, exclusive, hijackable, unknown")
    func verdicts() {
        let a = holder(.tcp, options: [.reuseAddress, .reusePort], inode: 1)
        let b = holder(.tcp, options: [.reuseAddress, .reusePort], inode: 2)
        let shared = SocketSharing.of(a, among: [a, b], table: linux, ownUID: 1000)
        #expect(shared.sameUserMayJoin == true && shared.otherUsersMayJoin == false && shared.source == .options)
        #expect(shared.verdict == "shared by 2 sockets of uid 1000")

        let alone = holder(.tcp, options: [.reuseAddress])
        #expect(SocketSharing.of(alone, among: [alone], table: linux, ownUID: 1000).verdict == "restartable (SO_REUSEADDR): not shared; a restart binds at once")
        let bare = holder(.tcp, options: [])
        #expect(SocketSharing.of(bare, among: [bare], table: linux, ownUID: 1000).verdict == "exclusive: not shared")

        let udp = holder(.udp, .unconnected, options: [.reuseAddress])
        let hijack = SocketSharing.of(udp, among: [udp], table: linux, ownUID: 1000)
        #expect(hijack.hijackable)
        #expect(hijack.verdict == "UDP socket bound with SO_REUSEADDR: any local user can bind this port and receive its datagrams")

        let unknown = holder(.udp, .unconnected, options: nil)
        let answer = SocketSharing.of(unknown, among: [unknown], table: linux, ownUID: 1000)
        #expect(answer.sameUserMayJoin == nil && answer.otherUsersMayJoin == nil && answer.source == .rules)
        #expect(answer.verdict.hasPrefix("unknown: "))

        // Two listeners on one address can only be a SO_REUSEPORT group: known without reading their options.
        let c = holder(.tcp, options: nil, inode: 3)
        let d = holder(.tcp, options: nil, inode: 4)
        #expect(SocketSharing.of(c, among: [c, d], table: linux, ownUID: 0).sameUserMayJoin == true)
    }
}

@Suite("Port reports")
struct PortReportTests {
    let me = geteuid()

    @Test("netlink sock_diag and /proc/net agree on a port's listener and connections")
    func netlinkAgreesWithProcNet() throws {
        let listener = try Listener(tcp: "127.0.0.1:0", policy: .restartable)
        let port = listener.localAddress.port
        var clients: [Connection] = []
        for _ in 0..<5 { clients.append(try Connection.dial(to: listener.localAddress, timeout: .seconds(5))) }
        var accepted: [Connection] = []
        while let connection = try listener.accept(timeout: .milliseconds(200)) { accepted.append(connection) }
        try leaveTimeWait(on: listener)

        func key(_ holder: PortHolder) -> String { "\(holder.state) \(holder.localAddress) \(String(describing: holder.remoteAddress)) \(holder.inode) \(String(describing: holder.uid))" }
        let viaNetlink = try #require(SocketDiagnostics.holders(transport: .tcp, port: port, states: nil))
        let viaProc = KernelTables.procNetHolders(transport: .tcp, port: port, states: nil)
        #expect(Set(viaNetlink.map(key)) == Set(viaProc.map(key)))
        #expect(viaNetlink.filter { $0.state == .listen }.count == 1)
        #expect(viaNetlink.filter { $0.state == .established }.count == 5)
        #expect(viaNetlink.contains { $0.state == .timeWait })
        #expect(viaNetlink.allSatisfy { $0.localAddress.port == port }, "the in-kernel port filter let other ports through")
        #expect(accepted.count == 5 && clients.count == 5)
    }

    @Test("a listener of our own: its process, its options, exclusive; connections counted on it")
    func ownListener() throws {
        let listener = try Listener(tcp: "127.0.0.1:0", policy: .restartable)
        let client = try Connection.dial(to: listener.localAddress, timeout: .seconds(5))
        let server = try #require(try listener.accept(timeout: .seconds(5)))
        let report = PortReport.find(port: listener.localAddress.port, transport: .tcp)
        let socket = try #require(report.sockets.first)
        #expect(report.sockets.count == 1)
        #expect(socket.holder.processes.map(\.pid) == [getpid()])
        #expect(socket.holder.processes.first?.uid == me)
        #expect(socket.holder.options == [.reuseAddress])
        #expect(socket.sharing.verdict == "restartable (SO_REUSEADDR): not shared; a restart binds at once")
        #expect(socket.sharing.sameUserMayJoin == false && socket.sharing.otherUsersMayJoin == false)
        #expect(socket.connections.established == 1)
        #expect(report.connectionCounts.established == 1 && report.isHeld)
        _ = (client, server)
    }

    @Test("a SO_REUSEPORT group in one process: shared, open to our user, closed to others")
    func sharedGroup() throws {
        let first = try Listener(tcp: "127.0.0.1:0", policy: .shared)
        let second = try Listener(tcp: "127.0.0.1:\(first.localAddress.port)", policy: .shared)
        let report = PortReport.find(port: first.localAddress.port, transport: .tcp)
        #expect(Set(report.sockets.compactMap { $0.holder.processes.first?.descriptor }) == Set([first.descriptor!, second.descriptor!]))
        for socket in report.sockets {
            #expect(socket.sharing.sameUserMayJoin == true)
            #expect(socket.sharing.otherUsersMayJoin == false)
            #expect(socket.sharing.verdict.hasPrefix("shared by 2 sockets of one process"))
        }
    }

    @Test("a bound TCP socket that does not listen is listed (sock_diag, Linux 6.8+)", .enabled(if: kernelAtLeast(6, 8), "sock_diag lists bound TCP sockets from Linux 6.8"))
    func boundNotListening() throws {
        let port = try freePort()
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        address.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        try #require(bound == 0)
        let report = PortReport.find(port: port, transport: .tcp)
        #expect(report.sockets.map(\.holder.state) == [.unconnected])
        #expect(report.sockets.first?.holder.processes.first?.descriptor == fd)
    }

    @Test("TIME-WAIT only: no socket, the connections, and whether restartable binds now")
    func timeWaitOnly() throws {
        let exclusive = try Listener(tcp: "127.0.0.1:0", policy: .exclusive)
        let blocked = exclusive.localAddress.port
        try leaveTimeWait(on: exclusive)
        exclusive.close()
        let report = PortReport.find(port: blocked, transport: .tcp)
        #expect(report.sockets.isEmpty)
        #expect(report.connectionCounts.timeWait >= 1)
        #expect(report.isHeld)
        #expect(report.restartableMayBind == false)

        let restartable = try Listener(tcp: "127.0.0.1:0", policy: .restartable)
        let open = restartable.localAddress.port
        try leaveTimeWait(on: restartable)
        restartable.close()
        #expect(PortReport.find(port: open, transport: .tcp).restartableMayBind == true)
        // Without probes nothing is bound to find out.
        #expect(PortReport.find(port: open, transport: .tcp, probes: []).restartableMayBind == nil)
    }

    @Test("the address filter keeps the sockets that compete with the address")
    func addressFilter() throws {
        let one = try Listener(tcp: "127.0.0.1:0", policy: .exclusive)
        let port = one.localAddress.port
        let two = try Listener(tcp: "127.0.0.2:\(port)", policy: .exclusive)
        let onlyTwo = PortReport.find(port: port, transport: .tcp, competingWith: [two.localAddress])
        #expect(onlyTwo.sockets.map(\.holder.localAddress) == [two.localAddress])
        let wildcard = PortReport.find(port: port, transport: .tcp, competingWith: [SocketAddress(ip: .anyIPv4, port: port)])
        #expect(wildcard.sockets.count == 2)
    }

    @Test("the EADDRINUSE explanation names the holder's verdict")
    func explanationUsesVerdict() throws {
        let first = try Listener(tcp: "127.0.0.1:0", policy: .shared)
        let second = try Listener(tcp: "127.0.0.1:\(first.localAddress.port)", policy: .shared)
        let error = #expect(throws: PortReuseError.self) { try Listener(tcp: "127.0.0.1:\(first.localAddress.port)", policy: .restartable) }
        guard case .portInUse(let report)? = error?.diagnosis else {
            Issue.record("diagnosis: \(String(describing: error?.diagnosis))")
            return
        }
        #expect(report.sharing?.sameUserMayJoin == true)
        #expect(error!.description.contains(": shared by 2 sockets of one process"))
        #expect(error!.description.contains("Policy restartable does not share"))
        _ = second
    }
}

/// Whether the running kernel is at least `major.minor` (from uname).
func kernelAtLeast(_ major: Int, _ minor: Int) -> Bool {
    var name = utsname()
    uname(&name)
    let release = withUnsafeBytes(of: name.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
    let parts = release.split(whereSeparator: { !$0.isNumber }).compactMap { Int($0) }
    guard parts.count >= 2 else { return false }
    return (parts[0], parts[1]) >= (major, minor)
}
