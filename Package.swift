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
        // What a device or backend written in Swift uses; every other module is `package`
        // (the benchmarks and fuzz targets below are in this package, behind a variable).
        .library(name: "TerminusClient", targets: ["TerminusClient"]),
        .library(name: "TerminusProtocol", targets: ["TerminusProtocol"]),
        .library(name: "TerminusAPI", targets: ["TerminusAPI"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.3"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-crypto.git", "3.12.3"..<"5.0.0"),
        .package(url: "https://github.com/apple/swift-certificates.git", from: "1.21.1"),
        .package(url: "https://github.com/apple/swift-asn1.git", from: "1.7.4"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/jpsim/Yams.git", from: "6.2.2"),
        .package(url: "https://github.com/grpc/grpc-swift-2.git", from: "2.4.3"),
        .package(url: "https://github.com/grpc/grpc-swift-nio-transport.git", from: "2.9.2"),
        .package(url: "https://github.com/apple/swift-nio-http2.git", from: "1.46.0"),
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
        // A thin module over the system OpenSSL 3 (libssl-dev): the lean TLS engine's handshake
        // and TLS 1.2's PRF.
        .target(
            name: "CTerminusOpenSSL",
            linkerSettings: [.linkedLibrary("ssl"), .linkedLibrary("crypto")]
        ),
        // glibc's mallinfo2 and malloc_trim, which Swift's Glibc module does not import: the
        // gateway's heap trimmer (`limits.heap_trim`).
        .target(name: "CTerminusMalloc"),
        // The lean TLS engine (issue 16): TLS 1.3 record protection with per-thread AEAD state.
        // Records are sealed with the BoringSSL that swift-nio-ssl builds (its `CNIOBoringSSL`
        // module, which comes with the NIOSSL product: not swift-nio-ssl's API, so a new
        // swift-nio-ssl may need this code changed; `RecordLayerTests` checks RFC 8448's records
        // byte for byte and the interop tests every suite against OpenSSL's client).
        .target(
            name: "TerminusLeanTLS",
            dependencies: [
                "CTerminusOpenSSL",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOTLS", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: swiftSettings
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
                "TerminusLeanTLS",
                "TerminusMetrics",
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
        // Counting per event loop, exported in the Prometheus text format at a scrape.
        .target(
            name: "TerminusMetrics",
            dependencies: [
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ],
            swiftSettings: swiftSettings
        ),
        // What the internal listeners (backend API, admin) share: connection caps and idle timeouts.
        .target(
            name: "TerminusListeners",
            dependencies: [
                "TerminusMetrics",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        // A Redis client on SwiftNIO (RESP2/RESP3, pipelining, AUTH, TLS, scripts) for the fleet's
        // shared state; no Swift Redis client is among the packages available here.
        .target(
            name: "TerminusRedis",
            dependencies: [
                "TerminusProtocol",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: swiftSettings
        ),
        // The fleet: the session registry in Redis (which pod holds which device).
        .target(
            name: "TerminusFleet",
            dependencies: [
                "TerminusRedis",
                "TerminusSessions",
                "TerminusMetrics",
                "TerminusProtocol",
                "TerminusAPI",
                "TerminusBackend",
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
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
                "TerminusMetrics",
                "TerminusAPI",
                "TerminusListeners",
                "TerminusRouting",
                "TerminusSessions",
                "TerminusProtocol",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOHTTP2", package: "swift-nio-http2"),
                .product(name: "NIOHPACK", package: "swift-nio-http2"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "terminus-echo-backend",
            dependencies: [
                "TerminusAPI",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP2", package: "swift-nio-http2"),
                .product(name: "NIOHPACK", package: "swift-nio-http2"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
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
                "TerminusBackend",
                .product(name: "NIOHTTP2", package: "swift-nio-http2"),
                .product(name: "NIOHPACK", package: "swift-nio-http2"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
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
                "TerminusMetrics",
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
                "CTerminusMalloc",
                "TerminusLeanTLS",
                "TerminusMetrics",
                "TerminusAdmin",
                "TerminusListeners",
                "TerminusBackend",
                "TerminusRouting",
                "TerminusEdge",
                "TerminusProtocol",
                "TerminusCompression",
                "TerminusAuth",
                "TerminusSessions",
                "TerminusFleet",
                "TerminusRedis",
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
                "TerminusMetrics",
                "TerminusListeners",
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),

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
        // OpenSSL's own TLS client over memory BIOs, for the lean engine's interoperability tests.
        .target(
            name: "COpenSSLTestClient",
            path: "Tests/COpenSSLTestClient",
            linkerSettings: [.linkedLibrary("ssl"), .linkedLibrary("crypto")]
        ),
        .testTarget(
            name: "TerminusLeanTLSTests",
            dependencies: [
                "TerminusLeanTLS",
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "TerminusRoutingTests",
            dependencies: ["TerminusRouting", "TerminusTestSupport"],
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
                "TerminusMetrics",
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
                "TerminusAPI",
                "TerminusBackend",
                "TerminusProtocol",
                "TerminusSessions",
                "TerminusRouting",
                "TerminusTestSupport",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOHPACK", package: "swift-nio-http2"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "TerminusServerTests",
            dependencies: [
                "TerminusServer",
                "TerminusFleet",
                "TerminusRedis",
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
        // What several test targets start: child processes, loopback sockets, a redis-server.
        .target(
            name: "TerminusTestSupport",
            path: "Tests/TerminusTestSupport",
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "TerminusRedisTests",
            dependencies: [
                "TerminusRedis",
                "TerminusTestSupport",
                "TerminusProtocol",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOTestUtils", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "TerminusFleetTests",
            dependencies: [
                "TerminusFleet",
                "TerminusRedis",
                "TerminusSessions",
                "TerminusTestSupport",
                "TerminusProtocol",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "TerminusEndToEndTests",
            dependencies: [
                "TerminusTestSupport",
                "TerminusFleet",
                "TerminusRedis",
                "TerminusServer",
                "TerminusListeners",
                "TerminusMetrics",
                "TerminusAPI",
                "TerminusBackend",
                "TerminusRouting",
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
                .product(name: "GRPCProtobuf", package: "grpc-swift-protobuf"),
                "TerminusCompression",
                "TerminusSessions",
                "TerminusEdge",
                "TerminusClient",
                "TerminusProtocol",
                "TerminusAuth",
                "TerminusLeanTLS",
                "COpenSSLTestClient",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
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
        "TerminusSessions", "TerminusListeners", "TerminusMetrics", "TerminusEdge", "TerminusProtocolTests",
        "TerminusCompressionTests",
        "TerminusRoutingTests", "TerminusEdgeTests", "CTerminusOpenSSL", "TerminusLeanTLS", "TerminusLeanTLSTests",
        "TerminusTestSupport",
    ]
    package.targets = package.targets.filter { core.contains($0.name) }
    package.products = package.products.filter { core.contains($0.name) }
}

// `TERMINUS_BENCHMARKS=1` adds the benchmarks (as Hummingbird does): package-benchmark
// micro-benchmarks with allocation gates (thresholds in Benchmarks/Thresholds/) and the fleet
// load generator, which Benchmarks/gate runs. Kept out of the normal build and its dependency
// graph; in this package so that `package` declarations reach them. See docs/benchmarks.md.
if Context.environment["TERMINUS_BENCHMARKS"] == "1" {
    package.dependencies += [
        .package(url: "https://github.com/ordo-one/benchmark.git", from: "1.38.1", traits: ["MallocInterposer"]),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift.git", from: "0.1.4"),
    ]
    let fixtureModules: [Target.Dependency] = [
        "TerminusProtocol", "TerminusCompression", "TerminusRouting", "TerminusSessions", "TerminusAuth",
        "TerminusEdge", "TerminusBackend", "TerminusAPI",
        .product(name: "NIOCore", package: "swift-nio"),
        .product(name: "NIOEmbedded", package: "swift-nio"),
        .product(name: "Logging", package: "swift-log"),
    ]
    package.targets += [
        // The hot path's in-process fixtures, shared by the two below.
        .target(name: "TerminusBenchmarkFixtures", dependencies: fixtureModules, path: "Benchmarks/Fixtures"),
        // Sync main on purpose: valgrind 3.19 crashes on a Swift `async` main. Benchmarks/gate
        // runs it under callgrind for instructions per message.
        .executableTarget(
            name: "terminus-instructions",
            dependencies: ["TerminusBenchmarkFixtures", "TerminusLeanTLS"] + fixtureModules,
            path: "Benchmarks/Sources/terminus-instructions"
        ),
        .executableTarget(
            name: "TerminusBenchmarks",
            dependencies: [
                .product(name: "Benchmark", package: "benchmark"),
                "TerminusBenchmarkFixtures",
                "TerminusProtocol", "TerminusCompression", "TerminusRouting", "TerminusSessions", "TerminusAuth",
                "TerminusEdge", "TerminusBackend", "TerminusAPI", "TerminusServer",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Benchmarks/Benchmarks/TerminusBenchmarks",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
        .executableTarget(
            name: "terminus-loadgen",
            dependencies: [
                "TerminusClient", "TerminusEdge", "TerminusProtocol", "TerminusCompression", "TerminusAuth",
                "TerminusAPI", "TerminusLeanTLS", "COpenSSLTestClient",
                .product(name: "NIOEmbedded", package: "swift-nio"),
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
            path: "Benchmarks/Sources/terminus-loadgen"
        ),
    ]
    package.products += [
        .executable(name: "terminus-loadgen", targets: ["terminus-loadgen"]),
        .executable(name: "terminus-instructions", targets: ["terminus-instructions"]),
    ]
}

// `TERMINUS_FUZZ=1` adds the libFuzzer targets. Each defines LLVMFuzzerTestOneInput and gets
// main() from libFuzzer, so they only link with the fuzzer flags, one product at a time:
// scripts/fuzz.sh builds them (`--product fuzz-… --sanitize=fuzzer --sanitize=address
// -Xswiftc -sanitize=fuzzer,address`) and runs each over a copy of Fuzz/Corpus/<target>.
if Context.environment["TERMINUS_FUZZ"] == "1" {
    func fuzzTarget(_ name: String, _ modules: [Target.Dependency], nio: Bool = true) -> Target {
        .executableTarget(
            name: name,
            dependencies: modules + (nio ? [.product(name: "NIOCore", package: "swift-nio")] : []),
            path: "Fuzz/Sources/\(name)"
        )
    }
    let fuzzTargets = [
        fuzzTarget("fuzz-frame-decoder", ["TerminusProtocol"]),
        fuzzTarget("fuzz-hello-token", ["TerminusProtocol", "TerminusAuth"]),
        fuzzTarget("fuzz-proxy-header", ["TerminusEdge"]),
        fuzzTarget("fuzz-inflate", ["TerminusCompression"]),
        fuzzTarget("fuzz-topic-filter", ["TerminusRouting"], nio: false),
        fuzzTarget("fuzz-config", ["TerminusServer", "TerminusRouting", "TerminusEdge"]),
        fuzzTarget("fuzz-lean-records", ["TerminusLeanTLS"]),
        fuzzTarget(
            "fuzz-grpc-stream",
            [
                "TerminusBackend", "TerminusAPI", .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ]
        ),
    ]
    package.targets += fuzzTargets
    package.products += fuzzTargets.map { .executable(name: $0.name, targets: [$0.name]) }
}
