import NIOCore
import NIOEmbedded
import NIOHPACK
import Testing

@testable import TerminusBackend

/// `GRPCStreamConnection`, the single-call HTTP/2 client of a Deliver connection, on an
/// `EmbeddedChannel`: what it writes, frame by frame, and what it does with what it reads.
/// (The end-to-end suites run it against grpc-swift-2, grpcio and swift-nio-http2 servers.)
@Suite("A single-call HTTP/2 client: frames in and out")
struct GRPCStreamConnectionTests {
    struct Frame: Equatable {
        var type: UInt8
        var flags: UInt8
        var stream: UInt32
        var payload: [UInt8]
    }

    final class Recorder {
        var messages: [[UInt8]] = []
        var goingAway = 0
        var ended: [String] = []
        var failures: [String] = []
        var refuse = false

        var delegate: GRPCStreamConnection.Delegate {
            .init(
                message: { message in
                    if self.refuse { throw TestRefusal() }
                    self.messages.append(Array(message.readableBytesView))
                },
                goingAway: { self.goingAway += 1 },
                ended: { self.ended.append($0) },
                failed: { self.failures.append("\($0)") }
            )
        }
    }

    struct TestRefusal: Error {}

    static let configuration = GRPCStreamConnection.Configuration(
        path: "/terminus.v1.UplinkReceiver/Deliver",
        scheme: "http",
        authority: "backend:50051"
    )

    /// A connection made active, its opening frames read, and the server's SETTINGS and
    /// response headers fed (unless told not to).
    static func open(
        _ recorder: Recorder,
        configuration: GRPCStreamConnection.Configuration = Self.configuration,
        settings: [(UInt16, UInt32)] = [],
        responseHeaders: Bool = true
    ) throws -> (EmbeddedChannel, [Frame]) {
        let channel = EmbeddedChannel()
        try channel.pipeline.syncOperations.addHandler(
            GRPCStreamConnection(configuration: configuration, delegate: recorder.delegate)
        )
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        var opening = try Self.outbound(channel)
        let preface = opening.readBytes(length: GRPCStreamConnection.preface.count)
        #expect(preface == GRPCStreamConnection.preface)
        let frames = Self.frames(&opening)
        try Self.feed(channel, Self.settings(settings))
        #expect(try Self.frames(channel) == [Frame(type: 4, flags: 1, stream: 0, payload: [])])
        if responseHeaders {
            try Self.feed(channel, Self.headers([(":status", "200"), ("content-type", "application/grpc")]))
        }
        return (channel, frames)
    }

    static func outbound(_ channel: EmbeddedChannel) throws -> ByteBuffer {
        var all = ByteBuffer()
        while var next = try channel.readOutbound(as: ByteBuffer.self) { all.writeBuffer(&next) }
        return all
    }

    static func frames(_ buffer: inout ByteBuffer) -> [Frame] {
        var frames: [Frame] = []
        while buffer.readableBytes >= 9 {
            let high = Int(buffer.readInteger(as: UInt8.self)!)
            let length = high << 16 | Int(buffer.readInteger(as: UInt16.self)!)
            let type = buffer.readInteger(as: UInt8.self)!
            let flags = buffer.readInteger(as: UInt8.self)!
            let stream = buffer.readInteger(as: UInt32.self)!
            frames.append(Frame(type: type, flags: flags, stream: stream, payload: buffer.readBytes(length: length)!))
        }
        #expect(buffer.readableBytes == 0)
        return frames
    }

    static func frames(_ channel: EmbeddedChannel) throws -> [Frame] {
        var buffer = try Self.outbound(channel)
        return Self.frames(&buffer)
    }

