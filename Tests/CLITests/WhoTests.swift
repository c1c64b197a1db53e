import Foundation
import Glibc
import PortReuse
import PortReuseTools
import TestSupport
import Testing

/// `portreuse who` against real holders: Python processes (ours, and user nobody's when the tests run as root)
/// and sockets of this process.
@Suite("portreuse who")
struct WhoTests {
    let portreuse = productsFolder + "/portreuse"
    let me = userName(geteuid())

    // MARK: helpers

    /// Runs who with stdout and stderr merged.
    func who(_ arguments: [String], binary: String? = nil, asNobody: Bool = false) throws -> (status: Int32, output: String) {
        let command = (asNobody ? ["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] : [])
            + ["/bin/sh", "-c", "exec \"$0\" \"$@\" 2>&1", binary ?? portreuse, "who"] + arguments
        return try run(command, timeout: 30)
    }

    /// Runs who --json (stdout only) and parses the document.
    func whoJSON(_ arguments: [String], binary: String? = nil, asNobody: Bool = false) throws -> (status: Int32, document: [String: Any]) {
        let command = (asNobody ? ["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] : [])
            + [binary ?? portreuse, "who", "--json"] + arguments
        let (status, output) = try run(command, timeout: 30)
        let object = try JSONSerialization.jsonObject(with: Data(output.utf8))
        return (status, try #require(object as? [String: Any], "not a JSON object: \(output)"))
    }

    /// The sockets of the first port in a who document.
    func sockets(_ document: [String: Any], transport: String = "tcp") throws -> [[String: Any]] {
        let ports = try #require(document["ports"] as? [[String: Any]])
        let port = try #require(ports.first { $0["transport"] as? String == transport })
        return try #require(port["sockets"] as? [[String: Any]])
    }

    func sharing(_ socket: [String: Any]) -> [String: Any] { socket["sharing"] as? [String: Any] ?? [:] }

    func pids(_ socket: [String: Any]) -> Set<Int> {
        Set((socket["processes"] as? [[String: Any]] ?? []).compactMap { $0["pid"] as? Int })
    }

    // MARK: holders

    @Test("a listener of our own: its pid, command line and user; SO_REUSEADDR alone is restartable, not shared")
    func ownListener() throws {
        let holder = try Child(python: pythonHolder(kind: "STREAM", reuseAddress: true))
        let port = try holder.port()
        let (status, document) = try whoJSON(["tcp:127.0.0.1:\(port)"])
        #expect(status == 0)
        let socket = try #require(try sockets(document).first)
        #expect(socket["state"] as? String == "LISTEN")
        #expect(socket["address"] as? String == "127.0.0.1:\(port)")
        #expect(socket["options"] as? [String] == ["SO_REUSEADDR"])
        let process = try #require((socket["processes"] as? [[String: Any]])?.first)
        #expect(process["pid"] as? Int == Int(holder.pid))
        #expect((process["commandLine"] as? [String])?.prefix(2) == [systemPython, "-c"])
        #expect(process["user"] as? String == me)
        #expect(sharing(socket)["verdict"] as? String == "restartable (SO_REUSEADDR): not shared; a restart binds at once")

        let text = try who(["\(port)"])
        #expect(text.status == 0)
        #expect(text.output.contains("TCP 127.0.0.1:\(port)  LISTEN"))
        #expect(text.output.contains("\(holder.pid)"))
        #expect(text.output.contains("\(systemPython) -c "))
        #expect(!text.output.contains("\u{1B}["), "colour in a pipe")
    }

    @Test("two SO_REUSEPORT listeners in two processes: both listed, shared")
    func reusePortGroup() throws {
        let first = try Child(python: pythonHolder(kind: "STREAM", reuseAddress: true, reusePort: true))
        let port = try first.port()
        let second = try Child(python: pythonHolder(kind: "STREAM", port: port, reuseAddress: true, reusePort: true))
        #expect(try second.port() == port)
        let (status, document) = try whoJSON(["tcp:\(port)"])
        #expect(status == 0)
        let found = try sockets(document)
        #expect(found.count == 2)
        #expect(found.reduce(Set<Int>()) { $0.union(pids($1)) } == [Int(first.pid), Int(second.pid)])
        for socket in found {
            #expect(sharing(socket)["verdict"] as? String == "shared by 2 processes of user \(me)")
            #expect(sharing(socket)["sameUserMayJoin"] as? Bool == true)
            #expect(sharing(socket)["otherUsersMayJoin"] as? Bool == false)
            #expect(sharing(socket)["hijackable"] as? Bool == false)
        }
        let text = try who(["\(port)"]).output
        #expect(text.contains("2 sockets"))
        #expect(text.contains("shared by 2 processes of user \(me)"))
    }

    @Test("a socket shared by a parent and its forked child lists both processes")
    func forkedChild() throws {
        let parent = try Child(python: """
            import ctypes, os, signal, socket, sys
            signal.alarm(30)
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            s.listen(16)
            child = os.fork()
            if child == 0:
                ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with the parent
                signal.alarm(30)
                signal.pause()
                os._exit(0)
            print(s.getsockname()[1], flush=True)
            print(child, flush=True)
            sys.stdin.readline()
            """)
        let port = try parent.port()
        let child = try #require(parent.line().flatMap { Int($0) })
        let (_, document) = try whoJSON(["tcp:\(port)"])
        let found = try sockets(document)
        #expect(found.count == 1)
        let socket = try #require(found.first)
        #expect(pids(socket) == [Int(parent.pid), child])
        #expect(sharing(socket)["verdict"] as? String
            == "shared by 2 processes of user \(me) (one socket, inherited or passed); no new socket can join")
    }

    @Test("a UDP socket with SO_REUSEADDR is flagged hijackable")
    func udpReuseAddress() throws {
        let holder = try Child(python: pythonHolder(kind: "DGRAM", reuseAddress: true))
        let port = try holder.port()
        let (status, document) = try whoJSON(["udp:\(port)"])
        #expect(status == 0)
        let socket = try #require(try sockets(document, transport: "udp").first)
        #expect(socket["state"] as? String == "UNCONN")
        #expect(sharing(socket)["hijackable"] as? Bool == true)
        #expect(sharing(socket)["otherUsersMayJoin"] as? Bool == true)
        let verdict = "UDP socket bound with SO_REUSEADDR: any local user can bind this port and receive its datagrams"
        #expect(sharing(socket)["verdict"] as? String == verdict)
        #expect(try who(["\(port)"]).output.contains(verdict))

        // The same port with SO_REUSEPORT alone is not.
        let safe = try Child(python: pythonHolder(kind: "DGRAM", reusePort: true))
        let safePort = try safe.port()
        let safeSocket = try #require(try sockets(try whoJSON(["udp:\(safePort)"]).document, transport: "udp").first)
        #expect(sharing(safeSocket)["hijackable"] as? Bool == false)
        #expect(sharing(safeSocket)["sameUserMayJoin"] as? Bool == true)
    }

    @Test("only TIME-WAIT connections hold the port: held, no socket, and restartable must wait")
    func timeWaitOnly() throws {
        let listener = try Listener(tcp: "127.0.0.1:0", policy: .exclusive)
        let port = listener.localAddress.port
        try leaveTimeWait(on: listener)
        listener.close()
        let (status, document) = try whoJSON(["tcp:127.0.0.1:\(port)"])
        #expect(status == 0)
        #expect(document["held"] as? Bool == true)
        let ports = try #require(document["ports"] as? [[String: Any]])
        #expect((ports.first?["connections"] as? [String: Any])?["timeWait"] as? Int ?? 0 >= 1)
        #expect(ports.first?["restartableMayBind"] as? Bool == false)
        #expect(try sockets(document).isEmpty)
        let text = try who(["tcp:\(port)"])
        #expect(text.status == 0)
        #expect(text.output.contains("no socket bound"))
        #expect(text.output.contains("time-wait"))
        #expect(text.output.contains("did not set SO_REUSEADDR"))
    }

    @Test("a free port: exit status 1")
    func freePortExitsOne() throws {
        let port = try freePort()
        let text = try who(["\(port)"])
        #expect(text.status == 1)
        #expect(text.output == "Nothing holds TCP or UDP port \(port).")
        let (status, document) = try whoJSON(["tcp:\(port)"])
        #expect(status == 1)
        #expect(document["held"] as? Bool == false)
    }

    @Test("bad input: exit status 2, the input named, the accepted forms listed", arguments: [
        ["70000"], ["tcp5:80"], ["[::1:80"], [""], ["localhost"], ["127.0.0.1:0"], ["no such host!:80"],
    ])
    func badAddress(_ arguments: [String]) throws {
        let (status, output) = try who(arguments)
        #expect(status == 2)
        #expect(output.hasPrefix("Error: invalid address \"\(arguments[0])\""), "\(output)")
        #expect(output.contains("8080, :8080, 127.0.0.1:8080, [::1]:8080, localhost:8080"))
        #expect(output.contains("Usage: portreuse who"))
    }

    @Test("bad usage: exit status 2 with what is wrong", arguments: [
        (["--jsno", "80"], "unknown option \"--jsno\""), (["-x"], "unknown option \"-x\""), ([], "which port?"),
        (["--all", "80"], "not both"), (["80", "81"], "one port at a time"),
    ])
    func badUsage(_ arguments: [String], message: String) throws {
        let (status, output) = try who(arguments)
        #expect(status == 2)
        #expect(output.contains(message), "\(output)")
    }

    @Test("colour on a terminal only, and never with NO_COLOR")
    func colour() throws {
        let listener = try Listener(tcp: "127.0.0.1:0")
        // script(1) runs the command on a pseudo-terminal.
        let command = ["/usr/bin/script", "-qec", "\(portreuse) who tcp:\(listener.localAddress.port)", "/dev/null"]
        var environment = ProcessInfo.processInfo.environment
        environment["TERM"] = "xterm"
        environment["NO_COLOR"] = nil
        let onTerminal = try run(command, environment: environment)
        #expect(onTerminal.status == 0)
        #expect(onTerminal.output.contains("\u{1B}[1mTCP 127.0.0.1:\(listener.localAddress.port)\u{1B}[0m"))
        environment["NO_COLOR"] = "1"
        let plain = try run(command, environment: environment)
        #expect(plain.output.contains("TCP 127.0.0.1:\(listener.localAddress.port)  LISTEN"))
        #expect(!plain.output.contains("\u{1B}["))
    }

    @Test("--help documents the exit statuses, the JSON schema and --probe-udp")
    func help() throws {
        let (status, output) = try run([portreuse, "who", "--help"])
        #expect(status == 0)
        for text in ["0  something holds the port", "1  nothing holds it", "2  bad input", "portreuse.who/1", "--probe-udp", "hijacked"] {
            #expect(output.contains(text), "help lacks \(text)")
        }
    }

    @Test("docs/who.md's table of the JSON schema is the one who --help shows (WhoSchema)")
    func schemaTable() throws {
        let page = try String(contentsOfFile: packageRoot + "/docs/who.md", encoding: .utf8)
        #expect(page.contains(WhoSchema.markdown + "\n"), "docs/who.md must contain, exactly:\n\(WhoSchema.markdown)")
        #expect(WhoSchema.help.split(separator: "\n").allSatisfy { $0.count <= 76 }, "\(WhoSchema.help)")
    }

    @Test("--json has the documented fields, each documented in --help and in docs/who.md")
    func jsonFields() throws {
        let listener = try Listener(tcp: "127.0.0.1:0", policy: .shared)
        let client = try Connection.dial(to: listener.localAddress, timeout: .seconds(5))
        defer { client.close() }
        let (status, document) = try whoJSON(["\(listener.localAddress.port)"])
        #expect(status == 0)
        #expect(document["schema"] as? String == "portreuse.who/1")
        let ports = try #require(document["ports"] as? [[String: Any]])
        let socket = try #require(try sockets(document).first)
        let process = try #require((socket["processes"] as? [[String: Any]])?.first)
        let expected: [(String, [String: Any], Set<String>)] = [
            ("document", document, ["schema", "query", "privileged", "held", "hiddenSockets", "notes", "ports"]),
            ("query", document["query"] as? [String: Any] ?? [:], ["text", "all", "transports", "port"]),
            ("port", ports[0], ["transport", "port", "held", "connections", "restartableMayBind", "warnings", "sockets"]),
            ("connections", ports[0]["connections"] as? [String: Any] ?? [:], ["established", "timeWait", "other"]),
            ("socket", socket, [
                "address", "ip", "family", "state", "inode", "uid", "user", "dualStack", "receiveQueue", "options", "connections",
                "processesHidden", "processes", "sharing",
            ]),
            ("process", process, ["pid", "fd", "name", "uid", "user", "commandLine"]),
            ("sharing", sharing(socket), ["sameUserMayJoin", "otherUsersMayJoin", "hijackable", "source", "verdict", "group"]),
        ]
        let help = try run([portreuse, "who", "--help"]).output
        let readme = try String(contentsOfFile: packageRoot + "/docs/who.md", encoding: .utf8)
        for (name, object, keys) in expected {
            #expect(Set(object.keys) == keys, "\(name) fields")
            for key in keys {
                let inHelp = help.contains(key), inReadme = readme.contains("`\(key)`")
                #expect(inHelp, "--help does not document \(key)")
                #expect(inReadme, "docs/who.md does not document `\(key)`")
            }
        }
        #expect((socket["connections"] as? [String: Any])?["established"] as? Int == 1)
        #expect(process["pid"] as? Int == Int(getpid()))
    }

    // MARK: other users (root only)

    @Test("a listener of user nobody: its owner and process, seen as root", .needsRoot("needs root to start a socket as user nobody"))
    func otherUserListener() throws {
        let holder = try Child(python: pythonHolder(kind: "STREAM", reuseAddress: true, reusePort: true), asNobody: true)
        let port = try holder.port()
        let (status, document) = try whoJSON(["tcp:\(port)"])
        #expect(status == 0)
        let socket = try #require(try sockets(document).first)
        #expect(socket["uid"] as? Int == 65534)
        #expect(socket["user"] as? String == userName(65534))
        #expect(pids(socket) == [Int(holder.pid)])
        #expect(sharing(socket)["sameUserMayJoin"] as? Bool == true)
        #expect(sharing(socket)["otherUsersMayJoin"] as? Bool == false)
        #expect(document["privileged"] as? Bool == true)
    }

    @Test("without root: a socket held by root and by nobody's child lists the child, and says holders may be missing",
          .needsRoot("needs root to run who as user nobody"))
    func partlyHiddenFromNobody() throws {
        let binary = try WorldReadableCopy(of: portreuse)
        let holder = try Child(python: """
            import socket, subprocess, time
            s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen()
            child = subprocess.Popen(["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                "/usr/bin/python3", "-c", "import time; time.sleep(30)"], pass_fds=[s.fileno()])
            # Until setpriv has become nobody and executed python (bounded: 5 s), then the port.
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                try:
                    status = open(f"/proc/{child.pid}/status").read()
                    if "\\nUid:\\t65534\\t" in status and status.startswith("Name:\\tpython3"): break
                except OSError: pass
                time.sleep(0.01)
            print(s.getsockname()[1], flush=True)
            time.sleep(30)
            child.kill()
            """)
        let port = try holder.port()
        let (status, document) = try whoJSON(["tcp:\(port)"], binary: binary.path, asNobody: true)
        #expect(status == 0)
        let found = try sockets(document)
        #expect(found.count == 1)
        let socket = try #require(found.first)
        #expect(pids(socket).count == 1, "nobody sees its own process only: \(socket)")
        #expect(!pids(socket).contains(Int(holder.pid)), "root's process is not visible to nobody")
        #expect(socket["processesHidden"] as? Bool == true, "\(socket)")
        #expect(document["hiddenSockets"] as? Int == 1)
        let text = try who(["tcp:\(port)"], binary: binary.path, asNobody: true).output
        #expect(text.contains("may have more holders than shown: run as root"), "\(text)")
    }

    @Test("without root: another user's sockets are listed, their processes hidden, and the output says so",
          .needsRoot("needs root to run who as user nobody"))
    func hiddenFromNobody() throws {
        let binary = try WorldReadableCopy(of: portreuse)
        let first = try Child(python: pythonHolder(kind: "STREAM", reuseAddress: true, reusePort: true))
        let port = try first.port()
        let second = try Child(python: pythonHolder(kind: "STREAM", port: port, reuseAddress: true, reusePort: true))
        #expect(try second.port() == port)
        let (status, document) = try whoJSON(["tcp:\(port)"], binary: binary.path, asNobody: true)
        #expect(status == 0)
        #expect(document["privileged"] as? Bool == false)
        #expect(document["hiddenSockets"] as? Int == 2)
        let found = try sockets(document)
        #expect(found.count == 2)
        for socket in found {
            #expect(socket["processesHidden"] as? Bool == true)
            #expect(socket["options"] is NSNull)
            // Two listeners on one address can only be a SO_REUSEPORT group, unreadable options or not.
            #expect(sharing(socket)["sameUserMayJoin"] as? Bool == true)
            #expect(sharing(socket)["otherUsersMayJoin"] as? Bool == false)
        }
        let text = try who(["tcp:\(port)"], binary: binary.path, asNobody: true).output
        #expect(text.contains("2 sockets owned by other users: run as root to see their processes"))
    }

    @Test("without root, a TCP socket of one's own user is learned by a probe that never listens",
          .needsRoot("needs root to run a socket and who as user nobody"))
    func tcpProbe() throws {
        let binary = try WorldReadableCopy(of: portreuse)
        // Not dumpable: neither /proc/PID/fd nor pidfd_getfd is open to another process of its user.
        func holder(reusePort: Bool) -> String {
            pythonHolder(kind: "STREAM", reuseAddress: true, reusePort: reusePort)
                .replacingOccurrences(of: "signal.alarm(30)\n", with: "signal.alarm(30)\nimport ctypes; ctypes.CDLL(None).prctl(4, 0)\n")
        }
        let shareable = try Child(python: holder(reusePort: true), asNobody: true)
        let exclusive = try Child(python: holder(reusePort: false), asNobody: true)
        for (child, expected) in [(shareable, true), (exclusive, false)] {
            let port = try child.port()
            let (_, document) = try whoJSON(["tcp:\(port)"], binary: binary.path, asNobody: true)
            let socket = try #require(try sockets(document).first)
            #expect(socket["options"] is NSNull)
            #expect(sharing(socket)["source"] as? String == "probe")
            #expect(sharing(socket)["sameUserMayJoin"] as? Bool == expected)
            // The probe never listened: the port still has exactly one listener and nothing else.
            #expect(PortReport.find(port: port, transport: .tcp, probes: []).sockets.count == 1)
        }
    }

    @Test("who takes no datagram from a SO_REUSEPORT group: without --probe-udp it never binds a UDP probe")
    func noDatagramStolen() throws {
        // The group's options must be unreadable to who for a probe to be tempting: its processes are not
        // dumpable, and who runs as their user (user nobody when the tests run as root, since root reads anything).
        let receiver = """
            import ctypes, select, signal, socket, sys
            signal.alarm(60)
            ctypes.CDLL(None).prctl(4, 0)  # PR_SET_DUMPABLE 0: no /proc/PID/fd, no pidfd_getfd for others
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            s.bind(("127.0.0.1", int(sys.argv[1]) if len(sys.argv) > 1 else 0))
            print(s.getsockname()[1], flush=True)
            got = 0
            while True:
                ready, _, _ = select.select([s, sys.stdin], [], [], 30)
                if s in ready:
                    s.recv(100); got += 1
                elif sys.stdin in ready:
                    if not sys.stdin.readline():
                        break
                    while True:
                        try:
                            s.recv(100, socket.MSG_DONTWAIT); got += 1
                        except BlockingIOError:
                            break
                    print(got, flush=True)
                else:
                    break
            """
        let asNobody = isRoot
        let user = asNobody ? ["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] : []
        let first = try Child(user + [systemPython, "-c", receiver])
        let port = try first.port()
        let second = try Child(user + [systemPython, "-c", receiver, "\(port)"])
        #expect(try second.port() == port)
        let binary = try WorldReadableCopy(of: portreuse)
        func whoDocument(_ extra: [String], sending: Bool) throws -> [String: Any] {
            let who = try Child(user + [binary.path, "who", "--json", "udp:\(port)"] + extra)
            let deadline = Date().addingTimeInterval(20)
            while sending && who.isRunning && Date() < deadline { try send() }
            var output = ""
            while let line = who.line(timeout: 10) { output += line }
            return try #require(try JSONSerialization.jsonObject(with: Data(output.utf8)) as? [String: Any])
        }
        // Senders from many source ports, so that the kernel's hash spreads them over the group.
        var senders: [DatagramSocket] = []
        for _ in 0..<32 { senders.append(try DatagramSocket(udp: "127.0.0.1:0")) }
        let target = SocketAddress(ip: .loopbackIPv4, port: port)
        var sent = 0
        func send() throws {
            try senders[sent % senders.count].send([UInt8(sent & 0xFF)], to: target)
            sent += 1
            if sent % 16 == 0 { usleep(200) }
        }

        // Datagrams are sent while who runs, five times.
        for _ in 0..<5 {
            let found = try sockets(try whoDocument([], sending: true), transport: "udp")
            #expect(found.count == 2)
            for socket in found {
                #expect(socket["processesHidden"] as? Bool == true)
                #expect(sharing(socket)["source"] as? String == "rules", "without --probe-udp, who must not probe")
                #expect(sharing(socket)["sameUserMayJoin"] is NSNull)
            }
        }
        for _ in 0..<50 { try send() }
        // Asked until the group has every datagram sent (each answer is the count so far).
        var received = 0
        try waitUntil(timeout: 10, interval: 0.05) {
            first.send("report")
            second.send("report")
            received = try #require(first.line().flatMap { Int($0) }) + (try #require(second.line().flatMap { Int($0) }))
            return received >= sent
        }
        #expect(sent >= 100)
        #expect(received == sent, "sent \(sent) datagrams, the group received \(received)")

        // The control: here --probe-udp does probe (a probe of its user joins the group for a moment).
        let probed = try sockets(try whoDocument(["--probe-udp"], sending: false), transport: "udp")
        #expect(probed.allSatisfy { sharing($0)["source"] as? String == "probe" && sharing($0)["sameUserMayJoin"] as? Bool == true })
    }

    @Test("--probe-udp learns a UDP socket's sharing without root, and says it may take a datagram",
          .needsRoot("needs root to run who as user nobody"))
    func udpProbe() throws {
        let binary = try WorldReadableCopy(of: portreuse)
        let holder = try Child(python: pythonHolder(kind: "DGRAM", reusePort: true))
        let port = try holder.port()
        let without = try who(["udp:\(port)"], binary: binary.path, asNobody: true).output
        #expect(without.contains("--probe-udp finds out by binding beside it, which may take one of its datagrams"))
        let (_, document) = try whoJSON(["udp:\(port)", "--probe-udp"], binary: binary.path, asNobody: true)
        let socket = try #require(try sockets(document, transport: "udp").first)
        #expect(sharing(socket)["source"] as? String == "probe")
        #expect(sharing(socket)["otherUsersMayJoin"] as? Bool == false)
        #expect(sharing(socket)["hijackable"] as? Bool == false)
    }
}

/// The name of a user, or the uid as text.
func userName(_ uid: UInt32) -> String {
    guard let entry = getpwuid(uid), let name = entry.pointee.pw_name else { return "\(uid)" }
    return String(cString: name)
}

/// A copy of a program in a folder every user can enter (the build folder may live in a private temporary
/// folder, as in CI), removed when dropped.
final class WorldReadableCopy {
    let folder: String
    let path: String

    init(of program: String) throws {
        var template = Array("/tmp/portreuse-who-test-XXXXXX".utf8CString)
        let created = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        folder = String(cString: try #require(created))
        path = folder + "/" + (program.split(separator: "/").last.map(String.init) ?? "program")
        chmod(folder, 0o755)
        // cp in a process of its own: a copy written here could leak its write descriptor into a child
        // that a parallel test spawns, and exec of the copy would then fail with "Text file busy".
        try copyExecutable(program, to: path)
        chmod(path, 0o755)
    }

    deinit {
        try? FileManager.default.removeItem(atPath: folder)
    }
}

extension WhoTests {
    @Test("who warns where another user could take a port: a 0.0.0.0 listener leaves IPv6 free; a second user's primed dual-stack socket is named",
          .needsRoot("a socket of user nobody beside one of root"))
    func crossUserWarnings() throws {
        let root = try Listener(tcp: "0.0.0.0:0", policy: .restartable)
        let port = root.localAddress.port
        let (_, alone) = try whoJSON(["tcp:\(port)"])
        let warnings = try #require((alone["ports"] as? [[String: Any]])?.first?["warnings"] as? [String])
        #expect(warnings.contains { $0.contains("0.0.0.0:\(port) is IPv4 only") }, "\(warnings)")
        let intruder = try Child(python: """
            import socket, time
            def v6(only):
                s = socket.socket(socket.AF_INET6); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1 if only else 0)
                s.bind(("::", \(port))); s.listen(); return s
            v6(True).close()
            held = v6(False)
            print("ready", flush=True)
            time.sleep(30)
            """, asNobody: true)
        #expect(intruder.line(timeout: 10) == "ready")
        let (_, both) = try whoJSON(["tcp:\(port)"])
        let shared = try #require((both["ports"] as? [[String: Any]])?.first?["warnings"] as? [String])
        #expect(shared.contains { $0.contains("sockets of 2 users share tcp port \(port)") && $0.contains("nobody") }, "\(shared)")
        let v6 = try sockets(both).first { ($0["family"] as? String) == "ipv6" }
        #expect(v6?["dualStack"] as? Bool == true, "read through pidfd_getfd: \(String(describing: v6))")
        let text = try who(["tcp:\(port)"]).output
        #expect(text.contains("warning") && text.contains("sockets of 2 users share"), "\(text)")
    }
}

extension WhoTests {
    @Test("a process title rewritten in place (setproctitle, as nginx's workers) is shown without its NUL padding",
          .enabled(if: gcc != nil, "gcc is missing"))
    func processTitleWithoutPadding() throws {
        let folder = try TemporaryFolder()
        let source = try folder.write("titled.c", """
            #include <arpa/inet.h>
            #include <stdio.h>
            #include <string.h>
            #include <sys/socket.h>
            #include <unistd.h>
            int main(int argc, char **argv) {
                size_t length = (size_t)(argv[argc - 1] + strlen(argv[argc - 1]) - argv[0]);
                memset(argv[0], 0, length);  /* what setproctitle does: the old arguments become NUL padding */
                strcpy(argv[0], "titled: worker process");
                int s = socket(AF_INET, SOCK_STREAM, 0);
                struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
                socklen_t n = sizeof a;
                bind(s, (struct sockaddr *)&a, sizeof a); listen(s, 8); getsockname(s, (struct sockaddr *)&a, &n);
                printf("%d\\n", ntohs(a.sin_port)); fflush(stdout);
                sleep(30);
                return 0;
            }
            """)
        let binary = folder.path + "/titled"
        let build = try capture([gcc!, "-o", binary, source])
        try #require(build.status == 0, "\(build.stderr)")
        let child = try Child([binary, "padding-one", "padding-two", "padding-three"])
        let port = try child.port()
        let (status, document) = try whoJSON(["\(port)"])
        #expect(status == 0)
        let process = try #require((try sockets(document).first?["processes"] as? [[String: Any]])?.first)
        #expect(process["commandLine"] as? [String] == ["titled: worker process"], "\(process)")
    }

    @Test("who -5: not a port, said so, exit 2 (who's bad input)")
    func negativePort() throws {
        let (status, output) = try who(["-5"])
        #expect(status == 2)
        #expect(output.contains("\"-5\" is not a port (0 to 65535)"), "\(output)")
    }
}
