internal import GRPCCore
internal import GRPCNIOTransportHTTP2
internal import Logging
internal import Synchronization
internal import TerminusAPI
internal import TerminusProtocol

/// Why a batch sent on a `DeliveryStream` got no answer.
enum DeliveryStreamFailure: Error, CustomStringConvertible {
    /// No stream is open on this connection right now (connecting, or backing off).
    case notConnected
    /// The stream ended or failed before the batch was answered.
    case streamEnded
    /// No answer within the deadline.
    case deadlineExceeded

    var description: String {
        switch self {
        case .notConnected: "no open Deliver stream"
        case .streamEnded: "the Deliver stream ended before the batch was answered"
        case .deadlineExceeded: "no answer within the deadline"
        }
    }
}

/// One long-lived bidirectional Deliver stream on one pooled HTTP/2 connection.
///
/// Batches are written as they come (several may be unanswered at once) and matched to their
/// answers by `batch_id`, so a backend may answer out of order. A batch fails with
/// `deadlineExceeded` when its deadline passes, and with `streamEnded` when the stream breaks;
/// the caller retries it (on another stream, after backoff). The stream is re-opened after a
/// backoff while `close()` has not been called.
///
/// At most `batchesInFlight` batches are written and unanswered at once; further batches wait
/// for one of them to be answered *before* they are written and before their deadline starts.
/// A backend that answers a stream's batches one after another would otherwise see every
/// batch of the service's window queued on its stream, most of them past their deadline by
/// the time it gets to them (retried, so delivered twice, and the devices told RETRY_LATER).
final class DeliveryStream: Sendable {
    typealias Client = GRPCClient<HTTP2ClientTransport.Posix>

    private struct Waiter {
        var continuation: CheckedContinuation<Terminus_V1_DeliverResponse, any Error>
        var deadline: ContinuousClock.Instant
    }

    private struct State {
        /// Requests for the open stream; nil while none is open.
        var input: AsyncStream<Terminus_V1_DeliverRequest>.Continuation?
        var waiting: [UInt64: Waiter] = [:]
        var nextBatchID: UInt64 = 1
        var closed = false
        /// Whether the open stream has answered anything yet.
        var answered = false
    }

    private let client: Client
    private let subscription: String
    private let logger: Logger
    private let state = Mutex(State())
    private let sweepInterval: Duration
    private let credits: AsyncWindow
    /// How a stream that cannot open is re-opened (`Subscription.reconnect`).
    private let reconnect: TerminusProtocol.RetryPolicy

    init(client: Client, subscription: Subscription, logger: Logger) {
        self.client = client
        self.subscription = subscription.name
        self.logger = logger
        let quarter = max(10, min(250, subscription.deadlineMilliseconds / 4))
        self.sweepInterval = .milliseconds(quarter)
        self.credits = AsyncWindow(capacity: subscription.batchesInFlight)
        self.reconnect = subscription.reconnect
    }

    /// Batches written or waiting to be written on this stream (to pick the least loaded).
    var load: Int { self.credits.inUse + self.credits.waiting }

    /// Whether a stream is open and takes batches.
    var isOpen: Bool { self.state.withLock { $0.input != nil } }

    /// Whether batches written on it still wait for their answers.
    var hasBatchesInFlight: Bool { self.state.withLock { !$0.waiting.isEmpty } }

    /// Waits until one more batch may be written on this stream; `send` gives the credit back.
    func acquireCredit() async {
        await self.credits.acquire(1)
    }

    /// Gives back a credit the caller will not use.
    func releaseCredit() {
        self.credits.release(1)
    }

    /// Sends one batch (the caller holds a credit, which this returns) and waits for its answer.
    func send(_ messages: [Terminus_V1_UplinkMessage], deadline: Duration) async throws -> Terminus_V1_DeliverResponse {
        defer { self.credits.release(1) }
        return try await withCheckedThrowingContinuation { continuation in
            let sent = self.state.withLock { state -> Bool in
                guard let input = state.input else { return false }
                let id = state.nextBatchID
                state.nextBatchID &+= 1
                state.waiting[id] = Waiter(continuation: continuation, deadline: .now + deadline)
                var request = Terminus_V1_DeliverRequest()
                request.subscription = self.subscription
                request.batchID = id
                request.messages = messages
                input.yield(request)
                return true
            }
            if !sent { continuation.resume(throwing: DeliveryStreamFailure.notConnected) }
        }
    }

