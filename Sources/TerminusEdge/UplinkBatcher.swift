internal import NIOCore
internal import TerminusMetrics
internal import TerminusProtocol
internal import TerminusSessions

/// What a waiter waits for: the outcome of a QoS 0 or QoS 1 message, or of its connected event.
enum DeliveryKind: UInt8 {
    case atMostOnce
    case atLeastOnce
    case connectedEvent
}

/// Who waits for a message's outcome.
protocol DeliveryWaiter: AnyObject {
    /// Called on the event loop with the outcome of message `messageID`.
    func deliveryCompleted(messageID: UInt32, kind: DeliveryKind, outcome: DeliveryOutcome)
    /// Called once after a batch's outcomes were handed out, to flush coalesced ACKs.
    func flushAcks()
}

/// Collects the uplink messages of every session on one event loop and hands them to the
/// sink as one batch per loop tick (or sooner, when `maxBatchSize` is reached).
///
/// Confined to its event loop. Outcomes are delivered back on the same loop; each waiting
/// session flushes its ACKs once per run of its messages in the batch.
final class UplinkBatcher {
    private let eventLoop: any EventLoop
    private let sink: any UplinkSink
    private let maxBatchSize: Int
    private var messages: [UplinkMessage] = []
    private var waiters: [((any DeliveryWaiter)?, UInt32, DeliveryKind)] = []
    private var flushScheduled = false
    /// When the batch being gathered got its first message (this tick).
    private var startedAt = NIODeadline.uptimeNanoseconds(0)
    private let metrics: EdgeLoopMetrics

    init(
        eventLoop: any EventLoop,
        sink: any UplinkSink,
        maxBatchSize: Int,
        metrics: EdgeLoopMetrics = EdgeLoopMetrics()
    ) {
        self.eventLoop = eventLoop
        self.sink = sink
        self.maxBatchSize = max(1, maxBatchSize)
        self.metrics = metrics
    }

    /// - Parameter waiter: the session to tell the outcome, if any.
    func enqueue(_ message: UplinkMessage, waiter: (any DeliveryWaiter)?, kind: DeliveryKind) {
        if self.messages.isEmpty { self.startedAt = self.eventLoop.now }
        self.messages.append(message)
        self.waiters.append((waiter, message.messageID, kind))
        if self.messages.count >= self.maxBatchSize {
            self.flush()
        } else if !self.flushScheduled {
            self.flushScheduled = true
            let loop = self.eventLoop.assumeIsolated()
            loop.execute { self.flush() }
        }
    }

    func flush() {
        self.flushScheduled = false
        guard !self.messages.isEmpty else { return }
        // Hand the arrays over (no copy); the next batch starts fresh ones.
        let batch = self.messages
        let waiters = self.waiters
        let startedAt = self.startedAt
        self.messages = []
        self.waiters = []
        self.sink.deliver(batch, on: self.eventLoop)
            .hop(to: self.eventLoop)
            .assumeIsolated()
            .whenComplete { result in
                let outcomes: [DeliveryOutcome]
                switch result {
                case .success(let values) where values.count == waiters.count:
                    outcomes = values
                default:
                    // A failed or malformed sink answer: nothing was accepted; ask devices to resend.
                    outcomes = Array(repeating: .retryLater(afterSeconds: 1), count: waiters.count)
                }
                self.count(outcomes, waiters: waiters, startedAt: startedAt)
                // One pass, while each session's state is in the cache: a session's messages sit
                // next to each other in the batch (one read each per tick), so its ACKs are
                // flushed when the next message is another session's. A session seen again later
                // gets another flush then; flushAcks does nothing when nothing is pending.
                for position in waiters.indices {
                    let (waiter, id, kind) = waiters[position]
                    guard let waiter else { continue }
                    waiter.deliveryCompleted(messageID: id, kind: kind, outcome: outcomes[position])
                    let next = position + 1 < waiters.count ? waiters[position + 1].0 : nil
                    if next !== waiter { waiter.flushAcks() }
                }
            }
    }

    /// Uplink outcomes by QoS, and the QoS 1 messages' publish→ack latency (one value for the
    /// batch: its messages were read in the same tick).
    private func count(
        _ outcomes: [DeliveryOutcome],
        waiters: [((any DeliveryWaiter)?, UInt32, DeliveryKind)],
        startedAt: NIODeadline
    ) {
        let metrics = self.metrics
        var acknowledged = 0
        for position in waiters.indices {
            let qos: QoS
            switch waiters[position].2 {
            case .connectedEvent: continue
            case .atMostOnce: qos = .atMostOnce
            case .atLeastOnce:
                qos = .atLeastOnce
                acknowledged += 1
            }
            let outcome: EdgeLoopMetrics.UplinkOutcome =
                switch outcomes[position] {
                case .accepted: .ok
                case .noRoute: .noRoute
                case .rejected: .rejected
                case .retryLater: .retryLater
                }
            metrics.uplink(qos: qos, outcome)
        }
        if acknowledged > 0 {
            let seconds = Double((self.eventLoop.now - startedAt).nanoseconds) / 1e9
            metrics.publishAck.record(seconds, times: acknowledged)
        }
    }
}
