import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import NIOCore
import NIOPosix
import Synchronization
import TerminusAPI
import TerminusClient
import TerminusProtocol
import TerminusTestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Three `terminus` processes and a redis-server that requires a password, on loopback: the
/// fleet as pods run it, including `kill -9` of a pod and Redis going away mid-test.
@Suite("Fleet: three gateway processes and a redis-server", .serialized)
struct FleetProcessTests {
    static let apiToken = "process-api-token-0123456789"
    static let redisPassword = "redis-pass-0123456789"

    /// One gateway process.
    struct Pod {
        let name: String
        let process: ChildProcess
        let devicePort: Int
        let apiPort: Int
        let adminPort: Int
        let log: String

        var logText: String { (try? String(contentsOfFile: self.log, encoding: .utf8)) ?? "" }

        func metrics() -> String { DescriptorExhaustionTests.httpGet(self.adminPort, "/metrics") ?? "" }

        func kill() {
            self.process.signal(SIGKILL)
            self.process.waitUntilExit()
        }

        func stop() {
            if self.process.isRunning { self.process.terminate() }
            self.process.waitUntilExit()
        }

        func device(_ id: String) -> TerminusClientConfiguration {
            TerminusClientConfiguration(
                host: "127.0.0.1",
                port: self.devicePort,
                tls: nil,
                deviceID: id,
                credential: .secret(Array(FleetProcessTests.deviceSecret.utf8), ttlSeconds: 600)
            )
        }
    }

    static let deviceSecret = "process-device-secret-0123456789"

    /// Writes the shared files (device secrets, tokens, the Redis password) into `directory`.
    static func prepare(_ directory: String) throws {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let files = [
            "devices.yaml": "prefixes:\n  \"\": \"\(Self.deviceSecret)\"\n",
            "api-tokens": Self.apiToken + "\n",
            "fleet-tokens": "fleet-process-token-0123456789\n",
            "redis-password": Self.redisPassword + "\n",
            "wrong-password": "not-the-password-0123\n",
        ]
        for (name, text) in files {
            try text.write(toFile: directory + "/" + name, atomically: true, encoding: .utf8)
        }
    }

    static func start(
        _ name: String,
        directory: String,
        redisPort: Int,
        backendPort: Int,
        passwordFile: String = "redis-password",
        devicePort: Int? = nil
    ) async throws -> Pod {
        let devicePort = devicePort ?? LoopbackSocket.freePort()
        let (apiPort, adminPort, fleetPort) = (
            LoopbackSocket.freePort(), LoopbackSocket.freePort(), LoopbackSocket.freePort()
        )
        let config = """
            instance_id: \(name)
            event_loop_threads: 1
            device:
              listen: "127.0.0.1:\(devicePort)"
              transport: plaintext
            auth:
              secrets_file: devices.yaml
            api:
              listen: "127.0.0.1:\(apiPort)"
              tokens_file: api-tokens
            admin:
              listen: "127.0.0.1:\(adminPort)"
            drain:
              unready_delay: 0s
              grace: 2s
            services:
              - name: sink
                target: "127.0.0.1:\(backendPort)"
                topics: ["#"]
            fleet:
              pod_id: \(name)
              listen: "127.0.0.1:\(fleetPort)"
              token_file: fleet-tokens
              lease: 3s
              redis:
                address: "127.0.0.1:\(redisPort)"
                password_file: \(passwordFile)
            """
        let file = directory + "/\(name).yaml"
        try config.write(toFile: file, atomically: true, encoding: .utf8)
        let log = directory + "/\(name).log"
        _ = FileManager.default.createFile(atPath: log, contents: nil)
        let process = try ChildProcess(
            DescriptorExhaustionTests.binary,
            ["run", "--config", file],
            standardError: .file(log)
        )
        let pod = Pod(
            name: name,
            process: process,
            devicePort: devicePort,
            apiPort: apiPort,
            adminPort: adminPort,
            log: log
        )
        for _ in 0..<300 {
            if DescriptorExhaustionTests.httpGet(adminPort, "/readyz")?.contains("200 OK") == true { return pod }
            guard process.isRunning else {
                throw PodStartError(name: name, reason: "exited (\(process.terminationStatus))", log: pod.logText)
            }
            try await Task.sleep(for: .milliseconds(100))
        }
        pod.stop()
        throw PodStartError(name: name, reason: "not ready within 30 s", log: pod.logText)
    }

