internal import NIOCore
internal import NIOHPACK

/// Why a `GRPCStreamConnection` gave up on its connection (reported to `errorCaught`'s
/// delegate, then the connection closes).
struct GRPCStreamConnectionError: Error, CustomStringConvertible, Equatable {
    /// The HTTP/2 error code sent in GOAWAY (RFC 9113, section 7).
    var code: UInt32
    var reason: String

    static func protocolError(_ reason: String) -> Self { .init(code: 0x1, reason: reason) }
    static func flowControl(_ reason: String) -> Self { .init(code: 0x3, reason: reason) }
    static func frameSize(_ reason: String) -> Self { .init(code: 0x6, reason: reason) }
    static func enhanceYourCalm(_ reason: String) -> Self { .init(code: 0xB, reason: reason) }

    var description: String { "HTTP/2 error \(self.code) from the backend's side: \(self.reason)" }
}

/// A gRPC client for exactly one bidirectional call on its own HTTP/2 connection (RFC 9113):
/// the call is stream 1, opened as soon as the connection is; its request messages are written
/// as DATA frames straight to the connection's pipeline, its answers are parsed from the bytes
/// read. It is the whole HTTP/2 layer of a `Deliver` connection, one handler instead of
/// swift-nio-http2's connection handler, multiplexer and stream channel: with it the gateway's
/// CPU per lone message measured 0.87 of what it was with them (docs/benchmarks.md, "A
/// single-stream HTTP/2 client"). The connection carries nothing else, so it has no stream
/// multiplexing, no priorities and no server push (disabled in its SETTINGS).
///
/// What it keeps of HTTP/2: the connection preface and SETTINGS (acknowledged, peer's initial
/// window and frame size applied), flow control both ways (a request waits for window; the
/// windows it grants are topped up as answers are read), PING answered, GOAWAY reported,
/// HPACK-decoded response headers and trailers (swift-nio-http2's `HPACKDecoder`, so the
/// dynamic table stays in step), CONTINUATION, padding, and every frame checked for its size
/// and stream. A violation closes the connection after a GOAWAY with its error code.
///
/// Writes: a `ByteBuffer` is one DATA frame of the call holding one gRPC-framed request
/// message (`writeDataFrameHeader`, then the 5-byte prefix and the message);
/// `OutboundEvent.end` half-closes the call, `OutboundEvent.ping` sends a PING. Reads: each
/// gRPC message of the answer goes to `Delegate.message`; the end of the call (trailers,
/// RST_STREAM) closes the connection, since the call was all it carried.
final class GRPCStreamConnection: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    enum OutboundEvent {
        /// Ends the request side (END_STREAM), after every message written before it.
        case end
        /// A PING carrying these 8 bytes.
        case ping(UInt64)
    }

    /// What the connection reports (on its loop).
    struct Delegate {
        /// Bytes were read (anything: an answer, a PING's answer, a window).
        var read: () -> Void = {}
        /// One gRPC message of the answer, without its 5-byte prefix. Throws if it is not an
        /// answer the call takes: the connection then closes (GOAWAY CANCEL).
        var message: (ByteBuffer) throws -> Void
        /// The backend sent GOAWAY: no new call should come here (this one may still finish).
        var goingAway: () -> Void
        /// The call ended in a way an operator should see (a non-zero `grpc-status`, an HTTP
        /// status other than 200, a reset, a message too large or compressed).
        var ended: (String) -> Void
        /// The connection broke the protocol or failed (logged when it ends).
        var failed: (any Error) -> Void
    }

    struct Configuration {
        var path: String
        /// `http` or `https`.
        var scheme: String
        var authority: String
        var userAgent = "terminus"
        /// The window granted to the backend, for the connection and for the call (at least
        /// HTTP/2's default, 65,535).
        var receiveWindow = 1 << 20
        /// Largest gRPC message taken from the backend.
        var maximumMessage = 4 * 1024 * 1024
        /// Largest header block (HEADERS and its CONTINUATIONs) taken from the backend.
        var maximumHeaderBlock = 64 * 1024
    }

    /// HTTP/2's default initial window and frame size (RFC 9113, 6.5.2), and the largest window.
    static let defaultWindow = 65_535
    static let defaultFrameSize = 16_384
    static let maximumWindow = Int(Int32.max)
    /// An HTTP/2 frame's header.
    static let frameHeaderSize = 9
    /// The longest frame payload a header can state.
    static let maximumFrameLength = 16_777_215
    static let preface: [UInt8] = Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8)

    private enum FrameType: UInt8 {
        case data = 0x0
        case headers = 0x1
        case priority = 0x2
        case rstStream = 0x3
        case settings = 0x4
        case pushPromise = 0x5
        case ping = 0x6
        case goAway = 0x7
        case windowUpdate = 0x8
        case continuation = 0x9
    }

    private enum Flag {
        static let endStream: UInt8 = 0x1
        static let ack: UInt8 = 0x1
        static let endHeaders: UInt8 = 0x4
        static let padded: UInt8 = 0x8
        static let priority: UInt8 = 0x20
    }

    /// Request bytes not yet written: a whole DATA frame as `write` took it (`framed`), or the
    /// rest of one, without its header, that the windows did not take.
    private struct PendingData {
        var bytes: ByteBuffer
        var framed: Bool
    }

    private let configuration: Configuration
    private let delegate: Delegate
    private var decoder: HPACKDecoder

    /// Bytes read and not yet parsed (at most one frame and one read).
    private var inbound = ByteBuffer()
    /// The call's DATA bytes not yet parsed into messages (at most one message and one frame).
    private var received = ByteBuffer()
    /// A header block waiting for its CONTINUATION frames, and whether its HEADERS ended the call.
    private var headerBlock: (bytes: ByteBuffer, endStream: Bool)?
    private var sawSettings = false
    private var sawResponseHeaders = false
    private var started = false
    private var finished = false

    /// Flow control, what we may send: the connection's window and the call's.
    private var sendConnectionWindow = GRPCStreamConnection.defaultWindow
    private var sendStreamWindow = GRPCStreamConnection.defaultWindow
    private var peerInitialWindow = GRPCStreamConnection.defaultWindow
    private var peerMaximumFrame = GRPCStreamConnection.defaultFrameSize
    /// Request bytes waiting for window (bounded by the caller's batches in flight), and whether
    /// the call's end waits behind them.
    private var pending = CircularBuffer<PendingData>()
    private var endPending = false
    private var sentEnd = false
    /// Flow control, what the backend may send: the window granted (the connection's and the
    /// call's), and what was read since it was last topped up. What is read is taken at once
    /// (what waits is bounded by `maximumMessage`), so the windows are granted again as soon as
    /// half of them is used, and a backend that stays within them never has to wait.
    private let receiveWindow: Int
    private var consumedConnection = 0
    private var consumedStream = 0
    private var needsFlush = false

    init(configuration: Configuration, delegate: Delegate, allocator: ByteBufferAllocator = .init()) {
        self.configuration = configuration
        self.delegate = delegate
        self.decoder = HPACKDecoder(allocator: allocator)
        self.receiveWindow = max(configuration.receiveWindow, Self.defaultWindow)
    }

    // MARK: Opening

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { self.start(context: context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        self.start(context: context)
        context.fireChannelActive()
    }

    /// The preface, our SETTINGS, the connection's window, and the call's HEADERS.
    private func start(context: ChannelHandlerContext) {
        guard !self.started else { return }
        self.started = true
        var buffer = context.channel.allocator.buffer(capacity: 256)
        buffer.writeBytes(Self.preface)
        // SETTINGS: ENABLE_PUSH 0, INITIAL_WINDOW_SIZE.
        Self.writeFrameHeader(length: 12, type: .settings, flags: 0, stream: 0, into: &buffer)
        buffer.writeInteger(UInt16(0x2))
        buffer.writeInteger(UInt32(0))
        buffer.writeInteger(UInt16(0x4))
        buffer.writeInteger(UInt32(self.receiveWindow))
        if self.receiveWindow > Self.defaultWindow {
            Self.writeFrameHeader(length: 4, type: .windowUpdate, flags: 0, stream: 0, into: &buffer)
            buffer.writeInteger(UInt32(self.receiveWindow - Self.defaultWindow))
        }
        var block = Self.requestHeaderBlock(self.configuration, allocator: context.channel.allocator)
        var first = true
        repeat {
            var fragment = block.readSlice(length: min(block.readableBytes, Self.defaultFrameSize))!
            let last = block.readableBytes == 0
            Self.writeFrameHeader(
                length: fragment.readableBytes,
                type: first ? .headers : .continuation,
                flags: last ? Flag.endHeaders : 0,
                stream: 1,
                into: &buffer
            )
            buffer.writeBuffer(&fragment)
            first = false
        } while block.readableBytes > 0
        context.writeAndFlush(self.wrapOutboundOut(buffer), promise: nil)
    }

    /// The call's request headers, HPACK-encoded without touching the dynamic table (static
    /// table indices and literals "without indexing", no Huffman coding).
    static func requestHeaderBlock(_ configuration: Configuration, allocator: ByteBufferAllocator) -> ByteBuffer {
        var block = allocator.buffer(capacity: 64 + configuration.path.utf8.count + configuration.authority.utf8.count)
        block.writeInteger(UInt8(0x83))  // :method POST (static 3)
        block.writeInteger(UInt8(configuration.scheme == "https" ? 0x87 : 0x86))  // :scheme (static 7, 6)
        Self.writeLiteral(nameIndex: 4, value: configuration.path, into: &block)  // :path
        Self.writeLiteral(nameIndex: 1, value: configuration.authority, into: &block)  // :authority
        Self.writeLiteral(nameIndex: 31, value: "application/grpc", into: &block)  // content-type
        block.writeInteger(UInt8(0x00))  // te: literal name
        Self.writeString("te", into: &block)
        Self.writeString("trailers", into: &block)
        Self.writeLiteral(nameIndex: 58, value: configuration.userAgent, into: &block)  // user-agent
        return block
    }

    /// A literal header field without indexing, its name from the static table (RFC 7541, 6.2.2).
    private static func writeLiteral(nameIndex: Int, value: String, into buffer: inout ByteBuffer) {
        Self.writeInteger(nameIndex, prefixBits: 4, firstByte: 0x00, into: &buffer)
        Self.writeString(value, into: &buffer)
    }

    private static func writeString(_ string: String, into buffer: inout ByteBuffer) {
        Self.writeInteger(string.utf8.count, prefixBits: 7, firstByte: 0x00, into: &buffer)
        buffer.writeString(string)
    }

    /// An HPACK integer (RFC 7541, 5.1).
    private static func writeInteger(_ value: Int, prefixBits: Int, firstByte: UInt8, into buffer: inout ByteBuffer) {
        let limit = (1 << prefixBits) - 1
        guard value >= limit else {
            buffer.writeInteger(firstByte | UInt8(value))
            return
        }
        buffer.writeInteger(firstByte | UInt8(limit))
        var rest = value - limit
        while rest >= 128 {
            buffer.writeInteger(UInt8(rest & 0x7F | 0x80))
            rest >>= 7
        }
        buffer.writeInteger(UInt8(rest))
    }

    private static func writeFrameHeader(
        length: Int,
        type: FrameType,
        flags: UInt8,
        stream: UInt32,
        into buffer: inout ByteBuffer
    ) {
        buffer.writeInteger(UInt8(truncatingIfNeeded: length >> 16))
        buffer.writeInteger(UInt16(truncatingIfNeeded: length))
        buffer.writeInteger(type.rawValue)
        buffer.writeInteger(flags)
        buffer.writeInteger(stream)
    }

    // MARK: Writing

    /// Writes the header of a DATA frame of the call (stream 1, no flags) carrying
    /// `payloadLength` bytes: what a request buffer starts with (`write`).
    /// (A longer one cannot be stated: 9 bytes are written all the same, and `write` splits it.)
    static func writeDataFrameHeader(payloadLength: Int, into buffer: inout ByteBuffer) {
        let length = payloadLength <= Self.maximumFrameLength ? payloadLength : 0
        Self.writeFrameHeader(length: length, type: .data, flags: 0, stream: 1, into: &buffer)
    }

    /// A request: 9 bytes for its DATA frame's header (`writeDataFrameHeader`), then one
    /// gRPC-framed message. Written as it is when the header is right (a message of up to
    /// 16 MiB) and the windows and the backend's frame size take it, else in as many frames as
    /// they do, as they do.
    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let frame = self.unwrapOutboundIn(data)
        guard !self.sentEnd, !self.endPending, !self.finished else {
            promise?.fail(ChannelError.outputClosed)
            return
        }
        guard frame.readableBytes >= Self.frameHeaderSize,
            let high = frame.getInteger(at: frame.readerIndex, as: UInt8.self),
            let low = frame.getInteger(at: frame.readerIndex + 1, as: UInt16.self)
        else {
            promise?.fail(GRPCStreamConnectionError.protocolError("a request shorter than a frame header"))
            return
        }
        let framed = Int(high) << 16 | Int(low) == frame.readableBytes - Self.frameHeaderSize
        var bytes = frame
        if !framed { bytes.moveReaderIndex(forwardBy: Self.frameHeaderSize) }
        self.pending.append(PendingData(bytes: bytes, framed: framed))
        self.sendPending(context: context)
        promise?.succeed()
    }

    func triggerUserOutboundEvent(context: ChannelHandlerContext, event: Any, promise: EventLoopPromise<Void>?) {
        guard let event = event as? OutboundEvent else {
            return context.triggerUserOutboundEvent(event, promise: promise)
        }
        switch event {
        case .end:
            if !self.sentEnd, !self.finished {
                self.endPending = true
                self.sendPending(context: context)
            }
        case .ping(let data):
            if !self.finished {
                var buffer = context.channel.allocator.buffer(capacity: 17)
                Self.writeFrameHeader(length: 8, type: .ping, flags: 0, stream: 0, into: &buffer)
                buffer.writeInteger(data)
                context.write(self.wrapOutboundOut(buffer), promise: nil)
                self.needsFlush = true
            }
        }
        if self.needsFlush {
            self.needsFlush = false
            context.flush()
        }
        promise?.succeed()
    }

    /// Writes what the windows allow of the waiting request bytes, then the call's end if it
    /// waits and nothing else does.
    private func sendPending(context: ChannelHandlerContext) {
        while var first = self.pending.first {
            let allowed = min(self.sendConnectionWindow, self.sendStreamWindow, self.peerMaximumFrame)
            let payload = first.bytes.readableBytes - (first.framed ? Self.frameHeaderSize : 0)
            if first.framed, payload <= allowed {
                // The common case: the frame as the encoder made it, one buffer.
                self.pending.removeFirst()
                context.write(self.wrapOutboundOut(first.bytes), promise: nil)
                self.sendConnectionWindow -= payload
                self.sendStreamWindow -= payload
                self.needsFlush = true
                continue
            }
            guard allowed > 0 else { return }
            if first.framed {
                first.bytes.moveReaderIndex(forwardBy: Self.frameHeaderSize)
                first.framed = false
            }
            let length = min(allowed, payload)
            let part = first.bytes.readSlice(length: length)!
            if first.bytes.readableBytes == 0 {
                self.pending.removeFirst()
            } else {
                self.pending[self.pending.startIndex] = first
            }
            var header = context.channel.allocator.buffer(capacity: Self.frameHeaderSize)
            Self.writeDataFrameHeader(payloadLength: length, into: &header)
            context.write(self.wrapOutboundOut(header), promise: nil)
            context.write(self.wrapOutboundOut(part), promise: nil)
            self.sendConnectionWindow -= length
            self.sendStreamWindow -= length
            self.needsFlush = true
        }
        if self.endPending {
            self.endPending = false
            self.sentEnd = true
            var header = context.channel.allocator.buffer(capacity: Self.frameHeaderSize)
            Self.writeFrameHeader(length: 0, type: .data, flags: Flag.endStream, stream: 1, into: &header)
            context.write(self.wrapOutboundOut(header), promise: nil)
            self.needsFlush = true
        }
    }

    func flush(context: ChannelHandlerContext) {
        self.needsFlush = false
        context.flush()
    }

    // MARK: Reading

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !self.finished else { return }
        self.delegate.read()
        var bytes = self.unwrapInboundIn(data)
        if self.inbound.readableBytes == 0 {
            self.inbound = bytes
        } else {
            self.inbound.writeBuffer(&bytes)
        }
        do {
            while !self.finished, let (type, flags, stream, payload) = try self.nextFrame() {
                try self.process(type: type, flags: flags, stream: stream, payload: payload, context: context)
            }
        } catch let error as GRPCStreamConnectionError {
            self.fail(error, context: context)
            return
        } catch {
            self.fail(.protocolError("\(error)"), context: context)
            return
        }
        if self.inbound.readableBytes == 0 {
            // Let go of the read's buffer (no frame keeps a slice of it), so that NIO reuses it
            // for the next read: clearing it here would allocate a fresh one, and NIO another.
            self.inbound = ByteBuffer()
        } else if self.inbound.readerIndex > Self.defaultFrameSize {
            self.inbound.discardReadBytes()
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
        self.delegate.failed(error)
        context.close(promise: nil)
    }

    /// The next whole frame read, if there is one: its type (nil for a type this client does
    /// not know, which is ignored), flags, stream and payload.
    private func nextFrame() throws -> (UInt8, UInt8, UInt32, ByteBuffer)? {
        guard self.inbound.readableBytes >= Self.frameHeaderSize else { return nil }
        let index = self.inbound.readerIndex
        let high = Int(self.inbound.getInteger(at: index, as: UInt8.self)!)
        let low = Int(self.inbound.getInteger(at: index + 1, as: UInt16.self)!)
        let length = high << 16 | low
        // We never raise SETTINGS_MAX_FRAME_SIZE.
        guard length <= Self.defaultFrameSize else {
            throw GRPCStreamConnectionError.frameSize("a frame of \(length) bytes")
        }
        guard self.inbound.readableBytes >= Self.frameHeaderSize + length else { return nil }
        let type = self.inbound.getInteger(at: index + 3, as: UInt8.self)!
        let flags = self.inbound.getInteger(at: index + 4, as: UInt8.self)!
        let stream = self.inbound.getInteger(at: index + 5, as: UInt32.self)! & 0x7FFF_FFFF
        self.inbound.moveReaderIndex(forwardBy: Self.frameHeaderSize)
        return (type, flags, stream, self.inbound.readSlice(length: length)!)
    }

    private func process(
        type rawType: UInt8,
        flags: UInt8,
        stream: UInt32,
        payload: ByteBuffer,
        context: ChannelHandlerContext
    ) throws {
        let type = FrameType(rawValue: rawType)
        if !self.sawSettings, type != .settings {
            throw GRPCStreamConnectionError.protocolError("the server's preface is not a SETTINGS frame")
        }
        if let block = self.headerBlock {
            guard type == .continuation, stream == 1 else {
                throw GRPCStreamConnectionError.protocolError("a header block interrupted by another frame")
            }
            var bytes = block.bytes
            var fragment = payload
            guard bytes.readableBytes + fragment.readableBytes <= self.configuration.maximumHeaderBlock else {
                throw GRPCStreamConnectionError.enhanceYourCalm(
                    "a header block over \(self.configuration.maximumHeaderBlock) bytes"
                )
            }
            bytes.writeBuffer(&fragment)
            if flags & Flag.endHeaders != 0 {
                self.headerBlock = nil
                try self.headersReceived(bytes, endStream: block.endStream, context: context)
            } else {
                self.headerBlock = (bytes, block.endStream)
            }
            return
        }
        guard let type else { return }  // Unknown frame types are ignored (RFC 9113, 4.1).
        switch type {
        case .data:
            try self.dataReceived(flags: flags, stream: stream, payload: payload, context: context)
        case .headers:
            guard stream == 1 else { throw GRPCStreamConnectionError.protocolError("HEADERS on stream \(stream)") }
            var fragment = try Self.unpadded(payload, flags: flags)
            if flags & Flag.priority != 0 {
                guard fragment.readableBytes >= 5 else { throw GRPCStreamConnectionError.frameSize("HEADERS priority") }
                fragment.moveReaderIndex(forwardBy: 5)
            }
            let endStream = flags & Flag.endStream != 0
            if flags & Flag.endHeaders != 0 {
                try self.headersReceived(fragment, endStream: endStream, context: context)
            } else {
                guard fragment.readableBytes <= self.configuration.maximumHeaderBlock else {
                    throw GRPCStreamConnectionError.enhanceYourCalm(
                        "a header block over \(self.configuration.maximumHeaderBlock) bytes"
                    )
                }
                self.headerBlock = (fragment, endStream)
            }
        case .priority:
            guard payload.readableBytes == 5 else { throw GRPCStreamConnectionError.frameSize("PRIORITY") }
        case .rstStream:
            guard stream != 0, payload.readableBytes == 4 else {
                throw GRPCStreamConnectionError.frameSize("RST_STREAM")
            }
            guard stream == 1 else { return }
            let code = payload.getInteger(at: payload.readerIndex, as: UInt32.self)!
            if code != 0 { self.delegate.ended("the backend reset the call (HTTP/2 error \(code))") }
            self.finish(context: context)
        case .settings:
            try self.settingsReceived(flags: flags, stream: stream, payload: payload, context: context)
        case .pushPromise:
            throw GRPCStreamConnectionError.protocolError("PUSH_PROMISE with push disabled")
        case .ping:
            guard stream == 0 else { throw GRPCStreamConnectionError.protocolError("PING on stream \(stream)") }
            guard payload.readableBytes == 8 else { throw GRPCStreamConnectionError.frameSize("PING") }
            if flags & Flag.ack == 0 {
                var answer = context.channel.allocator.buffer(capacity: 17)
                Self.writeFrameHeader(length: 8, type: .ping, flags: Flag.ack, stream: 0, into: &answer)
                var data = payload
                answer.writeBuffer(&data)
                context.write(self.wrapOutboundOut(answer), promise: nil)
                self.needsFlush = true
            }
        case .goAway:
            guard stream == 0 else { throw GRPCStreamConnectionError.protocolError("GOAWAY on stream \(stream)") }
            guard payload.readableBytes >= 8 else { throw GRPCStreamConnectionError.frameSize("GOAWAY") }
            let lastStream = payload.getInteger(at: payload.readerIndex, as: UInt32.self)! & 0x7FFF_FFFF
            let code = payload.getInteger(at: payload.readerIndex + 4, as: UInt32.self)!
            if code != 0 {
                let debug = payload.getString(at: payload.readerIndex + 8, length: min(256, payload.readableBytes - 8))
                self.delegate.ended("the backend sent GOAWAY (HTTP/2 error \(code)) \(debug ?? "")")
            }
            self.delegate.goingAway()
            // A call the backend never took will not be answered.
            if lastStream < 1 { self.finish(context: context) }
        case .windowUpdate:
            guard payload.readableBytes == 4 else { throw GRPCStreamConnectionError.frameSize("WINDOW_UPDATE") }
            let increment = Int(payload.getInteger(at: payload.readerIndex, as: UInt32.self)! & 0x7FFF_FFFF)
            guard increment > 0 else { throw GRPCStreamConnectionError.protocolError("WINDOW_UPDATE of 0") }
            switch stream {
            case 0:
                self.sendConnectionWindow += increment
                guard self.sendConnectionWindow <= Self.maximumWindow else {
                    throw GRPCStreamConnectionError.flowControl("the connection's window over 2^31-1")
                }
            case 1:
                self.sendStreamWindow += increment
                guard self.sendStreamWindow <= Self.maximumWindow else {
                    throw GRPCStreamConnectionError.flowControl("the call's window over 2^31-1")
                }
            default:
                return
            }
            self.sendPending(context: context)
        case .continuation:
            throw GRPCStreamConnectionError.protocolError("CONTINUATION without HEADERS")
        }
    }

    private static func unpadded(_ payload: ByteBuffer, flags: UInt8) throws -> ByteBuffer {
        guard flags & Flag.padded != 0 else { return payload }
        var payload = payload
        guard let padding = payload.readInteger(as: UInt8.self), Int(padding) <= payload.readableBytes else {
            throw GRPCStreamConnectionError.protocolError("padding longer than its frame")
        }
        return payload.readSlice(length: payload.readableBytes - Int(padding))!
    }

    private func settingsReceived(
        flags: UInt8,
        stream: UInt32,
        payload: ByteBuffer,
        context: ChannelHandlerContext
    ) throws {
        guard stream == 0 else { throw GRPCStreamConnectionError.protocolError("SETTINGS on stream \(stream)") }
        if flags & Flag.ack != 0 {
            guard payload.readableBytes == 0 else { throw GRPCStreamConnectionError.frameSize("SETTINGS ACK") }
            guard self.sawSettings else {
                throw GRPCStreamConnectionError.protocolError("the server's preface is not a SETTINGS frame")
            }
            return
        }
        guard payload.readableBytes % 6 == 0 else { throw GRPCStreamConnectionError.frameSize("SETTINGS") }
        self.sawSettings = true
        var entries = payload
        while let identifier = entries.readInteger(as: UInt16.self), let value = entries.readInteger(as: UInt32.self) {
            switch identifier {
            case 0x4:  // INITIAL_WINDOW_SIZE: applies to the open call at once (6.9.2).
                guard value <= UInt32(Self.maximumWindow) else {
                    throw GRPCStreamConnectionError.flowControl("SETTINGS_INITIAL_WINDOW_SIZE \(value)")
                }
                self.sendStreamWindow += Int(value) - self.peerInitialWindow
                self.peerInitialWindow = Int(value)
            case 0x5:  // MAX_FRAME_SIZE
                guard value >= UInt32(Self.defaultFrameSize), value <= UInt32(Self.maximumFrameLength) else {
                    throw GRPCStreamConnectionError.protocolError("SETTINGS_MAX_FRAME_SIZE \(value)")
                }
                self.peerMaximumFrame = Int(value)
            case 0x2:  // ENABLE_PUSH: a server may only send 0 (8.4).
                guard value == 0 else { throw GRPCStreamConnectionError.protocolError("SETTINGS_ENABLE_PUSH \(value)") }
            default:
                // HEADER_TABLE_SIZE (our requests never use the dynamic table),
                // MAX_CONCURRENT_STREAMS (one call), MAX_HEADER_LIST_SIZE (a few fixed headers),
                // and unknown settings.
                break
            }
        }
        var ack = context.channel.allocator.buffer(capacity: Self.frameHeaderSize)
        Self.writeFrameHeader(length: 0, type: .settings, flags: Flag.ack, stream: 0, into: &ack)
        context.write(self.wrapOutboundOut(ack), promise: nil)
        self.needsFlush = true
        self.sendPending(context: context)
    }

    private func dataReceived(flags: UInt8, stream: UInt32, payload: ByteBuffer, context: ChannelHandlerContext) throws
    {
        guard stream == 1 else { throw GRPCStreamConnectionError.protocolError("DATA on stream \(stream)") }
        guard self.sawResponseHeaders else {
            throw GRPCStreamConnectionError.protocolError("DATA before the response headers")
        }
        // The whole frame, padding too, counts against both windows (6.9.1).
        self.consumedConnection += payload.readableBytes
        self.consumedStream += payload.readableBytes
        var data = try Self.unpadded(payload, flags: flags)
        self.received.writeBuffer(&data)
        try self.readMessages()
        if flags & Flag.endStream != 0 {
            return self.finish(context: context)
        }
        self.topUpWindows(context: context)
    }

    /// Grants the backend again what it used of its windows once that is half of them.
    private func topUpWindows(context: ChannelHandlerContext) {
        let threshold = self.receiveWindow / 2
        if self.consumedConnection >= threshold {
            self.writeWindowUpdate(stream: 0, increment: self.consumedConnection, context: context)
            self.consumedConnection = 0
        }
        if self.consumedStream >= threshold {
            self.writeWindowUpdate(stream: 1, increment: self.consumedStream, context: context)
            self.consumedStream = 0
        }
    }

    private func writeWindowUpdate(stream: UInt32, increment: Int, context: ChannelHandlerContext) {
        var buffer = context.channel.allocator.buffer(capacity: 13)
        Self.writeFrameHeader(length: 4, type: .windowUpdate, flags: 0, stream: stream, into: &buffer)
        buffer.writeInteger(UInt32(increment))
        context.write(self.wrapOutboundOut(buffer), promise: nil)
        self.needsFlush = true
    }

    /// The gRPC messages in the call's DATA so far.
    private func readMessages() throws {
        while self.received.readableBytes >= 5,
            let compressed = self.received.getInteger(at: self.received.readerIndex, as: UInt8.self),
            let length = self.received.getInteger(at: self.received.readerIndex + 1, as: UInt32.self)
        {
            guard compressed == 0 else {
                self.delegate.ended("a compressed answer")
                throw GRPCStreamConnectionError.protocolError("a compressed gRPC message")
            }
            guard Int(length) <= self.configuration.maximumMessage else {
                self.delegate.ended("an answer of \(length) bytes")
                throw GRPCStreamConnectionError.enhanceYourCalm("a gRPC message of \(length) bytes")
            }
            guard self.received.readableBytes >= 5 + Int(length) else { break }
            self.received.moveReaderIndex(forwardBy: 5)
            do {
                try self.delegate.message(self.received.readSlice(length: Int(length))!)
            } catch {
                throw GRPCStreamConnectionError(code: 0x8, reason: "an answer the call does not take: \(error)")
            }
        }
        if self.received.readableBytes == 0 {
            self.received.clear()
        } else {
            self.received.discardReadBytes()
        }
    }

    /// A header block: an interim response (ignored), the response's headers (`:status` must be
    /// 200), or the trailers that end the call (`grpc-status` other than 0 is reported).
    private func headersReceived(_ block: ByteBuffer, endStream: Bool, context: ChannelHandlerContext) throws {
        var block = block
        let headers: HPACKHeaders
        do {
            headers = try self.decoder.decodeHeaders(from: &block)
        } catch {
            throw GRPCStreamConnectionError(code: 0x9, reason: "HPACK: \(error)")  // COMPRESSION_ERROR
        }
        if !self.sawResponseHeaders {
            // An interim response (1xx) comes before the response's own headers (RFC 9110, 15.2).
            if let status = headers.first(name: ":status"), status.utf8.count == 3, status.hasPrefix("1"), !endStream {
                return
            }
            self.sawResponseHeaders = true
            if let status = headers.first(name: ":status"), status != "200" {
                self.delegate.ended("the backend answered HTTP status \(status)")
                return self.finish(context: context)
            }
            // A call failed at once answers with trailers only, in this first block.
        } else if !endStream {
            throw GRPCStreamConnectionError.protocolError("a second header block that does not end the call")
        }
        guard endStream else { return }
        if let status = headers.first(name: "grpc-status"), status != "0" {
            let message = headers.first(name: "grpc-message") ?? ""
            self.delegate.ended("the backend ended the call: grpc-status \(status) \(message)")
        } else if headers.first(name: "grpc-status") == nil {
            self.delegate.ended("the backend ended the call without grpc-status")
        }
        self.finish(context: context)
    }

    // MARK: Ending

    /// The call ended: nothing else is carried here, so the connection closes (after a
    /// GOAWAY saying so).
    private func finish(context: ChannelHandlerContext) {
        guard !self.finished else { return }
        self.finished = true
        self.writeGoAway(code: 0, reason: "", context: context)
        context.flush()
        context.close(promise: nil)
    }

    private func fail(_ error: GRPCStreamConnectionError, context: ChannelHandlerContext) {
        guard !self.finished else { return }
        self.finished = true
        self.delegate.failed(error)
        self.writeGoAway(code: error.code, reason: error.reason, context: context)
        context.flush()
        context.close(promise: nil)
    }

    private func writeGoAway(code: UInt32, reason: String, context: ChannelHandlerContext) {
        let debug = reason.utf8.prefix(128)
        var buffer = context.channel.allocator.buffer(capacity: Self.frameHeaderSize + 8 + debug.count)
        Self.writeFrameHeader(length: 8 + debug.count, type: .goAway, flags: 0, stream: 0, into: &buffer)
        buffer.writeInteger(UInt32(0))  // No stream of the server's was processed (it opens none).
        buffer.writeInteger(code)
        buffer.writeBytes(debug)
        context.write(self.wrapOutboundOut(buffer), promise: nil)
    }
}
