import Foundation
import NIOCore
import NIOPosix
import NIOSSL
import TerminusClient
import TerminusCompression
import TerminusEdge
import TerminusProtocol
import TerminusServer
import TerminusSessions
import Testing

/// End to end over real loopback sockets with TLS. Serialized: these tests measure timeouts,
/// and the machine has two cores.
@Suite("Device edge end to end", .serialized, .gatewayScope)
struct DeviceEdgeTests {
    @Test("publish plain, deflated and dictionary-deflated messages; acks come from the sink")
    func publishAndAck() async throws {
        let gateway = try await TestGateway.start()
        let connection = try await gateway.connect("spk-000001")
        #expect(connection.welcome.deviceID == "spk-000001")
        #expect(connection.welcome.gatewayID == "gw-test")
        #expect(connection.welcome.maxInflight == 32)
        let json = #"{"type":"payment","amount":1250,"currency":"CNY","merchant":"M-7","device":"spk-000001"}"#
        let plain = try await connection.publish(topic: "pay/done", payload: ByteBuffer(string: json))
        let deflated = try await connection.publish(
            topic: "pay/done",
            payload: ByteBuffer(string: json),
            compress: true
        )
        let withDictionary = try await connection.publish(
            topic: "pay/done",
            payload: ByteBuffer(string: json),
            compress: true,
            dictionaryID: 1
        )
        for ack in [plain, deflated, withDictionary] { #expect(ack.status == .ok) }
        #expect(Set([plain.messageID, deflated.messageID, withDictionary.messageID]).count == 3)
        let messages = gateway.sink.messages
        #expect(messages.count == 3)
        for message in messages {
            #expect(message.payload == ByteBuffer(string: json))
            #expect(message.deviceID == "spk-000001")
            #expect(message.topic == "pay/done")
            #expect(message.clientAddress.hasPrefix("127.0.0.1:"))
        }
        // QoS 0 reaches the sink without an ACK; PING gets PONG.
        _ = try await connection.publish(topic: "telemetry", payload: ByteBuffer(string: "t"), qos: .atMostOnce)
        _ = try await connection.ping()
        #expect(gateway.sink.messages.contains { $0.topic == "telemetry" && $0.qos == .atMostOnce })
        await connection.close()
    }

    @Test("topic aliases bind on first use and resolve afterwards")
    func topicAliases() async throws {
        let gateway = try await TestGateway.start()
        let connection = try await gateway.connect("alias-1")
        #expect(
            try await connection.publish(topic: "printer/status", payload: ByteBuffer(string: "a"), topicAlias: 3)
                .status == .ok
        )
        #expect(try await connection.publish(topic: "", payload: ByteBuffer(string: "b"), topicAlias: 3).status == .ok)
        #expect(gateway.sink.messages.map(\.topic) == ["printer/status", "printer/status"])
        // An unbound alias is a protocol error.
        let raw = try await RawClient.connect(port: gateway.port, tls: true)
        try await raw.handshake("alias-2")
        try await raw.send(
            .publish(Message(messageID: 1, qos: .atLeastOnce, topicAlias: 5, topic: "", payload: ByteBuffer()))
        )
        #expect(await raw.goAwayOnClose()?.code == .unknownTopicAlias)
    }

    /// A malformed input after (or instead of) a valid HELLO, and the code it must get.
    struct BadInput: Sendable, CustomTestStringConvertible {
        var name: String
        var helloFirst: Bool
        var bytes: [UInt8]
        var expected: TerminusCode
        var testDescription: String { self.name }
    }

    static func frameBytes(_ frame: Frame) -> [UInt8] {
        var buffer = ByteBuffer()
        buffer.writeFrame(frame)
        return Array(buffer.readableBytesView)
    }

    static let zipBomb: [UInt8] = {
        let deflater = try! Deflater(level: 9)
        let bomb = try! deflater.deflate(
            ByteBuffer(repeating: 0, count: 8 * 1024 * 1024),
            allocator: ByteBufferAllocator()
        )
        return Self.frameBytes(
            .publish(Message(messageID: 1, qos: .atLeastOnce, compressed: true, topic: "bomb", payload: bomb))
        )
    }()

