internal import Foundation
internal import GRPCCore
internal import Logging
internal import NIOCore
internal import ServiceLifecycle
internal import Synchronization
package import TerminusAPI
internal import TerminusProtocol
package import TerminusSessions

/// Delivers messages to one subscribed service.
///
/// Messages from edge batches join one queue per service; a sender task takes up to
/// `batchSize` of them whenever one of the pool's streams can take another batch
/// (`batches_in_flight`), so batches grow by themselves when the backend is slow, and with
/// `linger` it waits up to that long for a full batch. At most `window` messages are queued or
/// in flight (edge batches wait for room, and their devices stop being read). A message whose
/// batch failed (stream broken, deadline passed) or that the backend refused as retryable goes
/// back into the queue after the service's `retry` policy's backoff, until its attempts are
/// spent; then it is `retryLater`.
///
/// One per service and event loop (`BackendRouter` splits the service's `window` and
/// `connections` between the loops): the devices of a loop are delivered by their loop's
/// `ServiceDelivery`, whose sender, batches, Deliver streams and gRPC connections all run on
/// that loop (`LoopExecutor`), so that a lone message costs no thread wake-up between the
/// device's socket and the backend's connection, either way.
///
/// A `Service`: `run` holds the sender and the pool's clients; graceful shutdown (or
/// cancellation) stops it.
final class ServiceDelivery: Service, Sendable {
    private struct Entry: Sendable {
        var message: Terminus_V1_UplinkMessage
        var ticket: OutcomeAggregator
        var index: Int
        var attempt = 0
    }

    /// The queue (pure: what goes when) and the sender's wake-up (the I/O around it).
    private struct Queue {
        var entries: DeliveryQueue<Entry>
        /// The sender waits here for work (or for the end of a linger or backoff).
        var wakeUp: CheckedContinuation<Void, Never>?
        /// The sender waits for a lingering batch to fill: new messages wake it only once the
        /// batch is full (its linger timer wakes it otherwise), not once per edge batch.
        var lingering = false
    }

    let subscription: Subscription
    private let pool: ClientPool
    private let window: AsyncWindow
    private let encoder: UplinkEncoder
    private let logger: Logger
    private let queue: Mutex<Queue>
    private let wakeUps = Atomic<Int>(0)
    private let offLoop = Atomic<Int>(0)

    private let executor: LoopExecutor

    /// - Parameter eventLoop: where the delivery runs, and whose devices it serves.
    init(subscription: Subscription, instanceID: String, eventLoop: any EventLoop, logger: Logger) {
        self.subscription = subscription
        self.encoder = UplinkEncoder(instanceID: instanceID)
        self.logger = logger
        self.executor = LoopExecutor(eventLoop)
        self.pool = ClientPool(subscription: subscription, loop: eventLoop, logger: logger)
        self.window = AsyncWindow(capacity: subscription.window)
        self.queue = Mutex(
            Queue(
                entries: DeliveryQueue(
                    batchSize: subscription.batchSize,
                    linger: .milliseconds(Int64(subscription.lingerMilliseconds))
                )
            )
        )
    }

    /// Opens the pool's clients and sends until graceful shutdown or cancellation; then what is
    /// still queued is answered `retryLater`, batches in flight get their answers (or fail at
    /// their deadline), and the streams and connections close before it returns.
    func run() async throws {
        try self.pool.open()
        // Child tasks inherit the preference: the pool's connections and streams run here too.
        await withTaskExecutorPreference(self.executor) {
            await self.runOnLoop()
        }
    }

    private func runOnLoop() async {
        await withTaskCancellationOrGracefulShutdownHandler {
            await withDiscardingTaskGroup { group in
                group.addTask { await self.pool.run() }
                await self.sendLoop()
                self.pool.shutdown()
            }
        } onCancelOrGracefulShutdown: {
            self.stop()
        }
    }

    func rebalance() {
        self.pool.rebalance()
    }

    /// Stops sending: what is still queued is answered `retryLater`; the send loop ends once
    /// its batches in flight are settled.
    private func stop() {
        let (entries, wakeUp) = self.queue.withLock { queue in
            defer { (queue.wakeUp, queue.lingering) = (nil, false) }
            return (queue.entries.stop(), queue.wakeUp)
        }
        wakeUp?.resume()
        for entry in entries { entry.ticket.add(self.notAccepted, at: entry.index) }
    }

    /// How often the sender came back from waiting for work (diagnostics and tests).
    var senderWakeUps: Int { self.wakeUps.load(ordering: .relaxed) }

