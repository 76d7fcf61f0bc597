internal import Foundation
internal import Logging
internal import NIOCore
internal import ServiceLifecycle
internal import Synchronization
internal import TerminusAPI
internal import TerminusMetrics
internal import TerminusProtocol
internal import TerminusSessions

/// Delivers messages to one subscribed service.
///
/// Messages from edge batches join one queue per service; whenever one of the pool's streams
/// can take another batch (`batches_in_flight`), up to `batchSize` of them go as one batch, so
/// batches grow by themselves when the backend is slow, and with `linger` a partial batch waits
/// up to that long to fill. At most `window` messages are queued or in flight (edge batches
/// wait for room, and their devices stop being read). A message whose batch failed (stream
/// broken, deadline passed) or that the backend refused as retryable goes back into the queue
/// after the service's `retry` policy's backoff, until its attempts are spent; then it is
/// `retryLater`.
///
/// One per service and event loop (`BackendRouter` splits the service's `window` and
/// `connections` between the loops): the devices of a loop are delivered by their loop's
/// `ServiceDelivery`, and everything it does runs on that loop without a task. An edge batch is
/// queued, and a sending pass queued behind it on the loop (one per tick, however many edge
/// batches and released window waiters join it) writes what a stream has room for; the
/// answer, read by the stream's handler on the loop, settles the messages in the same call;
/// the linger and backoff waits are the loop's timers. A lone message therefore costs no thread wake-up and no task
/// switch between the device's socket and the backend's connection, either way.
///
/// A `Service`: `run` holds the pool's connections; graceful shutdown (or cancellation) stops
/// it.
final class ServiceDelivery: Service, Sendable {
    private struct Entry: Sendable {
        /// The serialized `terminus.v1.UplinkMessage` (`UplinkEncoder`).
        var message: ByteBuffer
        var ticket: OutcomeAggregator
        var index: Int
        var attempt = 0
    }

    /// The sender's state, confined to the loop: the queue (pure: what goes when) and the I/O
    /// around it.
    private final class Sender {
        var queue: DeliveryQueue<Entry>
        /// The loop's timer for the end of a linger or a backoff, and when it fires.
        var timer: Scheduled<Void>?
        var timerAt: ContinuousClock.Instant?
        /// The queue waits for a lingering batch to fill: new messages start a pass only once
        /// the batch is full (the linger timer starts one otherwise), not once per edge batch.
        var lingering = false
        /// A pass is queued on the loop: more work before it runs joins it.
        var passScheduled = false
        /// Every open stream has `batches_in_flight` unanswered batches: the next answer starts
        /// a pass.
        var waitingForStream = false
        /// Batches written and not yet settled.
        var inFlight = 0
        /// `run` waits here for the queue to stop and its batches to settle.
        var finished: CheckedContinuation<Void, Never>?
        /// Counts for the metrics (read on the loop at a scrape).
        var counts = Counts()
        /// What failed since the last outage line (`reportOutage`).
        var outage = Outage()

        init(queue: DeliveryQueue<Entry>) {
            self.queue = queue
        }
    }

    let subscription: Subscription
    private let pool: ClientPool
    private let window: AsyncWindow
    private let encoder: UplinkEncoder
    private let allocator = ByteBufferAllocator()
    private let logger: Logger
    private let sender: NIOLoopBoundBox<Sender>
    private let passes = Atomic<Int>(0)
    private let handOffs = Atomic<Int>(0)
    private let eventLoop: any EventLoop
    private let shutdown: ShutdownDeadline

