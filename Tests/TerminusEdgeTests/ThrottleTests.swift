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
