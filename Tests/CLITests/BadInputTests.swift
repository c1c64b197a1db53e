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