    /// - Parameters:
    ///   - eventLoop: where the delivery runs, and whose devices it serves.
    ///   - shutdown: past it, batches still unanswered at a stop fail at once.
    init(
        subscription: Subscription,
        instanceID: String,
        eventLoop: any EventLoop,
        logger: Logger,
        shutdown: ShutdownDeadline = ShutdownDeadline()
    ) {
        self.shutdown = shutdown
        self.subscription = subscription
        self.encoder = UplinkEncoder(instanceID: instanceID)
        self.logger = logger
        self.eventLoop = eventLoop
        self.pool = ClientPool(subscription: subscription, loop: eventLoop, logger: logger)
        self.window = AsyncWindow(capacity: subscription.window)
        self.sender = NIOLoopBoundBox.makeBoxSendingValue(
            Sender(
                queue: DeliveryQueue(
                    batchSize: subscription.batchSize,
                    linger: .milliseconds(Int64(subscription.lingerMilliseconds))
                )
            ),
            eventLoop: eventLoop
        )
    }

    /// Opens the pool's connections and keeps them until graceful shutdown or cancellation;
    /// then what is still queued is answered `retryLater`, batches in flight get their answers
    /// (or fail at their deadline), and the streams and connections close before it returns.
    func run() async throws {
        try self.pool.open()
        // The pool's connection tasks run on the loop too.
        await withTaskExecutorPreference(LoopExecutor(self.eventLoop)) {
            await withTaskCancellationOrGracefulShutdownHandler {
                await withDiscardingTaskGroup { group in
                    group.addTask { await self.pool.run() }
                    await withCheckedContinuation { continuation in
                        self.onLoop {
                            self.sender.value.finished = continuation
                            self.finishIfDone()
                        }
                    }
                    self.pool.shutdown()
                }
            } onCancelOrGracefulShutdown: {
                self.onLoop { self.stop() }
            }
        }
    }

    func rebalance() {
        self.pool.rebalance()
    }

    /// A reload removed or changed this service: stops as at graceful shutdown (what is queued
    /// is answered `retryLater`, batches in flight settle), and `run` then returns.
    func retire() {
        self.onLoop { self.stop() }
    }

    /// Runs `body` on the loop: at once when called there.
    private func onLoop(_ body: @escaping @Sendable () -> Void) {
        if self.eventLoop.inEventLoop {
            body()
        } else {
            self.eventLoop.execute(body)
        }
    }

    /// Stops sending: what is still queued is answered `retryLater`; `run` returns once the
    /// batches in flight are settled: answered, failed at their deadline, or failed when the
    /// gateway's shutdown deadline passes (then the connections close at once), whichever
    /// comes first.
    private func stop() {
        let sender = self.sender.value
        let entries = sender.queue.stop()
        sender.timer?.cancel()
        (sender.timer, sender.timerAt, sender.lingering) = (nil, nil, false)
        for entry in entries { entry.ticket.add(self.notAccepted, at: entry.index) }
        if let deadline = self.shutdown.value, sender.inFlight > 0 {
            self.eventLoop.assumeIsolated().scheduleTask(deadline: deadline) {
                guard self.sender.value.inFlight > 0 else { return }
                self.pool.abort()
            }
        }
        self.finishIfDone()
    }

    private func finishIfDone() {
        let sender = self.sender.value
        guard sender.queue.isStopped, sender.inFlight == 0, let finished = sender.finished else { return }
        sender.finished = nil
        finished.resume()
    }

    /// How many sending passes ran (started by new work, a timer or an answer that freed a
    /// stream): with `linger`, about one per batch rather than one per edge batch (diagnostics
    /// and tests).
    var senderWakeUps: Int { self.passes.load(ordering: .relaxed) }

    /// How often messages were handed to the loop from another thread: 0 when every device is
    /// served by its own loop's delivery (tests).
    var offLoopSteps: Int { self.handOffs.load(ordering: .relaxed) }

    /// Messages queued or in flight, plus those waiting for room in the window.
    var backlog: Int { self.window.inUse + self.window.waitingMessages }

    private var notAccepted: DeliveryOutcome { .retryLater(afterSeconds: self.subscription.retryAfterSeconds) }

