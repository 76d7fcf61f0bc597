import NIOCore
import TerminusEdge
import TerminusProtocol
import Testing

@Suite("Device session state machine")
struct DeviceSessionStateMachineTests {
    let start = NIODeadline.uptimeNanoseconds(1_000_000_000)

    func machine(
        tls: Bool = true,
        maxInflight: Int = 2,
        maxPending: Int? = nil,
        rate: UplinkRateLimits = .unlimited
    ) -> DeviceSessionStateMachine {
        DeviceSessionStateMachine(
            usesTLS: tls,
            now: self.start,
            timeouts: .init(
                handshake: .seconds(5),
                hello: .seconds(3),
                closeGrace: .seconds(2),
                frame: .seconds(7),
                writeStall: .seconds(4)
            ),
            maxInflight: maxInflight,
            maxPending: maxPending,
            rateLimits: rate
        )
    }

    /// A QoS 1 PUBLISH of `bytes` at `start + seconds`, without rate limits.
    func publish(
        _ m: inout DeviceSessionStateMachine,
        qos: QoS = .atLeastOnce,
        bytes: Int = 10,
        rate: UplinkRateLimits = .unlimited,
        at seconds: Int64 = 0
    ) throws -> DeviceSessionStateMachine.OnReceivedPublish {
        try m.publishReceived(qos: qos, payloadBytes: bytes, limits: rate, now: self.start + .seconds(seconds))
    }

    @Test("handshake timeout closes silently, HELLO timeout with GOAWAY")
    func timeouts() {
        var m = self.machine()
        #expect(m.timerFired(now: self.start + .seconds(4)) == nil)
        #expect(m.timerFired(now: self.start + .seconds(5)) == .handshakeTimeout)
        #expect(m.close(.handshakeTimeout, now: self.start).action == .closeSilently(.handshakeTimeout))

        var h = self.machine()
        h.handshakeCompleted(now: self.start + .seconds(1))
        #expect(h.state == .awaitingHello)
        #expect(h.timerFired(now: self.start + .seconds(3)) == nil)
        #expect(h.timerFired(now: self.start + .seconds(4)) == .helloTimeout)
        let (action, closeNow) = h.close(.helloTimeout, now: self.start + .seconds(4))
        #expect(action == .goAway(GoAway(code: .helloTimeout)))
        #expect(closeNow)
    }

    @Test("keepalive: 1.5 × negotiated value after the last frame")
    func keepalive() {
        var m = self.machine(tls: false)
        m.established(keepalive: 10, now: self.start)
        #expect(m.timerFired(now: self.start + .seconds(14)) == nil)
        m.frameReceived(now: self.start + .seconds(14))
        #expect(m.timerFired(now: self.start + .seconds(28)) == nil)
        #expect(m.timerFired(now: self.start + .seconds(29)) == .keepaliveTimeout)
    }

    @Test("reads pause at the inflight limit and resume below it; one more is a protocol error")
    func inflight() throws {
        var m = self.machine(tls: false, maxInflight: 2)
        m.established(keepalive: 60, now: self.start)
        #expect(try self.publish(&m) == .deliver(pause: false))
        #expect(try self.publish(&m) == .deliver(pause: true))
        #expect(m.readsPaused)
        #expect(throws: ProtocolError.self) { _ = try self.publish(&m) }
        #expect(m.deliveryCompleted(qos: .atLeastOnce).read == .resume)
        #expect(!m.readsPaused)
        #expect(m.deliveryCompleted(qos: .atLeastOnce).read == .none)
        #expect(m.inflight == 0)
    }

    @Test("an orderly GOAWAY waits for inflight outcomes; a protocol error does not")
    func orderlyClose() throws {
        var m = self.machine(tls: false)
        m.established(keepalive: 60, now: self.start)
        _ = try self.publish(&m)
        let drain = m.close(.shuttingDown, reconnectAfterMilliseconds: 500, now: self.start)
        #expect(drain.action == .goAway(GoAway(code: .shuttingDown, reconnectAfterMilliseconds: 500)))
        #expect(!drain.closeNow)
        #expect(m.close(.replaced, now: self.start).action == .none)  // only once
        #expect(m.deliveryCompleted(qos: .atLeastOnce).closeNow)
        #expect(m.timerFired(now: self.start + .seconds(2)) == .internalError)  // grace over

        var e = self.machine(tls: false)
        e.established(keepalive: 60, now: self.start)
        _ = try self.publish(&e)
        #expect(e.close(.malformedFrame, now: self.start).closeNow)
    }

    @Test("QoS 0 counts against max_pending: reads pause there, and QoS 0 decoded beyond it is dropped")
    func qos0Window() throws {
        var m = self.machine(tls: false, maxInflight: 2, maxPending: 3)
        m.established(keepalive: 60, now: self.start)
        #expect(try self.publish(&m, qos: .atMostOnce) == .deliver(pause: false))
        #expect(try self.publish(&m, qos: .atMostOnce) == .deliver(pause: false))
        #expect(try self.publish(&m, qos: .atMostOnce) == .deliver(pause: true))
        #expect(m.readsPaused && m.pending == 3 && m.inflight == 0)
        // Bytes already read still decode: QoS 0 is dropped, QoS 1 (within max_inflight) is not.
        #expect(try self.publish(&m, qos: .atMostOnce) == .drop)
        #expect(try self.publish(&m, qos: .atLeastOnce) == .deliver(pause: false))
        #expect(m.pending == 4 && m.inflight == 1)
        #expect(m.deliveryCompleted(qos: .atMostOnce).read == .none)  // 3 pending: still at the limit
        #expect(m.deliveryCompleted(qos: .atMostOnce).read == .resume)
        #expect(!m.readsPaused)
    }

