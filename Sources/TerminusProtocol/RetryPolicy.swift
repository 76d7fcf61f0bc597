/// How Terminus waits between attempts: exponential backoff with jitter, for at most
/// `maxAttempts` attempts. One type for every retry and reconnect: batches to a backend
/// (`services[].retry`), a backend's Deliver streams and connections (`backendReconnect`), and
/// devices reconnecting to the gateway (the client library's `Backoff`, `deviceReconnect`).
///
/// The wait after the n-th failed attempt has the ceiling
/// `min(maxBackoff, initialBackoff × multiplierⁿ⁻¹)`, then jitter: `.full` draws uniformly in
/// [0, ceiling] (a fleet that failed at the same instant does not retry in lockstep),
/// `.proportional(f)` in [ceiling × (1 − f), ceiling × (1 + f)] capped at `maxBackoff`.
public struct RetryPolicy: Hashable, Sendable {
    public enum Jitter: Hashable, Sendable {
        case none
        case full
        case proportional(Double)
    }

    /// Attempts in all, the first included (1: no retry); nil: no limit (reconnect loops).
    public var maxAttempts: Int?
    public var initialBackoff: Duration
    public var maxBackoff: Duration
    public var multiplier: Double
    public var jitter: Jitter

    public init(
        maxAttempts: Int?,
        initialBackoff: Duration,
        maxBackoff: Duration,
        multiplier: Double = 2,
        jitter: Jitter = .full
    ) {
        self.maxAttempts = maxAttempts.map { max(1, $0) }
        self.initialBackoff = max(.zero, initialBackoff)
        self.maxBackoff = max(self.initialBackoff, maxBackoff)
        self.multiplier = max(1, multiplier)
        self.jitter = jitter
    }

    /// Batches to a backend (`services[].retry` defaults): 3 attempts, 100 ms … 2 s, full jitter.
    public static let backendBatch = RetryPolicy(
        maxAttempts: 3,
        initialBackoff: .milliseconds(100),
        maxBackoff: .seconds(2)
    )

    /// Re-opening a backend's Deliver stream and re-connecting its HTTP/2 connection: without
    /// end, 100 ms … 5 s, ×1.6 with ±20 % jitter.
    public static let backendReconnect = RetryPolicy(
        maxAttempts: nil,
        initialBackoff: .milliseconds(100),
        maxBackoff: .seconds(5),
        multiplier: 1.6,
        jitter: .proportional(0.2)
    )

    /// A device reconnecting to the gateway (the client library): without end, 500 ms … 60 s,
    /// full jitter.
    public static let deviceReconnect = RetryPolicy(
        maxAttempts: nil,
        initialBackoff: .milliseconds(500),
        maxBackoff: .seconds(60)
    )

    /// Whether attempt number `attempt` (1-based) may be made.
    public func allows(attempt: Int) -> Bool {
        guard let maxAttempts = self.maxAttempts else { return true }
        return attempt <= maxAttempts
    }

    /// The wait's ceiling, before jitter, after `failures` failed attempts (at least 1).
    public func ceiling(afterFailures failures: Int) -> Duration {
        let cap = Self.nanoseconds(self.maxBackoff)
        var value = Self.nanoseconds(self.initialBackoff)
        var step = 1
        while step < failures && value < cap {
            value *= self.multiplier
            step += 1
        }
        return .nanoseconds(Int64(min(value, cap)))
    }

    /// The wait after `failures` failed attempts, jitter applied.
    public func delay<G: RandomNumberGenerator>(afterFailures failures: Int, using generator: inout G) -> Duration {
        let ceiling = Self.nanoseconds(self.ceiling(afterFailures: failures))
        let nanoseconds: Double
        switch self.jitter {
        case .none:
            nanoseconds = ceiling
        case .full:
            nanoseconds = ceiling > 0 ? Double.random(in: 0...ceiling, using: &generator) : 0
        case .proportional(let fraction):
            let spread = ceiling * min(max(fraction, 0), 1)
            let drawn =
                spread > 0 ? Double.random(in: (ceiling - spread)...(ceiling + spread), using: &generator) : ceiling
            nanoseconds = min(drawn, Self.nanoseconds(self.maxBackoff))
        }
        return .nanoseconds(Int64(nanoseconds))
    }

    public func delay(afterFailures failures: Int) -> Duration {
        var generator = SystemRandomNumberGenerator()
        return self.delay(afterFailures: failures, using: &generator)
    }

    /// The waits between attempts, in order: `maxAttempts − 1` of them, or without end.
    public func delays() -> RetryDelaySequence {
        RetryDelaySequence(policy: self)
    }

    static func nanoseconds(_ duration: Duration) -> Double {
        let (seconds, attoseconds) = duration.components
        return Double(seconds) * 1e9 + Double(attoseconds) / 1e9
    }
}

/// The waits of a `RetryPolicy`, one per failed attempt that may be retried.
public struct RetryDelaySequence: Sequence, Sendable {
    public let policy: RetryPolicy

    public struct Iterator: IteratorProtocol, Sendable {
        let policy: RetryPolicy
        var failures = 0
        var generator = SystemRandomNumberGenerator()

        public mutating func next() -> Duration? {
            self.failures += 1
            guard self.policy.allows(attempt: self.failures + 1) else { return nil }
            return self.policy.delay(afterFailures: self.failures, using: &self.generator)
        }
    }

    public func makeIterator() -> Iterator { Iterator(policy: self.policy) }
}
