internal import Foundation
internal import GRPCCore
internal import GRPCNIOTransportHTTP2
internal import Logging
internal import NIOCore
internal import Synchronization

/// Several HTTP/2 connections (one `GRPCClient` each) to one service address.
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
        config.backoff = .init(initial: .milliseconds(200), max: .seconds(5), multiplier: 1.6, jitter: 0.2)
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
        return Entry(client: client, task: task)
    }

    /// The next client, round robin.
    func pick() -> Client {
        let index = self.next.wrappingAdd(1, ordering: .relaxed).oldValue
        return self.entries.withLock { $0[index % $0.count].client }
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
        old?.client.beginGracefulShutdown()
    }

    func shutdown() async {
        self.stopped.store(true, ordering: .relaxed)
        let entries = self.entries.withLock { $0 }
        for entry in entries { entry.client.beginGracefulShutdown() }
        for entry in entries { await entry.task.value }
    }
}