    /// Why a pod did not start, with the end of its log.
    struct PodStartError: Error, CustomStringConvertible {
        let name: String
        let reason: String
        let log: String
        var description: String { "\(self.name) \(self.reason); its log ends:\n\(self.log.suffix(2_000))" }
    }

    /// Runs `body` with a client of `pod`'s backend API.
    static func api<R: Sendable>(
        _ pod: Pod,
        _ body: @Sendable (Terminus_V1_Gateway.Client<HTTP2ClientTransport.Posix>, Metadata) async throws -> R
    ) async throws -> R {
        let transport = try HTTP2ClientTransport.Posix(
            target: .ipv4(address: "127.0.0.1", port: pod.apiPort),
            transportSecurity: .plaintext
        )
        var metadata: Metadata = [:]
        metadata.addString("Bearer \(Self.apiToken)", forKey: "authorization")
        let headers = metadata
        return try await withGRPCClient(transport: transport) { client in
            try await body(Terminus_V1_Gateway.Client(wrapping: client), headers)
        }
    }

    static func send(
        _ pod: Pod,
        _ device: String,
        _ text: String,
        ttl: UInt32 = 2000
    ) async throws
        -> Terminus_V1_SendResponse
    {
        try await Self.api(pod) { api, metadata in
            try await api.send(DownlinkAPITests.send(device, text, ttl: ttl), metadata: metadata)
        }
    }

    static func presence(_ pod: Pod, _ device: String) async throws -> Terminus_V1_DevicePresence? {
        try await Self.api(pod) { api, metadata in
            var request = Terminus_V1_PresenceRequest()
            request.deviceIds = [device]
            return try await api.presence(request, metadata: metadata).devices.first
        }
    }

    /// Publishes `count` QoS 1 messages; the statuses of their ACKs.
    static func publish(_ connection: TerminusConnection, _ prefix: String, count: Int) async throws -> [TerminusCode] {
        var statuses: [TerminusCode] = []
        for index in 0..<count {
            let ack = try await connection.publish(
                topic: "pay/\(connection.welcome.deviceID)",
                payload: ByteBuffer(string: "\(prefix)-\(index)")
            )
            statuses.append(ack.status)
        }
        return statuses
    }

