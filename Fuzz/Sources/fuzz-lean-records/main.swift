// The lean TLS engine's record parser (TerminusLeanTLS), two ways.
//
// Byte 0, even: the rest is a byte stream from a peer, fed in pseudo-random splits (byte 1 seeds
// them) to the handshake's framer and to the TLS 1.3 and TLS 1.2 (AES-GCM, explicit nonce)
// record layers, which open what they frame with fixed keys: nothing may crash, every framed record respects the size limits, and a
// record that is not authentic is refused as such.
// Byte 0, odd: the rest is one record's inner plaintext (whatever it holds), sealed with the
// writer's keys and opened with the reader's: it must open to exactly its content and type, or
// be refused for its content (no content type, a type not allowed, too long), never as a MAC
// failure.
import NIOCore
import TerminusLeanTLS

private let suite = LeanCipherSuite.tls13AES128GCMSHA256
private let secret = [UInt8](repeating: 0x5A, count: 32)
private let suite12 = LeanCipherSuite.ecdheECDSAWithAES128GCMSHA256
// libFuzzer calls the target on one thread: the context is never shared.
nonisolated(unsafe) private let context = AEADContext()
private let allocator = ByteBufferAllocator()

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ start: UnsafeRawPointer, _ count: Int) -> CInt {
    let input = UnsafeRawBufferPointer(start: start, count: count)
    guard input.count >= 2 else { return 0 }
    if input[0] % 2 == 0 {
        stream(UnsafeRawBufferPointer(rebasing: input[2...]), seed: input[1])
    } else {
        inner(UnsafeRawBufferPointer(rebasing: input[1...]))
    }
    return 0
}

private func stream(_ bytes: UnsafeRawBufferPointer, seed: UInt8) {
    var state = UInt64(seed) &+ 0x9E37_79B9_7F4A_7C15
    var framed = allocator.buffer(capacity: 0)
    var records = allocator.buffer(capacity: 0)
    var records12 = allocator.buffer(capacity: 0)
    var keys = TrafficKeys(suite: suite, secret: secret)
    var keys12 = TrafficKeys(suite: suite12, key: Array(secret[0..<16]), iv: Array(secret[0..<4]), sequence: 1)
    var offset = 0
    var framerFailed = false
    var layerFailed = false
    var layer12Failed = false
    while offset < bytes.count {
        state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
        let take = seed == 0 ? bytes.count : min(bytes.count - offset, 1 + Int(state >> 56) % 64)
        let piece = UnsafeRawBufferPointer(rebasing: bytes[offset..<(offset + take)])
        offset += take
        framed.writeBytes(piece)
        records.writeBytes(piece)
        records12.writeBytes(piece)
        while !framerFailed {
            do {
                guard let record = try TLSRecordFramer.nextRecord(from: &framed) else { break }
                precondition(record.readableBytes >= 5 && record.readableBytes <= 5 + TLSRecordFramer.maxRecordBody)
            } catch {
                framerFailed = true
            }
        }
        while !layerFailed {
            do {
                guard let record = try TLS13Records.nextRecord(from: &records) else { break }
                precondition(record.readableBytes >= 5 + 17 && record.readableBytes <= 5 + TLS13Records.maxCiphertext)
                _ = try TLS13Records.open(record, keys: &keys, context: context, allocator: allocator)
            } catch {
                layerFailed = true
            }
        }
        while !layer12Failed {
            do {
                guard let record = try TLS12Records.nextRecord(from: &records12, suite: suite12) else { break }
                precondition(record.readableBytes >= 5 + 24 && record.readableBytes <= 5 + TLS12Records.maxCiphertext)
                let opened = try TLS12Records.open(record, keys: &keys12, context: context, allocator: allocator)
                precondition(opened.content.readableBytes <= TLS12Records.maxPlaintext)
            } catch {
                layer12Failed = true
            }
        }
    }
}

private func inner(_ bytes: UnsafeRawBufferPointer) {
    let inner = ByteBuffer(bytes: bytes.prefix(TLS13Records.maxCiphertext - 16))
    var writer = TrafficKeys(suite: suite, secret: secret)
    var reader = TrafficKeys(suite: suite, secret: secret)
    var wire = allocator.buffer(capacity: 0)
    try! TLS13Records.seal(innerPlaintext: inner, keys: &writer, context: context, into: &wire)
    guard let record = try! TLS13Records.nextRecord(from: &wire) else {
        preconditionFailure("a sealed record does not frame")
    }
    let view = Array(inner.readableBytesView)
    let end = view.lastIndex { $0 != 0 }
    do {
        let opened = try TLS13Records.open(record, keys: &reader, context: context, allocator: allocator)
        guard let end else { preconditionFailure("an all-zero inner plaintext opened") }
        precondition(view.count <= TLS13Records.maxPlaintext + 1, "an overlong inner plaintext opened")
        precondition(opened.type.rawValue == view[end] && opened.type != .changeCipherSpec)
        precondition(Array(opened.content.readableBytesView) == Array(view[..<end]), "content differs")
    } catch let error as LeanTLSError {
        switch error {
        case .unexpectedMessage, .recordOverflow: break
        default: preconditionFailure("a well-sealed record refused as \(error)")
        }
    } catch {
        preconditionFailure("\(error)")
    }
}
