import Glibc
import PortReuse
import TestSupport
import Testing

/// Small inputs that used to be taken for something else (issue 16, item 18).
@Suite("bad input: numbers that are not what they look like")
struct BadInputTests {
    @Test("durations are decimal: --grace 0x10 is refused, not 16 s", arguments: ["0x10", "inf", "1e3", "-1", ""])
    func hexadecimalDuration(value: String) throws {
        let run = try capture([portreuse, "up", "--listen", "127.0.0.1:0", "--grace", value, "--", "/bin/true"])
        #expect(run.status == 64, "\(run.stderr)")
        #expect(run.stderr.contains("expected a duration such as 30, 1.5, 30s, 500ms or 2m"), "\(value): \(run.stderr)")
    }

    @Test("send --count -1 says the count is wrong, not that it is missing")
    func negativeCount() throws {
        let run = try capture([portreuse, "send", "udp://127.0.0.1:9", "x", "--count", "-1"])
        #expect(run.status == 64, "\(run.stderr)")
        #expect(run.stderr.contains("--count must be 1 to 1000000, not -1"), "\(run.stderr)")
    }

    @Test("run --bind 0x50 is refused, not bound to 0.0.0.80 through getaddrinfo")
    func hexadecimalBind() throws {
        let run = try capture([portreuse, "run", "--bind", "0x50", "--", "/bin/true"])
        #expect(run.status == 64, "\(run.stderr)")
        #expect(run.stderr.contains("0x50"), "\(run.stderr)")
    }
}

extension BadInputTests {
    @Test("a crafted ELF (PT_INTERP p_filesz 2^64-1) is inspected without a trap by run and up --reuseport", arguments: [["run", "--"], ["up", "--reuseport", "--listen", "127.0.0.1:9", "--"]])
    func craftedELF(command: [String]) throws {
        let folder = try TemporaryFolder()
        let script = """
            import struct, sys
            header = b"\\x7fELF" + bytes([2, 1, 1]) + bytes(9)
            header += struct.pack("<HHIQQQIHHHHHH", 2, 0x3e, 1, 0x401000, 64, 0, 0, 64, 56, 1, 64, 0, 0)
            interp = struct.pack("<IIQQQQQQ", 3, 4, 120, 0, 0, 0xFFFFFFFFFFFFFFFF, 0xFFFFFFFFFFFFFFFF, 1)
            open(sys.argv[1], "wb").write(header + interp + b"/lib64/ld-linux-x86-64.so.2\\x00")
            """
        let path = folder.path + "/crafted"
        #expect(try capture([systemPython, "-c", script, path]).status == 0)
        chmod(path, 0o755)
        let run = try capture([portreuse] + command + [path], timeout: 30)
        #expect(!run.signalled, "portreuse trapped: \(run.status) \(run.stderr)")
        #expect(run.status != 0 && run.status != 132, "\(run.stderr)")
    }
}

extension BadInputTests {
    @Test("an address error lists the forms the option takes, not every form Address parses",
          arguments: [
            (["run", "--bind", "1.2.3:80", "--", "/bin/true"], ":9000, 9000"),
            (["run", "--source", "[::1", "--", "/bin/true"], ":9000, 9000"),
            (["send", "udp://[::1", "hi"], "udp://239.1.2.3:5000"),
            (["listen", "udp://[ff02::1"], "udp://[ff02::1]:5000"),
          ])
    func formsPerOption(arguments: [String], forms: String) throws {
        let run = try capture([portreuse] + arguments)
        #expect(run.status == 64, "\(run.stderr)")
        #expect(run.stderr.contains("Accepted forms: ") && run.stderr.contains(forms), "\(run.stderr)")
        #expect(!run.stderr.contains("prefixed by a network"), "forms the option refuses: \(run.stderr)")
    }
}
