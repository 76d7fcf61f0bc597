// swift-tools-version: 6.2
import PackageDescription

// CI sets TERMINUS_WERROR=1 so that our own targets (never the dependencies) build with
// warnings as errors. Local builds keep warnings as warnings.
let strict = Context.environment["TERMINUS_WERROR"] == "1"

let swiftSettings: [SwiftSetting] =
    [
        .enableUpcomingFeature("InternalImportsByDefault"),
        .enableUpcomingFeature("MemberImportVisibility"),
        .enableUpcomingFeature("ExistentialAny"),
    ] + (strict ? [.treatAllWarnings(as: .error)] : [])

let package = Package(
    name: "terminus",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "terminus", targets: ["terminus"]),
        .executable(name: "terminus-echo-backend", targets: ["terminus-echo-backend"]),
        .executable(name: "terminus-grpc-probe", targets: ["terminus-grpc-probe"]),
        .library(name: "TerminusClient", targets: ["TerminusClient"]),
        // For the benchmarks package (Benchmarks/), which links the modules it measures.
        .library(name: "TerminusProtocol", targets: ["TerminusProtocol"]),
        .library(name: "TerminusCompression", targets: ["TerminusCompression"]),
        .library(name: "TerminusRouting", targets: ["TerminusRouting"]),
        .library(name: "TerminusSessions", targets: ["TerminusSessions"]),
        .library(name: "TerminusAuth", targets: ["TerminusAuth"]),
        .library(name: "TerminusEdge", targets: ["TerminusEdge"]),
        .library(name: "TerminusBackend", targets: ["TerminusBackend"]),
        .library(name: "TerminusAPI", targets: ["TerminusAPI"]),
        .library(name: "TerminusServer", targets: ["TerminusServer"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.3"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-crypto.git", "3.12.3"..<"5.0.0"),
        .package(url: "https://github.com/apple/swift-certificates.git", from: "1.21.1"),
        .package(url: "https://github.com/apple/swift-asn1.git", from: "1.7.4"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/jpsim/Yams.git", from: "6.2.2"),
        .package(url: "https://github.com/grpc/grpc-swift-2.git", from: "2.4.3"),
        .package(url: "https://github.com/grpc/grpc-swift-nio-transport.git", from: "2.9.2"),
        .package(url: "https://github.com/grpc/grpc-swift-protobuf.git", from: "2.4.1"),
        .package(url: "https://github.com/apple/swift-protobuf.git", from: "1.39.0"),
    ],
    targets: [
        // A thin module over the system zlib (libz): raw deflate with preset dictionaries
        // and inflateReset, which compress-nio does not expose.
        .target(
            name: "CTerminusZlib",
            linkerSettings: [.linkedLibrary("z")]
        ),
        .target(
            name: "TerminusProtocol",
            dependencies: [
                .product(name: "NIOCore", package: "swift-nio")
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "TerminusCompression",
            dependencies: [
                "CTerminusZlib",
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "TerminusAuth",
            dependencies: [
                .product(name: "Crypto", package: "swift-crypto")
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "TerminusSessions",
            dependencies: [
                "TerminusProtocol",
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "TerminusEdge",
            dependencies: [
                "TerminusProtocol",
                "TerminusCompression",
                "TerminusAuth",
                "TerminusSessions",
                "TerminusListeners",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOTLS", package: "swift-nio"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "TerminusRouting",
            swiftSettings: swiftSettings
        ),
        // What the internal listeners (backend API, admin) share: connection caps and idle timeouts.
        .target(
            name: "TerminusListeners",
            dependencies: [
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        // Code generated from Protos/ by scripts/generate-protos.sh (committed; not built by a plugin).
        .target(
            name: "TerminusAPI",
            dependencies: [
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "GRPCProtobuf", package: "grpc-swift-protobuf"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ]
        ),
        .target(
            name: "TerminusBackend",
            dependencies: [
                "TerminusAPI",
                "TerminusListeners",
                "TerminusRouting",
                "TerminusSessions",
                "TerminusProtocol",
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "terminus-echo-backend",
            dependencies: [
                "TerminusAPI",
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "terminus-grpc-probe",
            dependencies: [
                "TerminusAPI",
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "TerminusAdmin",
            dependencies: [
                "TerminusListeners",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "TerminusServer",
            dependencies: [
                "TerminusAdmin",
                "TerminusListeners",
                "TerminusBackend",
                "TerminusRouting",
                "TerminusEdge",
                "TerminusProtocol",
                "TerminusCompression",
                "TerminusAuth",
                "TerminusSessions",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Yams", package: "Yams"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "TerminusClient",
            dependencies: [
                "TerminusProtocol",
                "TerminusCompression",
                "TerminusAuth",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "_CryptoExtras", package: "swift-crypto"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "terminus",
            dependencies: [
                "TerminusServer",
                "TerminusEdge",
                "TerminusProtocol",
                "TerminusCompression",
                "TerminusClient",
                "TerminusAuth",
                "TerminusAPI",
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),

                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "TerminusProtocolTests",
            dependencies: [
                "TerminusProtocol",
                "TerminusCompression",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOTestUtils", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "TerminusRoutingTests",
            dependencies: ["TerminusRouting"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "TerminusCompressionTests",
            dependencies: [
                "TerminusCompression",
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "TerminusEdgeTests",
            dependencies: [
                "TerminusCompression",
                .product(name: "Logging", package: "swift-log"),
                "TerminusEdge",
                "TerminusProtocol",
                "TerminusAuth",
                "TerminusSessions",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOTestUtils", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "TerminusBackendTests",
            dependencies: [
                "TerminusBackend",
                "TerminusProtocol",
                "TerminusSessions",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "TerminusServerTests",
            dependencies: [
                "TerminusServer",
                "TerminusListeners",
                "TerminusBackend",
                "TerminusRouting",
                "TerminusEdge",
                "TerminusAuth",
                "TerminusCompression",
                "TerminusProtocol",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "TerminusEndToEndTests",
            dependencies: [
                "TerminusServer",
                "TerminusListeners",
                "TerminusAPI",
                "TerminusBackend",
                "TerminusRouting",
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
                "TerminusCompression",
                "TerminusSessions",
                "TerminusEdge",
                "TerminusClient",
                "TerminusProtocol",
                "TerminusAuth",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "_CryptoExtras", package: "swift-crypto"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
            ],
            swiftSettings: swiftSettings
        ),
    ]
)

// `TERMINUS_CORE_ONLY=1` keeps only the modules below the server and their tests, for the
// sanitizer runs in .ci/run (`swift test --sanitize=address`): the gRPC and server targets
// would double the instrumented build for code the end-to-end suite covers uninstrumented.
if Context.environment["TERMINUS_CORE_ONLY"] == "1" {
    let core: Set<String> = [
        "CTerminusZlib", "TerminusProtocol", "TerminusCompression", "TerminusRouting", "TerminusAuth",
        "TerminusSessions", "TerminusListeners", "TerminusEdge", "TerminusProtocolTests", "TerminusCompressionTests",
        "TerminusRoutingTests", "TerminusEdgeTests",
    ]
    package.targets = package.targets.filter { core.contains($0.name) }
    package.products = package.products.filter { core.contains($0.name) }
}
