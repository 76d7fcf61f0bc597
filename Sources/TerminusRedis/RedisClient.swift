package import Logging
package import NIOCore
package import NIOSSL
internal import ServiceLifecycle
internal import Synchronization
package import TerminusProtocol

/// A Redis client for what Terminus keeps in Redis: one pipelined connection, kept open by
/// `run()` (a `Service`), remade with the shared `RetryPolicy` after it breaks. While there is
/// no connection, commands fail at once with `unavailable`: the callers (the session registry,
/// cross-pod downlink) answer their own callers rather than hang.
package final class RedisClient: Service, Sendable {
    package struct Configuration: Sendable {
        package var host: String
        package var port: Int
        /// ACL user (`redis.username`); nil: `default`.
        package var username: String?
        /// `redis.password`; nil: no AUTH.
        package var password: String?
        package var database = 0
        /// TLS to the server (`redis.tls`); nil: plaintext.
        package var tls: TLSConfiguration?
        /// The name checked in the server's certificate (default: `host`).
        package var serverName: String?
        package var connectTimeout: TimeAmount = .seconds(3)
        /// How long one `send` may wait for its answers; then the connection is remade.
        package var commandTimeout: TimeAmount = .seconds(2)
        /// 3: RESP3 through `HELLO 3` (Redis 6 and later); 2: RESP2 with `AUTH`.
        package var protocolVersion = 3
        /// Waiting between attempts to (re)connect.
        package var reconnect = RetryPolicy(
            maxAttempts: nil,
            initialBackoff: .milliseconds(100),
            maxBackoff: .seconds(5),
            multiplier: 2,
            jitter: .proportional(0.2)
        )
        /// Commands waiting for answers at once, at most.
        package var maxPending = 65_536
        /// `CLIENT SETNAME` (shows in `CLIENT LIST`).
        package var clientName = "terminus"
        package var decoderLimits = RESPDecoder.Limits()

        package init(host: String, port: Int) {
            self.host = host
            self.port = port
        }

        /// `host:port` for messages (never the password).
        package var address: String {
            self.host.contains(":") ? "[\(self.host)]:\(self.port)" : "\(self.host):\(self.port)"
        }
    }

    private struct State {
        var connection: RedisConnection?
        /// Settled by the next connection (or the end of `run`), for `waitUntilConnected`.
        var waiters: [CheckedContinuation<Void, Never>] = []
        var connects = 0
        var lastError: RedisError?
        /// Subscribed on every new connection.
        var channels: [String] = []
    }

    package let configuration: Configuration
    private let eventLoop: any EventLoop
    private let logger: Logger
    private let state = Mutex(State())
    /// Commands and round trips (one per `send`) since start, for the metrics and the
    /// registry's round-trip budget.
    /// Where Pub/Sub messages go (`onMessage`).
    private let messageHandler = Mutex<(@Sendable (String, ByteBuffer) -> Void)?>(nil)
    private let commandCount = Atomic<Int>(0)
    private let roundTripCount = Atomic<Int>(0)

    package init(configuration: Configuration, eventLoop: any EventLoop, logger: Logger) {
        self.configuration = configuration
        self.eventLoop = eventLoop
        self.logger = logger
    }

    /// Pub/Sub messages of the channels `subscribe` named (channel, payload) go to `handler`,
    /// called on the connection's event loop. Needs `protocolVersion` 3.
    package func onMessage(_ handler: @escaping @Sendable (String, ByteBuffer) -> Void) {
        self.messageHandler.withLock { $0 = handler }
    }

    /// Subscribes to `channels` now (when connected) and on every connection from now on.
    /// RESP3 only: over RESP2 a subscribed connection could not take commands.
    package func subscribe(_ channels: [String]) {
        guard self.configuration.protocolVersion == 3 else { return }
        let connection = self.state.withLock { state in
            state.channels += channels
            return state.connection
        }
        connection?.subscribe(channels)
    }

    /// Connects, and reconnects after every break with `configuration.reconnect`, until graceful
    /// shutdown or cancellation; then closes the connection. An authentication failure is
    /// retried too (a password may be rotated), and logged each time at most once a backoff.
    package func run() async throws {
        var failures = 0
        await withTaskCancellationOrGracefulShutdownHandler {
            while !Task.isCancelled && !Task.isShuttingDownGracefully {
                do {
                    let connection = try await RedisConnection.connect(
                        self.configuration,
                        on: self.eventLoop,
                        onMessage: { [weak self] channel, payload in
                            self?.messageHandler.withLock { $0 }?(channel, payload)
                        }
                    )
                    failures = 0
                    let waiters = self.state.withLock { state in
                        // SUBSCRIBE goes out before any command can use the connection: a
                        // message published in answer to this pod's first writes is not missed.
                        connection.subscribe(state.channels)
                        state.connection = connection
                        state.connects += 1
                        state.lastError = nil
                        defer { state.waiters = [] }
                        return state.waiters
                    }
                    for waiter in waiters { waiter.resume() }
                    self.logger.info("redis connected", metadata: ["redis": "\(self.configuration.address)"])
                    try? await connection.closeFuture.get()
                    self.state.withLock { $0.connection = nil }
                    if Task.isCancelled || Task.isShuttingDownGracefully { break }
                    self.logger.warning("redis connection lost", metadata: ["redis": "\(self.configuration.address)"])
                } catch {
                    failures += 1
                    let redisError = error as? RedisError ?? RedisError(.connectionFailed, "\(error)")
                    self.state.withLock { $0.lastError = redisError }
                    self.logger.warning(
                        "redis unavailable; retrying",
                        metadata: [
                            "redis": "\(self.configuration.address)", "error": "\(redisError)",
                            "attempt": "\(failures)",
                        ]
                    )
                }
                let delay = self.configuration.reconnect.delay(afterFailures: max(1, failures))
                try? await Task.sleep(for: delay)
            }
        } onCancelOrGracefulShutdown: {
            self.state.withLock { $0.connection }?.close()
        }
        let waiters = self.state.withLock { state in
            defer { state.waiters = [] }
            state.connection?.close()
            state.connection = nil
            return state.waiters
        }
        for waiter in waiters { waiter.resume() }
    }

    /// Whether a connection is open now.
    package var isConnected: Bool { self.state.withLock { $0.connection?.isActive ?? false } }

    /// Connections made since start (1 after the first; each reconnect adds one).
    package var connects: Int { self.state.withLock { $0.connects } }

    /// Commands sent, and round trips (one per `send`, however many commands it pipelines).
    package var commandsSent: Int { self.commandCount.load(ordering: .relaxed) }
    package var roundTrips: Int { self.roundTripCount.load(ordering: .relaxed) }

    /// Waits until a connection is open, or `timeout` passed; whether one is.
    package func waitUntilConnected(timeout: Duration) async -> Bool {
        if self.isConnected { return true }
        let timer = Task {
            try? await Task.sleep(for: timeout)
            let waiters = self.state.withLock { state in
                defer { state.waiters = [] }
                return state.waiters
            }
            for waiter in waiters { waiter.resume() }
        }
        defer { timer.cancel() }
        await withCheckedContinuation { continuation in
            let now = self.state.withLock { state -> Bool in
                if state.connection?.isActive == true { return true }
                state.waiters.append(continuation)
                return false
            }
            if now { continuation.resume() }
        }
        return self.isConnected
    }

    /// Sends `commands` pipelined (one write, one round trip) and returns their answers in
    /// order; a command the server refused is an `.error` answer. Fails at once with
    /// `unavailable` when there is no connection.
    package func send(_ commands: [RedisCommand]) async throws -> [RESPValue] {
        guard let connection = self.state.withLock({ $0.connection }), connection.isActive else {
            let last = self.state.withLock { $0.lastError }
            throw RedisError(
                .unavailable,
                "no connection to Redis at \(self.configuration.address)" + (last.map { " (\($0.message))" } ?? "")
            )
        }
        self.commandCount.wrappingAdd(commands.count, ordering: .relaxed)
        self.roundTripCount.wrappingAdd(1, ordering: .relaxed)
        return try await connection.send(commands).get()
    }

    /// One command; a server error throws `server` with the server's message.
    @discardableResult
    package func execute(_ command: RedisCommand) async throws -> RESPValue {
        let answer = try await self.send([command])[0]
        if case .error(let message) = answer {
            throw RedisError(.server, "\(command.name): \(message)")
        }
        return answer
    }

    /// Runs `script` with `EVALSHA`; when the server does not have it (`NOSCRIPT`: restarted
    /// or flushed), with `EVAL`, which also caches it for the next call.
    package func run(_ script: RedisScript, keys: [RedisArgument], arguments: [RedisArgument]) async throws -> RESPValue
    {
        let answer = try await self.send([script.evalSHA(keys: keys, arguments: arguments)])[0]
        if case .error(let message) = answer {
            guard message.hasPrefix("NOSCRIPT") else { throw RedisError(.server, "EVALSHA: \(message)") }
            return try await self.execute(script.eval(keys: keys, arguments: arguments))
        }
        return answer
    }
}
