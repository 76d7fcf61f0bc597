package import Logging
package import NIOCore
internal import NIOHPACK
internal import NIOHTTP2
package import NIOPosix
package import NIOSSL
internal import ServiceLifecycle
internal import SwiftProtobuf
internal import Synchronization
internal import TerminusAPI
package import TerminusListeners
package import TerminusMetrics
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

/// The listener backends call (`api.listen`): the `terminus.v1.Gateway` service (`Send`,
/// `Kick`, `Presence`). Callers authenticate with a bearer token, a client certificate (mTLS),
/// or both when both are configured. A separate port from the device listener: devices cannot
/// reach it.
///
/// gRPC's unary calls written as HTTP/2 frames on the gateway's event loops (swift-nio-http2,
/// NIOSSL), not grpc-swift-2's server: measured, its per-call machinery (a task, async
/// sequences and generic code per call) was over half of a `Send`'s CPU (docs/benchmarks.md).
/// A call is read by `APICallHandler` on its stream's loop; a `Send` waits for the device's ACK
/// as a future of the device's loop and is answered from it, with no task anywhere.
///
/// A `Service`: `run` binds and serves until graceful shutdown (new connections refused, a
/// GOAWAY on each open one, calls in flight answered, then each connection closes) or
/// cancellation (everything closes at once).
package final class APIServer: Service, Sendable {
    private struct State {
        var port: Int?
        var failure: (any Error)?
        var waiters: [CheckedContinuation<Int, any Error>] = []
        var listener: (any Channel)?
        var connections: [ObjectIdentifier: APIConnection] = [:]
        var draining = false
    }

    private let host: String
    private let port: Int
    private let security: APISecurity
    private let service: GatewayAPIService
    private let tokens: Reloadable<BearerTokens>
    /// The listener's TLS context (nil: h2c), made when it starts and replaced by a reload (a
    /// renewed certificate): read once per accepted connection.
    private let tlsContext = Reloadable<NIOSSLContext?>(nil)
    private let group: MultiThreadedEventLoopGroup
    private let logger: Logger
    private let state = Mutex(State())
    /// Caps connections and closes idle ones (`api.max_connections`, `api.idle_timeout`).
    package let connectionGuard: ConnectionGuard

    /// `api.max_connections` and `api.idle_timeout` defaults: backends keep a few long-lived
    /// HTTP/2 connections each; a connection silent for five minutes is closed (gRPC clients
    /// reconnect on their own), so stalled connections cannot pile up.
    package static let defaultLimits = ConnectionGuard.Limits(maxConnections: 1_024, idleTimeout: .seconds(300))

    /// `api.max_concurrent_calls` default: calls open at once on one connection (HTTP/2
    /// `SETTINGS_MAX_CONCURRENT_STREAMS`). A `Send` stays open until its device acknowledges (up
    /// to its TTL), so a backend pushing to many devices at once needs many; more wait in the
    /// caller's gRPC client.
    package static let defaultMaxConcurrentCalls = 1_000

    /// `api.max_request_size` default: the largest request taken (a `Presence` of 10,000 device
    /// ids of 255 bytes fits); a larger one is refused with `RESOURCE_EXHAUSTED`.
    package static let defaultMaxRequestSize = 4 * 1024 * 1024

    private let maxConcurrentCalls: Int
    private let maxRequestSize: Int
    /// `api`, or `fleet` for the fleet's internal listener (its `listener` label in metrics).
    private let name: String

    package init(
        host: String,
        port: Int,
        tokens: [String],
        security: APISecurity = .plaintext,
        name: String = "api",
        directory: any SessionDirectory,
        locator: (any DeviceLocator)? = nil,
        forwarder: (any PodForwarding)? = nil,
        store: (any MessageStoring)? = nil,
        instanceID: String,
        defaultTTLMilliseconds: UInt32 = 10_000,
        maxPayloadSize: Int = 256 * 1024,
        maxTopicLength: Int = 256,
        limits: ConnectionGuard.Limits = APIServer.defaultLimits,
        maxConcurrentCalls: Int = APIServer.defaultMaxConcurrentCalls,
        maxRequestSize: Int = APIServer.defaultMaxRequestSize,
        group: MultiThreadedEventLoopGroup,
        logger: Logger
    ) {
        self.maxConcurrentCalls = max(1, maxConcurrentCalls)
        self.maxRequestSize = max(1, maxRequestSize)
        self.host = host
        self.port = port
        self.security = security
        self.tokens = Reloadable(BearerTokens(tokens))
        self.name = name
        self.service = GatewayAPIService(
            directory: directory,
            locator: locator,
            forwarder: forwarder,
            store: store,
            instanceID: instanceID,
            defaultTTLMilliseconds: defaultTTLMilliseconds,
            maxPayloadSize: maxPayloadSize,
            maxTopicLength: maxTopicLength
        )
        self.connectionGuard = ConnectionGuard(name: name, limits: limits, logger: logger)
        self.group = group
        self.logger = logger
    }

    /// The TLS context for `security` (nil for h2c). Reads the PEM files: call it off the event
    /// loops, at start and on reload.
    package static func makeTLSContext(_ security: APISecurity) throws -> NIOSSLContext? {
        guard case .tls(let chain, let key, let clientCA) = security else { return nil }
        var configuration = TLSConfiguration.makeServerConfiguration(
            certificateChain: try NIOSSLCertificate.fromPEMFile(chain).map { .certificate($0) },
            privateKey: .privateKey(try NIOSSLPrivateKey(file: key, format: .pem))
        )
        // gRPC over TLS is HTTP/2 negotiated by ALPN.
        configuration.applicationProtocols = ["h2"]
        if let clientCA {
            // A caller without a certificate from this CA fails the handshake.
            configuration.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(clientCA))
            configuration.certificateVerification = .noHostnameVerification
        }
        return try NIOSSLContext(configuration: configuration)
    }

    /// Binds and serves until graceful shutdown or cancellation.
    package func run() async throws {
        do {
            try await self.serve()
        } catch {
            self.bound(.failure(error))
            throw error
        }
        self.bound(.failure(CancellationError()))
    }

    private func serve() async throws {
        self.tlsContext.replace(with: try Self.makeTLSContext(self.security))
        let bootstrap = ServerBootstrap(group: self.group)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .serverChannelInitializer { channel in
                // Out of descriptors, accept must pause rather than spin.
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(AcceptPauseHandler(backoff: .milliseconds(250)))
                }
            }
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try self.initialize(channel, tls: self.tlsContext.value)
                }
            }
        let listener = try await ListenerBindError.binding(
            "API",
            host: self.host,
            port: self.port,
            setting: "api.listen or --api-listen"
        ) { try await bootstrap.bind(host: self.host, port: self.port).get() }
        let closing = self.state.withLock { state -> Bool in
            state.listener = listener
            return state.draining
        }
        if closing { listener.close(promise: nil) }
        self.bound(.success(listener.localAddress?.port ?? self.port))
        await withTaskCancellationHandler {
            await withGracefulShutdownHandler {
                try? await listener.closeFuture.get()
                // No connection is accepted any more; wait for the open ones to finish theirs.
                let connections = self.state.withLock { Array($0.connections.values) }
                for connection in connections { try? await connection.channel.closeFuture.get() }
            } onGracefulShutdown: {
                self.drain()
            }
        } onCancel: {
            self.closeAll()
        }
        try Task.checkCancellation()
    }

    private func initialize(_ channel: any Channel, tls: NIOSSLContext?) throws {
        guard try self.connectionGuard.admit(channel) else { return }
        if let tls { try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: tls)) }
        // Idle connections end with a GOAWAY at half the guard's idle timeout, before the guard
        // would cut them.
        let connection = APIConnection(
            channel: channel,
            idleAfter: .nanoseconds(self.connectionGuard.limits.idleTimeout.nanoseconds / 2)
        )
        var configuration = NIOHTTP2Handler.ConnectionConfiguration()
        configuration.initialSettings = [
            HTTP2Setting(parameter: .maxConcurrentStreams, value: self.maxConcurrentCalls),
            HTTP2Setting(parameter: .maxHeaderListSize, value: HPACKDecoder.defaultMaxHeaderListSize),
        ]
        let service = self.service
        let tokens = self.tokens
        let maxRequestSize = self.maxRequestSize
        _ = try channel.pipeline.syncOperations.configureHTTP2Pipeline(
            mode: .server,
            connectionConfiguration: configuration,
            streamConfiguration: .init()
        ) { stream in
            stream.eventLoop.makeCompletedFuture {
                connection.callStarted(stream)
                try stream.pipeline.syncOperations.addHandler(
                    APICallHandler(service: service, tokens: tokens, maxRequestSize: maxRequestSize)
                )
            }
        }
        try channel.pipeline.syncOperations.addHandler(DrainPingHandler(connection: connection))
        let id = ObjectIdentifier(channel)
        let draining = self.state.withLock { state -> Bool in
            state.connections[id] = connection
            return state.draining
        }
        channel.closeFuture.whenComplete { _ in
            _ = self.state.withLock { $0.connections.removeValue(forKey: id) }
        }
        if draining { connection.drain() }
    }

    private func bound(_ result: Result<Int, any Error>) {
        let waiters = self.state.withLock { state -> [CheckedContinuation<Int, any Error>] in
            switch result {
            case .success(let port): state.port = port
            case .failure(let error): if state.port == nil, state.failure == nil { state.failure = error }
            }
            defer { state.waiters.removeAll() }
            return state.waiters
        }
        for waiter in waiters { waiter.resume(with: result) }
    }

    /// Refuses new connections, asks each open one to finish (GOAWAY) and closes it once its
    /// calls are answered.
    private func drain() {
        let (listener, connections) = self.state.withLock { state in
            state.draining = true
            return (state.listener, Array(state.connections.values))
        }
        listener?.close(promise: nil)
        for connection in connections { connection.drain() }
    }

    private func closeAll() {
        let (listener, connections) = self.state.withLock { state in
            state.draining = true
            return (state.listener, Array(state.connections.values))
        }
        listener?.close(promise: nil)
        for connection in connections { connection.channel.close(promise: nil) }
    }

    /// The bound port, once `run` has bound; throws if it could not.
    package var listeningPort: Int {
        get async throws {
            try await withCheckedThrowingContinuation { continuation in
                let known = self.state.withLock { state -> Result<Int, any Error>? in
                    if let port = state.port { return .success(port) }
                    if let failure = state.failure { return .failure(failure) }
                    state.waiters.append(continuation)
                    return nil
                }
                if let known { continuation.resume(with: known) }
            }
        }
    }
}

