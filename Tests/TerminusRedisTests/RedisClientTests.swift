import Foundation
import Logging
import NIOCore
import NIOPosix
import NIOSSL
import TerminusProtocol
import TerminusRedis
import TerminusTestSupport
import Testing

/// The client against Debian's `redis-server`, started by each test on a free loopback port.
@Suite("Redis client against a real redis-server", .serialized)
struct RedisClientTests {
    static let logger: Logger = {
        var logger = Logger(label: "redis-test")
        logger.logLevel = .critical
        return logger
    }()

    /// A client configuration for `server`: quick reconnects, then `configure`.
    static func configuration(
        _ server: RedisServer,
        _ configure: (inout RedisClient.Configuration) -> Void = { _ in }
    ) -> RedisClient.Configuration {
        var configuration = RedisClient.Configuration(host: "127.0.0.1", port: server.port)
        configuration.reconnect = RetryPolicy(
            maxAttempts: nil,
            initialBackoff: .milliseconds(20),
            maxBackoff: .milliseconds(200)
        )
        configure(&configuration)
        return configuration
    }

    /// A client running with `configuration` until `body` returns.
    static func withClient<Result: Sendable>(
        _ configuration: RedisClient.Configuration,
        waitForConnection: Bool = true,
        _ body: (RedisClient) async throws -> Result
    ) async throws -> Result {
        let client = RedisClient(
            configuration: configuration,
            eventLoop: MultiThreadedEventLoopGroup.singleton.any(),
            logger: Self.logger
        )
        let running = Task { try await client.run() }
        defer { running.cancel() }
        if waitForConnection {
            #expect(await client.waitUntilConnected(timeout: .seconds(5)), "connected to \(configuration.address)")
        }
        let result = try await body(client)
        running.cancel()
        _ = try? await running.value
        return result
    }

