internal import NIOCore
internal import Synchronization

/// A counting semaphore for in-flight messages to one service. Waiters are served in order.
/// The number of waiters is bounded by the devices' own inflight windows (a device stops
/// being read once its messages wait here), so this queue cannot grow without bound.
final class AsyncWindow: Sendable {
    private struct State {
        var available: Int
        /// First come, first served; a ring buffer, since thousands of edge batches can wait
        /// behind a slow backend and each release takes from the front.
        var waiters = CircularBuffer<(count: Int, continuation: CheckedContinuation<Void, Never>)>()
    }

    let capacity: Int
    private let state: Mutex<State>

    init(capacity: Int) {
        self.capacity = max(1, capacity)
        self.state = Mutex(State(available: max(1, capacity)))
    }

    /// Takes `count` permits (at most the capacity), waiting while the window is full.
    func acquire(_ count: Int) async {
        let count = min(count, self.capacity)
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let ready = self.state.withLock { state -> Bool in
                if state.waiters.isEmpty && state.available >= count {
                    state.available -= count
                    return true
                }
                state.waiters.append((count, continuation))
                return false
            }
            if ready { continuation.resume() }
        }
    }

    /// Takes `count` permits if they are free now and nobody waits before us; never waits.
    func tryAcquire(_ count: Int) -> Bool {
        let count = min(count, self.capacity)
        return self.state.withLock { state in
            guard state.waiters.isEmpty && state.available >= count else { return false }
            state.available -= count
            return true
        }
    }

    func release(_ count: Int) {
        let count = min(count, self.capacity)
        let resumed = self.state.withLock { state -> [CheckedContinuation<Void, Never>] in
            state.available += count
            var resumed: [CheckedContinuation<Void, Never>] = []
            while let first = state.waiters.first, first.count <= state.available {
                state.available -= first.count
                resumed.append(first.continuation)
                _ = state.waiters.popFirst()
            }
            return resumed
        }
        for continuation in resumed { continuation.resume() }
    }

    var inUse: Int { self.state.withLock { self.capacity - $0.available } }
    var waiting: Int { self.state.withLock { $0.waiters.count } }
    var waitingMessages: Int { self.state.withLock { $0.waiters.reduce(0) { $0 + $1.count } } }
}
