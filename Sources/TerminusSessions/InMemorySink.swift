package import NIOCore
internal import Synchronization

/// A sink that keeps every message in memory: for tests and local experiments.
///
/// `outcome` decides each message's fate; after `startHolding()` batches stay unanswered until
/// `release()` is called, to test backpressure.
package final class InMemorySink: UplinkSink {
    private struct State {
        var messages: [UplinkMessage] = []
        var held: [Held] = []
        var holding = false
    }

    /// A batch answered only by `release()`, on its loop.
    private struct Held {
        let eventLoop: any EventLoop
        let completion: @Sendable ([DeliveryOutcome]) -> Void
        let outcomes: [DeliveryOutcome]
    }

    private let state = Mutex(State())
    private let outcome: @Sendable (UplinkMessage) -> DeliveryOutcome

    package init(outcome: @escaping @Sendable (UplinkMessage) -> DeliveryOutcome = { _ in .accepted }) {
        self.outcome = outcome
    }

    package func deliver(
        _ batch: [UplinkMessage],
        on eventLoop: any EventLoop,
        completion: @escaping @Sendable ([DeliveryOutcome]) -> Void
    ) {
        let outcomes = batch.map(self.outcome)
        let hold = self.state.withLock { state -> Bool in
            for (message, outcome) in zip(batch, outcomes) where outcome == .accepted {
                // Kept: copies of the slices of the read (see `UplinkSink`).
                var kept = message
                kept.payload = ByteBuffer(bytes: message.payload.readableBytesView)
                kept.idempotencyKey = message.idempotencyKey.map { ByteBuffer(bytes: $0.readableBytesView) }
                state.messages.append(kept)
            }
            if state.holding {
                state.held.append(Held(eventLoop: eventLoop, completion: completion, outcomes: outcomes))
            }
            return state.holding
        }
        if !hold { completion(outcomes) }
    }

    /// Every accepted message so far, in arrival order.
    package var messages: [UplinkMessage] { self.state.withLock { $0.messages } }

    /// From now on, batches are answered only by `release()`.
    package func startHolding() {
        self.state.withLock { $0.holding = true }
    }

    /// Answers every held batch and stops holding.
    package func release() {
        let held = self.state.withLock { state in
            state.holding = false
            defer { state.held.removeAll() }
            return state.held
        }
        for batch in held { batch.eventLoop.execute { batch.completion(batch.outcomes) } }
    }
}
