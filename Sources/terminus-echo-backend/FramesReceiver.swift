import Logging
import NIOCore
import NIOHPACK
import NIOHTTP2
import NIOPosix
import SwiftProtobuf
import TerminusAPI

/// `--engine frames`: the same `Deliver` method without grpc-swift-2, as HTTP/2 frames on
/// SwiftNIO's event loops (swift-nio-http2). A batch is read, decoded, counted and answered
/// inside the read that brought it, and the answers of one read are flushed together; no task
/// and no other thread takes part. This is what a lean gRPC layer costs a backend per message,
/// and what the release gate's IoT scenario runs as the gateway's consumer, so that the
/// figures measure the gateway and not grpc-swift-2's server (docs/benchmarks.md).
///
/// Plaintext only, one `Deliver` stream per call; a request message larger than
/// `maxMessageSize` or a call to another method is refused with its gRPC status.
enum FramesReceiver {
    /// Binds `host:port` and serves until the process ends.
    static func serve(host: String, port: Int, options: EchoOptions) async throws {
        let bootstrap = ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    _ = try channel.pipeline.syncOperations.configureHTTP2Pipeline(
                        mode: .server,
                        connectionConfiguration: .init(),
                        streamConfiguration: .init()
                    ) { stream in
                        stream.eventLoop.makeCompletedFuture {
                            try stream.pipeline.syncOperations.addHandler(DeliverCallHandler(options: options))
                        }
                    }
                }
            }
        let listener = try await bootstrap.bind(host: host, port: port).get()
        try await listener.closeFuture.get()
    }
}

/// One `Deliver` call on its HTTP/2 stream: response headers once the request's are accepted,
/// one `DeliverResponse` per `DeliverRequest` (its `batch_id`, one result per message, in
/// order), trailers with `grpc-status: 0` when the gateway ends its side.
final class DeliverCallHandler: ChannelInboundHandler {
    typealias InboundIn = HTTP2Frame.FramePayload
    typealias OutboundOut = HTTP2Frame.FramePayload

    static let path = "/terminus.v1.UplinkReceiver/Deliver"

    private let options: EchoOptions
    private var received = ByteBuffer()
    private var accepted = false
    /// Refused or finished: what else arrives is ignored.
    private var done = false
    /// Answers written since the last flush.
    private var unflushed = false

    init(options: EchoOptions) {
        self.options = options
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !self.done else { return }
        switch self.unwrapInboundIn(data) {
        case .headers(let headers):
            if !self.accepted {
                guard self.accept(headers.headers, context: context) else { return }
            }
            if headers.endStream { self.finish(context: context) }
        case .data(let payload):
            guard self.accepted, case .byteBuffer(var bytes) = payload.data else { return }
            self.received.writeBuffer(&bytes)
            self.answerComplete(context: context)
            if payload.endStream, !self.done { self.finish(context: context) }
        default:
            break
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if self.unflushed {
            self.unflushed = false
            context.flush()
        }
        context.fireChannelReadComplete()
    }

    private func accept(_ headers: HPACKHeaders, context: ChannelHandlerContext) -> Bool {
        guard headers.first(name: ":path") == Self.path,
            headers.first(name: "content-type")?.hasPrefix("application/grpc") == true
        else {
            self.refuse(status: 12, "only \(Self.path) is served here", context: context)
            return false
        }
        if let encoding = headers.first(name: "grpc-encoding"), encoding != "identity" {
            self.refuse(status: 12, "compressed requests are not supported", context: context)
            return false
        }
        self.accepted = true
        let response: HPACKHeaders = [":status": "200", "content-type": "application/grpc"]
        context.write(self.wrapOutboundOut(.headers(.init(headers: response))), promise: nil)
        self.unflushed = true
        return true
    }

    /// Answers every complete request message in `received`.
    private func answerComplete(context: ChannelHandlerContext) {
        while !self.done, self.received.readableBytes >= 5,
            let compressed = self.received.getInteger(at: self.received.readerIndex, as: UInt8.self),
            let length = self.received.getInteger(at: self.received.readerIndex + 1, as: UInt32.self)
        {
            guard Int(length) <= self.options.maxMessageSize else {
                return self.refuse(
                    status: 8,
                    "request message of \(length) bytes, more than \(self.options.maxMessageSize)",
                    context: context
                )
            }
            guard compressed == 0 else {
                return self.refuse(status: 12, "compressed messages are not supported", context: context)
            }
            guard self.received.readableBytes >= 5 + Int(length) else { break }
            self.received.moveReaderIndex(forwardBy: 5)
            let message = self.received.readSlice(length: Int(length))!
            guard let batch = try? Terminus_V1_DeliverRequest(serializedBytes: Array(message.readableBytesView)) else {
                return self.refuse(status: 13, "a DeliverRequest that does not decode", context: context)
            }
            self.answer(batch, context: context)
        }
        self.received.discardReadBytes()
    }

    private func answer(_ batch: Terminus_V1_DeliverRequest, context: ChannelHandlerContext) {
        var answer = Terminus_V1_DeliverResponse()
        answer.batchID = batch.batchID
        answer.results.reserveCapacity(batch.messages.count)
        for message in batch.messages {
            answer.results.append(EchoAnswer.result(for: message, of: batch, options: self.options))
        }
        guard let bytes: [UInt8] = try? answer.serializedBytes() else {
            return self.refuse(status: 13, "the answer could not be encoded", context: context)
        }
        var frame = context.channel.allocator.buffer(capacity: 5 + bytes.count)
        frame.writeInteger(UInt8(0))
        frame.writeInteger(UInt32(bytes.count))
        frame.writeBytes(bytes)
        context.write(self.wrapOutboundOut(.data(.init(data: .byteBuffer(frame)))), promise: nil)
        self.unflushed = true
    }

    /// The gateway ended its side: trailers, OK.
    private func finish(context: ChannelHandlerContext) {
        self.done = true
        self.unflushed = false
        let trailers: HPACKHeaders = ["grpc-status": "0"]
        context.writeAndFlush(self.wrapOutboundOut(.headers(.init(headers: trailers, endStream: true))), promise: nil)
    }

    /// Trailers only (or after the response headers), with the status; the stream then ends.
    private func refuse(status: Int, _ message: String, context: ChannelHandlerContext) {
        self.done = true
        self.unflushed = false
        // Pseudo-headers first: a refusal before the response headers is a trailers-only answer.
        var trailers: HPACKHeaders = self.accepted ? [:] : [":status": "200", "content-type": "application/grpc"]
        trailers.add(name: "grpc-status", value: "\(status)")
        trailers.add(name: "grpc-message", value: message)
        context.writeAndFlush(self.wrapOutboundOut(.headers(.init(headers: trailers, endStream: true))), promise: nil)
    }
}
