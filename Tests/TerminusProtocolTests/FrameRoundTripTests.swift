import NIOCore
import NIOTestUtils
import TerminusProtocol
import Testing

@Suite("Frame codec")
struct FrameRoundTripTests {
    static let samples: [Frame] = [
        .hello(
            Hello(
                keepaliveSeconds: 120,
                capabilities: [.compressedPush, .topicAliases],
                deviceID: "spk-000123",
                authMethod: .token,
                credential: ByteBuffer(string: "v1.1767225600.abc")
            )
        ),
        .hello(
            Hello(
                keepaliveSeconds: 0,
                capabilities: [],
                deviceID: "",
                authMethod: .certificate,
                credential: ByteBuffer()
            )
        ),
        .welcome(
            Welcome(
                keepaliveSeconds: 240,
                maxFrameSize: 65536,
                maxInflight: 32,
                maxPayloadSize: 262_144,
                maxTopicAliases: 16,
                capabilities: [.topicAliases],
                deviceID: "spk-000123",
                gatewayID: "gw-1"
            )
        ),
        .publish(
            Message(messageID: 7, qos: .atLeastOnce, topic: "pay/done", payload: ByteBuffer(string: "{\"amt\":100}"))
        ),
        .publish(Message(messageID: 0, qos: .atMostOnce, topic: "t", payload: ByteBuffer())),
        // Not ASCII: decoded by the standard library's UTF-8 validation, not the ASCII fast path.
        .publish(Message(messageID: 11, qos: .atLeastOnce, topic: "ünïcode/ok", payload: ByteBuffer())),
        .publish(
            Message(
                messageID: 9,
                qos: .atLeastOnce,
                compressed: true,
                dictionaryID: 3,
                topicAlias: 2,
                topic: "printer/status",
                payload: ByteBuffer(bytes: [1, 2, 3])
            )
        ),
        .publish(Message(messageID: 10, qos: .atLeastOnce, topicAlias: 2, topic: "", payload: ByteBuffer(string: "x"))),
        .ack(Ack(messageID: 7, status: .retryLater, retryAfterSeconds: 5)),
        .push(
            Message(
                messageID: 1,
                qos: .atLeastOnce,
                compressed: true,
                topic: "cmd/print",
                payload: ByteBuffer(bytes: [9])
            )
        ),
        .ping(ByteBuffer(bytes: [1, 2, 3, 4, 5, 6, 7, 8])),
        .ping(ByteBuffer()),
        .pong(ByteBuffer(bytes: [1])),
        .goAway(GoAway(code: .shuttingDown, reconnectAfterMilliseconds: 1500, message: "draining")),
    ]

    @Test("every frame kind survives encode then decode", arguments: Self.samples)
    func roundTrip(frame: Frame) throws {
        var buffer = ByteBuffer()
        let written = buffer.writeFrame(frame)
        #expect(written == buffer.readableBytes)
        #expect(buffer.getInteger(at: 0, as: UInt32.self) == UInt32(written - 4))
        var decoder = FrameDecoder(maxFrameLength: 1 << 20)
        let decoded = try decoder.decode(buffer: &buffer)
        #expect(decoded == frame)
        #expect(buffer.readableBytes == 0)
    }

    @Test("samples cover every frame kind")
    func coverage() {
        #expect(Set(Self.samples.map(\.type)) == Set(FrameType.allCases))
    }

    @Test("the decoder handles frames split at every byte and glued together")
    func verifier() throws {
        let pairs: [(ByteBuffer, [Frame])] = Self.samples.map { frame in
            var buffer = ByteBuffer()
            buffer.writeFrame(frame)
            return (buffer, [frame])
        }
        try ByteToMessageDecoderVerifier.verifyDecoder(
            inputOutputPairs: pairs,
            decoderFactory: { FrameDecoder(maxFrameLength: 1 << 20) }
        )
    }

