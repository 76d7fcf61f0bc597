public import NIOCore
internal import NIOPosix
internal import NIOSSL
internal import TerminusAuth
internal import TerminusCompression
public import TerminusProtocol

#if canImport(Glibc)
internal import Glibc
#endif

/// One authenticated device connection to a Terminus gateway.
///
/// ```swift
/// let connection = try await TerminusConnection.connect(configuration, group: group)
/// let ack = try await connection.publish(topic: "speaker/paid", payload: bytes)
/// for await push in connection.pushes { …; connection.acknowledge(push) }
/// ```
/// Thread-safe: every operation hops to the connection's event loop. Publishing respects the
/// gateway's `max_inflight`: excess QoS 1 messages wait in this client until ACKs free a slot.
public final class TerminusConnection: Sendable {
    public let welcome: Welcome
    /// Downlink messages; finishes when the connection closes.
    public let pushes: AsyncStream<PushMessage>
    private let channel: any Channel
    private let handler: NIOLoopBound<ClientHandler>
    private let closed: EventLoopFuture<GoAway?>
    private let compression: ClientCompression

    private init(
        welcome: Welcome,
        pushes: AsyncStream<PushMessage>,
        channel: any Channel,
        handler: NIOLoopBound<ClientHandler>,
        closed: EventLoopFuture<GoAway?>,
        compression: ClientCompression
    ) {
        self.welcome = welcome
        self.pushes = pushes
        self.channel = channel
        self.handler = handler
        self.closed = closed
        self.compression = compression
    }

