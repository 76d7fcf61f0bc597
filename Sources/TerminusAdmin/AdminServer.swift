internal import Foundation
package import Logging
package import NIOCore
internal import NIOHTTP1
internal import NIOPosix
internal import Synchronization
package import TerminusListeners
package import TerminusMetrics

/// The admin HTTP listener: liveness and readiness for Kubernetes probes, and metrics.
///
/// - `GET /healthz`: 200 while the process runs its event loops.
/// - `GET /readyz`: 200 while the gateway accepts devices, 503 once draining started.
/// - `GET /metrics`: the Prometheus text format (`MetricsExporter`).
/// - `/admin/…`: the admin API (`AdminAPI`: devices, kick, drain, configuration, reload),
///   behind a bearer token.
///
/// Nine routes with JSON bodies of a few fields still read well as one plain NIOHTTP1 handler
/// (Hummingbird would add a dependency tree and build time for no feature used here). The
/// probes and `/metrics` have no authentication: keep the listener on loopback or a
/// cluster-internal port.
package final class AdminServer: Sendable {
    private let group: any EventLoopGroup
    private let host: String
    private let port: Int
    private let logger: Logger
    private let ready: @Sendable () -> Bool
    private let metrics: MetricsExporter?
    private let api: AdminAPI?
    private let channel = Mutex<(any Channel)?>(nil)
    /// Caps connections and closes idle ones: probes and scrapes are short.
    package let connectionGuard: ConnectionGuard

    package static let defaultLimits = ConnectionGuard.Limits(maxConnections: 64, idleTimeout: .seconds(30))

    package init(
        group: any EventLoopGroup,
        host: String,
        port: Int,
        limits: ConnectionGuard.Limits = AdminServer.defaultLimits,
        logger: Logger,
        metrics: MetricsExporter? = nil,
        api: AdminAPI? = nil,
        ready: @escaping @Sendable () -> Bool
    ) {
        self.metrics = metrics
        self.api = api
        self.connectionGuard = ConnectionGuard(name: "admin", limits: limits, logger: logger)
        self.group = group
        self.host = host
        self.port = port
        self.logger = logger
        self.ready = ready
    }

    package func start() async throws -> SocketAddress {
        let ready = self.ready
        let metrics = self.metrics
        let api = self.api
        let connectionGuard = self.connectionGuard
        let bootstrap = ServerBootstrap(group: self.group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .serverChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(
                        AcceptPauseHandler(backoff: .milliseconds(250))
                    )
                }
            }
            .childChannelInitializer { channel in
                do {
                    guard try connectionGuard.admit(channel) else { return channel.eventLoop.makeSucceededVoidFuture() }
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                    try channel.pipeline.syncOperations.addHandler(
                        AdminHandler(ready: ready, metrics: metrics, api: api)
                    )
                    return channel.eventLoop.makeSucceededVoidFuture()
                } catch {
                    return channel.eventLoop.makeFailedFuture(error)
                }
            }
        let channel = try await ListenerBindError.binding(
            "admin",
            host: self.host,
            port: self.port,
            setting: "admin.listen or --admin-listen (off turns it off)"
        ) { try await bootstrap.bind(host: self.host, port: self.port).get() }
        self.channel.withLock { $0 = channel }
        let address = channel.localAddress!
        self.logger.info("admin listener started", metadata: ["address": "\(address)"])
        return address
    }

    package func shutdown() async {
        let channel = self.channel.withLock { $0 }
        try? await channel?.close()
    }
}

final class AdminHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let ready: @Sendable () -> Bool
    private let metrics: MetricsExporter?
    private let api: AdminAPI?
    private var head: HTTPRequestHead?

    init(ready: @escaping @Sendable () -> Bool, metrics: MetricsExporter?, api: AdminAPI?) {
        self.ready = ready
        self.metrics = metrics
        self.api = api
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch self.unwrapInboundIn(data) {
        case .head(let head):
            self.head = head
        case .body:
            break
        case .end:
            guard let head = self.head else { return }
            self.head = nil
            if head.method == .GET || head.method == .HEAD, Self.path(head) == "/metrics", let metrics = self.metrics {
                // Read on the loops; answered here when every loop has answered.
                metrics.scrape(on: context.eventLoop).assumeIsolated().whenComplete { result in
                    switch result {
                    case .success(let text):
                        self.write(
                            head,
                            .ok,
                            text,
                            contentType: "text/plain; version=0.0.4; charset=utf-8",
                            context: context
                        )
                    case .failure:
                        self.write(head, .internalServerError, "metrics failed\n", context: context)
                    }
                }
                return
            }
            if Self.path(head) == "/admin" || Self.path(head).hasPrefix("/admin/") {
                let (status, body) =
                    self.api?.respond(
                        method: head.method,
                        path: Self.path(head),
                        query: Self.query(head),
                        authorization: head.headers.first(name: "authorization")
                    ) ?? (.notFound, #"{"error":"the admin API is off"}"#)
                self.write(head, status, body + "\n", contentType: "application/json", context: context)
                return
            }
            let (status, body) = self.respond(head)
            self.write(head, status, body, context: context)
        }
    }

    private func write(
        _ head: HTTPRequestHead,
        _ status: HTTPResponseStatus,
        _ body: String,
        contentType: String = "text/plain; charset=utf-8",
        context: ChannelHandlerContext
    ) {
        var buffer = context.channel.allocator.buffer(capacity: body.utf8.count)
        buffer.writeString(body)
        var headers = HTTPHeaders()
        headers.add(name: "content-type", value: contentType)
        headers.add(name: "content-length", value: "\(buffer.readableBytes)")
        let keepAlive = head.isKeepAlive
        if !keepAlive { headers.add(name: "connection", value: "close") }
        context.write(
            self.wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: status, headers: headers))),
            promise: nil
        )
        // HEAD: the headers of a GET, no body.
        if head.method != .HEAD { context.write(self.wrapOutboundOut(.body(.byteBuffer(buffer))), promise: nil) }
        let done = context.writeAndFlush(self.wrapOutboundOut(.end(nil)))
        if !keepAlive {
            done.assumeIsolated().whenComplete { _ in context.close(promise: nil) }
        }
    }

    private static func query(_ head: HTTPRequestHead) -> [String: String] {
        guard let query = head.uri.split(separator: "?", maxSplits: 1).dropFirst().first else { return [:] }
        var values: [String: String] = [:]
        for pair in query.split(separator: "&") {
            let parts = pair.split(separator: "=", maxSplits: 1).map {
                String($0).replacingOccurrences(of: "+", with: " ").removingPercentEncoding ?? String($0)
            }
            if let key = parts.first { values[key] = parts.count > 1 ? parts[1] : "" }
        }
        return values
    }

    private static func path(_ head: HTTPRequestHead) -> String {
        head.uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? head.uri
    }

    func respond(_ head: HTTPRequestHead) -> (HTTPResponseStatus, String) {
        guard head.method == .GET || head.method == .HEAD else { return (.methodNotAllowed, "method not allowed\n") }
        switch Self.path(head) {
        case "/healthz":
            return (.ok, "ok\n")
        case "/readyz":
            return self.ready() ? (.ok, "ready\n") : (.serviceUnavailable, "draining\n")
        default:
            return (.notFound, "not found\n")
        }
    }
}
