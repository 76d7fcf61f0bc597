import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOEmbedded
import TerminusAuth
import TerminusCompression
import TerminusMetrics
import TerminusProtocol
import TerminusSessions
import Testing

@testable import TerminusEdge

/// Counts the reads the session handler lets through to the channel (it sits before it).
final class ReadCounter: ChannelOutboundHandler {
    typealias OutboundIn = ByteBuffer
    var reads = 0

    func read(context: ChannelHandlerContext) {
        self.reads += 1
        context.read()
    }
}

/// One listener's shared state on an `EmbeddedEventLoop`: every timeout runs on virtual time
/// (`advance(by:)`), every batch reaches the sink on `run()`.
final class EmbeddedEdge {
    static let secret = Array("embedded-secret-0123456789".utf8)
    let loop = EmbeddedEventLoop()
    let sink: InMemorySink
    let directory = LocalSessionDirectory()
    let shared: EdgeShared
    let context: EdgeLoopContext
    private var sessions: [EmbeddedSession] = []

    init(sink: InMemorySink = InMemorySink(), configure: (inout EdgeSettings) -> Void = { _ in }) throws {
        var settings = EdgeSettings()
        settings.publishEvents = false
        settings.rateLimits = .unlimited
        configure(&settings)
        self.sink = sink
        let contexts = try EdgeLoopContexts(group: self.loop, settings: settings, dictionaries: .init(), sink: sink)
        self.shared = EdgeShared(
            settings: settings,
            authenticator: DeviceAuthenticator(secrets: SecretStore(prefixes: ["": Self.secret]), now: { 1_000 }),
            directory: self.directory,
            logger: Logger(label: "embedded-edge"),
            contexts: contexts,
            usesTLS: false,
            readsClientCertificates: false
        )
        self.context = contexts.context(for: self.loop)
        self.context.wheel.start(on: self.loop)
    }

    func connect() throws -> EmbeddedSession {
        let handler = DeviceSessionHandler(shared: self.shared, loop: self.context, now: self.loop.now)
        let reads = ReadCounter()
        let channel = EmbeddedChannel(handlers: [reads, handler], loop: self.loop)
        try channel.connect(to: .init(ipAddress: "10.1.2.3", port: 40000)).wait()
        let session = EmbeddedSession(edge: self, channel: channel, handler: handler, reads: reads)
        self.sessions.append(session)
        return session
    }

    /// Closes every connection, stops the timer wheel and the loop: sessions, the loop's
    /// context and the listener's shared state refer to each other until then (as in
    /// `EdgeServer.shutdown`), and LeakSanitizer in CI would report them.
    func shutdown() {
        self.sink.release()
        self.loop.run()
        for session in self.sessions where session.channel.isActive {
            _ = try? session.channel.finish()
        }
        self.loop.run()
        self.context.shutdown()
        self.sessions.removeAll()
        try? self.loop.syncShutdownGracefully()
    }

    /// Moves virtual time on; the timer wheel fires on the way.
    func advance(by amount: TimeAmount) {
        self.loop.advanceTime(by: amount)
        self.loop.run()
    }

    static func hello(_ deviceID: String, keepalive: UInt16 = 0, token: String? = nil) -> Frame {
        let token = token ?? DeviceToken.make(deviceID: deviceID, secret: Self.secret, expiresAt: 2_000)
        return .hello(
            Hello(
                keepaliveSeconds: keepalive,
                capabilities: [],
                deviceID: deviceID,
                authMethod: .token,
                credential: ByteBuffer(string: token)
            )
        )
    }

    static func publish(_ id: UInt32, qos: QoS = .atLeastOnce, topic: String = "pay/done") -> Frame {
        .publish(Message(messageID: id, qos: qos, topic: topic, payload: ByteBuffer(string: "m\(id)")))
    }
}

/// One device connection on the embedded edge.
final class EmbeddedSession {
    let edge: EmbeddedEdge
    let channel: EmbeddedChannel
    let handler: DeviceSessionHandler
    let reads: ReadCounter
    private var decoder = FrameDecoder(maxFrameLength: 1 << 20)