    /// Connects, completes TLS, sends HELLO and waits for WELCOME.
    /// - Throws: `TerminusClientError` (`.refused` with the gateway's GOAWAY when it said no).
    public static func connect(
        _ configuration: TerminusClientConfiguration,
        group: any EventLoopGroup
    ) async throws -> TerminusConnection {
        let sslContext = try configuration.tls.map { try NIOSSLContext(configuration: $0) }
        let (stream, continuation) = AsyncStream<PushMessage>.makeStream(bufferingPolicy: .bufferingOldest(1024))
        var bootstrap = ClientBootstrap(group: group)
            .connectTimeout(configuration.connectTimeout)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                do {
                    let sync = channel.pipeline.syncOperations
                    if let preamble = configuration.preamble {
                        try sync.addHandler(PreambleHandler(bytes: preamble))
                    }
                    if let sslContext {
                        let hostname = configuration.serverHostname ?? configuration.host
                        let sni = Self.isIPAddress(hostname) ? nil : hostname
                        try sync.addHandler(NIOSSLClientHandler(context: sslContext, serverHostname: sni))
                    }
                    let (_, inflater) = try configuration.compression.contexts(for: channel.eventLoop)
                    try sync.addHandler(ByteToMessageHandler(FrameDecoder(maxFrameLength: 16 * 1024 * 1024)))
                    try sync.addHandler(MessageToByteHandler(FrameEncoder()))
                    try sync.addHandler(
                        ClientHandler(eventLoop: channel.eventLoop, pushes: continuation, inflater: inflater)
                    )
                    return channel.eventLoop.makeSucceededVoidFuture()
                } catch {
                    return channel.eventLoop.makeFailedFuture(error)
                }
            }
        if let local = configuration.localAddress {
            bootstrap = bootstrap.bind(to: try SocketAddress(ipAddress: local, port: 0))
        }
        let channel: any Channel
        do {
            channel = try await bootstrap.connect(host: configuration.host, port: configuration.port).get()
        } catch {
            continuation.finish()
            throw TerminusClientError(
                .connectionClosed,
                "cannot connect to \(configuration.host):\(configuration.port): \(error)"
            )
        }
        let hello = try Self.makeHello(configuration)
        let setup: (NIOLoopBound<ClientHandler>, EventLoopFuture<Welcome>, EventLoopFuture<GoAway?>)
        do {
            setup = try await channel.eventLoop.submit {
                let handler = try channel.pipeline.syncOperations.handler(type: ClientHandler.self)
                handler.sendFrame(.hello(hello))
                return (
                    NIOLoopBound(handler, eventLoop: channel.eventLoop), handler.welcomePromise.futureResult,
                    handler.closedPromise.futureResult
                )
            }.get()
        } catch {
            // The gateway closed the connection before HELLO could be sent (e.g. TLS refused).
            channel.close(promise: nil)
            throw TerminusClientError(.connectionClosed, "connection closed during setup: \(error)")
        }
        let timeout = channel.eventLoop.scheduleTask(in: configuration.connectTimeout) { channel.close(promise: nil) }
        defer { timeout.cancel() }
        let welcome: Welcome
        do {
            welcome = try await setup.1.get()
        } catch {
            channel.close(promise: nil)
            throw error
        }
        return TerminusConnection(
            welcome: welcome,
            pushes: stream,
            channel: channel,
            handler: setup.0,
            closed: setup.2,
            compression: configuration.compression
        )
    }

    static func makeHello(_ configuration: TerminusClientConfiguration) throws -> Hello {
        var credential = ByteBuffer()
        let method: AuthMethod
        switch configuration.credential {
        case .token(let token):
            credential.writeString(token)
            method = .token
        case .secret(let secret, let ttl):
            let expiry = Self.unixNow() + ttl
            credential.writeString(
                DeviceToken.make(deviceID: configuration.deviceID, secret: secret, expiresAt: expiry)
            )
            method = .token
        case .certificate:
            method = .certificate
        }
        var capabilities: Capabilities = [.topicAliases]
        if configuration.acceptsCompressedPush { capabilities.insert(.compressedPush) }
        return Hello(
            keepaliveSeconds: configuration.keepaliveSeconds,
            capabilities: capabilities,
            deviceID: configuration.deviceID,
            authMethod: method,
            credential: credential
        )
    }

    static func unixNow() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Int64(ts.tv_sec)
    }

    static func isIPAddress(_ host: String) -> Bool {
        (try? SocketAddress(ipAddress: host, port: 0)) != nil
    }

    /// Publishes one message. QoS 1 returns the gateway's ACK; QoS 0 returns once written.
    /// - Parameters:
    ///   - compress: send the payload as raw deflate (with `dictionaryID`, a preset dictionary).
    public func publish(
        topic: String,
        payload: ByteBuffer,
        qos: QoS = .atLeastOnce,
        compress: Bool = false,
        dictionaryID: UInt16? = nil,
        topicAlias: UInt16? = nil
    ) async throws -> Ack {
        try await self.publishFuture(
            topic: topic,
            payload: payload,
            qos: qos,
            compress: compress,
            dictionaryID: dictionaryID,
            topicAlias: topicAlias
        ).get()
    }

    /// `publish` without a task per message: the future completes on the connection's event
    /// loop (the load generator publishes tens of thousands of messages a second this way).
    public func publishFuture(
        topic: String,
        payload: ByteBuffer,
        qos: QoS = .atLeastOnce,
        compress: Bool = false,
        dictionaryID: UInt16? = nil,
        topicAlias: UInt16? = nil
    ) -> EventLoopFuture<Ack> {
        let handler = self.handler
        let compression = self.compression
        let promise = self.channel.eventLoop.makePromise(of: Ack.self)
        self.channel.eventLoop.execute {
            var body = payload
            if compress {
                do {
                    let (deflater, _) = try compression.contexts(for: handler.eventLoop)
                    body = try deflater.deflate(payload, dictionaryID: dictionaryID, allocator: ByteBufferAllocator())
                } catch {
                    promise.fail(TerminusClientError(.compression, "\(error)"))
                    return
                }
            }
            let message = Message(
                messageID: 0,
                qos: qos,
                compressed: compress,
                dictionaryID: compress ? dictionaryID : nil,
                topicAlias: topicAlias,
                topic: topic,
                payload: body
            )
            handler.value.publish(message, promise: promise)
        }
        return promise.futureResult
    }

    /// The event loop this connection runs on.
    public var eventLoop: any EventLoop { self.channel.eventLoop }

    /// Sends PING and returns the round-trip time.
    public func ping() async throws -> TimeAmount {
        let handler = self.handler
        let promise = self.channel.eventLoop.makePromise(of: TimeAmount.self)
        self.channel.eventLoop.execute { handler.value.sendPing(promise: promise) }
        return try await promise.futureResult.get()
    }

    /// Acknowledges a QoS 1 push.
    public func acknowledge(_ push: PushMessage, status: TerminusCode = .ok) {
        let handler = self.handler
        self.channel.eventLoop.execute { handler.value.acknowledge(messageID: push.messageID, status: status) }
    }

    /// Sends a raw frame (tests use it to misbehave on purpose).
    public func send(_ frame: Frame) {
        let handler = self.handler
        self.channel.eventLoop.execute { handler.value.sendFrame(frame) }
    }

    /// Sends GOAWAY(OK) and closes.
    public func close() async {
        try? await self.beginClose().get()
    }

    /// Starts `close()` without waiting for it (for synchronous callers such as cancellation
    /// handlers); the future completes when the channel is closed.
    @discardableResult
    public func beginClose() -> EventLoopFuture<Void> {
        let handler = self.handler
        let channel = self.channel
        return channel.eventLoop.submit {
            handler.value.sendFrame(.goAway(GoAway(code: .ok)))
        }.flatMap {
            channel.close()
        }
    }

    /// Waits until the connection closes; returns the gateway's GOAWAY if it sent one.
    public func closeReason() async -> GoAway? {
        (try? await self.closed.get()) ?? nil
    }

    public var isActive: Bool { self.channel.isActive }
}
