import Logging
import NIOCore
import NIOPosix
import TerminusFleet
import TerminusProtocol
import TerminusRedis
import TerminusSessions
import TerminusTestSupport
import Testing

/// A session that does nothing (the registry only reads its identity).
final class IdleControl: DeviceSessionControl {
    func goAway(_ code: TerminusCode, reconnectAfterMilliseconds: UInt32, message: String) {}
    func push(topic: String, payload: ByteBuffer, qos: QoS, timeout: TimeAmount) -> EventLoopFuture<PushOutcome> {
        MultiThreadedEventLoopGroup.singleton.any().makeSucceededFuture(.delivered)
    }
}

@Suite("Session registry in a real redis-server", .serialized)
struct SessionRegistryTests {
    static let logger: Logger = {
        var logger = Logger(label: "registry-test")
        logger.logLevel = .critical
        return logger
    }()

    static func handle(_ deviceID: String, connection: UInt64 = 1, client: String = "10.0.0.9:5000") -> SessionHandle {
        SessionHandle(
            deviceID: deviceID,
            connectionID: connection,
            clientAddress: client,
            connectedAt: 1_700_000_000_000,
            eventLoop: MultiThreadedEventLoopGroup.singleton.any(),
            control: IdleControl()
        )
    }

    /// A connected client and a registry for `pod`, and what it holds (for resyncs).
    final class Pod: Sendable {
        let client: RedisClient
        let registry: SessionRegistry
        let directory: FleetSessionDirectory
        private let running: Task<Void, any Error>

        init(_ server: RedisServer, pod: String, lease: Duration = .seconds(15), maxQueued: Int? = nil) async throws {
            var configuration = RedisClient.Configuration(host: "127.0.0.1", port: server.port)
            configuration.reconnect = RetryPolicy(
                maxAttempts: nil,
                initialBackoff: .milliseconds(20),
                maxBackoff: .milliseconds(100)
            )
            let client = RedisClient(
                configuration: configuration,
                eventLoop: MultiThreadedEventLoopGroup.singleton.any(),
                logger: SessionRegistryTests.logger
            )
            self.client = client
            self.running = Task { try await client.run() }
            let local = LocalSessionDirectory()
            var settings = SessionRegistry.Configuration(podID: pod, podAddress: "127.0.0.1:9\(pod.count)")
            settings.lease = lease
            if let maxQueued { settings.maxQueued = maxQueued }
            self.registry = SessionRegistry(
                configuration: settings,
                client: client,
                logger: SessionRegistryTests.logger,
                sessions: { local.all() },
                local: { local.lookup($0) }
            )
            self.directory = FleetSessionDirectory(local: local, registry: self.registry)
            #expect(await client.waitUntilConnected(timeout: .seconds(5)))
        }

        func stop() async {
            self.running.cancel()
            _ = try? await self.running.value
        }
    }

    /// Runs `body`, then stops `pods` whether it threw or not: a test ends only once its pods'
    /// registries have stopped.
    static func stopping(_ pods: Pod..., body: () async throws -> Void) async throws {
        do {
            try await body()
        } catch {
            for pod in pods { await pod.stop() }
            throw error
        }
        for pod in pods { await pod.stop() }
    }

    static func get(_ client: RedisClient, _ key: String) async throws -> String? {
        try await client.execute(RedisCommand("GET", RedisArgument(key))).string
    }

