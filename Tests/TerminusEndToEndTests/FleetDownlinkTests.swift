import Foundation
import GRPCCore
import Logging
import NIOCore
import NIOPosix
import Synchronization
import TerminusAPI
import TerminusClient
import TerminusFleet
import TerminusMetrics
import TerminusProtocol
import TerminusRedis
import TerminusServer
import TerminusTestSupport
import Testing

/// Downlink across pods: `Send`, `SendMany` and `Kick` taken by any pod reach the pod holding the
/// device over the fleet's internal listener, with the replies a call to that pod would get.
@Suite("Fleet: downlink across pods", .serialized, .gatewayScope)
struct FleetDownlinkTests {
    /// A device that acknowledges every push and keeps their payloads.
    final class Acknowledging: Sendable {
        final class Payloads: Sendable {
            let list = Mutex<[String]>([])
        }

        let connection: TerminusConnection
        private let task: Task<Void, Never>
        private let payloads = Payloads()

        init(_ connection: TerminusConnection) {
            self.connection = connection
            let payloads = self.payloads
            self.task = Task {
                for await push in connection.pushes {
                    payloads.list.withLock {
                        $0.append(String(decoding: push.payload.readableBytesView, as: UTF8.self))
                    }
                    connection.acknowledge(push)
                }
            }
        }

        var received: [String] { self.payloads.list.withLock { $0 } }

        func close() async {
            await self.connection.close()
            self.task.cancel()
        }
    }

    static func many(_ ids: [String], _ payload: String, ttl: UInt32 = 2000) -> Terminus_V1_SendManyRequest {
        var request = Terminus_V1_SendManyRequest()
        request.deviceIds = ids
        request.topic = "notice/all"
        request.payload = Data(payload.utf8)
        request.qos = 1
        request.ttlMs = ttl
        return request
    }

    static func registered(_ ids: [String], on gateway: TestGateway) async -> Bool {
        await eventually {
            guard let registry = gateway.gateway.registry else { return false }
            for id in ids {
                guard case .some(.some) = try? await registry.lookup(id) else { return false }
            }
            return true
        }
    }

    @Test(
        "Send, SendMany and Kick through any pod reach the pod holding the device, answered as that pod would answer"
    )
    func acrossPods() async throws {
        let redis = try await RedisServer.start()
        defer { redis.stop() }
        let a = try await FleetRegistryTests.gateway("pod-a", redis: redis)
        let b = try await FleetRegistryTests.gateway("pod-b", redis: redis)
        let c = try await FleetRegistryTests.gateway("pod-c", redis: redis)
        let onA = Acknowledging(try await a.connect("speaker-on-a"))
        let onB = Acknowledging(try await b.connect("speaker-on-b"))
        let onC = Acknowledging(try await c.connect("speaker-on-c"))
        let silent = try await RawClient.connect(port: a.port, tls: true)
        try await silent.handshake("silent-on-a")
        #expect(await Self.registered(["speaker-on-a", "speaker-on-b", "speaker-on-c", "silent-on-a"], on: c))

        let (delivered, offline, timeout) = try await DownlinkAPITests.withAPI(c) { api, metadata in
            (
                try await api.send(DownlinkAPITests.send("speaker-on-a", "paid 12.50"), metadata: metadata),
                try await api.send(DownlinkAPITests.send("nobody-home", "x"), metadata: metadata),
                try await api.send(DownlinkAPITests.send("silent-on-a", "x", ttl: 300), metadata: metadata)
            )
        }
        #expect(delivered.outcome == .delivered && delivered.gatewayInstance == "pod-a")
        #expect(offline.outcome == .offline)
        #expect(timeout.outcome == .timeout && timeout.gatewayInstance == "pod-a", "the holding pod's TIMEOUT")
        #expect(await eventually { onA.received == ["paid 12.50"] })

        // One message to a group: each distinct device once, each answer where the id was.
        let ids = ["speaker-on-a", "speaker-on-b", "speaker-on-c", "nobody-home", "speaker-on-a", "bad id"]
        let results = try await DownlinkAPITests.withAPI(c) { api, metadata in
            try await api.sendMany(Self.many(ids, "closing at 22:00"), metadata: metadata).results
        }
        #expect(results.map(\.deviceID) == ids)
        #expect(results.map(\.outcome) == [.delivered, .delivered, .delivered, .offline, .delivered, .rejected])
        #expect(results.map(\.gatewayInstance) == ["pod-a", "pod-b", "pod-c", "", "pod-a", "pod-c"])
        #expect(results.last?.deviceStatus == UInt32(TerminusCode.invalidDeviceID.rawValue))
        #expect(await eventually { onA.received.count == 2 && onB.received.count == 1 && onC.received.count == 1 })
        #expect(onA.received == ["paid 12.50", "closing at 22:00"], "sent once though named twice")
        #expect(onB.received == ["closing at 22:00"])

        // Kick through B closes the session on A.
        let kicked = try await DownlinkAPITests.withAPI(b) { api, metadata in
            var request = Terminus_V1_KickRequest()
            request.deviceID = "speaker-on-a"
            request.reason = "firmware update"
            let first = try await api.kick(request, metadata: metadata).kicked
            request.deviceID = "nobody-home"
            return (first, try await api.kick(request, metadata: metadata).kicked)
        }
        #expect(kicked == (true, false))
        let reason = await onA.connection.closeReason()
        #expect(reason?.code == .kicked && reason?.message == "firmware update")

        let text = try await c.gateway.metrics.scrape(on: MultiThreadedEventLoopGroup.singleton.any()).get()
        #expect(text.contains("terminus_fleet_forwards_total{method=\"send\",result=\"answered\"} 2"), "\(text)")
        #expect(text.contains("terminus_fleet_forwards_total{method=\"send_many\",result=\"answered\"} 2"))
        let served = try await a.gateway.metrics.scrape(on: MultiThreadedEventLoopGroup.singleton.any()).get()
        #expect(served.contains("terminus_fleet_forwarded_sends_served_total{outcome=\"delivered\"} 2"), "\(served)")
        #expect(served.contains("terminus_connections_accepted_total{listener=\"fleet\"}"))

        await onB.close()
        await onC.close()
        await silent.close()
        await a.stop()
        await b.stop()
        await c.stop()
    }

