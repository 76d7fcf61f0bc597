// Feeds a byte stream to FrameDecoder in pseudo-random splits, as a ByteToMessageHandler would,
// decodes every frame, and checks that each decoded frame re-encodes to exactly the bytes it was
// decoded from (wire protocol v1 has one encoding per frame) and decodes again to itself.
//
// Input: byte 0 picks the maximum frame length, byte 1 seeds the split sizes (0: one write),
// the rest is the stream.
import NIOCore
import TerminusProtocol

private let maxFrameLengths = [2, 6, 16, 64, 256, 1024, 65_536, 16_777_216]

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ start: UnsafeRawPointer, _ count: Int) -> CInt {
    let input = UnsafeRawBufferPointer(start: start, count: count)
    guard input.count >= 2 else { return 0 }
    let maxFrameLength = maxFrameLengths[Int(input[0]) % maxFrameLengths.count]
    var rng = SplitMix(seed: UInt64(input[1]))
    let splitWrites = input[1] != 0
    let stream = UnsafeRawBufferPointer(rebasing: input[2...])

    var decoder = FrameDecoder(maxFrameLength: maxFrameLength)
    var buffer = ByteBufferAllocator().buffer(capacity: 0)
    var fed = 0
    var consumed = 0

    func check(_ frame: Frame, bytesBefore: Int, bytesAfter: Int) {
        let frameBytes = bytesBefore - bytesAfter
        precondition(frameBytes >= WireProtocol.headerSize, "decoded a frame of \(frameBytes) bytes")
        precondition(frameBytes - 4 <= maxFrameLength, "decoded a frame above the maximum length")
        let original = UnsafeRawBufferPointer(rebasing: stream[consumed..<(consumed + frameBytes)])
        consumed += frameBytes

        var encoded = ByteBufferAllocator().buffer(capacity: frameBytes)
        let written = encoded.writeFrame(frame)
        precondition(written == encoded.readableBytes)
        precondition(
            encoded.readableBytesView.elementsEqual(original),
            "\(frame) re-encodes to other bytes than it was decoded from"
        )
        var again = FrameDecoder(maxFrameLength: maxFrameLength)
        let redecoded = try? again.decode(buffer: &encoded)
        precondition(redecoded == frame, "\(frame) does not decode from its own encoding")
        precondition(encoded.readableBytes == 0)
    }

    while fed < stream.count {
        let chunk = splitWrites ? min(stream.count - fed, 1 + Int(rng.next() % 23)) : stream.count - fed
        buffer.writeBytes(UnsafeRawBufferPointer(rebasing: stream[fed..<(fed + chunk)]))
        fed += chunk
        do {
            while true {
                let before = buffer.readableBytes
                guard let frame = try decoder.decode(buffer: &buffer) else { break }
                check(frame, bytesBefore: before, bytesAfter: buffer.readableBytes)
            }
        } catch let error as ProtocolError {
            checkError(error, maxFrameLength: maxFrameLength)
            return 0  // the connection is closed after the GOAWAY
        } catch {
            preconditionFailure("FrameDecoder threw \(type(of: error)), not ProtocolError")
        }
        buffer.discardReadBytes()
    }
    do {
        while true {
            let before = buffer.readableBytes
            guard let frame = try decoder.decodeLast(buffer: &buffer, seenEOF: true) else { break }
            check(frame, bytesBefore: before, bytesAfter: buffer.readableBytes)
        }
        precondition(buffer.readableBytes == 0, "decodeLast left bytes without an error")
    } catch let error as ProtocolError {
        checkError(error, maxFrameLength: maxFrameLength)
    } catch {
        preconditionFailure("FrameDecoder threw \(type(of: error)), not ProtocolError")
    }
    return 0
}

private func checkError(_ error: ProtocolError, maxFrameLength: Int) {
    precondition(TerminusCode.allDefined.contains(error.code), "undefined code \(error.code)")
    precondition(error.code.rawValue >= 200 && error.code.rawValue < 300, "not a protocol error: \(error)")
}

/// Deterministic split sizes from a one-byte seed.
private struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { self.state = seed }
    mutating func next() -> UInt64 {
        self.state &+= 0x9E37_79B9_7F4A_7C15
        var z = self.state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
