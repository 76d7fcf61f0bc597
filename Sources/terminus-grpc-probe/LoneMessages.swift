import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import NIOCore
import NIOHPACK
import NIOHTTP2
import NIOPosix
import SwiftProtobuf
import Synchronization
import TerminusAPI
import TerminusBackend

/// Lone messages, as devices send them: what one `Deliver` round trip of a one-message batch
/// costs the client, on a gRPC bidirectional stream driven from the event loop (grpc-swift-2's
/// client, as the gateway's delivery uses it), against the same stream written as HTTP/2 frames
/// by a handler on the loop (no tasks). The server is another process (`terminus-echo-backend
/// --quiet`), so the process CPU measured here is the client's alone.
///
/// Each loop has a timer that sends one message every `loops / rate` seconds, alone on its
/// stream; `pacer` runs the timer without sending, the cost every mode includes.
enum LoneMessages {
    enum Mode: String, CaseIterable {
        case pacer
        case grpc
        case h2
        /// HTTP/2 frames written and read on the connection's channel itself: no stream
        /// channel and no multiplexer between the delivery and `NIOHTTP2Handler`.
        case h2conn
    }

    struct Result {
        var mode: Mode
        var answered: Int
        var cpuMicrosPerMessage: Double
        var p50Micros: Double
        var p99Micros: Double
    }

    /// Send times by batch id and round-trip times, for one loop.
    final class Recorder: Sendable {
        private struct State {
            var nextID: UInt64 = 1
            var sent: [UInt64: ContinuousClock.Instant] = [:]
            var roundTrips: [Duration] = []
            var recording = false
        }

        private let state = Mutex(State())

        func nextBatch() -> UInt64 {
            self.state.withLock { state in
                defer { state.nextID += 1 }
                state.sent[state.nextID] = .now
                return state.nextID
            }
        }

        func answered(_ id: UInt64) {
            let now = ContinuousClock.now
            self.state.withLock { state in
                guard let sent = state.sent.removeValue(forKey: id), state.recording else { return }
                state.roundTrips.append(now - sent)
            }
        }

        func record(_ on: Bool) { self.state.withLock { $0.recording = on } }

        var roundTrips: [Duration] { self.state.withLock { $0.roundTrips } }
    }

    /// `request` as one gRPC message: a 0 byte (not compressed), the length (4 bytes, big
    /// endian), the protobuf.
    static func grpcMessage(_ request: Terminus_V1_DeliverRequest, allocator: ByteBufferAllocator) -> ByteBuffer? {
        guard let bytes: [UInt8] = try? request.serializedBytes() else { return nil }
        var buffer = allocator.buffer(capacity: 5 + bytes.count)
        buffer.writeInteger(UInt8(0))
        buffer.writeInteger(UInt32(bytes.count))
        buffer.writeBytes(bytes)
        return buffer
    }

    /// Takes every complete gRPC message (`DeliverResponse`) off `received` and records its
    /// answer; a partial one stays.
    static func readAnswers(from received: inout ByteBuffer, into recorder: Recorder) {
        while received.readableBytes >= 5,
            let length = received.getInteger(at: received.readerIndex + 1, as: UInt32.self),
            received.readableBytes >= 5 + Int(length)
        {
            received.moveReaderIndex(forwardBy: 5)
            let message = received.readSlice(length: Int(length))!
            if let response = try? Terminus_V1_DeliverResponse(serializedBytes: Array(message.readableBytesView)) {
                recorder.answered(response.batchID)
            }
        }
        received.discardReadBytes()
    }

    static func request(id: UInt64, template: Terminus_V1_DeliverRequest) -> Terminus_V1_DeliverRequest {
        var request = template
        request.batchID = id
        request.messages[0].messageID = UInt32(truncatingIfNeeded: id)
        return request
    }

