public import NIOCore
public import TerminusProtocol

/// The lifecycle of one device connection, without I/O: the handler feeds it events and
/// carries out the actions it returns (grpc-swift-nio-transport's handler/state-machine split).
///
/// ```
/// awaitingHandshake ─TLS done─▶ awaitingHello ─HELLO ok─▶ established ─GOAWAY─▶ closing ─▶ closed
///        │ timeout                   │ timeout/bad           │ timeout/error        │ grace
///        └──────────────▶ closed     └──────▶ closing        └──────▶ closing       └─▶ closed
/// ```
/// Deadlines: handshake timeout, then HELLO timeout, then 1.5 × keepalive after the last
/// frame, then the close grace; besides these, a frame that started must complete within the
/// frame timeout (while the gateway reads), and output that the device does not read must
/// drain within the write-stall timeout.
///
/// What bounds a device's cost (`docs/security.md`):
/// - `inflight` counts QoS 1 PUBLISH frames not yet answered; one past `maxInflight` is a
///   protocol error (the device ignored WELCOME).
/// - `pending` counts every uplink (QoS 0 too) waiting for its backends; reading pauses at
///   `maxPending`, and a QoS 0 message decoded beyond it (from bytes already read) is dropped.
/// - Reading also pauses while the connection is not writable (the device does not read), and
///   until the session's connected event has its outcome, so that backends see it first.
/// - Token buckets refuse messages above the device's rate; a device that keeps sending while
///   refused is closed.
public struct DeviceSessionStateMachine: Sendable {
    public enum State: Hashable, Sendable {
        case awaitingHandshake
        case awaitingHello
        case established
        case closing
        case closed
    }

    public enum CloseAction: Hashable, Sendable {
        /// Send GOAWAY, then close once inflight work is answered (or the grace ends).
        case goAway(GoAway)
        /// Close without a frame (nothing can be sent, e.g. before TLS completed).
        case closeSilently(TerminusCode)
        case none
    }

    public enum ReadAction: Hashable, Sendable {
        case pause
        case resume
        case none
    }

    /// What to do with a PUBLISH that passed validation.
    public enum OnReceivedPublish: Hashable, Sendable {
        /// Hand it to the sink; `pause` when reading must stop now.
        case deliver(pause: Bool)
        /// Above the device's rate: QoS 1 gets `ACK(RATE_LIMITED)`, QoS 0 is dropped.
        case refuse(retryAfterSeconds: UInt16)
        /// QoS 0 beyond the pending limit (decoded from bytes already read): dropped.
        case drop
    }

    public private(set) var state: State
    /// QoS 1 messages waiting for their outcome.
    public private(set) var inflight: Int32 = 0
    /// Uplinks of either QoS waiting for their outcome.
    public private(set) var pending: Int32 = 0
    public private(set) var keepaliveSeconds: UInt16 = 0
    /// Refused messages since the last admitted one.
    public private(set) var refusalsInARow: UInt16 = 0
    /// The device's connected event is on its way to the backends: hold the device's messages.
    public private(set) var awaitingConnectedEvent = false
    /// The handshake, HELLO, keepalive or close-grace deadline.
    private var stateDeadline: NIODeadline
    /// When the connection stopped being writable; nil while it is.
    private var outputBlockedSince: NIODeadline?
    /// When the first bytes of the frame being read arrived; nil between frames.
    private var frameStartedAt: NIODeadline?
    private var rate: UplinkRateLimiter

    let timeouts: Timeouts
    let maxInflight: Int32
    let maxPending: Int32

    /// The timeouts a session obeys (from `EdgeSettings`).
    public struct Timeouts: Hashable, Sendable {
        public var handshake: TimeAmount
        public var hello: TimeAmount
        public var closeGrace: TimeAmount
        public var frame: TimeAmount
        public var writeStall: TimeAmount

        public init(
            handshake: TimeAmount,
            hello: TimeAmount,
            closeGrace: TimeAmount,
            frame: TimeAmount = .seconds(30),
            writeStall: TimeAmount = .seconds(30)
        ) {
            self.handshake = handshake
            self.hello = hello
            self.closeGrace = closeGrace
            self.frame = frame
            self.writeStall = writeStall
        }
    }

