import PortReuse
import PortReuseSystem
import PortReuseTools
import TestSupport
import Testing

/// The first look of `up --ready probe`: what a real process blocked in a system call waits for, read from
/// `/proc/PID/syscall` and told apart by the call's name on this architecture (no number written here).
@Suite("up: the readiness probe reads what a process waits in")
struct GenerationProbeTests {
    /// What a process waits for, once it is blocked in a call the probe names.
    static func blocked(_ child: Child) -> GenerationProbe.Wait? {
        waitFor(timeout: 10) { GenerationProbe.wait(readingSyscallFile: "/proc/\(child.pid)/syscall") }
    }

    @Test("python blocked in accept, in poll and in recvfrom: accept on its socket, poll of one descriptor, receive on its socket")
    func realWaits() throws {
        let accepting = try Child(python: """
            import socket
            s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen()
            print(s.fileno(), flush=True); s.accept()
            """)
        let acceptingDescriptor = try #require(accepting.line().flatMap { Int32($0) })
        #expect(Self.blocked(accepting) == .accept(descriptor: Descriptor(acceptingDescriptor)))

        let polling = try Child(python: """
            import select, socket
            s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen()
            p = select.poll(); p.register(s, select.POLLIN)
            print(s.fileno(), flush=True); p.poll()
            """)
        _ = polling.line()
        guard case .poll(_, let count) = Self.blocked(polling) else { Issue.record("python's poll() is not seen as a poll"); return }
        #expect(count == 1)

        let receiving = try Child(python: """
            import socket
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0))
            print(s.fileno(), flush=True); s.recvfrom(100)
            """)
        let receivingDescriptor = try #require(receiving.line().flatMap { Int32($0) })
        #expect(Self.blocked(receiving) == .receive(descriptor: Descriptor(receivingDescriptor)))
    }
}