    init(edge: EmbeddedEdge, channel: EmbeddedChannel, handler: DeviceSessionHandler, reads: ReadCounter) {
        self.edge = edge
        self.channel = channel
        self.handler = handler
        self.reads = reads
    }

    static func bytes(_ frames: [Frame]) -> ByteBuffer {
        var buffer = ByteBuffer()
        for frame in frames { buffer.writeFrame(frame) }
        return buffer
    }

    func send(_ frames: Frame...) throws {
        try self.channel.writeInbound(Self.bytes(frames))
        self.edge.loop.run()
    }

    func sendBytes(_ buffer: ByteBuffer) throws {
        try self.channel.writeInbound(buffer)
        self.edge.loop.run()
    }

    /// Every frame written to the device since the last call.
    func received() throws -> [Frame] {
        var frames: [Frame] = []
        while var buffer = try self.channel.readOutbound(as: ByteBuffer.self) {
            while let frame = try self.decoder.decode(buffer: &buffer) { frames.append(frame) }
        }
        return frames
    }

    /// Authenticates and returns the WELCOME.
    @discardableResult
    func establish(_ deviceID: String, keepalive: UInt16 = 0) throws -> Welcome {
        try self.send(EmbeddedEdge.hello(deviceID, keepalive: keepalive))
        guard case .welcome(let welcome) = try self.received().first else { throw HandshakeFailed() }
        return welcome
    }

    struct HandshakeFailed: Error {}

    /// The GOAWAY among `frames`, if any.
    static func goAway(in frames: [Frame]) -> GoAway? {
        for case .goAway(let goAway) in frames { return goAway }
        return nil
    }

    var isOpen: Bool { self.channel.isActive }
}

@Suite("Session handler on EmbeddedChannel", .serialized)
struct SessionHandlerTests {
    @Test("frames fed one byte at a time and many frames in one read decode the same")
    func byteByByteAndCoalesced() throws {
        let edge = try EmbeddedEdge()
        defer { edge.shutdown() }
        let session = try edge.connect()
        let hello = EmbeddedSession.bytes([EmbeddedEdge.hello("dev-bytes")])
        for index in hello.readableBytesView.indices {
            try session.sendBytes(ByteBuffer(bytes: hello.readableBytesView[index...index]))
        }
        guard case .welcome(let welcome) = try session.received().first else {
            Issue.record("no WELCOME after a HELLO fed byte by byte")
            return
        }
        #expect(welcome.deviceID == "dev-bytes")
        // Two PUBLISH and a PING in one read, then one PUBLISH split across three reads.
        let coalesced = EmbeddedSession.bytes([
            EmbeddedEdge.publish(1), EmbeddedEdge.publish(2), .ping(ByteBuffer(string: "p")),
        ])
        try session.sendBytes(coalesced)
        var split = EmbeddedSession.bytes([EmbeddedEdge.publish(3)])
        let splitBytes = split.readableBytes
        try session.sendBytes(split.readSlice(length: 3)!)
        try session.sendBytes(split.readSlice(length: 5)!)
        try session.sendBytes(split)
        let frames = try session.received()
        let acks = frames.compactMap { frame -> UInt32? in
            if case .ack(let ack) = frame, ack.status == .ok { return ack.messageID }
            return nil
        }
        #expect(acks == [1, 2, 3])
        #expect(frames.contains(.pong(ByteBuffer(string: "p"))))
        #expect(edge.sink.messages.map(\.messageID) == [1, 2, 3])
        #expect(session.isOpen)
        // The loop's counts: every read's bytes once, each frame once, each outcome once.
        var snapshot = MetricsSnapshot()
        edge.context.metrics.collect(into: &snapshot)
        let bytes = hello.readableBytes + coalesced.readableBytes + splitBytes
        #expect(snapshot.counters[SeriesKey("terminus_received_bytes_total")] == Double(bytes))
        #expect(snapshot.counters[SeriesKey("terminus_frames_received_total")] == 5)
        let ok = SeriesKey("terminus_uplink_messages_total", ["qos": "1", "outcome": "ok"])
        #expect(snapshot.counters[ok] == 3)
        let latency = snapshot.histograms[SeriesKey("terminus_publish_ack_duration_seconds")]
        #expect(latency?.counts.reduce(0, +) == 3)
    }

