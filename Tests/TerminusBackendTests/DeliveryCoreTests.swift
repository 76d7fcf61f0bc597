import NIOCore
import NIOPosix
import Synchronization
import TerminusProtocol
import TerminusSessions
import TerminusTestSupport
import Testing

@testable import TerminusBackend

@Suite("Delivery core: queue, retry policy, outcome aggregator, window hand-over")
struct DeliveryCoreTests {
    let t0 = ContinuousClock.now

    func at(_ milliseconds: Int) -> ContinuousClock.Instant { self.t0 + .milliseconds(milliseconds) }

    @Test("without linger a batch goes at once; batches are cut at batch_size, oldest first")
    func batching() {
        var queue = DeliveryQueue<Int>(batchSize: 3, linger: .zero)
        #expect(queue.readiness(now: self.t0) == .wait(until: nil, lingering: false))
        let appended = queue.append(contentsOf: 1...5, now: self.t0)
        #expect(appended)
        #expect(queue.readiness(now: self.t0) == .ready)
        let batches = (0..<3).map { _ in queue.takeBatch(now: self.t0) }
        #expect(batches == [[1, 2, 3], [4, 5], []])
    }

    @Test("with linger a partial batch waits until the oldest message lingered enough; a full one goes at once")
    func linger() {
        var queue = DeliveryQueue<Int>(batchSize: 4, linger: .milliseconds(20))
        _ = queue.append(contentsOf: [1], now: self.at(0))
        _ = queue.append(contentsOf: [2], now: self.at(5))
        #expect(queue.readiness(now: self.at(10)) == .wait(until: self.at(20), lingering: true))
        #expect(queue.readiness(now: self.at(20)) == .ready)
        _ = queue.append(contentsOf: [3, 4], now: self.at(12))
        #expect(queue.readiness(now: self.at(12)) == .ready, "a full batch does not linger")
        let batch = queue.takeBatch(now: self.at(12))
        #expect(batch == [1, 2, 3, 4])
    }

    @Test("retries wait for their backoff and go before fresh messages; stop returns everything left")
    func retries() {
        var queue = DeliveryQueue<String>(batchSize: 2, linger: .milliseconds(50))
        let queued = queue.retry([("r1", self.at(30)), ("r2", self.at(10))])
        #expect(queued)
        #expect(queue.readiness(now: self.at(0)) == .wait(until: self.at(10), lingering: false))
        _ = queue.append(contentsOf: ["f1"], now: self.at(0))
        #expect(queue.readiness(now: self.at(5)) == .wait(until: self.at(10), lingering: true))
        #expect(queue.readiness(now: self.at(10)) == .ready)
        let first = queue.takeBatch(now: self.at(10))
        #expect(first == ["r2", "f1"])
        #expect(queue.retryCount == 1 && queue.freshCount == 0)
        _ = queue.append(contentsOf: ["f2"], now: self.at(11))
        let left = queue.stop()
        #expect(left == ["f2", "r1"])
        #expect(queue.readiness(now: self.at(100)) == .stopped)
        let late = queue.append(contentsOf: ["late"], now: self.at(100))
        let lateRetry = queue.retry([("late", self.at(100))])
        #expect(!late && !lateRetry)
    }

    @Test("retry policy: ceilings grow by the multiplier up to the cap; jitter stays within its bounds")
    func retryPolicy() {
        let policy = RetryPolicy(maxAttempts: 4, initialBackoff: .milliseconds(100), maxBackoff: .milliseconds(500))
        #expect(
            (1...5).map { policy.ceiling(afterFailures: $0) } == [100, 200, 400, 500, 500].map { .milliseconds($0) }
        )
        #expect(policy.allows(attempt: 4) && !policy.allows(attempt: 5))
        #expect(Array(policy.delays()).count == 3, "three waits between four attempts")
        // Full jitter: uniform over [0, ceiling], so 1,000 draws reach both ends of it.
        var generator = SeededGenerator(state: 42)
        let draws = (0..<1_000).map { _ in policy.delay(afterFailures: 2, using: &generator) }
        #expect(draws.allSatisfy { $0 >= .zero && $0 <= .milliseconds(200) })
        #expect(draws.min()! < .milliseconds(10) && draws.max()! > .milliseconds(190))

        let exact = RetryPolicy(
            maxAttempts: nil,
            initialBackoff: .milliseconds(50),
            maxBackoff: .seconds(2),
            jitter: .none
        )
        #expect(exact.delays().prefix(7).map { $0 } == [50, 100, 200, 400, 800, 1600, 2000].map { .milliseconds($0) })
        #expect(exact.allows(attempt: 1_000_000), "no limit")