    public init(
        usesTLS: Bool,
        now: NIODeadline,
        timeouts: Timeouts,
        maxInflight: Int,
        maxPending: Int? = nil,
        rateLimits: UplinkRateLimits = .unlimited
    ) {
        self.state = usesTLS ? .awaitingHandshake : .awaitingHello
        self.stateDeadline = now + (usesTLS ? timeouts.handshake : timeouts.hello)
        self.timeouts = timeouts
        self.maxInflight = Int32(clamping: maxInflight)
        self.maxPending = Int32(clamping: max(maxPending ?? 2 * maxInflight, maxInflight))
        self.rate = UplinkRateLimiter(limits: rateLimits, now: now)
    }

    /// Convenience for callers that only set the classic timeouts.
    public init(
        usesTLS: Bool,
        now: NIODeadline,
        handshakeTimeout: TimeAmount,
        helloTimeout: TimeAmount,
        closeGrace: TimeAmount,
        maxInflight: Int
    ) {
        self.init(
            usesTLS: usesTLS,
            now: now,
            timeouts: Timeouts(handshake: handshakeTimeout, hello: helloTimeout, closeGrace: closeGrace),
            maxInflight: maxInflight
        )
    }

    // MARK: Reading

    /// Whether the handler must not ask the channel for more bytes.
    public var readsPaused: Bool {
        self.inflight >= self.maxInflight || self.pending >= self.maxPending || self.decodingHeld
    }

    /// Whether the handler must not even decode the bytes it already has (they stay buffered,
    /// at most one read's worth): the device's output is stuck, or its connected event is
    /// still on its way.
    public var decodingHeld: Bool {
        self.outputBlockedSince != nil || self.awaitingConnectedEvent
    }

    /// The earliest deadline the timer wheel must wake the session at.
    public var deadline: NIODeadline {
        var deadline = self.stateDeadline
        if let blocked = self.outputBlockedSince { deadline = min(deadline, blocked + self.timeouts.writeStall) }
        if let started = self.frameStartedAt, !self.readsPaused {
            deadline = min(deadline, started + self.timeouts.frame)
        }
        return deadline
    }

    public mutating func handshakeCompleted(now: NIODeadline) {
        guard self.state == .awaitingHandshake else { return }
        self.state = .awaitingHello
        self.stateDeadline = now + self.timeouts.hello
    }

    /// A HELLO was authenticated; the session is established with `keepalive` seconds.
    public mutating func established(keepalive: UInt16, now: NIODeadline) {
        guard self.state == .awaitingHello else { return }
        self.state = .established
        self.keepaliveSeconds = keepalive
        self.stateDeadline = self.idleDeadline(now)
    }

    /// Any frame from the device counts as activity.
    public mutating func frameReceived(now: NIODeadline) {
        if self.state == .established { self.stateDeadline = self.idleDeadline(now) }
    }

    /// Whether the frame timeout is running (bytes of an unfinished frame are buffered).
    public var hasPartialFrame: Bool { self.frameStartedAt != nil }

    /// After decoding what arrived: whether an unfinished frame's bytes are buffered. The frame
    /// timeout runs from the read that brought its first bytes, and restarts when reading
    /// resumes after a pause (the gateway, not the device, held it up).
    public mutating func partialFrame(_ buffered: Bool, now: NIODeadline) {
        if !buffered {
            self.frameStartedAt = nil
        } else if self.frameStartedAt == nil {
            self.frameStartedAt = now
        }
    }

    // MARK: Uplink

    /// A PUBLISH passed validation; `payloadBytes` is its inflated size.
    /// Throws `INFLIGHT_EXCEEDED` when the device exceeded the WELCOME limit, and
    /// `RATE_LIMITED` when it went on sending after `refusalsBeforeClose` refusals.
    public mutating func publishReceived(
        qos: QoS,
        payloadBytes: Int,
        limits: UplinkRateLimits,
        now: NIODeadline
    ) throws(ProtocolError) -> OnReceivedPublish {
        if qos == .atLeastOnce && self.inflight >= self.maxInflight {
            throw ProtocolError(.inflightExceeded, "more than \(self.maxInflight) unacknowledged messages")
        }
        if case .refused(let seconds) = self.rate.admit(bytes: payloadBytes, limits: limits, now: now) {
            self.refusalsInARow &+= 1
            if limits.refusalsBeforeClose > 0 && Int(self.refusalsInARow) >= limits.refusalsBeforeClose {
                throw ProtocolError(.rateLimited, "\(self.refusalsInARow) messages in a row above the rate limit")
            }
            return .refuse(retryAfterSeconds: seconds)
        }
        self.refusalsInARow = 0
        if qos == .atMostOnce && self.pending >= self.maxPending { return .drop }
        let wasPaused = self.readsPaused
        self.pending += 1
        if qos == .atLeastOnce { self.inflight += 1 }
        return .deliver(pause: !wasPaused && self.readsPaused)
    }

