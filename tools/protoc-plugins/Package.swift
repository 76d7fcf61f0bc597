// swift-tools-version: 6.1
// Builds the two protoc plugins that scripts/generate-protos.sh uses. Not part of the gateway
// build: the generated code is committed, so ordinary builds never compile the plugins.
// Pin grpc-swift-protobuf to the version the gateway links.
import PackageDescription

let package = Package(
    name: "protoc-plugins",
    dependencies: [
        .package(url: "https://github.com/apple/swift-protobuf.git", exact: "1.39.0"),
        .package(url: "https://github.com/grpc/grpc-swift-protobuf.git", exact: "2.4.1"),
    ],
    targets: []
)
