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
    /// The batch being gathered, all its state in one stored property: an access to a class's
    /// stored property whose span holds a call the optimizer cannot see through (an array's
    /// `append`, the clock) is an exclusivity check at run time, about 65 instructions in
    /// `swift_beginAccess` alone (callgrind, `hot-path`). A message's `enqueue` made three, one
    /// now; the flush makes two.
    private var gathering: Gathering
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
        self.gathering = Gathering(waiters: Self.reserved(after: 0, maxBatchSize: self.maxBatchSize))
        self.metrics = metrics
    }

    /// - Parameters:
    ///   - message: consumed, so that the caller's message moves into the batch (a borrowed
    ///     one is copied in: its strings' and buffers' retains, and their releases at the
    ///     caller).
    ///   - waiter: the session to tell the outcome, if any.
    func enqueue(_ message: consuming UplinkMessage, waiter: (any DeliveryWaiter)?, kind: DeliveryKind) {
        switch self.gathering.add(
            message,
            waiter: waiter,
            kind: kind,
            maxBatchSize: self.maxBatchSize,
            clock: self.eventLoop
        ) {
        case .full:
            self.flush()
        case .first:
            let loop = self.eventLoop.assumeIsolated()
            loop.execute { self.flush() }
        case .joined:
            break
        }
    }

    func flush() {
        // Hand the arrays over (no copy); the next batch starts fresh ones.
        guard let (batch, entries) = self.gathering.take(maxBatchSize: self.maxBatchSize) else { return }
        // The completion captures `waiters` alone: a closure over one reference needs no
        // context allocation (the allocation gate counts it).
        let waiters = BatchWaiters(entries: entries)
        self.sink.deliver(batch, on: self.eventLoop) { outcomes in waiters.complete(outcomes) }
        self.gathering.reuse(batch)
    }
}

extension UplinkBatcher {
    /// The batch being gathered on one loop.
    struct Gathering {
        var messages: [UplinkMessage] = []
        /// Reserved when the batch before is handed over (`reserved(after:maxBatchSize:)`), so
        /// it is allocated once rather than regrown at 1, 2, 4, … entries as messages arrive
        /// (2.4 allocations for an edge batch of three messages, `Benchmarks/profile --tool
        /// mallocs`). The waiters' array goes with the batch (its completion holds it), so it
        /// cannot be reused as the messages' array is.
        var waiters: [Waiter]
        /// A flush is queued on the loop.
        var flushScheduled = false
        /// When the batch being gathered got its first message (this tick).
        var startedAt = NIODeadline.uptimeNanoseconds(0)

        /// What `add` asks the batcher to do.
        enum Added {
            /// The batch is full: flush it now.
            case full
            /// The batch's first message: queue a flush on the loop.
            case first
            /// A flush is queued already.
            case joined
        }

        mutating func add(
            _ message: consuming UplinkMessage,
            waiter: (any DeliveryWaiter)?,
            kind: DeliveryKind,
            maxBatchSize: Int,
            clock: any EventLoop
        ) -> Added {
            if self.messages.isEmpty { self.startedAt = clock.now }
            self.waiters.append((waiter, message.messageID, kind, self.startedAt))
            self.messages.append(consume message)
            if self.messages.count >= maxBatchSize { return .full }
            if self.flushScheduled { return .joined }
            self.flushScheduled = true
            return .first
        }

        /// The batch gathered and its waiters, nil when there is none; the next batch starts
        /// with the waiters' room reserved.
        mutating func take(maxBatchSize: Int) -> ([UplinkMessage], [Waiter])? {
            self.flushScheduled = false
            guard !self.messages.isEmpty else { return nil }
            let batch = (self.messages, self.waiters)
            self.messages = []
            self.waiters = UplinkBatcher.reserved(after: batch.1.count, maxBatchSize: maxBatchSize)
            return batch
        }

        /// The messages' array is only read while the sink takes the batch (the backend router
        /// copies what it queues): when nothing else holds it now, its storage carries the next
        /// batch, so a lone message allocates no array for itself. Unless messages arrived
        /// while the sink ran. If the sink kept the array, this allocates what the next append
        /// would have. Bound: one array per loop, of the capacity a batch of at most
        /// `maxBatchSize` messages grew to.
        mutating func reuse(_ handedOver: consuming [UplinkMessage]) {
            guard self.messages.isEmpty else { return }
            var storage = handedOver
            storage.removeAll(keepingCapacity: true)
            self.messages = storage
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
        // flushAcks does nothing when nothing is pending. The session of the run before is held
        // until the next differs (not looked up again from the next entry: a retain and a
        // release a message).
        var previous: (any DeliveryWaiter)?
        for position in self.entries.indices {
            let (waiter, id, kind, receivedAt) = self.entries[position]
            if let previous, previous !== waiter { previous.flushAcks() }
            previous = waiter
            waiter?.deliveryCompleted(messageID: id, kind: kind, outcome: outcomes[position], receivedAt: receivedAt)
        }
        previous?.flushAcks()
    }
}
