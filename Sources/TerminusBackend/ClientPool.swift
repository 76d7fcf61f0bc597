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

    private struct Entry {
        var client: Client
        var task: Task<Void, Never>
        var stream: DeliveryStream
        var streamTask: Task<Void, Never>

        /// Half-closes the stream, lets it finish (bounded by `grace`), then closes the connection.
        func retire(grace: Duration) async {
            // A stream backing off (none open) has nothing to finish: stop it at once.
            let wasOpen = self.stream.isOpen
            self.stream.close()
            let streamTask = self.streamTask
            if !wasOpen { streamTask.cancel() }
            await withTaskGroup(of: Void.self) { group in
                group.addTask { await streamTask.value }
                group.addTask { try? await Task.sleep(for: grace) }
                await group.next()
                group.cancelAll()
            }
            streamTask.cancel()
            await streamTask.value
            self.client.beginGracefulShutdown()
            await self.task.value
        }
    }

    private let subscription: Subscription
    private let group: any EventLoopGroup
    private let logger: Logger
    private let entries = Mutex<[Entry]>([])
    private let next = Atomic<Int>(0)
    private let stopped = Atomic<Bool>(false)

    init(subscription: Subscription, group: any EventLoopGroup, logger: Logger) {
        self.subscription = subscription
        self.group = group
        self.logger = logger
    }

    func start() throws {
        let clients = try (0..<max(1, self.subscription.connections)).map { _ in try self.makeEntry() }
        self.entries.withLock { $0 = clients }
    }

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
        let logger = self.logger
        let name = self.subscription.name
        let task = Task {
            do {
                try await client.runConnections()
            } catch {
                logger.warning("backend client stopped", metadata: ["service": "\(name)", "error": "\(error)"])
            }
        }
        let stream = DeliveryStream(client: client, subscription: self.subscription, logger: self.logger)
        let streamTask = Task { await stream.run() }
        return Entry(client: client, task: task, stream: stream, streamTask: streamTask)
    }

    /// The least loaded open stream (ties: round robin), once it has a credit for one batch:
    /// the caller must `send` on it. Fails with `notConnected` when no stream is open.
    func reserve() async throws -> DeliveryStream {
        let start = self.next.wrappingAdd(1, ordering: .relaxed).oldValue
        let streams = self.entries.withLock { $0.map(\.stream) }
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

    /// Replaces the oldest client with a fresh one (new connection, possibly to another pod).
    func rebalance() {
        guard !self.stopped.load(ordering: .relaxed), let fresh = try? self.makeEntry() else { return }
        let old = self.entries.withLock { entries -> Entry? in
            guard !entries.isEmpty else { return nil }
            let old = entries.removeFirst()
            entries.append(fresh)
            return old
        }
        guard let old else { return }
        let grace = Duration.milliseconds(self.subscription.deadlineMilliseconds)
        Task { await old.retire(grace: grace) }
    }

    /// Half-closes every stream, waits up to the deadline for answers in flight, then closes.
    func shutdown() async {
        self.stopped.store(true, ordering: .relaxed)
        let entries = self.entries.withLock { $0 }
        let grace = Duration.milliseconds(self.subscription.deadlineMilliseconds)
        await withTaskGroup(of: Void.self) { group in
            for entry in entries { group.addTask { await entry.retire(grace: grace) } }
        }
    }
}
