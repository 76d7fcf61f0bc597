import Foundation
import NIOCore
import SwiftProtobuf
import TerminusAPI
import TerminusProtocol
import TerminusSessions
import Testing

@testable import TerminusBackend

/// `UplinkEncoder` writes protobuf by hand: its bytes must be SwiftProtobuf's, field for field.
@Suite("Uplink encoder: the backend's protobuf, written directly")
struct UplinkEncoderTests {
    static let encoder = UplinkEncoder(instanceID: "gw-test-7")

    static func message(
        deviceID: String = "spk-000123",
        topic: String = "tenant-1/spk-000123/pay/done",
        messageID: UInt32 = 7,
        qos: QoS = .atLeastOnce,
        payload: String = #"{"amount":1288,"currency":"CNY"}"#,
        receivedAt: Int64 = 1_795_995_912_345,
        clientAddress: String = "10.1.2.3:40000",
        connectionID: UInt64 = 42,
        epoch: UInt64 = 0x1234_5678_9abc,
        sequence: UInt32 = 3,
        idempotencyKey: String? = nil
    ) -> UplinkMessage {
        var message = UplinkMessage(
            deviceID: deviceID,
            topic: topic,
            messageID: messageID,
            qos: qos,
            payload: ByteBuffer(string: payload),
            receivedAt: receivedAt,
            clientAddress: clientAddress,
            connectionID: connectionID
        )
        message.epoch = epoch
        message.sequence = sequence
        message.idempotencyKey = idempotencyKey.map { ByteBuffer(string: $0) }
        return message
    }

    /// The same message built the SwiftProtobuf way.
    static func expected(_ message: UplinkMessage) -> Terminus_V1_UplinkMessage {
        var proto = Terminus_V1_UplinkMessage()
        proto.deviceID = message.deviceID
        proto.topic = message.topic
        proto.messageID = message.messageID
        proto.payload = Data(message.payload.readableBytesView)
        proto.qos = message.qos == .atLeastOnce ? .atLeastOnce : .atMostOnce
        proto.receivedAtUnixMs = message.receivedAt
        proto.clientAddress = message.clientAddress
        proto.gatewayInstance = Self.encoder.instanceID
        proto.deliveryID =
            "\(Self.encoder.instanceID)/\(String(message.epoch, radix: 36))/\(message.connectionID)/\(message.sequence)"
        proto.sequence = message.sequence
        if let key = message.idempotencyKey { proto.idempotencyKey = Data(key.readableBytesView) }
        return proto
    }

    static let cases: [UplinkMessage] = [
        message(),
        message(qos: .atMostOnce, idempotencyKey: "order-2026-0001"),
        message(messageID: 0, payload: "", receivedAt: 0, clientAddress: "", connectionID: 0, epoch: 0, sequence: 0),
        message(
            deviceID: "打印机-01",
            topic: "tenant-9/打印机-01/print/状态",
            messageID: .max,
            payload: String(repeating: "x", count: 20_000),
            receivedAt: -1,
            connectionID: .max,
            epoch: .max,
            sequence: .max
        ),
        message(messageID: 127, connectionID: 128, epoch: 35, sequence: 16_384),
    ]

    @Test("every field as SwiftProtobuf writes it: defaults left out, multi-byte UTF-8, the largest values")
    func matchesSwiftProtobuf() throws {
        for message in Self.cases {
            var buffer = ByteBuffer()
            Self.encoder.encode(message, into: &buffer)
            let bytes = buffer
            #expect(bytes.readableBytes == Self.encoder.encodedSize(of: message), "the size, exactly")
            let expected = Self.expected(message)
            #expect(Array(bytes.readableBytesView) == (try expected.serializedBytes() as [UInt8]))
            #expect(try Terminus_V1_UplinkMessage(serializedBytes: Array(bytes.readableBytesView)) == expected)
        }
    }

