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
import TerminusTestSupport
import Testing

/// Offline store-and-forward: `Send` with `store_ttl_ms` keeps what a device could not take, and
/// the device gets it, in order, when it connects to any pod.
@Suite("Fleet: offline store-and-forward", .serialized, .gatewayScope)
struct FleetStoreTests {
    static func stored(
        _ device: String,
        _ text: String,
        ttl: UInt32 = 1000,
        store: UInt32 = 60_000
    )
        -> Terminus_V1_SendRequest
    {
        var request = DownlinkAPITests.send(device, text, ttl: ttl)
        request.storeTtlMs = store
        return request
    }

    static func send(
        _ gateway: TestGateway,
        _ requests: [Terminus_V1_SendRequest]
    ) async throws
        -> [Terminus_V1_SendResponse]
    {
        try await DownlinkAPITests.withAPI(gateway) { api, metadata in
            var answers: [Terminus_V1_SendResponse] = []
            for request in requests { answers.append(try await api.send(request, metadata: metadata)) }
            return answers
        }
    }

    static func presence(_ gateway: TestGateway, _ device: String) async throws -> Terminus_V1_DevicePresence? {
        try await DownlinkAPITests.withAPI(gateway) { api, metadata in
            var request = Terminus_V1_PresenceRequest()
            request.deviceIds = [device]
            return try await api.presence(request, metadata: metadata).devices.first
        }
    }

    @Test(
        "sent while the device was away: STORED, counted by Presence, delivered once and in order when it connects to another pod, before a message sent meanwhile, and gone after the ACKs"
    )
    func storeAndForward() async throws {
        let redis = try await RedisServer.start()
        defer { redis.stop() }
        let a = try await FleetRegistryTests.gateway("pod-a", redis: redis)
        let b = try await FleetRegistryTests.gateway("pod-b", redis: redis)
        let answers = try await Self.send(b, ["order 1", "order 2", "order 3"].map { Self.stored("printer-s", $0) })
        #expect(answers.map(\.outcome) == [.stored, .stored, .stored])
        let away = try await Self.presence(a, "printer-s")
        #expect(away?.online == false && away?.storedMessages == 3)

        let device = FleetDownlinkTests.Acknowledging(try await a.connect("printer-s"))
        // Sent at once after the connect, while what is stored may not have been read yet.
        let meanwhile = try await Self.send(b, [Self.stored("printer-s", "order 4")])
        #expect([.stored, .delivered].contains(meanwhile.first?.outcome))
        #expect(await eventually { device.received.count == 4 }, "\(device.received)")
        #expect(device.received == ["order 1", "order 2", "order 3", "order 4"])
        #expect(await eventually { (try? await Self.presence(b, "printer-s"))?.storedMessages == 0 })

        // Online and nothing stored: straight to the device.
        #expect(try await Self.send(b, [Self.stored("printer-s", "order 5")]).first?.outcome == .delivered)
        // A reconnect gets nothing again.
        await device.close()
        let again = FleetDownlinkTests.Acknowledging(try await b.connect("printer-s"))
        try await Task.sleep(for: .milliseconds(500))
        #expect(again.received.isEmpty)
        let text = try await a.gateway.metrics.scrape(on: MultiThreadedEventLoopGroup.singleton.any()).get()
        let fromStore = meanwhile.first?.outcome == .stored ? 4 : 3
        #expect(text.contains("terminus_store_messages_total{outcome=\"delivered\"} \(fromStore)"), "\(text)")
        await again.close()
        await a.stop()
        await b.stop()
    }

    @Test(
        "a device that does not acknowledge in time: STORED, delivered at its next connect; an expired message is never delivered"
    )
    func timeoutAndExpiry() async throws {
        let redis = try await RedisServer.start()
        defer { redis.stop() }
        let a = try await FleetRegistryTests.gateway("pod-a", redis: redis)
        let silent = try await RawClient.connect(port: a.port, tls: true)
        try await silent.handshake("speaker-slow")
        #expect(await FleetDownlinkTests.registered(["speaker-slow"], on: a))
        let answers = try await Self.send(
            a,
            [
                Self.stored("speaker-slow", "kept", ttl: 300),
                Self.stored("speaker-slow", "short-lived", ttl: 300, store: 400),
            ]
        )
        #expect(answers.map(\.outcome) == [.stored, .stored])
        await silent.close()
        try await Task.sleep(for: .milliseconds(600))
        #expect(try await Self.presence(a, "speaker-slow")?.storedMessages == 1, "the expired one is not counted")
        let device = FleetDownlinkTests.Acknowledging(try await a.connect("speaker-slow"))
        #expect(await eventually { device.received == ["kept"] })
        try await Task.sleep(for: .milliseconds(300))
        #expect(device.received == ["kept"])
        await device.close()
        await a.stop()
    }

    @Test(
        "caps: past fleet.store.max_messages a Send is REJECTED(RETRY_LATER); QoS 0 cannot be stored; without a fleet FAILED_PRECONDITION; Redis down UNAVAILABLE"
    )
    func limitsAndErrors() async throws {
        let redis = try await RedisServer.start()
        defer { redis.stop() }
        var caps = DeviceMessageStore.Configuration()
        caps.maxMessages = 2
        let a = try await FleetRegistryTests.gateway("pod-a", redis: redis, store: caps)
        var qos0 = Self.stored("box-1", "x")
        qos0.qos = 0
        let answers = try await Self.send(
            a,
            [Self.stored("box-1", "1"), Self.stored("box-1", "2"), Self.stored("box-1", "3"), qos0]
        )
        #expect(answers.map(\.outcome) == [.stored, .stored, .rejected, .rejected])
        #expect(answers[2].deviceStatus == UInt32(TerminusCode.retryLater.rawValue))
        #expect(answers[3].deviceStatus == UInt32(TerminusCode.malformedFrame.rawValue))

        redis.kill()
        #expect(await eventually { !(a.gateway.registry?.client.isConnected ?? true) })
        await #expect {
            _ = try await Self.send(a, [Self.stored("box-2", "x")])
        } throws: { error in
            (error as? RPCError)?.code == .unavailable
        }
        await a.stop()

        let alone = try await DownlinkAPITests.gateway()
        await #expect {
            _ = try await Self.send(alone, [Self.stored("box-3", "x")])
        } throws: { error in
            (error as? RPCError)?.code == .failedPrecondition
        }
        await alone.stop()
    }
}
