import Foundation
import Glibc
import PortReuse
import TestSupport
import Testing

/// A real container: an image made here without a registry, from the release tarball (`bash scripts/package`),
/// the few libraries its binary needs and a static busybox, with `portreuse up` as its entrypoint and PID 1, run
/// by podman with runc (crun refuses this machine's cgroup layout; shared/DESIGN.md, "Containers here").
@Suite("a real container: portreuse up as PID 1 under podman", .serialized)
struct ContainerTests {
    static let podman = "/usr/bin/podman"
    static let busybox = ["/bin/busybox", "/usr/bin/busybox"].first { path in
        FileManager.default.isExecutableFile(atPath: path) && ((try? capture(["/usr/bin/ldd", path])).map { ($0.output + $0.stderr).contains("not a dynamic executable") } ?? false)
    }
    /// The release tarball in dist/, if `scripts/package` made one.
    static let tarball: String? = {
        let dist = packageRoot + "/dist"
        return (try? FileManager.default.contentsOfDirectory(atPath: dist))?.filter { $0.hasPrefix("portreuse-") && $0.hasSuffix(".tar.gz") }.sorted().last
            .map { dist + "/" + $0 }
    }()

    /// podman with the options this machine needs (DESIGN.md): runc, explicit limits, the host's network.
    static func run(_ arguments: [String]) -> [String] {
        [podman, "run", "--runtime", "runc", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024", "--network", "host"] + arguments
    }

    /// Builds the image as the README says: Packaging/container/make-root, then podman build with its Containerfile.
    static func image(in folder: TemporaryFolder) throws -> String {
        let made = try capture([packageRoot + "/Packaging/container/make-root", try #require(tarball), folder.path + "/root", try #require(busybox)])
        #expect(made.status == 0, "\(made.stderr)")
        let tag = "localhost/portreuse-test:\(getpid())"
        let built = try capture(
            [podman, "build", "--runtime", "runc", "-q", "-t", tag, "-f", packageRoot + "/Packaging/container/Containerfile", folder.path], timeout: 300)
        #expect(built.status == 0, "\(built.stderr)")
        return tag
    }

    /// Why containers cannot run here, or nil when a container of `image` runs and exits 0.
    static func cannotRun(_ image: String) throws -> String? {
        let probe = try capture(run(["--rm", image, "--version"]), timeout: 120)
        return probe.status == 0 ? nil : "podman cannot start a container here: \(probe.stderr.split(separator: "\n").last ?? "exit \(probe.status)")"
    }

    /// A value of /metrics, by its line's start (`portreuse_up_reloads_total{result="ready"}`).
    static func metric(_ health: SocketAddress, _ name: String) -> Double? {
        guard let text = try? httpGet(health, "/metrics") else { return nil }
        return text.split(separator: "\n").first { $0.hasPrefix(name + " ") }.flatMap { Double($0.split(separator: " ").last ?? "") }
    }

    @Test("10 reloads with podman kill --signal HUP under load: 0 failed; /readyz and /metrics; orphans reaped; podman stop gives the generation's status",
          .needsRoot("podman with runc"),
          .enabled(if: FileManager.default.isExecutableFile(atPath: podman), "podman is not installed (.ci/run installs it)"),
          .enabled(if: busybox != nil, "no static busybox (busybox-static; .ci/run installs it)"),
          .enabled(if: tarball != nil, "no dist/portreuse-*.tar.gz: run `bash scripts/package` first (.ci/run does)"))
    func podmanContainer() throws {
        let folder = try TemporaryFolder()
        let image = try Self.image(in: folder)
        defer { _ = try? capture([Self.podman, "rmi", "-f", image], timeout: 60) }
        if let reason = try Self.cannotRun(image) { try Test.cancel("skipped: \(reason)") }
        let (port, healthPort) = (try freePort(), try freePort())
        let name = "portreuse-test-\(getpid())-\(port)"
        let started = try capture(Self.run([
            "-d", "--name", name, image, "up", "--listen", "127.0.0.1:\(port)", "--health", "127.0.0.1:\(healthPort)", "--",
            "/bin/busybox", "httpd", "-f", "-p", "127.0.0.1:\(port)", "-h", "/www",
        ]), timeout: 120)
        #expect(started.status == 0, "\(started.stderr)")
        defer { _ = try? capture([Self.podman, "rm", "-f", name], timeout: 60) }
        let logs = { (try? capture([Self.podman, "logs", name]))?.stderr ?? "" }
        let (address, health) = (SocketAddress(ip: .loopbackIPv4, port: port), SocketAddress(ip: .loopbackIPv4, port: healthPort))
        #expect(waitFor(timeout: 30) { (try? httpGet(health, "/readyz"))?.contains("ready: generation 1 serves") == true ? true : nil } == true, "\(logs())")
        #expect((try? httpGet(address))?.hasSuffix("served from the container\n") == true, "\(logs())")

        let load = HTTPLoad(address, clients: 8)
        var reloads = 0
        if waitUntil(timeout: 30, { load.count > 20 }) {
            for number in 1...10 {
                #expect(try capture([Self.podman, "kill", "--signal", "HUP", name]).status == 0)
                guard waitUntil(timeout: 30, { Self.metric(health, "portreuse_up_reloads_total{result=\"ready\"}") == Double(number) }) else { break }
                reloads = number
                let before = load.count
                guard waitUntil(timeout: 30, { load.count > before + 20 }) else { break }
            }
        }
        let (answered, failures) = load.stop()
        print("measured: podman container, 10 reloads under 8 clients: \(answered) answered, \(failures.count) failed")
        #expect(reloads == 10, "\(logs())")
        #expect(failures.isEmpty, "\(failures.count) failed of \(answered): \(failures.prefix(3))\n\(logs())")
        #expect(Self.metric(health, "portreuse_up_generations{phase=\"ready\"}") == 1)

        // An orphan in the container (its parent, podman exec's shell, exits at once) is reaped by up, PID 1.
        #expect(try capture([Self.podman, "exec", name, "/bin/busybox", "sh", "-c", "/bin/busybox sleep 0.3 & exit 0"]).status == 0)
        let reaped = waitUntil(timeout: 10) {
            guard let table = try? capture([Self.podman, "exec", name, "/bin/busybox", "ps", "-o", "stat,comm"]) else { return false }
            return !table.output.split(separator: "\n").contains { $0.hasPrefix("Z") || $0.contains("sleep") }
        }
        #expect(reaped, "no zombie is left in the container")

        // podman stop: SIGTERM to up, which stops the generation (busybox httpd dies of it) and exits as it did.
        #expect(try capture([Self.podman, "stop", "-t", "20", name], timeout: 60).status == 0)
        let status = try capture([Self.podman, "inspect", name, "--format", "{{.State.ExitCode}}"])
        #expect(status.output.trimmingCharacters(in: .whitespacesAndNewlines) == "\(128 + SIGTERM)", "\(status.output)\n\(logs())")
        #expect(logs().contains("portreuse up[1]"), "up is PID 1")
    }
}
