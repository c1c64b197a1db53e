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
        .testTarget(name: "PortReuseTests", dependencies: ["PortReuse"]),
    ],
    swiftLanguageModes: [.v6]
)
