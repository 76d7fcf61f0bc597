package import Logging
package import NIOCore
package import ServiceLifecycle
internal import Synchronization
internal import TerminusListeners
package import TerminusMetrics
internal import TerminusRouting
package import TerminusSessions

/// The uplink sink that routes each message to every service whose topic filters match it,
/// over gRPC, and turns their answers into the device's ACK.
///
/// - One batch per service per edge batch (an event loop tick), split at `batch_size`, written
///   on the service's long-lived Deliver streams.
/// - A message is `accepted` only when every matching service accepted it; `rejected` when
///   any refused it for good; otherwise `retryLater` (the device resends; services that had
///   accepted it see a duplicate with the same `delivery_id`). No match: `noRoute`.
/// - The route table and the services it points at are one immutable snapshot (`Routing`), read
///   once per edge batch; a configuration reload swaps in another (`reload(subscriptions:)`):
///   services that did not change keep their deliveries and connections, new ones start,
///   removed ones finish what they hold and stop.
/// - Its work runs in `lifecycleServices`: one `Service` that runs every subscribed service's
///   deliveries (its connection pools), and one that re-balances the pools; run them in the
///   gateway's `ServiceGroup`.
package final class BackendRouter: UplinkSink, Sendable {
    /// At most this many services: the route table's service set is one 64-bit word.
    package static let maxServices = ServiceSet.capacity

    /// The route table and, per configured service (in the table's numbering), its delivery on
    /// each event loop (in the group's order). A class: reading the snapshot once per edge batch
    /// costs one retain.
    private final class Routing: Sendable {
        let table: RouteTable
        /// As configured (each delivery holds its loop's share of the window and connections).
        let subscriptions: [Subscription]
        let services: [[ServiceDelivery]]

        init(table: RouteTable, subscriptions: [Subscription], services: [[ServiceDelivery]]) {
            self.table = table
            self.subscriptions = subscriptions
            self.services = services
        }
    }

    /// Replaced whole by a reload. A `Mutex` of this module's own type rather than a
    /// `Reloadable`: read once per edge batch, and `Reloadable`'s getter ran unspecialised here
    /// (a generic metadata lookup per batch in `perf`).
    private let routing: Mutex<Routing>
    private var current: Routing { self.routing.withLock { $0 } }
    /// The group's loops, in order: a loop's index picks which of a service's deliveries serves
    /// its devices.
    private let loopIDs: [ObjectIdentifier]
    private let loops: [any EventLoop]
    private let instanceID: String
    private let shutdown: ShutdownDeadline
    private let supervisor: DeliverySupervisor
    /// Reloads one at a time (SIGHUP, the file watcher and the admin API may race).
    private let reloading = Mutex<Void>(())
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
        let loops = Array(group.makeIterator())
        self.loops = loops
        self.loopIDs = loops.map { ObjectIdentifier($0) }
        self.instanceID = instanceID
        self.shutdown = shutdown
        self.logger = logger
        let services = subscriptions.map {
            Self.deliveries($0, loops: loops, instanceID: instanceID, logger: logger, shutdown: shutdown)
        }
        self.routing = Mutex(
            Routing(
                table: Self.routeTable(subscriptions.map(\.filters)),
                subscriptions: subscriptions,
                services: services
            )
        )
        self.supervisor = DeliverySupervisor(services.map { LoopDeliveries(deliveries: $0) })
    }

    /// One service's deliveries, one per loop, each with its share of the window and connections.
    private static func deliveries(
        _ subscription: Subscription,
        loops: [any EventLoop],
        instanceID: String,
        logger: Logger,
        shutdown: ShutdownDeadline
    ) -> [ServiceDelivery] {
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

    private static func routeTable(_ filters: [[TopicFilter]]) -> RouteTable {
        var routes: [(TopicFilter, Int)] = []
        for (index, serviceFilters) in filters.enumerated() {
            for filter in serviceFilters { routes.append((filter, index)) }
        }
        return RouteTable(routes: routes)
    }

    /// A service as a delivery runs it: everything but its topics (which only the route table
    /// reads). Two subscriptions with the same identity share their deliveries across a reload.
    private static func identity(_ subscription: Subscription) -> String {
        var shape = subscription
        shape.filters = []
        return "\(shape)"
    }

    /// What a reload changed among the services.
    package struct ServiceChange: Sendable, Equatable {
        package var added: [String] = []
        package var removed: [String] = []
        /// The route table changed (topics, or which services there are).
        package var routes = false

        package init() {}
    }

    /// A configuration reload of the services and their topics. A service whose settings are
    /// unchanged (name, target, TLS, batching, window, deadline, retry, connections…) keeps its
    /// deliveries, connections and what they hold, whatever its topics; a new or changed one
    /// gets new deliveries, started at once; a removed or changed one finishes the batches it
    /// has in flight, answers what it still queues `RETRY_LATER` and closes its connections.
    /// Edge batches planned from now on use the new table; those planned before finish as
    /// planned (a batch for a service that stopped is answered `RETRY_LATER`: its devices resend
    /// and meet the new table).
    /// - Throws: more than `maxServices`, or the gateway is shutting down (nothing changes).
    package func reload(subscriptions: [Subscription]) throws -> ServiceChange {
        guard subscriptions.count <= Self.maxServices else {
            throw RouterError("at most \(Self.maxServices) services can be configured")
        }
        return try self.reloading.withLock { _ in
            let current = self.current
            var unused = Dictionary(
                zip(current.subscriptions, current.services).map { (Self.identity($0), ($0.name, $1)) },
                uniquingKeysWith: { first, _ in first }
            )
            var change = ServiceChange()
            var started: [[ServiceDelivery]] = []
            let services = subscriptions.map { subscription in
                if let kept = unused.removeValue(forKey: Self.identity(subscription)) { return kept.1 }
                let deliveries = Self.deliveries(
                    subscription,
                    loops: self.loops,
                    instanceID: self.instanceID,
                    logger: self.logger,
                    shutdown: self.shutdown
                )
                started.append(deliveries)
                change.added.append(subscription.name)
                return deliveries
            }
            guard self.supervisor.start(started.map { LoopDeliveries(deliveries: $0) }) else {
                throw RouterError("the gateway is shutting down")
            }
            let table = Self.routeTable(subscriptions.map(\.filters))
            let routes = { (subscriptions: [Subscription]) in subscriptions.map { "\($0.name):\($0.filters)" } }
            change.routes = routes(current.subscriptions) != routes(subscriptions)
            self.routing.withLock { $0 = Routing(table: table, subscriptions: subscriptions, services: services) }
            for (name, deliveries) in unused.values {
                change.removed.append(name)
                for delivery in deliveries { delivery.retire() }
            }
            change.removed.sort()
            return change
        }
    }

    /// The router's work as services, in start order: the deliveries of every subscribed
    /// service (those a reload adds join them), then the re-balancing of their pools. A
    /// `ServiceGroup` stops them in reverse order; all services' deliveries stop together, so the
    /// stop takes at most about one `deadline` however many services and loops there are.
    package var lifecycleServices: [any Service] {
        let interval = self.current.subscriptions.map(\.rebalanceSeconds).min() ?? 300
        return [self.supervisor, Rebalancer(intervalSeconds: interval) { [weak self] in self?.allDeliveries ?? [] }]
    }

    private var allDeliveries: [ServiceDelivery] { Array(self.current.services.joined()) }

    /// Messages inside delivery, counted once per service: in flight, waiting for a window,
    /// or lingering.
    package var backlog: Int { self.allDeliveries.reduce(0) { $0 + $1.backlog } }

    /// How many sending passes the services' deliveries ran: with `linger`, about one per
    /// batch rather than one per edge batch (diagnostics and tests).
    package var senderWakeUps: Int { self.allDeliveries.reduce(0) { $0 + $1.senderWakeUps } }

    /// Edge batches handed to their delivery's loop from another thread (`ServiceDelivery.offLoopSteps`).
    package var offLoopSteps: Int { self.allDeliveries.reduce(0) { $0 + $1.offLoopSteps } }

    /// Where an edge batch goes: the synchronous part of `deliver`, which takes the same
    /// decision (the hot-path benchmarks call this to route as the gateway does).
    package func route(_ batch: [UplinkMessage]) -> BatchRoute {
        let routing = self.current
        return Self.route(batch, table: routing.table, services: routing.services.count)
    }

    private static func route(_ batch: [UplinkMessage], table: RouteTable, services: Int) -> BatchRoute {
        guard !batch.isEmpty else { return .noRoute }
        // The common case first, a lone message or an edge batch whose messages all match the
        // same services: matched once each, no plan built. (`batch[0].topic`, not `batch.first`:
        // that copies the whole message, about 250 instructions of retains and releases.)
        let matched = table.match(batch[0].topic)
        var same = 1
        while same < batch.count, table.match(batch[same].topic) == matched { same += 1 }
        if same == batch.count {
            if matched.isEmpty { return .noRoute }
            if let service = matched.only { return .one(service: service) }
        }
        return .split(Self.plan(batch, table: table, services: services, prefix: same, prefixMatched: matched))
    }

    /// - Parameters:
    ///   - prefixMatched: the services each of the first `prefix` messages matched (`route`
    ///     matched them already, all to the same set).
    private static func plan(
        _ batch: [UplinkMessage],
        table: RouteTable,
        services: Int,
        prefix: Int,
        prefixMatched: ServiceSet
    ) -> RoutingPlan {
        var plan = RoutingPlan(
            groups: [[Int]](repeating: [], count: services),
            outcomes: DeliveryOutcome.accepted.repeated(batch.count)
        )
        for (index, message) in batch.enumerated() {
            let matched = index < prefix ? prefixMatched : table.match(message.topic)
            if matched.isEmpty { plan.outcomes[index] = .noRoute }
            for service in matched { plan.groups[service].append(index) }
        }
        return plan
    }

    /// Hands each service its part of the batch (see `ServiceDelivery.deliver`: no task is
    /// started on the way in) and combines their answers; `completion` runs on `eventLoop`.
    package func deliver(
        _ batch: [UplinkMessage],
        on eventLoop: any EventLoop,
        completion: @escaping @Sendable ([DeliveryOutcome]) -> Void
    ) {
        // One snapshot for the whole batch: the table's numbering is its services'.
        let routing = self.current
        guard !batch.isEmpty else { return completion([]) }
        // A service's delivery answers on its own loop: for a loop outside the group (tests'
        // embedded loops, served by the first loop's deliveries), the answer hops back.
        let loop = self.loopIDs.firstIndex(of: ObjectIdentifier(eventLoop))
        let completion =
            loop != nil
            ? completion
            : { @Sendable outcomes in
                eventLoop.inEventLoop ? completion(outcomes) : eventLoop.execute { completion(outcomes) }
            }
        switch Self.route(batch, table: routing.table, services: routing.services.count) {
        case .noRoute:
            completion(DeliveryOutcome.noRoute.repeated(batch.count))
        case .one(let service):
            // Its answers are the batch's outcomes (`accepted` combined with an answer is the
            // answer), so no aggregator and no arrays of indices.
            routing.services[service][loop ?? 0].deliver(batch, on: eventLoop, completion: completion)
        case .split(let plan):
            let matching = plan.groups.indices.filter { !plan.groups[$0].isEmpty }
            let answers = OutcomeAggregator(
                outcomes: plan.outcomes,
                answers: matching.reduce(0) { $0 + plan.groups[$1].count },
                completion: completion
            )
            for service in matching {
                let indices = plan.groups[service]
                let messages = indices.count == batch.count ? batch : indices.map { batch[$0] }
                routing.services[service][loop ?? 0].deliver(messages, on: eventLoop) { results in
                    answers.add(results, at: indices)
                }
            }
        }
    }
}

