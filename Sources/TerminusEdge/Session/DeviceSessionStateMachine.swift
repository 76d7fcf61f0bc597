package import NIOCore
package import TerminusProtocol

/// Every decision about one device connection, without I/O and without a wire format: the
/// handler (a codec: wire protocol v1 today) feeds it neutral events, one `receivedX` or
/// `xHappened` call each, and carries out the action it returns (the split of grpc-swift-2's
/// `ServerConnectionManagementHandler` and its state machine).
///
/// ```
/// awaitingHandshake ─TLS done─▶ awaitingCredential ─authenticated─▶ established
///        │ timeout                   │ timeout/refused                 │ close (error, timeout, goodbye, drain…)
///        └───────────────────────────┴─────────────────────────────────┴──▶ closing ─connection gone─▶ closed
/// ```
/// `closing` lasts until the connection is gone: at once after the close frame is flushed, or
/// once the outcomes still owed reach the device, and at most the close grace.
/// Each state carries its own data: the deadline it waits for, and once established the
/// device id, keepalive and uplink accounting, which `closing` and `closed` keep until the
/// last outcome (the disconnected event waits for it).
///
/// Deadlines: handshake timeout, then credential timeout, then 1.5 × keepalive after the last
/// message, then the close grace; besides these, a frame that started must complete within the
/// frame timeout (while the gateway reads), and output that the device does not read must
/// drain within the write-stall timeout.
///
/// What bounds a device's cost (`docs/security.md`):
/// - `inflight` counts QoS 1 messages not yet answered; one past `maxInflight` closes the
///   session (`inflightExceeded`: the device ignored the announced window).
/// - `pending` counts every uplink (QoS 0 too) waiting for its backends; reading pauses at
///   `maxPending`, and a QoS 0 message decoded beyond it (from bytes already read) is dropped.
/// - Reading also pauses while the connection is not writable (the device does not read), and
///   until the session's connected event has its outcome, so that backends see it first.
/// - Token buckets refuse messages above the device's rate; a device that keeps sending while
///   refused is closed.
package struct DeviceSessionStateMachine: Sendable {
    /// The state without its data, for logs, metrics and tests.
    package enum Phase: Hashable, Sendable {
        case awaitingHandshake
        case awaitingCredential
        case established
        case closing
        case closed
    }

    /// Uplink accounting, from authentication until the last outcome.
    struct Uplinks: Sendable {
        /// QoS 1 messages waiting for their outcome.
        var inflight: Int32 = 0
        /// Uplinks of either QoS (and the connected event) waiting for their outcome.
        var pending: Int32 = 0
        /// The connected event is on its way to the backends: hold the device's messages.
        var awaitingConnectedEvent = false
        /// Refused messages since the last admitted one.
        var refusalsInARow: UInt16 = 0
        var rate: UplinkRateLimiter
    }

    struct Established: Sendable {
        var deviceID: String
        var keepaliveSeconds: UInt16
        /// 1.5 × keepalive after the last message.
        var idleDeadline: NIODeadline
        var uplinks: Uplinks
    }

    /// Decided to close; the connection is not gone yet. The close grace bounds how long it
    /// may take (the close frame may sit behind output the device does not read).
    struct Closing: Sendable {
        var reason: SessionCloseReason
        var graceDeadline: NIODeadline
        /// Nil when the session closed before it was established.
        var deviceID: String?
        var uplinks: Uplinks?
        /// The connection closes once the QoS 1 outcomes still owed are written.
        var awaitingOutcomes: Bool
    }

    struct Closed: Sendable {
        /// Nil when the device went away without saying why (a clean TCP close).
        var reason: SessionCloseReason?
        var deviceID: String?
        var uplinks: Uplinks?
        /// The disconnected event is owed once the connection is gone and nothing is pending.
        var disconnectedEventDue = false
    }

    enum State: Sendable {
        case awaitingHandshake(deadline: NIODeadline)
        case awaitingCredential(deadline: NIODeadline)
        case established(Established)
        case closing(Closing)
        case closed(Closed)
    }

    /// How to end the connection.
    package enum CloseAction: Hashable, Sendable {
        /// Send the codec's close frame (v1 GOAWAY) with `reason`; then close now, or (when
        /// `closeNow` is false) once the outcomes still owed are written or the grace ends.
        case goAway(SessionCloseReason, reconnectAfterMilliseconds: UInt32, closeNow: Bool)
        /// Close without a frame: nothing can be sent (before TLS completed, or the device
        /// reads nothing).
        case closeSilently(SessionCloseReason)
        /// Already closing or closed.
        case none
    }

    package enum ReadAction: Hashable, Sendable {
        case pause
        case resume
        case none
    }

    /// A credential (v1 HELLO) arrived.
    package enum OnReceivedCredential: Hashable, Sendable {
        /// Authenticate it, then call `authenticated` or `authenticationFailed`.
        case authenticate
        case close(CloseAction)
        /// The session is closing: the device's messages no longer matter.
        case ignore
    }

    /// What to do with a message that passed the codec's validation.
    package enum OnReceivedPublish: Hashable, Sendable {
        /// Hand it to the sink; `pause` when reading must stop now.
        case deliver(pause: Bool)
        /// Above the device's rate: QoS 1 gets a refusal (v1 `ACK(RATE_LIMITED)`), QoS 0 is dropped.
        case refuse(retryAfterSeconds: UInt16)
        /// QoS 0 beyond the pending limit (decoded from bytes already read): dropped.
        case drop
        case close(CloseAction)
        case ignore
    }

    /// A keepalive probe, an acknowledgement of a push, or any other control message.
    package enum OnReceivedControl: Hashable, Sendable {
        /// Valid here: answer it (PONG) or complete the push it acknowledges.
        case handle
        case close(CloseAction)
        case ignore
    }

    /// The device said goodbye (v1 GOAWAY from the device).
    package enum OnReceivedGoodbye: Hashable, Sendable {
        case closeNow
        case close(CloseAction)
        case ignore
    }

    /// A push (downlink) was requested.
    package enum OnPushRequested: Hashable, Sendable {
        case write
        /// The device does not read what it is sent: nothing more is queued toward it.
        case refuseSlowConsumer
        case notConnected
    }

    /// An uplink's (or the connected event's) outcome arrived.
    package struct OnDeliveryCompleted: Hashable, Sendable {
        /// Write the outcome to the device (v1 ACK): QoS 1, on a connection still open.
        package var acknowledge = false
        package var resumeReading = false
        /// The session was closing and nothing else is owed: flush and close.
        package var closeNow = false
        /// The connection is gone and this was the last outcome: the disconnected event is due.
        package var publishDisconnectedEvent = false
    }

    /// The connection is gone.
    package struct OnChannelInactive: Hashable, Sendable {
        /// Why, for the log line and the disconnected event; nil when the device closed cleanly
        /// without saying goodbye.
        package var reason: SessionCloseReason?
        /// The session was established: log it, unregister it, and owe its disconnected event.
        package var wasEstablished = false
        /// Nothing is pending any more: the disconnected event is due now.
        package var publishDisconnectedEvent = false
    }

    package enum OnTimerFired: Hashable, Sendable {
        /// Nothing is due yet: wake again at this deadline.
        case rearm(NIODeadline)
        case close(CloseAction)
        /// The close grace ended with outcomes still owed: close without waiting any longer.
        case forceClose
        /// Closed: forget the timer.
        case stop
    }

    private var state: State
    /// When the connection stopped being writable; nil while it is.
    private var outputBlockedSince: NIODeadline?
    /// When the first bytes of the frame being read arrived; nil between frames.
    private var frameStartedAt: NIODeadline?
    private let rateLimits: UplinkRateLimits
    let timeouts: Timeouts
    let maxInflight: Int32
    let maxPending: Int32

    /// The timeouts a session obeys (from `EdgeSettings`).
    package struct Timeouts: Hashable, Sendable {
        package var handshake: TimeAmount
        /// From a ready transport to the credential (v1 HELLO).
        package var hello: TimeAmount
        package var closeGrace: TimeAmount
        package var frame: TimeAmount
        package var writeStall: TimeAmount

        package init(
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

    package init(
        usesTLS: Bool,
        now: NIODeadline,
        timeouts: Timeouts,
        maxInflight: Int,
        maxPending: Int? = nil,
        rateLimits: UplinkRateLimits = .unlimited
    ) {
        self.state =
            usesTLS
            ? .awaitingHandshake(deadline: now + timeouts.handshake)
            : .awaitingCredential(deadline: now + timeouts.hello)
        self.timeouts = timeouts
        self.maxInflight = Int32(clamping: maxInflight)
        self.maxPending = Int32(clamping: max(maxPending ?? 2 * maxInflight, maxInflight))
        self.rateLimits = rateLimits
    }

    // MARK: Reading the state

    package var phase: Phase {
        switch self.state {
        case .awaitingHandshake: .awaitingHandshake
        case .awaitingCredential: .awaitingCredential
        case .established: .established
        case .closing: .closing
        case .closed: .closed
        }
    }

    /// The authenticated device, from `authenticated` on (also while closing and closed).
    package var deviceID: String? {
        switch self.state {
        case .awaitingHandshake, .awaitingCredential: nil
        case .established(let established): established.deviceID
        case .closing(let closing): closing.deviceID
        case .closed(let closed): closed.deviceID
        }
    }

    /// The reason the session is closing or closed with, once decided.
    package var closeReason: SessionCloseReason? {
        switch self.state {
        case .closing(let closing): closing.reason
        case .closed(let closed): closed.reason
        default: nil
        }
    }

    package var keepaliveSeconds: UInt16 {
        if case .established(let established) = self.state { return established.keepaliveSeconds }
        return 0
    }

    private var uplinks: Uplinks? {
        switch self.state {
        case .awaitingHandshake, .awaitingCredential: nil
        case .established(let established): established.uplinks
        case .closing(let closing): closing.uplinks
        case .closed(let closed): closed.uplinks
        }
    }

    /// QoS 1 messages waiting for their outcome.
    package var inflight: Int32 { self.uplinks?.inflight ?? 0 }
    /// Uplinks of either QoS waiting for their outcome.
    package var pending: Int32 { self.uplinks?.pending ?? 0 }

    /// Whether the handler must not ask the channel for more bytes.
    package var readsPaused: Bool {
        guard case .established(let established) = self.state else { return self.outputBlockedSince != nil }
        let uplinks = established.uplinks
        return uplinks.inflight >= self.maxInflight || uplinks.pending >= self.maxPending || self.decodingHeld
    }

    /// Whether the handler must not even decode the bytes it already has (they stay buffered,
    /// at most one read's worth): the device's output is stuck, or its connected event is
    /// still on its way.
    package var decodingHeld: Bool {
        if self.outputBlockedSince != nil { return true }
        if case .established(let established) = self.state { return established.uplinks.awaitingConnectedEvent }
        return false
    }

    /// Whether bytes arriving now are still decoded: not once the session is closing (the
    /// device's messages no longer matter).
    package var isReading: Bool {
        switch self.state {
        case .closing, .closed: false
        default: true
        }
    }

    /// Whether the frame timeout is running (bytes of an unfinished frame are buffered).
    package var hasPartialFrame: Bool { self.frameStartedAt != nil }

    /// Whether a push may be written now (the device reads what it is sent).
    package var acceptsPushes: Bool {
        if case .established = self.state { return self.outputBlockedSince == nil }
        return false
    }

    /// The earliest deadline the timer wheel must wake the session at.
    package var deadline: NIODeadline {
        var deadline: NIODeadline
        switch self.state {
        case .awaitingHandshake(let at), .awaitingCredential(let at): deadline = at
        case .established(let established): deadline = established.idleDeadline
        case .closing(let closing): return closing.graceDeadline
        case .closed: return .distantFuture
        }
        if let blocked = self.outputBlockedSince { deadline = min(deadline, blocked + self.timeouts.writeStall) }
        if let started = self.frameStartedAt, !self.readsPaused {
            deadline = min(deadline, started + self.timeouts.frame)
        }
        return deadline
    }

    // MARK: Transport

    /// When the TLS handshake started (the connection was accepted), while it runs.
    package var handshakeStartedAt: NIODeadline? {
        guard case .awaitingHandshake(let deadline) = self.state else { return nil }
        return deadline - self.timeouts.handshake
    }

    package mutating func handshakeCompleted(now: NIODeadline) {
        guard case .awaitingHandshake = self.state else { return }
        self.state = .awaitingCredential(deadline: now + self.timeouts.hello)
    }

    /// After decoding what arrived: whether an unfinished frame's bytes are buffered. The frame
    /// timeout runs from the read that brought its first bytes, and restarts when reading
    /// resumes after a pause (the gateway, not the device, held it up).
    package mutating func partialFrame(_ buffered: Bool, now: NIODeadline) {
        if !buffered {
            self.frameStartedAt = nil
        } else if self.frameStartedAt == nil {
            self.frameStartedAt = now
        }
    }

    /// The channel's writability changed (the device reads, or stopped reading, what we send).
    package mutating func writabilityChanged(writable: Bool, now: NIODeadline) -> ReadAction {
        let wasPaused = self.readsPaused
        if writable {
            self.outputBlockedSince = nil
        } else if self.outputBlockedSince == nil {
            self.outputBlockedSince = now
        }
        if wasPaused == self.readsPaused { return .none }
        return self.readsPaused ? .pause : .resume
    }

    // MARK: Messages from the device

    /// A credential (v1 HELLO) arrived. `draining` and `throttledForMilliseconds` (the
    /// authentication throttle's wait for the client's address) refuse it before any work.
    package mutating func receivedCredential(
        now: NIODeadline,
        draining: Bool = false,
        drainReconnectAfterMilliseconds: UInt32 = 0,
        throttledForMilliseconds: UInt32? = nil
    ) -> OnReceivedCredential {
        switch self.state {
        case .awaitingCredential:
            if draining {
                return .close(
                    self.close(.shuttingDown, reconnectAfterMilliseconds: drainReconnectAfterMilliseconds, now: now)
                )
            }
            if let wait = throttledForMilliseconds {
                return .close(self.close(.authenticationThrottled, reconnectAfterMilliseconds: wait, now: now))
            }
            return .authenticate
        case .closing, .closed:
            return .ignore
        case .awaitingHandshake, .established:
            return .close(self.close(.unexpectedMessage, now: now))
        }
    }

    /// The credential was accepted: the session is established as `deviceID`.
    package mutating func authenticated(deviceID: String, keepaliveSeconds: UInt16, now: NIODeadline) {
        guard case .awaitingCredential = self.state else { return }
        self.state = .established(
            Established(
                deviceID: deviceID,
                keepaliveSeconds: keepaliveSeconds,
                idleDeadline: Self.idleDeadline(keepaliveSeconds, now),
                uplinks: Uplinks(rate: UplinkRateLimiter(limits: self.rateLimits, now: now))
            )
        )
    }

    /// The credential was refused.
    package mutating func authenticationFailed(_ failure: AuthenticationFailure, now: NIODeadline) -> CloseAction {
        self.close(.authentication(failure), now: now)
    }

    /// A message (v1 PUBLISH) that passed the codec's validation; `payloadBytes` is its
    /// inflated size.
    package mutating func receivedPublish(qos: QoS, payloadBytes: Int, now: NIODeadline) -> OnReceivedPublish {
        guard case .established(var established) = self.state else {
            if case .closing = self.state { return .ignore }
            if case .closed = self.state { return .ignore }
            return .close(self.close(.unexpectedMessage, now: now))
        }
        established.idleDeadline = Self.idleDeadline(established.keepaliveSeconds, now)
        if qos == .atLeastOnce && established.uplinks.inflight >= self.maxInflight {
            self.state = .established(established)
            return .close(self.close(.inflightExceeded, now: now))
        }
        if case .refused(let seconds) = established.uplinks.rate.admit(
            bytes: payloadBytes,
            limits: self.rateLimits,
            now: now
        ) {
            established.uplinks.refusalsInARow &+= 1
            self.state = .established(established)
            let limit = self.rateLimits.refusalsBeforeClose
            if limit > 0 && Int(established.uplinks.refusalsInARow) >= limit {
                return .close(self.close(.rateLimited, now: now))
            }
            return .refuse(retryAfterSeconds: seconds)
        }
        established.uplinks.refusalsInARow = 0
        if qos == .atMostOnce && established.uplinks.pending >= self.maxPending {
            self.state = .established(established)
            return .drop
        }
        let wasPaused = self.readsPaused
        established.uplinks.pending += 1
        if qos == .atLeastOnce { established.uplinks.inflight += 1 }
        self.state = .established(established)
        return .deliver(pause: !wasPaused && self.readsPaused)
    }

    /// A keepalive probe (v1 PING) or an acknowledgement of a push (v1 ACK): valid once
    /// established; any message counts as activity.
    package mutating func receivedControl(now: NIODeadline) -> OnReceivedControl {
        switch self.state {
        case .established(var established):
            established.idleDeadline = Self.idleDeadline(established.keepaliveSeconds, now)
            self.state = .established(established)
            return .handle
        case .closing, .closed:
            return .ignore
        case .awaitingHandshake, .awaitingCredential:
            return .close(self.close(.unexpectedMessage, now: now))
        }
    }

    /// The device said goodbye (v1 GOAWAY): close at once, nothing more is owed to it.
    package mutating func receivedGoodbye(now: NIODeadline) -> OnReceivedGoodbye {
        switch self.state {
        case .awaitingCredential, .established:
            self.enterClosing(.normal, awaitingOutcomes: false, now: now)
            return .closeNow
        case .closing, .closed:
            return .ignore
        case .awaitingHandshake:
            return .close(self.close(.unexpectedMessage, now: now))
        }
    }

    /// The codec could not make sense of the device's bytes (`code` is its own).
    package mutating func protocolViolation(code: UInt16, now: NIODeadline) -> CloseAction {
        self.close(.protocolViolation(code: code), now: now)
    }

    // MARK: Outcomes

    /// The session's connected event was handed to the sink: hold the device's messages until
    /// its outcome, so that no backend sees a message of this connection before it.
    package mutating func connectedEventPublished() {
        guard case .established(var established) = self.state else { return }
        established.uplinks.awaitingConnectedEvent = true
        established.uplinks.pending += 1
        self.state = .established(established)
    }

    /// An outcome arrived for an uplink of `qos`, or (`qos` nil) for the connected event.
    package mutating func deliveryCompleted(qos: QoS?) -> OnDeliveryCompleted {
        let wasPaused = self.readsPaused
        var action = OnDeliveryCompleted()
        switch self.state {
        case .awaitingHandshake, .awaitingCredential:
            return action
        case .established(var established):
            Self.complete(&established.uplinks, qos: qos)
            self.state = .established(established)
            action.acknowledge = qos == .atLeastOnce
            action.resumeReading = wasPaused && !self.readsPaused
        case .closing(var closing):
            if closing.uplinks != nil { Self.complete(&closing.uplinks!, qos: qos) }
            if closing.awaitingOutcomes {
                action.acknowledge = qos == .atLeastOnce
                if (closing.uplinks?.inflight ?? 0) == 0 {
                    closing.awaitingOutcomes = false
                    action.closeNow = true
                }
            }
            self.state = .closing(closing)
        case .closed(var closed):
            if closed.uplinks != nil { Self.complete(&closed.uplinks!, qos: qos) }
            if closed.disconnectedEventDue && (closed.uplinks?.pending ?? 0) == 0 {
                closed.disconnectedEventDue = false
                action.publishDisconnectedEvent = true
            }
            self.state = .closed(closed)
        }
        return action
    }

    private static func complete(_ uplinks: inout Uplinks, qos: QoS?) {
        uplinks.pending = max(0, uplinks.pending - 1)
        switch qos {
        case .atLeastOnce: uplinks.inflight = max(0, uplinks.inflight - 1)
        case .atMostOnce: break
        case nil: uplinks.awaitingConnectedEvent = false
        }
    }

    // MARK: Downlink

    package func pushRequested() -> OnPushRequested {
        guard case .established = self.state else { return .notConnected }
        return self.outputBlockedSince == nil ? .write : .refuseSlowConsumer
    }

    // MARK: Closing

    /// The session must end with `reason` (error, timeout, takeover, drain, kick, eviction).
    /// `reconnectAfterMilliseconds` defaults to the reason's own suggestion.
    /// - Parameter outcomesUntil: when the outcomes still owed may take longer than the close
    ///   grace (a drain: the gateway answers what is in flight when it ends); the session then
    ///   waits for them until this deadline.
    package mutating func close(
        _ reason: SessionCloseReason,
        reconnectAfterMilliseconds: UInt32? = nil,
        outcomesUntil: NIODeadline? = nil,
        now: NIODeadline
    ) -> CloseAction {
        let reconnectAfter = reconnectAfterMilliseconds ?? reason.defaultReconnectAfterMilliseconds
        switch self.state {
        case .closing, .closed:
            return .none
        case .awaitingHandshake:
            self.enterClosing(reason, awaitingOutcomes: false, now: now)
            return .closeSilently(reason)
        case .awaitingCredential, .established:
            if reason.isSilent {
                self.enterClosing(reason, awaitingOutcomes: false, now: now)
                return .closeSilently(reason)
            }
            // A protocol error closes at once; an orderly close, or one for the device's rate,
            // lets the outcomes still owed reach the device (it would resend them otherwise).
            let closeNow = !reason.waitsForOutcomes || self.inflight == 0
            self.enterClosing(reason, awaitingOutcomes: !closeNow, until: closeNow ? nil : outcomesUntil, now: now)
            return .goAway(reason, reconnectAfterMilliseconds: reconnectAfter, closeNow: closeNow)
        }
    }

    private mutating func enterClosing(
        _ reason: SessionCloseReason,
        awaitingOutcomes: Bool,
        until: NIODeadline? = nil,
        now: NIODeadline
    ) {
        self.frameStartedAt = nil
        self.state = .closing(
            Closing(
                reason: reason,
                graceDeadline: max(now + self.timeouts.closeGrace, until ?? now),
                deviceID: self.deviceID,
                uplinks: self.uplinks,
                awaitingOutcomes: awaitingOutcomes
            )
        )
    }

    /// The transport failed under the session (reset, TLS error): close without a frame.
    /// Returns the reason to log, or nil when the session was closing already (its own
    /// reason stands).
    package mutating func transportFailed(_ reason: SessionCloseReason, now: NIODeadline) -> SessionCloseReason? {
        switch self.state {
        case .closing, .closed:
            return nil
        default:
            self.enterClosing(reason, awaitingOutcomes: false, now: now)
            return reason
        }
    }

    /// The connection is gone. `partialFrame`: it went in the middle of a frame.
    package mutating func channelInactive(partialFrame: Bool) -> OnChannelInactive {
        var closed: Closed
        switch self.state {
        case .closed(let already):
            closed = already
        case .closing(let closing):
            closed = Closed(reason: closing.reason, deviceID: closing.deviceID, uplinks: closing.uplinks)
        default:
            // The device went away without a goodbye: in the middle of a frame it is unclean.
            closed = Closed(
                reason: partialFrame ? .uncleanShutdown : nil,
                deviceID: self.deviceID,
                uplinks: self.uplinks
            )
        }
        var action = OnChannelInactive(reason: closed.reason)
        if closed.deviceID != nil && closed.uplinks != nil {
            action.wasEstablished = true
            if (closed.uplinks?.pending ?? 0) == 0 {
                action.publishDisconnectedEvent = true
            } else {
                closed.disconnectedEventDue = true
            }
        }
        self.state = .closed(closed)
        self.frameStartedAt = nil
        self.outputBlockedSince = nil
        return action
    }

    // MARK: Timers

    /// The timer wheel woke the session.
    package mutating func timerFired(now: NIODeadline) -> OnTimerFired {
        switch self.state {
        case .closed:
            return .stop
        case .closing(var closing):
            guard now >= closing.graceDeadline else { return .rearm(closing.graceDeadline) }
            closing.awaitingOutcomes = false
            self.state = .closing(closing)
            return .forceClose
        case .awaitingHandshake, .awaitingCredential, .established:
            break
        }
        let deadline = self.deadline
        guard now >= deadline else { return .rearm(deadline) }
        if let blocked = self.outputBlockedSince, now >= blocked + self.timeouts.writeStall {
            return .close(self.close(.slowConsumer, now: now))
        }
        let reason: SessionCloseReason
        switch self.state {
        case .awaitingHandshake(let at): reason = now >= at ? .handshakeTimeout : .frameTimeout
        case .awaitingCredential(let at): reason = now >= at ? .credentialTimeout : .frameTimeout
        case .established(let established): reason = now >= established.idleDeadline ? .keepaliveTimeout : .frameTimeout
        case .closing, .closed: return .stop
        }
        return .close(self.close(reason, now: now))
    }

    private static func idleDeadline(_ keepaliveSeconds: UInt16, _ now: NIODeadline) -> NIODeadline {
        now + .milliseconds(Int64(keepaliveSeconds) * 1500)
    }
}