    /// Delivers `messages`; `completion` gets one outcome per message, in order, on this
    /// delivery's loop.
    ///
    /// Called on `eventLoop` (the devices' loop, this delivery's), and no task is started: when
    /// the window has room (and nobody waits before), the messages are encoded and queued right
    /// here, and a sending pass follows on the loop; otherwise they wait in the window, and the
    /// `release` that makes room (an answer, on this loop) queues them. More than a whole window goes in
    /// window-sized parts, each admitted on its own.
    ///
    /// Messages that wait are encoded first, and wait as their protobuf bytes (slices of one
    /// buffer per part): a waiting `UplinkMessage` would hold its payload, a slice of the
    /// device's decrypted record, so every record read while the window is full would pin a
    /// buffer of its own, and the loop's record buffers could not be reused (measured at 5,000
    /// devices × 4 in flight, where most messages wait: 1.77 record-buffer allocations per
    /// message, docs/benchmarks.md).
    func deliver(
        _ messages: [UplinkMessage],
        on eventLoop: any EventLoop,
        completion: @escaping @Sendable ([DeliveryOutcome]) -> Void
    ) {
        guard !messages.isEmpty else { return completion([]) }
        let size = self.window.capacity
        if messages.count <= size {
            // The common case, on the service's own loop with room in the window, takes no
            // closure to run later (one allocation fewer per edge batch).
            if self.eventLoop.inEventLoop && self.window.tryAcquire(messages.count) {
                return self.enqueue(messages[...], from: eventLoop, completion: completion)
            }
            let encoded = self.encoded(messages[...])
            self.window.acquire(messages.count, on: self.eventLoop) {
                self.enqueue(encoded: encoded, from: eventLoop, completion: completion)
            }
            return
        }
        let whole = OutcomeAggregator(count: messages.count, completion: completion)
        for start in stride(from: 0, to: messages.count, by: size) {
            let range = start..<min(start + size, messages.count)
            let encoded = self.encoded(messages[range])
            self.window.acquire(range.count, on: self.eventLoop) {
                self.enqueue(encoded: encoded, from: eventLoop) { part in whole.add(part, at: range) }
            }
        }
    }

    /// `messages` serialized, one slice of one buffer each.
    private func encoded(_ messages: ArraySlice<UplinkMessage>) -> [ByteBuffer] {
        var slices: [ByteBuffer] = []
        slices.reserveCapacity(messages.count)
        self.encoder.encode(messages, allocator: self.allocator) { _, message in slices.append(message) }
        return slices
    }

    /// Queues `messages`, whose window permits are already taken, and sends what can go; gives
    /// the permits back with the outcomes. On the loop only (`deliver`'s path with room in the
    /// window); messages that waited come through `enqueue(encoded:)`.
    private func enqueue(
        _ messages: ArraySlice<UplinkMessage>,
        from eventLoop: any EventLoop,
        completion: @escaping @Sendable ([DeliveryOutcome]) -> Void
    ) {
        assert(self.eventLoop.inEventLoop)
        guard let (ticket, now) = self.admit(messages.count, completion: completion) else { return }
        let sender = self.sender.value
        // One buffer for the edge batch; each entry takes its message's slice of it, straight
        // into the queue (no array of entries between).
        self.encoder.encode(messages, allocator: self.allocator) { position, message in
            let entry = Entry(message: message, ticket: ticket, index: position)
            _ = sender.queue.append(contentsOf: CollectionOfOne(entry), now: now)
        }
        self.queued()
    }

    /// `enqueue` for messages already serialized (`encoded`).
    private func enqueue(
        encoded messages: [ByteBuffer],
        from eventLoop: any EventLoop,
        completion: @escaping @Sendable ([DeliveryOutcome]) -> Void
    ) {
        if !self.eventLoop.inEventLoop {
            self.handOffs.wrappingAdd(1, ordering: .relaxed)
            self.eventLoop.execute { self.enqueue(encoded: messages, from: eventLoop, completion: completion) }
            return
        }
        guard let (ticket, now) = self.admit(messages.count, completion: completion) else { return }
        let sender = self.sender.value
        for (position, message) in messages.enumerated() {
            let entry = Entry(message: message, ticket: ticket, index: position)
            _ = sender.queue.append(contentsOf: CollectionOfOne(entry), now: now)
        }
        self.queued()
    }