    /// An uplink's outcome arrived. Returns whether reading may resume, and whether the
    /// session may now close (it was closing and nothing else waits).
    public mutating func deliveryCompleted(qos: QoS) -> (read: ReadAction, closeNow: Bool) {
        let wasPaused = self.readsPaused
        self.pending = max(0, self.pending - 1)
        if qos == .atLeastOnce { self.inflight = max(0, self.inflight - 1) }
        let read: ReadAction = wasPaused && !self.readsPaused && self.state == .established ? .resume : .none
        return (read, self.state == .closing && self.inflight == 0)
    }

    /// The session's connected event was handed to the sink: hold the device's messages until
    /// its outcome, so that no backend sees a message of this connection before it.
    public mutating func connectedEventPublished() {
        self.awaitingConnectedEvent = true
    }

    public mutating func connectedEventCompleted() -> ReadAction {
        guard self.awaitingConnectedEvent else { return .none }
        self.awaitingConnectedEvent = false
        return !self.readsPaused && self.state == .established ? .resume : .none
    }

    // MARK: Output

    /// The channel's writability changed (the device reads, or stopped reading, what we send).
    public mutating func writabilityChanged(writable: Bool, now: NIODeadline) -> ReadAction {
        let wasPaused = self.readsPaused
        if writable {
            self.outputBlockedSince = nil
        } else if self.outputBlockedSince == nil {
            self.outputBlockedSince = now
        }
        if wasPaused == self.readsPaused { return .none }
        return self.readsPaused ? .pause : .resume
    }

    /// Whether a PUSH may be written now (the device reads what it is sent).
    public var acceptsPushes: Bool { self.state == .established && self.outputBlockedSince == nil }

    // MARK: Closing

    /// The session must end with `code` (error, timeout, takeover, drain).
    /// - Returns: what to send; `closeNow` when nothing waits for outstanding outcomes.
    public mutating func close(
        _ code: TerminusCode,
        reconnectAfterMilliseconds: UInt32 = 0,
        message: String = "",
        now: NIODeadline
    ) -> (action: CloseAction, closeNow: Bool) {
        switch self.state {
        case .closing, .closed:
            return (.none, false)
        case .awaitingHandshake:
            self.state = .closed
            return (.closeSilently(code), true)
        case .awaitingHello, .established:
            if code == .slowConsumer {
                // The device reads nothing: a GOAWAY would only queue behind what it ignores.
                self.state = .closed
                return (.closeSilently(code), true)
            }
            self.state = .closing
            self.stateDeadline = now + self.timeouts.closeGrace
            self.frameStartedAt = nil
            let goAway = GoAway(code: code, reconnectAfterMilliseconds: reconnectAfterMilliseconds, message: message)
            // A protocol error closes at once; an orderly GOAWAY, or one for the device's rate,
            // lets outcomes reach the device (it would resend them otherwise).
            let waits = code.isOrderlyClose || code == .rateLimited
            return (.goAway(goAway), !waits || self.inflight == 0)
        }
    }

    /// The connection is gone.
    public mutating func closed() {
        self.state = .closed
    }

    /// The timer wheel woke the session.
    /// - Returns: the code to close with, or nil (re-arm at `deadline`).
    public func timerFired(now: NIODeadline) -> TerminusCode? {
        guard now >= self.deadline else { return nil }
        if self.state == .closing { return now >= self.stateDeadline ? .internalError : nil }  // grace over
        if self.state == .closed { return nil }
        if let blocked = self.outputBlockedSince, now >= blocked + self.timeouts.writeStall { return .slowConsumer }
        if now < self.stateDeadline { return .frameTimeout }
        switch self.state {
        case .awaitingHandshake: return .handshakeTimeout
        case .awaitingHello: return .helloTimeout
        case .established: return .keepaliveTimeout
        case .closing, .closed: return nil
        }
    }

    private func idleDeadline(_ now: NIODeadline) -> NIODeadline {
        now + .milliseconds(Int64(self.keepaliveSeconds) * 1500)
    }
}

extension TerminusCode {
    /// Closes that are nobody's fault: outstanding outcomes still reach the device before the
    /// connection closes, and the log line is `info`, not `notice`.
    public var isOrderlyClose: Bool {
        self == .ok || self == .shuttingDown || self == .replaced || self == .kicked
    }
}
