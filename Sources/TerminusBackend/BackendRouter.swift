package import Logging
package import NIOCore
package import ServiceLifecycle
internal import TerminusListeners
package import TerminusMetrics
package import TerminusRouting
package import TerminusSessions

/// The uplink sink that routes each message to every service whose topic filters match it,
/// over gRPC, and turns their answers into the device's ACK.
///
/// - One batch per service per edge batch (an event loop tick), split at `batch_size`, written
///   on the service's long-lived Deliver streams.
/// - A message is `accepted` only when every matching service accepted it; `rejected` when
///   any refused it for good; otherwise `retryLater` (the device resends; services that had
///   accepted it see a duplicate with the same `delivery_id`). No match: `noRoute`.
/// - The route table is an immutable snapshot, read once per edge batch; a configuration
///   reload swaps in another (`reload(filters:)`) for the same services.
/// - Its work runs in `services`: one `Service` per subscribed service (its connection
///   pools) and one that re-balances the pools; run them in the gateway's
///   `ServiceGroup`.
package final class BackendRouter: UplinkSink, Sendable {
    /// At most this many services: the route table's service set is one 64-bit word.
    package static let maxServices = ServiceSet.capacity

    private let table: Reloadable<RouteTable>
    /// Per configured service, its delivery on each event loop (in the group's order).
    private let services: [[ServiceDelivery]]
    /// Which of a service's deliveries serves a loop's devices.
    private let loopIndex: [ObjectIdentifier: Int]
    private let logger: Logger

    package init(
        subscriptions: [Subscription],
        instanceID: String,
        group: any EventLoopGroup,
        logger: Logger,
        shutdown: ShutdownDeadline = ShutdownDeadline()
    ) throws {
        guard subscriptions.count <= Self.maxServices else {
            throw RouterError("at most \(Self.maxServices) services can be configured")
        }
        self.table = Reloadable(Self.routeTable(subscriptions.map(\.filters)))
        let loops = Array(group.makeIterator())
        self.loopIndex = Dictionary(uniqueKeysWithValues: loops.enumerated().map { (ObjectIdentifier($1), $0) })
        self.services = subscriptions.map { subscription in
            loops.enumerated().map { index, loop in
                ServiceDelivery(
                    subscription: subscription.share(index, of: loops.count),
                    instanceID: instanceID,
                    eventLoop: loop,
                    logger: logger,
                    shutdown: shutdown
                )
            }
        }
        self.logger = logger
    }

    private static func routeTable(_ filters: [[TopicFilter]]) -> RouteTable {
        var routes: [(TopicFilter, Int)] = []
        for (index, serviceFilters) in filters.enumerated() {
            for filter in serviceFilters { routes.append((filter, index)) }
        }
        return RouteTable(routes: routes)
    }

    /// A configuration reload of the routes: `filters[i]` are the new topic filters of the
    /// i-th configured service (same services, same order). Edge batches planned from now on
    /// use the new table; batches already handed to their services finish as planned.
    package func reload(filters: [[TopicFilter]]) throws {
        guard filters.count == self.services.count else {
            throw RouterError("a reload can change the services' topics, not how many services there are")
        }
        self.table.replace(with: Self.routeTable(filters))
    }

    /// The router's work as services, in start order: each subscribed service's delivery,
    /// then the re-balancing of their pools. A `ServiceGroup` stops them in reverse order.
    /// A service's deliveries on the several loops are one `Service` and stop together, so a
    /// service still stops within twice its `deadline` however many loops there are.
    package var lifecycleServices: [any Service] {
        let deliveries = self.services.flatMap { $0 }
        let interval = deliveries.map(\.subscription.rebalanceSeconds).min() ?? 300
        return self.services.map { LoopDeliveries(deliveries: $0) }
            + [Rebalancer(services: deliveries, intervalSeconds: interval)]
    }

    /// Messages inside delivery, counted once per service: in flight, waiting for a window,
    /// or lingering.
    package var backlog: Int { self.services.joined().reduce(0) { $0 + $1.backlog } }

    /// How many sending passes the services' deliveries ran: with `linger`, about one per
    /// batch rather than one per edge batch (diagnostics and tests).
    package var senderWakeUps: Int { self.services.joined().reduce(0) { $0 + $1.senderWakeUps } }

    /// Edge batches handed to their delivery's loop from another thread (`ServiceDelivery.offLoopSteps`).
    package var offLoopSteps: Int { self.services.joined().reduce(0) { $0 + $1.offLoopSteps } }

    /// Which messages of an edge batch go to which service: the synchronous part of `deliver`.
    package func plan(_ batch: [UplinkMessage]) -> RoutingPlan {
        var plan = RoutingPlan(
            groups: [[Int]](repeating: [], count: self.services.count),
            outcomes: [DeliveryOutcome](repeating: .accepted, count: batch.count)
        )
        let table = self.table.value
        for (index, message) in batch.enumerated() {
            let matched = table.match(message.topic)
            if matched.isEmpty { plan.outcomes[index] = .noRoute }
            for service in matched { plan.groups[service].append(index) }
        }
        return plan
    }

    /// Hands each service its part of the batch (see `ServiceDelivery.deliver`: no task is
    /// started on the way in) and combines their answers.
    package func deliver(_ batch: [UplinkMessage], on eventLoop: any EventLoop) -> EventLoopFuture<[DeliveryOutcome]> {
        let plan = self.plan(batch)
        if plan.isEmpty { return eventLoop.makeSucceededFuture(plan.outcomes) }
        let promise = eventLoop.makePromise(of: [DeliveryOutcome].self)
        let matching = plan.groups.indices.filter { !plan.groups[$0].isEmpty }
        let answers = OutcomeAggregator(
            outcomes: plan.outcomes,
            answers: matching.reduce(0) { $0 + plan.groups[$1].count }
        ) { promise.succeed($0) }
        // A loop outside the group (tests' embedded loops) is served by the first loop's
        // deliveries; they are thread-safe, only slower for it.
        let loop = self.loopIndex[ObjectIdentifier(eventLoop)] ?? 0
        for service in matching {
            let indices = plan.groups[service]
            let messages = indices.count == batch.count ? batch : indices.map { batch[$0] }
            self.services[service][loop].deliver(messages, on: eventLoop) { results in
                answers.add(results, at: indices)
            }
        }
        return promise.futureResult
    }
}