    @Test(
        "a connection's decoder hands a kept topic's own string (its last two) to a message with the same topic bytes, and decodes any other topic afresh"
    )
    func topicReuse() throws {
        let long = "pay/merchant-000123/speaker-000456/done"
        let sameLength = "pay/merchant-000123/speaker-000456/dona"
        let third = "pay/merchant-000123/speaker-000456/third"
        let tooLong = String(repeating: "t", count: 129)
        let sent: [(topic: String, alias: UInt16?)] = [
            (long, nil), (long, nil), (sameLength, nil), (long, nil), ("", 3), (long, 3), (tooLong, nil),
            (tooLong, nil), (long, nil), (third, nil), (sameLength, nil), (long, nil),
        ]
        var buffer = ByteBuffer()
        for (index, (topic, alias)) in sent.enumerated() {
            let message = Message(
                messageID: UInt32(index),
                qos: .atLeastOnce,
                topicAlias: alias,
                topic: topic,
                payload: ByteBuffer(string: "x")
            )
            buffer.writeFrame(.publish(message))
        }
        var decoder = FrameDecoder(maxFrameLength: 1 << 20)
        var topics: [String] = []
        while let frame = try decoder.decode(buffer: &buffer) {
            guard case .publish(let message) = frame else {
                Issue.record("not a PUBLISH: \(frame)")
                return
            }
            topics.append(message.topic)
        }
        #expect(topics == sent.map(\.topic))
        func storage(_ index: Int) -> UnsafePointer<UInt8>? {
            topics[index].utf8.withContiguousStorageIfAvailable { $0.baseAddress }!
        }
        #expect(storage(1) == storage(0), "the same topic again: the first message's string")
        #expect(storage(2) != storage(0), "same length, other bytes: decoded afresh")
        #expect(storage(3) == storage(0), "the topic before the last is kept too: two topics alternate")
        #expect(storage(5) == storage(3), "an aliased empty topic leaves the kept ones")
        #expect(storage(7) != storage(6), "a topic above 128 bytes is not kept")
        #expect(storage(8) == storage(0), "and leaves the ones kept before")
        // `third` is kept with `long` (used last): `sameLength`, unused since, was let go.
        #expect(storage(10) != storage(2), "a third topic lets the least recent go")
        #expect(storage(11) != storage(0), "and the next lets the one before go")

        // The whole topic must be in the frame before it is compared: a truncated body with a
        // kept topic's length is malformed, as without one.
        var truncated = ByteBuffer()
        truncated.writeFrame(.publish(Message(messageID: 1, qos: .atLeastOnce, topic: long, payload: ByteBuffer())))
        let cut = truncated.readableBytes - 10
        truncated.setInteger(UInt32(cut - 4), at: 0)
        truncated.moveWriterIndex(to: cut)
        var again = FrameDecoder(maxFrameLength: 1 << 20)
        var first = ByteBuffer()
        first.writeFrame(.publish(Message(messageID: 0, qos: .atLeastOnce, topic: long, payload: ByteBuffer())))
        _ = try again.decode(buffer: &first)
        #expect(throws: ProtocolError.self) { try again.decode(buffer: &truncated) }
    }

    @Test("the kept topic is compared byte for byte: a difference in any 8-byte word or in the tail decodes afresh")
    func topicReuseComparesEveryByte() throws {
        // 39 bytes: four words of 8 and a tail of 7; one byte changed at each position.
        let kept = "pay/merchant-000123/speaker-000456/done"
        for position in [0, 7, 8, 20, 31, 32, 38] {
            var bytes = Array(kept.utf8)
            bytes[position] = bytes[position] == UInt8(ascii: "x") ? UInt8(ascii: "y") : UInt8(ascii: "x")
            let other = String(decoding: bytes, as: UTF8.self)
            var buffer = ByteBuffer()
            for topic in [kept, other, kept] {
                buffer.writeFrame(
                    .publish(Message(messageID: 1, qos: .atLeastOnce, topic: topic, payload: ByteBuffer()))
                )
            }
            var decoder = FrameDecoder(maxFrameLength: 1 << 20)
            var topics: [String] = []
            while case .publish(let message) = try decoder.decode(buffer: &buffer) { topics.append(message.topic) }
            #expect(topics == [kept, other, kept], "byte \(position)")
        }
    }

    @Test("ACKs are written as the document's 14 bytes, at any offset, one after another")
    func ackEncoding() throws {
        let acks = [
            Ack(messageID: 1, status: .ok),
            Ack(messageID: 0xDEAD_BEEF, status: .retryLater, retryAfterSeconds: 0xFFFF),
            Ack(messageID: UInt32.max, status: TerminusCode(rawValue: 0xABCD), retryAfterSeconds: 5),
        ]
        // Odd offset: the fields land unaligned.
        var buffer = ByteBuffer(bytes: [0xEE])
        for ack in acks { #expect(buffer.writeAck(ack) == 14) }
        #expect(buffer.readInteger(as: UInt8.self) == 0xEE)
        var expected = ByteBuffer()
        for ack in acks {
            // The layout of docs/protocol.md, field by field.
            expected.writeInteger(UInt32(10))
            expected.writeInteger(FrameType.ack.rawValue)
            expected.writeInteger(UInt8(0))
            expected.writeInteger(ack.messageID)
            expected.writeInteger(ack.status.rawValue)
            expected.writeInteger(ack.retryAfterSeconds)
        }
        #expect(Array(buffer.readableBytesView) == Array(expected.readableBytesView))
        var decoder = FrameDecoder(maxFrameLength: 1 << 20)
        var decoded: [Ack] = []
        while case .ack(let ack) = try decoder.decode(buffer: &buffer) { decoded.append(ack) }
        #expect(decoded == acks)
    }

    @Test("a waiting partial frame is not an error until EOF")
    func partialFrame() throws {
        var buffer = ByteBuffer()
        buffer.writeFrame(.ping(ByteBuffer()))
        var partial = buffer.getSlice(at: 0, length: 5)!
        var decoder = FrameDecoder(maxFrameLength: 1024)
        #expect(try decoder.decode(buffer: &partial) == nil)
        #expect(throws: ProtocolError.self) { try decoder.decodeLast(buffer: &partial, seenEOF: true) }
    }
}

@Suite("Frame decoder errors")
struct FrameDecoderErrorTests {
    func decode(_ bytes: [UInt8], max: Int = 1024) -> TerminusCode? {
        var buffer = ByteBuffer(bytes: bytes)
        var decoder = FrameDecoder(maxFrameLength: max)
        do {
            _ = try decoder.decode(buffer: &buffer)
            return nil
        } catch let error as ProtocolError {
            return error.code
        } catch {
            return .internalError
        }
    }