    @Test(
        "Send through C reaches the device on A, Presence through B; Redis away and back: uplink unharmed, registry rebuilt; takeover by B; kill -9 of B: OFFLINE within the bound, a message stored meanwhile, the device back through A gets it first and once"
    )
    func fleetOfProcesses() async throws {
        #expect(FileManager.default.isExecutableFile(atPath: DescriptorExhaustionTests.binary))
        let directory = NSTemporaryDirectory() + "terminus-fleet-\(UUID().uuidString)"
        try Self.prepare(directory)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let redis = try await RedisServer.start(["--requirepass", Self.redisPassword])
        defer { redis.stop() }
        let backend = try await TestBackend.start()
        let start = { @Sendable (name: String) async throws -> Pod in
            try await Self.start(name, directory: directory, redisPort: redis.port, backendPort: backend.port)
        }
        let a = try await start("pod-a")
        let b = try await start("pod-b")
        let c = try await start("pod-c")
        defer { for pod in [a, b, c] { pod.stop() } }
        for pod in [a, b, c] {
            #expect(await eventually { pod.metrics().contains("terminus_redis_connected 1") }, "\(pod.name)")
        }

        // A pod with the wrong Redis password keeps serving its own devices and says why.
        let wrong = try await Self.start(
            "pod-wrong",
            directory: directory,
            redisPort: redis.port,
            backendPort: backend.port,
            passwordFile: "wrong-password"
        )
        #expect(await eventually { wrong.logText.contains("WRONGPASS") }, "\(wrong.logText)")
        #expect(wrong.metrics().contains("terminus_redis_connected 0"))
        wrong.stop()

        let group = MultiThreadedEventLoopGroup.singleton
        let first = FleetDownlinkTests.Acknowledging(
            try await TerminusConnection.connect(a.device("speaker-p1"), group: group)
        )
        #expect(await eventually { (try? await Self.presence(b, "speaker-p1"))?.gatewayInstance == "pod-a" })
        let sent = try await Self.send(c, "speaker-p1", "paid 8.00")
        #expect(sent.outcome == .delivered && sent.gatewayInstance == "pod-a")
        #expect(await eventually { first.received == ["paid 8.00"] })
        #expect(try await Self.publish(first.connection, "before", count: 5).allSatisfy { $0 == .ok })

        // Redis goes away: uplink and this pod's downlink go on, other pods' answer UNAVAILABLE.
        redis.kill()
        #expect(await eventually { a.metrics().contains("terminus_redis_connected 0") })
        #expect(try await Self.publish(first.connection, "during", count: 5).allSatisfy { $0 == .ok })
        #expect(try await Self.send(a, "speaker-p1", "local").outcome == .delivered)
        let asked = ContinuousClock.now
        await #expect {
            _ = try await Self.send(c, "speaker-p1", "x")
        } throws: { error in
            (error as? RPCError)?.code == .unavailable
        }
        #expect(ContinuousClock.now - asked < .seconds(2), "no hang")
        // Back, empty (no persistence): pod A registers what it holds again.
        try await redis.restart()
        #expect(await eventually(10) { (try? await Self.presence(c, "speaker-p1"))?.gatewayInstance == "pod-a" })
        #expect(try await Self.publish(first.connection, "after", count: 5).allSatisfy { $0 == .ok })
        let payloads = Set(
            backend.receiver.received.withLock { $0 }.map { String(decoding: $0.payload, as: UTF8.self) }
        )
        for prefix in ["before", "during", "after"] {
            for index in 0..<5 { #expect(payloads.contains("\(prefix)-\(index)"), "acknowledged \(prefix)-\(index)") }
        }

        // Takeover: the device reconnects through B; A's session ends with GOAWAY(REPLACED).
        let second = FleetDownlinkTests.Acknowledging(
            try await TerminusConnection.connect(b.device("speaker-p1"), group: group)
        )
        #expect(await first.connection.closeReason()?.code == .replaced)
        #expect(await eventually { (try? await Self.presence(c, "speaker-p1"))?.gatewayInstance == "pod-b" })
        #expect(try await Self.send(c, "speaker-p1", "via b").gatewayInstance == "pod-b")

        // kill -9 of B: a Send through C answers OFFLINE within the TTL plus the call margin.
        b.kill()
        let killed = ContinuousClock.now
        let offline = try await Self.send(c, "speaker-p1", "lost", ttl: 1000)
        #expect(offline.outcome == .offline)
        #expect(ContinuousClock.now - killed < .seconds(4), "TTL 1 s + the 2 s margin")
        #expect(
            !c.metrics().contains("terminus_fleet_forwards_total{method=\"send\",result=\"unreachable\"} 0"),
            "the dead pod was tried, not skipped"
        )
        // Stored while the device is away, through the pod that cannot reach the dead one.
        let stored = try await Self.api(c) { api, metadata in
            var request = DownlinkAPITests.send("speaker-p1", "while away", ttl: 1000)
            request.storeTtlMs = 600_000
            return try await api.send(request, metadata: metadata)
        }
        #expect(stored.outcome == .stored)
        // Within the lease, Presence stops naming the dead pod; it counts the stored message.
        #expect(await eventually(6) { (try? await Self.presence(c, "speaker-p1"))?.online == false })
        #expect(try await Self.presence(a, "speaker-p1")?.storedMessages == 1)
        // The device reconnects through A and is reachable again.
        let third = FleetDownlinkTests.Acknowledging(
            try await TerminusConnection.connect(a.device("speaker-p1"), group: group)
        )
        // What was stored arrives first (a Send without store_ttl_ms is not ordered against it).
        #expect(await eventually { third.received == ["while away"] }, "\(third.received)")
        #expect(await eventually { (try? await Self.send(c, "speaker-p1", "back", ttl: 1000))?.outcome == .delivered })
        #expect(third.received.contains("back"))
        #expect(third.received.filter { $0 == "while away" }.count == 1)
        #expect(await eventually { (try? await Self.presence(c, "speaker-p1"))?.storedMessages == 0 })
        #expect(second.received == ["via b"])
        await third.close()
        await second.close()
        await first.close()
        await backend.stop()
    }
}
