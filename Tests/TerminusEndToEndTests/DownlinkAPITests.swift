import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import NIOCore
import TerminusAPI
import TerminusClient
import TerminusProtocol
import TerminusServer
import Testing

@Suite("Backend API: Send, Kick, Presence", .serialized)
struct DownlinkAPITests {
    static let token = "test-api-token-0123456789"

    static func gateway() async throws -> TestGateway {
        try await TestGateway.start {
            $0.apiListen = .init(host: "127.0.0.1", port: 0)
            $0.apiTokens = [Self.token]
        }
    }

    /// Runs `body` with a client of the gateway's API, authenticating with `token`.
    static func withAPI<R: Sendable>(
        _ gateway: TestGateway,
        token: String? = Self.token,
        _ body: @Sendable (Terminus_V1_Gateway.Client<HTTP2ClientTransport.Posix>, Metadata) async throws -> R
    ) async throws -> R {
        let port = try #require(gateway.gateway.boundAPIPort)
        let transport = try HTTP2ClientTransport.Posix(
            target: .ipv4(address: "127.0.0.1", port: port),
            transportSecurity: .plaintext
        )
        var metadata: Metadata = [:]
        if let token { metadata.addString("Bearer \(token)", forKey: "authorization") }
        let headers = metadata
        return try await withGRPCClient(transport: transport) { client in
            try await body(Terminus_V1_Gateway.Client(wrapping: client), headers)
        }
    }

    static func send(
        _ device: String,
        _ payload: String,
        qos: UInt32 = 1,
        ttl: UInt32 = 2000
    ) -> Terminus_V1_SendRequest {
        var request = Terminus_V1_SendRequest()
        request.deviceID = device
        request.topic = "cmd/play"
        request.payload = Data(payload.utf8)
        request.qos = qos
        request.ttlMs = ttl
        return request
    }

    @Test("Send to an online device: PUSH, device ACK, DELIVERED; large payloads travel deflated")
    func sendOnline() async throws {
        let gateway = try await Self.gateway()
        defer { Task { await gateway.stop() } }
        let device = try await gateway.connect("speaker-1")
        let received = Task {
            var payloads: [String] = []
            for await push in device.pushes {
                payloads.append(String(decoding: push.payload.readableBytesView, as: UTF8.self))
                device.acknowledge(push)
                if payloads.count == 2 { break }
            }
            return payloads
        }
        let long = String(repeating: "paid 12.50 yuan; ", count: 40)
        let outcomes = try await Self.withAPI(gateway) { api, metadata in
            let first = try await api.send(Self.send("speaker-1", "hello"), metadata: metadata)
            let second = try await api.send(Self.send("speaker-1", long), metadata: metadata)
            return [first, second]
        }
        #expect(outcomes.map(\.outcome) == [.delivered, .delivered])
        #expect(outcomes.first?.gatewayInstance == "gw-test")
        #expect(await received.value == ["hello", long])
        await device.close()
    }

    @Test("Send to an offline device and to one that never acknowledges")
    func offlineAndTimeout() async throws {
        let gateway = try await Self.gateway()
        defer { Task { await gateway.stop() } }
        let silent = try await RawClient.connect(port: gateway.port, tls: true)
        _ = try await silent.handshake("silent-speaker")
        let (offline, timeout, qos0) = try await Self.withAPI(gateway) { api, metadata in
            (
                try await api.send(Self.send("nobody-home", "x"), metadata: metadata).outcome,
                try await api.send(Self.send("silent-speaker", "x", ttl: 300), metadata: metadata).outcome,
                try await api.send(Self.send("silent-speaker", "y", qos: 0), metadata: metadata).outcome
            )
        }
        #expect(offline == .offline)
        #expect(timeout == .timeout)
        #expect(qos0 == .delivered)
        func pushes() -> [Message] {
            silent.frames.compactMap { frame -> Message? in
                if case .push(let message) = frame { return message }
                return nil
            }
        }
        // QoS 0 is "delivered" once written by the gateway; the bytes may still be on the way.
        #expect(await RawClient.poll(5) { pushes().count == 2 })
        let pushes = pushes()
        #expect(pushes.first?.qos == .atLeastOnce)
        #expect(pushes.last?.qos == .atMostOnce)
    }

    @Test("Kick closes the device with GOAWAY(KICKED); Presence reports online and offline devices")
    func kickAndPresence() async throws {
        let gateway = try await Self.gateway()
        defer { Task { await gateway.stop() } }
        let device = try await gateway.connect("printer-9")
        let presence = try await Self.withAPI(gateway) { api, metadata in
            var request = Terminus_V1_PresenceRequest()
            request.deviceIds = ["printer-9", "printer-10"]
            return try await api.presence(request, metadata: metadata)
        }
        #expect(presence.devices.map(\.online) == [true, false])
        #expect(presence.devices.first?.clientAddress.hasPrefix("127.0.0.1:") == true)
        #expect((presence.devices.first?.sinceUnixMs ?? 0) > 0)
        let kicked = try await Self.withAPI(gateway) { api, metadata in
            var request = Terminus_V1_KickRequest()
            request.deviceID = "printer-9"
            request.reason = "maintenance"
            let first = try await api.kick(request, metadata: metadata).kicked
            request.deviceID = "printer-10"
            let second = try await api.kick(request, metadata: metadata).kicked
            return (first, second)
        }
        #expect(kicked == (true, false))
        let reason = await device.closeReason()
        #expect(reason?.code == .kicked)
        #expect(reason?.message == "maintenance")
    }

    @Test("calls without a valid bearer token are UNAUTHENTICATED")
    func unauthenticated() async throws {
        let gateway = try await Self.gateway()
        defer { Task { await gateway.stop() } }
        for token in [nil, "wrong-token-but-long-enough", Self.token + "x"] as [String?] {
            await #expect(throws: RPCError.self) {
                try await Self.withAPI(gateway, token: token) { api, metadata in
                    _ = try await api.presence(Terminus_V1_PresenceRequest(), metadata: metadata)
                }
            }
            do {
                try await Self.withAPI(gateway, token: token) { api, metadata in
                    _ = try await api.presence(Terminus_V1_PresenceRequest(), metadata: metadata)
                }
            } catch let error as RPCError {
                #expect(error.code == .unauthenticated)
            }
        }
    }
}