/// Where one edge batch goes (`BackendRouter.route`).
package enum BatchRoute: Sendable, Equatable {
    /// No service matched any of its messages (an empty batch included).
    case noRoute
    /// Every message matched this one service: the batch goes to it whole.
    case one(service: Int)
    /// Otherwise: which messages each service gets.
    case split(RoutingPlan)
}

/// The routing of one edge batch: per configured service, the indices of the messages it gets;
/// per message, `noRoute` when no service matched (otherwise `accepted`, to be combined with
/// the services' answers).
package struct RoutingPlan: Sendable, Equatable {
    package var groups: [[Int]]
    package var outcomes: [DeliveryOutcome]
}

/// One service's deliveries, one per event loop, run side by side: they start together, stop
/// together, and a failure of one (a client that cannot be made) cancels the others.
struct LoopDeliveries: Sendable {
    let deliveries: [ServiceDelivery]

    func run() async throws {
        // Graceful shutdown reaches each child through the task-local the group set up.
        try await withThrowingDiscardingTaskGroup { group in
            for delivery in self.deliveries { group.addTask { try await delivery.run() } }
        }
    }
}

/// Runs every service's deliveries: those the router started with, and those a reload adds
/// while it runs. Graceful shutdown reaches each delivery (it answers what it queues and
/// settles what is in flight); once it began, nothing new is started.
final class DeliverySupervisor: Service, Sendable {
    private let additions: AsyncStream<LoopDeliveries>
    private let continuation: AsyncStream<LoopDeliveries>.Continuation
    /// False once the graceful shutdown began (or `run` returned): `start` refuses.
    private let accepting = Mutex(true)