    /// The ticket for `count` messages about to be queued, on the loop; nil (and every message
    /// answered `retryLater`) once the queue has stopped.
    private func admit(
        _ count: Int,
        completion: @escaping @Sendable ([DeliveryOutcome]) -> Void
    ) -> (OutcomeAggregator, ContinuousClock.Instant)? {
        let ticket = OutcomeAggregator(count: count, releasing: self.window, completion: completion)
        let sender = self.sender.value
        guard !sender.queue.isStopped else {
            sender.counts.retryLater += count
            sender.outage.retryLater += count
            self.reportOutage()
            for index in 0..<count { ticket.add(self.notAccepted, at: index) }
            return nil
        }
        return (ticket, ContinuousClock.now)
    }

    /// New entries are queued: a pass follows, unless a lingering batch is still filling.
    private func queued() {
        let sender = self.sender.value
        if sender.lingering && sender.queue.freshCount < sender.queue.batchSize { return }
        self.schedulePass()
    }

    // MARK: Sending

    /// Queues one sending pass on the loop, after what the loop is doing now: the edge batches
    /// of this tick, and the window waiters that answers released, go out together in as few
    /// batches as they fit (measured: sending each at once cost 1.09–1.11× the CPU per message
    /// at 4 in flight per device, docs/benchmarks.md). An entry in the loop's own task queue;
    /// no thread is woken.
    private func schedulePass() {
        let sender = self.sender.value
        guard !sender.passScheduled else { return }
        sender.passScheduled = true
        self.eventLoop.execute {
            self.sender.value.passScheduled = false
            self.pass()
        }
    }

    /// Sends batches while the queue has one ready and a stream has room; then arms the timer
    /// for the queue's next deadline (linger, backoff), or waits for an answer to free a stream.
    private func pass() {
        let sender = self.sender.value
        self.passes.wrappingAdd(1, ordering: .relaxed)
        sender.waitingForStream = false
        sending: while true {
            let now = ContinuousClock.now
            switch sender.queue.readiness(now: now) {
            case .stopped:
                break sending
            case .wait(let until, let lingering):
                sender.lingering = lingering
                if let until { self.arm(at: until) }
                break sending
            case .ready:
                sender.lingering = false
            }
            let stream: DeliveryStream?
            switch self.pool.pick() {
            case .stream(let picked): stream = picked
            case .busy:
                // Every open stream is full: the next answer starts a pass.
                sender.waitingForStream = true
                break sending
            case .notConnected: stream = nil
            }
            let batch = sender.queue.takeBatch(now: now)
            guard !batch.isEmpty else { break sending }
            sender.inFlight += 1
            guard let stream else {
                sender.counts.unsentBatches += 1
                sender.outage.unsentBatches += 1
                self.settle(batch, answers: nil)
                continue
            }
            sender.counts.batchSize.record(Double(batch.count))
            let written = self.eventLoop.now
            // Read in place: the request is encoded from the entries, no array of messages.
            stream.send(
                batch.lazy.map(\.message),
                deadline: .milliseconds(self.subscription.deadlineMilliseconds)
            ) { result in
                let answers = self.answers(for: batch, result)
                let counts = self.sender.value.counts
                counts.duration.record(Double((self.eventLoop.now - written).nanoseconds) / 1e9)
                if answers == nil { counts.failedBatches += 1 } else { counts.answeredBatches += 1 }
                self.settle(batch, answers: answers)
            }
        }
    }

