internal import NIOCore
internal import TerminusMetrics
internal import TerminusProtocol

/// The device listener's counts on one event loop: plain integers, confined to the loop (no
/// lock, no atomic on the hot path). `EdgeServer` reads every loop's at a scrape.
final class EdgeLoopMetrics {
    /// Where a connection is counted in `terminus_connections`.
    enum Phase: UInt8 {
        case handshake, authenticating, established, closed
    }

    var accepted = 0
    private var open: [Int] = [0, 0, 0]  // by Phase, closed excluded
    /// Connections open on this loop, in any phase.
    var openConnections: Int { self.open.reduce(0, +) }
    var handshakesCompleted = 0
    var handshakeDuration = LoopHistogram(bounds: LoopHistogram.latencyBounds)
    var authentications = 0
    var disconnects: [String: Int] = [:]
    var handshakeFailures: [String: Int] = [:]
    var authRefusals: [String: Int] = [:]
    var protocolErrors: [String: Int] = [:]
    var framesReceived = 0
    var framesSent = 0
    var bytesReceived = 0
    var bytesSent = 0
    var inflateInput = 0
    var inflateOutput = 0
    /// Uplink messages by outcome, and the publish→ack latency: one stored property, so that a
    /// message's outcome is counted with one exclusivity check at run time, not two (an access
    /// to a class's stored property is checked when its span holds a call the optimizer cannot
    /// see through, such as an array's subscript or the histogram's `record`; callgrind,
    /// `hot-path`).
    private var outcomes = Outcomes()
    var pausedDevices = 0

    enum UplinkOutcome: Int, CaseIterable {
        case ok, noRoute, rejected, retryLater, rateLimited, dropped

        var label: String {
            switch self {
            case .ok: "ok"
            case .noRoute: "no_route"
            case .rejected: "rejected"
            case .retryLater: "retry_later"
            case .rateLimited: "rate_limited"
            case .dropped: "dropped"
            }
        }
    }

    func moved(from old: Phase, to new: Phase) {
        if old != .closed { self.open[Int(old.rawValue)] -= 1 }
        if new != .closed { self.open[Int(new.rawValue)] += 1 }
    }

    /// Counts `count` uplink messages of `qos` that ended in `outcome`; with `ackSeconds`, also
    /// one publish→ack latency.
    func uplink(qos: QoS, _ outcome: UplinkOutcome, count: Int = 1, ackSeconds: Double? = nil) {
        self.outcomes.count(qos: qos, outcome, count: count, ackSeconds: ackSeconds)
    }

    struct Outcomes {
        /// By QoS (0, 1) and `UplinkOutcome`.
        private(set) var counts = Array(repeating: 0, count: 2 * UplinkOutcome.allCases.count)
        private(set) var publishAck = LoopHistogram(bounds: LoopHistogram.latencyBounds)

        static func index(qos: QoS, _ outcome: UplinkOutcome) -> Int {
            (qos == .atLeastOnce ? UplinkOutcome.allCases.count : 0) + outcome.rawValue
        }

        mutating func count(qos: QoS, _ outcome: UplinkOutcome, count: Int, ackSeconds: Double?) {
            self.counts[Self.index(qos: qos, outcome)] += count
            if let ackSeconds { self.publishAck.record(ackSeconds) }
        }
    }

    /// How the connection ended, counted under each family it belongs to.
    func closed(code: String, reason: SessionCloseReason?, phase: Phase, usesTLS: Bool) {
        self.disconnects[code, default: 0] += 1
        if phase == .handshake && usesTLS { self.handshakeFailures[code, default: 0] += 1 }
        switch reason {
        case .authentication, .authenticationThrottled:
            self.authRefusals[code, default: 0] += 1
        case .protocolViolation, .unexpectedMessage, .frameTimeout, .inflightExceeded:
            self.protocolErrors[code, default: 0] += 1
        default:
            break
        }
    }

    func collect(into snapshot: inout MetricsSnapshot) {
        snapshot.count(SeriesKey("terminus_connections_accepted_total", ["listener": "device"]), self.accepted)
        for (phase, name) in [
            (Phase.handshake, "handshake"), (.authenticating, "authenticating"), (.established, "established"),
        ] {
            snapshot.gauge(
                SeriesKey("terminus_connections", ["listener": "device", "state": name]),
                self.open[Int(phase.rawValue)]
            )
        }
        snapshot.count(
            SeriesKey("terminus_tls_handshakes_total", ["outcome": "success", "reason": ""]),
            self.handshakesCompleted
        )
        for (code, count) in self.handshakeFailures {
            snapshot.count(SeriesKey("terminus_tls_handshakes_total", ["outcome": "failure", "reason": code]), count)
        }
        snapshot.histogram(SeriesKey("terminus_tls_handshake_duration_seconds"), self.handshakeDuration)
        snapshot.count(SeriesKey("terminus_authentications_total"), self.authentications)
        for (code, count) in self.disconnects {
            snapshot.count(SeriesKey("terminus_device_disconnects_total", ["code": code]), count)
        }
        for (code, count) in self.authRefusals {
            snapshot.count(SeriesKey("terminus_auth_refusals_total", ["code": code]), count)
        }
        for (code, count) in self.protocolErrors {
            snapshot.count(SeriesKey("terminus_protocol_errors_total", ["code": code]), count)
        }
        snapshot.count(SeriesKey("terminus_frames_received_total"), self.framesReceived)
        snapshot.count(SeriesKey("terminus_frames_sent_total"), self.framesSent)
        snapshot.count(SeriesKey("terminus_received_bytes_total"), self.bytesReceived)
        snapshot.count(SeriesKey("terminus_sent_bytes_total"), self.bytesSent)
        snapshot.count(SeriesKey("terminus_inflate_input_bytes_total"), self.inflateInput)
        snapshot.count(SeriesKey("terminus_inflate_output_bytes_total"), self.inflateOutput)
        let outcomes = self.outcomes
        for qos in [QoS.atMostOnce, .atLeastOnce] {
            for outcome in UplinkOutcome.allCases {
                snapshot.count(
                    SeriesKey(
                        "terminus_uplink_messages_total",
                        ["qos": qos == .atLeastOnce ? "1" : "0", "outcome": outcome.label]
                    ),
                    outcomes.counts[Outcomes.index(qos: qos, outcome)]
                )
            }
        }
        snapshot.histogram(SeriesKey("terminus_publish_ack_duration_seconds"), outcomes.publishAck)
        snapshot.gauge(SeriesKey("terminus_paused_devices"), self.pausedDevices)
    }
}