    init(_ initial: [LoopDeliveries]) {
        // Unbounded, but each element is one service a reload added (at most 64 a reload).
        (self.additions, self.continuation) = AsyncStream.makeStream(of: LoopDeliveries.self)
        for deliveries in initial { self.continuation.yield(deliveries) }
    }

    /// Starts `deliveries` beside the running ones; false when the gateway is shutting down.
    func start(_ deliveries: [LoopDeliveries]) -> Bool {
        self.accepting.withLock { accepting in
            guard accepting else { return false }
            for service in deliveries { self.continuation.yield(service) }
            return true
        }
    }

    func run() async throws {
        defer { self.accepting.withLock { $0 = false } }
        try await withThrowingDiscardingTaskGroup { group in
            for await deliveries in self.additions.cancelOnGracefulShutdown() {
                group.addTask { try await deliveries.run() }
            }
            self.accepting.withLock { $0 = false }
            self.continuation.finish()
        }
    }
}

/// Replaces each pool's oldest connection every `intervalSeconds` (0: never), until graceful
/// shutdown or cancellation; the deliveries are read each time (a reload changes them).
struct Rebalancer: Service {
    let intervalSeconds: Int
    let services: @Sendable () -> [ServiceDelivery]

    func run() async throws {
        guard self.intervalSeconds > 0 else {
            try? await gracefulShutdown()
            return
        }
        try? await cancelWhenGracefulShutdown {
            while true {
                try await Task.sleep(for: .seconds(self.intervalSeconds))
                for service in self.services() { service.rebalance() }
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
        let parts = self.allDeliveries.map { $0.collectMetrics() }
        return EventLoopFuture.whenAllSucceed(parts, on: eventLoop).map { parts in
            var snapshot = MetricsSnapshot()
            for part in parts { snapshot.merge(part) }
            return snapshot
        }
    }
}
