public import NIOCore

extension ByteBuffer {
    /// Appends `frame` with its length prefix, type and flags.
    ///
    /// Strings longer than their length field allows are a programming error: callers
    /// validate device ids, topics and GOAWAY messages before building frames.
    @discardableResult
    public mutating func writeFrame(_ frame: Frame) -> Int {
        if case .ack(let ack) = frame { return self.writeAck(ack) }
        let lengthIndex = self.writerIndex
        self.writeInteger(UInt32(0))
        let written = Self.writeFrameContent(frame, into: &self)
        self.setInteger(UInt32(written), at: lengthIndex)
        return 4 + written
    }

    /// Appends an ACK frame, the one frame written for every acknowledged message: its 14
    /// bytes (length 10, type, flags 0, message id, status, retry-after; big-endian) stored at
    /// once. Field by field, as `writeFrame` writes other frames, each of the six writes checks
    /// capacity, uniqueness and exclusivity: about 2,000 instructions an ACK (callgrind).
    @discardableResult
    public mutating func writeAck(_ ack: Ack) -> Int {
        self.writeWithUnsafeMutableBytes(minimumWritableBytes: 14) { bytes in
            bytes.storeBytes(of: UInt32(10).bigEndian, toByteOffset: 0, as: UInt32.self)
            bytes.storeBytes(of: FrameType.ack.rawValue, toByteOffset: 4, as: UInt8.self)
            bytes.storeBytes(of: 0, toByteOffset: 5, as: UInt8.self)
            bytes.storeBytes(of: ack.messageID.bigEndian, toByteOffset: 6, as: UInt32.self)
            bytes.storeBytes(of: ack.status.rawValue.bigEndian, toByteOffset: 10, as: UInt16.self)
            bytes.storeBytes(of: ack.retryAfterSeconds.bigEndian, toByteOffset: 12, as: UInt16.self)
            return 14
        }
    }

    private static func writeFrameContent(_ frame: Frame, into buffer: inout ByteBuffer) -> Int {
        do {
            var written = buffer.writeInteger(frame.type.rawValue)
            switch frame {
            case .hello(let hello):
                written += buffer.writeInteger(UInt8(0))
                written += buffer.writeInteger(hello.version)
                written += buffer.writeInteger(hello.keepaliveSeconds)
                written += buffer.writeInteger(hello.capabilities.rawValue)
                written += buffer.writeShortString(hello.deviceID, as: UInt8.self)
                written += buffer.writeInteger(hello.authMethod.rawValue)
                written += buffer.writeInteger(UInt16(hello.credential.readableBytes))
                written += buffer.writeImmutableBuffer(hello.credential)
                if let limit = hello.maxReceiveFrameSize { written += buffer.writeInteger(limit) }
            case .welcome(let welcome):
                written += buffer.writeInteger(UInt8(0))
                written += buffer.writeInteger(welcome.version)
                written += buffer.writeInteger(welcome.keepaliveSeconds)
                written += buffer.writeInteger(welcome.maxFrameSize)
                written += buffer.writeInteger(welcome.maxInflight)
                written += buffer.writeInteger(welcome.maxPayloadSize)
                written += buffer.writeInteger(welcome.maxTopicAliases)
                written += buffer.writeInteger(welcome.capabilities.rawValue)
                written += buffer.writeShortString(welcome.deviceID, as: UInt8.self)
                written += buffer.writeShortString(welcome.gatewayID, as: UInt8.self)
            case .publish(let message), .push(let message):
                written += buffer.writeInteger(message.flags.rawValue)
                written += buffer.writeInteger(message.messageID)
                if let alias = message.topicAlias { written += buffer.writeInteger(alias) }
                written += buffer.writeShortString(message.topic, as: UInt16.self)
                if let dictionary = message.dictionaryID { written += buffer.writeInteger(dictionary) }
                if let key = message.idempotencyKey {
                    written += buffer.writeInteger(UInt8(truncatingIfNeeded: key.readableBytes))
                    written += buffer.writeImmutableBuffer(key)
                }
                written += buffer.writeImmutableBuffer(message.payload)
            case .ack:
                preconditionFailure("writeFrame writes ACKs with writeAck")
            case .ping(let opaque), .pong(let opaque):
                written += buffer.writeInteger(UInt8(0))
                written += buffer.writeImmutableBuffer(opaque)
            case .goAway(let goAway):
                written += buffer.writeInteger(UInt8(0))
                written += buffer.writeInteger(goAway.code.rawValue)
                written += buffer.writeInteger(goAway.reconnectAfterMilliseconds)
                written += buffer.writeShortString(goAway.message, as: UInt8.self)
            }
            return written
        }
    }

    /// Writes a string with a length prefix of type `L`; a string that does not fit is cut
    /// at the last whole UTF-8 scalar that does.
    private mutating func writeShortString<L: FixedWidthInteger & UnsignedInteger>(
        _ string: String,
        as: L.Type
    )
        -> Int
    {
        var utf8 = Substring(string).utf8
        if utf8.count > Int(L.max) {
            var end = utf8.index(utf8.startIndex, offsetBy: Int(L.max))
            while end > utf8.startIndex && UTF8.isContinuation(utf8[end]) {
                end = utf8.index(before: end)
            }
            utf8 = Substring(string)[..<end].utf8
        }
        return self.writeInteger(L(utf8.count)) + self.writeBytes(utf8)
    }
}

/// Encodes frames on a pipeline (used by the client; the gateway writes frames directly).
public struct FrameEncoder: MessageToByteEncoder, Sendable {
    public typealias OutboundIn = Frame

    public init() {}

    public func encode(data: Frame, out: inout ByteBuffer) {
        out.writeFrame(data)
    }
}
