internal import NIOCore

/// One service's queue, as a value without locks, tasks or a clock of its own: fresh messages
/// in arrival order (each with the time it was queued, for `linger`), and retries with the time
/// they may go again (their backoff). `ServiceDelivery` keeps one on its event loop and asks it
/// what to do; tests drive it with instants they make up.
struct DeliveryQueue<Element> {
    private struct Item {
        var element: Element
        /// Queued at (fresh: for linger) or not to be sent before (retries: backoff).
        var time: ContinuousClock.Instant
    }

    enum Readiness: Equatable {
        /// A batch can go now.
        case ready
        /// Nothing can go before `until` (nil: not before more work arrives). `lingering`: a
        /// started batch waits to fill, and only a full batch (or the linger's end) should
        /// start a sending pass, not every edge batch.
        case wait(until: ContinuousClock.Instant?, lingering: Bool)
        /// Stopped: nothing more goes.
        case stopped
    }

    let batchSize: Int
    let linger: Duration
    private var fresh = CircularBuffer<Item>()
    private var retries: [Item] = []
    private(set) var isStopped = false

    init(batchSize: Int, linger: Duration) {
        self.batchSize = max(1, batchSize)
        self.linger = linger
    }

    var freshCount: Int { self.fresh.count }
    var retryCount: Int { self.retries.count }

    /// Queues new messages; false (and nothing queued) once stopped.
    mutating func append<Elements: Sequence<Element>>(
        contentsOf elements: Elements,
        now: ContinuousClock.Instant
    ) -> Bool {
        guard !self.isStopped else { return false }
        for element in elements { self.fresh.append(Item(element: element, time: now)) }
        return true
    }

    /// Queues messages to retry once `notBefore` has passed; false (and nothing queued) once stopped.
    mutating func retry<Elements: Sequence<(Element, ContinuousClock.Instant)>>(_ elements: Elements) -> Bool {
        guard !self.isStopped else { return false }
        for (element, notBefore) in elements { self.retries.append(Item(element: element, time: notBefore)) }
        return true
    }

    /// Whether a batch can go at `now`: a retry whose backoff ended, or fresh messages (with a
    /// linger, only a full batch or one whose oldest message has lingered long enough).
    func readiness(now: ContinuousClock.Instant) -> Readiness {
        if self.isStopped { return .stopped }
        let earliestRetry = self.retries.lazy.map(\.time).min()
        if let earliestRetry, earliestRetry <= now { return .ready }
        guard !self.fresh.isEmpty else { return .wait(until: earliestRetry, lingering: false) }
        // Without a linger (the default) the oldest message's time does not matter: not reading
        // it spares a copy of the whole item (its topic and payload retained and released).
        if self.linger <= .zero { return .ready }
        let lingerEnds = self.fresh[self.fresh.startIndex].time + self.linger
        if self.fresh.count < self.batchSize && lingerEnds > now {
            return .wait(until: min(lingerEnds, earliestRetry ?? lingerEnds), lingering: true)
        }
        return .ready
    }

    /// Up to `batchSize` messages: retries whose backoff ended first, then fresh ones.
    mutating func takeBatch(now: ContinuousClock.Instant) -> [Element] {
        guard !self.isStopped else { return [] }
        var batch: [Element] = []
        // One allocation for the batch, not one per doubling as it fills.
        batch.reserveCapacity(min(self.batchSize, self.retries.count + self.fresh.count))
        var index = 0
        while index < self.retries.count && batch.count < self.batchSize {
            if self.retries[index].time <= now {
                batch.append(self.retries.remove(at: index).element)
            } else {
                index += 1
            }
        }
        while batch.count < self.batchSize, let item = self.fresh.popFirst() { batch.append(item.element) }
        return batch
    }

    /// Stops the queue and returns what it still held (fresh first, then retries).
    mutating func stop() -> [Element] {
        self.isStopped = true
        defer {
            self.fresh.removeAll()
            self.retries.removeAll()
        }
        return self.fresh.map(\.element) + self.retries.map(\.element)
    }
}
