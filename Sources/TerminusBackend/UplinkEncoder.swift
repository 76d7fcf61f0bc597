package import NIOCore
internal import TerminusProtocol
package import TerminusSessions

/// Writes uplink messages as the `terminus.v1.UplinkMessage` a backend receives, and batches of
/// them as the `terminus.v1.DeliverRequest` of a gRPC message, straight into `ByteBuffer`s.
///
/// The bytes are protobuf's encoding as SwiftProtobuf writes it (fields in number order, proto3
/// defaults left out), which `UplinkEncoderTests` checks against SwiftProtobuf's own for every
/// field. Building each message as a `Terminus_V1_UplinkMessage` first cost a copy of the
/// payload into `Data`, a `String` for the delivery id and a value with eight references to
/// copy at every step of the queue (`docs/benchmarks.md`, "Writing the backend's protobuf
/// directly").
package struct UplinkEncoder: Sendable {
    package let instanceID: String

    package init(instanceID: String) {
        self.instanceID = instanceID
    }

    /// The bytes `encode` writes for `message`, exactly.
    package func encodedSize(of message: UplinkMessage) -> Int {
        var size = Self.stringFieldSize(message.deviceID) + Self.stringFieldSize(message.topic)
        size += Self.varintFieldSize(UInt64(message.messageID))
        size += Self.bytesFieldSize(message.payload.readableBytes)
        size += Self.varintFieldSize(message.qos == .atLeastOnce ? 1 : 0)
        size += Self.varintFieldSize(UInt64(bitPattern: message.receivedAt))
        size += Self.stringFieldSize(message.clientAddress) + Self.stringFieldSize(self.instanceID)
        size += Self.bytesFieldSize(self.deliveryIDSize(message))
        size += Self.varintFieldSize(UInt64(message.sequence))
        size += Self.bytesFieldSize(message.idempotencyKey?.readableBytes ?? 0)
        return size
    }

    /// Appends `message`, serialized (`encodedSize(of:)` bytes), to `buffer`. Take slices of
    /// the messages (`buffer.getSlice`, no copy) once every message of the buffer is written: a
    /// slice shares the buffer's storage, so a write after it copies the whole buffer (measured:
    /// edge batches of ~200 messages then cost 1.7× the CPU per message).
    package func encode(_ message: UplinkMessage, into buffer: inout ByteBuffer) {
        buffer.writeStringField(1, message.deviceID)
        buffer.writeStringField(2, message.topic)
        buffer.writeVarintField(3, UInt64(message.messageID))
        if message.payload.readableBytes > 0 {
            buffer.writeTag(4, wireType: 2)
            buffer.writeVarint(UInt64(message.payload.readableBytes))
            buffer.writeImmutableBuffer(message.payload)
        }
        buffer.writeVarintField(5, message.qos == .atLeastOnce ? 1 : 0)
        buffer.writeVarintField(6, UInt64(bitPattern: message.receivedAt))
        buffer.writeStringField(7, message.clientAddress)
        buffer.writeStringField(8, self.instanceID)
        // delivery_id, unique per message: the instance, the listener's random epoch (base 36),
        // the connection, and the message's place in it.
        let epoch = Self.digits(message.epoch, radix: 36)
        let connection = Self.digits(message.connectionID, radix: 10)
        let sequence = Self.digits(UInt64(message.sequence), radix: 10)
        buffer.writeTag(9, wireType: 2)
        buffer.writeVarint(UInt64(self.instanceID.utf8.count + epoch + connection + sequence + 3))
        buffer.writeString(self.instanceID)
        buffer.writeInteger(UInt8(ascii: "/"))
        buffer.writeDigits(message.epoch, radix: 36, count: epoch)
        buffer.writeInteger(UInt8(ascii: "/"))
        buffer.writeDigits(message.connectionID, radix: 10, count: connection)
        buffer.writeInteger(UInt8(ascii: "/"))
        buffer.writeDigits(UInt64(message.sequence), radix: 10, count: sequence)
        buffer.writeVarintField(10, UInt64(message.sequence))
        if let key = message.idempotencyKey, key.readableBytes > 0 {
            buffer.writeTag(11, wireType: 2)
            buffer.writeVarint(UInt64(key.readableBytes))
            buffer.writeImmutableBuffer(key)
        }
    }

    /// The bytes of `message`'s delivery id (`encode` writes the same sum from its digits).
    private func deliveryIDSize(_ message: UplinkMessage) -> Int {
        self.instanceID.utf8.count + Self.digits(message.epoch, radix: 36)
            + Self.digits(message.connectionID, radix: 10)
            + Self.digits(UInt64(message.sequence), radix: 10) + 3
    }

    private static func varintFieldSize(_ value: UInt64) -> Int {
        value == 0 ? 0 : 1 + Self.varintSize(value)
    }

    private static func bytesFieldSize(_ count: Int) -> Int {
        count == 0 ? 0 : 1 + Self.varintSize(UInt64(count)) + count
    }

    private static func stringFieldSize(_ value: String) -> Int {
        Self.bytesFieldSize(value.utf8.count)
    }

    /// One gRPC message (a 0 byte: not compressed; the length, 4 bytes big endian) holding the
    /// `DeliverRequest` of `messages` (each from `encode`), `subscription` and `batchID`;
    /// `asDataFrame`: after the header of the HTTP/2 DATA frame that carries it on a
    /// `GRPCStreamConnection`.
    package static func deliverRequest(
        _ messages: [ByteBuffer],
        subscription: String,
        batchID: UInt64,
        allocator: ByteBufferAllocator,
        asDataFrame: Bool = false
    ) -> ByteBuffer {
        var length = 0
        for message in messages {
            length += 1 + Self.varintSize(UInt64(message.readableBytes)) + message.readableBytes
        }
        if !subscription.isEmpty {
            length += 1 + Self.varintSize(UInt64(subscription.utf8.count)) + subscription.utf8.count
        }
        if batchID != 0 { length += 1 + Self.varintSize(batchID) }
        let header = asDataFrame ? GRPCStreamConnection.frameHeaderSize : 0
        var buffer = allocator.buffer(capacity: header + 5 + length)
        if asDataFrame { GRPCStreamConnection.writeDataFrameHeader(payloadLength: 5 + length, into: &buffer) }
        buffer.writeInteger(UInt8(0))
        buffer.writeInteger(UInt32(length))
        for message in messages {
            buffer.writeTag(1, wireType: 2)
            buffer.writeVarint(UInt64(message.readableBytes))
            buffer.writeImmutableBuffer(message)
        }
        buffer.writeStringField(2, subscription)
        buffer.writeVarintField(3, batchID)
        return buffer
    }

    static func varintSize(_ value: UInt64) -> Int {
        value == 0 ? 1 : (64 - value.leadingZeroBitCount + 6) / 7
    }

    /// The digits of `value` in `radix` (at least one).
    static func digits(_ value: UInt64, radix: UInt64) -> Int {
        var count = 1
        var rest = value / radix
        while rest > 0 {
            count += 1
            rest /= radix
        }
        return count
    }
}

