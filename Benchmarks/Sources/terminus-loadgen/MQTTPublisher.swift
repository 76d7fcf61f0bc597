import NIOCore
import NIOPosix
import NIOSSL
import TerminusProtocol

/// A minimal MQTT 3.1.1 client for `fleet --protocol mqtt`: CONNECT (clean session, no will, no
/// credentials), QoS 1 PUBLISH, PUBACK, and nothing else. It exists so that the release gate can
/// drive Mosquitto with the same fleet, rates and latency histogram as the gateway, over TLS
/// from the same load generator (MQTT 3.1.1, OASIS standard, sections 2 and 3).
enum MQTT {
    /// Encodes the fixed header's remaining length (1–4 bytes of 7 bits each).
    static func writeRemainingLength(_ length: Int, into buffer: inout ByteBuffer) {
        var value = length
        repeat {
            var byte = UInt8(value % 128)
            value /= 128
            if value > 0 { byte |= 0x80 }
            buffer.writeInteger(byte)
        } while value > 0
    }

    static func writeString(_ text: String, into buffer: inout ByteBuffer) {
        buffer.writeInteger(UInt16(text.utf8.count))
        buffer.writeString(text)
    }

    static func connect(clientID: String, keepaliveSeconds: UInt16) -> ByteBuffer {
        var body = ByteBuffer()
        writeString("MQTT", into: &body)
        body.writeInteger(UInt8(4))  // protocol level 3.1.1
        body.writeInteger(UInt8(0x02))  // clean session
        body.writeInteger(keepaliveSeconds)
        writeString(clientID, into: &body)
        var packet = ByteBuffer()
        packet.writeInteger(UInt8(0x10))
        writeRemainingLength(body.readableBytes, into: &packet)
        packet.writeBuffer(&body)
        return packet
    }

    static func publish(topic: String, packetID: UInt16, payload: ByteBuffer, into packet: inout ByteBuffer) {
        packet.writeInteger(UInt8(0x32))  // PUBLISH, QoS 1, no DUP, no RETAIN
        writeRemainingLength(2 + topic.utf8.count + 2 + payload.readableBytes, into: &packet)
        writeString(topic, into: &packet)
        packet.writeInteger(packetID)
        packet.writeImmutableBuffer(payload)
    }

    /// One inbound control packet: its first byte and its variable header and payload.
    struct Packet {
        var type: UInt8
        var body: ByteBuffer
    }

    struct Decoder: ByteToMessageDecoder {
        typealias InboundOut = Packet

        mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
            let start = buffer.readerIndex
            guard let first: UInt8 = buffer.getInteger(at: start) else { return .needMoreData }
            var length = 0
            var multiplier = 1
            var offset = 1
            while true {
                guard offset <= 4 else { throw LoadError("MQTT: remaining length longer than 4 bytes") }
                guard let byte: UInt8 = buffer.getInteger(at: start + offset) else { return .needMoreData }
                length += Int(byte & 0x7F) * multiplier
                multiplier *= 128
                offset += 1
                if byte & 0x80 == 0 { break }
            }
            guard buffer.readableBytes >= offset + length else { return .needMoreData }
            buffer.moveReaderIndex(forwardBy: offset)
            let body = buffer.readSlice(length: length)!
            context.fireChannelRead(Self.wrapInboundOut(Packet(type: first >> 4, body: body)))
            return .continue
        }
    }

    /// Completes CONNECT and matches each PUBACK to its PUBLISH. Confined to its event loop.
    final class Handler: ChannelInboundHandler, @unchecked Sendable {
        typealias InboundIn = Packet

        let connected: EventLoopPromise<Void>
        var waiting: [UInt16: EventLoopPromise<Ack>] = [:]

        init(connected: EventLoopPromise<Void>) {
            self.connected = connected
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            var packet = self.unwrapInboundIn(data)
            switch packet.type {
            case 2:  // CONNACK: flags, return code
                let code: UInt8? = packet.body.getInteger(at: packet.body.readerIndex + 1)
                if code == 0 {
                    self.connected.succeed()
                } else {
                    self.connected.fail(LoadError("MQTT CONNACK refused with code \(code.map(String.init) ?? "?")"))
                    context.close(promise: nil)
                }
            case 4:  // PUBACK: packet id
                if let id: UInt16 = packet.body.readInteger(), let promise = self.waiting.removeValue(forKey: id) {
                    promise.succeed(Ack(messageID: UInt32(id), status: .ok))
                }
            default:
                break
            }
        }

        func channelInactive(context: ChannelHandlerContext) {
            self.connected.fail(LoadError("MQTT connection closed"))
            let waiting = self.waiting
            self.waiting = [:]
            for promise in waiting.values { promise.fail(LoadError("MQTT connection closed")) }
            context.fireChannelInactive()
        }

        func errorCaught(context: ChannelHandlerContext, error: any Error) {
            self.connected.fail(error)
            context.close(promise: nil)
        }
    }
}

