internal import Foundation
internal import GRPCCore
internal import Logging
internal import NIOCore
internal import Synchronization
public import TerminusAPI
internal import TerminusProtocol
public import TerminusSessions

/// Delivers messages to one subscribed service: batches of at most `batchSize` on the pool's
/// long-lived Deliver streams, at most `window` messages in flight, bounded retries with
/// exponential backoff and full jitter, and a per-message outcome in the end.
final class ServiceDelivery: Sendable {
    let subscription: Subscription
    private let pool: ClientPool
    private let window: AsyncWindow
    private let encoder: UplinkEncoder
    private let logger: Logger

    init(subscription: Subscription, gatewayInstance: String, group: any EventLoopGroup, logger: Logger) {
        self.subscription = subscription
        self.encoder = UplinkEncoder(gatewayInstance: gatewayInstance)
        self.logger = logger
        self.pool = ClientPool(subscription: subscription, group: group, logger: logger)
        self.window = AsyncWindow(capacity: subscription.window)
    }

    func start() throws {
        try self.pool.start()
    }

    func rebalance() {
        self.pool.rebalance()
    }

    func shutdown() async {
        await self.pool.shutdown()
    }

    var inFlight: Int { self.window.inUse }

    /// Messages in flight, waiting for the window, or lingering.
    var backlog: Int {
        self.window.inUse + self.window.waitingMessages + self.lingering.withLock { $0.count }
    }

    /// Messages waiting for the linger to end, with whoever waits for their outcomes.
    private struct Lingering {
        var tickets: [(messages: [UplinkMessage], continuation: CheckedContinuation<[DeliveryOutcome], Never>)] = []
        var count = 0
        var timerArmed = false
    }

    private let lingering = Mutex(Lingering())

    /// One outcome per message, in order. With `lingerMilliseconds` > 0, messages from several
    /// edge batches (event loops, ticks) wait up to that long to share a batch, which is
    /// sent at once when `batchSize` messages are waiting.
    func deliver(_ messages: [UplinkMessage]) async -> [DeliveryOutcome] {
        guard self.subscription.lingerMilliseconds > 0 else { return await self.deliverNow(messages) }
        return await withCheckedContinuation { continuation in
            let (flushNow, armTimer) = self.lingering.withLock { state -> (Bool, Bool) in
                state.tickets.append((messages, continuation))
                state.count += messages.count
                if state.count >= self.subscription.batchSize { return (true, false) }
                if state.timerArmed { return (false, false) }
                state.timerArmed = true
                return (false, true)
            }
            if flushNow {
                Task { await self.flushLingering() }
            } else if armTimer {
                let linger = self.subscription.lingerMilliseconds
                Task {
                    try? await Task.sleep(for: .milliseconds(Int64(linger)))
                    await self.flushLingering()
                }
            }
        }
    }

    /// Sends everything that lingers as one delivery and hands each waiter its outcomes.
    private func flushLingering() async {
        let tickets = self.lingering.withLock { state in
            defer { state = Lingering() }
            return state.tickets
        }
        guard !tickets.isEmpty else { return }
        let outcomes = await self.deliverNow(tickets.flatMap(\.messages))
        var offset = 0
        for ticket in tickets {
            ticket.continuation.resume(returning: Array(outcomes[offset..<offset + ticket.messages.count]))
            offset += ticket.messages.count
        }
    }

    private func deliverNow(_ messages: [UplinkMessage]) async -> [DeliveryOutcome] {
        let size = max(1, self.subscription.batchSize)
        let chunks = stride(from: 0, to: messages.count, by: size).map { $0..<min($0 + size, messages.count) }
        if chunks.count == 1 { return await self.deliverChunk(messages[...]) }
        var outcomes = [DeliveryOutcome](repeating: .accepted, count: messages.count)
        await withTaskGroup(of: (Range<Int>, [DeliveryOutcome]).self) { group in
            for range in chunks {
                group.addTask { (range, await self.deliverChunk(messages[range])) }
            }
            for await (range, chunkOutcomes) in group {
                outcomes.replaceSubrange(range, with: chunkOutcomes)
            }
        }
        return outcomes
    }

    private func deliverChunk(_ messages: ArraySlice<UplinkMessage>) async -> [DeliveryOutcome] {
        let notAccepted = DeliveryOutcome.retryLater(afterSeconds: self.subscription.retryAfterSeconds)
        var outcomes = [DeliveryOutcome](repeating: notAccepted, count: messages.count)
        let protos = messages.map(self.encoder.encode)
        await self.window.acquire(messages.count)
        defer { self.window.release(messages.count) }

        var pending = Array(0..<messages.count)
        var attempt = 0
        let deadline = Duration.milliseconds(self.subscription.deadlineMilliseconds)
        while !pending.isEmpty && attempt < max(1, self.subscription.maxAttempts) {
            if attempt > 0 {
                try? await Task.sleep(for: .milliseconds(Int64(self.backoff(attempt: attempt))))
            }
            attempt += 1
            do {
                let response = try await self.pool.send(pending.map { protos[$0] }, deadline: deadline)
                guard response.results.count == pending.count else {
                    self.logger.error(
                        "backend answered with the wrong number of results",
                        metadata: [
                            "service": "\(self.subscription.name)", "sent": "\(pending.count)",
                            "results": "\(response.results.count)",
                        ]
                    )
                    continue
                }
                var retry: [Int] = []
                for (index, result) in zip(pending, response.results) {
                    switch result.status {
                    case .accepted:
                        outcomes[index] = .accepted
                    case .rejected where !result.retryable:
                        outcomes[index] = .rejected(reason: result.reason)
                    default:
                        retry.append(index)
                    }
                }
                pending = retry
            } catch {
                self.logger.warning(
                    "backend delivery failed",
                    metadata: [
                        "service": "\(self.subscription.name)", "attempt": "\(attempt)",
                        "messages": "\(pending.count)", "error": "\(error)",
                    ]
                )
            }
        }
        return outcomes
    }

    /// Full jitter: uniform in [0, min(max, initial × 2^(attempt-1))].
    private func backoff(attempt: Int) -> UInt64 {
        let ceiling = min(
            self.subscription.maxBackoffMilliseconds,
            self.subscription.initialBackoffMilliseconds << UInt64(min(attempt - 1, 20))
        )
        return UInt64.random(in: 0...max(1, ceiling))
    }
}

/// Turns an uplink message into the `terminus.v1.UplinkMessage` a backend receives.
public struct UplinkEncoder: Sendable {
    public let gatewayInstance: String

    public init(gatewayInstance: String) {
        self.gatewayInstance = gatewayInstance
    }

    public func encode(_ message: UplinkMessage) -> Terminus_V1_UplinkMessage {
        var proto = Terminus_V1_UplinkMessage()
        proto.deviceID = message.deviceID
        proto.topic = message.topic
        proto.messageID = message.messageID
        proto.payload = Data(message.payload.readableBytesView)
        proto.qos = message.qos == .atLeastOnce ? .atLeastOnce : .atMostOnce
        proto.receivedAtUnixMs = message.receivedAt
        proto.clientAddress = message.clientAddress
        proto.gatewayInstance = self.gatewayInstance
        proto.deliveryID = "\(self.gatewayInstance)/\(message.connectionID)/\(message.messageID)"
        return proto
    }
}
