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
        withUnsafePointer(to: message) { self.encodedSize(of: $0) }
    }

    /// `encodedSize(of:)` of the message at `pointer`, read in place (see `encode(_:allocator:each:)`).
    private func encodedSize(of pointer: UnsafePointer<UplinkMessage>) -> Int {
        var size = Self.stringFieldSize(pointer.pointee.deviceID) + Self.stringFieldSize(pointer.pointee.topic)
        size += Self.varintFieldSize(UInt64(pointer.pointee.messageID))
        size += Self.bytesFieldSize(pointer.pointee.payload.readableBytes)
        size += Self.varintFieldSize(pointer.pointee.qos == .atLeastOnce ? 1 : 0)
        size += Self.varintFieldSize(UInt64(bitPattern: pointer.pointee.receivedAt))
        size += Self.stringFieldSize(pointer.pointee.clientAddress) + Self.stringFieldSize(self.instanceID)
        size += Self.bytesFieldSize(self.deliveryIDSize(pointer))
        size += Self.varintFieldSize(UInt64(pointer.pointee.sequence))
        size += Self.bytesFieldSize(pointer.pointee.idempotencyKey?.readableBytes ?? 0)
        return size
    }

    /// Appends `message`, serialized (`encodedSize(of:)` bytes), to `buffer`. Take slices of
    /// the messages (`buffer.getSlice`, no copy) once every message of the buffer is written: a
    /// slice shares the buffer's storage, so a write after it copies the whole buffer (measured:
    /// edge batches of ~200 messages then cost 1.7× the CPU per message).
    ///
    /// The message is written in one reservation of its exact size, through a pointer: some
    /// thirty small `ByteBuffer` writes, each checking capacity and uniqueness, cost about a
    /// microsecond a message (`docs/benchmarks.md`, "A single-stream HTTP/2 client").
    package func encode(_ message: UplinkMessage, into buffer: inout ByteBuffer) {
        withUnsafePointer(to: message) { self.encode($0, size: self.encodedSize(of: $0), into: &buffer) }
    }

    /// Encodes `messages` into one buffer from `allocator`, then calls `body` with each message's
    /// position in `messages` and its slice of the buffer, in order. Each message's size is
    /// computed once and kept on the stack; the buffer is written whole before the first slice
    /// is taken (see `encode(_:into:)`).
    ///
    /// The messages are read in place, field by field through a pointer into the slice's storage.
    /// `messages[index]` copied each message out of the array twice, once to size it and once to
    /// write it (its three strings and two buffers retained, then released); a buffer pointer's
    /// element, or a `let` bound to `pointee`, is a copy as well. In place, the hot path costs
    /// 675 instructions a message less (callgrind, `terminus-instructions hot-path`: 25,138 →
    /// 24,463).
    package func encode(
        _ messages: ArraySlice<UplinkMessage>,
        allocator: ByteBufferAllocator,
        each body: (_ position: Int, _ slice: ByteBuffer) -> Void
    ) {
        withUnsafeTemporaryAllocation(of: Int.self, capacity: messages.count) { sizes in
            let buffer = messages.withUnsafeBufferPointer { messages in
                var total = 0
                for position in messages.indices {
                    let size = self.encodedSize(of: messages.baseAddress! + position)
                    sizes.initializeElement(at: position, to: size)
                    total += size
                }
                var buffer = allocator.buffer(capacity: total)
                for position in messages.indices {
                    self.encode(messages.baseAddress! + position, size: sizes[position], into: &buffer)
                }
                return buffer
            }
            var offset = 0
            for position in sizes.indices {
                body(position, buffer.getSlice(at: offset, length: sizes[position])!)
                offset += sizes[position]
            }
        }
    }

    /// `encode(_:into:)` with the message's `encodedSize(of:)`, already known.
    private func encode(_ pointer: UnsafePointer<UplinkMessage>, size: Int, into buffer: inout ByteBuffer) {
        buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: size) { memory in
            var writer = ProtobufWriter(memory: UnsafeMutableRawBufferPointer(rebasing: memory[..<size]))
            writer.stringField(1, pointer.pointee.deviceID)
            writer.stringField(2, pointer.pointee.topic)
            writer.varintField(3, UInt64(pointer.pointee.messageID))
            if pointer.pointee.payload.readableBytes > 0 {
                writer.tag(4, wireType: 2)
                writer.varint(UInt64(pointer.pointee.payload.readableBytes))
                pointer.pointee.payload.withUnsafeReadableBytes { writer.bytes($0) }
            }
            writer.varintField(5, pointer.pointee.qos == .atLeastOnce ? 1 : 0)
            writer.varintField(6, UInt64(bitPattern: pointer.pointee.receivedAt))
            writer.stringField(7, pointer.pointee.clientAddress)
            writer.stringField(8, self.instanceID)
            // delivery_id, unique per message: the instance, the listener's random epoch (base 36),
            // the connection, and the message's place in it.
            let epoch = Self.digits(pointer.pointee.epoch, radix: 36)
            let connection = Self.digits(pointer.pointee.connectionID, radix: 10)
            let sequence = Self.digits(UInt64(pointer.pointee.sequence), radix: 10)
            writer.tag(9, wireType: 2)
            writer.varint(UInt64(self.instanceID.utf8.count + epoch + connection + sequence + 3))
            writer.string(self.instanceID)
            writer.byte(UInt8(ascii: "/"))
            writer.digits(pointer.pointee.epoch, radix: 36, count: epoch)
            writer.byte(UInt8(ascii: "/"))
            writer.digits(pointer.pointee.connectionID, radix: 10, count: connection)
            writer.byte(UInt8(ascii: "/"))
            writer.digits(UInt64(pointer.pointee.sequence), radix: 10, count: sequence)
            writer.varintField(10, UInt64(pointer.pointee.sequence))
            if let key = pointer.pointee.idempotencyKey, key.readableBytes > 0 {
                writer.tag(11, wireType: 2)
                writer.varint(UInt64(key.readableBytes))
                key.withUnsafeReadableBytes { writer.bytes($0) }
            }
            precondition(writer.index == size, "encodedSize(of:) and encode(_:into:) disagree")
            return size
        }
    }

    /// The bytes of `message`'s delivery id (`encode` writes the same sum from its digits).
    private func deliveryIDSize(_ pointer: UnsafePointer<UplinkMessage>) -> Int {
        self.instanceID.utf8.count + Self.digits(pointer.pointee.epoch, radix: 36)
            + Self.digits(pointer.pointee.connectionID, radix: 10)
            + Self.digits(UInt64(pointer.pointee.sequence), radix: 10) + 3
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
        _ messages: some Collection<ByteBuffer>,
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

    /// The digits of `value` in `radix` (at least one), counted without dividing.
    static func digits(_ value: UInt64, radix: UInt64) -> Int {
        var count = 1
        var power = radix
        // Stops before `power` would overflow: `value` then has one digit more.
        while value >= power {
            count += 1
            let (next, overflow) = power.multipliedReportingOverflow(by: radix)
            if overflow { break }
            power = next
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
}

/// Writes protobuf into memory reserved for exactly what it writes (`UplinkEncoder.encode`):
/// every write checks the reservation, not a `ByteBuffer`'s capacity and uniqueness.
private struct ProtobufWriter {
    let memory: UnsafeMutableRawBufferPointer
    private(set) var index = 0

    init(memory: UnsafeMutableRawBufferPointer) {
        self.memory = memory
    }

    mutating func byte(_ value: UInt8) {
        precondition(self.index < self.memory.count)
        self.memory[self.index] = value
        self.index += 1
    }

    mutating func varint(_ value: UInt64) {
        var rest = value
        while rest >= 0x80 {
            self.byte(UInt8(truncatingIfNeeded: rest) | 0x80)
            rest >>= 7
        }
        self.byte(UInt8(rest))
    }

    mutating func tag(_ field: UInt64, wireType: UInt64) {
        self.varint(field << 3 | wireType)
    }

    /// A varint field; proto3 leaves out 0.
    mutating func varintField(_ field: UInt64, _ value: UInt64) {
        guard value != 0 else { return }
        self.tag(field, wireType: 0)
        self.varint(value)
    }

    mutating func bytes(_ bytes: UnsafeRawBufferPointer) {
        guard bytes.count > 0 else { return }
        precondition(self.index + bytes.count <= self.memory.count)
        (self.memory.baseAddress! + self.index).copyMemory(from: bytes.baseAddress!, byteCount: bytes.count)
        self.index += bytes.count
    }

    mutating func string(_ value: String) {
        let copied: Void? = value.utf8.withContiguousStorageIfAvailable { self.bytes(UnsafeRawBufferPointer($0)) }
        if copied == nil {
            for byte in value.utf8 { self.byte(byte) }
        }
    }

    /// A string field; proto3 leaves out the empty string.
    mutating func stringField(_ field: UInt64, _ value: String) {
        let count = value.utf8.count
        guard count > 0 else { return }
        self.tag(field, wireType: 2)
        self.varint(UInt64(count))
        self.string(value)
    }

    /// `value` in `radix` (lower-case letters above 9), `count` digits (`UplinkEncoder.digits`).
    /// Inlined, so each call's constant radix divides by multiplying.
    @inline(__always)
    mutating func digits(_ value: UInt64, radix: UInt64, count: Int) {
        precondition(self.index + count <= self.memory.count)
        var rest = value
        for offset in stride(from: count - 1, through: 0, by: -1) {
            // '0'...'9', then 'a'... (0x61 - 10): no table, so no lazily initialised global to
            // check on every digit.
            let digit = UInt8(truncatingIfNeeded: rest % radix)
            self.memory[self.index + offset] = digit < 10 ? 0x30 &+ digit : 0x57 &+ digit
            rest /= radix
        }
        self.index += count
    }
}