    @Test("commands and their answers over RESP3; a server error is a coded error")
    func commands() async throws {
        let server = try await RedisServer.start()
        defer { server.stop() }
        try await Self.withClient(Self.configuration(server)) { (client: RedisClient) async throws in
            #expect(try await client.execute(RedisCommand("SET", "k", "v")) == .simpleString(ByteBuffer(string: "OK")))
            #expect(try await client.execute(RedisCommand("GET", "k")).string == "v")
            #expect(try await client.execute(RedisCommand("GET", "missing")) == .null)
            #expect(try await client.execute(RedisCommand("INCRBY", "n", 5)).int == 5)
            // RESP3: HGETALL answers a map.
            try await client.execute(RedisCommand("HSET", "h", "a", "1", "b", "2"))
            guard case .map(let map) = try await client.execute(RedisCommand("HGETALL", "h")) else {
                Issue.record("HGETALL did not answer a map over RESP3")
                return
            }
            #expect(map["a"]?.string == "1" && map["b"]?.string == "2")
            await #expect {
                try await client.execute(RedisCommand("LPUSH", "k", "x"))
            } throws: { error in
                (error as? RedisError)?.code == .server && "\(error)".contains("WRONGTYPE")
            }
        }
    }

    @Test("RESP2 works too (protocol_version 2)")
    func resp2() async throws {
        let server = try await RedisServer.start()
        defer { server.stop() }
        try await Self.withClient(Self.configuration(server) { $0.protocolVersion = 2 }) {
            (client: RedisClient) async throws in
            try await client.execute(RedisCommand("HSET", "h", "a", "1"))
            let all = try await client.execute(RedisCommand("HGETALL", "h"))
            #expect(all.array?.compactMap(\.string) == ["a", "1"], "RESP2 answers a flat array")
        }
    }

    @Test("pipelining: 1,000 commands in one send are one round trip, answered in order")
    func pipelining() async throws {
        let server = try await RedisServer.start()
        defer { server.stop() }
        try await Self.withClient(Self.configuration(server)) { (client: RedisClient) async throws in
            let before = client.roundTrips
            let commands = (0..<1_000).map { RedisCommand("SET", RedisArgument("key:\($0)"), RedisArgument($0)) }
            let answers = try await client.send(commands)
            #expect(answers.count == 1_000 && answers.allSatisfy { $0 == .simpleString(ByteBuffer(string: "OK")) })
            let reads = try await client.send((0..<1_000).map { RedisCommand("GET", RedisArgument("key:\($0)")) })
            #expect(reads.map(\.int) == (0..<1_000).map { Int64($0) })
            #expect(client.roundTrips - before == 2)
            #expect(client.commandsSent >= 2_000)
        }
    }

    @Test("a script runs with EVALSHA, and with EVAL once when the server does not have it")
    func scripts() async throws {
        let server = try await RedisServer.start()
        defer { server.stop() }
        try await Self.withClient(Self.configuration(server)) { (client: RedisClient) async throws in
            let script = RedisScript("return redis.call('INCRBY', KEYS[1], ARGV[1])")
            let exists = { try await client.execute(RedisCommand("SCRIPT", "EXISTS", RedisArgument(script.sha1))) }
            #expect(try await exists().array == [.integer(0)])
            #expect(try await client.run(script, keys: ["counter"], arguments: [3]).int == 3)
            #expect(try await exists().array == [.integer(1)], "EVAL cached it")
            #expect(try await client.run(script, keys: ["counter"], arguments: [4]).int == 7)
            try await client.execute(RedisCommand("SCRIPT", "FLUSH"))
            #expect(try await client.run(script, keys: ["counter"], arguments: [1]).int == 8, "NOSCRIPT: EVAL again")
        }
    }

    @Test("AUTH: a password and an ACL user; a wrong or missing password is an authentication error")
    func authentication() async throws {
        let server = try await RedisServer.start([
            "--requirepass", "default-pass-0123456789", "--user", "gateway", "on", ">gateway-pass-0123456789", "~*",
            "+@all",
        ])
        defer { server.stop() }
        try await Self.withClient(Self.configuration(server) { $0.password = "default-pass-0123456789" }) {
            (client: RedisClient) async throws in
            #expect(try await client.execute(RedisCommand("PING")) == .simpleString(ByteBuffer(string: "PONG")))
        }
        for protocolVersion in [2, 3] {
            try await Self.withClient(
                Self.configuration(server) {
                    $0.username = "gateway"
                    $0.password = "gateway-pass-0123456789"
                    $0.protocolVersion = protocolVersion
                }
            ) { (client: RedisClient) async throws in
                #expect(try await client.execute(RedisCommand("ACL", "WHOAMI")).string == "gateway")
            }
        }
        var wrong = RedisClient.Configuration(host: "127.0.0.1", port: server.port)
        wrong.password = "not-the-password"
        await #expect {
            _ = try await RedisConnection.connect(wrong, on: MultiThreadedEventLoopGroup.singleton.any())
        } throws: { error in
            (error as? RedisError)?.code == .authentication && "\(error)".contains("WRONGPASS")
                && !"\(error)".contains("not-the-password")
        }
        let none = RedisClient.Configuration(host: "127.0.0.1", port: server.port)
        await #expect {
            _ = try await RedisConnection.connect(none, on: MultiThreadedEventLoopGroup.singleton.any())
        } throws: { error in
            (error as? RedisError)?.code == .authentication && "\(error)".contains("requires a password")
        }
        // The client keeps retrying (a password may be rotated) and says why it is unavailable.
        try await Self.withClient(
            Self.configuration(server) { $0.password = "not-the-password" },
            waitForConnection: false
        ) {
            (client: RedisClient) async throws in
            // Once its first attempt has failed (a loaded machine takes a while).
            let refused = await eventually {
                do {
                    try await client.execute(RedisCommand("PING"))
                    return false
                } catch {
                    return (error as? RedisError)?.code == .unavailable && "\(error)".contains("WRONGPASS")
                }
            }
            #expect(refused, "unavailable, with the server's reason")
            #expect(!client.isConnected)
        }
    }

    @Test("no answer within the command timeout: timeout, the connection is remade, the next command works")
    func timeout() async throws {
        let server = try await RedisServer.start()
        defer { server.stop() }
        try await Self.withClient(Self.configuration(server) { $0.commandTimeout = .milliseconds(300) }) {
            (client: RedisClient) async throws in
            let started = ContinuousClock.now
            await #expect {
                try await client.execute(RedisCommand("BLPOP", "nothing-comes", 5))
            } throws: { error in
                (error as? RedisError)?.code == .timeout
            }
            #expect(ContinuousClock.now - started < .seconds(2))
            #expect(await eventually { (try? await client.execute(RedisCommand("PING"))) != nil })
            #expect(client.connects == 2)
        }
    }

    @Test("Redis down: commands fail at once with unavailable; the client reconnects when it is back")
    func reconnect() async throws {
        let server = try await RedisServer.start()
        defer { server.stop() }
        try await Self.withClient(Self.configuration(server)) { (client: RedisClient) async throws in
            try await client.execute(RedisCommand("SET", "before", "1"))
            server.kill()
            #expect(await eventually { !client.isConnected })
            let started = ContinuousClock.now
            await #expect {
                try await client.execute(RedisCommand("GET", "before"))
            } throws: { error in
                (error as? RedisError)?.code == .unavailable
            }
            #expect(ContinuousClock.now - started < .milliseconds(100), "no hang while Redis is down")
            try await server.restart()
            #expect(await client.waitUntilConnected(timeout: .seconds(5)))
            #expect(try await client.execute(RedisCommand("PING")) == .simpleString(ByteBuffer(string: "PONG")))
            #expect(client.connects == 2)
        }
    }

    @Test("at most maxPending commands wait: more fail with tooManyPending rather than queue")
    func boundedPending() async throws {
        let server = try await RedisServer.start()
        defer { server.stop() }
        try await Self.withClient(Self.configuration(server) { $0.maxPending = 10 }) {
            (client: RedisClient) async throws in
            await #expect {
                _ = try await client.send((0..<11).map { _ in RedisCommand("PING") })
            } throws: { error in
                (error as? RedisError)?.code == .tooManyPending
            }
            #expect(try await client.send((0..<10).map { _ in RedisCommand("PING") }).count == 10)
        }
    }

    @Test("TLS to the server (redis.tls): verified against its CA; a client that trusts another CA cannot connect")
    func tls() async throws {
        let directory = FileManager.default.temporaryDirectory.path + "/terminus-redis-tls-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        for name in ["server", "other"] {
            let openssl = try ChildProcess(
                "/usr/bin/openssl",
                [
                    "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                    "-keyout", "\(directory)/\(name)-key.pem", "-out", "\(directory)/\(name).pem",
                ]
            )
            openssl.waitUntilExit()
            #expect(openssl.terminationStatus == 0, "openssl req for \(name)")
        }
        let port = LoopbackSocket.freePort()
        let server = try await RedisServer.start(
            port: port,
            [
                "--port", "0", "--tls-port", "\(port)", "--tls-cert-file", "\(directory)/server.pem",
                "--tls-key-file", "\(directory)/server-key.pem", "--tls-ca-cert-file", "\(directory)/server.pem",
                "--tls-auth-clients", "no",
            ]
        )
        defer { server.stop() }
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.trustRoots = .file("\(directory)/server.pem")
        try await Self.withClient(
            Self.configuration(server) {
                $0.tls = tls
                $0.serverName = "localhost"
            }
        ) { (client: RedisClient) async throws in
            #expect(try await client.execute(RedisCommand("PING")) == .simpleString(ByteBuffer(string: "PONG")))
        }
        var untrusting = RedisClient.Configuration(host: "127.0.0.1", port: port)
        var other = TLSConfiguration.makeClientConfiguration()
        other.trustRoots = .file("\(directory)/other.pem")
        untrusting.tls = other
        untrusting.serverName = "localhost"
        await #expect(throws: RedisError.self) {
            _ = try await RedisConnection.connect(untrusting, on: MultiThreadedEventLoopGroup.singleton.any())
        }
    }

}
