internal import GRPCCore
internal import GRPCNIOTransportHTTP2
package import Logging
internal import NIOCore
package import NIOPosix
internal import ServiceLifecycle
package import TerminusListeners
package import TerminusSessions

/// How the API listener is secured and who it admits.
package enum APISecurity: Sendable {
    /// h2c; callers authenticate with bearer tokens only.
    case plaintext
    /// TLS with the given PEM files. With `clientCA`, mutual TLS: a caller must present a
    /// certificate issued by that CA or its handshake fails.
    case tls(certificateChain: String, privateKey: String, clientCA: String?)

    var requiresClientCertificate: Bool {
        if case .tls(_, _, .some) = self { return true }
        return false
    }
}

/// The listener backends call (`api.listen`): the `terminus.v1.Gateway` service. Callers
/// authenticate with a bearer token, a client certificate (mTLS), or both when both are
/// configured. A separate port from the device listener: devices cannot reach it.
///
/// A `Service`: `run` binds and serves until graceful shutdown (calls in flight finish) or
/// cancellation.
package final class APIServer: Service, Sendable {
    private let server: GRPCServer<HTTP2ServerTransport.Posix>
    private let executor: GroupExecutor
    private let logger: Logger
    /// Caps connections and closes idle ones (`api.max_connections`, `api.idle_timeout`).
    package let connectionGuard: ConnectionGuard

    /// `api.max_connections` and `api.idle_timeout` defaults: backends keep a few long-lived
    /// HTTP/2 connections each; a connection silent for five minutes is closed (gRPC clients
    /// reconnect on their own), so stalled connections cannot pile up.
    package static let defaultLimits = ConnectionGuard.Limits(maxConnections: 1_024, idleTimeout: .seconds(300))
    package init(
        host: String,
        port: Int,
        tokens: [String],
        security: APISecurity = .plaintext,
        directory: any SessionDirectory,
        instanceID: String,
        defaultTTLMilliseconds: UInt32 = 10_000,
        maxPayloadSize: Int = 256 * 1024,
        maxTopicLength: Int = 256,
        limits: ConnectionGuard.Limits = APIServer.defaultLimits,
        group: MultiThreadedEventLoopGroup,
        logger: Logger
    ) {
        let connectionGuard = ConnectionGuard(name: "api", limits: limits, logger: logger)
        self.connectionGuard = connectionGuard
        let service = GatewayAPIService(
            directory: directory,
            instanceID: instanceID,
            defaultTTLMilliseconds: defaultTTLMilliseconds,
            maxPayloadSize: maxPayloadSize,
            maxTopicLength: maxTopicLength
        )
        let transportSecurity: HTTP2ServerTransport.Posix.TransportSecurity
        switch security {
        case .plaintext:
            transportSecurity = .plaintext
        case .tls(let chain, let key, let clientCA):
            let certificateChain: [TLSConfig.CertificateSource] = [.file(path: chain, format: .pem)]
            let privateKey = TLSConfig.PrivateKeySource.file(path: key, format: .pem)
            if let clientCA {
                transportSecurity = .mTLS(certificateChain: certificateChain, privateKey: privateKey) { tls in
                    tls.trustRoots = .certificates([.file(path: clientCA, format: .pem)])
                    tls.clientCertificateVerification = .noHostnameVerification
                }
            } else {
                transportSecurity = .tls(certificateChain: certificateChain, privateKey: privateKey)
            }
        }
        self.server = GRPCServer(
            transport: HTTP2ServerTransport.Posix(
                // `api.listen` accepts `[::]:PORT` and other IPv6 hosts as well as IPv4 ones.
                address: host.contains(":") ? .ipv6(host: host, port: port) : .ipv4(host: host, port: port),
                transportSecurity: transportSecurity,
                config: .defaults { config in
                    // Idle connections (no RPC) end with an HTTP/2 GOAWAY before the guard would cut them.
                    config.connection.maxIdleTime = .nanoseconds(limits.idleTimeout.nanoseconds / 2)
                    // Answers go out in the tick that made them: the transport's flush coalescing
                    // holds a lone answer back by up to its delay, on a timer of its own.
                    config.connection.flushCoalescing = nil
                    // Out of descriptors, accept must pause rather than spin (AcceptPauseHandler).
                    config.channelDebuggingCallbacks.onBindTCPListener = { channel in
                        channel.eventLoop.makeCompletedFuture {
                            try channel.pipeline.syncOperations.addHandler(
                                AcceptPauseHandler(backoff: .milliseconds(250)),
                                position: .first
                            )
                        }
                    }
                    config.channelDebuggingCallbacks.onAcceptTCPConnection = { channel in
                        channel.eventLoop.makeCompletedFuture { _ = try connectionGuard.admit(channel) }
                    }
                },
                // The devices' loops: see `GroupExecutor`.
                eventLoopGroup: group
            ),
            services: [service],
            interceptors: [
                CallerAuthenticationInterceptor(
                    tokens: tokens.map { Array($0.utf8) },
                    requireCertificate: security.requiresClientCertificate
                )
            ]
        )
        self.executor = GroupExecutor(group)
        self.logger = logger
    }

    /// Binds and serves until graceful shutdown or cancellation. Calls run on the event loops
    /// (`GroupExecutor`), not on the global executor's threads.
    package func run() async throws {
        try await withGracefulShutdownHandler {
            try await withTaskExecutorPreference(self.executor) {
                try await self.server.serve()
            }
        } onGracefulShutdown: {
            self.server.beginGracefulShutdown()
        }
    }

    /// The bound port, once `run` has bound; throws if it could not.
    package var listeningPort: Int {
        get async throws {
            guard let address = try await self.server.listeningAddress,
                let port = address.ipv4?.port ?? address.ipv6?.port
            else {
                throw RouterError("the API listener did not bind")
            }
            return port
        }
    }
}