    /// How often a batch was sent, or its answer handled, on a thread other than its event
    /// loop's: 0 unless the executor preference was lost (tests).
    var offLoopSteps: Int { self.offLoop.load(ordering: .relaxed) }

    private func checkOnLoop() {
        if !self.executor.eventLoop.inEventLoop { self.offLoop.wrappingAdd(1, ordering: .relaxed) }
    }

    /// Messages queued or in flight, plus those waiting for room in the window.
    var backlog: Int { self.window.inUse + self.window.waitingMessages }

    private var notAccepted: DeliveryOutcome { .retryLater(afterSeconds: self.subscription.retryAfterSeconds) }

    /// Delivers `messages`; `completion` gets one outcome per message, in order, on whichever
    /// thread settles the last one.
    ///
    /// Called on `eventLoop`, and no task is started: when the window has room (and nobody
    /// waits before), the messages are encoded and queued right here; otherwise they wait in
    /// the window, and the `release` that makes room hands them back to `eventLoop` to be
    /// encoded and queued there (never on the thread that released, which serves another
    /// loop's or a backend's answers). More than a whole window goes in window-sized parts,
    /// each admitted on its own.
    func deliver(
        _ messages: [UplinkMessage],
        on eventLoop: any EventLoop,
        completion: @escaping @Sendable ([DeliveryOutcome]) -> Void
    ) {
        guard !messages.isEmpty else { return completion([]) }
        let size = self.window.capacity
        if messages.count <= size {
            self.window.acquire(messages.count, on: eventLoop) { self.enqueue(messages[...], completion: completion) }
            return
        }
        let whole = OutcomeAggregator(count: messages.count, completion: completion)
        for start in stride(from: 0, to: messages.count, by: size) {
            let range = start..<min(start + size, messages.count)
            self.window.acquire(range.count, on: eventLoop) {
                self.enqueue(messages[range]) { part in whole.add(part, at: range) }
            }
        }
    }

    /// Queues `messages`, whose window permits are already taken; gives them back with the outcomes.
    private func enqueue(
        _ messages: ArraySlice<UplinkMessage>,
        completion: @escaping @Sendable ([DeliveryOutcome]) -> Void
    ) {
        let window = self.window
        let count = messages.count
        let ticket = OutcomeAggregator(count: count) { outcomes in
            window.release(count)
            completion(outcomes)
        }
        let now = ContinuousClock.now
        // Encoded outside the lock: the sender takes batches under it.
        let entries = zip(0..., messages).map { index, message in
            Entry(message: self.encoder.encode(message), ticket: ticket, index: index)
        }
        let (accepted, wakeUp) = self.queue.withLock { queue -> (Bool, CheckedContinuation<Void, Never>?) in
            guard queue.entries.append(contentsOf: entries, now: now) else { return (false, nil) }
            if queue.lingering && queue.entries.freshCount < queue.entries.batchSize { return (true, nil) }
            defer { (queue.wakeUp, queue.lingering) = (nil, false) }
            return (true, queue.wakeUp)
        }
        if !accepted {
            for index in 0..<count { ticket.add(self.notAccepted, at: index) }
        }
        wakeUp?.resume()
    }

    // MARK: Sending

    private func waitForWork(until deadline: ContinuousClock.Instant?, generation: Int, lingering: Bool) async {
        guard let deadline else {
            return await self.waitForWake(until: nil, generation: generation, lingering: lingering)
        }
        // The deadline (linger or backoff) is a child task that wakes the sender.
        await withDiscardingTaskGroup { group in
            group.addTask {
                guard (try? await Task.sleep(until: deadline)) != nil else { return }
                self.wake()
            }
            await self.waitForWake(until: deadline, generation: generation, lingering: lingering)
            group.cancelAll()
        }
    }

