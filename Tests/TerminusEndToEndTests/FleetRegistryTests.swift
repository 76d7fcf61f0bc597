import Foundation
import GRPCCore
import NIOCore
import NIOPosix
import TerminusAPI
import TerminusClient
import TerminusFleet
import TerminusMetrics
import TerminusProtocol
import TerminusRedis
import TerminusServer
import TerminusSessions
import TerminusTestSupport
import Testing

/// Gateways with `fleet` configured against a real redis-server: each session is recorded where
/// any pod finds it, and a stopping pod takes its liveness with it.
@Suite("Fleet: the session registry of running gateways", .serialized, .gatewayScope)
struct FleetRegistryTests {
    static let fleetToken = "fleet-token-0123456789abcdef"

    static func gateway(
        _ pod: String,
        redis: RedisServer,
        fleetTokens: [String] = [Self.fleetToken],
        store: DeviceMessageStore.Configuration = .init(),
        tls: PodForwarder.TLSFiles? = nil
    ) async throws -> TestGateway {
        try await TestGateway.start {
            $0.apiListen = .init(host: "127.0.0.1", port: 0)
            $0.apiTokens = [DownlinkAPITests.token]
            var client = RedisClient.Configuration(host: "127.0.0.1", port: redis.port)
            client.clientName = "terminus-\(pod)"
            var registry = SessionRegistry.Configuration(podID: pod, podAddress: "")
            registry.lease = .seconds(3)
            $0.fleet = .init(
                redis: client,
                registry: registry,
                listen: .init(host: "127.0.0.1", port: 0),
                tokens: fleetTokens
            )
            $0.fleet?.store = store
            $0.fleet?.tls = tls
        }
    }

    @Test(
        "a device's pod is recorded at connect, found by every pod, moved when it reconnects elsewhere, gone after it leaves"
    )
    func registryFollowsDevices() async throws {
        let redis = try await RedisServer.start()
        defer { redis.stop() }
        let a = try await Self.gateway("pod-a", redis: redis)
        let b = try await Self.gateway("pod-b", redis: redis)
        let registryA = try #require(a.gateway.registry)
        let registryB = try #require(b.gateway.registry)

        let device = try await a.connect("speaker-fleet-1")
        #expect(await eventually { (try? await registryB.lookup("speaker-fleet-1"))??.podID == "pod-a" })
        let record = try #require(try await registryA.lookup("speaker-fleet-1"))
        #expect(record.clientAddress.hasPrefix("127.0.0.1:"))
        #expect(await eventually { (try? await registryA.livePods().sorted()) == ["pod-a", "pod-b"] })

        await device.close()
        #expect(await eventually { (try? await registryB.lookup("speaker-fleet-1")) == .some(nil) })
        let again = try await b.connect("speaker-fleet-1")
        #expect(await eventually { (try? await registryA.lookup("speaker-fleet-1"))??.podID == "pod-b" })

        let text = try await a.gateway.metrics.scrape(on: MultiThreadedEventLoopGroup.singleton.any()).get()
        #expect(text.contains("terminus_redis_connected 1"))
        #expect(text.contains("terminus_registry_changes_total{outcome=\"written\"} 2"), "a connect and a disconnect")

        // A pod that stops removes its liveness: others stop routing to it at once.
        await a.stop()
        #expect(try await registryB.livePods() == ["pod-b"])
        await again.close()
        await b.stop()
    }