    /// Runs `mode` for `seconds` (after one second of warm-up) and measures it.
    static func measure(
        _ mode: Mode,
        host: String,
        port: Int,
        rate: Int,
        seconds: Double,
        group: MultiThreadedEventLoopGroup,
        template: Terminus_V1_DeliverRequest
    ) async throws -> Result {
        let loops = Array(group.makeIterator())
        let interval = TimeAmount.nanoseconds(Int64(1e9 * Double(loops.count) / Double(rate)))
        let recorders = loops.map { _ in Recorder() }
        let warmUp = Duration.seconds(1)
        let window = Duration.milliseconds(Int64(seconds * 1000))

        func run(_ send: @escaping @Sendable (Int) -> Void) async throws -> (cpu: Double, elapsed: Double) {
            let timers = zip(loops.indices, loops).map { index, loop in
                loop.scheduleRepeatedTask(initialDelay: interval, delay: interval) { _ in send(index) }
            }
            try await Task.sleep(for: warmUp)
            for recorder in recorders { recorder.record(true) }
            let cpuBefore = GRPCProbe.cpuSeconds()
            let start = ContinuousClock.now
            try await Task.sleep(for: window)
            let cpu = GRPCProbe.cpuSeconds() - cpuBefore
            let elapsed = ContinuousClock.now - start
            for recorder in recorders { recorder.record(false) }
            for timer in timers { timer.cancel() }
            try await Task.sleep(for: .milliseconds(200))
            return (cpu, Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18)
        }

        /// One stream of `Stream` per loop, a lone batch on each tick.
        func runStreams<Stream: ProbeDeliverStream>(_: Stream.Type) async throws -> (cpu: Double, elapsed: Double) {
            let streams = try await zip(loops, recorders).asyncMap { loop, recorder in
                try await Stream.open(host: host, port: port, on: loop, recorder: recorder)
            }
            defer { for stream in streams { stream.close() } }
            return try await run { index in
                let id = recorders[index].nextBatch()
                streams[index].send(Self.request(id: id, template: template))
            }
        }

        let cpu: Double
        let elapsed: Double
        switch mode {
        case .pacer:
            (cpu, elapsed) = try await run { _ in }
        case .grpc:
            (cpu, elapsed) = try await Self.grpc(host: host, port: port, loops: loops, recorders: recorders) {
                inputs in
                try await run { index in
                    let id = recorders[index].nextBatch()
                    inputs[index].yield(Self.request(id: id, template: template))
                }
            }
        case .h2:
            (cpu, elapsed) = try await runStreams(RawDeliverStream.self)
        case .h2conn:
            (cpu, elapsed) = try await runStreams(ConnectionDeliverStream.self)
        }
        // Answers that arrived within the window; the pacer alone sends nothing, so its CPU is
        // per timer tick (rate × elapsed).
        let roundTrips = recorders.flatMap(\.roundTrips).sorted()
        let answered = roundTrips.count
        func micros(_ quantile: Double) -> Double {
            guard !roundTrips.isEmpty else { return 0 }
            let value = roundTrips[min(roundTrips.count - 1, Int(Double(roundTrips.count) * quantile))]
            return Double(value.components.attoseconds) / 1e12 + Double(value.components.seconds) * 1e6
        }
        let messages = mode == .pacer ? Double(rate) * elapsed : Double(answered)
        return Result(
            mode: mode,
            answered: answered,
            cpuMicrosPerMessage: messages > 0 ? cpu * 1e6 / messages : 0,
            p50Micros: micros(0.5),
            p99Micros: micros(0.99)
        )
    }

