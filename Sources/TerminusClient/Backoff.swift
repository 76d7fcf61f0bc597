/// Exponential backoff with full jitter (AWS architecture blog, "Exponential Backoff And
/// Jitter"): attempt n waits a uniform random time in [0, min(cap, base × 2ⁿ)], so a fleet
/// that lost its gateway at the same instant does not come back in lockstep.
public struct Backoff: Sendable {
    public var baseMilliseconds: UInt64
    public var capMilliseconds: UInt64
    public private(set) var attempt: Int = 0

    public init(baseMilliseconds: UInt64 = 500, capMilliseconds: UInt64 = 60_000) {
        self.baseMilliseconds = max(1, baseMilliseconds)
        self.capMilliseconds = max(self.baseMilliseconds, capMilliseconds)
    }

    /// The ceiling for the next delay (before jitter).
    public var currentCeilingMilliseconds: UInt64 {
        let shift = min(self.attempt, 30)
        let (value, overflow) = self.baseMilliseconds.multipliedReportingOverflow(by: UInt64(1) << UInt64(shift))
        return overflow ? self.capMilliseconds : min(value, self.capMilliseconds)
    }

    /// The next delay; each call doubles the ceiling up to the cap.
    public mutating func nextDelayMilliseconds<G: RandomNumberGenerator>(using generator: inout G) -> UInt64 {
        let ceiling = self.currentCeilingMilliseconds
        self.attempt += 1
        return UInt64.random(in: 0...ceiling, using: &generator)
    }

    public mutating func nextDelayMilliseconds() -> UInt64 {
        var generator = SystemRandomNumberGenerator()
        return self.nextDelayMilliseconds(using: &generator)
    }

    /// Call after a connection succeeded.
    public mutating func reset() {
        self.attempt = 0
    }
}
