// swift-tools-version: 6.2
// libFuzzer targets for Terminus, kept out of the root build like Benchmarks/. One executable
// per target; each defines LLVMFuzzerTestOneInput and gets main() from libFuzzer, so the package
// only links with the fuzzer flags:
//
//     swift build -c debug --package-path Fuzz --scratch-path Fuzz/.build \
//         -Xswiftc -sanitize=fuzzer,address -Xswiftc -parse-as-library
//
// scripts/fuzz.sh builds it that way and runs every target over a copy of Fuzz/Corpus/<target>.
import PackageDescription

// A path dependency's identity is its directory's name, which is whatever the clone is called.
let root = String(Context.packageDirectory.split(separator: "/").dropLast().last ?? "terminus")

func fuzzTarget(_ name: String, _ products: [String], nio: Bool = true) -> Target {
    .executableTarget(
        name: name,
        dependencies: products.map { .product(name: $0, package: root) }
            + (nio ? [.product(name: "NIOCore", package: "swift-nio")] : []),
        path: "Sources/\(name)"
    )
}

let package = Package(
    name: "TerminusFuzz",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(path: ".."),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.3"),
    ],
    targets: [
        fuzzTarget("fuzz-frame-decoder", ["TerminusProtocol"]),
        fuzzTarget("fuzz-hello-token", ["TerminusProtocol", "TerminusAuth"]),
        fuzzTarget("fuzz-proxy-header", ["TerminusEdge"]),
        fuzzTarget("fuzz-inflate", ["TerminusCompression"]),
        fuzzTarget("fuzz-topic-filter", ["TerminusRouting"], nio: false),
        fuzzTarget("fuzz-config", ["TerminusServer", "TerminusRouting", "TerminusEdge"]),
    ]
)