    /// One grpc-swift-2 client per loop, its connection on that loop, its bidirectional stream
    /// written and read by tasks that prefer that loop (`LoopExecutor`), as the gateway's
    /// delivery runs. `body` gets the per-loop inputs to yield requests into.
    static func grpc<T: Sendable>(
        host: String,
        port: Int,
        loops: [any EventLoop],
        recorders: [Recorder],
        _ body: ([AsyncStream<Terminus_V1_DeliverRequest>.Continuation]) async throws -> T
    ) async throws -> T {
        let streams = loops.map { _ in AsyncStream.makeStream(of: Terminus_V1_DeliverRequest.self) }
        return try await withThrowingTaskGroup(of: Void.self) { group in
            for (index, loop) in loops.enumerated() {
                let transport = try HTTP2ClientTransport.Posix(
                    target: .ipv4(address: host, port: port),
                    transportSecurity: .plaintext,
                    config: .defaults { $0.connection.flushCoalescing = nil },
                    eventLoopGroup: loop
                )
                let requests = streams[index].stream
                let recorder = recorders[index]
                group.addTask {
                    try await withTaskExecutorPreference(LoopExecutor(loop)) {
                        try await withGRPCClient(transport: transport) { client in
                            try await Terminus_V1_UplinkReceiver.Client(wrapping: client).deliver { writer in
                                for await request in requests { try await writer.write(request) }
                            } onResponse: { response in
                                for try await message in response.messages { recorder.answered(message.batchID) }
                            }
                        }
                    }
                }
            }
            let result = try await body(streams.map(\.continuation))
            for stream in streams { stream.continuation.finish() }
            try await group.waitForAll()
            return result
        }
    }
}

/// A `Deliver` stream the probe writes lone batches to from its loop's timer (`h2`, `h2conn`).
protocol ProbeDeliverStream: Sendable {
    static func open(
        host: String,
        port: Int,
        on loop: any EventLoop,
        recorder: LoneMessages.Recorder
    ) async throws
        -> Self
    func send(_ request: Terminus_V1_DeliverRequest)
    func close()
}

/// A `Deliver` stream written and read on its connection's event loop: HTTP/2 frames with
/// gRPC's length prefix, no task anywhere, what a hand-written delivery layer would do.
final class RawDeliverStream: ProbeDeliverStream {
    private let stream: any Channel
    private let connection: any Channel

    private init(stream: any Channel, connection: any Channel) {
        self.stream = stream
        self.connection = connection
    }

    static func open(
        host: String,
        port: Int,
        on loop: any EventLoop,
        recorder: LoneMessages.Recorder
    ) async throws
        -> RawDeliverStream
    {
        let (connection, multiplexer) = try await ClientBootstrap(group: loop)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .connect(host: host, port: port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    let multiplexer = try channel.pipeline.syncOperations.configureHTTP2Pipeline(
                        mode: .client,
                        connectionConfiguration: .init(),
                        streamConfiguration: .init()
                    ) { $0.eventLoop.makeSucceededVoidFuture() }
                    return (channel, multiplexer)
                }
            }
        let stream = try await loop.flatSubmit {
            multiplexer.createStreamChannel { stream in
                stream.eventLoop.makeCompletedFuture {
                    try stream.pipeline.syncOperations.addHandler(
                        DeliverStreamHandler(authority: "\(host):\(port)", recorder: recorder)
                    )
                }
            }
        }.get()
        return RawDeliverStream(stream: stream, connection: connection)
    }

    /// Writes one request (call on the loop).
    func send(_ request: Terminus_V1_DeliverRequest) {
        guard let buffer = LoneMessages.grpcMessage(request, allocator: self.stream.allocator) else { return }
        self.stream.writeAndFlush(HTTP2Frame.FramePayload.data(.init(data: .byteBuffer(buffer))), promise: nil)
    }

    func close() {
        self.connection.close(promise: nil)
    }
}

/// Sends the request headers when the stream becomes active, then reads gRPC messages
/// (`DeliverResponse`) from DATA frames.
final class DeliverStreamHandler: ChannelDuplexHandler {
    typealias InboundIn = HTTP2Frame.FramePayload
    typealias OutboundIn = HTTP2Frame.FramePayload
    typealias OutboundOut = HTTP2Frame.FramePayload

    private let authority: String
    private let recorder: LoneMessages.Recorder
    private var received = ByteBuffer()

    init(authority: String, recorder: LoneMessages.Recorder) {
        self.authority = authority
        self.recorder = recorder
    }

