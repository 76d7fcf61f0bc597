// The single-call HTTP/2 client of a Deliver connection (TerminusBackend's
// `GRPCStreamConnection`) on an `EmbeddedChannel`, fed what a server sends.
//
// Byte 0 seeds the pseudo-random splits the rest is fed in (0: whole); byte 1, bit 0: small
// limits (messages of 64 bytes, header blocks of 96) instead of the defaults; bits 1-7: every
// how many pieces a request is written (0: never), and after the 8th one the call's end. The
// rest is the server's bytes (a server preface starts with SETTINGS, then frames).
//
// Beyond "no crash": every message handed on is within the limit; once the connection failed
// or the call ended the channel is closed, its last frame a GOAWAY, and nothing more is handed
// on; what the client writes is its preface, then well-formed frames on stream 0 or 1. Every
// message handed on is also read as a `DeliverResponse` by `DeliverResponseDecoder` and by
// SwiftProtobuf: both fail, or both give the same message.
import NIOCore
import NIOEmbedded
import SwiftProtobuf
import TerminusAPI

@testable import TerminusBackend

final class Record {
    var messages = 0
    var failures = 0
    var ended = 0
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ start: UnsafeRawPointer, _ count: Int) -> CInt {
    let input = UnsafeRawBufferPointer(start: start, count: count)
    guard input.count >= 2 else { return 0 }
    var configuration = GRPCStreamConnection.Configuration(
        path: "/terminus.v1.UplinkReceiver/Deliver",
        scheme: "http",
        authority: "backend:50051"
    )
    if input[1] & 1 == 1 {
        configuration.maximumMessage = 64
        configuration.maximumHeaderBlock = 96
    }
    let requestEvery = Int(input[1] >> 1)
    let record = Record()
    let limit = configuration.maximumMessage
    let channel = EmbeddedChannel()
    let handler = GRPCStreamConnection(
        configuration: configuration,
        delegate: .init(
            message: { message in
                precondition(message.readableBytes <= limit, "a message over the limit was handed on")
                precondition(record.failures == 0, "a message after the connection failed")
                record.messages += 1
                let ours = try? DeliverResponseDecoder.decode(message)
                let theirs = try? Terminus_V1_DeliverResponse(serializedBytes: Array(message.readableBytesView))
                precondition(ours == theirs, "DeliverResponseDecoder and SwiftProtobuf disagree")
            },
            goingAway: {},
            ended: { _ in record.ended += 1 },
            failed: { _ in record.failures += 1 }
        )
    )
    try! channel.pipeline.syncOperations.addHandler(handler)
    try! channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
    var written = ByteBuffer()
    drain(channel, into: &written)
    precondition(written.readBytes(length: GRPCStreamConnection.preface.count) == GRPCStreamConnection.preface)

    let bytes = UnsafeRawBufferPointer(rebasing: input[2...])
    var state = UInt64(input[0]) &+ 0x9E37_79B9_7F4A_7C15
    var offset = 0
    var pieces = 0
    while offset < bytes.count, channel.isActive {
        state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
        let take = input[0] == 0 ? bytes.count : min(bytes.count - offset, 1 + Int(state >> 56) % 96)
        let piece = ByteBuffer(bytes: UnsafeRawBufferPointer(rebasing: bytes[offset..<(offset + take)]))
        offset += take
        pieces += 1
        _ = try? channel.writeInbound(piece)
        if requestEvery > 0, pieces % requestEvery == 0, channel.isActive {
            if pieces / requestEvery == 8 {
                channel.pipeline.triggerUserOutboundEvent(GRPCStreamConnection.OutboundEvent.end, promise: nil)
            } else {
                var request = ByteBuffer()
                let size = Int(state >> 40) % 40_000
                GRPCStreamConnection.writeDataFrameHeader(payloadLength: 5 + size, into: &request)
                request.writeInteger(UInt8(0))
                request.writeInteger(UInt32(size))
                request.writeRepeatingByte(0x2A, count: size)
                channel.writeAndFlush(request, promise: nil)
            }
        }
        drain(channel, into: &written)
    }
    let frames = checkFrames(&written)
    if record.failures > 0 {
        precondition(!channel.isActive, "the connection failed but stayed open")
        precondition(frames.last == 7, "a failed connection's last frame is not a GOAWAY")
    }
    if channel.isActive {
        _ = try? channel.finish()
    }
    // What closing scheduled (the close future's callbacks), so nothing is left holding the
    // channel.
    channel.embeddedEventLoop.run()
    return 0
}

private func drain(_ channel: EmbeddedChannel, into buffer: inout ByteBuffer) {
    while var next = try? channel.readOutbound(as: ByteBuffer.self) { buffer.writeBuffer(&next) }
}

/// The types of the frames the client wrote; each must be whole and on stream 0 or 1.
private func checkFrames(_ buffer: inout ByteBuffer) -> [UInt8] {
    var types: [UInt8] = []
    while buffer.readableBytes > 0 {
        precondition(buffer.readableBytes >= 9, "a partial frame header")
        let length = Int(buffer.readInteger(as: UInt8.self)!) << 16 | Int(buffer.readInteger(as: UInt16.self)!)
        let type = buffer.readInteger(as: UInt8.self)!
        _ = buffer.readInteger(as: UInt8.self)
        let stream = buffer.readInteger(as: UInt32.self)!
        precondition(stream <= 1, "a frame on stream \(stream)")
        precondition(buffer.readSlice(length: length) != nil, "a frame longer than what was written")
        types.append(type)
    }
    return types
}