    @Test("a device's messages answered in one batch get their ACKs in one write (one TLS record), in order")
    func acksOfARunInOneWrite() throws {
        let sink = InMemorySink()
        // At its bound: a device has at most `max_inflight` QoS 1 messages to acknowledge in a
        // batch (one more closes the connection), so the gathered buffer holds at most that many.
        let edge = try EmbeddedEdge(sink: sink) { $0.maxInflight = 3 }
        defer { edge.shutdown() }
        let first = try edge.connect()
        try first.establish("dev-run-1")
        let second = try edge.connect()
        try second.establish("dev-run-2")
        sink.startHolding()
        try first.send(EmbeddedEdge.publish(1), EmbeddedEdge.publish(2), EmbeddedEdge.publish(3))
        try second.send(EmbeddedEdge.publish(7))
        sink.release()
        edge.loop.run()
        for (session, ids) in [(first, [UInt32(1), 2, 3]), (second, [7])] {
            var writes: [ByteBuffer] = []
            while let buffer = try session.channel.readOutbound(as: ByteBuffer.self) { writes.append(buffer) }
            #expect(writes.count == 1, "one write for the run, not one per ACK")
            #expect(writes.first?.readableBytes == ids.count * 14, "14 bytes an ACK, nothing else")
            var decoder = FrameDecoder(maxFrameLength: 1 << 20)
            var frames: [Frame] = []
            for var buffer in writes {
                while let frame = try decoder.decode(buffer: &buffer) { frames.append(frame) }
            }
            let acks = frames.compactMap { frame -> Ack? in
                if case .ack(let ack) = frame { return ack }
                return nil
            }
            #expect(acks.map(\.messageID) == ids)
            #expect(acks.allSatisfy { $0.status == .ok })
        }
    }

    @Test("a topic the loop validated is trusted for the same topic at the same limit only")
    func validTopicCache() throws {
        let sink = InMemorySink()
        let edge = try EmbeddedEdge(sink: sink) { $0.maxTopicLength = 8 }
        defer { edge.shutdown() }
        /// A new device on the edge's one loop publishes one message to `topic`.
        func publish(_ id: UInt32, _ topic: String) throws -> EmbeddedSession {
            let session = try edge.connect()
            try session.establish("dev-topic-\(id)")
            try session.send(EmbeddedEdge.publish(id, topic: topic))
            edge.loop.run()
            return session
        }
        func refused(_ session: EmbeddedSession) throws -> Bool {
            EmbeddedSession.goAway(in: try session.received())?.code == .invalidTopic
        }
        _ = try publish(1, "pay/done")
        #expect(edge.context.validTopic.topic == "pay/done" && edge.context.validTopic.maxLength == 8)
        // Another device on the loop, the same topic: delivered; then topics the cache must
        // not let through: a wildcard of the same length, and one over the limit.
        _ = try publish(2, "pay/done")
        #expect(sink.messages.filter { $0.topic == "pay/done" }.count == 2)
        #expect(try refused(publish(3, "pay/don#")))
        #expect(try refused(publish(4, "pay/done/")))
        // Checked at another limit (as if by another configuration): checked again here.
        edge.context.validTopic = ValidTopic(topic: "pay/done/long", maxLength: 64)
        #expect(try refused(publish(5, "pay/done/long")))
        #expect(!sink.messages.contains { $0.topic != "pay/done" && !$0.topic.hasPrefix("$") })
    }

    @Test("reads pause at max_inflight and resume when outcomes arrive")
    func readPauseAndResume() throws {
        let sink = InMemorySink()
        let edge = try EmbeddedEdge(sink: sink) { $0.maxInflight = 2 }
        defer { edge.shutdown() }
        let session = try edge.connect()
        try session.establish("dev-window")
        sink.startHolding()
        try session.send(EmbeddedEdge.publish(1), EmbeddedEdge.publish(2))
        #expect(session.handler.machine.readsPaused)
        let before = session.reads.reads
        session.channel.read()
        #expect(session.reads.reads == before, "a read while paused is held back")
        #expect(try session.received().isEmpty, "no ACK before the backends answer")
        sink.release()
        edge.loop.run()
        #expect(try session.received().count == 2)
        #expect(session.reads.reads == before + 1, "the held read goes out once outcomes free the window")
        #expect(!session.handler.machine.readsPaused)
    }

