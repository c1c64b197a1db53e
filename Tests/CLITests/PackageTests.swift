import Foundation
import Glibc
import PortReuse
import TestSupport
import Testing

/// The Debian package that `bash scripts/package` makes (`.ci/run` makes it before the tests), unpacked into a
/// folder and run in a mount namespace where the Swift toolchain is hidden: what a server without Swift gets.
@Suite("release package: portreuse without a Swift toolchain", .serialized)
struct PackageTests {
    /// The package in dist/, if `scripts/package` made one.
    static let package: String? = {
        let dist = packageRoot + "/dist"
        return (try? FileManager.default.contentsOfDirectory(atPath: dist))?.filter { $0.hasPrefix("portreuse_") && $0.hasSuffix(".deb") }.sorted().last
            .map { dist + "/" + $0 }
    }()

    /// The folder of the toolchain that runs these tests (/opt/swift for /opt/swift/usr/bin/swift); nil where the
    /// toolchain shares its folder with the system (/usr), which cannot be hidden.
    static let toolchain: String? = {
        guard let found = try? capture(["/bin/sh", "-c", "command -v swift"]), found.status == 0 else { return nil }
        let swift = URL(fileURLWithPath: found.output.trimmingCharacters(in: .whitespacesAndNewlines)).resolvingSymlinksInPath()
        let folder = swift.deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path  // …/usr/bin/swift
        return ["/", "/usr", "/usr/local"].contains(folder) || !FileManager.default.fileExists(atPath: folder + "/usr/lib/swift") ? nil : folder
    }()

    /// `command` in a mount namespace of its own where the toolchain's folder is an empty tmpfs.
    static func withoutToolchain(_ command: [String]) -> [String] {
        ["/usr/bin/unshare", "-m", "/bin/sh", "-c", "mount -t tmpfs tmpfs \"$0\" && exec \"$@\"", toolchain ?? "/nonexistent"] + command
    }

    /// The package unpacked into a temporary folder: its `usr/bin/portreuse`.
    static func unpacked(in folder: TemporaryFolder) throws -> String {
        let package = try #require(package)
        let unpack = try capture(["/usr/bin/dpkg-deb", "-x", package, folder.path + "/root"])
        #expect(unpack.status == 0, "\(unpack.stderr)")
        return folder.path + "/root/usr/bin/portreuse"
    }

    @Test("the packaged portreuse runs where no Swift is: --version, run (shim and kernel), who, and up with a reload",
          .needsRoot("a mount namespace that hides the toolchain"),
          .enabled(if: package != nil, "no dist/portreuse_*.deb: run `bash scripts/package` first (.ci/run does)"),
          .enabled(if: toolchain != nil, "the Swift toolchain's folder is unknown"))
    func runsWithoutToolchain() throws {
        let folder = try TemporaryFolder()
        let portreuse = try Self.unpacked(in: folder)

        let libraries = try capture(Self.withoutToolchain(["/usr/bin/ldd", portreuse]))
        #expect(libraries.status == 0 && !libraries.output.lowercased().contains("swift") && !libraries.output.contains("not found"), "\(libraries.output)")
        let version = try capture(Self.withoutToolchain([portreuse, "--version"]))
        #expect(version.status == 0 && version.output.contains("(commit "), "\(version.output)\(version.stderr)")
        let hidden = try capture(Self.withoutToolchain(["/bin/ls", "-A", Self.toolchain!]))
        #expect(hidden.output.isEmpty, "the toolchain is hidden: \(hidden.output)")

        // run: two listeners on one port in one program, which fails without portreuse (EADDRINUSE).
        let port = try freePort()
        let twice = "import socket\nfor _ in range(2):\n    s = socket.socket(); s.bind(('127.0.0.1', \(port))); s.listen(); globals().setdefault('k', []).append(s)\nprint('both')"
        for method in ["preload", "kernel"] {
            let run = try capture(Self.withoutToolchain([portreuse, "run", "--policy", "shared", "--intercept", method, "--", systemPython, "-c", twice]), timeout: 60)
            #expect(run.status == 0 && run.output == "both\n", "run --intercept \(method): \(run.output)\(run.stderr)")
        }

        // up, with a program that binds by itself (python's http.server: up swaps its socket in), and a reload.
        let served = folder.path + "/www"
        try FileManager.default.createDirectory(atPath: served, withIntermediateDirectories: true)
        try "packaged\n".write(toFile: served + "/index.html", atomically: true, encoding: .utf8)
        let pidFile = folder.path + "/up.pid"
        let up = try spawn(
            Self.withoutToolchain([portreuse, "up", "--listen", "127.0.0.1:\(port)", "--pid-file", pidFile, "--",
                                   systemPython, "-m", "http.server", "--bind", "127.0.0.1", "--directory", served, String(port)]),
            log: folder.path + "/up.log")
        defer {
            kill(up, SIGTERM)
            reap(up, timeout: 20)
        }
        let address = SocketAddress(ip: .loopbackIPv4, port: port)
        #expect(waitFor(timeout: 30) { (try? httpGet(address, "/index.html"))?.hasSuffix("packaged\n") == true ? true : nil } == true,
                "\((try? String(contentsOfFile: folder.path + "/up.log", encoding: .utf8)) ?? "")")
        let who = try capture(Self.withoutToolchain([portreuse, "who", String(port)]))
        #expect(who.status == 0 && who.output.contains("portreuse"), "\(who.output)\(who.stderr)")
        let reload = try capture(Self.withoutToolchain([portreuse, "up", "reload", "--pid-file", pidFile]), timeout: 60)
        #expect(reload.status == 0 && reload.output.contains("generation 2 ready"), "\(reload.output)\(reload.stderr)")
        #expect((try? httpGet(address, "/index.html"))?.hasSuffix("packaged\n") == true)
        kill(up, SIGTERM)
        #expect(reap(up, timeout: 20)?.shellStatus == 0)
    }

    @Test("the package holds the manual pages and completions the argument parser made, and the files dpkg wants",
          .enabled(if: package != nil, "no dist/portreuse_*.deb: run `bash scripts/package` first (.ci/run does)"))
    func contents() throws {
        let listing = try capture(["/usr/bin/dpkg-deb", "-c", try #require(Self.package)])
        for path in ["./usr/bin/portreuse", "./usr/lib/portreuse/libCReuseShim.so", "./usr/share/man/man1/portreuse.1.gz",
                     "./usr/share/man/man1/portreuse.up.1.gz", "./usr/share/man/man1/portreuse.run.1.gz", "./usr/share/man/man1/portreuse.who.1.gz",
                     "./usr/share/bash-completion/completions/portreuse", "./usr/share/zsh/vendor-completions/_portreuse",
                     "./usr/share/fish/vendor_completions.d/portreuse.fish", "./usr/share/doc/portreuse/copyright",
                     "./usr/share/doc/portreuse/examples/systemd/app.service"] {
            #expect(listing.output.contains(" \(path)\n"), "\(path) is missing")
        }
        #expect(!listing.output.contains("demo-worker.1"), "hidden commands get no manual page")
        let fields = try capture(["/usr/bin/dpkg-deb", "-f", try #require(Self.package), "Package", "Version", "Depends"])
        #expect(fields.output.contains("Package: portreuse") && fields.output.contains("libc6"), "\(fields.output)")
    }
}
