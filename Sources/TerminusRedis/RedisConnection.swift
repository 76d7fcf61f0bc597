package import NIOCore
internal import NIOPosix
internal import NIOSSL
internal import TerminusProtocol

/// One connection to a Redis server. Commands are pipelined: `send` writes all of its commands
/// with one flush, and answers are matched to commands in order (Redis answers in order). Each
/// `send` has the command timeout; when it passes, the connection closes (an answer arriving
/// later could not be matched) and every waiting command fails with `timeout`. At most
/// `maxPending` commands wait at once; more fail with `tooManyPending` rather than queue.
/// Everything runs on the connection's event loop.
package final class RedisConnection: Sendable {
    package let channel: any Channel
    private let handler: NIOLoopBound<RedisHandler>

    private init(channel: any Channel, handler: RedisHandler) {
        self.channel = channel
        self.handler = NIOLoopBound(handler, eventLoop: channel.eventLoop)
    }

    /// Connects, then says `HELLO` (RESP3, with `AUTH` when a password is set) or `AUTH` (RESP2),
    /// `SELECT`s the database and names the client. A refused password is `authentication`.
    /// - Parameter onMessage: called on the connection's loop with each Pub/Sub message
    ///   (channel, payload) of the channels `subscribe` asked for.
    package static func connect(
        _ configuration: RedisClient.Configuration,
        on eventLoop: any EventLoop,
        onMessage: (@Sendable (String, ByteBuffer) -> Void)? = nil
    ) async throws -> RedisConnection {
        let tls: NIOSSLContext?
        do {
            tls = try configuration.tls.map { try NIOSSLContext(configuration: $0) }
        } catch {
            throw RedisError(.connectionFailed, "TLS configuration: \(error)")
        }
        let bootstrap = ClientBootstrap(group: eventLoop)
            .connectTimeout(configuration.connectTimeout)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let sync = channel.pipeline.syncOperations
                    if let tls {
                        let name = configuration.serverName ?? configuration.host
                        let sni = name.contains(":") || name.allSatisfy({ $0.isNumber || $0 == "." }) ? nil : name
                        try sync.addHandler(NIOSSLClientHandler(context: tls, serverHostname: sni))
                    }
                    try sync.addHandler(
                        ByteToMessageHandler(
                            RESPDecoder(limits: configuration.decoderLimits),
                            maximumBufferSize: configuration.decoderLimits.maxBulkLength + 64 * 1024
                        )
                    )
                    try sync.addHandler(
                        RedisHandler(
                            timeout: configuration.commandTimeout,
                            maxPending: configuration.maxPending,
                            onMessage: onMessage
                        )
                    )
                }
            }
        let channel: any Channel
        do {
            channel = try await bootstrap.connect(host: configuration.host, port: configuration.port).get()
        } catch {
            throw RedisError(.connectionFailed, "cannot connect to \(configuration.address): \(error)")
        }
        if channel.isConnectedToItself {
            channel.close(promise: nil)
            throw RedisError(.connectionFailed, "the connection to \(configuration.address) reached itself")
        }
        let connection: RedisConnection
        do {
            connection = try await eventLoop.submit {
                RedisConnection(
                    channel: channel,
                    handler: try channel.pipeline.syncOperations.handler(type: RedisHandler.self)
                )
            }.get()
        } catch {
            // The connection ended before it could be used (a TLS handshake the server refused
            // can close it this early): the pipeline is gone.
            channel.close(promise: nil)
            throw RedisError(
                .connectionFailed,
                "connection to \(configuration.address) closed while it was set up: \(error)"
            )
        }
        do {
            try await connection.greet(configuration)
        } catch {
            connection.close()
            throw error
        }
        return connection
    }

    private func greet(_ configuration: RedisClient.Configuration) async throws {
        var commands: [RedisCommand] = []
        if configuration.protocolVersion == 3 {
            var arguments: [RedisArgument] = ["3"]
            if let password = configuration.password {
                arguments += ["AUTH", RedisArgument(configuration.username ?? "default"), RedisArgument(password)]
            }
            arguments += ["SETNAME", RedisArgument(configuration.clientName)]
            commands.append(RedisCommand("HELLO", arguments))
        } else {
            if let password = configuration.password {
                let user = configuration.username.map { [RedisArgument($0)] } ?? []
                commands.append(RedisCommand("AUTH", user + [RedisArgument(password)]))
            }
            commands.append(RedisCommand("CLIENT", "SETNAME", RedisArgument(configuration.clientName)))
        }
        if configuration.database != 0 {
            commands.append(RedisCommand("SELECT", RedisArgument(configuration.database)))
        }
        let answers = try await self.send(commands).get()
        for (command, answer) in zip(commands, answers) {
            guard case .error(let message) = answer else { continue }
            if command.name == "HELLO" || command.name == "AUTH" || message.hasPrefix("NOAUTH")
                || message.hasPrefix("WRONGPASS")
            {
                let hint =
                    message.hasPrefix("NOAUTH") || (message.contains("AUTH") && configuration.password == nil)
                    ? " (the server requires a password: set redis.password)" : ""
                throw RedisError(.authentication, "\(configuration.address) refused \(command.name): \(message)\(hint)")
            }
            throw RedisError(.server, "\(configuration.address) refused \(command.name): \(message)")
        }
    }

    /// Writes `commands` with one flush; their answers, in order (a server error is an
    /// `.error` value, not a failure). Fails with `connectionClosed`, `timeout`,
    /// `tooManyPending` or `protocolViolation`.
    package func send(_ commands: [RedisCommand]) -> EventLoopFuture<[RESPValue]> {
        let handler = self.handler
        let promise = self.channel.eventLoop.makePromise(of: [RESPValue].self)
        if self.channel.eventLoop.inEventLoop {
            handler.value.send(commands, promise: promise)
        } else {
            self.channel.eventLoop.execute { handler.value.send(commands, promise: promise) }
        }
        return promise.futureResult
    }

    /// `SUBSCRIBE channels`: RESP3 only (the connection goes on taking commands; messages
    /// arrive as pushes, for `onMessage`). The server's confirmations are pushes too, not answers.
    package func subscribe(_ channels: [String]) {
        guard !channels.isEmpty else { return }
        let handler = self.handler
        let command = RedisCommand("SUBSCRIBE", channels.map { RedisArgument($0) })
        if self.channel.eventLoop.inEventLoop {
            handler.value.write(command)
        } else {
            self.channel.eventLoop.execute { handler.value.write(command) }
        }
    }

    package var closeFuture: EventLoopFuture<Void> { self.channel.closeFuture }

    package var isActive: Bool { self.channel.isActive }

    package func close() {
        self.channel.close(promise: nil)
    }
}