/// One API connection: counts its open calls, so that a drain closes it once they are answered.
///
/// A drain is HTTP/2's graceful two-step: a GOAWAY naming the largest stream id (calls on the
/// wire still count) and a PING; once the PING is answered (or after a second), every call the
/// caller started has arrived, so a GOAWAY naming the last stream opened follows, and the
/// connection closes when its calls are answered.
private final class APIConnection: Sendable {
    private struct Calls {
        var open = 0
        var lastStreamID = HTTP2StreamID(0)
        /// 0: serving; 1: first GOAWAY and PING sent; 2: final GOAWAY sent.
        var drainStep = 0
        /// Drains the connection once it has had no call for `idleAfter`.
        var idleTimer: Scheduled<Void>?
    }

    static let drainPing = HTTP2PingData(withInteger: 0x6472_6169_6e00_0001)

    let channel: any Channel
    private let calls: NIOLoopBoundBox<Calls>
    private let idleAfter: TimeAmount

    /// Called on the connection's loop. `idleAfter`: a connection without calls for this long
    /// is drained (GOAWAY), before the connection guard would cut it.
    init(channel: any Channel, idleAfter: TimeAmount) {
        self.channel = channel
        self.idleAfter = idleAfter
        self.calls = NIOLoopBoundBox(Calls(), eventLoop: channel.eventLoop)
        self.armIdleTimer()
        channel.closeFuture.whenComplete { _ in
            self.calls.value.idleTimer?.cancel()
            self.calls.value.idleTimer = nil
        }
    }

