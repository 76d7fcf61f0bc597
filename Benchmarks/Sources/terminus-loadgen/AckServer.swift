import NIOCore
import NIOPosix
import NIOSSL
import TerminusEdge
import TerminusLeanTLS
import TerminusProtocol

/// The floor for CPU per message: a bare SwiftNIO + swift-nio-ssl server that speaks just enough
/// of the device protocol for the fleet client (HELLO → WELCOME, PUBLISH → ACK OK, PING → PONG)
/// and nothing else: no authentication, no inflating, no routing, no backend. It ACKs in the same
/// read, so each message costs one read, one TLS record each way and one write: what any
/// gateway on this stack pays before doing its own work. Measured with the same client and the
/// same certificate as the gateway, its CPU per message says how far a target is from the stack.
///
/// With a relay (`--relay`), it ACKs a PUBLISH only once a backend answered it, as the gateway
/// does: the floor under any gateway on this stack that asks a backend before it ACKs. Each
/// event loop keeps one plain TCP connection to the relay echo (`--relay-echo`); a message goes
/// there as one record (4-byte length, 8-byte token, payload), written in the device's read and
/// flushed once per read; the echo answers each record with its token, and the ACK is written in
/// the read of that answer, flushed once per device per read. No HTTP/2, no protobuf, no
/// routing, no session: what is left of a backend round trip when the protocol costs nothing.
enum AckServer {
    final class Handler: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        typealias OutboundOut = ByteBuffer

        private var decoder = FrameDecoder(maxFrameLength: 64 * 1024)
        private var partial: ByteBuffer?
        private var needsFlush = false
        private let relay: Relay?
        private var context: ChannelHandlerContext?

        init(relay: Relay? = nil) {
            self.relay = relay
        }

        func handlerAdded(context: ChannelHandlerContext) {
            self.context = context
        }

        func handlerRemoved(context: ChannelHandlerContext) {
            self.context = nil
        }

        /// An ACK the relay wrote waits for `flushRelayed`.
        private var relayFlushPending = false

        /// The relay answered message `messageID`: its ACK is written now and flushed by the
        /// relay at the end of its read. True when this device was not waiting for that flush yet.
        func relayed(_ messageID: UInt32) -> Bool {
            guard let context else { return false }
            var buffer = context.channel.allocator.buffer(capacity: 16)
            buffer.writeFrame(.ack(Ack(messageID: messageID, status: .ok)))
            context.write(self.wrapOutboundOut(buffer), promise: nil)
            defer { self.relayFlushPending = true }
            return !self.relayFlushPending
        }

        func flushRelayed() {
            self.relayFlushPending = false
            self.context?.flush()
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            var buffer = self.unwrapInboundIn(data)
            if var partial = self.partial {
                self.partial = nil
                partial.writeBuffer(&buffer)
                buffer = partial
            }
            do {
                while let frame = try self.decoder.decode(buffer: &buffer) {
                    self.answer(frame, context: context)
                }
            } catch {
                context.close(promise: nil)
                return
            }
            if buffer.readableBytes > 0 {
                buffer.discardReadBytes()
                self.partial = buffer
            }
        }

        func channelReadComplete(context: ChannelHandlerContext) {
            self.relay?.flush()
            if self.needsFlush {
                self.needsFlush = false
                context.flush()
            }
            context.fireChannelReadComplete()
        }

        func errorCaught(context: ChannelHandlerContext, error: any Error) {
            context.close(promise: nil)
        }