        let reconnect = RetryPolicy.backendReconnect
        for failures in 1...12 {
            let ceiling = reconnect.ceiling(afterFailures: failures)
            for _ in 0..<50 {
                let delay = reconnect.delay(afterFailures: failures)
                #expect(delay >= ceiling * 4 / 5 - .microseconds(1) && delay <= reconnect.maxBackoff)
            }
        }
    }

    @Test("a service's window and connections are split between the event loops, at least one each")
    func shares() throws {
        var service = Subscription(name: "s", host: "h", port: 1, filters: [])
        service.window = 8193
        service.connections = 5
        let halves = (0..<2).map { service.share($0, of: 2) }
        #expect(halves.map(\.window) == [4097, 4096])
        #expect(halves.map(\.connections) == [3, 2])
        service.window = 3
        service.connections = 1
        let quarters = (0..<4).map { service.share($0, of: 4) }
        #expect(quarters.map(\.window) == [1, 1, 1, 1])
        #expect(quarters.map(\.connections) == [1, 1, 1, 1])
        #expect(service.share(0, of: 1).window == 3)
    }

    @Test("a task preferring a loop's executor runs on that loop, and so do its child tasks")
    func loopExecutor() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        let loop = group.next()
        let executor = LoopExecutor(loop)
        let onLoop = await withTaskExecutorPreference(executor) {
            var seen = [loop.inEventLoop]
            try? await Task.sleep(for: .milliseconds(5))
            seen.append(loop.inEventLoop)
            seen += await withTaskGroup(of: Bool.self) { children in
                for _ in 0..<3 { children.addTask { loop.inEventLoop } }
                return await children.reduce(into: []) { $0.append($1) }
            }
            return seen
        }
        #expect(onLoop == [true, true, true, true, true])
        try await group.shutdownGracefully()
    }

    @Test("the aggregator combines answers per message and completes once, after the last")
    func aggregator() {
        let result = Mutex<[[DeliveryOutcome]]>([])
        let aggregator = OutcomeAggregator(outcomes: [.accepted, .noRoute, .accepted], answers: 4) { outcomes in
            result.withLock { $0.append(outcomes) }
        }
        aggregator.add([DeliveryOutcome.accepted, .retryLater(afterSeconds: 2)], at: [0, 2])
        aggregator.add(.retryLater(afterSeconds: 5), at: 2)
        #expect(result.withLock { $0.isEmpty })
        aggregator.add(.rejected(reason: "no"), at: 0)
        #expect(result.withLock { $0 } == [[.rejected(reason: "no"), .noRoute, .retryLater(afterSeconds: 5)]])
        aggregator.add(.accepted, at: 1)  // more answers than expected: ignored, no second completion
        #expect(result.withLock { $0.count } == 1)

        let none = Mutex(0)
        _ = OutcomeAggregator(outcomes: [.noRoute], answers: 0) { _ in none.withLock { $0 += 1 } }
        #expect(none.withLock { $0 } == 1, "nothing to wait for: completes at once")
    }

    @Test("tryAcquire takes free permits only, and never ahead of a waiter")
    func windowTryAcquire() {
        let window = AsyncWindow(capacity: 3)
        #expect(window.tryAcquire(2))
        #expect(!window.tryAcquire(2), "one permit is left")
        let ran = Mutex(false)
        window.acquire(2) { ran.withLock { $0 = true } }
        #expect(!ran.withLock { $0 }, "the waiter waits for a second permit")
        #expect(!window.tryAcquire(1), "a free permit, but a waiter came first")
        window.release(2)
        #expect(ran.withLock { $0 })
        #expect(window.used == 2)
        #expect(window.tryAcquire(1) && window.used == 3)
        #expect(!window.tryAcquire(1))
    }

    @Test("a window admission deferred by a full window runs on the event loop that asked, not on the releasing thread")
    func windowHandOver() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let loop = group.next()
        let window = AsyncWindow(capacity: 1)
        window.acquire(1) {}
        let ranOnLoop = Mutex<Bool?>(nil)
        try await loop.submit {
            window.acquire(1, on: loop) { ranOnLoop.withLock { $0 = loop.inEventLoop } }
        }.get()
        #expect(ranOnLoop.withLock { $0 } == nil, "the window is full: it waits")
        window.release(1)  // from this test's thread, like a gRPC response thread
        try await loop.submit {}.get()  // whatever was handed to the loop has run
        #expect(ranOnLoop.withLock { $0 } == true)
        try await group.shutdownGracefully()
    }
}