    static func frame(_ type: UInt8, flags: UInt8 = 0, stream: UInt32 = 0, _ payload: [UInt8] = []) -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.writeInteger(UInt8(payload.count >> 16))
        buffer.writeInteger(UInt16(truncatingIfNeeded: payload.count))
        buffer.writeInteger(type)
        buffer.writeInteger(flags)
        buffer.writeInteger(stream)
        buffer.writeBytes(payload)
        return buffer
    }

    static func settings(_ entries: [(UInt16, UInt32)]) -> ByteBuffer {
        var payload = ByteBuffer()
        for (identifier, value) in entries {
            payload.writeInteger(identifier)
            payload.writeInteger(value)
        }
        return Self.frame(4, Array(payload.readableBytesView))
    }

    /// A header block as a server's encoder writes it (Huffman, dynamic table): pass one encoder
    /// for a connection's blocks so later ones refer to entries of earlier ones.
    static func headers(
        _ headers: [(String, String)],
        endStream: Bool = false,
        encoder: inout HPACKEncoder
    ) -> ByteBuffer {
        var block = ByteBuffer()
        try! encoder.encode(headers: HPACKHeaders(headers), to: &block)
        return Self.frame(1, flags: 0x4 | (endStream ? 0x1 : 0), stream: 1, Array(block.readableBytesView))
    }

    static func headers(_ headers: [(String, String)], endStream: Bool = false) -> ByteBuffer {
        var encoder = HPACKEncoder(allocator: ByteBufferAllocator())
        return Self.headers(headers, endStream: endStream, encoder: &encoder)
    }

    /// gRPC-framed messages.
    static func grpc(_ messages: [[UInt8]]) -> [UInt8] {
        var buffer = ByteBuffer()
        for message in messages {
            buffer.writeInteger(UInt8(0))
            buffer.writeInteger(UInt32(message.count))
            buffer.writeBytes(message)
        }
        return Array(buffer.readableBytesView)
    }

    /// A request as `UplinkEncoder.deliverRequest(asDataFrame: true)` makes one.
    static func request(_ message: [UInt8]) -> ByteBuffer {
        var buffer = ByteBuffer()
        GRPCStreamConnection.writeDataFrameHeader(payloadLength: 5 + message.count, into: &buffer)
        buffer.writeBytes(Self.grpc([message]))
        return buffer
    }

    static func feed(_ channel: EmbeddedChannel, _ buffer: ByteBuffer) throws {
        try channel.writeInbound(buffer)
    }

    /// The GOAWAY a violation ends with: its error code.
    static func goAwayCode(_ frames: [Frame]) -> UInt32? {
        guard let last = frames.last, last.type == 7, last.payload.count >= 8 else { return nil }
        return last.payload[4..<8].reduce(0) { $0 << 8 | UInt32($1) }
    }

    @Test("opening: the preface, SETTINGS (no push, our window), the connection's window, and the call's headers")
    func opening() throws {
        for (scheme, authority) in [("http", "backend:50051"), ("https", String(repeating: "a", count: 300) + ":443")] {
            var configuration = Self.configuration
            configuration.scheme = scheme
            configuration.authority = authority
            let recorder = Recorder()
            let (channel, frames) = try Self.open(recorder, configuration: configuration, responseHeaders: false)
            #expect(frames.map(\.type) == [4, 8, 1])
            #expect(frames[0].payload == [0, 2, 0, 0, 0, 0, 0, 4, 0, 0x10, 0, 0])
            #expect(frames[1].stream == 0)
            #expect(frames[1].payload == [0, 0x0F, 0, 0x01])  // 1 MiB - 65,535
            #expect(frames[2].stream == 1 && frames[2].flags == 0x4)
            var decoder = HPACKDecoder(allocator: ByteBufferAllocator())
            var block = ByteBuffer(bytes: frames[2].payload)
            let headers = try decoder.decodeHeaders(from: &block)
            #expect(
                headers.map { [$0.name, $0.value] } == [
                    [":method", "POST"], [":scheme", scheme], [":path", "/terminus.v1.UplinkReceiver/Deliver"],
                    [":authority", authority], ["content-type", "application/grpc"], ["te", "trailers"],
                    ["user-agent", "terminus"],
                ]
            )
            if scheme == "http" {
                // Static-table indices and literals without indexing, no Huffman (RFC 7541).
                let hex = frames[2].payload.map {
                    String($0, radix: 16).count == 1 ? "0" + String($0, radix: 16) : String($0, radix: 16)
                }.joined()
                #expect(
                    hex == "838604232f7465726d696e75732e76312e55706c696e6b52656365697665722f44656c69766572"
                        + "010d6261636b656e643a35303035310f10106170706c69636174696f6e2f677270630002746508"
                        + "747261696c6572730f2b087465726d696e7573"
                )
            }
            #expect(channel.isActive)
            _ = try? channel.finish()
        }
    }

    @Test("a request goes out as the frame the encoder made; PING is answered; our PING and the call's end are sent")
    func requestsAndPings() throws {
        let recorder = Recorder()
        let (channel, _) = try Self.open(recorder)
        let request = Self.request([1, 2, 3])
        try channel.writeOutbound(request)
        #expect(try Self.frames(channel) == [Frame(type: 0, flags: 0, stream: 1, payload: Self.grpc([[1, 2, 3]]))])

        try Self.feed(channel, Self.frame(6, [1, 2, 3, 4, 5, 6, 7, 8]))
        #expect(try Self.frames(channel) == [Frame(type: 6, flags: 1, stream: 0, payload: [1, 2, 3, 4, 5, 6, 7, 8])])
        // An answer to a PING is only activity.
        try Self.feed(channel, Self.frame(6, flags: 1, [0, 0, 0, 0, 0, 0, 0, 1]))
        #expect(try Self.frames(channel) == [])

        try channel.pipeline.triggerUserOutboundEvent(GRPCStreamConnection.OutboundEvent.ping(0x7465_726d)).wait()
        #expect(
            try Self.frames(channel) == [
                Frame(type: 6, flags: 0, stream: 0, payload: [0, 0, 0, 0, 0x74, 0x65, 0x72, 0x6d])
            ]
        )
        try channel.pipeline.triggerUserOutboundEvent(GRPCStreamConnection.OutboundEvent.end).wait()
        #expect(try Self.frames(channel) == [Frame(type: 0, flags: 1, stream: 1, payload: [])])
        // Nothing more is taken once the request side ended.
        #expect(throws: (any Error).self) { try channel.writeAndFlush(Self.request([4])).wait() }
        #expect(recorder.failures.isEmpty && recorder.ended.isEmpty)
        _ = try? channel.finish()
    }

    @Test(
        "flow control out: a request waits for window, splits at the backend's frame size, and the end waits behind it"
    )
    func sendWindows() throws {
        let recorder = Recorder()
        // The call's window: 100 bytes; frames up to 16,384.
        let (channel, _) = try Self.open(recorder, settings: [(0x4, 100)])
        let message = (0..<295).map { UInt8(truncatingIfNeeded: $0) }
        try channel.writeOutbound(Self.request(message))
        try channel.pipeline.triggerUserOutboundEvent(GRPCStreamConnection.OutboundEvent.end).wait()
        let whole = Self.grpc([message])
        var sent = try Self.frames(channel)
        #expect(sent == [Frame(type: 0, flags: 0, stream: 1, payload: Array(whole[0..<100]))])
        // The backend grants 150 more on the call, then raises its initial window by 100 (6.9.2).
        try Self.feed(channel, Self.frame(8, stream: 1, [0, 0, 0, 150]))
        sent = try Self.frames(channel)
        #expect(sent == [Frame(type: 0, flags: 0, stream: 1, payload: Array(whole[100..<250]))])
        try Self.feed(channel, Self.settings([(0x4, 200)]))
        sent = try Self.frames(channel)
        #expect(
            sent == [
                Frame(type: 4, flags: 1, stream: 0, payload: []),
                Frame(type: 0, flags: 0, stream: 1, payload: Array(whole[250...])),
                Frame(type: 0, flags: 1, stream: 1, payload: []),
            ]
        )

        // The connection's window (65,535, untouched by SETTINGS) and the frame size: a request of
        // 70,000 bytes goes as 16,384-byte frames up to the connection's window, the rest after
        // its WINDOW_UPDATE.
        let second = Recorder()
        let (other, _) = try Self.open(second, settings: [(0x4, 1 << 20)])
        let big = [UInt8](repeating: 7, count: 70_000 - 5)
        try other.writeOutbound(Self.request(big))
        sent = try Self.frames(other)
        #expect(sent.map(\.payload.count) == [16_384, 16_384, 16_384, 16_383])
        try Self.feed(other, Self.frame(8, [0, 1, 0, 0]))
        sent = try Self.frames(other)
        #expect(sent.map(\.payload.count) == [70_000 - 65_535])
        #expect(recorder.failures.isEmpty && second.failures.isEmpty)
        _ = try? channel.finish()
        _ = try? other.finish()
    }

    @Test("answers: gRPC messages across DATA frames, fed byte by byte and coalesced, padded; our windows topped up")
    func answers() throws {
        let recorder = Recorder()
        let (channel, _) = try Self.open(recorder)
        let messages: [[UInt8]] = [[1], [], Array(repeating: 9, count: 300)]
        let bytes = Self.grpc(messages)
        // Two DATA frames, the second padded (pad length 3), fed one byte at a time.
        var wire = Self.frame(0, stream: 1, Array(bytes[0..<7]))
        wire.writeImmutableBuffer(Self.frame(0, flags: 0x8, stream: 1, [3] + Array(bytes[7...]) + [0, 0, 0]))
        for byte in wire.readableBytesView { try Self.feed(channel, ByteBuffer(bytes: [byte])) }
        #expect(recorder.messages == messages)
        // Coalesced: several frames and messages in one read.
        var coalesced = Self.frame(0, stream: 1, Self.grpc([[4], [5]]))
        coalesced.writeImmutableBuffer(Self.frame(0, stream: 1, Self.grpc([[6]])))
        try Self.feed(channel, coalesced)
        #expect(recorder.messages == messages + [[4], [5], [6]])
        #expect(try Self.frames(channel) == [])

        // A message of half the 1 MiB window in 32 frames: once it is read, both windows are
        // granted again.
        var first = [UInt8](repeating: 0, count: 16_384)
        // Not compressed; length 0x0007FFFB: 32 frames less the 5-byte prefix.
        first.replaceSubrange(0..<5, with: [0, 0x00, 0x07, 0xFF, 0xFB])
        try Self.feed(channel, Self.frame(0, stream: 1, first))
        for _ in 1..<32 { try Self.feed(channel, Self.frame(0, stream: 1, [UInt8](repeating: 0, count: 16_384))) }
        let updates = try Self.frames(channel)
        #expect(updates.map(\.type) == [8, 8])
        #expect(updates.map(\.stream) == [0, 1])
        #expect(recorder.messages.count == messages.count + 4)
        #expect(recorder.messages.last?.count == 32 * 16_384 - 5)
        #expect(recorder.failures.isEmpty && recorder.ended.isEmpty)
        _ = try? channel.finish()
    }

    @Test("the call's end: trailers OK close quietly; an error status, an HTTP status or a reset is reported; GOAWAY")
    func callEnds() throws {
        // Trailers with grpc-status 0, sharing the response headers' HPACK dynamic table.
        do {
            let recorder = Recorder()
            let (channel, _) = try Self.open(recorder, responseHeaders: false)
            var encoder = HPACKEncoder(allocator: ByteBufferAllocator())
            // An interim response first (1xx), then the response.
            try Self.feed(channel, Self.headers([(":status", "103")], encoder: &encoder))
            try Self.feed(channel, Self.headers([(":status", "200"), ("x-pod", "backend-7")], encoder: &encoder))
            try Self.feed(channel, Self.frame(0, stream: 1, Self.grpc([[7]])))
            #expect(recorder.messages == [[7]])
            try Self.feed(
                channel,
                Self.headers([("grpc-status", "0"), ("x-pod", "backend-7")], endStream: true, encoder: &encoder)
            )
            #expect(!channel.isActive)
            #expect(Self.goAwayCode(try Self.frames(channel)) == 0)
            #expect(recorder.ended.isEmpty && recorder.failures.isEmpty)
        }
        let cases: [(ByteBuffer, String)] = [
            (
                Self.headers([("grpc-status", "14"), ("grpc-message", "draining")], endStream: true),
                "grpc-status 14 draining"
            ),
            (Self.frame(3, stream: 1, [0, 0, 0, 2]), "reset the call (HTTP/2 error 2)"),
        ]
        for (ending, reason) in cases {
            let recorder = Recorder()
            let (channel, _) = try Self.open(recorder)
            try Self.feed(channel, ending)
            #expect(!channel.isActive)
            #expect(recorder.ended.count == 1 && recorder.ended[0].contains(reason))
        }
        // A trailers-only answer (the call failed at once), and an HTTP error.
        for (headers, reason) in [
            ([(":status", "200"), ("grpc-status", "12")], "grpc-status 12"),
            ([(":status", "503")], "HTTP status 503"),
        ] {
            let recorder = Recorder()
            let (channel, _) = try Self.open(recorder, responseHeaders: false)
            try Self.feed(channel, Self.headers(headers, endStream: headers.count > 1))
            #expect(!channel.isActive)
            #expect(recorder.ended.count == 1 && recorder.ended[0].contains(reason))
        }
        // GOAWAY that kept our call: reported, the call goes on; one that did not: closed.
        do {
            let recorder = Recorder()
            let (channel, _) = try Self.open(recorder)
            try Self.feed(channel, Self.frame(7, [0, 0, 0, 1, 0, 0, 0, 0]))
            #expect(recorder.goingAway == 1 && channel.isActive)
            try Self.feed(channel, Self.frame(0, stream: 1, Self.grpc([[1]])))
            #expect(recorder.messages == [[1]])
            _ = try? channel.finish()
            let refused = Recorder()
            let (other, _) = try Self.open(refused)
            try Self.feed(other, Self.frame(7, [0, 0, 0, 0, 0, 0, 0, 2] + Array("overloaded".utf8)))
            #expect(refused.goingAway == 1 && !other.isActive)
            #expect(refused.ended.count == 1 && refused.ended[0].contains("overloaded"))
        }
    }

    @Test("every violation closes the connection after a GOAWAY with its error code, and is reported")
    func violations() throws {
        let oversized = [UInt8](repeating: 0, count: 16_385)
        var longMessage = ByteBuffer()
        longMessage.writeInteger(UInt8(0))
        longMessage.writeInteger(UInt32(4 * 1024 * 1024 + 1))
        let cases: [(name: String, settings: Bool, headers: Bool, bytes: ByteBuffer, code: UInt32)] = [
            ("a preface that is not SETTINGS", false, false, Self.frame(6, [0, 0, 0, 0, 0, 0, 0, 0]), 1),
            ("a frame over 16,384 bytes", true, true, Self.frame(0, stream: 1, oversized), 6),
            ("PUSH_PROMISE", true, true, Self.frame(5, flags: 4, stream: 1, [0, 0, 0, 2]), 1),
            ("DATA on another stream", true, true, Self.frame(0, stream: 3, [0]), 1),
            ("DATA before the response headers", true, false, Self.frame(0, stream: 1, [0]), 1),
            ("WINDOW_UPDATE of 0", true, true, Self.frame(8, [0, 0, 0, 0]), 1),
            ("a window over 2^31-1", true, true, Self.frame(8, [0x7F, 0xFF, 0xFF, 0xFF]), 3),
            ("CONTINUATION without HEADERS", true, true, Self.frame(9, flags: 4, stream: 1, [0x88]), 1),
            ("a PING of 7 bytes", true, true, Self.frame(6, [0, 0, 0, 0, 0, 0, 0]), 6),
            ("SETTINGS_MAX_FRAME_SIZE below 16,384", true, true, Self.settings([(0x5, 100)]), 1),
            ("a compressed message", true, true, Self.frame(0, stream: 1, [1, 0, 0, 0, 1, 0]), 1),
            ("a message over 4 MiB", true, true, Self.frame(0, stream: 1, Array(longMessage.readableBytesView)), 0xB),
            (
                "a header block that is not HPACK", true, false,
                Self.frame(1, flags: 4, stream: 1, [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]), 9
            ),
            ("padding longer than the frame", true, true, Self.frame(0, flags: 8, stream: 1, [5, 0]), 1),
        ]
        for item in cases {
            let recorder = Recorder()
            let channel = EmbeddedChannel()
            try channel.pipeline.syncOperations.addHandler(
                GRPCStreamConnection(configuration: Self.configuration, delegate: recorder.delegate)
            )
            try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
            _ = try Self.outbound(channel)
            if item.settings { try Self.feed(channel, Self.settings([])) }
            if item.headers { try Self.feed(channel, Self.headers([(":status", "200")])) }
            _ = try Self.outbound(channel)
            try Self.feed(channel, item.bytes)
            #expect(!channel.isActive, "\(item.name)")
            #expect(Self.goAwayCode(try Self.frames(channel)) == item.code, "\(item.name)")
            #expect(recorder.failures.count == 1, "\(item.name)")
        }

        // An answer the call does not take (the delegate throws): CANCEL.
        let refusing = Recorder()
        refusing.refuse = true
        let (other, _) = try Self.open(refusing)
        try Self.feed(other, Self.frame(0, stream: 1, Self.grpc([[1]])))
        #expect(!other.isActive)
        #expect(Self.goAwayCode(try Self.frames(other)) == 8)
    }

    @Test("a header block in HEADERS and CONTINUATION frames is decoded whole; one over the limit is refused")
    func continuation() throws {
        let recorder = Recorder()
        let (channel, _) = try Self.open(recorder, responseHeaders: false)
        var encoder = HPACKEncoder(allocator: ByteBufferAllocator())
        var block = ByteBuffer()
        try encoder.encode(headers: [":status": "200", "x-long": String(repeating: "v", count: 40)], to: &block)
        let bytes = Array(block.readableBytesView)
        var wire = Self.frame(1, stream: 1, Array(bytes[0..<10]))
        wire.writeImmutableBuffer(Self.frame(9, stream: 1, Array(bytes[10..<20])))
        wire.writeImmutableBuffer(Self.frame(9, flags: 4, stream: 1, Array(bytes[20...])))
        try Self.feed(channel, wire)
        try Self.feed(channel, Self.frame(0, stream: 1, Self.grpc([[42]])))
        #expect(recorder.messages == [[42]])
        #expect(channel.isActive && recorder.failures.isEmpty)
        _ = try? channel.finish()

        var small = Self.configuration
        small.maximumHeaderBlock = 100
        let limited = Recorder()
        let (other, _) = try Self.open(limited, configuration: small, responseHeaders: false)
        try Self.feed(other, Self.frame(1, stream: 1, [UInt8](repeating: 0x88, count: 60)))
        try Self.feed(other, Self.frame(9, stream: 1, [UInt8](repeating: 0x88, count: 60)))
        #expect(!other.isActive)
        #expect(Self.goAwayCode(try Self.frames(other)) == 0xB)
    }
}