    private func waitForWake(until deadline: ContinuousClock.Instant?, generation: Int, lingering: Bool) async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let resumeNow = self.queue.withLock { queue -> Bool in
                // Work arrived between deciding to wait and getting here, or the timer already
                // fired (it fires at the deadline, under this lock): look again at once.
                if queue.entries.isStopped || queue.entries.generation != generation { return true }
                if let deadline, deadline <= .now { return true }
                queue.wakeUp = continuation
                queue.lingering = lingering
                return false
            }
            if resumeNow { continuation.resume() }
        }
        self.wakeUps.wrappingAdd(1, ordering: .relaxed)
    }

    private func wake() {
        let wakeUp = self.queue.withLock { queue in
            defer { (queue.wakeUp, queue.lingering) = (nil, false) }
            return queue.wakeUp
        }
        wakeUp?.resume()
    }

    private func sendLoop() async {
        await withDiscardingTaskGroup { group in
            while true {
                let (readiness, generation) = self.queue.withLock {
                    ($0.entries.readiness(now: .now), $0.entries.generation)
                }
                switch readiness {
                case .stopped:
                    return
                case .wait(let until, let lingering):
                    await self.waitForWork(until: until, generation: generation, lingering: lingering)
                    continue
                case .ready:
                    break
                }
                // Wait for a stream that can take one more batch, then take the batch: while
                // the backend is busy the queue fills, and the next batch is bigger.
                let stream = try? await self.pool.reserve()
                let batch = self.queue.withLock { $0.entries.takeBatch(now: .now) }
                guard !batch.isEmpty else {
                    stream?.releaseCredit()
                    continue
                }
                group.addTask { await self.attempt(batch, on: stream) }
            }
        }
    }

    /// Sends one batch and settles each message: final outcome, or back into the queue.
    private func attempt(_ batch: [Entry], on stream: DeliveryStream?) async {
        var answers: [Terminus_V1_DeliverResult]?
        self.checkOnLoop()
        defer { self.checkOnLoop() }
        if let stream {
            do {
                let response = try await stream.send(
                    batch.map(\.message),
                    deadline: .milliseconds(self.subscription.deadlineMilliseconds)
                )
                if response.results.count == batch.count {
                    answers = response.results
                } else {
                    self.logger.error(
                        "backend answered with the wrong number of results",
                        metadata: [
                            "service": "\(self.subscription.name)", "sent": "\(batch.count)",
                            "results": "\(response.results.count)",
                        ]
                    )
                }
            } catch {
                self.logger.warning(
                    "backend delivery failed",
                    metadata: [
                        "service": "\(self.subscription.name)", "messages": "\(batch.count)", "error": "\(error)",
                    ]
                )
            }
        }
        var retry: [(Entry, ContinuousClock.Instant)] = []
        for (position, entry) in batch.enumerated() {
            switch answers?[position] {
            case .some(let result) where result.status == .accepted:
                entry.ticket.add(.accepted, at: entry.index)
            case .some(let result) where result.status == .rejected && !result.retryable:
                entry.ticket.add(.rejected(reason: result.reason), at: entry.index)
            default:
                var again = entry
                again.attempt += 1
                if !self.subscription.retry.allows(attempt: again.attempt + 1) {
                    entry.ticket.add(self.notAccepted, at: entry.index)
                } else {
                    retry.append((again, .now + self.subscription.retry.delay(afterFailures: again.attempt)))
                }
            }
        }
        guard !retry.isEmpty else { return }
        let (requeued, wakeUp) = self.queue.withLock { queue -> (Bool, CheckedContinuation<Void, Never>?) in
            guard queue.entries.retry(retry) else { return (false, nil) }
            defer { (queue.wakeUp, queue.lingering) = (nil, false) }
            return (true, queue.wakeUp)
        }
        if !requeued {
            for (entry, _) in retry { entry.ticket.add(self.notAccepted, at: entry.index) }
        }
        wakeUp?.resume()
    }
}

/// Turns an uplink message into the `terminus.v1.UplinkMessage` a backend receives.
package struct UplinkEncoder: Sendable {
    package let instanceID: String

    package init(instanceID: String) {
        self.instanceID = instanceID
    }

    package func encode(_ message: UplinkMessage) -> Terminus_V1_UplinkMessage {
        var proto = Terminus_V1_UplinkMessage()
        proto.deviceID = message.deviceID
        proto.topic = message.topic
        proto.messageID = message.messageID
        proto.payload = Data(message.payload.readableBytesView)
        proto.qos = message.qos == .atLeastOnce ? .atLeastOnce : .atMostOnce
        proto.receivedAtUnixMs = message.receivedAt
        proto.clientAddress = message.clientAddress
        proto.gatewayInstance = self.instanceID
        // Unique per message: the listener's random epoch (base 36, 13 characters at most, so
        // a small string without an allocation), the connection, and the message's place in it.
        proto.deliveryID =
            "\(self.instanceID)/\(String(message.epoch, radix: 36))/\(message.connectionID)/\(message.sequence)"
        proto.sequence = message.sequence
        if let key = message.idempotencyKey { proto.idempotencyKey = Data(key.readableBytesView) }
        return proto
    }
}