    @Test("takeover across pods: a device that connects through pod B ends its session on pod A with GOAWAY(REPLACED)")
    func takeoverAcrossPods() async throws {
        let redis = try await RedisServer.start()
        defer { redis.stop() }
        let a = try await Self.gateway("pod-a", redis: redis)
        let b = try await Self.gateway("pod-b", redis: redis)
        let first = try await RawClient.connect(port: a.port, tls: true)
        _ = try await first.handshake("printer-takeover")
        #expect(
            await eventually { (try? await b.gateway.registry?.lookup("printer-takeover"))??.podID == "pod-a" }
        )
        let second = try await RawClient.connect(port: b.port, tls: true)
        _ = try await second.handshake("printer-takeover")
        let goAway = await first.goAwayOnClose(within: 5)
        #expect(goAway?.code == .replaced)
        #expect(!second.isClosed)
        #expect(try await a.gateway.registry?.lookup("printer-takeover")?.podID == "pod-b")
        #expect(a.gateway.registry?.takeoverCount == 1)
        await second.close()
        await a.stop()
        await b.stop()
    }

    @Test(
        "takeover race: the same devices connect through two pods at once; exactly one session of each survives, where the registry says"
    )
    func takeoverRace() async throws {
        let redis = try await RedisServer.start()
        defer { redis.stop() }
        let a = try await Self.gateway("pod-a", redis: redis)
        let b = try await Self.gateway("pod-b", redis: redis)
        // Both pods past their first pass with Redis (a race in the first milliseconds of a
        // pod's life is not what this test covers: see docs/cluster.md).
        #expect(
            await eventually {
                (a.gateway.registry?.resyncCount ?? 0) >= 1 && (b.gateway.registry?.resyncCount ?? 0) >= 1
            }
        )
        let devices = (0..<12).map { "racer-\($0)" }
        var pairs: [(RawClient, RawClient)] = []
        for device in devices {
            async let onA = RawClient.connect(port: a.port, tls: true)
            async let onB = RawClient.connect(port: b.port, tls: true)
            let (clientA, clientB) = try await (onA, onB)
            async let helloA: Void = clientA.send(TestGateway.hello(device))
            async let helloB: Void = clientB.send(TestGateway.hello(device))
            _ = try await (helloA, helloB)
            pairs.append((clientA, clientB))
        }
        let registry = try #require(a.gateway.registry)
        // Settled: each device open on exactly one pod, and the registry names that pod.
        let settled = await eventually(10) { pairs.allSatisfy { $0.0.isClosed != $0.1.isClosed } }
        #expect(
            settled,
            "exactly one session of each device survives: \(pairs.map { "\($0.0.isClosed)/\($0.1.isClosed) \($0.0.frames.last.map { "\($0)" } ?? "-") \($0.1.frames.last.map { "\($0)" } ?? "-")" })"
        )
        for (device, pair) in zip(devices, pairs) {
            let survivor = pair.0.isClosed ? "pod-b" : "pod-a"
            #expect(await eventually { (try? await registry.lookup(device))??.podID == survivor }, "\(device)")
            #expect(a.gateway.directory.lookup(device) == nil || b.gateway.directory.lookup(device) == nil)
        }
        for (clientA, clientB) in pairs {
            await clientA.close()
            await clientB.close()
        }
        await a.stop()
        await b.stop()
    }

    @Test(
        "Presence is fleet-wide: any pod answers for a device on another, naming that pod; Redis down: UNAVAILABLE at once"
    )
    func fleetPresence() async throws {
        let redis = try await RedisServer.start()
        defer { redis.stop() }
        let a = try await Self.gateway("pod-a", redis: redis)
        let b = try await Self.gateway("pod-b", redis: redis)
        let onA = try await a.connect("presence-on-a")
        let onB = try await b.connect("presence-on-b")
        let registry = try #require(b.gateway.registry)
        #expect(await eventually { (try? await registry.lookup("presence-on-a"))??.podID == "pod-a" })
        let ask = { @Sendable (ids: [String]) async throws -> Terminus_V1_PresenceResponse in
            try await DownlinkAPITests.withAPI(b) { api, metadata in
                var request = Terminus_V1_PresenceRequest()
                request.deviceIds = ids
                return try await api.presence(request, metadata: metadata)
            }
        }
        let answer = try await ask(["presence-on-a", "presence-on-b", "presence-nowhere"])
        let byID = Dictionary(uniqueKeysWithValues: answer.devices.map { ($0.deviceID, $0) })
        #expect(byID["presence-on-a"]?.online == true && byID["presence-on-a"]?.gatewayInstance == "pod-a")
        #expect(byID["presence-on-a"]?.clientAddress.hasPrefix("127.0.0.1:") == true)
        #expect(byID["presence-on-b"]?.online == true && byID["presence-on-b"]?.gatewayInstance == "pod-b")
        #expect(byID["presence-nowhere"]?.online == false)

        redis.kill()
        #expect(await eventually { !(b.gateway.registry?.client.isConnected ?? true) })
        let started = ContinuousClock.now
        await #expect {
            _ = try await ask(["presence-on-a"])
        } throws: { error in
            (error as? RPCError)?.code == .unavailable
        }
        #expect(ContinuousClock.now - started < .seconds(2), "no hang")
        #expect(try await ask(["presence-on-b"]).devices.first?.online == true, "this pod's own still answer")
        await onA.close()
        await onB.close()
        await a.stop()
        await b.stop()
    }
}
