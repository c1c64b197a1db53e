// swift-tools-version: 6.1
import PackageDescription

let package = Package(
    name: "PortReuse",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "PortReuse", targets: ["PortReuse"]),
        // SwiftNIO servers on PortReuse sockets: a policy for ServerBootstrap, one listener per event loop, adoption.
        .library(name: "PortReuseNIO", targets: ["PortReuseNIO"]),
        .executable(name: "portreuse", targets: ["portreuse"]),
        // The LD_PRELOAD shim of `portreuse run`, libCReuseShim.so, built next to the portreuse executable.
        .library(name: "CReuseShim", type: .dynamic, targets: ["CReuseShim"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-system", from: "1.8.1"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.3"),
    ],
    targets: [
        // The layers, bottom up: CPortReuseSystem → PortReuseSystem → PortReuse (the public library) →
        // PortReuseInterception → PortReuseTools → portreuse. CReuseShim (C, LD_PRELOAD) stands apart; it and
        // PortReuseInterception share CReuseRules.

        // The system calls Glibc's module map hides (accept4, pipe2, pidfd_*, prctl, setns, seccomp, …), declared
        // with their real types; the only code compiled with _GNU_SOURCE. Reached through the Swift system layers.
        .target(name: "CPortReuseSystem"),
        // The system layer (package access only): SystemError and systemCall, files and pipes, processes and
        // pidfds, the one posix_spawn, threads and signals. What the library's inspection and the tools share.
        .target(
            name: "PortReuseSystem",
            dependencies: ["CPortReuseSystem", .product(name: "SystemPackage", package: "swift-system")]
        ),
        // The public library: addresses, the sharing policy, sockets and their system calls, inspection of the
        // kernel's socket tables, socket activation. libc and swift-system, nothing more.
        .target(
            name: "PortReuse",
            dependencies: ["PortReuseSystem", "CPortReuseSystem", .product(name: "SystemPackage", package: "swift-system")]
        ),
        // The seccomp path of `portreuse run` and `up` (Linux): the user-notification interceptor, the rules it
        // applies to a caller's socket calls, the caller's privileges, the socket swap. Only the tools use it.
        .target(
            name: "PortReuseInterception",
            dependencies: ["PortReuse", "PortReuseSystem", "CReuseRules", .product(name: "SystemPackage", package: "swift-system")]
        ),
        // The rules both paths of `portreuse run` apply to a program's socket calls (the endpoint rewrite of --bind
        // and --source, IP_TRANSPARENT, IP_BIND_ADDRESS_NO_PORT), written once in C: the shim links it, the
        // interceptor calls it.
        .target(name: "CReuseRules"),
        // NIO lives here, never in PortReuse: the core library stays light.
        .target(
            name: "PortReuseNIO",
            dependencies: [
                "PortReuse",
                "PortReuseSystem",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),
        // The logic of the portreuse command (the supervisor of `up`, `run`'s shim configuration and program
        // inspection, `who`'s report, the demo), which the executable, the demo and the tests import.
        .target(
            name: "PortReuseTools",
            dependencies: [
                "PortReuse",
                "PortReuseSystem",
                "PortReuseInterception",
                "DemoServer",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                // up's --health listener (readyz, livez, metrics) on one event loop, apart from the supervisor.
                "PortReuseNIO",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ]
        ),
        // The portreuse command: argument parsing and @main (Linux only).
        .executableTarget(
            name: "portreuse",
            dependencies: [
                "PortReuse",
                "PortReuseSystem",
                "PortReuseInterception",
                "PortReuseTools",
                "DemoServer",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        // The tiny HTTP server of Examples/hello and of `portreuse demo`'s workers (portreuse demo-worker).
        .target(name: "DemoServer", dependencies: ["PortReuse", "PortReuseSystem"]),
        // C only, and linked against libc alone: it is loaded into programs that know nothing of Swift.
        // SwiftPM links every product with swiftrt.o and libswiftCore; -nostartfiles drops the first,
        // -static-stdlib turns the second into archives nothing pulls in, and the empty libstdc++.a and libm.a
        // in Sources/CReuseShim/link shadow the shared libstdc++ and libm that -static-stdlib still names
        // (a test reads the NEEDED entries). unsafeFlags are fine here: no other package depends on this target.
        .target(
            name: "CReuseShim",
            dependencies: ["CReuseRules"],
            exclude: ["link"],
            linkerSettings: [
                .unsafeFlags(
                    ["-nostartfiles", "-static-stdlib", "-L", Context.packageDirectory + "/Sources/CReuseShim/link"],
                    .when(platforms: [.linux]))
            ]
        ),
        .target(name: "TestSupport", dependencies: ["PortReuse", "PortReuseSystem"], path: "Tests/TestSupport"),
        .testTarget(name: "PortReuseTests", dependencies: ["PortReuse", "PortReuseSystem", "TestSupport"]),
        // The portreuse binary and the programs it runs, end to end.
        .testTarget(name: "CLITests", dependencies: ["PortReuse", "PortReuseSystem", "PortReuseInterception", "PortReuseTools", "TestSupport"]),
        // up's supervisor without the binary: the state machine alone, and a Supervisor stepped by the test.
        .testTarget(name: "SupervisorTests", dependencies: ["PortReuse", "PortReuseSystem", "PortReuseTools", "TestSupport"]),
        .testTarget(
            name: "PortReuseNIOTests",
            dependencies: [
                "PortReuseNIO", "PortReuseSystem", "TestSupport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),

        // The README's quick start, compiled and run by the tests so that it stays true.
        .executableTarget(name: "quickstart", dependencies: ["PortReuse"], path: "Examples/quickstart"),
        // A tiny HTTP server that runs under `portreuse up`, systemd or alone (tests, benchmarks, README).
        .executableTarget(
            name: "hello",
            dependencies: ["PortReuse", "DemoServer", .product(name: "ArgumentParser", package: "swift-argument-parser")],
            path: "Examples/hello"
        ),
        // The same hello on SwiftNIO with PortReuseNIO: one listener per event loop, or adopted from `portreuse up`.
        .executableTarget(
            name: "nio-hello",
            dependencies: [
                "PortReuseNIO",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            path: "Examples/nio-hello"
        ),
        // The README's PortReuseNIO block, compiled (DocumentationTests keeps the README the same as main.swift).
        .executableTarget(
            name: "nio-snippet",
            dependencies: [
                "PortReuse", "PortReuseNIO",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ],
            path: "Examples/nio-snippet"
        ),

        // Benchmarks: plain executables that print ratios measured side by side in one run.
        // swift run -c release socket-bench
        .target(name: "CBaseline", dependencies: ["CPortReuseSystem"], path: "Benchmarks/CBaseline"),
        .target(name: "BenchmarkSupport", dependencies: ["PortReuse", "PortReuseSystem"], path: "Benchmarks/BenchmarkSupport"),
        .executableTarget(name: "socket-bench", dependencies: ["PortReuse", "CBaseline", "BenchmarkSupport"], path: "Benchmarks/socket-bench"),
        // swift build -c release --product CReuseShim && swift run -c release shim-bench
        .executableTarget(name: "shim-bench", dependencies: ["PortReuse", "CBaseline", "BenchmarkSupport"], path: "Benchmarks/shim-bench"),
        // swift build -c release && .build/release/intercept-bench
        .executableTarget(name: "intercept-bench", dependencies: ["PortReuse", "PortReuseSystem", "CPortReuseSystem", "CBaseline", "BenchmarkSupport"], path: "Benchmarks/intercept-bench"),
        // swift build -c release && .build/release/who-bench
        .executableTarget(name: "who-bench", dependencies: ["PortReuse", "PortReuseSystem", "BenchmarkSupport"], path: "Benchmarks/who-bench"),
        // swift build -c release && .build/release/reload-bench
        .executableTarget(name: "reload-bench", dependencies: ["PortReuse", "PortReuseSystem", "BenchmarkSupport"], path: "Benchmarks/reload-bench"),
        // swift build -c release && .build/release/workers-bench
        .executableTarget(name: "workers-bench", dependencies: ["PortReuse", "PortReuseSystem", "BenchmarkSupport"], path: "Benchmarks/workers-bench"),
        // apt-get install wrk nginx-light; swift build -c release --product nio-hello
        // swift build -c release --product nio-bench && .build/release/nio-bench
        .executableTarget(name: "nio-bench", dependencies: ["BenchmarkSupport"], path: "Benchmarks/nio-bench"),
    ],
    swiftLanguageModes: [.v6]
)
