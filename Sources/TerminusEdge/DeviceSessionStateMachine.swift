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
/// frame, then the close grace. Inflight counts QoS 1 PUBLISH frames not yet acknowledged;
/// reading pauses at the limit and resumes below it.
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

    public private(set) var state: State
    public private(set) var inflight = 0
    public private(set) var readsPaused = false
    public private(set) var deadline: NIODeadline
    public private(set) var keepaliveSeconds: UInt16 = 0

    let maxInflight: Int
    let helloTimeout: TimeAmount
    let closeGrace: TimeAmount

    public init(
        usesTLS: Bool,
        now: NIODeadline,
        handshakeTimeout: TimeAmount,
        helloTimeout: TimeAmount,
        closeGrace: TimeAmount,
        maxInflight: Int
    ) {
        self.state = usesTLS ? .awaitingHandshake : .awaitingHello
        self.deadline = now + (usesTLS ? handshakeTimeout : helloTimeout)
        self.helloTimeout = helloTimeout
        self.closeGrace = closeGrace
        self.maxInflight = maxInflight
    }

    public mutating func handshakeCompleted(now: NIODeadline) {
        guard self.state == .awaitingHandshake else { return }
        self.state = .awaitingHello
        self.deadline = now + self.helloTimeout
    }

    /// A HELLO was authenticated; the session is established with `keepalive` seconds.
    public mutating func established(keepalive: UInt16, now: NIODeadline) {
        guard self.state == .awaitingHello else { return }
        self.state = .established
        self.keepaliveSeconds = keepalive
        self.deadline = self.idleDeadline(now)
    }

    /// Any frame from the device counts as activity.
    public mutating func frameReceived(now: NIODeadline) {
        if self.state == .established { self.deadline = self.idleDeadline(now) }
    }

    /// A QoS 1 PUBLISH passed validation. Throws when the device exceeded the WELCOME limit.
    public mutating func publishAccepted() throws(ProtocolError) -> ReadAction {
        guard self.inflight < self.maxInflight else {
            throw ProtocolError(.inflightExceeded, "more than \(self.maxInflight) unacknowledged messages")
        }
        self.inflight += 1
        if self.inflight >= self.maxInflight && !self.readsPaused {
            self.readsPaused = true
            return .pause
        }
        return .none
    }

    /// A QoS 1 message's outcome arrived. Returns whether the session may now close.
    public mutating func deliveryCompleted() -> (read: ReadAction, closeNow: Bool) {
        self.inflight = max(0, self.inflight - 1)
        var read = ReadAction.none
        if self.readsPaused && self.inflight < self.maxInflight && self.state == .established {
            self.readsPaused = false
            read = .resume
        }
        return (read, self.state == .closing && self.inflight == 0)
    }

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
            self.state = .closing
            self.deadline = now + self.closeGrace
            let goAway = GoAway(code: code, reconnectAfterMilliseconds: reconnectAfterMilliseconds, message: message)
            // A protocol error closes at once; an orderly GOAWAY lets outcomes reach the device.
            let orderly = code == .shuttingDown || code == .replaced || code == .kicked
            return (.goAway(goAway), !orderly || self.inflight == 0)
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
        switch self.state {
        case .awaitingHandshake: return .handshakeTimeout
        case .awaitingHello: return .helloTimeout
        case .established: return .keepaliveTimeout
        case .closing: return .internalError  // grace over: cut the connection
        case .closed: return nil
        }
    }

    private func idleDeadline(_ now: NIODeadline) -> NIODeadline {
        now + .milliseconds(Int64(self.keepaliveSeconds) * 1500)
    }
}
