import NIOCore
import TerminusEdge
import TerminusProtocol
import Testing

@Suite("Device session state machine")
struct DeviceSessionStateMachineTests {
    typealias Machine = DeviceSessionStateMachine
    let start = NIODeadline.uptimeNanoseconds(1_000_000_000)

    func machine(
        tls: Bool = true,
        maxInflight: Int = 2,
        maxPending: Int? = nil,
        rate: UplinkRateLimits = .unlimited
    ) -> Machine {
        Machine(
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

    /// An established session (plaintext: no handshake), keepalive 60 s.
    func established(maxInflight: Int = 2, maxPending: Int? = nil, rate: UplinkRateLimits = .unlimited) -> Machine {
        var m = self.machine(tls: false, maxInflight: maxInflight, maxPending: maxPending, rate: rate)
        #expect(m.receivedCredential(now: self.start) == .authenticate)
        m.authenticated(deviceID: "dev-1", keepaliveSeconds: 60, now: self.start)
        return m
    }

    func at(_ seconds: Int64) -> NIODeadline { self.start + .seconds(seconds) }

    func publish(
        _ m: inout Machine,
        qos: QoS = .atLeastOnce,
        bytes: Int = 10,
        at seconds: Int64 = 0
    ) -> Machine.OnReceivedPublish {
        m.receivedPublish(qos: qos, payloadBytes: bytes, now: self.at(seconds))
    }

    @Test("handshake timeout closes silently, credential timeout with a close frame")
    func timeouts() {
        var m = self.machine()
        #expect(m.timerFired(now: self.at(4)) == .rearm(self.at(5)))
        #expect(m.timerFired(now: self.at(5)) == .close(.closeSilently(.handshakeTimeout)))
        #expect(m.phase == .closing)
        #expect(m.timerFired(now: self.at(6)) == .rearm(self.at(7)))  // the close grace
        #expect(m.timerFired(now: self.at(7)) == .forceClose)

        var h = self.machine()
        h.handshakeCompleted(now: self.at(1))
        #expect(h.phase == .awaitingCredential)
        #expect(h.timerFired(now: self.at(3)) == .rearm(self.at(4)))
        #expect(
            h.timerFired(now: self.at(4))
                == .close(.goAway(.credentialTimeout, reconnectAfterMilliseconds: 0, closeNow: true))
        )
        #expect(h.closeReason == .credentialTimeout)
    }

    @Test("keepalive: 1.5 × negotiated value after the last message of any kind")
    func keepalive() {
        var m = self.machine(tls: false)
        _ = m.receivedCredential(now: self.start)
        m.authenticated(deviceID: "dev-1", keepaliveSeconds: 10, now: self.start)
        #expect(m.keepaliveSeconds == 10)
        #expect(m.timerFired(now: self.at(14)) == .rearm(self.at(15)))
        #expect(m.receivedControl(now: self.at(14)) == .handle)
        #expect(m.timerFired(now: self.at(28)) == .rearm(self.at(29)))
        #expect(
            m.timerFired(now: self.at(29))
                == .close(.goAway(.keepaliveTimeout, reconnectAfterMilliseconds: 0, closeNow: true))
        )
    }