        private func answer(_ frame: Frame, context: ChannelHandlerContext) {
            let reply: Frame
            switch frame {
            case .hello(let hello):
                reply = .welcome(
                    Welcome(
                        keepaliveSeconds: hello.keepaliveSeconds == 0 ? 60 : hello.keepaliveSeconds,
                        maxFrameSize: 64 * 1024,
                        maxInflight: 32,
                        maxPayloadSize: 64 * 1024,
                        maxTopicAliases: 0,
                        capabilities: [],
                        deviceID: hello.deviceID,
                        gatewayID: "ack-server"
                    )
                )
            case .publish(let message):
                guard message.qos == .atLeastOnce else { return }
                if let relay {
                    relay.send(message.payload, messageID: message.messageID, from: self)
                    return
                }
                reply = .ack(Ack(messageID: message.messageID, status: .ok))
            case .ping(let opaque):
                reply = .pong(opaque)
            default:
                return
            }
            var buffer = context.channel.allocator.buffer(capacity: 32)
            buffer.writeFrame(reply)
            context.write(self.wrapOutboundOut(buffer), promise: nil)
            self.needsFlush = true
        }
    }

    /// Listens on `host:port` with one event loop per core (as the gateway does); TLS with the
    /// PEM certificate chain and key when given (swift-nio-ssl, or with `lean` the gateway's lean
    /// engine), plain TCP otherwise.
    static func start(
        host: String,
        port: Int,
        certificateChain: String?,
        privateKey: String?,
        bufferArena: Bool = false,
        relay: (host: String, port: Int)? = nil,
        lean: Bool = false
    ) async throws
        -> any Channel
    {
        let context: NIOSSLContext?
        var leanContext: LeanTLSServerContext?
        if lean, let certificateChain, let privateKey {
            // The gateway's default engine, as the gateway configures it without tickets.
            leanContext = try LeanTLSServerContext(certificateChainFile: certificateChain, privateKeyFile: privateKey)
            context = nil
        } else if let certificateChain, let privateKey {
            var configuration = TLSConfiguration.makeServerConfiguration(
                certificateChain: try NIOSSLCertificate.fromPEMFile(certificateChain).map { .certificate($0) },
                privateKey: .privateKey(try NIOSSLPrivateKey(file: privateKey, format: .pem))
            )
            configuration.minimumTLSVersion = .tlsv12
            context = try NIOSSLContext(configuration: configuration)
        } else {
            context = nil
        }
        let group = MultiThreadedEventLoopGroup(numberOfThreads: System.coreCount)
        var relayPerLoop: [ObjectIdentifier: Relay] = [:]
        if let relay {
            for loop in group.makeIterator() {
                relayPerLoop[ObjectIdentifier(loop)] = try await Relay.connect(
                    host: relay.host,
                    port: relay.port,
                    on: loop
                )
            }
        }
        let relays = relayPerLoop
        // One AEAD context per loop, used on that loop only (as the gateway's EdgeLoopContext).
        var aeadPerLoop: [ObjectIdentifier: NIOLoopBound<AEADContext>] = [:]
        if leanContext != nil {
            for loop in group.makeIterator() {
                aeadPerLoop[ObjectIdentifier(loop)] = try await loop.submit {
                    NIOLoopBound(AEADContext(), eventLoop: loop)
                }.get()
            }
        }
        let aeads = aeadPerLoop
        let lean = leanContext
        // With --buffer-arena, the gateway's allocator for device channels (large TLS buffers
        // from a BufferArena): the memory breakdown then separates the arena's saving from the
        // gateway's session state.
        let allocator = bufferArena ? SessionBufferAllocator.allocator : ByteBufferAllocator()
        return try await ServerBootstrap(group: group)
            .childChannelOption(.allocator, value: allocator)
            .serverChannelOption(.backlog, value: 4096)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            // The gateway's read buffer sizes, so that both read the same way.
            .childChannelOption(.recvAllocator, value: EdgeServer.readBuffers)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    if let context {
                        try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: context))
                    } else if let lean, let aead = aeads[ObjectIdentifier(channel.eventLoop)] {
                        try channel.pipeline.syncOperations.addHandler(
                            LeanTLSServerHandler(context: lean, aead: aead.value)
                        )
                    }
                    try channel.pipeline.syncOperations.addHandler(
                        Handler(relay: relays[ObjectIdentifier(channel.eventLoop)])
                    )
                }
            }
            .bind(host: host, port: port)
            .get()
    }
}