    private func armIdleTimer() {
        self.calls.value.idleTimer?.cancel()
        self.calls.value.idleTimer = self.channel.eventLoop.scheduleTask(in: self.idleAfter) {
            if self.calls.value.open == 0 { self.drain() }
        }
    }

    /// A call's stream opened (on the connection's loop).
    func callStarted(_ stream: any Channel) {
        self.calls.value.open += 1
        self.calls.value.idleTimer?.cancel()
        self.calls.value.idleTimer = nil
        if let id = try? stream.syncOptions?.getOption(HTTP2StreamChannelOptions.streamID),
            id > self.calls.value.lastStreamID
        {
            self.calls.value.lastStreamID = id
        }
        stream.closeFuture.whenComplete { _ in
            self.calls.value.open -= 1
            if self.calls.value.open == 0 && self.calls.value.drainStep == 0 && self.channel.isActive {
                self.armIdleTimer()
            }
            self.closeIfDrained()
        }
    }

    /// No new calls (GOAWAY, so the caller's client opens its next call elsewhere); closes once
    /// the open ones are answered.
    func drain() {
        self.channel.eventLoop.execute {
            guard self.calls.value.drainStep == 0 else { return }
            self.calls.value.drainStep = 1
            self.goAway(lastStreamID: .maxID)
            self.channel.writeAndFlush(
                HTTP2Frame(streamID: .rootStream, payload: .ping(Self.drainPing, ack: false)),
                promise: nil
            )
            self.channel.eventLoop.scheduleTask(in: .seconds(1)) { self.pingAnswered() }
        }
    }

