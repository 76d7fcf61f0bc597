import NIOCore
import NIOPosix
import NIOSSL
import TerminusEdge
import TerminusProtocol

/// The floor for CPU per message: a bare SwiftNIO + swift-nio-ssl server that speaks just enough
/// of the device protocol for the fleet client (HELLO → WELCOME, PUBLISH → ACK OK, PING → PONG)
/// and nothing else: no authentication, no inflating, no routing, no backend. It ACKs in the same
/// read, so each message costs one read, one TLS record each way and one write: what any
/// gateway on this stack pays before doing its own work. Measured with the same client and the
/// same certificate as the gateway, its CPU per message says how far a target is from the stack.
enum AckServer {
    final class Handler: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        typealias OutboundOut = ByteBuffer

        private var decoder = FrameDecoder(maxFrameLength: 64 * 1024)
        private var partial: ByteBuffer?
        private var needsFlush = false

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
    /// PEM certificate chain and key when given, plain TCP otherwise.
    static func start(
        host: String,
        port: Int,
        certificateChain: String?,
        privateKey: String?,
        bufferArena: Bool = false
    ) async throws
        -> any Channel
    {
        let context: NIOSSLContext?
        if let certificateChain, let privateKey {
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
                    }
                    try channel.pipeline.syncOperations.addHandler(Handler())
                }
            }
            .bind(host: host, port: port)
            .get()
    }
}
