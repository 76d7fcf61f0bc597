internal import Synchronization
internal import TerminusSessions

/// Collects the outcomes of a set of messages as answers arrive, from any thread, and hands
/// them over in order once the last expected answer is in. The one aggregator of delivery: a
/// service's batch parts, a batch's messages settled one by one (retries), and the services of
/// an edge batch all answer into one of these.
///
/// Answers for the same message combine (`DeliveryOutcome.combined(with:)`): accepted only if
/// every answer accepted it; a permanent refusal wins over a retry.
final class OutcomeAggregator: Sendable {
    private struct State {
        var outcomes: [DeliveryOutcome]
        var remaining: Int
        var finished: Bool
    }

    private let state: Mutex<State>
    /// Held outside `state`: a closure handed out of `withLock` (generic over its result) is
    /// wrapped in a re-abstraction thunk, one allocation per batch that this avoids.
    private let completion: @Sendable ([DeliveryOutcome]) -> Void
    /// Permits given back to a delivery's window when the last answer is in, before
    /// `completion` runs (held here rather than in a closure around `completion`: one
    /// allocation fewer per edge batch).
    private let window: AsyncWindow?
    private let permits: Int

    /// - Parameters:
    ///   - outcomes: the starting outcome of each message (`accepted` unless known otherwise).
    ///   - answers: how many single-message answers will arrive in all (an `add` of n indices
    ///     counts n). With none expected, `completion` runs at once.
    ///   - window: released by `permits` once the last answer is in, before `completion`.
    init(
        outcomes: [DeliveryOutcome],
        answers: Int,
        releasing window: AsyncWindow? = nil,
        permits: Int = 0,
        completion: @escaping @Sendable ([DeliveryOutcome]) -> Void
    ) {
        self.window = window
        self.permits = permits
        self.completion = completion
        if answers <= 0 {
            self.state = Mutex(State(outcomes: outcomes, remaining: 0, finished: true))
            self.finish(outcomes)
        } else {
            self.state = Mutex(State(outcomes: outcomes, remaining: answers, finished: false))
        }
    }

    /// `count` messages, each answered once; with `window`, its `count` permits are released
    /// when the last answer is in.
    convenience init(
        count: Int,
        releasing window: AsyncWindow? = nil,
        completion: @escaping @Sendable ([DeliveryOutcome]) -> Void
    ) {
        self.init(
            outcomes: DeliveryOutcome.accepted.repeated(count),
            answers: count,
            releasing: window,
            permits: count,
            completion: completion
        )
    }

    /// One answer for message `index`.
    func add(_ outcome: DeliveryOutcome, at index: Int) {
        self.finish(
            self.state.withLock { state in
                state.outcomes[index] = state.outcomes[index].combined(with: outcome)
                state.remaining -= 1
                return Self.takeIfDone(&state)
            }
        )
    }

    /// One answer each for the messages at `indices`, in order.
    func add<Outcomes: Collection<DeliveryOutcome>, Indices: Collection<Int>>(
        _ outcomes: Outcomes,
        at indices: Indices
    ) {
        self.finish(
            self.state.withLock { state in
                for (index, outcome) in zip(indices, outcomes) {
                    state.outcomes[index] = state.outcomes[index].combined(with: outcome)
                    state.remaining -= 1
                }
                return Self.takeIfDone(&state)
            }
        )
    }

    /// The outcomes, the first time the last expected answer is in.
    private static func takeIfDone(_ state: inout State) -> [DeliveryOutcome]? {
        guard state.remaining <= 0, !state.finished else { return nil }
        state.finished = true
        return state.outcomes
    }

    /// Outside the lock: the completion may take other locks (the window, a promise).
    private func finish(_ outcomes: [DeliveryOutcome]?) {
        guard let outcomes else { return }
        self.window?.release(self.permits)
        self.completion(outcomes)
    }
}

extension DeliveryOutcome {
    /// Two answers for one message: accepted only if both accepted; a permanent refusal wins
    /// over a retry; of two retries the longer hint wins; `noRoute` stands only alone.
    func combined(with other: DeliveryOutcome) -> DeliveryOutcome {
        switch (self, other) {
        case (.rejected, _): self
        case (_, .rejected): other
        case (.retryLater(let a), .retryLater(let b)): .retryLater(afterSeconds: max(a, b))
        case (.retryLater, _): self
        case (_, .retryLater): other
        case (.accepted, _): other
        default: self
        }
    }
}