    @Test("a connect writes the device's record; a disconnect removes it only while it is still that connection's")
    func recordsAndEpochs() async throws {
        let server = try await RedisServer.start()
        defer { server.stop() }
        let a = try await Pod(server, pod: "pod-a")
        let b = try await Pod(server, pod: "pod-b")
        try await Self.stopping(a, b) {
            let first = Self.handle("printer-7", connection: 11)
            _ = a.directory.register(first)
            await a.registry.tick()
            let record = try #require(try await a.registry.lookup("printer-7"))
            #expect(record.podID == "pod-a" && record.clientAddress == "10.0.0.9:5000")
            #expect(record.connectedAtMs == 1_700_000_000_000 && record.epoch.hasSuffix(".11"))
            #expect(try await Self.get(a.client, "terminus:device:printer-7") == record.encoded)
            #expect(try await b.registry.lookup("printer-7") == record, "any pod finds it")

            // The device reconnects to B while A still holds its old session: B's record stands,
            // and A's late disconnect does not remove it.
            let second = Self.handle("printer-7", connection: 3)
            _ = b.directory.register(second)
            await b.registry.tick()
            a.directory.unregister(first)
            await a.registry.tick()
            #expect(try await a.registry.lookup("printer-7")?.podID == "pod-b")
            #expect(
                try await a.client.execute(RedisCommand("SISMEMBER", "terminus:pod:pod-a:devices", "printer-7")).int
                    == 0,
                "taken out of the old pod's set"
            )
            b.directory.unregister(second)
            await b.registry.tick()
            #expect(try await a.registry.lookup("printer-7") == nil)
            #expect(try await Self.get(a.client, "terminus:device:printer-7") == nil)
        }
    }

    @Test(
        "a reconnect wave of 10,000 devices a second costs one EVALSHA per connect and at most 1,000 round trips a second"
    )
    func coalescedWrites() async throws {
        let server = try await RedisServer.start()
        defer { server.stop() }
        let pod = try await Pod(server, pod: "pod-wave")
        try await Self.stopping(pod) {
            let loop = Task { try await pod.registry.run() }
            defer { loop.cancel() }
            // The first pass resyncs (loads the scripts); the wave starts after it.
            #expect(await eventually { pod.registry.resyncCount == 1 })
            let (commandsBefore, tripsBefore) = (pod.client.commandsSent, pod.client.roundTrips)
            let started = ContinuousClock.now
            // 10,000 connects spread over one second, 100 every 10 ms.
            for wave in 0..<100 {
                for index in 0..<100 {
                    _ = pod.directory.register(Self.handle("wave-\(wave)-\(index)", connection: UInt64(index)))
                }
                try await Task.sleep(until: started + .milliseconds(10 * (wave + 1)))
            }
            #expect(await eventually { pod.registry.changesWritten == 10_000 })
            let elapsed = ContinuousClock.now - started
            let commands = pod.client.commandsSent - commandsBefore
            let trips = pod.client.roundTrips - tripsBefore
            let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
            // The figure docs/cluster.md quotes.
            print(
                "registry wave: 10000 connects, \(commands) commands, \(trips) round trips in \(seconds) s, \(pod.registry.passes) passes"
            )
            #expect(commands >= 10_000 && commands <= 10_100, "commands: \(commands)")
            #expect(Double(trips) / seconds <= 1_000, "round trips: \(trips) in \(seconds) s")
            #expect(Double(trips) / 10_000 <= 0.1, "round trips per connect: \(Double(trips) / 10_000)")
            #expect(try await pod.client.execute(RedisCommand("SCARD", "terminus:pod:pod-wave:devices")).int == 10_000)
        }
    }

    @Test("a pod that dies: its devices stop resolving when its lease lapses, and a survivor removes its records")
    func deadPod() async throws {
        let server = try await RedisServer.start()
        defer { server.stop() }
        // Leases of 2 s: with 1 s, a loaded machine (the whole suite in parallel) once let the
        // lease lapse between the tick and the first lookup (CI, stop 29).
        let dying = try await Pod(server, pod: "pod-dying", lease: .seconds(2))
        let survivor = try await Pod(server, pod: "pod-survivor", lease: .seconds(2))
        try await Self.stopping(dying, survivor) {
            for index in 0..<50 {
                _ = dying.directory.register(Self.handle("speaker-\(index)", connection: UInt64(index)))
            }
            await dying.registry.tick()
            await survivor.registry.tick()
            #expect(try await survivor.registry.lookup("speaker-7")?.podID == "pod-dying")
            #expect(try await survivor.registry.livePods().sorted() == ["pod-dying", "pod-survivor"])
            // The dying pod stops (no heartbeat); within its lease its devices stop resolving.
            await dying.stop()
            #expect(await eventually(5) { (try? await survivor.registry.lookup("speaker-7")) == .some(nil) })
            // After two leases, the survivor's sweep removes the records and the pod.
            try await Task.sleep(for: .seconds(4))
            await survivor.registry.tick()
            #expect(try await Self.get(survivor.client, "terminus:device:speaker-7") == nil)
            #expect(
                try await survivor.client.execute(RedisCommand("EXISTS", "terminus:pod:pod-dying:devices")).int == 0
            )
            #expect(try await survivor.registry.livePods() == ["pod-survivor"])
            #expect(survivor.registry.podsSwept == 1)
        }
    }

    @Test("Redis restarted empty: the pod re-registers what it holds and forgets who left meanwhile")
    func resyncAfterRestart() async throws {
        let server = try await RedisServer.start()
        defer { server.stop() }
        let pod = try await Pod(server, pod: "pod-resync")
        try await Self.stopping(pod) {
            let kept = (0..<3).map { Self.handle("kept-\($0)", connection: UInt64($0)) }
            let leaving = Self.handle("leaving", connection: 9)
            for handle in kept + [leaving] { _ = pod.directory.register(handle) }
            await pod.registry.tick()
            #expect(pod.registry.resyncCount == 1, "the first connection is a resync too")
            server.kill()
            #expect(await eventually { !pod.client.isConnected })
            pod.directory.unregister(leaving)
            await pod.registry.tick()  // Redis is down: nothing is written, nothing hangs
            try await server.restart()
            #expect(await pod.client.waitUntilConnected(timeout: .seconds(5)))
            await pod.registry.tick()
            #expect(pod.registry.resyncCount == 2)
            for handle in kept { #expect(try await pod.registry.lookup(handle.deviceID)?.podID == "pod-resync") }
            #expect(try await pod.registry.lookup("leaving") == nil)
            #expect(try await pod.client.execute(RedisCommand("SCARD", "terminus:pod:pod-resync:devices")).int == 3)
        }
    }

    @Test("a queue past fleet's maxQueued is dropped, counted, and replaced by a resync that writes every session")
    func queueOverflow() async throws {
        let server = try await RedisServer.start()
        defer { server.stop() }
        let pod = try await Pod(server, pod: "pod-overflow", maxQueued: 5)
        try await Self.stopping(pod) {
            await pod.registry.tick()  // the first connection's resync
            let handles = (0..<8).map { Self.handle("burst-\($0)", connection: UInt64(100 + $0)) }
            for handle in handles { _ = pod.directory.register(handle) }
            // The sixth change found five queued: all six dropped; the last two queued again.
            #expect(pod.registry.droppedCount == 6)
            #expect(pod.registry.queued == 2)
            await pod.registry.tick()
            #expect(pod.registry.resyncCount == 2, "the overflow asked for a resync")
            #expect(pod.registry.queued == 0)
            for handle in handles {
                let podID = try await pod.registry.lookup(handle.deviceID)?.podID
                #expect(podID == "pod-overflow", "\(handle.deviceID)")
            }
        }
    }
}
