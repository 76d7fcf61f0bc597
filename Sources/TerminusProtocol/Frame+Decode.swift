public import NIOCore

extension Frame {
    /// The longest topic a connection's decoder keeps for the next message to reuse: what it
    /// holds per connection is bounded whatever `limits.max_topic_length` allows.
    static let maxCachedTopicSize = 128

    /// Decodes one frame from its type, flags and body (the bytes after the length prefix).
    ///
    /// The body must be consumed exactly: missing or trailing bytes are `MALFORMED_FRAME`.
    /// Strings are validated as UTF-8 without repair.
    public static func decode(
        type rawType: UInt8,
        flags: UInt8,
        body: inout ByteBuffer
    ) throws(ProtocolError)
        -> Frame
    {
        var topics = RecentTopics()
        return try Self.decode(type: rawType, flags: flags, body: &body, topics: &topics)
    }

    /// Like `decode(type:flags:body:)`; `topics` holds the last two topics of the messages
    /// decoded before on the same connection: a PUBLISH or PUSH with the same topic bytes as
    /// one of them gets that string (devices send on one topic, or alternate between two,
    /// again and again; no allocation), and a new topic of up to `maxCachedTopicSize` bytes
    /// takes the place of the older one.
    public static func decode(
        type rawType: UInt8,
        flags: UInt8,
        body: inout ByteBuffer,
        topics: inout RecentTopics
    ) throws(ProtocolError)
        -> Frame
    {
        guard let type = FrameType(rawValue: rawType) else {
            throw ProtocolError(.unknownFrameType, "unknown frame type 0x\(String(rawType, radix: 16))")
        }
        let frame: Frame
        switch type {
        case .publish, .push:
            let message = try Self.decodeMessage(type: type, flags: flags, body: &body, topics: &topics)
            frame = type == .publish ? .publish(message) : .push(message)
        case .hello:
            try Self.requireNoFlags(flags, type)
            frame = .hello(try Self.decodeHello(&body))
        case .welcome:
            try Self.requireNoFlags(flags, type)
            frame = .welcome(try Self.decodeWelcome(&body))
        case .ack:
            try Self.requireNoFlags(flags, type)
            let id = try body.readOrThrow(UInt32.self, "ACK message_id")
            let status = try body.readOrThrow(UInt16.self, "ACK status")
            let retry = try body.readOrThrow(UInt16.self, "ACK retry_after")
            frame = .ack(Ack(messageID: id, status: TerminusCode(rawValue: status), retryAfterSeconds: retry))
        case .ping, .pong:
            try Self.requireNoFlags(flags, type)
            guard body.readableBytes <= WireProtocol.maxPingBodySize else {
                throw ProtocolError(.malformedFrame, "PING/PONG body above \(WireProtocol.maxPingBodySize) bytes")
            }
            let opaque = body.readSlice(length: body.readableBytes)!
            frame = type == .ping ? .ping(opaque) : .pong(opaque)
        case .goAway:
            try Self.requireNoFlags(flags, type)
            let code = try body.readOrThrow(UInt16.self, "GOAWAY code")
            let after = try body.readOrThrow(UInt32.self, "GOAWAY reconnect_after")
            let message = try body.readUTF8(lengthType: UInt8.self, field: "GOAWAY message", code: .malformedFrame)
            frame = .goAway(
                GoAway(code: TerminusCode(rawValue: code), reconnectAfterMilliseconds: after, message: message)
            )
        }
        guard body.readableBytes == 0 else {
            throw ProtocolError(.malformedFrame, "\(body.readableBytes) trailing bytes after \(type)")
        }
        return frame
    }

    private static func requireNoFlags(_ flags: UInt8, _ type: FrameType) throws(ProtocolError) {
        guard flags == 0 else {
            throw ProtocolError(.badFlags, "\(type) takes no flags, got 0x\(String(flags, radix: 16))")
        }
    }

