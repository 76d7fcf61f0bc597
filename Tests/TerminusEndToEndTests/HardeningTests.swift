import Foundation
import NIOCore
import TerminusClient
import TerminusEdge
import TerminusListeners
import TerminusProtocol
import TerminusServer
import TerminusSessions
import TerminusTestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// What one authenticated device can cost the gateway (issue: "no single device can exhaust a
/// gateway"). Each test failed before its bound existed.
@Suite("Hardening: bounded cost per device", .serialized, .gatewayScope)
struct HardeningTests {
    /// A plaintext device socket that the test writes to without ever reading, with a small
    /// receive buffer so that the gateway's output backs up quickly.
    final class NonReadingSocket {
        let fd: Int32

        init(port: Int) throws {
            guard let fd = LoopbackSocket.connect(port: port, receiveBuffer: 4096) else {
                throw POSIXError(.ECONNREFUSED)
            }
            self.fd = fd
            _ = fcntl(self.fd, F_SETFL, fcntl(self.fd, F_GETFL) | O_NONBLOCK)
        }

        deinit { close(self.fd) }

        enum Result: Equatable {
            case wrote(Int)
            case wouldBlock
            case closed
        }

        func write(_ bytes: [UInt8]) -> Result {
            let n = bytes.withUnsafeBytes { send(self.fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n >= 0 { return .wrote(n) }
            return errno == EAGAIN || errno == EWOULDBLOCK ? .wouldBlock : .closed
        }
    }

    static func bytes(_ frame: Frame) -> [UInt8] {
        var buffer = ByteBuffer()
        buffer.writeFrame(frame)
        return Array(buffer.readableBytesView)
    }

    @Test("a device that never reads: reading from it stops, and it is closed (SLOW_CONSUMER) after the write stall")
    func neverReads() async throws {
        let gateway = try await TestGateway.start {
            $0.transport = .plaintext
            $0.tls = nil
            $0.edge.outboundBufferBytes = 4096
            $0.edge.writeStallTimeout = .seconds(1)
            $0.edge.rateLimits = .unlimited
        }
        let device = try NonReadingSocket(port: gateway.port)
        guard case .wrote = device.write(Self.bytes(TestGateway.hello("never-reads"))) else {
            Issue.record("HELLO not sent")
            return
        }
        // PINGs as fast as the socket takes them, for at most 15 s: each asks for a PONG that the
        // device never reads. Before the bound, the gateway read every PING and queued every PONG
        // (7.8 GB in 20 s); now it stops reading once 4 KiB wait, then closes the connection.
        var ping: [UInt8] = []
        for _ in 0..<512 { ping += Self.bytes(.ping(ByteBuffer(bytes: [1, 2, 3, 4, 5, 6, 7, 8]))) }
        var written = 0
        var closed = false
        var pending = ArraySlice(ping)
        let deadline = Date().addingTimeInterval(15)
        while Date() < deadline && !closed {
            switch device.write(Array(pending)) {
            case .wrote(let n):
                written += n
                pending = pending.dropFirst(n)
                if pending.isEmpty { pending = ArraySlice(ping) }
            case .wouldBlock:
                try await Task.sleep(for: .milliseconds(2))
            case .closed:
                closed = true
            }
        }
        #expect(closed, "the gateway must close a device whose output does not drain (\(written) bytes written)")
        #expect(written < 64 * 1024 * 1024, "the gateway stopped reading: \(written) bytes got in")
        #expect(gateway.gateway.outputStalls >= 1)
        #expect(await RawClient.poll(3) { gateway.gateway.openConnections == 0 })
    }

    @Test("a QoS 0 flood with a stalled backend: at most max_pending reach the sink, the rest wait or are dropped")
    func qos0Flood() async throws {
        let sink = InMemorySink()
        let gateway = try await TestGateway.start(sink: sink) {
            $0.edge.maxInflight = 4
            $0.edge.maxPending = 8
            $0.edge.rateLimits = .unlimited
        }
        sink.startHolding()
        let flood = try await RawClient.connect(port: gateway.port, tls: true)
        try await flood.handshake("qos0-flood")
        var burst: [UInt8] = []
        for index in 0..<2_000 {
            burst += Self.bytes(
                .publish(Message(messageID: 0, qos: .atMostOnce, topic: "f", payload: ByteBuffer(string: "\(index)")))
            )
        }
        for _ in 0..<5 { try await flood.send(burst) }
        try await Task.sleep(for: .milliseconds(500))
        // Before: all 10,000 were queued toward the stalled backend.
        #expect(sink.messages.count <= 8, "\(sink.messages.count) QoS 0 messages queued for a stalled backend")
        #expect(gateway.gateway.readPauses >= 1)
        // A well-behaved device on the same gateway is unaffected once the backend answers.
        sink.release()
        let good = try await gateway.connect("well-behaved")
        #expect(try await good.publish(topic: "g", payload: ByteBuffer(string: "ok")).status == .ok)
        await good.close()
        await flood.close()
    }

    @Test("rate limit: messages above the rate get ACK(RATE_LIMITED); a device that keeps going is closed")
    func rateLimited() async throws {
        let gateway = try await TestGateway.start {
            $0.edge.maxInflight = 64
            // 5 messages at once, then one a second; closed after 3 refusals in a row.
            $0.edge.rateLimits = UplinkRateLimits(
                messagesPerSecond: 1,
                messageBurst: 5,
                bytesPerSecond: 0,
                byteBurst: 0,
                refusalsBeforeClose: 3
            )
        }
        let device = try await RawClient.connect(port: gateway.port, tls: true)
        try await device.handshake("rate-1")
        var burst: [UInt8] = []
        for id in 1...10 {
            burst += Self.bytes(
                .publish(Message(messageID: UInt32(id), qos: .atLeastOnce, topic: "r", payload: ByteBuffer()))
            )
        }
        try await device.send(burst)
        let goAway = await device.goAwayOnClose()
        let statuses = device.frames.compactMap { frame -> TerminusCode? in
            if case .ack(let ack) = frame { return ack.status }
            return nil
        }
        // Burst of 5 accepted, then 3 refusals in a row close the connection.
        #expect(statuses.filter { $0 == .ok }.count == 5)
        #expect(statuses.filter { $0 == .rateLimited }.count == 2)
        #expect(goAway?.code == .rateLimited)
        #expect(goAway.map { $0.reconnectAfterMilliseconds > 0 } == true)
        #expect(gateway.gateway.rateLimitedMessages >= 2)
    }

    @Test("a frame that trickles in is closed with FRAME_TIMEOUT")
    func frameTimeout() async throws {
        let gateway = try await TestGateway.start { $0.edge.frameTimeout = .milliseconds(500) }
        let device = try await RawClient.connect(port: gateway.port, tls: true)
        try await device.handshake("trickle-1", keepalive: 600)
        try await device.send([0x00, 0x00, 0x01])  // three bytes of a length prefix, then nothing
        #expect(await device.goAwayOnClose(within: 5)?.code == .frameTimeout)
    }

    @Test("an unknown device and a known one with a wrong token are refused alike; repeated failures are throttled")
    func authenticationThrottle() async throws {
        let gateway = try await TestGateway.start {
            $0.edge.authThrottle.failures = 3
            $0.edge.authThrottle.window = .seconds(30)
        }
        var codes: [TerminusCode?] = []
        for attempt in 0..<4 {
            let device = try await RawClient.connect(port: gateway.port, tls: true)
            try await device.send(TestGateway.hello("throttled-\(attempt)", secret: "not-the-secret-0123456789"))
            codes.append(await device.goAwayOnClose()?.code)
        }
        #expect(Array(codes.prefix(3)) == [.authenticationFailed, .authenticationFailed, .authenticationFailed])
        #expect(codes.last == .authenticationThrottled)
        // A correct token from the same address is refused too until the window ends.
        let good = try await RawClient.connect(port: gateway.port, tls: true)
        try await good.send(TestGateway.hello("throttled-good"))
        #expect(await good.goAwayOnClose()?.code == .authenticationThrottled)
    }

    @Test("a token valid for longer than auth.max_token_lifetime is refused")
    func tokenLifetime() async throws {
        let gateway = try await TestGateway.start { $0.maxTokenLifetimeSeconds = 3_600 }
        let device = try await RawClient.connect(port: gateway.port, tls: true)
        try await device.send(TestGateway.hello("long-lived", expiresIn: 9_000_000_000))
        #expect(await device.goAwayOnClose()?.code == .tokenLifetimeExceeded)
        let ok = try await RawClient.connect(port: gateway.port, tls: true)
        try await ok.handshake("short-lived")
    }

    @Test(
        "at the connection cap, idle unauthenticated connections make room for real devices; authenticated ones never do"
    )
    func capacityUnderFlood() async throws {
        let gateway = try await TestGateway.start {
            $0.edge.maxConnections = 10
            $0.edge.unauthenticatedEvictionAge = .milliseconds(300)
            $0.edge.handshakeTimeout = .seconds(30)
        }
        // Ten connections that open TCP to the TLS port and send nothing.
        var flood: [RawClient] = []
        for _ in 0..<10 { flood.append(try await RawClient.connect(port: gateway.port, tls: false)) }
        #expect(await RawClient.poll(3) { gateway.gateway.openConnections == 10 })
        try await Task.sleep(for: .milliseconds(500))
        // Before: every new device was refused while the flood held the slots.
        var devices: [TerminusConnection] = []
        for index in 0..<5 { devices.append(try await gateway.connect("real-\(index)")) }
        #expect(devices.count == 5)
        #expect(await RawClient.poll(3) { flood.filter(\.isClosed).count == 5 })
        // Fill the rest with real devices: now a new connection is refused, nobody is evicted.
        for index in 5..<10 { devices.append(try await gateway.connect("real-\(index)")) }
        let refused = try await RawClient.connect(port: gateway.port, tls: true)
        #expect(await refused.waitUntil(3) { refused.isClosed })
        let active = devices.filter { $0.isActive }.count
        #expect(active == 10)
        for device in devices { await device.close() }
        for connection in flood { await connection.close() }
    }

    @Test("API and admin listeners: connections above the cap are closed at accept, idle ones after the idle timeout")
    func internalListeners() async throws {
        func gateway(_ limits: ConnectionGuard.Limits) async throws -> (TestGateway, [Int]) {
            let gateway = try await TestGateway.start {
                $0.apiListen = .init(host: "127.0.0.1", port: 0)
                $0.apiTokens = ["hardening-api-token-0123456789"]
                $0.apiLimits = limits
                $0.adminListen = .init(host: "127.0.0.1", port: 0)
                $0.adminLimits = limits
            }
            return (
                gateway,
                [try #require(gateway.gateway.boundAPIPort), try #require(gateway.gateway.boundAdminAddress?.port)]
            )
        }
        // The cap (a long idle timeout, so that only the cap closes anything).
        let (capped, cappedPorts) = try await gateway(.init(maxConnections: 2, idleTimeout: .seconds(60)))
        for port in cappedPorts {
            // Three at once: one is over the cap. Which one depends on the order the listener's
            // event loops set the connections up, not on the order they connected.
            var clients: [RawClient] = []
            for _ in 0..<3 { clients.append(try await RawClient.connect(port: port, tls: false)) }
            #expect(
                await RawClient.poll(3) { clients.filter(\.isClosed).count == 1 },
                "port \(port): one connection is over the cap"
            )
            try await Task.sleep(for: .milliseconds(300))
            let open = clients.filter { !$0.isClosed }
            #expect(open.count == 2)
            // Room again once one leaves.
            await open.first?.close()
            try await Task.sleep(for: .milliseconds(300))
            let fourth = try await RawClient.connect(port: port, tls: false)
            try await Task.sleep(for: .milliseconds(300))
            #expect(!fourth.isClosed, "port \(port): a slot freed by a closed connection is reused")
            for client in clients { await client.close() }
            await fourth.close()
        }
        await capped.stop()
        // The idle timeout: connections that never send a byte are closed.
        let (_, idlePorts) = try await gateway(.init(maxConnections: 100, idleTimeout: .milliseconds(500)))
        for port in idlePorts {
            let silent = try await RawClient.connect(port: port, tls: false)
            #expect(await silent.waitUntil(5) { silent.isClosed }, "port \(port): an idle connection stays open")
        }
    }

    @Test("a TCP reset and a close without TLS close_notify are reported with their own codes")
    func transportCloseCodes() async throws {
        let sink = InMemorySink()
        let gateway = try await TestGateway.start(sink: sink) { $0.edge.publishEvents = true }
        func disconnectCode(_ device: String) async -> String? {
            guard
                await RawClient.poll(
                    5,
                    { sink.messages.contains { $0.topic == "$terminus/events/disconnected" && $0.deviceID == device } }
                )
            else {
                return nil
            }
            let event = sink.messages.last { $0.topic == "$terminus/events/disconnected" && $0.deviceID == device }!
            let json = try? JSONSerialization.jsonObject(with: Data(event.payload.readableBytesView)) as? [String: Any]
            return json?["code"] as? String
        }
        // Reset: a plaintext listener's device closes with SO_LINGER 0 (RST, no FIN).
        let plain = try await TestGateway.start(sink: sink) {
            $0.edge.publishEvents = true
            $0.transport = .plaintext
            $0.tls = nil
        }
        do {
            let device = try NonReadingSocket(port: plain.port)
            #expect(device.write(Self.bytes(TestGateway.hello("reset-1"))) != .closed)
            #expect(await RawClient.poll(3) { plain.gateway.directory.lookup("reset-1") != nil })
            var hard = linger(l_onoff: 1, l_linger: 0)
            setsockopt(device.fd, SOL_SOCKET, SO_LINGER, &hard, socklen_t(MemoryLayout<linger>.size))
        }  // closed here
        #expect(await disconnectCode("reset-1") == "CONNECTION_RESET")
        // TCP FIN without close_notify.
        let unclean = try await RawClient.connect(port: gateway.port, tls: true)
        try await unclean.handshake("unclean-1")
        try await unclean.channel.pipeline.removeHandler(name: RawClient.tlsHandlerName)
        await unclean.close()
        #expect(await disconnectCode("unclean-1") == "UNCLEAN_SHUTDOWN")
        // An orderly GOAWAY(OK) close.
        let orderly = try await RawClient.connect(port: gateway.port, tls: true)
        try await orderly.handshake("orderly-1")
        try await orderly.send(.goAway(GoAway(code: .ok)))
        #expect(await disconnectCode("orderly-1") == "OK")
    }

    @Test("PUBLISH topics with control characters are INVALID_TOPIC")
    func controlCharacters() async throws {
        let gateway = try await TestGateway.start()
        for topic in ["a\nb", "log\r\nINFO forged", "x\u{1B}[31m", "c1\u{85}"] {
            let device = try await RawClient.connect(port: gateway.port, tls: true)
            try await device.handshake("ctl-1")
            try await device.send(
                .publish(Message(messageID: 1, qos: .atLeastOnce, topic: topic, payload: ByteBuffer()))
            )
            #expect(await device.goAwayOnClose()?.code == .invalidTopic, "topic \(topic.debugDescription)")
        }
        #expect(gateway.sink.messages.isEmpty)
    }
}
