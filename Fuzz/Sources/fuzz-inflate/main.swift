// Inflates the input with Inflater under several InflateLimits and a DictionarySet holding one
// dictionary, id 1 (the one in docs/protocol.md's publish-deflate-dictionary vector).
//
// Input: byte 0 picks the dictionary id (bits 0-1: 0 none, 1 and 2 id 1, 3 the unconfigured id
// byte0) and the limits (bits 2-3); the rest is the raw deflate stream.
//
// Checks: the inflated size never exceeds limits.allowedOutput(compressedSize:) (so never the
// size cap); an unconfigured id is unknownDictionary; the outcome under small limits agrees with
// the outcome under a 1 MiB cap (same bytes when both succeed, limitExceeded exactly when the
// output is above the small cap); and Deflater's output for the inflated bytes, and for the
// input bytes themselves, inflates back to them.
import NIOCore
import TerminusCompression

private let dictionaryText = Array(#"{"type":"payment","amount":,"currency":"CNY"}"#.utf8)
private let dictionaries = try! DictionarySet([1: dictionaryText])

private let limitSets = [
    InflateLimits(),
    InflateLimits(maxInflatedSize: 64, maxRatio: 1, ratioFloor: 0),
    InflateLimits(maxInflatedSize: 4096, maxRatio: 2, ratioFloor: 16),
    InflateLimits(maxInflatedSize: 1 << 20, maxRatio: 100_000, ratioFloor: 64 << 20),
]
// One inflater per limits, reused across runs as the gateway reuses one per event loop.
nonisolated(unsafe) private let inflaters = limitSets.map { try! Inflater(limits: $0, dictionaries: dictionaries) }
nonisolated(unsafe) private let reference = inflaters[3]
nonisolated(unsafe) private let deflater = try! Deflater(level: 6, dictionaries: dictionaries)
private let allocator = ByteBufferAllocator()

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ start: UnsafeRawPointer, _ count: Int) -> CInt {
    let input = UnsafeRawBufferPointer(start: start, count: count)
    guard let selector = input.first else { return 0 }
    let dictionaryID: UInt16? =
        switch selector & 0x03 {
        case 0: nil
        case 1, 2: 1
        default: UInt16(selector)
        }
    let limitIndex = Int(selector >> 2) & 0x03
    let inflater = inflaters[limitIndex]
    var compressed = allocator.buffer(capacity: input.count)
    compressed.writeBytes(UnsafeRawBufferPointer(rebasing: input[1...]))

    let result = inflate(inflater, compressed, dictionaryID)
    if let dictionaryID, dictionaryID != 1 {
        precondition(result.error?.kind == .unknownDictionary, "dictionary \(dictionaryID): \(result)")
        return 0
    }
    if case .success(let output) = result {
        let allowed = inflater.limits.allowedOutput(compressedSize: compressed.readableBytes)
        precondition(output.readableBytes <= allowed, "inflated \(output.readableBytes) bytes, allowed \(allowed)")
        precondition(output.readableBytes <= inflater.limits.maxInflatedSize)
        roundTrip(output, dictionaryID: dictionaryID, inflater: inflater)
    }
    if limitIndex != 3 {
        let allowed = inflater.limits.allowedOutput(compressedSize: compressed.readableBytes)
        switch (inflate(reference, compressed, dictionaryID), result) {
        case (.success(let big), .success(let small)):
            precondition(big == small, "the same stream inflated to different bytes under different limits")
        case (.success(let big), .failure(let error)):
            precondition(
                error.kind == .limitExceeded && big.readableBytes > allowed,
                "\(big.readableBytes) bytes under a 1 MiB cap, \(error) with \(allowed) allowed"
            )
        case (.failure(let error), .success(let small)):
            preconditionFailure("\(small.readableBytes) bytes with \(allowed) allowed, \(error) under a 1 MiB cap")
        case (.failure(let big), .failure(let small)):
            if big.kind == .limitExceeded {
                precondition(small.kind == .limitExceeded, "\(small) under a small cap, \(big) under 1 MiB")
            }
        }
    }
    // Deflater output for arbitrary bytes inflates back to them.
    if dictionaryID == nil || dictionaryID == 1 {
        var plain = allocator.buffer(capacity: input.count)
        plain.writeBytes(UnsafeRawBufferPointer(rebasing: input[1...]))
        roundTrip(plain, dictionaryID: dictionaryID, inflater: reference)
    }
    return 0
}

private func inflate(_ inflater: Inflater, _ input: ByteBuffer, _ id: UInt16?) -> Result<ByteBuffer, CompressionError> {
    do {
        return .success(try inflater.inflate(input, dictionaryID: id, allocator: allocator))
    } catch {
        precondition(error.kind != .zlib, "zlib failure: \(error)")
        return .failure(error)
    }
}

private func roundTrip(_ plain: ByteBuffer, dictionaryID: UInt16?, inflater: Inflater) {
    let deflated: ByteBuffer
    do {
        deflated = try deflater.deflate(plain, dictionaryID: dictionaryID, allocator: allocator)
    } catch {
        preconditionFailure("deflate of \(plain.readableBytes) bytes failed: \(error)")
    }
    guard plain.readableBytes <= inflater.limits.allowedOutput(compressedSize: deflated.readableBytes) else { return }
    switch inflate(inflater, deflated, dictionaryID) {
    case .success(let back):
        precondition(back == plain, "deflate/inflate round trip changed \(plain.readableBytes) bytes")
    case .failure(let error):
        preconditionFailure("Deflater output of \(plain.readableBytes) bytes did not inflate: \(error)")
    }
}

extension Result {
    fileprivate var error: Failure? {
        if case .failure(let error) = self { return error }
        return nil
    }
}