    private static func decodeHello(_ body: inout ByteBuffer) throws(ProtocolError) -> Hello {
        let version = try body.readOrThrow(UInt8.self, "HELLO version")
        guard version == WireProtocol.version else {
            throw ProtocolError(
                .unsupportedVersion,
                "protocol version \(version) is not supported (this gateway speaks 1)"
            )
        }
        let keepalive = try body.readOrThrow(UInt16.self, "HELLO keepalive")
        let capabilities = try body.readOrThrow(UInt32.self, "HELLO capabilities")
        let deviceID = try body.readUTF8(lengthType: UInt8.self, field: "HELLO device_id", code: .invalidDeviceID)
        let rawMethod = try body.readOrThrow(UInt8.self, "HELLO auth_method")
        guard let method = AuthMethod(rawValue: rawMethod) else {
            throw ProtocolError(.malformedFrame, "unknown auth_method \(rawMethod)")
        }
        let credentialLength = try body.readOrThrow(UInt16.self, "HELLO credential length")
        guard let credential = body.readSlice(length: Int(credentialLength)) else {
            throw ProtocolError(.malformedFrame, "HELLO credential is truncated")
        }
        var receiveLimit: UInt32? = nil
        if Capabilities(rawValue: capabilities).contains(.receiveLimit) {
            let limit = try body.readOrThrow(UInt32.self, "HELLO max_receive_frame")
            guard limit >= WireProtocol.minimumReceiveFrameSize else {
                throw ProtocolError(
                    .malformedFrame,
                    "HELLO max_receive_frame below \(WireProtocol.minimumReceiveFrameSize)"
                )
            }
            receiveLimit = limit
        }
        return Hello(
            version: version,
            keepaliveSeconds: keepalive,
            capabilities: Capabilities(rawValue: capabilities),
            deviceID: deviceID,
            authMethod: method,
            credential: credential,
            maxReceiveFrameSize: receiveLimit
        )
    }

    private static func decodeWelcome(_ body: inout ByteBuffer) throws(ProtocolError) -> Welcome {
        let version = try body.readOrThrow(UInt8.self, "WELCOME version")
        guard version == WireProtocol.version else {
            throw ProtocolError(.unsupportedVersion, "protocol version \(version) is not supported")
        }
        return Welcome(
            version: version,
            keepaliveSeconds: try body.readOrThrow(UInt16.self, "WELCOME keepalive"),
            maxFrameSize: try body.readOrThrow(UInt32.self, "WELCOME max_frame_size"),
            maxInflight: try body.readOrThrow(UInt16.self, "WELCOME max_inflight"),
            maxPayloadSize: try body.readOrThrow(UInt32.self, "WELCOME max_payload_size"),
            maxTopicAliases: try body.readOrThrow(UInt16.self, "WELCOME max_topic_aliases"),
            capabilities: Capabilities(rawValue: try body.readOrThrow(UInt32.self, "WELCOME capabilities")),
            deviceID: try body.readUTF8(lengthType: UInt8.self, field: "WELCOME device_id", code: .invalidDeviceID),
            gatewayID: try body.readUTF8(lengthType: UInt8.self, field: "WELCOME gateway_id", code: .malformedFrame)
        )
    }

    private static func decodeMessage(
        type: FrameType,
        flags rawFlags: UInt8,
        body: inout ByteBuffer,
        topics: inout RecentTopics
    )
        throws(ProtocolError) -> Message
    {
        let flags = PublishFlags(rawValue: rawFlags)
        guard flags.isSubset(of: .allDefined) else {
            throw ProtocolError(.badFlags, "reserved \(type) flag bits set: 0x\(String(rawFlags, radix: 16))")
        }
        if flags.contains(.dictionary) && !flags.contains(.compressed) {
            throw ProtocolError(.badFlags, "DICTIONARY flag without COMPRESSED")
        }
        if flags.contains(.topicAlias) && type == .push {
            throw ProtocolError(.badFlags, "PUSH does not use topic aliases")
        }
        if flags.contains(.idempotencyKey) && type == .push {
            throw ProtocolError(.badFlags, "PUSH does not carry an idempotency key")
        }
        let messageID = try body.readOrThrow(UInt32.self, "\(type) message_id")
        var alias: UInt16? = nil
        if flags.contains(.topicAlias) {
            let value = try body.readOrThrow(UInt16.self, "\(type) topic_alias")
            guard value != 0 else { throw ProtocolError(.unknownTopicAlias, "topic alias 0 is reserved") }
            alias = value
        }
        let topic = try body.readTopic(type, recent: &topics)
        if topic.isEmpty && alias == nil {
            throw ProtocolError(.invalidTopic, "empty topic without a topic alias")
        }
        var dictionaryID: UInt16? = nil
        if flags.contains(.dictionary) {
            dictionaryID = try body.readOrThrow(UInt16.self, "\(type) dictionary_id")
        }
        var idempotencyKey: ByteBuffer? = nil
        if flags.contains(.idempotencyKey) {
            let length = Int(try body.readOrThrow(UInt8.self, "\(type) idempotency_key length"))
            guard length >= 1, length <= WireProtocol.maxIdempotencyKeySize else {
                throw ProtocolError(.malformedFrame, "idempotency key of \(length) bytes (1…64)")
            }
            guard let key = body.readSlice(length: length) else {
                throw ProtocolError(.malformedFrame, "\(type) idempotency_key is truncated")
            }
            idempotencyKey = key
        }
        let payload = body.readSlice(length: body.readableBytes)!
        return Message(
            messageID: messageID,
            qos: flags.contains(.qos1) ? .atLeastOnce : .atMostOnce,
            compressed: flags.contains(.compressed),
            dictionaryID: dictionaryID,
            topicAlias: alias,
            topic: topic,
            payload: payload,
            idempotencyKey: idempotencyKey
        )
    }
}