    static let badInputs: [BadInput] = [
        BadInput(
            name: "truncated frame",
            helloFirst: true,
            bytes: [0, 0, 0, 6, 0x04, 0, 0, 0, 0, 1],
            expected: .malformedFrame
        ),
        BadInput(name: "oversize length", helloFirst: true, bytes: [0x01, 0x00, 0x00, 0x00], expected: .frameTooLarge),
        BadInput(
            name: "unknown frame type",
            helloFirst: true,
            bytes: [0, 0, 0, 2, 0x7F, 0],
            expected: .unknownFrameType
        ),
        BadInput(name: "bad flags", helloFirst: true, bytes: [0, 0, 0, 2, 0x06, 0x80], expected: .badFlags),
        BadInput(
            name: "unsupported version",
            helloFirst: false,
            bytes: [0, 0, 0, 3, 0x01, 0, 9],
            expected: .unsupportedVersion
        ),
        BadInput(
            name: "invalid UTF-8 topic",
            helloFirst: true,
            bytes: [0, 0, 0, 10, 0x03, 0x01, 0, 0, 0, 1, 0, 2, 0xC3, 0x28],
            expected: .invalidTopic
        ),
        BadInput(
            name: "reserved topic",
            helloFirst: true,
            bytes: Self.frameBytes(
                .publish(Message(messageID: 1, qos: .atLeastOnce, topic: "$terminus/x", payload: ByteBuffer()))
            ),
            expected: .invalidTopic
        ),
        BadInput(name: "zip bomb", helloFirst: true, bytes: Self.zipBomb, expected: .inflateLimitExceeded),
        BadInput(
            name: "corrupt deflate payload",
            helloFirst: true,
            bytes: Self.frameBytes(
                .publish(
                    Message(
                        messageID: 1,
                        qos: .atLeastOnce,
                        compressed: true,
                        topic: "x",
                        payload: ByteBuffer(bytes: [0xFF, 0xFE])
                    )
                )
            ),
            expected: .decompressionFailed
        ),
        BadInput(
            name: "unknown dictionary",
            helloFirst: true,
            bytes: Self.frameBytes(
                .publish(
                    Message(
                        messageID: 1,
                        qos: .atLeastOnce,
                        compressed: true,
                        dictionaryID: 9,
                        topic: "x",
                        payload: ByteBuffer(bytes: [3, 0])
                    )
                )
            ),
            expected: .unknownDictionary
        ),
        BadInput(
            name: "bad token",
            helloFirst: false,
            bytes: Self.frameBytes(TestGateway.hello("spk-9", secret: "not-the-right-secret-at-all")),
            expected: .authenticationFailed
        ),
        BadInput(
            name: "expired token",
            helloFirst: false,
            bytes: Self.frameBytes(TestGateway.hello("spk-9", expiresIn: -60)),
            expected: .tokenExpired
        ),
        BadInput(
            name: "PUBLISH before HELLO",
            helloFirst: false,
            bytes: Self.frameBytes(
                .publish(Message(messageID: 1, qos: .atLeastOnce, topic: "x", payload: ByteBuffer()))
            ),
            expected: .unexpectedFrame
        ),
        BadInput(
            name: "second HELLO",
            helloFirst: true,
            bytes: Self.frameBytes(TestGateway.hello("spk-9")),
            expected: .unexpectedFrame
        ),
    ]

    @Test("each bad input gets its code and a closed connection; other devices keep working", arguments: Self.badInputs)
    func badInput(_ input: BadInput) async throws {
        let gateway = try await TestGateway.start()
        let bystander = try await gateway.connect("bystander")
        let raw = try await RawClient.connect(port: gateway.port, tls: true)
        if input.helloFirst {
            try await raw.handshake("bad-\(input.name.count)")
        }
        try await raw.send(input.bytes)
        let goAway = await raw.goAwayOnClose()
        #expect(raw.isClosed, "connection must close")
        #expect(goAway?.code == input.expected)
        #expect(try await bystander.publish(topic: "still/here", payload: ByteBuffer(string: "ok")).status == .ok)
        await bystander.close()
    }

    @Test("no HELLO within the timeout: GOAWAY(HELLO_TIMEOUT)")
    func helloTimeout() async throws {
        let gateway = try await TestGateway.start { $0.edge.helloTimeout = .seconds(1) }
        let raw = try await RawClient.connect(port: gateway.port, tls: true)
        let started = Date()
        let goAway = await raw.goAwayOnClose(within: 5)
        #expect(goAway?.code == .helloTimeout)
        #expect(Date().timeIntervalSince(started) >= 0.8)
    }

    @Test("a TCP connection that never starts TLS is cut at the handshake timeout")
    func handshakeTimeout() async throws {
        let gateway = try await TestGateway.start { $0.edge.handshakeTimeout = .seconds(2) }
        let raw = try await RawClient.connect(port: gateway.port, tls: false)
        #expect(await raw.waitUntil(5) { raw.isClosed })
        #expect(raw.frames.isEmpty)
    }