    @Test("a QoS 1 push completes with the device's ACK, or times out on the loop's clock")
    func pushAckAndTimeout() throws {
        let edge = try EmbeddedEdge()
        defer { edge.shutdown() }
        let session = try edge.connect()
        try session.establish("dev-push")
        let acknowledged = session.handler.push(
            topic: "cmd/play",
            payload: ByteBuffer(string: "hi"),
            qos: .atLeastOnce,
            timeout: .seconds(2)
        )
        guard case .push(let push) = try session.received().first else {
            Issue.record("no PUSH written")
            return
        }
        try session.send(.ack(Ack(messageID: push.messageID, status: .ok)))
        #expect(try acknowledged.wait() == .delivered)

        let ignored = session.handler.push(
            topic: "cmd/play",
            payload: ByteBuffer(string: "again"),
            qos: .atLeastOnce,
            timeout: .seconds(2)
        )
        #expect(try session.received().count == 1)
        let outcome = NIOLockedValueBox<PushOutcome?>(nil)
        ignored.whenSuccess { value in outcome.withLockedValue { $0 = value } }
        edge.advance(by: .milliseconds(1_999))
        #expect(outcome.withLockedValue { $0 } == nil)
        edge.advance(by: .milliseconds(1))
        #expect(outcome.withLockedValue { $0 } == .timeout)
        // A refused push: the device's ACK carries its status.
        let refused = session.handler.push(
            topic: "cmd/x",
            payload: ByteBuffer(),
            qos: .atLeastOnce,
            timeout: .seconds(2)
        )
        guard case .push(let third) = try session.received().first else { return }
        try session.send(.ack(Ack(messageID: third.messageID, status: .rejected)))
        #expect(try refused.wait() == .rejected(.rejected))
        // After the connection is gone, a push answers connectionClosed.
        try session.channel.close().wait()
        #expect(
            try session.handler.push(topic: "t", payload: ByteBuffer(), qos: .atMostOnce, timeout: .seconds(1)).wait()
                == .connectionClosed
        )
    }

    /// How each close path ends: the GOAWAY code (nil: closed without one).
    struct ClosePath: CustomTestStringConvertible, Sendable {
        let name: String
        let expected: TerminusCode?
        let run: @Sendable (EmbeddedEdge, EmbeddedSession) throws -> Void
        var testDescription: String { self.name }
    }

    static let closePaths: [ClosePath] = [
        ClosePath(name: "PUBLISH before HELLO", expected: .unexpectedFrame) { _, session in
            try session.send(EmbeddedEdge.publish(1))
        },
        ClosePath(name: "a second HELLO", expected: .unexpectedFrame) { _, session in
            try session.establish("dev-twice")
            try session.send(EmbeddedEdge.hello("dev-twice"))
        },
        ClosePath(name: "a bad token", expected: .authenticationFailed) { _, session in
            try session.send(EmbeddedEdge.hello("dev-bad", token: "1:AAAA"))
        },
        ClosePath(name: "an unknown frame type", expected: .unknownFrameType) { _, session in
            try session.sendBytes(ByteBuffer(bytes: [0, 0, 0, 2, 0x7F, 0]))
        },
        ClosePath(name: "one message past max_inflight", expected: .inflightExceeded) { edge, session in
            try session.establish("dev-over")
            edge.sink.startHolding()
            try session.send(EmbeddedEdge.publish(1), EmbeddedEdge.publish(2), EmbeddedEdge.publish(3))
        },
        ClosePath(name: "an invalid topic", expected: .invalidTopic) { _, session in
            try session.establish("dev-topic")
            try session.send(EmbeddedEdge.publish(1, topic: "a/#"))
        },
        ClosePath(name: "no HELLO in time", expected: .helloTimeout) { edge, _ in
            edge.advance(by: .seconds(11))
        },
        ClosePath(name: "keepalive expiry (1.5 × 30 s)", expected: .keepaliveTimeout) { edge, session in
            try session.establish("dev-idle", keepalive: 30)
            edge.advance(by: .seconds(44))
            #expect(session.isOpen, "still within 1.5 × keepalive")
            edge.advance(by: .seconds(2))
        },
        ClosePath(name: "a frame that never completes", expected: .frameTimeout) { edge, session in
            try session.establish("dev-trickle", keepalive: 540)
            try session.sendBytes(ByteBuffer(bytes: [0, 0, 0, 40, 0x03]))
            edge.advance(by: .seconds(32))
        },
        ClosePath(name: "kicked by a backend", expected: .kicked) { edge, session in
            try session.establish("dev-kick")
            edge.directory.lookup("dev-kick")?.control.goAway(.kicked, reconnectAfterMilliseconds: 0, message: "bye")
            edge.loop.run()
        },
        ClosePath(name: "HELLO while draining", expected: .shuttingDown) { edge, session in
            edge.context.draining = true
            try session.send(EmbeddedEdge.hello("dev-drain"))
        },
        ClosePath(name: "evicted at the connection cap", expected: .serverBusy) { _, session in
            session.handler.evict()
        },
        ClosePath(name: "the device's own GOAWAY", expected: nil) { _, session in
            try session.establish("dev-bye")
            try session.send(.goAway(GoAway(code: .ok)))
        },
    ]

    @Test("every close path ends the connection with its code", arguments: Self.closePaths)
    func closePath(_ path: ClosePath) throws {
        let edge = try EmbeddedEdge { $0.maxInflight = 2 }
        defer { edge.shutdown() }
        let session = try edge.connect()
        try path.run(edge, session)
        edge.loop.run()
        let goAway = EmbeddedSession.goAway(in: try session.received())
        #expect(goAway?.code == path.expected)
        #expect(!session.isOpen, "the connection must be closed")
        if path.expected == .serverBusy { #expect(goAway?.reconnectAfterMilliseconds == 5_000) }
        edge.sink.release()  // batches held by a path, answered before the loop goes
        edge.loop.run()
    }

    @Test("a second connection with the same device id replaces the first (REPLACED, do not reconnect)")
    func takeover() throws {
        let edge = try EmbeddedEdge()
        defer { edge.shutdown() }
        let first = try edge.connect()
        try first.establish("dev-twin")
        let second = try edge.connect()
        try second.establish("dev-twin")
        edge.loop.run()
        let goAway = EmbeddedSession.goAway(in: try first.received())
        #expect(goAway?.code == .replaced)
        #expect(goAway?.reconnectAfterMilliseconds == WireProtocol.doNotReconnect)
        #expect(!first.isOpen && second.isOpen)
        #expect(edge.directory.lookup("dev-twin")?.connectionID == second.handler.connectionID)
    }

    @Test("connected event first, disconnected event after the connection's last outcome, with its code")
    func eventOrder() throws {
        let sink = InMemorySink()
        let edge = try EmbeddedEdge(sink: sink) { $0.publishEvents = true }
        defer { edge.shutdown() }
        let session = try edge.connect()
        try session.establish("dev-events")
        edge.loop.run()
        try session.send(EmbeddedEdge.publish(1, qos: .atMostOnce))
        sink.startHolding()
        try session.send(EmbeddedEdge.publish(2))
        try session.sendBytes(ByteBuffer(bytes: [0, 0, 0, 40, 0x03]))  // half a frame, then the device goes
        try session.channel.close().wait()
        edge.loop.run()
        #expect(!sink.messages.contains { $0.topic == DeviceEvents.disconnected }, "message 2 is still pending")
        sink.release()
        edge.loop.run()
        let topics = sink.messages.map(\.topic)
        #expect(topics == [DeviceEvents.connected, "pay/done", "pay/done", DeviceEvents.disconnected])
        let last = String(buffer: sink.messages.last!.payload)
        #expect(last.contains(#""code":"UNCLEAN_SHUTDOWN""#))
        #expect(sink.messages.map(\.sequence) == [1, 2, 3, 4])
    }
}