    /// The drain's PING came back (or its second is up): the final GOAWAY (on the loop).
    func pingAnswered() {
        guard self.calls.value.drainStep == 1 else { return }
        self.calls.value.drainStep = 2
        self.goAway(lastStreamID: self.calls.value.lastStreamID)
        self.closeIfDrained()
    }

    private func goAway(lastStreamID: HTTP2StreamID) {
        let frame = HTTP2Frame(
            streamID: .rootStream,
            payload: .goAway(lastStreamID: lastStreamID, errorCode: .noError, opaqueData: nil)
        )
        self.channel.writeAndFlush(frame, promise: nil)
    }

    private func closeIfDrained() {
        if self.calls.value.drainStep == 2 && self.calls.value.open == 0 { self.channel.close(promise: nil) }
    }
}

/// Last on an API connection: hands the answer to the drain's PING to its connection.
private final class DrainPingHandler: ChannelInboundHandler {
    typealias InboundIn = HTTP2Frame

    private let connection: APIConnection

    init(connection: APIConnection) {
        self.connection = connection
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if case .ping(let ping, ack: true) = self.unwrapInboundIn(data).payload, ping == APIConnection.drainPing {
            self.connection.pingAnswered()
        }
        context.fireChannelRead(data)
    }
}

/// One unary call on its HTTP/2 stream: checks the request headers (method, path, content type,
/// bearer token), reads the one gRPC message (at most `api.max_request_size`), calls
/// `GatewayAPIService`, and writes the response headers, the answer and the trailers (or, for a
/// refused call, trailers only with its `grpc-status`).
private final class APICallHandler: ChannelInboundHandler {
    typealias InboundIn = HTTP2Frame.FramePayload
    typealias OutboundOut = HTTP2Frame.FramePayload

    private enum Method {
        case send, sendMany, kick, presence
    }

    /// gRPC status codes used here.
    private enum Status: Int {
        case invalidArgument = 3
        case failedPrecondition = 9
        case resourceExhausted = 8
        case unimplemented = 12
        case internalError = 13
        case unavailable = 14
        case unauthenticated = 16
    }

    private let service: GatewayAPIService
    private let tokens: Reloadable<BearerTokens>
    private let maxRequestSize: Int
    private var method: Method?
    private var request = ByteBuffer()
    /// Answered (or refused): what else arrives is ignored.
    private var done = false

