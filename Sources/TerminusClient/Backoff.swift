public import TerminusProtocol

/// A device's reconnect backoff: a cursor over a `RetryPolicy` (the one implementation of
/// backoff in Terminus), full jitter by default ("Exponential Backoff And Jitter"): attempt n
/// waits a uniform random time in [0, min(cap, base × 2ⁿ)], so a fleet that lost its gateway
/// at the same instant does not come back in lockstep.
public struct Backoff: Sendable {
    public var policy: RetryPolicy
    public private(set) var attempt: Int = 0

    public init(policy: RetryPolicy = .deviceReconnect) {
        self.policy = policy
    }

    public init(baseMilliseconds: UInt64, capMilliseconds: UInt64) {
        self.init(
            policy: RetryPolicy(
                maxAttempts: nil,
                initialBackoff: .milliseconds(Int64(clamping: max(1, baseMilliseconds))),
                maxBackoff: .milliseconds(Int64(clamping: capMilliseconds))
            )
        )
    }

    /// The ceiling for the next delay (before jitter).
    public var currentCeilingMilliseconds: UInt64 {
        Self.milliseconds(self.policy.ceiling(afterFailures: self.attempt + 1))
    }

    /// The next delay; each call raises the ceiling by the policy's multiplier, up to the cap.
    public mutating func nextDelayMilliseconds<G: RandomNumberGenerator>(using generator: inout G) -> UInt64 {
        self.attempt += 1
        return Self.milliseconds(self.policy.delay(afterFailures: self.attempt, using: &generator))
    }

    public mutating func nextDelayMilliseconds() -> UInt64 {
        var generator = SystemRandomNumberGenerator()
        return self.nextDelayMilliseconds(using: &generator)
    }

    /// Call after a connection succeeded.
    public mutating func reset() {
        self.attempt = 0
    }

    private static func milliseconds(_ duration: Duration) -> UInt64 {
        let (seconds, attoseconds) = duration.components
        return UInt64(max(0, seconds)) * 1_000 + UInt64(max(0, attoseconds) / 1_000_000_000_000_000)
    }
}