/// One device's MQTT connection (TLS), publishing at QoS 1.
final class MQTTConnection: FleetConnection, @unchecked Sendable {
    let channel: any Channel
    private let handler: MQTT.Handler
    /// Touched on the channel's event loop only.
    private var nextPacketID: UInt16 = 0

    private init(channel: any Channel, handler: MQTT.Handler) {
        self.channel = channel
        self.handler = handler
    }

    /// Opens the TLS connection, sends CONNECT and returns after CONNACK.
    static func connect(
        target: TargetOptions,
        context: NIOSSLContext,
        group: any EventLoopGroup,
        index: Int,
        clientID: String
    ) async throws -> MQTTConnection {
        let channel = try await target.connect(group: group, context: context, index: index)
        let connected = channel.eventLoop.makePromise(of: Void.self)
        let handler = MQTT.Handler(connected: connected)
        try await channel.eventLoop.submit {
            // Right after TLS: RawTLS's byte-counting watcher behind it does not pass reads on.
            let sync = channel.pipeline.syncOperations
            let tls = try sync.handler(type: NIOSSLClientHandler.self)
            try sync.addHandlers([ByteToMessageHandler(MQTT.Decoder()), handler], position: .after(tls))
            channel.writeAndFlush(MQTT.connect(clientID: clientID, keepaliveSeconds: 540), promise: nil)
        }.get()
        do {
            try await connected.futureResult.get()
        } catch {
            try? await channel.close()
            throw error
        }
        return MQTTConnection(channel: channel, handler: handler)
    }

    func publishFuture(
        topic: String,
        payload: ByteBuffer,
        compress: Bool,
        dictionaryID: UInt16?
    ) -> EventLoopFuture<Ack> {
        let loop = self.channel.eventLoop
        let promise = loop.makePromise(of: Ack.self)
        loop.execute {
            // Ids 1…65535; one still waiting (65,535 in flight on one connection) is an error.
            self.nextPacketID = self.nextPacketID == .max ? 1 : self.nextPacketID + 1
            let id = self.nextPacketID
            guard self.handler.waiting[id] == nil else {
                return promise.fail(LoadError("MQTT: packet id \(id) still in flight"))
            }
            self.handler.waiting[id] = promise
            var packet = self.channel.allocator.buffer(capacity: 8 + topic.utf8.count + payload.readableBytes)
            MQTT.publish(topic: topic, packetID: id, payload: payload, into: &packet)
            self.channel.writeAndFlush(packet, promise: nil)
        }
        return promise.futureResult
    }

    func close() async {
        // DISCONNECT, then close.
        var packet = self.channel.allocator.buffer(capacity: 2)
        packet.writeBytes([0xE0, 0x00])
        try? await self.channel.writeAndFlush(packet)
        try? await self.channel.close()
    }
}