    init(service: GatewayAPIService, tokens: Reloadable<BearerTokens>, maxRequestSize: Int) {
        self.service = service
        self.tokens = tokens
        self.maxRequestSize = maxRequestSize
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !self.done else { return }
        switch self.unwrapInboundIn(data) {
        case .headers(let headers):
            if self.method == nil {
                guard let method = self.accept(headers.headers, context: context) else { return }
                self.method = method
            }
            if headers.endStream { self.call(context: context) }
        case .data(let payload):
            guard self.method != nil else { return }
            if case .byteBuffer(var bytes) = payload.data {
                guard self.request.readableBytes + bytes.readableBytes <= self.maxRequestSize + 5 else {
                    return self.refuse(
                        .resourceExhausted,
                        "request larger than \(self.maxRequestSize) bytes",
                        context: context
                    )
                }
                self.request.writeBuffer(&bytes)
            }
            if payload.endStream { self.call(context: context) }
        default:
            break
        }
    }

    /// The call's method, or nil once refused.
    private func accept(_ headers: HPACKHeaders, context: ChannelHandlerContext) -> Method? {
        guard headers.first(name: ":method") == "POST",
            headers.first(name: "content-type")?.hasPrefix("application/grpc") == true
        else {
            self.refuse(.unimplemented, "expected a gRPC call (POST, content-type application/grpc)", context: context)
            return nil
        }
        let method: Method
        switch headers.first(name: ":path") {
        case "/terminus.v1.Gateway/Send": method = .send
        case "/terminus.v1.Gateway/SendMany": method = .sendMany
        case "/terminus.v1.Gateway/Kick": method = .kick
        case "/terminus.v1.Gateway/Presence": method = .presence
        case let path:
            self.refuse(.unimplemented, "no method \(path ?? "")", context: context)
            return nil
        }
        if let encoding = headers.first(name: "grpc-encoding"), encoding != "identity" {
            self.refuse(.unimplemented, "compressed requests are not supported", context: context)
            return nil
        }
        // No token configured: any caller (mTLS alone decides).
        let tokens = self.tokens.value
        guard tokens.isEmpty || tokens.accepts(authorization: headers.first(name: "authorization")) else {
            self.refuse(.unauthenticated, "a valid 'authorization: Bearer <token>' is required", context: context)
            return nil
        }
        return method
    }

    /// The request is complete: decode it and answer.
    private func call(context: ChannelHandlerContext) {
        guard let method = self.method, !self.done else { return }
        guard self.request.readableBytes >= 5,
            let compressed = self.request.readInteger(as: UInt8.self),
            let length = self.request.readInteger(as: UInt32.self),
            Int(length) == self.request.readableBytes
        else {
            return self.refuse(.invalidArgument, "expected exactly one request message", context: context)
        }
        guard compressed == 0 else {
            return self.refuse(.unimplemented, "compressed requests are not supported", context: context)
        }
        let bytes = Array(self.request.readableBytesView)
        self.request = ByteBuffer()
        do {
            switch method {
            case .send:
                let request = try Terminus_V1_SendRequest(serializedBytes: bytes)
                self.reply(self.service.send(request, on: context.eventLoop), context: context)
            case .sendMany:
                let loop = context.eventLoop
                guard
                    let answer = self.service.sendMany(
                        try Terminus_V1_SendManyRequest(serializedBytes: bytes),
                        on: loop
                    )
                else {
                    return self.refuse(
                        .invalidArgument,
                        "at most \(GatewayAPIService.maxSendManyIDs) device ids per call",
                        context: context
                    )
                }
                self.reply(answer, context: context)
            case .kick:
                let request = try Terminus_V1_KickRequest(serializedBytes: bytes)
                self.reply(self.service.kick(request, on: context.eventLoop), context: context)
            case .presence:
                let loop = context.eventLoop
                guard
                    let answer = self.service.presence(
                        try Terminus_V1_PresenceRequest(serializedBytes: bytes),
                        on: loop
                    )
                else {
                    return self.refuse(
                        .invalidArgument,
                        "at most \(GatewayAPIService.maxPresenceIDs) device ids per call",
                        context: context
                    )
                }
                self.reply(answer, context: context)
            }
        } catch {
            self.refuse(.invalidArgument, "the request is not a valid message: \(error)", context: context)
        }
    }