    /// The timer for the queue's next deadline; an earlier one armed already stays.
    private func arm(at deadline: ContinuousClock.Instant) {
        let sender = self.sender.value
        if let armed = sender.timerAt, armed <= deadline, sender.timer != nil { return }
        sender.timer?.cancel()
        let delay = ContinuousClock.now.duration(to: deadline)
        let nanoseconds = max(0, delay / .nanoseconds(1))
        sender.timerAt = deadline
        sender.timer = self.eventLoop.scheduleTask(in: .nanoseconds(Int64(nanoseconds))) {
            let sender = self.sender.value
            (sender.timer, sender.timerAt, sender.lingering) = (nil, nil, false)
            self.pass()
        }
    }

    /// The backend's per-message answers, or nil when the batch failed (counted for the next
    /// outage line).
    private func answers(
        for batch: [Entry],
        _ result: Result<Terminus_V1_DeliverResponse, any Error>
    ) -> [Terminus_V1_DeliverResult]? {
        let outage: String
        switch result {
        case .success(let response) where response.results.count == batch.count:
            return response.results
        case .success(let response):
            outage = "the backend answered \(response.results.count) results for \(batch.count) messages"
        case .failure(let error):
            outage = "\(error)"
        }
        let sender = self.sender.value
        sender.outage.failedBatches += 1
        sender.outage.lastError = outage
        return nil
    }

    /// A backend outage logs at most one line per `Outage.interval` per service and loop,
    /// with what it cost since the line before: batches failed or not sent, messages answered
    /// `RETRY_LATER`, the last error. (Per batch, an outage of a busy service would write
    /// thousands of lines a second.)
    private func reportOutage() {
        let sender = self.sender.value
        guard sender.outage.hasNews else { return }
        let now = self.eventLoop.now
        if let last = sender.outage.loggedAt, now - last < Outage.interval { return }
        let outage = sender.outage
        sender.outage = Outage(loggedAt: now)
        var metadata: Logger.Metadata = [
            "service": "\(self.subscription.name)", "failed_batches": "\(outage.failedBatches)",
            "unsent_batches": "\(outage.unsentBatches)", "retry_later": "\(outage.retryLater)",
        ]
        if let since = outage.loggedAt { metadata["since_ms"] = "\((now - since).nanoseconds / 1_000_000)" }
        if let error = outage.lastError { metadata["last_error"] = "\(error)" }
        self.logger.warning("backend not accepting messages; devices told to resend", metadata: metadata)
    }

    /// Settles each message of a sent batch (on the loop): final outcome, or back into the
    /// queue after its backoff; then sends what the freed stream can take.
    private func settle(_ batch: [Entry], answers: [Terminus_V1_DeliverResult]?) {
        let sender = self.sender.value
        sender.inFlight -= 1
        var retry: [(Entry, ContinuousClock.Instant)] = []
        // Counted once per batch, not once per message.
        var accepted = 0
        var rejected = 0
        // Each entry's ticket and index read in place, not the entry copied out (a retain and a
        // release of its buffer and of its ticket a message); the answer's status likewise.
        for position in batch.indices {
            let status = answers?[position].status
            if status == .accepted {
                accepted += 1
                batch[position].ticket.add(.accepted, at: batch[position].index)
                continue
            }
            if status == .rejected, let answers, !answers[position].retryable {
                rejected += 1
                batch[position].ticket.add(.rejected(reason: answers[position].reason), at: batch[position].index)
                continue
            }
            let entry = batch[position]
            var again = entry
            again.attempt += 1
            if !self.subscription.retry.allows(attempt: again.attempt + 1) {
                sender.counts.retryLater += 1
                sender.outage.retryLater += 1
                entry.ticket.add(self.notAccepted, at: entry.index)
            } else {
                if again.attempt == 1 {
                    // A retried message keeps its own bytes, not its whole edge batch's
                    // buffer (retries can outlive the rest of their batch by many backoffs).
                    var own = self.allocator.buffer(capacity: entry.message.readableBytes)
                    own.writeImmutableBuffer(entry.message)
                    again.message = own
                }
                retry.append((again, .now + self.subscription.retry.delay(afterFailures: again.attempt)))
            }
        }
        if accepted > 0 { sender.counts.accepted += accepted }
        if rejected > 0 { sender.counts.rejected += rejected }
        if !retry.isEmpty {
            if sender.queue.retry(retry) {
                sender.counts.retries += retry.count
            } else {
                sender.counts.retryLater += retry.count
                sender.outage.retryLater += retry.count
                for (entry, _) in retry { entry.ticket.add(self.notAccepted, at: entry.index) }
            }
        }
        if sender.waitingForStream || !retry.isEmpty { self.schedulePass() }
        if answers != nil, let since = sender.outage.loggedAt {
            // Answered again after an outage line: say so once, with what the rest cost.
            let outage = sender.outage
            sender.outage = Outage()
            self.logger.info(
                "backend accepting messages again",
                metadata: [
                    "service": "\(self.subscription.name)", "failed_batches": "\(outage.failedBatches)",
                    "unsent_batches": "\(outage.unsentBatches)", "retry_later": "\(outage.retryLater)",
                    "since_ms": "\((self.eventLoop.now - since).nanoseconds / 1_000_000)",
                ]
            )
        }
        self.reportOutage()
        self.finishIfDone()
    }
}