extension ByteBuffer {
    fileprivate mutating func writeVarint(_ value: UInt64) {
        var rest = value
        while rest >= 0x80 {
            self.writeInteger(UInt8(truncatingIfNeeded: rest) | 0x80)
            rest >>= 7
        }
        self.writeInteger(UInt8(rest))
    }

    fileprivate mutating func writeTag(_ field: UInt64, wireType: UInt64) {
        self.writeVarint(field << 3 | wireType)
    }

    /// A varint field; proto3 leaves out 0.
    fileprivate mutating func writeVarintField(_ field: UInt64, _ value: UInt64) {
        guard value != 0 else { return }
        self.writeTag(field, wireType: 0)
        self.writeVarint(value)
    }

    /// A string field; proto3 leaves out the empty string.
    fileprivate mutating func writeStringField(_ field: UInt64, _ value: String) {
        let count = value.utf8.count
        guard count > 0 else { return }
        self.writeTag(field, wireType: 2)
        self.writeVarint(UInt64(count))
        self.writeString(value)
    }

    /// `value` in `radix` (lower-case letters above 9), `count` digits (from `digits`).
    fileprivate mutating func writeDigits(_ value: UInt64, radix: UInt64, count: Int) {
        let start = self.writerIndex
        self.writeRepeatingByte(0, count: count)
        var rest = value
        for offset in stride(from: count - 1, through: 0, by: -1) {
            self.setInteger(digitLetters[Int(rest % radix)], at: start + offset)
            rest /= radix
        }
    }
}

private let digitLetters = Array("0123456789abcdefghijklmnopqrstuvwxyz".utf8)
