internal import NIOCore
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
    /// Called on the event loop with the outcome of message `messageID`, handed to the batcher
    /// in the loop tick that began at `receivedAt` (for the publish→ack latency).
    func deliveryCompleted(messageID: UInt32, kind: DeliveryKind, outcome: DeliveryOutcome, receivedAt: NIODeadline)
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
    /// Reserved when the batch before is handed over (`reserved(after:maxBatchSize:)`), so it is
    /// allocated once rather than regrown at 1, 2, 4, … entries as messages arrive (2.4
    /// allocations for an edge batch of three messages, `Benchmarks/profile --tool mallocs`).
    /// The waiters' array goes with the batch (its completion holds it), so it cannot be reused
    /// as the messages' array is. Reserved there, not at the first `enqueue`: each read or write
    /// of a class's stored property there is an exclusivity check at run time, about 90
    /// instructions (callgrind, `hot-path`: reserving at `enqueue` cost 220 a message).
    private var waiters: [Waiter]
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
        self.waiters = Self.reserved(after: 0, maxBatchSize: self.maxBatchSize)
        self.metrics = metrics
    }

    /// - Parameters:
    ///   - message: consumed, so that the caller's message moves into the batch (a borrowed
    ///     one is copied in: its strings' and buffers' retains, and their releases at the
    ///     caller).
    ///   - waiter: the session to tell the outcome, if any.
    func enqueue(_ message: consuming UplinkMessage, waiter: (any DeliveryWaiter)?, kind: DeliveryKind) {
        if self.messages.isEmpty { self.startedAt = self.eventLoop.now }
        self.waiters.append((waiter, message.messageID, kind, self.startedAt))
        self.messages.append(consume message)
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
        var batch = self.messages
        // The completion captures `waiters` alone: a closure over one reference needs no
        // context allocation (the allocation gate counts it).
        let waiters = BatchWaiters(entries: self.waiters)
        self.messages = []
        self.waiters = Self.reserved(after: waiters.entries.count, maxBatchSize: self.maxBatchSize)
        self.sink.deliver(batch, on: self.eventLoop) { outcomes in waiters.complete(outcomes) }
        // The messages' array is only read while the sink takes the batch (the backend router
        // copies what it queues): when nothing else holds it now, its storage carries the next
        // batch, so a lone message allocates no array for itself. Unless messages arrived while
        // the sink ran. If the sink kept the array, this allocates what the next append would
        // have. Bound: one array per loop, of the capacity a batch of at most `maxBatchSize`
        // messages grew to.
        if self.messages.isEmpty {
            batch.removeAll(keepingCapacity: true)
            self.messages = batch
        }
    }
}

extension UplinkBatcher {
    /// A session waiting for a message's outcome: the session, the message's id, its kind, and
    /// when its edge batch began.
    typealias Waiter = ((any DeliveryWaiter)?, UInt32, DeliveryKind, NIODeadline)

    /// Lone messages come in batches of one to a few, varying tick by tick; eight entries (32
    /// bytes each) hold most of them.
    static let reservedWaiters = 8

    /// An empty waiters' array for the batch after one of `count` messages: room for as many,
    /// at least `reservedWaiters`, at most `maxBatchSize` (8 KiB at the default 256, held by an
    /// idle loop after a full batch until its next one).
    static func reserved(after count: Int, maxBatchSize: Int) -> [Waiter] {
        var waiters: [Waiter] = []
        waiters.reserveCapacity(min(max(count, Self.reservedWaiters), maxBatchSize))
        return waiters
    }
}

/// The sessions waiting for one handed-over batch, in the batch's order.
///
/// `@unchecked Sendable`: the sink calls its completion on the batcher's loop (the contract of
/// `UplinkSink`), the only place the waiters are touched.
private struct BatchWaiters: @unchecked Sendable {
    let entries: [UplinkBatcher.Waiter]

    func complete(_ answer: [DeliveryOutcome]) {
        let outcomes =
            answer.count == self.entries.count
            ? answer
            // A malformed sink answer: nothing was accepted; ask devices to resend.
            : Array(repeating: .retryLater(afterSeconds: 1), count: self.entries.count)
        // One pass, while each session's state is in the cache: a session's messages sit next to
        // each other in the batch (one read each per tick), so its ACKs are flushed when the next
        // message is another session's. A session seen again later gets another flush then;
        // flushAcks does nothing when nothing is pending.
        for position in self.entries.indices {
            let (waiter, id, kind, receivedAt) = self.entries[position]
            guard let waiter else { continue }
            waiter.deliveryCompleted(messageID: id, kind: kind, outcome: outcomes[position], receivedAt: receivedAt)
            let next = position + 1 < self.entries.count ? self.entries[position + 1].0 : nil
            if next !== waiter { waiter.flushAcks() }
        }
    }
}