/// Matches answers to commands (FIFO), bounds what waits, and closes the connection at a
/// timeout or a protocol violation. Confined to the connection's event loop.
final class RedisHandler: ChannelInboundHandler {
    typealias InboundIn = RESPDecoder.Decoded
    typealias OutboundOut = ByteBuffer

    private struct Waiting {
        var remaining: Int
        var answers: [RESPValue]
        let promise: EventLoopPromise<[RESPValue]>
        let timeout: Scheduled<Void>?
    }

    private let timeout: TimeAmount
    private let maxPending: Int
    private let onMessage: (@Sendable (String, ByteBuffer) -> Void)?
    private var waiting = CircularBuffer<Waiting>()
    private var pendingCommands = 0
    private var context: ChannelHandlerContext?
    private var failure: RedisError?

    init(timeout: TimeAmount, maxPending: Int, onMessage: (@Sendable (String, ByteBuffer) -> Void)? = nil) {
        self.timeout = timeout
        self.maxPending = maxPending
        self.onMessage = onMessage
    }

    /// Writes a command no answer is matched to (`SUBSCRIBE` over RESP3).
    func write(_ command: RedisCommand) {
        guard let context = self.context, context.channel.isActive else { return }
        var buffer = context.channel.allocator.buffer(capacity: command.encodedSize)
        command.encode(into: &buffer)
        context.writeAndFlush(self.wrapOutboundOut(buffer), promise: nil)
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func send(_ commands: [RedisCommand], promise: EventLoopPromise<[RESPValue]>) {
        guard let context = self.context, context.channel.isActive, self.failure == nil else {
            promise.fail(self.failure ?? RedisError(.connectionClosed, "the connection to Redis is closed"))
            return
        }
        guard !commands.isEmpty else { return promise.succeed([]) }
        guard self.pendingCommands + commands.count <= self.maxPending else {
            promise.fail(RedisError(.tooManyPending, "\(self.pendingCommands) commands already wait for Redis"))
            return
        }
        var buffer = context.channel.allocator.buffer(capacity: commands.reduce(0) { $0 + $1.encodedSize })
        for command in commands { command.encode(into: &buffer) }
        let milliseconds = self.timeout.nanoseconds / 1_000_000
        let timeout = context.eventLoop.assumeIsolated().scheduleTask(in: self.timeout) { [weak self] () -> Void in
            self?.fail(RedisError(.timeout, "no answer from Redis within \(milliseconds) ms"))
        }
        self.waiting.append(
            Waiting(remaining: commands.count, answers: [], promise: promise, timeout: timeout)
        )
        self.pendingCommands += commands.count
        context.writeAndFlush(self.wrapOutboundOut(buffer), promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch self.unwrapInboundIn(data) {
        case .push(let values):
            // Pub/Sub messages (`message`, channel, payload) go to `onMessage`; the rest
            // (subscribe confirmations, client tracking) is dropped.
            if values.count == 3, values[0].string == "message", let channel = values[1].string,
                case .bulkString(let payload) = values[2]
            {
                self.onMessage?(channel, payload)
            }
            return
        case .reply(let value):
            guard var first = self.waiting.first else {
                self.fail(RedisError(.protocolViolation, "an answer no command waits for"))
                return
            }
            first.answers.append(value)
            first.remaining -= 1
            self.pendingCommands -= 1
            if first.remaining == 0 {
                self.waiting.removeFirst()
                first.timeout?.cancel()
                first.promise.succeed(first.answers)
            } else {
                self.waiting[self.waiting.startIndex] = first
            }
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        self.fail(error as? RedisError ?? RedisError(.connectionClosed, "\(error)"))
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.fail(RedisError(.connectionClosed, "the connection to Redis closed"))
        context.fireChannelInactive()
    }

    /// Fails every waiting command and closes the connection.
    private func fail(_ error: RedisError) {
        if self.failure == nil { self.failure = error }
        while let waiting = self.waiting.popFirst() {
            waiting.timeout?.cancel()
            waiting.promise.fail(error)
        }
        self.pendingCommands = 0
        self.context?.close(promise: nil)
    }
}
