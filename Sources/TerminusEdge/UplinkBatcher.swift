internal import NIOCore
internal import TerminusProtocol
internal import TerminusSessions

/// Who waits for a message's outcome.
protocol DeliveryWaiter: AnyObject {
    /// Called on the event loop with the outcome of message `messageID`.
    func deliveryCompleted(messageID: UInt32, outcome: DeliveryOutcome)
    /// Called once after a batch's outcomes were handed out, to flush coalesced ACKs.
    func flushAcks()
}

/// Collects the uplink messages of every session on one event loop and hands them to the
/// sink as one batch per loop tick (or sooner, when `maxBatchSize` is reached).
///
/// Confined to its event loop. Outcomes are delivered back on the same loop; each waiting
/// session flushes its ACKs once per batch.
final class UplinkBatcher {
    private let eventLoop: any EventLoop
    private let sink: any UplinkSink
    private let maxBatchSize: Int
    private var messages: [UplinkMessage] = []
    private var waiters: [((any DeliveryWaiter)?, UInt32)] = []
    private var flushScheduled = false

    init(eventLoop: any EventLoop, sink: any UplinkSink, maxBatchSize: Int) {
        self.eventLoop = eventLoop
        self.sink = sink
        self.maxBatchSize = max(1, maxBatchSize)
    }

    /// - Parameter waiter: the session to tell the outcome, nil for QoS 0.
    func enqueue(_ message: UplinkMessage, waiter: (any DeliveryWaiter)?) {
        self.messages.append(message)
        self.waiters.append((waiter, message.messageID))
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
                for ((waiter, id), outcome) in zip(waiters, outcomes) {
                    waiter?.deliveryCompleted(messageID: id, outcome: outcome)
                }
                // One flush per session: flushAcks does nothing once a session's ACKs are out.
                for (waiter, _) in waiters { waiter?.flushAcks() }
            }
    }
}