    @Test(
        "a pod that died before its lease expired: Send answers OFFLINE within the call's deadline; a pod with another fleet token: UNAVAILABLE"
    )
    func unreachableAndRefused() async throws {
        let redis = try await RedisServer.start()
        defer { redis.stop() }
        let a = try await FleetRegistryTests.gateway("pod-a", redis: redis)
        // A pod killed a moment ago: its liveness key still names an address where nothing
        // listens any more, its device's record still points at it.
        let closedPort = DescriptorExhaustionTests.freePort()
        let client = RedisClient(
            configuration: .init(host: "127.0.0.1", port: redis.port),
            eventLoop: MultiThreadedEventLoopGroup.singleton.any(),
            logger: .init(label: "test")
        )
        let running = Task { try await client.run() }
        #expect(await eventually { client.isConnected })
        _ = try await client.send([
            RedisCommand("SET", "terminus:pod:pod-dead", RedisArgument("127.0.0.1:\(closedPort)"), "PX", 60_000),
            RedisCommand("SET", "terminus:device:printer-on-dead", "pod-dead|e1|1|127.0.0.1:9"),
        ])
        let started = ContinuousClock.now
        let answer = try await DownlinkAPITests.withAPI(a) { api, metadata in
            try await api.send(DownlinkAPITests.send("printer-on-dead", "x", ttl: 1000), metadata: metadata)
        }
        #expect(answer.outcome == .offline)
        #expect(ContinuousClock.now - started < .seconds(3), "within the TTL plus the call margin")

        // A pod whose fleet token the others do not share refuses their calls.
        let stranger = try await FleetRegistryTests.gateway(
            "pod-x",
            redis: redis,
            fleetTokens: ["another-fleet-token-0123456789"]
        )
        let device = try await stranger.connect("printer-on-x")
        #expect(await Self.registered(["printer-on-x"], on: a))
        await #expect {
            _ = try await DownlinkAPITests.withAPI(a) { api, metadata in
                try await api.send(DownlinkAPITests.send("printer-on-x", "x"), metadata: metadata)
            }
        } throws: { error in
            let error = error as? RPCError
            return error?.code == .unavailable && error?.message.contains("pod-x refused") == true
        }
        let results = try await DownlinkAPITests.withAPI(a) { api, metadata in
            try await api.sendMany(Self.many(["printer-on-x", "printer-on-dead"], "x", ttl: 500), metadata: metadata)
                .results
        }
        #expect(results.map(\.outcome) == [.unavailable, .offline])
        await device.close()
        await stranger.stop()
        await a.stop()
        running.cancel()
        _ = try? await running.value
    }

    @Test(
        "fleet.tls: pods forward over mutual TLS with certificates from the fleet's CA; a pod whose certificate another CA issued is not reached"
    )
    func mutualTLSBetweenPods() async throws {
        let redis = try await RedisServer.start()
        defer { redis.stop() }
        let pki = TestPKI.shared
        func files(_ ca: CertificateFactory.Issued, _ name: String) throws -> PodForwarder.TLSFiles {
            let pod = try CertificateFactory.issueServer(
                ca: ca,
                commonName: name,
                dnsNames: [],
                ipAddresses: [[127, 0, 0, 1]],
                clientAuth: true
            )
            return PodForwarder.TLSFiles(
                certificateChain: pki.write(pod.certificatePEM, name: "\(name).pem"),
                privateKey: pki.write(pod.privateKeyPEM, name: "\(name)-key.pem"),
                ca: pki.write(ca.certificatePEM, name: "\(name)-ca.pem")
            )
        }
        let fleetCA = try CertificateFactory.makeCA(commonName: "Terminus fleet test CA")
        let a = try await FleetRegistryTests.gateway("pod-a", redis: redis, tls: try files(fleetCA, "pod-a"))
        let b = try await FleetRegistryTests.gateway("pod-b", redis: redis, tls: try files(fleetCA, "pod-b"))
        let strangerCA = try CertificateFactory.makeCA(commonName: "Another CA")
        let x = try await FleetRegistryTests.gateway("pod-x", redis: redis, tls: try files(strangerCA, "pod-x"))
        let onA = Acknowledging(try await a.connect("speaker-tls"))
        let onX = try await x.connect("speaker-elsewhere")
        #expect(await Self.registered(["speaker-tls", "speaker-elsewhere"], on: b))
        let (delivered, unreached) = try await DownlinkAPITests.withAPI(b) { api, metadata in
            (
                try await api.send(DownlinkAPITests.send("speaker-tls", "over TLS"), metadata: metadata),
                try await api.send(DownlinkAPITests.send("speaker-elsewhere", "x", ttl: 500), metadata: metadata)
            )
        }
        #expect(delivered.outcome == .delivered && delivered.gatewayInstance == "pod-a")
        #expect(await eventually { onA.received == ["over TLS"] })
        #expect(unreached.outcome == .offline, "the handshake fails: pod-x cannot be reached")
        let text = try await b.gateway.metrics.scrape(on: MultiThreadedEventLoopGroup.singleton.any()).get()
        #expect(!text.contains("terminus_fleet_forwards_total{method=\"send\",result=\"unreachable\"} 0"))
        await onA.close()
        await onX.close()
        await a.stop()
        await b.stop()
        await x.stop()
    }

    @Test(
        "Redis down: calls about other pods' devices answer UNAVAILABLE at once, this pod's own devices are still served"
    )
    func redisDown() async throws {
        let redis = try await RedisServer.start()
        defer { redis.stop() }
        let a = try await FleetRegistryTests.gateway("pod-a", redis: redis)
        let b = try await FleetRegistryTests.gateway("pod-b", redis: redis)
        let onA = Acknowledging(try await a.connect("speaker-a1"))
        let onB = Acknowledging(try await b.connect("speaker-b1"))
        #expect(await Self.registered(["speaker-a1", "speaker-b1"], on: a))
        redis.kill()
        #expect(await eventually { !(b.gateway.registry?.client.isConnected ?? true) })
        let started = ContinuousClock.now
        await #expect {
            _ = try await DownlinkAPITests.withAPI(b) { api, metadata in
                try await api.send(DownlinkAPITests.send("speaker-a1", "x"), metadata: metadata)
            }
        } throws: { error in
            (error as? RPCError)?.code == .unavailable
        }
        await #expect {
            _ = try await DownlinkAPITests.withAPI(b) { api, metadata in
                var request = Terminus_V1_KickRequest()
                request.deviceID = "speaker-a1"
                return try await api.kick(request, metadata: metadata)
            }
        } throws: { error in
            (error as? RPCError)?.code == .unavailable
        }
        #expect(ContinuousClock.now - started < .seconds(2), "no hang")
        let results = try await DownlinkAPITests.withAPI(b) { api, metadata in
            try await api.sendMany(Self.many(["speaker-b1", "speaker-a1"], "local still works"), metadata: metadata)
                .results
        }
        #expect(results.map(\.outcome) == [.delivered, .unavailable])
        #expect(onB.received == ["local still works"])
        await onA.close()
        await onB.close()
        await a.stop()
        await b.stop()
    }
}
