import NIOCore
import TerminusEdge
import TerminusProtocol
import Testing

@Suite("Device session state machine")
struct DeviceSessionStateMachineTests {
    let start = NIODeadline.uptimeNanoseconds(1_000_000_000)

    func machine(tls: Bool = true, maxInflight: Int = 2) -> DeviceSessionStateMachine {
        DeviceSessionStateMachine(
            usesTLS: tls,
            now: self.start,
            handshakeTimeout: .seconds(5),
            helloTimeout: .seconds(3),
            closeGrace: .seconds(2),
            maxInflight: maxInflight
        )
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
        #expect(try m.publishAccepted() == .none)
        #expect(try m.publishAccepted() == .pause)
        #expect(m.readsPaused)
        #expect(throws: ProtocolError.self) { _ = try m.publishAccepted() }
        #expect(m.deliveryCompleted().read == .resume)
        #expect(!m.readsPaused)
        #expect(m.deliveryCompleted().read == .none)
        #expect(m.inflight == 0)
    }

    @Test("an orderly GOAWAY waits for inflight outcomes; a protocol error does not")
    func orderlyClose() throws {
        var m = self.machine(tls: false)
        m.established(keepalive: 60, now: self.start)
        _ = try m.publishAccepted()
        let drain = m.close(.shuttingDown, reconnectAfterMilliseconds: 500, now: self.start)
        #expect(drain.action == .goAway(GoAway(code: .shuttingDown, reconnectAfterMilliseconds: 500)))
        #expect(!drain.closeNow)
        #expect(m.close(.replaced, now: self.start).action == .none)  // only once
        #expect(m.deliveryCompleted().closeNow)
        #expect(m.timerFired(now: self.start + .seconds(2)) == .internalError)  // grace over

        var e = self.machine(tls: false)
        e.established(keepalive: 60, now: self.start)
        _ = try e.publishAccepted()
        #expect(e.close(.malformedFrame, now: self.start).closeNow)
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