extension ByteBuffer {
    @inlinable
    mutating func readOrThrow<I: FixedWidthInteger>(
        _: I.Type,
        _ field: @autoclosure () -> String
    )
        throws(ProtocolError) -> I
    {
        guard let value = self.readInteger(as: I.self) else {
            throw ProtocolError(.malformedFrame, "\(field()) is truncated")
        }
        return value
    }

    /// A message's topic: the string kept in `recent` when the bytes are the same as one of its.
    mutating func readTopic(_ type: FrameType, recent: inout RecentTopics) throws(ProtocolError) -> String {
        if let length = self.getInteger(at: self.readerIndex, as: UInt16.self), length > 0,
            let kept = self.withUnsafeReadableBytes({ bytes -> String? in
                guard bytes.count >= 2 + Int(length) else { return nil }
                return recent.take(UnsafeRawBufferPointer(rebasing: bytes[2..<(2 + Int(length))]))
            })
        {
            self.moveReaderIndex(forwardBy: 2 + Int(length))
            return kept
        }
        let topic = try self.readUTF8(lengthType: UInt16.self, field: "\(type) topic", code: .invalidTopic)
        if !topic.isEmpty && topic.utf8.count <= Frame.maxCachedTopicSize { recent.keep(topic) }
        return topic
    }

    /// Eight bytes at a time: `elementsEqual` over the two buffers cost about 20 instructions a
    /// byte (callgrind), on every message whose topic is one its connection kept.
    static func bytesEqual(_ a: UnsafeRawBufferPointer, _ b: UnsafeRawBufferPointer) -> Bool {
        guard a.count == b.count else { return false }
        var offset = 0
        while offset + 8 <= a.count {
            guard
                a.loadUnaligned(fromByteOffset: offset, as: UInt64.self)
                    == b.loadUnaligned(fromByteOffset: offset, as: UInt64.self)
            else { return false }
            offset += 8
        }
        while offset < a.count {
            guard a[offset] == b[offset] else { return false }
            offset += 1
        }
        return true
    }

    /// Reads a length-prefixed string, rejecting invalid UTF-8 with `code`.
    ///
    /// `field` names the field in error messages only: it is built when there is an error, not
    /// for every frame (interpolating a frame type costs more than reading the string).
    mutating func readUTF8<L: FixedWidthInteger>(
        lengthType: L.Type,
        field: @autoclosure () -> String,
        code: TerminusCode
    )
        throws(ProtocolError) -> String
    {
        let length = try self.readOrThrow(L.self, "\(field()) length")
        guard let slice = self.readSlice(length: Int(length)) else {
            throw ProtocolError(.malformedFrame, "\(field()) is truncated")
        }
        if slice.readableBytes == 0 { return "" }
        let string = slice.withUnsafeReadableBytes { bytes -> String? in
            // Device ids and topics are ASCII almost always, and ASCII is valid UTF-8: decoded
            // straight away, without the standard library's validation (not specialised: it
            // looks up generic metadata on every call, ~1 % of a lone message's CPU).
            var union: UInt8 = 0
            for byte in bytes { union |= byte }
            if union < 0x80 { return String(decoding: bytes, as: UTF8.self) }
            return String(validating: bytes, as: UTF8.self)
        }
        guard let string else { throw ProtocolError(code, "\(field()) is not valid UTF-8") }
        return string
    }
}

/// The last two distinct topics of a connection's messages, most recent first (each at most
/// `maxCachedTopicSize` bytes): what `FrameDecoder` hands to a message whose topic has the same
/// bytes, instead of a new `String` (an allocation for a topic over 15 bytes). Two, not one: a
/// payment speaker alternates between its payment and status topics, and with one kept topic
/// 0.53 topic allocations a message remained in the load generator's mixed traffic.
public struct RecentTopics: Sendable {
    private var first = ""
    private var second = ""

    public init() {}

    /// The kept topic with exactly `bytes`, now the most recent; nil when neither has them.
    mutating func take(_ bytes: UnsafeRawBufferPointer) -> String? {
        if Self.equal(self.first, bytes) { return self.first }
        guard Self.equal(self.second, bytes) else { return nil }
        swap(&self.first, &self.second)
        return self.first
    }

    /// Keeps `topic` as the most recent; the older one is let go.
    mutating func keep(_ topic: String) {
        self.second = topic
        swap(&self.first, &self.second)
    }

    private static func equal(_ topic: String, _ bytes: UnsafeRawBufferPointer) -> Bool {
        topic.utf8.count == bytes.count && bytes.count > 0
            && topic.utf8.withContiguousStorageIfAvailable { ByteBuffer.bytesEqual(UnsafeRawBufferPointer($0), bytes) }
                == true
    }
}