/// One event loop's connection to the relay echo, confined to that loop (the device channels
/// that use it live on the same loop). What waits for an answer is bounded by the devices'
/// in-flight limit (the WELCOME's max_inflight, 32) times the devices: a benchmark peer, not a
/// product path.
final class Relay: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private var channel: (any Channel)?
    private var nextToken: UInt64 = 0
    private var waiting: [UInt64: (AckServer.Handler, UInt32)] = [:]
    private var needsFlush = false
    private var received = ByteBuffer()
    private var toFlush: [AckServer.Handler] = []

    static func connect(host: String, port: Int, on loop: any EventLoop) async throws -> Relay {
        let relay = Relay()
        let channel = try await ClientBootstrap(group: loop)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(relay) }
            }
            .connect(host: host, port: port)
            .get()
        try await loop.submit { relay.channel = channel }.get()
        return relay
    }

    /// Writes `payload` as one record; flushed by `flush` at the end of the device's read.
    func send(_ payload: ByteBuffer, messageID: UInt32, from handler: AckServer.Handler) {
        guard let channel else { return }
        self.nextToken &+= 1
        self.waiting[self.nextToken] = (handler, messageID)
        var record = channel.allocator.buffer(capacity: 12 + payload.readableBytes)
        record.writeInteger(UInt32(8 + payload.readableBytes))
        record.writeInteger(self.nextToken)
        record.writeImmutableBuffer(payload)
        channel.write(record, promise: nil)
        self.needsFlush = true
    }

    func flush() {
        guard self.needsFlush else { return }
        self.needsFlush = false
        self.channel?.flush()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = self.unwrapInboundIn(data)
        self.received.writeBuffer(&buffer)
        while let token = self.received.readInteger(as: UInt64.self) {
            guard let (handler, messageID) = self.waiting.removeValue(forKey: token) else { continue }
            if handler.relayed(messageID) { self.toFlush.append(handler) }
        }
        self.received.discardReadBytes()
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        for handler in self.toFlush { handler.flushRelayed() }
        self.toFlush.removeAll(keepingCapacity: true)
    }
}

/// The relay's other end: answers each record (4-byte length, then at least an 8-byte token)
/// with its token, flushed once per read. Plain TCP, one event loop per core.
enum RelayEcho {
    final class Handler: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        typealias OutboundOut = ByteBuffer

        /// A record's length bounds what one connection buffers (a device frame is at most 64 KiB).
        static let maxRecord: UInt32 = 1 << 20

        private var received = ByteBuffer()
        private var answers = ByteBuffer()

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            var buffer = self.unwrapInboundIn(data)
            self.received.writeBuffer(&buffer)
            while let length = self.received.getInteger(at: self.received.readerIndex, as: UInt32.self) {
                guard (8...Self.maxRecord).contains(length) else {
                    // Not a record from the relay: nothing more on this connection makes sense.
                    context.close(promise: nil)
                    return
                }
                guard self.received.readableBytes >= 4 + Int(length) else { break }
                let token = self.received.getInteger(at: self.received.readerIndex + 4, as: UInt64.self)!
                self.received.moveReaderIndex(forwardBy: 4 + Int(length))
                self.answers.writeInteger(token)
            }
            self.received.discardReadBytes()
        }

        func channelReadComplete(context: ChannelHandlerContext) {
            guard self.answers.readableBytes > 0 else { return }
            context.writeAndFlush(self.wrapOutboundOut(self.answers), promise: nil)
            self.answers = context.channel.allocator.buffer(capacity: 256)
        }
    }

    static func start(host: String, port: Int) async throws -> any Channel {
        try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(Handler()) }
            }
            .bind(host: host, port: port)
            .get()
    }
}
