import Foundation
import Glibc
import PortReuse
import TestSupport
import Testing

@Suite("portreuse run")
struct RunTests {
    /// `python3 -u -m http.server PORT --bind ADDRESS -d FOLDER`, optionally under `portreuse run ARGS --`.
    func httpServer(port: UInt16, bind: String = "127.0.0.1", folder: TemporaryFolder, run: [String]? = nil) throws -> Child {
        let server = [systemPython, "-u", "-m", "http.server", String(port), "--bind", bind, "--directory", folder.path]
        return try Child((run.map { [portreuse, "run"] + $0 + ["--"] } ?? []) + server, discardingStandardError: true)
    }

    @Test("two python3 -m http.server on one port: refused without the shim, both answer with it")
    func twoHTTPServers() throws {
        let port = try freePort()
        let (a, b) = (try servedFolder(named: "A"), try servedFolder(named: "B"))

        // Without the shim the second one fails: http.server sets SO_REUSEADDR, which does not share a live port.
        let plain = try httpServer(port: port, folder: a)
        #expect(plain.line()?.contains("port \(port)") == true)
        let refused = try capture([systemPython, "-m", "http.server", String(port), "--bind", "127.0.0.1"], timeout: 20)
        #expect(refused.status != 0)
        #expect(refused.stderr.contains("Address already in use"))
        plain.signal(SIGKILL)
        plain.waitForExit()

        // With it both bind, both answer, and the kernel spreads the connections. One goes through a shell,
        // to show that child processes inherit the shim.
        let first = try httpServer(port: port, folder: a, run: [])
        #expect(first.line()?.contains("Serving HTTP on 127.0.0.1 port \(port)") == true)
        let second = try Child(
            [portreuse, "run", "--", "/bin/sh", "-c", "exec \"$0\" \"$@\" 2>/dev/null", systemPython, "-u", "-m", "http.server",
             String(port), "--bind", "127.0.0.1", "--directory", b.path], discardingStandardError: true)
        #expect(second.line()?.contains("Serving HTTP on 127.0.0.1 port \(port)") == true)

        var answers: [String: Int] = [:]
        for _ in 0..<40 {
            answers[try httpGet(SocketAddress(ip: .loopbackIPv4, port: port), "/who"), default: 0] += 1
        }
        #expect(answers.values.reduce(0, +) == 40)
        #expect((answers["A"] ?? 0) > 0 && (answers["B"] ?? 0) > 0, "both servers answer: \(answers)")
        withExtendedLifetime((first, second)) {}
    }

    /// A server without options of its own that accepts one connection, closes it first (so its end waits
    /// in TIME_WAIT), and exits.
    static let closeFirstServer = """
        import socket, sys
        s = socket.socket()
        s.bind(("127.0.0.1", int(sys.argv[1])))
        s.listen(8)
        print("listening", flush=True)
        c, _ = s.accept()
        c.sendall(b"bye")
        c.close()
        s.close()
        """

    /// In a network namespace of its own (its own TIME-WAIT table: the suite's loaded tests can fill the host's
    /// tcp_max_tw_buckets, and the kernel then drops new TIME-WAIT sockets at once): the old server under run
    /// answers and closes first, the same program without run is refused, and under run again it binds at once.
    static let timeWaitDriver = """
        import socket, subprocess, sys
        portreuse, python, server = sys.argv[1], sys.argv[2], sys.argv[3]
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        def serve(run):
            command = ([portreuse, "run", "--policy", "restartable", "--"] if run else []) + [python, "-c", server, "8080"]
            return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        def talk(process):
            print("old:", process.stdout.readline().strip())
            # Read to the server's FIN before closing: the server closes first, so its side is the one in TIME-WAIT.
            c = socket.create_connection(("127.0.0.1", 8080), timeout=30); data = c.recv(16)
            while c.recv(16): pass
            c.close()
            process.wait(timeout=30)
            print("answer:", data.decode())
        talk(serve(True))
        # The server's side (local port 8080; a simultaneous close puts the client's side in TIME-WAIT too).
        print("time-wait:", len(subprocess.run(["ss", "-Htan", "state", "time-wait", "sport", "=", ":8080"], capture_output=True, text=True).stdout.splitlines()))
        # Without run it must fail in bind: its first line says whether it listened instead (no fixed wait, which
        # a loaded machine outlasts while python starts).
        plain = serve(False)
        if plain.stdout.readline().strip() == "listening": plain.kill(); print("plain: listened beside the TIME_WAIT"); plain.wait()
        else: _, error = plain.communicate(timeout=30); print("plain:", plain.returncode, "EADDRINUSE" if "Address already in use" in error else error.strip()[-200:])
        talk(serve(True))
        """

