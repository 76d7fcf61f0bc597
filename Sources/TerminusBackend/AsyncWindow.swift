internal import NIOCore
internal import Synchronization

/// A counting semaphore for in-flight messages to one service (and for batches on one stream).
/// Waiters are served in order. The number of waiters is bounded by the devices' own inflight
/// windows (a device stops being read once its messages wait here), so this queue cannot grow
/// without bound.
///
/// Two ways in: `acquire` from a task, and `acquire(_:then:)`, which runs a closure once the
/// permits are taken (at once, on the caller's thread, when they are free), so that an event
/// loop can hand over work without starting a task.
final class AsyncWindow: Sendable {
    private struct Waiter {
        var count: Int
        var resume: @Sendable () -> Void
        /// Where `resume` must run (`acquire(_:on:then:)`); nil: on the releasing thread.
        var eventLoop: (any EventLoop)?

        func run() {
            if let eventLoop = self.eventLoop, !eventLoop.inEventLoop {
                eventLoop.execute(self.resume)
            } else {
                self.resume()
            }
        }
    }

    private struct State {
        var available: Int
        /// First come, first served; a ring buffer, since thousands of edge batches can wait
        /// behind a slow backend and each release takes from the front.
        var waiters = CircularBuffer<Waiter>()
        /// A `release` is running waiters' closures: others leave newly ready waiters to it.
        var releasing = false

        /// Takes the waiters at the front that now fit.
        mutating func popReady() -> [Waiter] {
            var ready: [Waiter] = []
            while let first = self.waiters.first, first.count <= self.available {
                self.available -= first.count
                ready.append(first)
                _ = self.waiters.popFirst()
            }
            return ready
        }
    }

    let capacity: Int
    private let state: Mutex<State>

    /// Permits taken now.
    var used: Int { self.capacity - self.state.withLock { $0.available } }

    init(capacity: Int) {
        self.capacity = max(1, capacity)
        self.state = Mutex(State(available: max(1, capacity)))
    }

    /// Takes `count` permits (at most the capacity), waiting while the window is full.
    func acquire(_ count: Int) async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            self.acquire(count) { continuation.resume() }
        }
    }

    /// Takes `count` permits (at most the capacity) if they are free and nobody waits before
    /// us; false (and nothing taken) otherwise.
    func tryAcquire(_ count: Int) -> Bool {
        let count = min(count, self.capacity)
        return self.state.withLock { state in
            guard state.waiters.isEmpty && state.available >= count else { return false }
            state.available -= count
            return true
        }
    }

    /// Takes `count` permits (at most the capacity), then calls `then`: right here when they
    /// are free and nobody waits before us, otherwise from the `release` that frees them.
    func acquire(_ count: Int, then: @escaping @Sendable () -> Void) {
        self.acquire(count, waiter: Waiter(count: count, resume: then, eventLoop: nil))
    }

    private func acquire(_ count: Int, waiter: Waiter) {
        let count = min(count, self.capacity)
        let ready = self.state.withLock { state -> Bool in
            if state.waiters.isEmpty && state.available >= count {
                state.available -= count
                return true
            }
            var waiter = waiter
            waiter.count = count
            state.waiters.append(waiter)
            return false
        }
        if ready { waiter.resume() }
    }

    /// Like `acquire(_:then:)`, but `then` always runs on `eventLoop`: at once when the permits
    /// are free (the caller is on that loop), otherwise submitted to it by the `release` that
    /// frees them, so that one loop's work never runs on another loop or a gRPC thread.
    func acquire(_ count: Int, on eventLoop: any EventLoop, then: @escaping @Sendable () -> Void) {
        self.acquire(count, waiter: Waiter(count: count, resume: then, eventLoop: eventLoop))
    }

    /// Gives `count` permits back and runs the waiters that now fit, in order, on this thread.
    /// A waiter's closure may release permits again (a batch refused at once); that release
    /// leaves its waiters to the loop already running here instead of nesting.
    func release(_ count: Int) {
        let count = min(count, self.capacity)
        var ready = self.state.withLock { state -> [Waiter] in
            state.available += count
            if state.releasing { return [] }
            let ready = state.popReady()
            if !ready.isEmpty { state.releasing = true }
            return ready
        }
        while !ready.isEmpty {
            for waiter in ready { waiter.run() }
            ready = self.state.withLock { state in
                let more = state.popReady()
                if more.isEmpty { state.releasing = false }
                return more
            }
        }
    }

    var inUse: Int { self.state.withLock { self.capacity - $0.available } }
    var waiting: Int { self.state.withLock { $0.waiters.count } }
    var waitingMessages: Int { self.state.withLock { $0.waiters.reduce(0) { $0 + $1.count } } }
}