    @Test("an oversize length is refused from the first four bytes")
    func oversize() {
        #expect(self.decode([0x00, 0x10, 0x00, 0x01], max: 1024) == .frameTooLarge)
    }

    @Test("a length below two is malformed")
    func tooShort() {
        #expect(self.decode([0, 0, 0, 1, 0x06]) == .malformedFrame)
    }

    @Test("unknown frame type")
    func unknownType() {
        #expect(self.decode([0, 0, 0, 2, 0x7F, 0]) == .unknownFrameType)
    }

    @Test("flags on a frame kind that takes none, and reserved PUBLISH bits")
    func badFlags() {
        #expect(self.decode([0, 0, 0, 2, 0x06, 0x01]) == .badFlags)
        #expect(self.decode([0, 0, 0, 9, 0x03, 0x80, 0, 0, 0, 1, 0, 1, 0x61]) == .badFlags)
        // DICTIONARY without COMPRESSED
        #expect(self.decode([0, 0, 0, 11, 0x03, 0x04, 0, 0, 0, 1, 0, 1, 0x61, 0, 1]) == .badFlags)
    }

    @Test("unsupported protocol version in HELLO")
    func version() {
        #expect(self.decode([0, 0, 0, 3, 0x01, 0x00, 0x02]) == .unsupportedVersion)
    }

    @Test("a truncated body is malformed")
    func truncatedBody() {
        // ACK needs 8 body bytes; 4 given.
        #expect(self.decode([0, 0, 0, 6, 0x04, 0x00, 0, 0, 0, 1]) == .malformedFrame)
        // PUBLISH topic length 5 but 1 byte follows.
        #expect(self.decode([0, 0, 0, 9, 0x03, 0x01, 0, 0, 0, 1, 0, 5, 0x61]) == .malformedFrame)
    }

    @Test("trailing bytes after a fixed-size body are malformed")
    func trailing() {
        #expect(self.decode([0, 0, 0, 11, 0x04, 0x00, 0, 0, 0, 1, 0, 0, 0, 0, 0xFF]) == .malformedFrame)
    }

    @Test("a topic that is not UTF-8 is an invalid topic")
    func invalidUTF8() {
        #expect(self.decode([0, 0, 0, 10, 0x03, 0x01, 0, 0, 0, 1, 0, 2, 0xC3, 0x28]) == .invalidTopic)
    }

    @Test("PING bodies are capped at eight bytes")
    func pingBody() {
        #expect(self.decode([0, 0, 0, 11, 0x06, 0x00] + Array(repeating: 0, count: 9)) == .malformedFrame)
    }
}

@Suite("Topic and device id rules")
struct TopicTests {
    @Test(
        "valid topics pass",
        arguments: [
            "a", "pay/done", "printer/0001/status", "ünïcode/ok", "tenant-4821/spk-000123/pay/done", "a/\u{A0}/b",
        ]
    )
    func valid(topic: String) throws {
        try Topic.validatePublishTopic(topic, maxLength: 64)
    }

    @Test(
        "invalid topics are refused with INVALID_TOPIC",
        arguments: [
            "", "$sys/x", "a/+/b", "a/#", "a\u{0}b", String(repeating: "x", count: 65), "a\u{7F}", "a/\u{85}/b",
            "tenant-4821/spk-000123/pay/done\u{1B}", "tenant-4821/spk-000123/pay/#",
        ]
    )
    func invalid(topic: String) {
        do throws(ProtocolError) {
            try Topic.validatePublishTopic(topic, maxLength: 64)
            Issue.record("accepted \(topic)")
        } catch {
            #expect(error.code == .invalidTopic)
        }
    }

    @Test("device ids are printable ASCII without '/' or spaces")
    func deviceIDs() throws {
        try Topic.validateDeviceID("spk-0001:a.b_c", maxLength: 128)
        for bad in ["", "a b", "a/b", "é", String(repeating: "x", count: 129)] {
            #expect(throws: ProtocolError.self) { try Topic.validateDeviceID(bad, maxLength: 128) }
        }
    }
}

@Suite("Codes")
struct CodeTests {
    @Test("every defined code has a unique name and value")
    func unique() {
        let names = TerminusCode.allDefined.map(\.name)
        #expect(Set(names).count == names.count)
        #expect(Set(TerminusCode.allDefined.map(\.rawValue)).count == names.count)
        let unnamed = names.filter { $0.hasPrefix("UNKNOWN(") }
        #expect(unnamed.isEmpty)
        #expect(TerminusCode(rawValue: 9999).name == "UNKNOWN(9999)")
    }
}