    /// Answers with what `answer` brings, on the stream's loop. A call about devices of other
    /// pods fails with `FleetUnavailable` when the fleet cannot answer: `UNAVAILABLE`.
    private func reply(_ answer: EventLoopFuture<some SwiftProtobuf.Message>, context: ChannelHandlerContext) {
        self.done = true
        answer.hop(to: context.eventLoop).assumeIsolated().whenComplete { result in
            self.done = false
            switch result {
            case .success(let response): self.answer(response, context: context)
            case .failure(let error as FleetUnavailable): self.refuse(.unavailable, error.description, context: context)
            case .failure(let error as StoreNotConfigured):
                self.refuse(.failedPrecondition, error.description, context: context)
            case .failure(let error): self.refuse(.internalError, "\(error)", context: context)
            }
        }
    }

    private func answer(_ response: some SwiftProtobuf.Message, context: ChannelHandlerContext) {
        self.done = true
        guard let bytes: [UInt8] = try? response.serializedBytes() else {
            return self.refuse(.internalError, "the answer could not be encoded", context: context, force: true)
        }
        var buffer = context.channel.allocator.buffer(capacity: 5 + bytes.count)
        buffer.writeInteger(UInt8(0))
        buffer.writeInteger(UInt32(bytes.count))
        buffer.writeBytes(bytes)
        let headers: HPACKHeaders = [":status": "200", "content-type": "application/grpc"]
        context.write(self.wrapOutboundOut(.headers(.init(headers: headers))), promise: nil)
        context.write(self.wrapOutboundOut(.data(.init(data: .byteBuffer(buffer)))), promise: nil)
        let trailers: HPACKHeaders = ["grpc-status": "0"]
        context.writeAndFlush(self.wrapOutboundOut(.headers(.init(headers: trailers, endStream: true))), promise: nil)
    }

    /// Trailers only, with the status and its message; the stream is then closed (reset if the
    /// caller had not finished sending).
    private func refuse(_ status: Status, _ message: String, context: ChannelHandlerContext, force: Bool = false) {
        guard !self.done || force else { return }
        self.done = true
        let headers: HPACKHeaders = [
            ":status": "200", "content-type": "application/grpc", "grpc-status": "\(status.rawValue)",
            "grpc-message": Self.percentEncoded(message),
        ]
        context.writeAndFlush(self.wrapOutboundOut(.headers(.init(headers: headers, endStream: true))))
            .assumeIsolated().whenComplete { _ in context.close(promise: nil) }
    }

    /// `grpc-message` is percent-encoded outside printable ASCII (and `%` itself).
    static func percentEncoded(_ message: String) -> String {
        var out = ""
        for byte in message.utf8 {
            if byte >= 0x20 && byte <= 0x7E && byte != 0x25 {
                out.unicodeScalars.append(Unicode.Scalar(byte))
            } else {
                out += "%" + String(byte, radix: 16, uppercase: true).leftPadded(to: 2)
            }
        }
        return out
    }
}

extension String {
    fileprivate func leftPadded(to width: Int) -> String {
        self.count >= width ? self : String(repeating: "0", count: width - self.count) + self
    }
}

extension APIServer {
    /// A configuration reload: calls from now on are checked against `tokens`.
    package func reload(tokens: [String]) {
        self.tokens.replace(with: BearerTokens(tokens))
    }

    /// A configuration reload of the listener's certificate, key and client CA (`context`, from
    /// `makeTLSContext`): connections accepted from now on shake hands with it; those open keep
    /// theirs. Ignored on an h2c listener (the transport changes only at a restart).
    package func reload(tlsContext context: NIOSSLContext) {
        guard case .tls = self.security else { return }
        self.tlsContext.replace(with: context)
    }
}

extension APIServer: MetricsSource {
    package func collectMetrics(on eventLoop: any EventLoop) -> EventLoopFuture<MetricsSnapshot> {
        var snapshot = MetricsSnapshot()
        self.connectionGuard.collect(into: &snapshot)
        // The fleet's internal listener counts the sends other pods forwarded here apart: the
        // pod that took the call counted them already.
        let series =
            self.name == "api" ? "terminus_downlink_sends_total" : "terminus_fleet_forwarded_sends_served_total"
        for (outcome, count) in self.service.sends.byOutcome {
            snapshot.count(SeriesKey(series, ["outcome": outcome]), count)
        }
        return eventLoop.makeSucceededFuture(snapshot)
    }
}
