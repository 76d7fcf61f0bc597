internal import Logging
internal import NIOCore
internal import Synchronization

/// Several HTTP/2 connections to one service address, each carrying one long-lived Deliver
/// stream (`DeliveryStream`).
///
/// A Kubernetes Service or a cloud load balancer resolves to one virtual IP, and HTTP/2 puts
/// every call of a connection on it, so one connection would pin all traffic to whichever
/// backend pod it landed on. Holding several spreads batches over several pods; replacing the
/// oldest one periodically re-balances after the backend scales.
final class ClientPool: Sendable {
    /// One stream (and its connection). `run` is the whole of its life: connecting, the stream,
    /// and, once `retire` is called, the stream's half-close and the connection's close.
    private struct Entry: Sendable {
        var stream: DeliveryStream
        /// Finished by `retire()`: the signal `run` waits for.
        var retired: AsyncStream<Never>
        var retirement: AsyncStream<Never>.Continuation

        func retire() {
            self.retirement.finish()
        }

        /// Runs the stream until retired (or cancelled); then half-closes it and, if batches
        /// still wait for answers, lets them finish (bounded by `grace`) before the connection
        /// closes; with nothing in flight it closes at once.
        func run(grace: Duration) async {
            await withTaskGroup(of: Void.self) { streams in
                streams.addTask { await self.stream.run() }
                for await _ in self.retired {}
                // Closed first, so that no batch is written after the look at what is in flight.
                self.stream.close()
                // With no batch waiting for an answer (a stream backing off or still opening,
                // the service unreachable, its name not resolving) there is nothing to finish.
                if !self.stream.hasBatchesInFlight { streams.cancelAll() }
                streams.addTask { try? await Task.sleep(for: grace) }
                await streams.next()
                streams.cancelAll()
            }
        }
    }

    /// The entries in use, and whether the pool still takes new ones.
    private struct Entries {
        var current: [Entry] = []
        var stopped = false
    }

    private let subscription: Subscription
    private let loop: any EventLoop
    private let logger: Logger
    /// Where and how the streams connect (the TLS context is made once).
    private let target: Result<DeliveryTarget, any Error>
    private let entries = Mutex(Entries())
    private let next = Atomic<Int>(0)
    /// New entries for `run` to run (from `open` and `rebalance`); finished by `shutdown`.
    private let started: AsyncStream<Entry>
    private let starting: AsyncStream<Entry>.Continuation

    /// Shared by the pool's streams.
    let connects = ConnectCounts()

    init(subscription: Subscription, loop: any EventLoop, logger: Logger) {
        self.subscription = subscription
        self.loop = loop
        self.logger = logger
        self.target = Result { try DeliveryTarget(subscription: subscription) }
        (self.started, self.starting) = AsyncStream.makeStream(of: Entry.self)
    }

    /// Makes the configured number of streams; `run` starts them. Fails when the service's TLS
    /// files cannot be read.
    func open() throws {
        let clients = try (0..<max(1, self.subscription.connections)).map { _ in try self.makeEntry() }
        self.entries.withLock { entries in
            guard !entries.stopped else { return }
            entries.current = clients
            for client in clients { self.starting.yield(client) }
        }
    }

    /// Runs every stream the pool makes, each in a child task, until `shutdown` (every stream
    /// retired and finished) or cancellation.
    func run() async {
        let grace = self.grace
        await withDiscardingTaskGroup { group in
            for await entry in self.started {
                group.addTask { await entry.run(grace: grace) }
            }
        }
    }

    private var grace: Duration { .milliseconds(self.subscription.deadlineMilliseconds) }

    private func makeEntry() throws -> Entry {
        let stream = DeliveryStream(
            target: try self.target.get(),
            subscription: self.subscription,
            on: self.loop,
            logger: self.logger,
            connects: self.connects
        )
        let (retired, retirement) = AsyncStream.makeStream(of: Never.self)
        return Entry(stream: stream, retired: retired, retirement: retirement)
    }

    /// What `pick` found.
    enum Pick {
        /// The least loaded open stream with room for one more batch: send on it now.
        case stream(DeliveryStream)
        /// Streams are open, but each has `batches_in_flight` unanswered batches.
        case busy
        /// No stream is open.
        case notConnected
    }

    /// The least loaded open stream with room for a batch (ties: round robin).
    func pick() -> Pick {
        let start = self.next.wrappingAdd(1, ordering: .relaxed).oldValue
        return self.entries.withLock { entries -> Pick in
            let streams = entries.current
            var chosen: DeliveryStream?
            var lowest = Int.max
            var open = false
            for offset in 0..<streams.count {
                let stream = streams[(start &+ offset) % streams.count].stream
                let room = stream.room
                guard room.open else { continue }
                open = true
                if room.load < lowest && stream.hasRoom(load: room.load) {
                    chosen = stream
                    lowest = room.load
                }
            }
            if let chosen { return .stream(chosen) }
            return open ? .busy : .notConnected
        }
    }

    /// Replaces the oldest stream with a fresh one (new connection, possibly to another pod);
    /// the old one finishes its batches in `run`.
    func rebalance() {
        guard let fresh = try? self.makeEntry() else { return }
        let old = self.entries.withLock { entries -> Entry? in
            guard !entries.stopped, !entries.current.isEmpty else { return nil }
            let old = entries.current.removeFirst()
            entries.current.append(fresh)
            self.starting.yield(fresh)
            return old
        }
        old?.retire()
    }

    /// The shutdown deadline passed: every stream fails what it still waits for and closes its
    /// connection now; `run` returns once they are gone.
    func abort() {
        let entries = self.entries.withLock { entries in
            entries.stopped = true
            self.starting.finish()
            return entries.current
        }
        for entry in entries {
            entry.stream.abort()
            entry.retire()
        }
    }

    /// Retires every stream (each half-closes, waits up to the deadline for answers in flight,
    /// then closes its connection) and takes no new ones: `run` returns once they are done.
    func shutdown() {
        let entries = self.entries.withLock { entries in
            entries.stopped = true
            self.starting.finish()
            return entries.current
        }
        for entry in entries { entry.retire() }
    }
}