    @Test("plain bytes on the TLS port close the connection without a frame")
    func plainBytesOnTLSPort() async throws {
        let gateway = try await TestGateway.start()
        let raw = try await RawClient.connect(port: gateway.port, tls: false)
        try await raw.send(Self.frameBytes(TestGateway.hello("plain-1")))
        #expect(await raw.waitUntil(3) { raw.isClosed })
        #expect(raw.frames.isEmpty)
        let ok = try await gateway.connect("after-plain")
        #expect(try await ok.publish(topic: "a", payload: ByteBuffer(string: "b")).status == .ok)
    }

    @Test("a second connection with the same device id takes over; the first gets GOAWAY(REPLACED)")
    func takeover() async throws {
        let gateway = try await TestGateway.start()
        let first = try await gateway.connect("dup-1")
        let second = try await gateway.connect("dup-1")
        let reason = await first.closeReason()
        #expect(reason?.code == .replaced)
        #expect(reason?.reconnectAfterMilliseconds == WireProtocol.doNotReconnect)
        #expect(try await second.publish(topic: "x", payload: ByteBuffer(string: "y")).status == .ok)
        #expect(gateway.gateway.directory.lookup("dup-1") != nil)
        #expect(gateway.gateway.directory.count == 1)
        await second.close()
        let gone = await RawClient.poll(3) { gateway.gateway.directory.lookup("dup-1") == nil }
        #expect(gone)
    }

    @Test("keepalive: a silent device is closed after 1.5 × keepalive; a pinging one stays")
    func keepalive() async throws {
        let gateway = try await TestGateway.start()
        let silent = try await RawClient.connect(port: gateway.port, tls: true)
        let welcome = try await silent.handshake("silent-1", keepalive: 1)
        #expect(welcome.keepaliveSeconds == 1)
        let pinging = try await gateway.connect("pinging-1", keepalive: 1)
        let started = Date()
        #expect(await silent.goAwayOnClose(within: 5)?.code == .keepaliveTimeout)
        #expect(Date().timeIntervalSince(started) >= 1.2)
        try await Task.sleep(for: .seconds(1))
        #expect(pinging.isActive)
        #expect(try await pinging.publish(topic: "x", payload: ByteBuffer(string: "alive")).status == .ok)
        await pinging.close()
    }

    @Test("more QoS 1 messages than max_inflight: the client holds them back; a raw device gets INFLIGHT_EXCEEDED")
    func inflightLimit() async throws {
        let sink = InMemorySink()
        let gateway = try await TestGateway.start(sink: sink) { $0.edge.maxInflight = 4 }
        sink.startHolding()
        let connection = try await gateway.connect("window-1")
        #expect(connection.welcome.maxInflight == 4)
        let acks = Task {
            try await withThrowingTaskGroup(of: Ack.self) { group in
                for index in 0..<12 {
                    group.addTask {
                        try await connection.publish(topic: "w", payload: ByteBuffer(string: "\(index)"))
                    }
                }
                return try await group.reduce(into: [Ack]()) { $0.append($1) }
            }
        }
        #expect(await RawClient.poll(3) { sink.messages.count == 4 })
        try await Task.sleep(for: .milliseconds(300))
        #expect(sink.messages.count == 4, "only max_inflight messages may be outstanding")

        // A device that writes past the limit is simply not read from until ACKs free a slot.
        let patient = try await RawClient.connect(port: gateway.port, tls: true)
        try await patient.handshake("window-patient")
        func patientCount() -> Int { sink.messages.filter { $0.deviceID == "window-patient" }.count }
        for id in 1...4 {
            try await patient.send(
                .publish(Message(messageID: UInt32(id), qos: .atLeastOnce, topic: "p", payload: ByteBuffer()))
            )
        }
        #expect(await RawClient.poll(5) { patientCount() == 4 })
        // The gateway has stopped reading: a fifth message waits in the socket, unread. (Only one:
        // two would be a burst past the window once reading resumes, which is INFLIGHT_EXCEEDED.)
        try await patient.send(.publish(Message(messageID: 5, qos: .atLeastOnce, topic: "p", payload: ByteBuffer())))
        try await Task.sleep(for: .milliseconds(300))
        #expect(sink.messages.filter { $0.deviceID == "window-patient" }.count == 4)
        #expect(!patient.isClosed)

        // A device that pushes past the limit in one burst violates WELCOME: INFLIGHT_EXCEEDED.
        let raw = try await RawClient.connect(port: gateway.port, tls: true)
        try await raw.handshake("window-raw")
        var burst: [UInt8] = []
        for id in 1...5 {
            burst += Self.frameBytes(
                .publish(Message(messageID: UInt32(id), qos: .atLeastOnce, topic: "w", payload: ByteBuffer()))
            )
        }
        try await raw.send(burst)
        #expect(await raw.goAwayOnClose()?.code == .inflightExceeded)

        // Release repeatedly until every held batch is answered.
        let released = await RawClient.poll(10) {
            sink.release()
            sink.startHolding()
            let messages = sink.messages
            return messages.filter { $0.deviceID == "window-1" }.count == 12
                && messages.filter { $0.deviceID == "window-patient" }.count == 5
        }
        sink.release()
        let counts = sink.messages.reduce(into: [String: Int]()) { $0[$1.deviceID, default: 0] += 1 }
        #expect(released, "messages per device in the sink: \(counts), patient closed: \(patient.isClosed)")
        #expect(!patient.isClosed)
        let all = try await acks.value
        #expect(all.count == 12)
        #expect(all.allSatisfy { $0.status == .ok })
    }

