internal import Synchronization

/// Wakes a waiting loop when there is work, or after a timeout: lets an idle loop sleep for
/// seconds instead of polling every few milliseconds, while work still starts at once.
package final class Wakeup: Sendable {
    private struct State {
        /// Signalled while nobody waited: the next wait returns at once.
        var pending = false
        var waiter: CheckedContinuation<Void, Never>?
        /// The current wait, and whether its timeout passed before it started waiting.
        var generation = 0
        var expired = false
    }

    private let state = Mutex(State())

    package init() {}

    /// Wakes the waiter, or the next one.
    package func signal() {
        let waiter = self.state.withLock { state -> CheckedContinuation<Void, Never>? in
            guard let waiter = state.waiter else {
                state.pending = true
                return nil
            }
            state.waiter = nil
            return waiter
        }
        waiter?.resume()
    }

    /// Returns when signalled (or a signal is pending), after `timeout`, or when the task is
    /// cancelled. One waiter at a time.
    package func wait(timeout: Duration) async {
        let generation = self.state.withLock { state -> Int? in
            if state.pending {
                state.pending = false
                return nil
            }
            state.generation += 1
            state.expired = false
            return state.generation
        }
        guard let generation else { return }
        await withTaskGroup(of: Void.self) { group in
            // The timeout; cancellation (of the waiting task) ends the sleep at once, too.
            group.addTask {
                try? await Task.sleep(for: timeout)
                let waiter = self.state.withLock { state -> CheckedContinuation<Void, Never>? in
                    guard state.generation == generation else { return nil }
                    guard let waiter = state.waiter else {
                        state.expired = true
                        return nil
                    }
                    state.waiter = nil
                    return waiter
                }
                waiter?.resume()
            }
            await withCheckedContinuation { continuation in
                let now = self.state.withLock { state -> Bool in
                    if state.pending || state.expired {
                        state.pending = false
                        return true
                    }
                    state.waiter = continuation
                    return false
                }
                if now { continuation.resume() }
            }
            group.cancelAll()
        }
    }
}
