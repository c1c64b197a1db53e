import PortReuse
import TestSupport
import Testing

@Suite("Addresses")
struct AddressTests {
    @Test("every accepted form parses", arguments: [
        ("8080", nil, Address.Host.unspecified, 8080),
        (":8080", nil, .unspecified, 8080),
        ("127.0.0.1:8080", nil, .ip(.loopbackIPv4), 8080),
        ("[::1]:8080", nil, .ip(.loopbackIPv6), 8080),
        ("localhost:8080", nil, .name("localhost"), 8080),
        ("0.0.0.0:0", nil, .ip(.anyIPv4), 0),
        ("udp:[::1]:53", Network.udp, .ip(.loopbackIPv6), 53),
        ("tcp4:127.0.0.1:80", .tcp4, .ip(.loopbackIPv4), 80),
        ("tcp6::8080", .tcp6, .unspecified, 8080),
        ("udp6:5353", .udp6, .unspecified, 5353),
        ("udp4://127.0.0.1:9", .udp4, .ip(.loopbackIPv4), 9),
        ("TCP:65535", .tcp, .unspecified, 65535),
    ] as [(String, Network?, Address.Host, Int)])
    func parses(text: String, network: Network?, host: Address.Host, port: Int) throws {
        let address = try Address(text)
        #expect(address.network == network)
        #expect(address.host == host)
        #expect(address.port == UInt16(port))
    }

    @Test("bad input names itself, says what is wrong and lists the accepted forms", arguments: [
        ("70000", "\"70000\" is not a port"),
        ("[::1", "has no \"]\""),
        ("tcp7:80", "\"tcp7\" is not a network"),
        ("host:", "the port is missing"),
        ("", "it is empty"),
        ("::1:80", "needs brackets"),
        ("[::1]", "the port is missing"),
        ("1.2.3:80", "neither an IP address nor a host name"),
        ("127.0.0.1:http", "\"http\" is not a port"),
        ("tcp4:[::1]:80", "IPv4 only"),
        ("[]:80", "no address"),
        ("local host:80", "spaces"),
        ("0x50:80", "\"0x50\" is a number, not an address"),
        ("0x7f.1:80", "is a number, not an address"),
    ])
    func rejects(text: String, reason: String) {
        do {
            _ = try Address(text)
            Issue.record("\(text) parsed")
        } catch {
            #expect(error.operation == .parse)
            #expect(error.description.hasPrefix("invalid address \"\(text)\""))
            #expect(error.description.contains(reason), "\(error)")
            #expect(error.description.contains("Accepted forms: 8080, :8080, 127.0.0.1:8080, [::1]:8080, localhost:8080"))
        }
    }

    @Test("the canonical form reads back")
    func description() throws {
        #expect(try Address("udp:[::1]:53").description == "udp:[::1]:53")
        #expect(try Address("8080").description == ":8080")
        #expect(try Address("tcp:localhost:80").description == "tcp:localhost:80")
        #expect(try Address("[fe80::1%1]:80").resolve().first?.ip.scope == 1)
    }

    @Test("host names resolve; an unknown one is a clear error")
    func resolves() throws {
        let addresses = try Address("localhost:8080").resolve()
        #expect(addresses.contains(SocketAddress(ip: .loopbackIPv4, port: 8080)))
        #expect(try Address("tcp4:localhost:1").resolve().allSatisfy { $0.family == .ipv4 })
        #expect(try Address("udp6:9").resolve() == [SocketAddress(ip: .anyIPv6, port: 9)])
        let error = #expect(throws: PortReuseError.self) { try Address("no-such-host.invalid:80").resolve() }
        #expect(error?.description.contains("the host name \"no-such-host.invalid\" did not resolve") == true)
    }

    @Test("IP addresses parse, print and classify")
    func ipAddresses() throws {
        let mapped = try #require(IPAddress("::ffff:127.0.0.1"))
        #expect(mapped.unmappedIPv4 == .loopbackIPv4)
        #expect(IPAddress("239.1.2.3")?.isMulticast == true)
        #expect(IPAddress("ff02::1")?.isMulticast == true)
        #expect(IPAddress("127.0.0.2")?.isLoopback == true)
        #expect(IPAddress("2001:db8::1")?.description == "2001:db8::1")
        #expect(IPAddress("2001:db8::1")?.bytes == [0x20, 0x01, 0x0d, 0xb8] + Array(repeating: 0, count: 11) + [1])
        #expect(IPAddress("256.0.0.1") == nil)
        #expect(IPAddress("fe80::1%no-such-interface") == nil)
        #expect(SocketAddress(ip: .loopbackIPv6, port: 80).description == "[::1]:80")
    }

    @Test("a listener refuses an address of the other transport")
    func wrongTransport() {
        let error = #expect(throws: PortReuseError.self) { try Listener(tcp: "udp:127.0.0.1:0") }
        #expect(error?.description.contains("names the network udp, but this is a TCP socket") == true)
    }
}
