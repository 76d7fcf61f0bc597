#!/usr/bin/env bash
# Builds the libFuzzer targets (Fuzz/Sources; root package, TERMINUS_FUZZ=1) with address
# sanitizer and coverage, and runs each one.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#
# SECONDS_PER_TARGET defaults to 30; 0 only replays the seed corpus and the regression inputs.
# TARGETs default to all of them (fuzz-frame-decoder fuzz-hello-token fuzz-proxy-header
# fuzz-inflate fuzz-topic-filter fuzz-config fuzz-lean-records fuzz-grpc-stream).
#
# Each target runs over a temporary copy of Fuzz/Corpus/<target> plus Fuzz/Regressions/<target>
# (inputs that once crashed), so the repository's corpus is never written. Crash, timeout and
# out-of-memory inputs are kept in Fuzz/.build/fuzz-artifacts/<target>/; the script prints
# their path and a hex dump and exits non-zero if any target failed. Logs are in
# Fuzz/.build/fuzz-logs/.
#
# Environment: FUZZ_JOBS=N (build jobs), FUZZ_ARGS (extra libFuzzer flags, e.g.
# "-use_value_profile=1"), ASAN_OPTIONS.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

all_targets=(fuzz-frame-decoder fuzz-hello-token fuzz-proxy-header fuzz-inflate fuzz-topic-filter fuzz-config fuzz-lean-records fuzz-grpc-stream)
seconds=${1:-30}
[ $# -gt 0 ] && shift
if ! [[ $seconds =~ ^[0-9]+$ ]]; then
    echo "usage: $0 [SECONDS_PER_TARGET] [TARGET...]   (targets: ${all_targets[*]})" >&2
    exit 2
fi
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=("${all_targets[@]}")
for target in "${targets[@]}"; do
    if [[ ! " ${all_targets[*]} " =~ " $target " ]]; then
        echo "unknown target $target (targets: ${all_targets[*]})" >&2
        exit 2
    fi
done

scratch=$root/Fuzz/.build
artifacts=$scratch/fuzz-artifacts
logs=$scratch/fuzz-logs

# What a fresh machine may lack: zlib's and OpenSSL's headers (CTerminusZlib, CTerminusOpenSSL).
# libFuzzer itself ships with the Swift toolchain (lib/swift/clang/lib/linux/
# libclang_rt.fuzzer-*.a); no Debian package provides it to swiftc.
if ! dpkg -s zlib1g-dev libssl-dev >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq zlib1g-dev libssl-dev
fi
swiftc=$(readlink -f "$(command -v swiftc)")
runtime_dir=$(dirname "$swiftc")/../lib/swift/clang/lib/linux
if ! compgen -G "$runtime_dir/libclang_rt.fuzzer-*.a" >/dev/null; then
    echo "error: this Swift toolchain ($swiftc) has no libFuzzer runtime in $runtime_dir;" >&2
    echo "       use a swift.org toolchain for Linux, which ships it." >&2
    exit 2
fi

# --sanitize=fuzzer makes SwiftPM link libFuzzer's main (no main renaming, -parse-as-library)
# and instrument C targets. swiftc passes only the last -sanitize= option to the frontend, so the
# combined -Xswiftc -sanitize=fuzzer,address is what gives Swift code both coverage and ASan.
# SwiftPM keeps sanitizers in a Set and writes them in hash order, which changes with every
# process and so invalidated every compile command (a full rebuild per run): deterministic
# hashing keeps the order, and the build incremental (and makes the targets' own Set and
# Dictionary orders, so their crashes, reproducible).
export SWIFT_DETERMINISTIC_HASHING=1
# The fuzz targets are products of the root package behind TERMINUS_FUZZ=1 (Package.swift),
# built one product at a time: the gateway's own executables have a main() of their own.
export TERMINUS_FUZZ=1
build=(swift build -c debug --scratch-path "$scratch"
    --sanitize=fuzzer --sanitize=address -Xswiftc -sanitize=fuzzer,address)
[ -n "${FUZZ_JOBS:-}" ] && build+=(--jobs "$FUZZ_JOBS")
echo "== build: ${build[*]} --product TARGET"
build_start=$(date +%s)
for target in "${targets[@]}"; do "${build[@]}" --product "$target"; done
echo "== build took $(($(date +%s) - build_start)) s"
bin=$("${build[@]}" --show-bin-path)

work=$(mktemp -d "${TMPDIR:-/tmp}/terminus-fuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$artifacts" "$logs"

# Swift's backtracer would take the crash signal before libFuzzer and spend seconds
# symbolicating; libFuzzer and ASan print their own reports.
export SWIFT_BACKTRACE=enable=no
export ASAN_OPTIONS=${ASAN_OPTIONS:-handle_abort=1:handle_sigill=1}
[ -x "$(dirname "$swiftc")/llvm-symbolizer" ] && export ASAN_SYMBOLIZER_PATH=${ASAN_SYMBOLIZER_PATH:-$(dirname "$swiftc")/llvm-symbolizer}

failed=()
summary=()
for target in "${targets[@]}"; do
    corpus=$work/$target
    mkdir -p "$corpus" "$artifacts/$target"
    cp Fuzz/Corpus/"$target"/* "$corpus"/ 2>/dev/null || true
    cp Fuzz/Regressions/"$target"/* "$corpus"/ 2>/dev/null || true
    args=(-rss_limit_mb=2048 -timeout=20 -print_final_stats=1 -artifact_prefix="$artifacts/$target/")
    [ -f "Fuzz/Dictionaries/$target.dict" ] && args+=(-dict="Fuzz/Dictionaries/$target.dict")
    if [ "$seconds" -eq 0 ]; then args+=(-runs=0); else args+=(-max_total_time="$seconds"); fi
    # shellcheck disable=SC2206
    [ -n "${FUZZ_ARGS:-}" ] && args+=($FUZZ_ARGS)
    log=$logs/$target.log
    echo "== $target: ${seconds}s over $(find "$corpus" -type f | wc -l) seed inputs (log: $log)"
    marker=$work/$target.start
    touch "$marker"
    set +e
    "$bin/$target" "${args[@]}" "$corpus" </dev/null >"$log" 2>&1
    status=$?
    set -e
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
    line=$(printf '%-20s %10s runs %8s exec/s  cov %6s' "$target" "${runs:-?}" "${rate:-?}" "${cov:-?}")
    crashes=$(find "$artifacts/$target" -type f -newer "$marker" | sort)
    if [ $status -ne 0 ] || [ -n "$crashes" ]; then
        failed+=("$target")
        summary+=("$line  FAILED (exit $status)")
        echo "!! $target failed (exit $status)"
        grep -E -m 12 'Fatal error|Precondition failed|Assertion failed|ERROR: (AddressSanitizer|libFuzzer)|SUMMARY|==ERROR' "$log" || tail -n 30 "$log"
        for crash in $crashes; do
            echo "-- input: $crash ($(wc -c <"$crash") bytes)"
            od -A x -t x1z -v "$crash" | head -n 64
        done
    else
        summary+=("$line  ok")
    fi
done

echo "== summary (${seconds}s per target)"
printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
    echo "FAILED: ${failed[*]} (inputs in $artifacts)"
    exit 1
fi
