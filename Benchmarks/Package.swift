// swift-tools-version: 6.2
// Benchmarks for Terminus, kept out of the root build: package-benchmark micro-benchmarks with
// allocation gates (Benchmarks/TerminusBenchmarks, thresholds in Thresholds/), the fleet load
// generator (terminus-loadgen) and the release gate (./gate). See docs/benchmarks.md.
import PackageDescription

// A path dependency's identity is its directory's name, which is whatever the clone is called.
let root = String(Context.packageDirectory.split(separator: "/").dropLast().last ?? "terminus")

let package = Package(
    name: "TerminusBenchmarks",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(path: ".."),
        .package(url: "https://github.com/ordo-one/benchmark.git", from: "1.38.1", traits: ["MallocInterposer"]),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift.git", from: "0.1.4"),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.3"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/grpc/grpc-swift-2.git", from: "2.4.3"),
        .package(url: "https://github.com/grpc/grpc-swift-nio-transport.git", from: "2.9.2"),
        .package(url: "https://github.com/grpc/grpc-swift-protobuf.git", from: "2.4.1"),
        .package(url: "https://github.com/apple/swift-protobuf.git", from: "1.39.0"),
    ],
    targets: [
        .executableTarget(
            name: "TerminusBenchmarks",
            dependencies: [
                .product(name: "Benchmark", package: "benchmark"),
                .product(name: "TerminusProtocol", package: root),
                .product(name: "TerminusCompression", package: root),
                .product(name: "TerminusRouting", package: root),
                .product(name: "TerminusSessions", package: root),
                .product(name: "TerminusAuth", package: root),
                .product(name: "TerminusEdge", package: root),
                .product(name: "TerminusBackend", package: root),
                .product(name: "TerminusAPI", package: root),
                .product(name: "TerminusServer", package: root),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Benchmarks/TerminusBenchmarks",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
        .executableTarget(
            name: "terminus-loadgen",
            dependencies: [
                .product(name: "TerminusClient", package: root),
                .product(name: "TerminusEdge", package: root),
                .product(name: "TerminusProtocol", package: root),
                .product(name: "TerminusCompression", package: root),
                .product(name: "TerminusAuth", package: root),
                .product(name: "TerminusAPI", package: root),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOTLS", package: "swift-nio"),
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
                .product(name: "GRPCProtobuf", package: "grpc-swift-protobuf"),
            ],
            path: "Sources/terminus-loadgen"
        ),
    ]
)