    /// Keeps a stream open until `close()`: opens it, re-opens it after a backoff when it ends.
    func run() async {
        var failures = 0
        while !Task.isCancelled {
            let (requests, input) = AsyncStream.makeStream(of: Terminus_V1_DeliverRequest.self)
            let opened = self.state.withLock { state -> Bool in
                guard !state.closed else { return false }
                state.input = input
                state.answered = false
                return true
            }
            guard opened else { break }
            var options = CallOptions.defaults
            // Fail fast while the service is unreachable: batches are retried elsewhere or
            // answered RETRY_LATER instead of waiting for a connection.
            options.waitForReady = false
            do {
                try await withThrowingDiscardingTaskGroup { group in
                    group.addTask { await self.sweepExpired() }
                    defer { group.cancelAll() }
                    try await Terminus_V1_UplinkReceiver.Client(wrapping: self.client).deliver(options: options) {
                        writer in
                        for await request in requests {
                            // Skip batches whose caller gave up while the stream was opening.
                            guard self.isWaiting(request.batchID) else { continue }
                            try await writer.write(request)
                        }
                    } onResponse: { response in
                        defer { self.endInput() }
                        for try await message in response.messages {
                            self.complete(message)
                        }
                    }
                }
            } catch {
                if !self.state.withLock({ $0.closed }) {
                    let level: Logger.Level = failures == 0 ? .warning : .debug
                    self.logger.log(
                        level: level,
                        "Deliver stream failed",
                        metadata: ["service": "\(self.subscription)", "error": "\(error)"]
                    )
                }
            }
            self.endInput()
            self.failAll(DeliveryStreamFailure.streamEnded)
            if self.state.withLock({ $0.closed }) { break }
            failures = self.state.withLock { $0.answered } ? 0 : failures + 1
            // A stream that broke after working is re-opened at once; one that cannot open
            // backs off by the service's reconnect policy.
            if failures > 0 {
                try? await Task.sleep(for: self.reconnect.delay(afterFailures: failures))
            }
        }
        self.endInput()
        self.failAll(DeliveryStreamFailure.streamEnded)
    }

    /// Takes no new batches and half-closes the stream; batches already written still get
    /// their answers (or fail at their deadline). `run()` returns once the backend ends it.
    func close() {
        self.state.withLock { state in
            state.closed = true
            state.input?.finish()
            state.input = nil
        }
    }

    private func endInput() {
        self.state.withLock { state in
            state.input?.finish()
            state.input = nil
        }
    }

    private func isWaiting(_ id: UInt64) -> Bool {
        self.state.withLock { $0.waiting[id] != nil }
    }

    private func complete(_ response: Terminus_V1_DeliverResponse) {
        let waiter = self.state.withLock { state in
            state.answered = true
            return state.waiting.removeValue(forKey: response.batchID)
        }
        guard let waiter else {
            // Answered after its deadline, or an id we never sent.
            self.logger.debug(
                "answer for a batch nobody waits for",
                metadata: ["service": "\(self.subscription)", "batch_id": "\(response.batchID)"]
            )
            return
        }
        waiter.continuation.resume(returning: response)
    }

    private func failAll(_ failure: DeliveryStreamFailure) {
        let waiters = self.state.withLock { state in
            defer { state.waiting.removeAll() }
            return Array(state.waiting.values)
        }
        for waiter in waiters { waiter.continuation.resume(throwing: failure) }
    }

    /// Fails batches past their deadline, until cancelled.
    private func sweepExpired() async {
        while !Task.isCancelled {
            try? await Task.sleep(for: self.sweepInterval)
            let now = ContinuousClock.now
            let expired = self.state.withLock { state -> [Waiter] in
                let ids = state.waiting.compactMap { $0.value.deadline <= now ? $0.key : nil }
                return ids.compactMap { state.waiting.removeValue(forKey: $0) }
            }
            for waiter in expired { waiter.continuation.resume(throwing: DeliveryStreamFailure.deadlineExceeded) }
        }
    }
}