    @Test("rate limit: refusals with a retry hint, admitted again after the refill, closed after close_after in a row")
    func rateLimit() throws {
        let rate = UplinkRateLimits(
            messagesPerSecond: 2,
            messageBurst: 2,
            bytesPerSecond: 1000,
            byteBurst: 1000,
            refusalsBeforeClose: 3
        )
        var m = self.machine(tls: false, maxInflight: 100, rate: rate)
        m.established(keepalive: 60, now: self.start)
        #expect(try self.publish(&m, rate: rate) == .deliver(pause: false))
        #expect(try self.publish(&m, rate: rate) == .deliver(pause: false))
        #expect(try self.publish(&m, rate: rate) == .refuse(retryAfterSeconds: 1))
        #expect(m.refusalsInARow == 1)
        // Half a second later one message token is back.
        #expect(
            try m.publishReceived(
                qos: .atLeastOnce,
                payloadBytes: 1,
                limits: rate,
                now: self.start + .milliseconds(500)
            ) == .deliver(pause: false)
        )
        #expect(m.refusalsInARow == 0)
        // Bytes: a 900-byte message after 2 s leaves too little for another 900 (retry in 1 s).
        #expect(try self.publish(&m, bytes: 900, rate: rate, at: 2) == .deliver(pause: false))
        #expect(try self.publish(&m, bytes: 900, rate: rate, at: 2) == .refuse(retryAfterSeconds: 1))
        #expect(try self.publish(&m, bytes: 900, rate: rate, at: 2) == .refuse(retryAfterSeconds: 1))
        #expect(throws: ProtocolError(.rateLimited, "3 messages in a row above the rate limit")) {
            _ = try self.publish(&m, bytes: 900, rate: rate, at: 2)
        }
        // A message above the byte burst passes only with a full bucket, and empties it.
        var big = self.machine(tls: false, maxInflight: 100, rate: rate)
        big.established(keepalive: 60, now: self.start)
        #expect(try self.publish(&big, bytes: 5000, rate: rate) == .deliver(pause: false))
        #expect(try self.publish(&big, bytes: 5000, rate: rate) == .refuse(retryAfterSeconds: 1))
    }

    @Test("a frame that started must complete within the frame timeout, unless the gateway paused reading")
    func frameTimeout() throws {
        var m = self.machine(tls: false, maxInflight: 1)
        m.established(keepalive: 60, now: self.start)
        m.partialFrame(true, now: self.start + .seconds(1))
        m.partialFrame(true, now: self.start + .seconds(5))  // more bytes of the same frame: clock keeps running
        #expect(m.deadline == self.start + .seconds(8))
        #expect(m.timerFired(now: self.start + .seconds(7)) == nil)
        #expect(m.timerFired(now: self.start + .seconds(8)) == .frameTimeout)
        m.partialFrame(false, now: self.start + .seconds(8))
        #expect(m.timerFired(now: self.start + .seconds(8)) == nil)

        // While reading is paused (the gateway's doing), the frame clock does not count.
        m.partialFrame(true, now: self.start + .seconds(10))
        _ = try self.publish(&m, at: 10)
        #expect(m.readsPaused)
        #expect(m.timerFired(now: self.start + .seconds(30)) == nil)
    }

    @Test("output that does not drain pauses reading, refuses pushes, and closes silently after the write stall")
    func writeStall() throws {
        var m = self.machine(tls: false)
        m.established(keepalive: 60, now: self.start)
        #expect(m.acceptsPushes)
        #expect(m.writabilityChanged(writable: false, now: self.start + .seconds(1)) == .pause)
        #expect(m.readsPaused && m.decodingHeld && !m.acceptsPushes)
        #expect(m.writabilityChanged(writable: false, now: self.start + .seconds(2)) == .none)
        #expect(m.timerFired(now: self.start + .seconds(4)) == nil)
        #expect(m.timerFired(now: self.start + .seconds(5)) == .slowConsumer)
        #expect(m.writabilityChanged(writable: true, now: self.start + .seconds(5)) == .resume)
        #expect(m.timerFired(now: self.start + .seconds(6)) == nil)
        _ = m.writabilityChanged(writable: false, now: self.start + .seconds(6))
        #expect(m.close(.slowConsumer, now: self.start + .seconds(10)) == (.closeSilently(.slowConsumer), true))
    }

    @Test("the connected event holds the device's messages until its outcome")
    func connectedEventFirst() {
        var m = self.machine(tls: false)
        m.established(keepalive: 60, now: self.start)
        m.connectedEventPublished()
        #expect(m.decodingHeld && m.readsPaused)
        #expect(m.connectedEventCompleted() == .resume)
        #expect(!m.decodingHeld && !m.readsPaused)
        #expect(m.connectedEventCompleted() == .none)
    }

    @Test("keepalive negotiation clamps to the configured range")
    func negotiation() {
        var settings = EdgeSettings()
        settings.keepaliveMin = 30
        settings.keepaliveMax = 540
        settings.keepaliveDefault = 240
        #expect(settings.negotiatedKeepalive(requested: 0) == 240)
        #expect(settings.negotiatedKeepalive(requested: 5) == 30)
        #expect(settings.negotiatedKeepalive(requested: 60) == 60)
        #expect(settings.negotiatedKeepalive(requested: 900) == 540)
    }
}
