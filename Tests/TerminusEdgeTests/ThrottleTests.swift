import NIOCore
import Testing

@testable import TerminusEdge

@Suite("Throttles: failed authentications per address, repetitive log lines")
struct ThrottleTests {
    let start = NIODeadline.uptimeNanoseconds(5_000_000_000)

    @Test("an address is refused after N failures until its window ends; ports do not matter")
    func authenticationThrottle() {
        let throttle = AuthenticationThrottle(settings: .init(failures: 2, window: .seconds(10), maxAddresses: 100))
        #expect(throttle.refusal(for: "10.0.0.1:4000", now: self.start) == nil)
        throttle.failed("10.0.0.1:4000", now: self.start)
        #expect(throttle.refusal(for: "10.0.0.1:4001", now: self.start) == nil)
        throttle.failed("10.0.0.1:4002", now: self.start + .seconds(1))
        #expect(throttle.refusal(for: "10.0.0.1:4003", now: self.start + .seconds(2)) == 8_000)
        #expect(throttle.refusal(for: "10.0.0.2:4003", now: self.start + .seconds(2)) == nil)
        #expect(throttle.refusal(for: "10.0.0.1:4003", now: self.start + .seconds(10)) == nil)
        #expect(throttle.trackedAddresses == 0)
        // IPv6 addresses keep their colons.
        throttle.failed("[2001:db8::1]:443", now: self.start)
        throttle.failed("[2001:db8::1]:444", now: self.start)
        #expect(throttle.refusal(for: "[2001:db8::1]:445", now: self.start) != nil)
        #expect(throttle.refusal(for: "[2001:db8::2]:445", now: self.start) == nil)
    }

    @Test("limits.reconnect is bounded: at capacity ids past their window go first, then a new id goes untracked")
    func reconnectTrackerCapacity() {
        var settings = AdmissionControl.Settings()
        (settings.reconnectMax, settings.reconnectWindow, settings.reconnectBlock) = (1, .seconds(10), .seconds(30))
        // 1,024 ids at least are tracked, whatever the connection cap.
        let admission = AdmissionControl(settings: settings, trackedDevices: 10)
        for index in 0..<1_024 { #expect(admission.authenticated("d\(index)", now: self.start) == nil) }
        #expect(admission.trackedReconnects == 1_024)
        // Full, nothing outside its window: the new id is not tracked (fails open), so a second
        // authentication is not refused; a tracked id still is.
        #expect(admission.authenticated("new", now: self.start + .seconds(1)) == nil)
        #expect(admission.authenticated("new", now: self.start + .seconds(1)) == nil)
        #expect(admission.authenticated("d7", now: self.start + .seconds(1)) == 30_000)
        #expect(admission.trackedReconnects == 1_024)
        // Once the window has passed, the stale ids are pruned and the new id is tracked.
        #expect(admission.authenticated("new", now: self.start + .seconds(11)) == nil)
        #expect(admission.trackedReconnects == 2, "the blocked d7 and the new id")
        #expect(admission.authenticated("new", now: self.start + .seconds(12)) != nil)
    }

    @Test("a reload changes the admission limits from the next check; open per-address counts stay")
    func admissionReconfigure() {
        var settings = AdmissionControl.Settings()
        settings.maxPerAddress = 0
        let admission = AdmissionControl(settings: settings, trackedDevices: 10)
        #expect(admission.addressOpened("10.0.0.9") && admission.addressOpened("10.0.0.9"))
        settings.maxPerAddress = 2
        admission.reconfigure(settings)
        #expect(!admission.addressOpened("10.0.0.9"), "the two opened while the limit was off count")
        admission.addressClosed("10.0.0.9")
        #expect(admission.addressOpened("10.0.0.9"))
    }

    @Test("the table is bounded: expired entries go first, then new addresses are not tracked")
    func bounded() {
        let throttle = AuthenticationThrottle(settings: .init(failures: 1, window: .seconds(10), maxAddresses: 2))
        throttle.failed("a:1", now: self.start)
        throttle.failed("b:1", now: self.start + .seconds(5))
        throttle.failed("c:1", now: self.start + .seconds(6))  // full, nothing expired: not tracked
        #expect(throttle.trackedAddresses == 2)
        #expect(throttle.refusal(for: "c:2", now: self.start + .seconds(6)) == nil)
        throttle.failed("c:1", now: self.start + .seconds(11))  // a:1 expired and makes room
        #expect(throttle.refusal(for: "c:2", now: self.start + .seconds(11)) != nil)
        #expect(throttle.trackedAddresses == 2)
    }

    @Test("throttling off when failures is 0")
    func off() {
        let throttle = AuthenticationThrottle(settings: .init(failures: 0))
        for _ in 0..<100 { throttle.failed("a:1", now: self.start) }
        #expect(throttle.refusal(for: "a:1", now: self.start) == nil)
        #expect(throttle.trackedAddresses == 0)
    }

    @Test("log throttle: N lines a second, then the count of those held back")
    func logThrottle() {
        let throttle = LogThrottle(linesPerSecond: 3)
        let first = (0..<10).map { _ in throttle.admit(nowSeconds: 7) }
        #expect(first.map(\.log) == [true, true, true] + Array(repeating: false, count: 7))
        #expect(first.map(\.suppressedBefore).allSatisfy { $0 == 0 })
        let next = throttle.admit(nowSeconds: 8)
        #expect(next.log && next.suppressedBefore == 7)
        #expect(throttle.admit(nowSeconds: 8).suppressedBefore == 0)
    }
}
