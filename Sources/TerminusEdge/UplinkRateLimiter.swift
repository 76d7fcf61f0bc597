package import NIOCore

/// A device's uplink message and byte rates (`limits.rate`): two token buckets.
package struct UplinkRateLimits: Hashable, Sendable {
    /// Messages per second refilled; 0 turns the message limit off.
    package var messagesPerSecond: Double
    /// The most messages a device may send at once after being quiet.
    package var messageBurst: Double
    /// Payload bytes (inflated) per second refilled; 0 turns the byte limit off.
    package var bytesPerSecond: Double
    /// The most payload bytes a device may send at once after being quiet.
    package var byteBurst: Double
    /// A device that goes on sending after this many refusals in a row is closed with
    /// `GOAWAY(RATE_LIMITED)`; 0 never closes.
    package var refusalsBeforeClose: Int

    package init(
        messagesPerSecond: Double = 100,
        messageBurst: Double = 200,
        bytesPerSecond: Double = 256 * 1024,
        byteBurst: Double = 1024 * 1024,
        refusalsBeforeClose: Int = 100
    ) {
        self.messagesPerSecond = messagesPerSecond
        self.messageBurst = messageBurst
        self.bytesPerSecond = bytesPerSecond
        self.byteBurst = byteBurst
        self.refusalsBeforeClose = refusalsBeforeClose
    }

    /// No limit at all.
    package static let unlimited = UplinkRateLimits(
        messagesPerSecond: 0,
        messageBurst: 0,
        bytesPerSecond: 0,
        byteBurst: 0,
        refusalsBeforeClose: 0
    )
}

/// The token buckets of one session, without I/O (the limits live in the listener's settings,
/// not in every session: this is 24 bytes a session).
///
/// Buckets start full. A message takes one message token and as many byte tokens as its
/// inflated payload has bytes (at most the burst); it is refused, taking nothing, when either
/// bucket lacks them.
package struct UplinkRateLimiter: Hashable, Sendable {
    package enum Admission: Hashable, Sendable {
        case admitted
        /// Refused; the buckets hold enough again after about this many seconds (at least 1).
        case refused(retryAfterSeconds: UInt16)
    }

    private var messageTokens: Double
    private var byteTokens: Double
    private var refilledAt: NIODeadline

    package init(limits: UplinkRateLimits, now: NIODeadline) {
        self.messageTokens = limits.messageBurst
        self.byteTokens = limits.byteBurst
        self.refilledAt = now
    }

    package mutating func admit(bytes: Int, limits: UplinkRateLimits, now: NIODeadline) -> Admission {
        let elapsed = Double(max(0, now.uptimeNanoseconds &- self.refilledAt.uptimeNanoseconds)) / 1e9
        self.refilledAt = max(now, self.refilledAt)
        var wait = 0.0
        if limits.messagesPerSecond > 0 {
            self.messageTokens = min(limits.messageBurst, self.messageTokens + elapsed * limits.messagesPerSecond)
            if self.messageTokens < 1 { wait = max(wait, (1 - self.messageTokens) / limits.messagesPerSecond) }
        }
        // A message larger than the byte burst needs a full bucket (and empties it).
        let needed = min(Double(bytes), limits.byteBurst)
        if limits.bytesPerSecond > 0 {
            self.byteTokens = min(limits.byteBurst, self.byteTokens + elapsed * limits.bytesPerSecond)
            if self.byteTokens < needed { wait = max(wait, (needed - self.byteTokens) / limits.bytesPerSecond) }
        }
        guard wait == 0 else {
            return .refused(retryAfterSeconds: UInt16(max(1, min(Double(UInt16.max), wait.rounded(.up)))))
        }
        if limits.messagesPerSecond > 0 { self.messageTokens -= 1 }
        if limits.bytesPerSecond > 0 { self.byteTokens -= needed }
        return .admitted
    }
}