    @Test("drain: every device gets GOAWAY(SHUTTING_DOWN) with a reconnect hint inside the window")
    func drain() async throws {
        let gateway = try await TestGateway.start()
        let devices = try await withThrowingTaskGroup(of: TerminusConnection.self) { group in
            for index in 0..<20 { group.addTask { try await gateway.connect("drain-\(index)") } }
            return try await group.reduce(into: [TerminusConnection]()) { $0.append($1) }
        }
        await gateway.stop()
        var hints: Set<UInt32> = []
        for device in devices {
            let reason = await device.closeReason()
            #expect(reason?.code == .shuttingDown)
            #expect((reason?.reconnectAfterMilliseconds ?? .max) <= 500)
            if let hint = reason?.reconnectAfterMilliseconds { hints.insert(hint) }
        }
        #expect(hints.count > 1, "reconnect hints must be spread, not identical")
    }

    @Test("connections above max_connections are refused with SERVER_BUSY (plain TCP listener)")
    func maxConnections() async throws {
        let gateway = try await TestGateway.start {
            $0.transport = .plaintext
            $0.tls = nil
            $0.edge.maxConnections = 2
        }
        let first = try await RawClient.connect(port: gateway.port, tls: false)
        let second = try await RawClient.connect(port: gateway.port, tls: false)
        try await first.handshake("cap-1")
        try await second.handshake("cap-2")
        let third = try await RawClient.connect(port: gateway.port, tls: false)
        #expect(await third.goAwayOnClose()?.code == .serverBusy)
        await first.close()
        #expect(await RawClient.poll(3) { gateway.gateway.openConnections == 1 })
        let fourth = try await RawClient.connect(port: gateway.port, tls: false)
        try await fourth.handshake("cap-4")
    }
}

@Suite("Admin listener", .serialized, .gatewayScope)
struct AdminListenerTests {
    func get(_ path: String, port: Int) async throws -> String {
        let raw = try await RawClient.connect(port: port, tls: false)
        try await raw.send(Array("GET \(path) HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n".utf8))
        _ = await raw.waitUntil(5) { raw.isClosed }
        return raw.receivedText
    }

    @Test("healthz answers 200; readyz turns 503 when draining starts")
    func probes() async throws {
        let gateway = try await TestGateway.start {
            $0.adminListen = .init(host: "127.0.0.1", port: 0)
            $0.edge.helloTimeout = .seconds(3)
            $0.drainGrace = .seconds(5)
        }
        let port = try #require(gateway.gateway.boundAdminAddress?.port)
        #expect(try await self.get("/healthz", port: port).hasPrefix("HTTP/1.1 200"))
        #expect(try await self.get("/readyz", port: port).hasPrefix("HTTP/1.1 200"))
        #expect(try await self.get("/nope", port: port).hasPrefix("HTTP/1.1 404"))
        // A connection that never sends HELLO keeps the drain waiting (until its HELLO timeout),
        // long enough to watch readiness turn false while the admin listener still answers.
        let lingering = try await RawClient.connect(port: gateway.port, tls: true)
        // Accepted (not just queued in the listen backlog, which closing the listener discards).
        #expect(await RawClient.poll(3) { gateway.gateway.openConnections == 1 })
        let stopping = Task { await gateway.stop() }
        var sawDraining = false
        for _ in 0..<100 where !sawDraining {
            sawDraining = (try? await self.get("/readyz", port: port))?.hasPrefix("HTTP/1.1 503") ?? false
            if !sawDraining { try await Task.sleep(for: .milliseconds(20)) }
        }
        #expect(sawDraining)
        await stopping.value
        await lingering.close()
    }
}

extension RawClient {
    static func poll(_ seconds: Double, _ condition: () -> Bool) async -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if condition() { return true }
            try? await Task.sleep(for: .milliseconds(20))
        }
        return condition()
    }
}
