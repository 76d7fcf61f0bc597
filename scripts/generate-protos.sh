#!/usr/bin/env bash
# Regenerates Sources/TerminusAPI/Generated from Protos/terminus/v1/*.proto.
# Needs Debian's protoc (apt-get install protobuf-compiler); builds protoc-gen-swift and
# protoc-gen-grpc-swift-2 once in tools/protoc-plugins (about 95 s on 2 cores).
# Commit the output; ordinary builds never run this.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
command -v protoc >/dev/null || { echo "protoc missing: apt-get install protobuf-compiler" >&2; exit 1; }
tools=tools/protoc-plugins
swift build -c release --package-path "$tools" --product protoc-gen-swift
swift build -c release --package-path "$tools" --product protoc-gen-grpc-swift-2
bin=$(swift build -c release --package-path "$tools" --show-bin-path)
out=Sources/TerminusAPI/Generated
rm -rf "$out"
mkdir -p "$out"
protoc -I Protos \
  --plugin=protoc-gen-swift="$bin/protoc-gen-swift" \
  --plugin=protoc-gen-grpc-swift-2="$bin/protoc-gen-grpc-swift-2" \
  --swift_out="$out" --swift_opt=Visibility=Public,FileNaming=DropPath \
  --grpc-swift-2_out="$out" --grpc-swift-2_opt=Visibility=Public,FileNaming=DropPath \
  Protos/terminus/v1/*.proto Protos/terminus/probe/v1/*.proto
echo "generated: $(ls "$out" | tr '\n' ' ')"
