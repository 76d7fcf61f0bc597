internal import Foundation
internal import GRPCCore
internal import GRPCNIOTransportHTTP2
internal import Logging
internal import NIOCore
internal import Synchronization
internal import TerminusAPI
internal import TerminusProtocol

/// Several HTTP/2 connections (one `GRPCClient` each) to one service address, each carrying
/// one long-lived Deliver stream.
///
/// A Kubernetes Service or a cloud load balancer resolves to one virtual IP, and HTTP/2 puts
/// every call of a client on one connection, so one client would pin all traffic to whichever
/// backend pod that connection landed on. Holding several clients spreads calls over several
/// pods; replacing the oldest one periodically re-balances after the backend scales.
final class ClientPool: Sendable {
    typealias Client = GRPCClient<HTTP2ClientTransport.Posix>

    /// One client and its stream. `run` is the whole of its life: the connections, the stream,
    /// and, once `retire` is called, the stream's half-close and the client's shutdown.
    private struct Entry: Sendable {
        var client: Client
        var stream: DeliveryStream
        /// Finished by `retire()`: the signal `run` waits for.
        var retired: AsyncStream<Never>
        var retirement: AsyncStream<Never>.Continuation

        func retire() {
            self.retirement.finish()
        }

        /// Runs the client's connections and the stream until retired (or cancelled); then
        /// half-closes the stream and, if batches still wait for answers, lets them finish
        /// (bounded by `grace`) and closes the connection gracefully (bounded by `grace` again);
        /// with nothing in flight it stops both at once.
        func run(grace: Duration, logger: Logger, name: String) async {
            await withTaskGroup(of: Void.self) { group in
                group.addTask {
                    do {
                        try await self.client.runConnections()
                    } catch {
                        logger.warning("backend client stopped", metadata: ["service": "\(name)", "error": "\(error)"])
                    }
                }
                let busy = await withTaskGroup(of: Void.self) { streams in
                    streams.addTask { await self.stream.run() }
                    for await _ in self.retired {}
                    // Closed first, so that no batch is written after the look at what is in flight.
                    self.stream.close()
                    // With no batch waiting for an answer (a stream backing off or still opening,
                    // the service unreachable, its name not resolving) there is nothing to finish.
                    let busy = self.stream.hasBatchesInFlight
                    if !busy { streams.cancelAll() }
                    streams.addTask { try? await Task.sleep(for: grace) }
                    await streams.next()
                    streams.cancelAll()
                    return busy
                }
                guard busy else { return group.cancelAll() }
                self.client.beginGracefulShutdown()
                group.addTask { try? await Task.sleep(for: grace) }
                await group.next()
                group.cancelAll()
            }
        }
    }

    /// The entries in use, and whether the pool still takes new ones.
    private struct Entries {
        var current: [Entry] = []
        var stopped = false
    }

    private let subscription: Subscription
    private let group: any EventLoopGroup
    private let logger: Logger
    private let entries = Mutex(Entries())
    private let next = Atomic<Int>(0)
    /// New entries for `run` to run (from `open` and `rebalance`); finished by `shutdown`.
    private let started: AsyncStream<Entry>
    private let starting: AsyncStream<Entry>.Continuation

    init(subscription: Subscription, group: any EventLoopGroup, logger: Logger) {
        self.subscription = subscription
        self.group = group
        self.logger = logger
        (self.started, self.starting) = AsyncStream.makeStream(of: Entry.self)
    }

    /// Makes the configured number of clients; `run` starts them.
    func open() throws {
        let clients = try (0..<max(1, self.subscription.connections)).map { _ in try self.makeEntry() }
        self.entries.withLock { entries in
            guard !entries.stopped else { return }
            entries.current = clients
            for client in clients { self.starting.yield(client) }
        }
    }

    /// Runs every client the pool makes, each in a child task, until `shutdown` (every client
    /// retired and finished) or cancellation.
    func run() async {
        let grace = self.grace
        let logger = self.logger
        let name = self.subscription.name
        await withDiscardingTaskGroup { group in
            for await entry in self.started {
                group.addTask { await entry.run(grace: grace, logger: logger, name: name) }
            }
        }
    }

    private var grace: Duration { .milliseconds(self.subscription.deadlineMilliseconds) }

    private func makeEntry() throws -> Entry {
        let security: HTTP2ClientTransport.Posix.TransportSecurity
        switch self.subscription.security {
        case .plaintext:
            security = .plaintext
        case .tls(let caFile, let certificateFile, let keyFile, _):
            let configure: (inout HTTP2ClientTransport.Posix.TransportSecurity.TLS) -> Void = { tls in
                if let caFile { tls.trustRoots = .certificates([.file(path: caFile, format: .pem)]) }
            }
            if let certificateFile, let keyFile {
                security = .mTLS(
                    certificateChain: [.file(path: certificateFile, format: .pem)],
                    privateKey: .file(path: keyFile, format: .pem),
                    configure: configure
                )
            } else {
                security = .tls(configure: configure)
            }
        }
        var config = HTTP2ClientTransport.Posix.Config.defaults
        // Flush coalescing holds a lone batch back by up to its delay (on a timer, one more
        // wake-up per message at device rates). Batching is ours: one batch per loop tick, and
        // `linger` when a service asks for more.
        config.connection.flushCoalescing = nil
        if case .tls(_, _, _, let serverName?) = self.subscription.security {
            config.http2.authority = serverName
        }
        // The transport reconnects by the same policy as the Deliver streams.
        let reconnect = self.subscription.reconnect
        let jitter: Double =
            switch reconnect.jitter {
            case .none: 0
            case .full: 1
            case .proportional(let fraction): fraction
            }
        config.backoff = .init(
            initial: reconnect.initialBackoff,
            max: reconnect.maxBackoff,
            multiplier: reconnect.multiplier,
            jitter: jitter
        )
        let transport = try HTTP2ClientTransport.Posix(
            target: .dns(host: self.subscription.host, port: self.subscription.port),
            transportSecurity: security,
            config: config,
            eventLoopGroup: self.group
        )
        let client = GRPCClient(transport: transport)
        let stream = DeliveryStream(client: client, subscription: self.subscription, logger: self.logger)
        let (retired, retirement) = AsyncStream.makeStream(of: Never.self)
        return Entry(client: client, stream: stream, retired: retired, retirement: retirement)
    }

    /// The least loaded open stream (ties: round robin), once it has a credit for one batch:
    /// the caller must `send` on it. Fails with `notConnected` when no stream is open.
    func reserve() async throws -> DeliveryStream {
        let start = self.next.wrappingAdd(1, ordering: .relaxed).oldValue
        let streams = self.entries.withLock { $0.current.map(\.stream) }
        var chosen: DeliveryStream?
        var lowest = Int.max
        for offset in 0..<streams.count {
            let stream = streams[(start &+ offset) % streams.count]
            guard stream.isOpen else { continue }
            let load = stream.load
            if load < lowest {
                chosen = stream
                lowest = load
            }
        }
        guard let chosen else { throw DeliveryStreamFailure.notConnected }
        await chosen.acquireCredit()
        return chosen
    }

    /// Replaces the oldest client with a fresh one (new connection, possibly to another pod);
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

    /// Retires every client (each half-closes its stream, waits up to the deadline for answers
    /// in flight, then closes) and takes no new ones: `run` returns once they are done.
    func shutdown() {
        let entries = self.entries.withLock { entries in
            entries.stopped = true
            self.starting.finish()
            return entries.current
        }
        for entry in entries { entry.retire() }
    }
}