    @Test("a restart while the old server's connection sits in TIME_WAIT binds at once", .needsRoot("a network namespace of its own (unshare -n)"))
    func restartDuringTimeWait() throws {
        let result = try capture(["/usr/bin/unshare", "-n", systemPython, "-c", Self.timeWaitDriver, portreuse, systemPython, Self.closeFirstServer], timeout: 120)
        #expect(result.status == 0, "\(result.stderr)")
        #expect(result.output == """
            old: listening
            answer: bye
            time-wait: 1
            plain: 1 EADDRINUSE
            old: listening
            answer: bye

            """, "\(result.stderr)")
    }

    @Test("--bind moves a program to another port and address, IPv4 and IPv6")
    func bindMovesTheProgram() throws {
        let folder = try servedFolder(named: "moved")
        // Every port is reserved on 127.0.0.1 and [::1] at once: no TIME-WAIT on either, nobody else takes
        // it. The programs bind beside the reservation (http.server and the shim's shared policy set
        // SO_REUSEADDR, see PortReservation), which is released once they serve; `asked` stays reserved, so
        // that nothing listens there.
        let asked = try PortReservation()
        let moved = try PortReservation()

        let server = try httpServer(port: asked.port, folder: folder, run: ["--bind", "127.0.0.1:\(moved.port)"])
        #expect(server.line()?.contains("Serving HTTP on 127.0.0.1 port \(moved.port)") == true)
        moved.release()
        #expect(try httpGet(SocketAddress(ip: .loopbackIPv4, port: moved.port), "/who") == "moved")
        #expect(throws: PortReuseError.self) { try httpGet(SocketAddress(ip: .loopbackIPv4, port: asked.port)) }

        // The port alone keeps the program's address.
        let portOnly = try PortReservation()
        let second = try httpServer(port: asked.port, folder: folder, run: ["--bind", ":\(portOnly.port)"])
        #expect(second.line()?.contains("Serving HTTP on 127.0.0.1 port \(portOnly.port)") == true)
        portOnly.release()

        // IPv6: a program on [::] (dual-stack) moved to [::1].
        let v6 = try PortReservation()
        let third = try httpServer(port: asked.port, bind: "::", folder: folder, run: ["--bind", "[::1]:\(v6.port)"])
        #expect(third.line()?.contains("Serving HTTP on ::1 port \(v6.port)") == true)
        v6.release()
        #expect(try httpGet(SocketAddress(ip: .loopbackIPv6, port: v6.port), "/who") == "moved")

        // An IPv4 address for a dual-stack IPv6 socket becomes the IPv4-mapped address.
        let mapped = try PortReservation()
        let fourth = try httpServer(port: asked.port, bind: "::", folder: folder, run: ["--bind", "127.0.0.1:\(mapped.port)"])
        #expect(fourth.line()?.contains("Serving HTTP on ::ffff:127.0.0.1 port \(mapped.port)") == true)
        mapped.release()
        #expect(try httpGet(SocketAddress(ip: .loopbackIPv4, port: mapped.port), "/who") == "moved")
        withExtendedLifetime((server, second, third, fourth, asked)) {}
    }

    @Test("a host name in --bind is resolved by the CLI; bad --bind values are clear errors")
    func bindValues() throws {
        let probe = "import socket; s = socket.socket(); s.bind(('0.0.0.0', 0)); print(s.getsockname()[0])"
        let named = try capture([portreuse, "run", "--bind", "localhost", "--", systemPython, "-c", probe])
        #expect(named.output == "127.0.0.1\n")

        for (value, words) in [("nowhere:99999", "is not a port"), ("tcp:8080", "drop the network prefix"),
                               ("[::1", "has no \"]\""), ("no such host!", "contains spaces")] {
            let result = try capture([portreuse, "run", "--bind", value, "--", "/bin/true"])
            #expect(result.status == 64, "--bind \(value)")
            #expect(result.stderr.contains(words), "--bind \(value): \(result.stderr)")
        }
    }

    @Test("a statically linked program is refused by --intercept preload with the reason and what to use instead", .enabled(if: gcc != nil, "gcc is missing: cannot build a static program"))
    func staticProgramRefused() throws {
        let folder = try TemporaryFolder()
        let source = try folder.write("hello.c", "#include <stdio.h>\nint main(void) { puts(\"ran\"); return 0; }\n")
        for (name, flag) in [("static", "-static"), ("static-pie", "-static-pie"), ("dynamic", "")] {
            let build = try capture([gcc!] + (flag.isEmpty ? [] : [flag]) + ["-o", folder.path + "/" + name, source])
            try #require(build.status == 0, "gcc \(flag): \(build.stderr)")
        }
        let script = try folder.write("script", "#!\(folder.path)/static\n", executable: true)
        let viaEnv = try folder.write("via-env", "#!/usr/bin/env static\n", executable: true)

        for program in [folder.path + "/static", folder.path + "/static-pie", script, viaEnv] {
            let refused = try capture([portreuse, "run", "--intercept", "preload", "--", program], environment: environment(["PATH": folder.path + ":/usr/bin:/bin"]))
            #expect(refused.status == 126, "\(program)")
            #expect(refused.output.isEmpty, "\(program) must not run")
            #expect(refused.stderr.contains("is statically linked"), "\(program): \(refused.stderr)")
            #expect(refused.stderr.contains("LD_PRELOAD cannot load the shim"))
            #expect(refused.stderr.contains("portreuse up"))
        }
        let dynamic = try capture([portreuse, "run", "--", folder.path + "/dynamic"])
        #expect(dynamic.status == 0)
        #expect(dynamic.output == "ran\n")
    }

    @Test("a set-user-ID program of another user is refused; one of our own user runs", .needsRoot("needs root to give a file to user nobody"))
    func setUserIDRefused() throws {
        // Below the build folder rather than /tmp, which may be mounted nosuid (the bits would do nothing).
        let folder = productsFolder + "/setuid-test-\(getpid())"
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let (other, own) = (folder + "/id-nobody", folder + "/id-root")
        for file in [other, own] { try copyExecutable("/usr/bin/id", to: file) }
        chown(other, 65534, 65534)
        chmod(other, 0o4755)
        chmod(own, 0o4755)

        let refused = try capture([portreuse, "run", "--", other, "-u"])
        #expect(refused.status == 126)
        #expect(refused.output.isEmpty)
        #expect(refused.stderr.contains("is set-user-ID to nobody (uid 65534)"))
        #expect(refused.stderr.contains("ignores LD_PRELOAD"))
        #expect(refused.stderr.contains("portreuse up"))

        // Set-user-ID to the user who runs it: no secure mode, the shim reaches it.
        let runs = try capture([portreuse, "run", "--", own, "-u"])
        #expect(runs.status == 0)
        #expect(runs.output == "0\n")
    }

    @Test("the command is found through PATH like a shell does; a missing one exits 127, a non-executable one 126")
    func commandLookup() throws {
        let folder = try TemporaryFolder()
        try folder.write("greet", "#!/bin/sh\necho hello from greet\n", executable: true)
        try folder.write("plain", "not a program\n")
        let path = environment(["PATH": "/nonexistent:" + folder.path + ":/usr/bin:/bin"])

        let found = try capture([portreuse, "run", "--", "greet"], environment: path)
        #expect(found.status == 0)
        #expect(found.output == "hello from greet\n")

        let missing = try capture([portreuse, "run", "--", "no-such-program-here"], environment: path)
        #expect(missing.status == 127)
        #expect(missing.stderr.contains("command not found: no-such-program-here"))

        let notExecutable = try capture([portreuse, "run", "--", "plain"], environment: path)
        #expect(notExecutable.status == 126)
        #expect(notExecutable.stderr.contains("is not executable"))

        let noFile = try capture([portreuse, "run", "--", folder.path + "/nothing"], environment: path)
        #expect(noFile.status == 127)
        #expect(noFile.stderr.contains("no such file"))

        let noCommand = try capture([portreuse, "run"])
        #expect(noCommand.status == 64)
        #expect(noCommand.stderr.contains("give the program to run"))

        // Without "--", the program's own options stay the program's.
        let withoutSeparator = try capture([portreuse, "run", "/bin/sh", "-c", "echo $0 $1", "--policy", "x"])
        #expect(withoutSeparator.output == "--policy x\n")
    }

    @Test("the program becomes the process: stdin, stdout, exit status, signals, pid and signal dispositions are its own")
    func passthrough() throws {
        let echoed = try capture([portreuse, "run", "--", "/bin/cat"], input: "line one\nline two\n")
        #expect(echoed.output == "line one\nline two\n")
        #expect(echoed.stderr.isEmpty)

        let exited = try capture([portreuse, "run", "--", "/bin/sh", "-c", "exit 7"])
        #expect(exited.status == 7 && !exited.signalled)

        let killed = try capture([portreuse, "run", "--", "/bin/sh", "-c", "kill -TERM $$"])
        #expect(killed.signalled && killed.status == SIGTERM)

        let child = try Child([portreuse, "run", "--", "/bin/sh", "-c", "echo $$; read line"])
        #expect(child.line() == String(child.pid))
        child.send("done")

        // Blocked and ignored signals as the program would have them started directly.
        let signals = ["/bin/sh", "-c", "grep -E '^Sig(Blk|Ign)' /proc/self/status"]
        #expect(try capture([portreuse, "run", "--"] + signals).output == capture(signals).output)
    }

    @Test("LD_PRELOAD gets the shim first and keeps what was preloaded; the flags replace inherited shim variables")
    func environmentForTheProgram() throws {
        let libc = libcPath  // as this process loaded it (/proc/self/maps), whatever the distribution
        let inherited = environment(["LD_PRELOAD": libc, "REUSE_PORT": "0", "BIND_PORT": "1", "KEEP_ME": "yes"])
        let shown = try capture(
            [portreuse, "run", "--verbose", "--", "/bin/sh", "-c",
             "echo $LD_PRELOAD; echo ${REUSE_PORT-unset} ${BIND_PORT-unset} $PORTREUSE_POLICY $PORTREUSE_VERBOSE $KEEP_ME"],
            environment: inherited)
        #expect(shown.status == 0)
        #expect(shown.output == "\(shimLibrary.resolvingSymlinks):\(libc)\nunset unset shared 1 yes\n")
        #expect(shown.stderr.contains("left out inherited BIND_PORT, REUSE_PORT (the flags say it all)"))

        // Run inside another portreuse run: the shim is not preloaded twice.
        let nested = try capture([portreuse, "run", "--", portreuse, "run", "--", "/bin/sh", "-c", "echo $LD_PRELOAD"])
        #expect(nested.output == "\(shimLibrary.resolvingSymlinks)\n")
    }

    @Test("a shim that the user cannot read is a clear error before the program starts", .needsRoot("needs root to run as user nobody"))
    func unreadableShim() throws {
        let everyone = try productsForEveryone()
        chmod(everyone.path + "/libCReuseShim.so", 0o600)
        let refused = try capture(asNobody + [everyone.path + "/portreuse", "run", "--", "/bin/echo", "ran"])
        #expect(refused.status == 1)
        #expect(refused.output.isEmpty)
        #expect(refused.stderr.contains("this user (uid 65534) cannot read the LD_PRELOAD shim \(everyone.path)/libCReuseShim.so: Permission denied"))

        // A folder on the way that the user cannot enter: the same error, not "missing".
        let hidden = try TemporaryFolder()
        chmod(hidden.path, 0o755)
        try FileManager.default.createDirectory(atPath: hidden.path + "/private", withIntermediateDirectories: false, attributes: [.posixPermissions: 0o711])
        try copyExecutable(portreuse, to: hidden.path + "/private/portreuse")
        try FileManager.default.createDirectory(atPath: hidden.path + "/private/sealed", withIntermediateDirectories: false, attributes: [.posixPermissions: 0o700])
        symlink(hidden.path + "/private/sealed/libCReuseShim.so", hidden.path + "/private/libCReuseShim.so")
        try copyExecutable(shimLibrary, to: hidden.path + "/private/sealed/libCReuseShim.so")
        let blocked = try capture(asNobody + [hidden.path + "/private/portreuse", "run", "--", "/bin/echo", "ran"])
        #expect(blocked.status == 1)
        #expect(blocked.stderr.contains("cannot read the LD_PRELOAD shim"), "\(blocked.stderr)")
    }

    @Test("--print-library prints the shim next to the executable, also after both are copied elsewhere")
    func printLibrary() throws {
        let printed = try capture([portreuse, "run", "--print-library"])
        #expect(printed.status == 0)
        #expect(printed.output == shimLibrary.resolvingSymlinks + "\n")

        let folder = try TemporaryFolder()
        try copyExecutable(portreuse, to: folder.path + "/portreuse")
        let alone = try capture([folder.path + "/portreuse", "run", "--print-library"])
        #expect(alone.status == 1)
        #expect(alone.stderr.contains("libCReuseShim.so is not next to the portreuse executable (\(folder.path))"))
        #expect(alone.stderr.contains("swift build -c release --product CReuseShim"))

        try copyExecutable(shimLibrary, to: folder.path + "/libCReuseShim.so")
        let together = try capture([folder.path + "/portreuse", "run", "--print-library"])
        #expect(together.output == folder.path + "/libCReuseShim.so\n")
        let works = try capture([folder.path + "/portreuse", "run", "--", systemPython, "-c", optionProbe])
        #expect(works.output == probeOutput(.shared))
    }

    @Test("in a SwiftPM build folder, a missing or outdated shim is built on first use, with its output on stderr")
    func buildsTheShimOnDemand() throws {
        // A package with only the shim's targets (the shim and the rules it links), and a copy of portreuse in its
        // build folder.
        let package = try TemporaryFolder()
        let manifest = try String(contentsOfFile: packageRoot + "/Package.swift", encoding: .utf8)
        let target = try #require(manifest.range(of: "        .target(\n            name: \"CReuseShim\""))
        let rules = "        .target(name: \"CReuseRules\"),\n"
        try #require(manifest.contains(rules))
        let targetText = rules + String(manifest[target.lowerBound...]).components(separatedBy: "        ),\n")[0] + "        ),\n"
        try package.write("Package.swift", """
            // swift-tools-version: 6.1
            import PackageDescription
            let package = Package(
                name: "ShimOnly",
                products: [.library(name: "CReuseShim", type: .dynamic, targets: ["CReuseShim"])],
                targets: [
            \(targetText)    ]
            )
            """)
        try FileManager.default.copyItem(atPath: packageRoot + "/Sources", toPath: package.path + "/Sources")
        for other in try FileManager.default.contentsOfDirectory(atPath: package.path + "/Sources") where !["CReuseShim", "CReuseRules"].contains(other) {
            try FileManager.default.removeItem(atPath: package.path + "/Sources/" + other)
        }
        // SwiftPM's real products folder is .build/TRIPLE/debug; .build/debug is a link to it.
        let triple = URL(fileURLWithPath: productsFolder).deletingLastPathComponent().lastPathComponent
        let bin = package.path + "/.build/\(triple)/debug"
        try FileManager.default.createDirectory(atPath: bin, withIntermediateDirectories: true)
        try copyExecutable(portreuse, to: bin + "/portreuse")

        let first = try capture([bin + "/portreuse", "run", "--print-library"], timeout: 300)
        #expect(first.status == 0, "\(first.stderr)")
        #expect(first.output == bin + "/libCReuseShim.so\n", "stdout holds only the path")
        #expect(first.stderr.contains("portreuse: building the LD_PRELOAD shim (first use): swift build --package-path \(package.path)"))
        #expect(first.stderr.contains("--configuration debug --product CReuseShim"))

        let second = try capture([bin + "/portreuse", "run", "--", systemPython, "-c", optionProbe], timeout: 60)
        #expect(second.stderr.isEmpty)
        #expect(second.output == probeOutput(.shared))

        // A source newer than the library: built again.
        let source = package.path + "/Sources/CReuseShim/shim.c"
        try FileManager.default.setAttributes([.modificationDate: Date().addingTimeInterval(5)], ofItemAtPath: source)
        let third = try capture([bin + "/portreuse", "run", "--print-library"], timeout: 300)
        #expect(third.stderr.contains("(its sources changed)"))
        #expect(third.status == 0)
    }

    @Test("--transparent sets IP_TRANSPARENT; without CAP_NET_ADMIN it is a clear error before the program starts", .needsRoot("needs root for CAP_NET_ADMIN and to run as user nobody"))
    func transparent() throws {
        let probe = "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockopt(socket.SOL_IP, 19))"
        let set = try capture([portreuse, "run", "--transparent", "--", systemPython, "-c", probe])
        #expect(set.output == "1\n")

        let everyone = try productsForEveryone()
        let refused = try capture(asNobody + [everyone.path + "/portreuse", "run", "--transparent", "--", systemPython, "-c", probe])
        #expect(refused.status == 1)
        #expect(refused.output.isEmpty)
        #expect(refused.stderr.contains("--transparent needs CAP_NET_ADMIN"), "\(refused.stderr)")
    }
}

extension String {
    /// The path with symlinks resolved (`.build/debug` is a link to the triple's folder).
    var resolvingSymlinks: String { URL(fileURLWithPath: self).resolvingSymlinksInPath().path }
}

extension RunTests {
    /// Binds `socket.AF_INET` TCP to 0.0.0.0:ASKED and prints where it is bound.
    static let ipv4Binder = """
        import socket, sys
        s = socket.socket(); s.bind(("0.0.0.0", int(sys.argv[1]))); print("%s:%d" % s.getsockname())
        """

    @Test("--bind '[::1]:P' on a program's IPv4 socket: the port applies, the address cannot, and run says which",
          arguments: ["preload", "kernel"])
    func bindAppliesThePortThatFits(intercept: String) throws {
        let asked = try PortReservation(), moved = try PortReservation()
        asked.release()
        moved.release()
        let result = try capture([portreuse, "run", "--intercept", intercept, "--verbose", "--bind", "[::1]:\(moved.port)", "--",
                                  systemPython, "-c", Self.ipv4Binder, "\(asked.port)"], timeout: 30)
        #expect(result.status == 0, "\(result.stderr)")
        #expect(result.output == "0.0.0.0:\(moved.port)\n", "\(result.stderr)")
        #expect(result.stderr.contains("IPv6 address and this is an IPv4 socket"), "\(result.stderr)")
        #expect(result.stderr.contains(intercept == "preload" ? "its port \(moved.port) is applied" : "its port is"), "\(result.stderr)")
    }

    @Test("--source reaches a UDP client that binds 0.0.0.0:0 before it sends (node dgram, Java DatagramSocket)",
          arguments: ["preload", "kernel"])
    func sourceForWildcardBoundUDP(intercept: String) throws {
        let receiver = try DatagramSocket(udp: "127.0.0.1:0", policy: .exclusive)
        let source = try PortReservation(.udp)
        source.release()
        let client = """
            import socket, sys
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", 0))
            s.sendto(b"hello", ("127.0.0.1", int(sys.argv[1]))); print("%s:%d" % s.getsockname())
            """
        let result = try capture([portreuse, "run", "--intercept", intercept, "--source", "127.0.0.1:\(source.port)", "--",
                                  systemPython, "-c", client, "\(receiver.localAddress.port)"], timeout: 30)
        #expect(result.status == 0, "\(result.stderr)")
        #expect(result.output == "127.0.0.1:\(source.port)\n", "\(result.stderr)")
        let datagram = try #require(try receiver.receive(timeout: .seconds(5)))
        #expect(datagram.sender.port == source.port)
    }
}

extension RunTests {
    @Test("--bind onto one address of a program with two listeners: said once, as a warning (API and admin ports would split connections)",
          arguments: ["preload", "kernel"])
    func bindMergesListenersWarns(intercept: String) throws {
        let (api, admin, moved) = (try PortReservation(), try PortReservation(), try PortReservation())
        for reservation in [api, admin, moved] { reservation.release() }
        let program = """
            import socket, sys
            for port in sys.argv[1:]:
                s = socket.socket(); s.bind(("127.0.0.1", int(port))); s.listen(); print("%s:%d" % s.getsockname())
            """
        let result = try capture([portreuse, "run", "--intercept", intercept, "--bind", "127.0.0.1:\(moved.port)", "--",
                                  systemPython, "-c", program, "\(api.port)", "\(admin.port)", "\(api.port + 0)"], timeout: 30)
        #expect(result.status == 0, "\(result.stderr)")
        #expect(result.output == String(repeating: "127.0.0.1:\(moved.port)\n", count: 3), "\(result.stderr)")
        #expect(result.stderr.components(separatedBy: "moves a second listener").count - 1 == 1, "once: \(result.stderr)")
        #expect(result.stderr.contains("127.0.0.1:\(admin.port)"), "\(result.stderr)")
    }
}