    @Test("which message is valid in which state")
    func legality() {
        // Before the credential: only the credential and goodbye.
        var m = self.machine(tls: false)
        #expect(self.publish(&m) == .close(.goAway(.unexpectedMessage, reconnectAfterMilliseconds: 0, closeNow: true)))
        var p = self.machine(tls: false)
        #expect(
            p.receivedControl(now: self.start)
                == .close(.goAway(.unexpectedMessage, reconnectAfterMilliseconds: 0, closeNow: true))
        )
        var g = self.machine(tls: false)
        #expect(g.receivedGoodbye(now: self.start) == .closeNow)
        #expect(g.closeReason == .normal)
        // Established: a second credential is a protocol error.
        var e = self.established()
        #expect(
            e.receivedCredential(now: self.start)
                == .close(.goAway(.unexpectedMessage, reconnectAfterMilliseconds: 0, closeNow: true))
        )
        // Closing: the device's messages no longer matter, and nothing closes twice.
        #expect(e.phase == .closing && !e.isReading)
        #expect(self.publish(&e) == .ignore)
        #expect(e.receivedControl(now: self.start) == .ignore)
        #expect(e.receivedGoodbye(now: self.start) == .ignore)
        #expect(e.receivedCredential(now: self.start) == .ignore)
        #expect(e.close(.kicked, now: self.start) == .none)
    }

    @Test("a credential is refused before any work while draining or throttled, and after it fails")
    func credentialRefusals() {
        var draining = self.machine(tls: false)
        #expect(
            draining.receivedCredential(now: self.start, draining: true, drainReconnectAfterMilliseconds: 700)
                == .close(.goAway(.shuttingDown, reconnectAfterMilliseconds: 700, closeNow: true))
        )
        var throttled = self.machine(tls: false)
        #expect(
            throttled.receivedCredential(now: self.start, throttledForMilliseconds: 1_500)
                == .close(.goAway(.authenticationThrottled, reconnectAfterMilliseconds: 1_500, closeNow: true))
        )
        var refused = self.machine(tls: false)
        #expect(refused.receivedCredential(now: self.start) == .authenticate)
        #expect(
            refused.authenticationFailed(.expired, now: self.start)
                == .goAway(.authentication(.expired), reconnectAfterMilliseconds: 0, closeNow: true)
        )
        #expect(refused.deviceID == nil)
    }

    @Test("reads pause at the inflight limit and resume below it; one more closes with inflightExceeded")
    func inflight() {
        var m = self.established(maxInflight: 2)
        #expect(self.publish(&m) == .deliver(pause: false))
        #expect(self.publish(&m) == .deliver(pause: true))
        #expect(m.readsPaused)
        var over = m
        #expect(
            self.publish(&over) == .close(.goAway(.inflightExceeded, reconnectAfterMilliseconds: 0, closeNow: true))
        )
        let first = m.deliveryCompleted(qos: .atLeastOnce)
        #expect(first.acknowledge && first.resumeReading && !first.closeNow)
        #expect(!m.readsPaused)
        #expect(!m.deliveryCompleted(qos: .atLeastOnce).resumeReading)
        #expect(m.inflight == 0 && m.pending == 0)
    }

    @Test("an orderly close waits for the outcomes owed (bounded by the grace); a protocol error does not")
    func orderlyClose() {
        var m = self.established()
        _ = self.publish(&m)
        #expect(
            m.close(.shuttingDown, reconnectAfterMilliseconds: 500, now: self.start)
                == .goAway(.shuttingDown, reconnectAfterMilliseconds: 500, closeNow: false)
        )
        #expect(m.close(.replaced, now: self.start) == .none)  // only once
        let done = m.deliveryCompleted(qos: .atLeastOnce)
        #expect(done.acknowledge && done.closeNow)
        #expect(m.timerFired(now: self.at(2)) == .forceClose)  // grace over, whatever happened

        var e = self.established()
        _ = self.publish(&e)
        #expect(
            e.protocolViolation(code: TerminusCode.malformedFrame.rawValue, now: self.start)
                == .goAway(.protocolViolation(code: 200), reconnectAfterMilliseconds: 0, closeNow: true)
        )
        #expect(!e.deliveryCompleted(qos: .atLeastOnce).acknowledge, "no ACK after the close frame")
    }

    @Test("a drain's close waits for the outcomes owed until the drain answers them, past the close grace")
    func drainCloseWaitsForOutcomes() {
        var m = self.established()
        _ = self.publish(&m)
        #expect(
            m.close(.shuttingDown, reconnectAfterMilliseconds: 500, outcomesUntil: self.at(31), now: self.start)
                == .goAway(.shuttingDown, reconnectAfterMilliseconds: 500, closeNow: false)
        )
        #expect(m.deadline == self.at(31), "not the close grace (2 s)")
        #expect(m.timerFired(now: self.at(2)) == .rearm(self.at(31)))
        let done = m.deliveryCompleted(qos: .atLeastOnce)
        #expect(done.acknowledge && done.closeNow, "answered: ACK, then close")

        // Nothing owed: the drain's deadline does not matter; a shorter one never cuts the grace.
        var idle = self.established()
        #expect(
            idle.close(.shuttingDown, outcomesUntil: self.at(31), now: self.start)
                == .goAway(.shuttingDown, reconnectAfterMilliseconds: 0, closeNow: true)
        )
        #expect(idle.deadline == self.at(2))
        var early = self.established()
        _ = self.publish(&early)
        _ = early.close(.shuttingDown, outcomesUntil: self.at(1), now: self.start)
        #expect(early.deadline == self.at(2))
    }

    @Test("QoS 0 counts against max_pending: reads pause there, and QoS 0 decoded beyond it is dropped")
    func qos0Window() {
        var m = self.established(maxInflight: 2, maxPending: 3)
        #expect(self.publish(&m, qos: .atMostOnce) == .deliver(pause: false))
        #expect(self.publish(&m, qos: .atMostOnce) == .deliver(pause: false))
        #expect(self.publish(&m, qos: .atMostOnce) == .deliver(pause: true))
        #expect(m.readsPaused && m.pending == 3 && m.inflight == 0)
        // Bytes already read still decode: QoS 0 is dropped, QoS 1 (within max_inflight) is not.
        #expect(self.publish(&m, qos: .atMostOnce) == .drop)
        #expect(self.publish(&m, qos: .atLeastOnce) == .deliver(pause: false))
        #expect(m.pending == 4 && m.inflight == 1)
        let first = m.deliveryCompleted(qos: .atMostOnce)
        #expect(!first.resumeReading && !first.acknowledge)  // 3 pending: still at the limit
        #expect(m.deliveryCompleted(qos: .atMostOnce).resumeReading)
        #expect(!m.readsPaused)
    }

    @Test("rate limit: refusals with a retry hint, admitted again after the refill, closed after close_after in a row")
    func rateLimit() {
        let rate = UplinkRateLimits(
            messagesPerSecond: 2,
            messageBurst: 2,
            bytesPerSecond: 1000,
            byteBurst: 1000,
            refusalsBeforeClose: 3
        )
        var m = self.established(maxInflight: 100, rate: rate)
        #expect(self.publish(&m) == .deliver(pause: false))
        #expect(self.publish(&m) == .deliver(pause: false))
        #expect(self.publish(&m) == .refuse(retryAfterSeconds: 1))
        // Half a second later one message token is back.
        #expect(
            m.receivedPublish(qos: .atLeastOnce, payloadBytes: 1, now: self.start + .milliseconds(500))
                == .deliver(pause: false)
        )
        // Bytes: a 900-byte message after 2 s leaves too little for another 900 (retry in 1 s).
        #expect(self.publish(&m, bytes: 900, at: 2) == .deliver(pause: false))
        #expect(self.publish(&m, bytes: 900, at: 2) == .refuse(retryAfterSeconds: 1))
        #expect(self.publish(&m, bytes: 900, at: 2) == .refuse(retryAfterSeconds: 1))
        // The third refusal in a row closes; the device is told to stay away for 10 s, and the
        // outcomes it is owed still reach it.
        #expect(
            self.publish(&m, bytes: 900, at: 2)
                == .close(.goAway(.rateLimited, reconnectAfterMilliseconds: 10_000, closeNow: false))
        )
        // A message above the byte burst passes only with a full bucket, and empties it.
        var big = self.established(maxInflight: 100, rate: rate)
        #expect(self.publish(&big, bytes: 5000) == .deliver(pause: false))
        #expect(self.publish(&big, bytes: 5000) == .refuse(retryAfterSeconds: 1))
    }

    @Test("a frame that started must complete within the frame timeout, unless the gateway paused reading")
    func frameTimeout() {
        var m = self.established(maxInflight: 1)
        m.partialFrame(true, now: self.at(1))
        m.partialFrame(true, now: self.at(5))  // more bytes of the same frame: the clock keeps running
        #expect(m.deadline == self.at(8))
        #expect(m.timerFired(now: self.at(7)) == .rearm(self.at(8)))
        var timedOut = m
        #expect(
            timedOut.timerFired(now: self.at(8))
                == .close(.goAway(.frameTimeout, reconnectAfterMilliseconds: 0, closeNow: true))
        )
        m.partialFrame(false, now: self.at(8))
        #expect(m.timerFired(now: self.at(8)) == .rearm(self.at(90)))

        // While reading is paused (the gateway's doing), the frame clock does not count.
        m.partialFrame(true, now: self.at(10))
        _ = self.publish(&m, at: 10)
        #expect(m.readsPaused)
        #expect(m.timerFired(now: self.at(30)) == .rearm(self.at(100)))
    }

    @Test("output that does not drain pauses reading, refuses pushes, and closes silently after the write stall")
    func writeStall() {
        var m = self.established()
        #expect(m.acceptsPushes && m.pushRequested() == .write)
        #expect(m.writabilityChanged(writable: false, now: self.at(1)) == .pause)
        #expect(m.readsPaused && m.decodingHeld && !m.acceptsPushes)
        #expect(m.pushRequested() == .refuseSlowConsumer)
        #expect(m.writabilityChanged(writable: false, now: self.at(2)) == .none)
        #expect(m.timerFired(now: self.at(4)) == .rearm(self.at(5)))
        var stalled = m
        #expect(stalled.timerFired(now: self.at(5)) == .close(.closeSilently(.slowConsumer)))
        #expect(m.writabilityChanged(writable: true, now: self.at(5)) == .resume)
        #expect(m.timerFired(now: self.at(6)) == .rearm(self.at(90)))
        _ = m.writabilityChanged(writable: false, now: self.at(6))
        #expect(m.close(.slowConsumer, now: self.at(10)) == .closeSilently(.slowConsumer))
        #expect(m.pushRequested() == .notConnected)
    }

    @Test("the connected event holds the device's messages until its outcome, and counts as pending")
    func connectedEventFirst() {
        var m = self.established()
        m.connectedEventPublished()
        #expect(m.decodingHeld && m.readsPaused && m.pending == 1)
        let done = m.deliveryCompleted(qos: nil)
        #expect(done.resumeReading && !done.acknowledge)
        #expect(!m.decodingHeld && !m.readsPaused && m.pending == 0)
    }

    @Test("the disconnected event waits for the last outcome; the reason says how the connection ended")
    func disconnectedEvent() {
        var m = self.established()
        _ = self.publish(&m, qos: .atMostOnce)
        let gone = m.channelInactive(partialFrame: false)
        #expect(gone.wasEstablished && gone.reason == nil && !gone.publishDisconnectedEvent)
        #expect(m.phase == .closed && m.deviceID == "dev-1")
        let last = m.deliveryCompleted(qos: .atMostOnce)
        #expect(last.publishDisconnectedEvent && !last.acknowledge && !last.closeNow)

        var idle = self.established()
        let cut = idle.channelInactive(partialFrame: true)
        #expect(cut.publishDisconnectedEvent && cut.reason == .uncleanShutdown)

        var reset = self.established()
        #expect(reset.transportFailed(.connectionReset, now: self.start) == .connectionReset)
        #expect(reset.transportFailed(.tlsFailed, now: self.start) == nil)
        #expect(reset.channelInactive(partialFrame: false).reason == .connectionReset)

        var kicked = self.established()
        _ = kicked.close(.kicked, now: self.start)
        #expect(kicked.channelInactive(partialFrame: false).reason == .kicked)

        var anonymous = self.machine(tls: false)
        #expect(!anonymous.channelInactive(partialFrame: false).wasEstablished)
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

    static let allReasons: [SessionCloseReason] = [
        .normal, .shuttingDown, .replaced, .kicked, .evicted, .handshakeTimeout, .credentialTimeout,
        .keepaliveTimeout, .frameTimeout, .slowConsumer, .rateLimited, .inflightExceeded, .unexpectedMessage,
        .authentication(.invalidCredential), .authentication(.expired), .authentication(.lifetimeExceeded),
        .authentication(.certificateRequired), .authentication(.invalidDeviceID), .authenticationThrottled,
        .connectionReset, .uncleanShutdown, .tlsFailed, .internalError,
    ]

    @Test("wire v1: every close reason has its own documented code, and the orderly ones are the orderly codes")
    func wireV1Codes() {
        let codes = Self.allReasons.map { TerminusCode($0) }
        #expect(Set(codes).count == codes.count)
        for (reason, code) in zip(Self.allReasons, codes) {
            #expect(TerminusCode.allDefined.contains(code), "\(reason) → \(code)")
            #expect(reason.isOrderly == [.ok, .shuttingDown, .replaced, .kicked].contains(code), "\(reason)")
        }
        #expect(TerminusCode(.protocolViolation(code: 205)) == .invalidTopic)
        for code in [TerminusCode.replaced, .kicked, .shuttingDown] {
            #expect(TerminusCode(SessionCloseReason(requested: code)) == code)
        }
    }
}
