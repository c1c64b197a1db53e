// swift-tools-version: 6.1
import PackageDescription

let package = Package(
    name: "PortReuse",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "PortReuse", targets: ["PortReuse"]),
        .executable(name: "portreuse", targets: ["portreuse"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-system", from: "1.8.1"),
    ],
    targets: [
        .target(
            name: "PortReuse",
            dependencies: [.product(name: "SystemPackage", package: "swift-system")]
        ),
        .executableTarget(
            name: "portreuse",
            dependencies: [
                "PortReuse",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .target(name: "TestSupport", dependencies: ["PortReuse"], path: "Tests/TestSupport"),
        .testTarget(name: "PortReuseTests", dependencies: ["PortReuse", "TestSupport"]),
        .testTarget(name: "CLITests", dependencies: ["PortReuse", "TestSupport"]),

        // The README's quick start, compiled and run by the tests so that it stays true.
        .executableTarget(name: "quickstart", dependencies: ["PortReuse"], path: "Examples/quickstart"),

        // Benchmarks: plain executables that print ratios measured side by side in one run.
        // swift run -c release socket-bench
        .target(name: "CBaseline", path: "Benchmarks/CBaseline"),
        .executableTarget(name: "socket-bench", dependencies: ["PortReuse", "CBaseline"], path: "Benchmarks/socket-bench"),
        // swift build -c release && .build/release/who-bench
        .executableTarget(name: "who-bench", path: "Benchmarks/who-bench"),
    ],
    swiftLanguageModes: [.v6]
)
