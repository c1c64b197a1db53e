import PortReuse
import TestSupport
import Testing

@Suite("Sharing tables (every platform's, as data)")
struct SharingTableTests {
    @Test("every table has exactly one row per policy and transport", arguments: OperatingSystem.allCases)
    func complete(system: OperatingSystem) {
        let table = SharingTable.table(for: system)
        #expect(table.system == system)
        #expect(table.rows.count == SharingPolicy.allCases.count * Transport.allCases.count)
        for policy in SharingPolicy.allCases {
            for transport in Transport.allCases {
                #expect(table.rows.filter { $0.policy == policy && $0.transport == transport }.count == 1)
            }
        }
    }

    @Test("Linux: the options of DESIGN.md")
    func linux() {
        let table = SharingTable.linux
        #expect(table.options(.restartable, .tcp) == [.reuseAddress])
        #expect(table.options(.restartable, .udp) == [])
        #expect(table.options(.shared, .tcp) == [.reuseAddress, .reusePort])
        #expect(table.options(.shared, .udp) == [.reusePort])
        #expect(table.options(.exclusive, .tcp) == [])
        #expect(table.options(.exclusive, .udp) == [])
        #expect(table.options(.unsafeAnyUser, .udp).contains(.reuseAddress))
    }

    @Test("Darwin/BSD: SO_REUSEPORT shares, SO_REUSEADDR restarts")
    func darwin() {
        let table = SharingTable.darwin
        #expect(table.options(.restartable, .tcp) == [.reuseAddress])
        #expect(table.options(.shared, .tcp) == [.reuseAddress, .reusePort])
        #expect(table.options(.shared, .udp) == [.reusePort])
        #expect(table.options(.exclusive, .tcp) == [])
        #expect(table.rows.allSatisfy { !$0.options.contains(.exclusiveAddressUse) })
    }

    @Test("Windows: SO_EXCLUSIVEADDRUSE guards, SO_REUSEADDR shares with anyone, no SO_REUSEPORT")
    func windows() {
        let table = SharingTable.windows
        for transport in Transport.allCases {
            #expect(table.options(.restartable, transport) == [.exclusiveAddressUse])
            #expect(table.options(.exclusive, transport) == [.exclusiveAddressUse])
            #expect(table.options(.shared, transport) == [.reuseAddress])
            #expect(table.row(.shared, transport).otherUsersMayJoin)
            #expect(table.row(.shared, transport).note?.contains("cannot restrict") == true)
        }
        #expect(table.rows.allSatisfy { !$0.options.contains(.reusePort) })
    }

    @Test("safe by default: only the unsafe policy sets SO_REUSEADDR on UDP on POSIX", arguments: [SharingTable.linux, .darwin])
    func noReuseAddressOnUDP(table: SharingTable) {
        for row in table.rows where row.transport == .udp {
            #expect(row.options.contains(.reuseAddress) == (row.policy == .unsafeAnyUser), "\(row.policy)")
        }
        #expect(table.rows.filter { $0.policy != .unsafeAnyUser && $0.otherUsersMayJoin }.allSatisfy { $0.note != nil })
    }

    @Test("Linux: the options read back from real sockets are the table's", arguments: SharingPolicy.allCases)
    func readBack(policy: SharingPolicy) throws {
        let listener = try Listener(tcp: "127.0.0.1:0", policy: policy)
        #expect(try listener.reuseOptions() == SharingTable.linux.options(policy, .tcp))
        let datagram = try DatagramSocket(udp: "127.0.0.1:0", policy: policy)
        #expect(try datagram.reuseOptions() == SharingTable.linux.options(policy, .udp))
    }

    @Test("multicast and broadcast receivers: Linux and BSD bind the group with SO_REUSEPORT; Windows the wildcard with SO_REUSEADDR")
    func groupReceivers() {
        for table in [SharingTable.linux, .darwin] {
            #expect(table.groupReceivers.options == [.reusePort], "\(table.system)")
            #expect(table.groupReceivers.bindsGroupAddress, "\(table.system)")
            #expect(!table.groupReceivers.otherUsersMayJoin, "\(table.system)")
            #expect(!table.groupReceivers.options.contains(.reuseAddress), "never SO_REUSEADDR on UDP unless asked")
        }
        let windows = SharingTable.windows.groupReceivers
        #expect(windows.options == [.reuseAddress])
        #expect(!windows.bindsGroupAddress)
        #expect(windows.otherUsersMayJoin)
        #expect(windows.note.contains("any process"))
        for system in OperatingSystem.allCases {
            let table = SharingTable.table(for: system)
            #expect(table.groupReceiverOptions(.shared) == table.groupReceivers.options)
            #expect(table.groupReceiverOptions(.exclusive) == table.options(.exclusive, .udp))
            #expect(table.groupReceiverOptions(.unsafeAnyUser) == table.options(.unsafeAnyUser, .udp))
        }
    }

    @Test("option names")
    func names() {
        #expect(ReuseOptions([.reuseAddress, .reusePort]).description == "SO_REUSEADDR+SO_REUSEPORT")
        #expect(ReuseOptions().description == "none")
        #expect(SharingPolicy(rawValue: "unsafe-any-user") == .unsafeAnyUser)
    }
}
