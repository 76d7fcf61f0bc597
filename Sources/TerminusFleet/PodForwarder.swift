internal import GRPCCore
internal import GRPCNIOTransportHTTP2
package import Logging
package import NIOCore
internal import ServiceLifecycle
internal import Synchronization
package import TerminusAPI
package import TerminusBackend
package import TerminusMetrics
package import TerminusSessions

/// Calls about a device held by another pod, made on that pod's internal listener
/// (`fleet.listen`) with the fleet's token (`fleet.token_file`): one gRPC client, one HTTP/2
/// connection, per peer pod, made at the first call and closed after `idleTimeout` without one.
///
/// grpc-swift-2's client: forwarded calls are rare next to uplink messages, and each already
/// costs a network hop; what matters is that none hangs. A call does not wait for a connection
/// that cannot be made (`waitForReady` off: a pod that died refuses or drops it), and every call
/// has a deadline (a `Send`'s TTL plus `callMargin`), so a `Send` to a device of a dead pod is
/// answered `OFFLINE` within that deadline even before the pod's lease expires.
package final class PodForwarder: PodForwarding, Service, Sendable {
    package struct Configuration: Sendable {
        /// This pod's id.
        package var podID: String
        /// The bearer token every pod's internal listener accepts.
        package var token: String
        /// A forwarded call's deadline past the device's TTL (a `Kick`'s whole deadline).
        package var callMargin: Duration = .seconds(2)
        /// A peer's connection is closed after this long without a call.
        package var idleTimeout: Duration = .seconds(300)
        /// Peers connected at once, at most (the fleet's pods; beyond, the least recently used
        /// is closed).
        package var maxPeers = 512
        /// `fleet.tls`: mutual TLS between pods (this pod's certificate, the CA that issued
        /// every pod's); nil: h2c.
        package var tls: TLSFiles?

        package init(podID: String, token: String) {
            self.podID = podID
            self.token = token
        }
    }

    /// PEM files for mutual TLS between pods.
    package struct TLSFiles: Sendable {
        package var certificateChain: String
        package var privateKey: String
        /// Issued every pod's certificate. Pods are dialled by IP: the certificate is checked
        /// against this CA, not against a host name.
        package var ca: String

        package init(certificateChain: String, privateKey: String, ca: String) {
            self.certificateChain = certificateChain
            self.privateKey = privateKey
            self.ca = ca
        }
    }

    private typealias Client = GRPCClient<HTTP2ClientTransport.Posix>

    private struct Peer {
        var client: Client
        var lastUsed: ContinuousClock.Instant
    }

    private struct State {
        var peers: [String: Peer] = [:]
        var stopped = false
        var lastFailureLog: ContinuousClock.Instant?
    }

    private enum Method: String, CaseIterable {
        case send
        case sendMany = "send_many"
        case kick
    }

    private enum CallResult: String, CaseIterable {
        case answered, unreachable, refused
    }

    package let configuration: Configuration
    private let group: any EventLoopGroup
    private let logger: Logger
    private let state = Mutex(State())
    /// Clients made by calls, run by `run()`.
    private let made: AsyncStream<Client>
    private let make: AsyncStream<Client>.Continuation
    /// Calls by method and result (`Method.allCases.count * CallResult.allCases.count`).
    private let counts: Mutex<[Int]>

    package var podID: String { self.configuration.podID }

    package init(configuration: Configuration, group: any EventLoopGroup, logger: Logger) {
        self.configuration = configuration
        self.group = group
        self.logger = logger
        (self.made, self.make) = AsyncStream.makeStream()
        self.counts = Mutex(Array(repeating: 0, count: Method.allCases.count * CallResult.allCases.count))
    }

    /// Runs the peers' connections until graceful shutdown, then closes them once their calls
    /// end.
    package func run() async throws {
        await withGracefulShutdownHandler {
            await withDiscardingTaskGroup { group in
                group.addTask {
                    try? await cancelWhenGracefulShutdown {
                        while true {
                            try await Task.sleep(for: .seconds(10))
                            self.closeIdle()
                        }
                    }
                }
                for await client in self.made {
                    group.addTask { try? await client.runConnections() }
                }
            }
        } onGracefulShutdown: {
            let clients = self.state.withLock { state in
                state.stopped = true
                defer { state.peers.removeAll() }
                return state.peers.values.map(\.client)
            }
            self.make.finish()
            for client in clients { client.beginGracefulShutdown() }
        }
    }

    private func closeIdle() {
        let now = ContinuousClock.now
        let idle = self.state.withLock { state in
            let idle = state.peers.filter { now - $0.value.lastUsed >= self.configuration.idleTimeout }
            for address in idle.keys { state.peers[address] = nil }
            return idle.values.map(\.client)
        }
        for client in idle { client.beginGracefulShutdown() }
    }

    /// The client for `address`, made (and handed to `run()`) at the first call.
    private func client(
        _ pod: RemoteDevice
    ) throws(PodForwardingError)
        -> Terminus_V1_Gateway.Client<
            HTTP2ClientTransport.Posix
        >
    {
        let now = ContinuousClock.now
        let made: Result<Client, PodForwardingError> = self.state.withLock { state in
            guard !state.stopped else { return .failure(.unreachable(pod: pod.podID, reason: "this pod is stopping")) }
            if let peer = state.peers[pod.podAddress] {
                state.peers[pod.podAddress]?.lastUsed = now
                return .success(peer.client)
            }
            guard let target = Self.target(pod.podAddress) else {
                return .failure(
                    .refused(pod: pod.podID, reason: "its internal address '\(pod.podAddress)' is not HOST:PORT")
                )
            }
            let transport: HTTP2ClientTransport.Posix
            do {
                transport = try HTTP2ClientTransport.Posix(
                    target: target,
                    transportSecurity: self.transportSecurity,
                    eventLoopGroup: self.group
                )
            } catch {
                return .failure(.refused(pod: pod.podID, reason: "\(error)"))
            }
            let client = GRPCClient(transport: transport)
            if state.peers.count >= self.configuration.maxPeers,
                let oldest = state.peers.min(by: { $0.value.lastUsed < $1.value.lastUsed })
            {
                state.peers[oldest.key] = nil
                oldest.value.client.beginGracefulShutdown()
            }
            state.peers[pod.podAddress] = Peer(client: client, lastUsed: now)
            self.make.yield(client)
            return .success(client)
        }
        return Terminus_V1_Gateway.Client(wrapping: try made.get())
    }

    private var transportSecurity: HTTP2ClientTransport.Posix.TransportSecurity {
        guard let tls = self.configuration.tls else { return .plaintext }
        return .mTLS(
            certificateChain: [.file(path: tls.certificateChain, format: .pem)],
            privateKey: .file(path: tls.privateKey, format: .pem)
        ) {
            $0.trustRoots = .certificates([.file(path: tls.ca, format: .pem)])
            $0.serverCertificateVerification = .noHostnameVerification
        }
    }

    /// A `HOST:PORT` (or `[IPv6]:PORT`) address as a gRPC target.
    private static func target(_ address: String) -> (any ResolvableTarget)? {
        guard let colon = address.lastIndex(of: ":"), let port = Int(address[address.index(after: colon)...]),
            (1...65_535).contains(port)
        else { return nil }
        var host = String(address[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        guard !host.isEmpty else { return nil }
        if host.contains(":") { return .ipv6(address: host, port: port) }
        if host.split(separator: ".").count == 4 && host.allSatisfy({ $0.isNumber || $0 == "." }) {
            return .ipv4(address: host, port: port)
        }
        return .dns(host: host, port: port)
    }

    private func call<Answer: Sendable>(
        _ method: Method,
        to pod: RemoteDevice,
        deadline: Duration,
        _ body: (Terminus_V1_Gateway.Client<HTTP2ClientTransport.Posix>, Metadata, CallOptions) async throws -> Answer
    ) async throws(PodForwardingError) -> Answer {
        let client = try self.client(pod)
        var metadata: Metadata = [:]
        metadata.addString("Bearer \(self.configuration.token)", forKey: "authorization")
        var options = CallOptions.defaults
        options.timeout = deadline
        options.waitForReady = false
        do {
            let answer = try await body(client, metadata, options)
            self.count(method, .answered)
            return answer
        } catch {
            let failure = Self.failure(error, pod: pod.podID)
            if case .unreachable = failure {
                self.count(method, .unreachable)
            } else {
                self.count(method, .refused)
            }
            // A dead pod, or a misconfiguration (another token, a certificate the CA did not
            // issue): the operator needs to see which.
            self.logFailure(failure)
            throw failure
        }
    }

    /// A failed call: the pod could not be reached (or did not answer in time), or it answered
    /// with an error.
    private static func failure(_ error: any Error, pod: String) -> PodForwardingError {
        guard let error = error as? RPCError else { return .unreachable(pod: pod, reason: "\(error)") }
        switch error.code {
        case .unavailable, .deadlineExceeded, .cancelled:
            return .unreachable(pod: pod, reason: "\(error.code): \(error.message)")
        default:
            return .refused(pod: pod, reason: "\(error.code): \(error.message)")
        }
    }

    /// At most one line per ten seconds: a misconfigured token fails every forwarded call.
    private func logFailure(_ failure: PodForwardingError) {
        let now = ContinuousClock.now
        let log = self.state.withLock { state in
            guard state.lastFailureLog.map({ now - $0 >= .seconds(10) }) ?? true else { return false }
            state.lastFailureLog = now
            return true
        }
        if log { self.logger.warning("forwarded call failed", metadata: ["error": "\(failure)"]) }
    }

    private func count(_ method: Method, _ result: CallResult) {
        self.counts.withLock { $0[Self.index(method, result)] += 1 }
    }

    private static func index(_ method: Method, _ result: CallResult) -> Int {
        Method.allCases.firstIndex(of: method)! * CallResult.allCases.count + CallResult.allCases.firstIndex(
            of: result
        )!
    }

    // MARK: PodForwarding

    package func send(
        _ request: Terminus_V1_SendRequest,
        to pod: RemoteDevice
    ) async throws(PodForwardingError)
        -> Terminus_V1_SendResponse
    {
        let deadline = .milliseconds(Int64(request.ttlMs)) + self.configuration.callMargin
        return try await self.call(.send, to: pod, deadline: deadline) { client, metadata, options in
            try await client.send(request, metadata: metadata, options: options)
        }
    }

    package func sendMany(
        _ request: Terminus_V1_SendManyRequest,
        to pod: RemoteDevice
    ) async throws(PodForwardingError)
        -> Terminus_V1_SendManyResponse
    {
        let deadline = .milliseconds(Int64(request.ttlMs)) + self.configuration.callMargin
        return try await self.call(.sendMany, to: pod, deadline: deadline) { client, metadata, options in
            try await client.sendMany(request, metadata: metadata, options: options)
        }
    }

    package func kick(
        _ request: Terminus_V1_KickRequest,
        to pod: RemoteDevice
    ) async throws(PodForwardingError)
        -> Terminus_V1_KickResponse
    {
        try await self.call(.kick, to: pod, deadline: self.configuration.callMargin) { client, metadata, options in
            try await client.kick(request, metadata: metadata, options: options)
        }
    }
}

extension PodForwarder {
    /// `terminus_fleet_forwards_total{method, result}` and `terminus_fleet_peers`.
    package func collect(into snapshot: inout MetricsSnapshot) {
        let counts = self.counts.withLock { $0 }
        for method in Method.allCases {
            for result in CallResult.allCases {
                snapshot.count(
                    SeriesKey("terminus_fleet_forwards_total", ["method": method.rawValue, "result": result.rawValue]),
                    counts[Self.index(method, result)]
                )
            }
        }
        snapshot.gauge(SeriesKey("terminus_fleet_peers"), self.state.withLock { $0.peers.count })
    }
}
