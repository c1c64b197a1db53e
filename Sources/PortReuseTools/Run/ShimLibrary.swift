import PortReuse
import SystemPackage
import PortReuseSystem

/// The LD_PRELOAD shim (`libCReuseShim.so`, the C target `CReuseShim`) that `portreuse run` loads into a
/// program, and where to find it.
///
/// SwiftPM puts executables and dynamic libraries in one folder, so the shim is looked up next to this
/// executable, found through `/proc/self/exe` (the real file, whatever the name or symlink it was started
/// by): that works from `swift run`, from `.build/release`, and after copying both files elsewhere. An
/// installation may also put it in `../lib/portreuse/` or `../lib/` beside the `bin` folder.
///
/// `swift build --product portreuse` and `swift run portreuse` do not build the dynamic library. When this
/// executable sits in a SwiftPM build folder (a `Package.swift` above it), a missing or outdated shim is
/// built on first use with `swift build --product CReuseShim` and the same configuration and scratch path,
/// after one line on stderr; anywhere else a missing shim is an error that says how to build it.
package struct ShimLibrary: Sendable {
    /// The file name SwiftPM gives the dynamic product `CReuseShim` on Linux.
    package static let fileName = "libCReuseShim.so"

    /// The absolute path of the shim.
    package let path: String

    /// Finds the shim, building it first when this executable runs from a SwiftPM build folder and the
    /// shim there is missing or older than its sources. `progress` receives one line before a build.
    package static func locate(progress: (String) -> Void = { printError($0) }) throws(CommandFailure) -> ShimLibrary {
        let executable = try CommandFailure.executable()
        let folder = Files.parent(of: executable)
        let besideExecutable = folder + "/" + fileName

        if let build = SwiftPMBuildFolder(folder) {
            if let reason = build.reasonToBuild(besideExecutable) {
                progress("portreuse: building the LD_PRELOAD shim (\(reason)): \(build.commandLine.joined(separator: " "))")
                try build.buildShim()
                guard Files.isRegularFile(besideExecutable) else {
                    throw CommandFailure("`\(build.commandLine.joined(separator: " "))` finished but \(besideExecutable) is missing")
                }
            }
            return try readable(besideExecutable)
        }

        let installFolder = Files.parent(of: folder)
        let candidates = [besideExecutable, installFolder + "/lib/portreuse/" + fileName, installFolder + "/lib/" + fileName]
        guard let found = candidates.first(where: Files.isRegularFile) else {
            if let blocked = candidates.first(where: { Files.status(of: $0, following: true) == nil && Errno.current == .permissionDenied }) {
                throw unreadable(blocked)
            }
            throw CommandFailure(
                """
                the LD_PRELOAD shim \(fileName) is not next to the portreuse executable (\(folder)), nor in \
                \(installFolder)/lib/portreuse or \(installFolder)/lib. It is built with the package: \
                `swift build -c release --product CReuseShim` puts it in .build/release/, beside portreuse; \
                copy both files together.
                """)
        }
        return try readable(found)
    }

    /// The program runs as this user: ld.so must be able to read the shim, or it only says "ignored".
    private static func readable(_ path: String) throws(CommandFailure) -> ShimLibrary {
        guard Files.isReadable(path) else { throw unreadable(path) }
        return ShimLibrary(path: path)
    }

    private static func unreadable(_ path: String) -> CommandFailure {
        CommandFailure(
            "this user (uid \(Processes.realUserID)) cannot read the LD_PRELOAD shim \(path): \(Files.errorText()). Make it and "
                + "the folders above it readable (chmod a+rx), or install portreuse and \(fileName) where every user can read them")
    }
}

/// The SwiftPM build folder an executable runs from (`ROOT/.build/x86_64-unknown-linux-gnu/debug`, the real
/// path behind `.build/debug`), and how to build the shim into it.
package struct SwiftPMBuildFolder {
    /// The package root: the nearest folder above with a Package.swift.
    package let packageRoot: String
    /// The scratch path (usually `ROOT/.build`).
    package let scratchPath: String
    /// `debug` or `release`.
    package let configuration: String

    /// Recognises `ROOT/SCRATCH/.../CONFIGURATION`; `nil` for any other folder.
    package init?(_ productsFolder: String) {
        let configuration = String(productsFolder.split(separator: "/").last ?? "")
        guard configuration == "debug" || configuration == "release" else { return nil }
        var child = productsFolder
        for _ in 0..<4 {
            let parent = Files.parent(of: child)
            guard parent != child else { return nil }
            if Files.isRegularFile(parent + "/Package.swift") {
                (packageRoot, scratchPath, self.configuration) = (parent, child, configuration)
                return
            }
            child = parent
        }
        return nil
    }

    package var commandLine: [String] {
        ["swift", "build", "--package-path", packageRoot, "--scratch-path", scratchPath, "--configuration", configuration,
         "--product", "CReuseShim"]
    }

    /// Why the shim must be built, or `nil` when it is there and newer than its sources.
    package func reasonToBuild(_ library: String) -> String? {
        guard let built = Files.modificationTime(library) else { return "first use" }
        let sources = packageRoot + "/Sources/CReuseShim"
        let newer = (Files.list(sources) + Files.list(sources + "/include").map { "include/" + $0 })
            .filter { $0.hasSuffix(".c") || $0.hasSuffix(".h") }
            .contains { (Files.modificationTime(sources + "/" + $0) ?? 0) > built }
        return newer ? "its sources changed" : nil
    }

    /// Runs `swift build` with its output on stderr: stdout belongs to the program that runs next.
    package func buildShim() throws(CommandFailure) {
        var spawn = ProcessSpawn(commandLine)
        spawn.searchPath = true
        spawn.standardInput = .inherit
        spawn.standardOutput = .other
        let status = (try? spawn.start()).flatMap { try? Processes.wait($0, noHang: false)?.status.shellStatus } ?? 127
        guard status == 0 else {
            throw CommandFailure("building the shim failed (`\(commandLine.joined(separator: " "))` exited with \(status))")
        }
    }
}