    @Test("uplink.proto's UplinkMessage has the eleven fields the encoder writes (a new field fails here first)")
    func protoFields() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent()
        let proto = try String(
            contentsOf: root.appendingPathComponent("Protos/terminus/v1/uplink.proto"),
            encoding: .utf8
        )
        let body = try #require(
            proto.components(separatedBy: "message UplinkMessage {").last?.components(separatedBy: "\n}").first
        )
        let numbers = body.split(separator: "\n").compactMap { line -> Int? in
            let code = line.split(separator: "//").first.map(String.init) ?? ""
            guard let equals = code.lastIndex(of: "="), code.hasSuffix(";") else { return nil }
            return Int(code[code.index(after: equals)...].dropLast().trimmingCharacters(in: .whitespaces))
        }
        #expect(
            numbers == Array(1...11),
            "UplinkEncoder.encode writes fields 1-11 by hand: add a new one there and in `expected`"
        )
    }

    /// The cases written back to back into one buffer, then sliced by their sizes.
    static func slices(_ messages: ArraySlice<UplinkMessage> = Self.cases[...]) -> [ByteBuffer] {
        var slices: [ByteBuffer] = []
        Self.encoder.encode(messages, allocator: ByteBufferAllocator()) { position, slice in
            precondition(position == slices.count, "slices come in order")
            slices.append(slice)
        }
        return slices
    }

    @Test("messages written into one buffer keep their own bytes, in one storage")
    func sharedBuffer() throws {
        // A slice of the cases not starting at index 0: positions count from its start.
        for messages in [Self.cases[...], Self.cases.dropFirst(), Self.cases.prefix(1)] {
            let slices = Self.slices(messages)
            #expect(slices.count == messages.count)
            for (slice, message) in zip(slices, messages) {
                #expect(slice.readableBytes == Self.encoder.encodedSize(of: message))
                #expect(
                    try Terminus_V1_UplinkMessage(serializedBytes: Array(slice.readableBytesView))
                        == Self.expected(message)
                )
            }
            // Back to back in memory: slices of the one buffer, not copies.
            let starts = slices.map { $0.withUnsafeReadableBytes { Int(bitPattern: $0.baseAddress) } }
            for index in starts.indices.dropFirst() {
                #expect(starts[index] == starts[index - 1] + slices[index - 1].readableBytes)
            }
        }
        #expect(Self.slices([]).isEmpty)
    }

    @Test("a DeliverRequest in one gRPC message: a 0 byte, the length, SwiftProtobuf's bytes")
    func deliverRequest() throws {
        let slices = Self.slices()
        for (subscription, batchID, messages) in [
            ("billing", UInt64(1), slices), ("", UInt64(0), []), ("speakers", UInt64.max, [slices[0]]),
        ] {
            var frame = UplinkEncoder.deliverRequest(
                messages,
                subscription: subscription,
                batchID: batchID,
                allocator: ByteBufferAllocator()
            )
            var expected = Terminus_V1_DeliverRequest()
            expected.subscription = subscription
            expected.batchID = batchID
            expected.messages = try messages.map {
                try Terminus_V1_UplinkMessage(serializedBytes: Array($0.readableBytesView))
            }
            let serialized: [UInt8] = try expected.serializedBytes()
            // As a DATA frame of a `GRPCStreamConnection`: its 9-byte header, then the same bytes.
            var data = UplinkEncoder.deliverRequest(
                messages,
                subscription: subscription,
                batchID: batchID,
                allocator: ByteBufferAllocator(),
                asDataFrame: true
            )
            let length = 5 + serialized.count
            let header = data.readBytes(length: 9)
            #expect(header == [UInt8(length >> 16), UInt8(length >> 8 & 0xFF), UInt8(length & 0xFF), 0, 0, 0, 0, 0, 1])
            #expect(data == frame)
            #expect(frame.readInteger(as: UInt8.self) == 0)
            #expect(frame.readInteger(as: UInt32.self) == UInt32(serialized.count))
            #expect(Array(frame.readableBytesView) == serialized)
        }
    }

    @Test("digits are counted without dividing: right at every power of 10 and 36, and at the largest value")
    func digitCounts() {
        var values: [UInt64] = [0, 1, .max, .max - 1]
        for radix: UInt64 in [10, 36] {
            var power: UInt64 = 1
            while true {
                values += [power - 1, power, power + 1]
                let (next, overflow) = power.multipliedReportingOverflow(by: radix)
                if overflow { break }
                power = next
            }
        }
        for value in values {
            #expect(UplinkEncoder.digits(value, radix: 10) == String(value, radix: 10).count, "\(value)")
            #expect(UplinkEncoder.digits(value, radix: 36) == String(value, radix: 36).count, "\(value)")
        }
    }
}