    func channelActive(context: ChannelHandlerContext) {
        let headers: HPACKHeaders = [
            ":method": "POST", ":scheme": "http", ":path": "/terminus.v1.UplinkReceiver/Deliver",
            ":authority": self.authority, "content-type": "application/grpc", "te": "trailers",
        ]
        context.writeAndFlush(self.wrapOutboundOut(.headers(.init(headers: headers))), promise: nil)
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard case .data(let payload) = self.unwrapInboundIn(data), case .byteBuffer(var bytes) = payload.data else {
            return
        }
        self.received.writeBuffer(&bytes)
        LoneMessages.readAnswers(from: &self.received, into: self.recorder)
    }
}

extension Sequence {
    func asyncMap<T>(_ transform: (Element) async throws -> T) async rethrows -> [T] {
        var result: [T] = []
        for element in self { result.append(try await transform(element)) }
        return result
    }
}

/// `h2conn`: the `Deliver` stream as `HTTP2Frame`s on the connection's own pipeline, behind
/// `NIOHTTP2Handler` without a multiplexer: what a delivery layer would save by not going
/// through an `HTTP2StreamChannel` per stream. Without a multiplexer nobody sends WINDOW_UPDATE
/// for the answers, so the probe opens both inbound windows wide at the start (a real layer
/// would update them as it reads).
final class ConnectionDeliverStream: ProbeDeliverStream {
    static let streamID = HTTP2StreamID(1)
    private let connection: any Channel

    private init(connection: any Channel) {
        self.connection = connection
    }

    static func open(
        host: String,
        port: Int,
        on loop: any EventLoop,
        recorder: LoneMessages.Recorder
    ) async throws -> ConnectionDeliverStream {
        let wide = Int(Int32.max)
        let connection = try await ClientBootstrap(group: loop)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(
                        NIOHTTP2Handler(
                            mode: .client,
                            initialSettings: [
                                HTTP2Setting(parameter: .maxConcurrentStreams, value: 100),
                                HTTP2Setting(parameter: .initialWindowSize, value: wide),
                            ]
                        )
                    )
                    try channel.pipeline.syncOperations.addHandler(ConnectionDeliverHandler(recorder: recorder))
                }
            }
            .connect(host: host, port: port).get()
        try await loop.submit {
            let headers: HPACKHeaders = [
                ":method": "POST", ":scheme": "http", ":path": "/terminus.v1.UplinkReceiver/Deliver",
                ":authority": "\(host):\(port)", "content-type": "application/grpc", "te": "trailers",
            ]
            connection.write(
                HTTP2Frame(streamID: Self.streamID, payload: .headers(.init(headers: headers))),
                promise: nil
            )
            connection.writeAndFlush(
                HTTP2Frame(streamID: .rootStream, payload: .windowUpdate(windowSizeIncrement: wide - 65_535)),
                promise: nil
            )
        }.get()
        return ConnectionDeliverStream(connection: connection)
    }

    /// Writes one request (call on the loop).
    func send(_ request: Terminus_V1_DeliverRequest) {
        guard let buffer = LoneMessages.grpcMessage(request, allocator: self.connection.allocator) else { return }
        self.connection.writeAndFlush(
            HTTP2Frame(streamID: Self.streamID, payload: .data(.init(data: .byteBuffer(buffer)))),
            promise: nil
        )
    }

    func close() {
        self.connection.close(promise: nil)
    }
}

/// Reads the answers of stream 1 from the connection's frames.
final class ConnectionDeliverHandler: ChannelInboundHandler {
    typealias InboundIn = HTTP2Frame

    private let recorder: LoneMessages.Recorder
    private var received = ByteBuffer()

    init(recorder: LoneMessages.Recorder) {
        self.recorder = recorder
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = self.unwrapInboundIn(data)
        guard frame.streamID == ConnectionDeliverStream.streamID, case .data(let payload) = frame.payload,
            case .byteBuffer(var bytes) = payload.data
        else { return }
        self.received.writeBuffer(&bytes)
        LoneMessages.readAnswers(from: &self.received, into: self.recorder)
    }
}