/// The routing of one edge batch: per configured service, the indices of the messages it gets;
/// per message, `noRoute` when no service matched (otherwise `accepted`, to be combined with
/// the services' answers).
package struct RoutingPlan: Sendable {
    package var groups: [[Int]]
    package var outcomes: [DeliveryOutcome]

    /// No message goes to any service.
    package var isEmpty: Bool { self.groups.allSatisfy(\.isEmpty) }
}

/// One service's deliveries, one per event loop, run side by side: they start together, stop
/// together at graceful shutdown, and a failure of one (a client that cannot be made) cancels the
/// others.
struct LoopDeliveries: Service {
    let deliveries: [ServiceDelivery]

    func run() async throws {
        // Graceful shutdown reaches each child through the task-local the group set up.
        try await withThrowingDiscardingTaskGroup { group in
            for delivery in self.deliveries { group.addTask { try await delivery.run() } }
        }
    }
}

/// Replaces each pool's oldest connection every `intervalSeconds` (0: never), until graceful
/// shutdown or cancellation.
struct Rebalancer: Service {
    let services: [ServiceDelivery]
    let intervalSeconds: Int

    func run() async throws {
        guard !self.services.isEmpty, self.intervalSeconds > 0 else {
            try? await gracefulShutdown()
            return
        }
        try? await cancelWhenGracefulShutdown {
            while true {
                try await Task.sleep(for: .seconds(self.intervalSeconds))
                for service in self.services { service.rebalance() }
            }
        }
    }
}

package struct RouterError: Error, CustomStringConvertible {
    package var description: String
    init(_ description: String) { self.description = description }
}

extension BackendRouter: MetricsSource {
    /// Every service's deliveries, each read on its loop; a service's loops add up.
    package func collectMetrics(on eventLoop: any EventLoop) -> EventLoopFuture<MetricsSnapshot> {
        let parts = self.services.joined().map { $0.collectMetrics() }
        return EventLoopFuture.whenAllSucceed(parts, on: eventLoop).map { parts in
            var snapshot = MetricsSnapshot()
            for part in parts { snapshot.merge(part) }
            return snapshot
        }
    }
}