/// What a backend outage cost since its last log line.
struct Outage {
    static let interval = TimeAmount.seconds(10)
    var loggedAt: NIODeadline?
    var failedBatches = 0
    var unsentBatches = 0
    var retryLater = 0
    var lastError: String?

    var hasNews: Bool { self.failedBatches > 0 || self.unsentBatches > 0 || self.retryLater > 0 }
}

/// A delivery's counts, confined to its loop like the rest of its state.
final class Counts {
    var answeredBatches = 0
    var failedBatches = 0
    var unsentBatches = 0
    var batchSize = LoopHistogram(bounds: LoopHistogram.batchSizeBounds)
    var duration = LoopHistogram(bounds: LoopHistogram.latencyBounds)
    var accepted = 0
    var rejected = 0
    var retryLater = 0
    var retries = 0
}

extension ServiceDelivery {
    /// This delivery's figures, read on its loop.
    func collectMetrics() -> EventLoopFuture<MetricsSnapshot> {
        self.eventLoop.submit {
            let sender = self.sender.value
            let counts = sender.counts
            let service = self.subscription.name
            var snapshot = MetricsSnapshot()
            for (outcome, value) in [
                ("answered", counts.answeredBatches), ("failed", counts.failedBatches),
                ("unsent", counts.unsentBatches),
            ] {
                snapshot.count(
                    SeriesKey("terminus_delivery_batches_total", ["service": service, "outcome": outcome]),
                    value
                )
            }
            for (outcome, value) in [
                ("accepted", counts.accepted), ("rejected", counts.rejected), ("retry_later", counts.retryLater),
            ] {
                snapshot.count(
                    SeriesKey("terminus_delivery_messages_total", ["service": service, "outcome": outcome]),
                    value
                )
            }
            snapshot.count(SeriesKey("terminus_delivery_retries_total", ["service": service]), counts.retries)
            snapshot.histogram(SeriesKey("terminus_delivery_batch_size", ["service": service]), counts.batchSize)
            snapshot.histogram(SeriesKey("terminus_delivery_duration_seconds", ["service": service]), counts.duration)
            snapshot.gauge(SeriesKey("terminus_delivery_window_used", ["service": service]), self.window.used)
            snapshot.gauge(SeriesKey("terminus_delivery_window_size", ["service": service]), self.window.capacity)
            snapshot.gauge(SeriesKey("terminus_delivery_batches_in_flight", ["service": service]), sender.inFlight)
            let connects = self.pool.connects
            snapshot.count(
                SeriesKey("terminus_backend_connects_total", ["service": service, "outcome": "success"]),
                connects.succeeded.load(ordering: .relaxed)
            )
            snapshot.count(
                SeriesKey("terminus_backend_connects_total", ["service": service, "outcome": "failure"]),
                connects.failed.load(ordering: .relaxed)
            )
            return snapshot
        }
    }
}
