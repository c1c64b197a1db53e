import Foundation
import Glibc
import PortReuse
import TestSupport
import Testing

@Suite("LD_PRELOAD shim")
struct ShimTests {
    @Test("the shim needs libc only (no Swift runtime, no libstdc++) and exports only its calls", .enabled(if: readelf != nil, "readelf (binutils) is missing"))
    func linkedWithLibcOnly() throws {
        let dynamic = try capture([readelf!, "-d", shimLibrary])
        #expect(dynamic.status == 0)
        let needed = dynamic.output.split(separator: "\n").filter { $0.contains("(NEEDED)") }.map { $0.components(separatedBy: "[").last!.dropLast() }
        #expect(needed == ["libc.so.6"])
        #expect(!dynamic.output.contains("swift"), "no RPATH/RUNPATH into the toolchain")

        let symbols = try capture([readelf!, "--wide", "--dyn-syms", shimLibrary]).output.split(separator: "\n")
        var exported: Set<String> = []
        for line in symbols {
            let fields = line.split(separator: " ").map(String.init)
            if fields.count >= 8, fields[3] == "FUNC", fields[4] == "GLOBAL", fields[6] != "UND" { exported.insert(fields[7]) }
        }
        #expect(exported == ["bind", "connect", "sendto", "sendmsg", "portreuse_shim_policy_options"])
    }

    @Test("the shim's policy table is SharingTable.linux, row by row")
    func tableMatchesSharingTable() throws {
        let library = try #require(dlopen(shimLibrary, RTLD_NOW | RTLD_LOCAL), "dlopen \(shimLibrary)")
        defer { dlclose(library) }
        typealias Lookup = @convention(c) (UnsafePointer<CChar>?, Int32) -> Int32
        let lookup = unsafeBitCast(try #require(dlsym(library, "portreuse_shim_policy_options")), to: Lookup.self)
        for policy in SharingPolicy.allCases {
            for (transport, type) in [(Transport.tcp, SOCK_STREAM), (.udp, SOCK_DGRAM)] {
                let expected = Int32(SharingTable.linux.options(policy, transport).rawValue)
                #expect(lookup(policy.rawValue, Int32(type.rawValue)) == expected, "\(policy) \(transport)")
            }
        }
        #expect(lookup("sharde", Int32(SOCK_STREAM.rawValue)) == -1)
        #expect(lookup(Optional<UnsafePointer<CChar>>.none, Int32(SOCK_STREAM.rawValue)) == -1)
        #expect(lookup("shared", Int32(SOCK_RAW.rawValue)) == -1)
    }

    @Test("every policy sets exactly its table's options on real TCP and UDP sockets, with the shim alone and through the CLI")
    func policiesOnRealSockets() throws {
        #expect(try capture([systemPython, "-c", optionProbe]).output == probeOutput(nil))
        for policy in SharingPolicy.allCases {
            let direct = try capture([systemPython, "-c", optionProbe], environment: shimmed(["PORTREUSE_POLICY": policy.rawValue]))
            #expect(direct.output == probeOutput(policy), "PORTREUSE_POLICY=\(policy)")
            #expect(direct.stderr.isEmpty)
            let cli = try capture([portreuse, "run", "--policy", policy.rawValue, "--", systemPython, "-c", optionProbe])
            #expect(cli.output == probeOutput(policy), "--policy \(policy)")
        }
        // The CLI's default is shared.
        #expect(try capture([portreuse, "run", "--", systemPython, "-c", optionProbe]).output == probeOutput(.shared))
        // Loaded with no variable at all, the shim changes nothing.
        #expect(try capture([systemPython, "-c", optionProbe], environment: shimmed()).output == probeOutput(nil))
    }

    @Test("bindp's REUSE_ADDR and REUSE_PORT work, but SO_REUSEADDR reaches UDP only with unsafe-any-user")
    func bindpOptions() throws {
        func probe(_ variables: [String: String]) throws -> Finished {
            try capture([systemPython, "-c", optionProbe], environment: shimmed(variables))
        }
        let port = try probe(["REUSE_PORT": "1"])
        #expect(port.output == "TCP SO_REUSEADDR 0 SO_REUSEPORT 1\nUDP SO_REUSEADDR 0 SO_REUSEPORT 1\n")
        #expect(port.stderr.isEmpty)

        let address = try probe(["REUSE_ADDR": "1"])
        #expect(address.output == "TCP SO_REUSEADDR 1 SO_REUSEPORT 0\nUDP SO_REUSEADDR 0 SO_REUSEPORT 0\n")
        #expect(address.shimLines.count == 1)
        #expect(address.stderr.contains("REUSE_ADDR=1 is not applied to UDP sockets"))
        #expect(address.stderr.contains("PORTREUSE_POLICY=unsafe-any-user"))

        let unsafe = try probe(["REUSE_ADDR": "1", "PORTREUSE_POLICY": "unsafe-any-user"])
        #expect(unsafe.output == probeOutput(.unsafeAnyUser))
        #expect(unsafe.stderr.isEmpty)

        // A variable set to 0 takes one option out of the policy's row.
        let noAddress = try probe(["REUSE_ADDR": "false", "PORTREUSE_POLICY": "shared"])
        #expect(noAddress.output == "TCP SO_REUSEADDR 0 SO_REUSEPORT 1\nUDP SO_REUSEADDR 0 SO_REUSEPORT 1\n")
        let both = try probe(["REUSE_ADDR": "yes", "REUSE_PORT": "On"])
        #expect(both.output.hasPrefix("TCP SO_REUSEADDR 1 SO_REUSEPORT 1\n"))
    }

    @Test("a bad variable is one line on stderr, and the program runs exactly as without the shim",
          arguments: [
            ("REUSE_PORT", "banana"), ("REUSE_ADDR", "2"), ("IP_TRANSPARENT", "maybe"), ("PORTREUSE_VERBOSE", "loud"),
            ("PORTREUSE_POLICY", "sharde"), ("PORTREUSE_POLICY", "SHARED"), ("BIND_PORT", "99999"), ("BIND_PORT", "-1"),
            ("BIND_PORT", "80x"), ("BIND_PORT", " 80"), ("BIND_PORT", "0000065536"), ("BIND_ADDR", "nowhere"),
            ("BIND_ADDR", "999.1.1.1"), ("BIND_ADDR", "127.0.0.1:80"), ("BIND_ADDR", "fe80::1%nosuchif0"),
            ("BIND_ADDR", "localhost"), ("PORTREUSE_BIND_PORT", "65536"), ("PORTREUSE_BIND_ADDR", String(repeating: "9", count: 300)),
            ("REUSE_PORT", "\u{1B}[31mred"),
          ])
    func badVariable(name: String, value: String) throws {
        let plain = try capture([systemPython, "-c", optionProbe], environment: environment())
        let shimmed = try capture([systemPython, "-c", optionProbe], environment: shimmed([name: value]))
        #expect(shimmed.status == 0)
        #expect(shimmed.stdout == plain.stdout, "stdout byte for byte as without the shim")
        #expect(shimmed.errorLines.count == 1, "\(shimmed.stderr)")
        let line = try #require(shimmed.shimLines.first)
        #expect(line.contains("\(name)=\"") && line.contains("is ignored:"), "\(line)")
        #expect(line.allSatisfy { $0.isASCII && $0 != "\u{1B}" }, "the value is shown safely: \(line)")
        #expect(line.count < 400)
    }

    @Test("bad variables together: one line each, said once, and the program runs; empty values mean unset")
    func badVariablesTogether() throws {
        let variables = ["REUSE_PORT": "banana", "BIND_PORT": "99999", "BIND_ADDR": "nowhere", "REUSE_ADDR": ""]
        let program = "import socket\nfor _ in range(3):\n    s = socket.socket(); s.bind(('127.0.0.1', 0))\nprint('ran')"
        let result = try capture([systemPython, "-c", program], environment: shimmed(variables))
        #expect(result.status == 0)
        #expect(result.output == "ran\n")
        #expect(result.errorLines.count == 3, "\(result.stderr)")
        for name in ["REUSE_PORT", "BIND_PORT", "BIND_ADDR"] { #expect(result.stderr.contains("\(name)=\"")) }
    }

    /// Calls libc's bind (the shim's, when preloaded) through ctypes, so that errno is seen as C sees it.
    static let errnoProbe = """
        import ctypes, socket, struct, sys
        libc = ctypes.CDLL(None, use_errno=True)
        def bind(fd, port):
            address = struct.pack("=H", socket.AF_INET) + struct.pack("!H", port) + socket.inet_aton("127.0.0.1") + bytes(8)
            ctypes.set_errno(77)
            result = libc.bind(fd, address, len(address))
            return result, ctypes.get_errno()
        holder = socket.socket(); holder.bind(("127.0.0.1", 0)); holder.listen()
        first, second = socket.socket(), socket.socket()
        print("success", *bind(first.fileno(), 0))
        print("in use", *bind(second.fileno(), holder.getsockname()[1]))
        print("bad fd", *bind(-1, 0))
        """

    @Test("errno is what the program would see without the shim")
    func errnoPreserved() throws {
        let plain = try capture([systemPython, "-c", Self.errnoProbe], environment: environment())
        #expect(plain.output == "success 0 77\nin use -1 98\nbad fd -1 9\n")
        let shimmed = try capture([systemPython, "-c", Self.errnoProbe], environment: shimmed(["PORTREUSE_POLICY": "exclusive", "BIND_ADDR": "127.0.0.1"]))
        #expect(shimmed.output == plain.output)
    }

    @Test("IP_TRANSPARENT without CAP_NET_ADMIN: one line, errno untouched, the program binds", .needsRoot("needs root to run as user nobody"))
    func transparentWithoutCapability() throws {
        let everyone = try productsForEveryone()
        let variables = ["IP_TRANSPARENT": "1", "LD_PRELOAD": everyone.path + "/libCReuseShim.so"]
        let result = try capture(asNobody + [systemPython, "-c", Self.errnoProbe], environment: environment(variables))
        #expect(result.output == "success 0 77\nin use -1 98\nbad fd -1 9\n")
        #expect(result.shimLines.count == 1, "said once: \(result.stderr)")
        #expect(result.stderr.contains("IP_TRANSPARENT could not be set: Operation not permitted (EPERM); it needs CAP_NET_ADMIN"))
    }

    @Test("Unix and netlink sockets are left alone")
    func otherFamiliesUntouched() throws {
        let folder = try TemporaryFolder()
        let program = """
            import socket, sys
            for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                u = socket.socket(socket.AF_UNIX, kind)
                u.bind(sys.argv[1] + "/" + str(kind))
                print(u.getsockname() == sys.argv[1] + "/" + str(kind), u.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT))
            n = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
            n.bind((0, 0))
            print("netlink", n.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT))
            """
        let variables = ["PORTREUSE_POLICY": "shared", "BIND_ADDR": "127.0.0.1", "BIND_PORT": "9", "PORTREUSE_VERBOSE": "1"]
        let result = try capture([systemPython, "-c", program, folder.path], environment: shimmed(variables))
        #expect(result.output == "True 0\nTrue 0\nnetlink 0\n")
        #expect(result.stderr.isEmpty, "nothing to say about sockets it does not touch: \(result.stderr)")
    }

    @Test("a program that sets the options itself keeps them, whatever the policy")
    func programOptionsKept() throws {
        let program = """
            import socket
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.bind(("127.0.0.1", 0)); s.listen()
            t = socket.socket()
            t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            t.bind(("127.0.0.1", s.getsockname()[1])); t.listen()
            print(s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR), s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT))
            """
        for policy in SharingPolicy.allCases {
            let result = try capture([systemPython, "-c", program], environment: shimmed(["PORTREUSE_POLICY": policy.rawValue]))
            #expect(result.output == "1 1\n", "\(policy): \(result.stderr)")
        }
    }

    @Test("PORTREUSE_VERBOSE: one line per bind on stderr, stdout untouched")
    func verbose() throws {
        let result = try capture([systemPython, "-c", optionProbe], environment: shimmed(["PORTREUSE_POLICY": "shared", "PORTREUSE_VERBOSE": "1"]))
        #expect(result.output == probeOutput(.shared))
        #expect(result.errorLines.count == 2)
        #expect(result.errorLines.first?.hasSuffix("(TCP) 127.0.0.1:0, options SO_REUSEADDR+SO_REUSEPORT") == true)
        #expect(result.errorLines.last?.hasSuffix("(UDP) 127.0.0.1:0, options SO_REUSEPORT") == true)
        #expect(result.errorLines.allSatisfy { $0.hasPrefix("portreuse shim (python3[") })

        let moved = try capture([systemPython, "-c", optionProbe], environment: shimmed(["BIND_PORT": "0", "BIND_ADDR": "127.0.0.2", "PORTREUSE_VERBOSE": "1"]))
        #expect(moved.errorLines.first?.hasSuffix("(TCP) 127.0.0.1:0 -> 127.0.0.2:0, options none") == true)
    }

    @Test("once the program puts something else on fd 2, the shim does not write there")
    func reusedStandardError() throws {
        let folder = try TemporaryFolder()
        let file = folder.path + "/fd2"
        let program = """
            import os, socket, sys
            os.close(2)
            assert os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC) == 2
            s = socket.socket(); s.bind(("127.0.0.1", 0))
            print("bound")
            """
        let result = try capture([systemPython, "-c", program, file], environment: shimmed(["PORTREUSE_POLICY": "shared", "PORTREUSE_VERBOSE": "1"]))
        #expect(result.output == "bound\n")
        #expect(try String(contentsOfFile: file, encoding: .utf8) == "")
    }

    @Test("an IPv4 address on an IPv6-only socket is not applied: said once, and the program binds as it asked")
    func familyMismatch() throws {
        let program = """
            import socket
            for _ in range(2):
                s = socket.socket(socket.AF_INET6)
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                s.bind(("::1", 0))
                print(s.getsockname()[0])
            t = socket.socket(socket.AF_INET)
            t.bind(("127.0.0.1", 0))
            print(t.getsockname()[0])
            """
        let result = try capture([systemPython, "-c", program], environment: shimmed(["BIND_ADDR": "::ffff:127.0.0.2"]))
        #expect(result.output == "::1\n::1\n127.0.0.2\n", "the mapped address is applied to the IPv4 socket as 127.0.0.2")
        #expect(result.shimLines.count == 1)
        #expect(result.stderr.contains("BIND_ADDR=\"::ffff:127.0.0.2\" not applied to bind [::1]:0: it is an IPv4 address and this IPv6 socket is IPv6-only (IPV6_V6ONLY) (said once)"))

        let v6 = try capture([systemPython, "-c", "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[0])"],
                             environment: shimmed(["BIND_ADDR": "::1"]))
        #expect(v6.output == "127.0.0.1\n")
        #expect(v6.stderr.contains("it is an IPv6 address and this is an IPv4 socket"))
    }
}
