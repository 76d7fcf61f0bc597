import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import NIOCore
import TerminusAPI
import TerminusClient
import TerminusProtocol
import TerminusServer
import Testing

@Suite("Backend API: Send, Kick, Presence", .serialized, .gatewayScope)
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
        ipv6: Bool = false,
        _ body: @Sendable (Terminus_V1_Gateway.Client<HTTP2ClientTransport.Posix>, Metadata) async throws -> R
    ) async throws -> R {
        let port = try #require(gateway.gateway.boundAPIPort)
        let transport = try HTTP2ClientTransport.Posix(
            target: ipv6 ? .ipv6(address: "::1", port: port) : .ipv4(address: "127.0.0.1", port: port),
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

    @Test("invalid Sends are REJECTED with a code; PUSH frames never exceed the device's announced receive limit")
    func sendValidation() async throws {
        let gateway = try await Self.gateway()
        // A device that can receive frames of at most 1,024 bytes says so in HELLO.
        let device = try await RawClient.connect(port: gateway.port, tls: true)
        let token = TerminusAuthTestSupport.token(deviceID: "small-1", secret: TestGateway.secret, expiresIn: 600)
        try await device.send(
            .hello(
                Hello(
                    keepaliveSeconds: 0,
                    capabilities: [],
                    deviceID: "small-1",
                    authMethod: .token,
                    credential: ByteBuffer(string: token),
                    maxReceiveFrameSize: 1024
                )
            )
        )
        #expect(await device.waitUntil(5) { device.frames.count == 1 })
        let results = try await Self.withAPI(gateway) { api, metadata in
            var forged = Self.send("small-1", "x", qos: 0)
            forged.topic = "a/#\n+"
            var escape = Self.send("small-1", "x", qos: 0)
            escape.topic = "cmd/\u{1B}[2J"
            let fits = Self.send("small-1", String(repeating: "a", count: 900), qos: 0)
            let tooLarge = Self.send("small-1", String(repeating: "a", count: 2000), qos: 0)
            let badQoS = Self.send("small-1", "x", qos: 7)
            return try await [forged, escape, fits, tooLarge, badQoS].asyncMap {
                try await api.send($0, metadata: metadata)
            }
        }
        #expect(results.map(\.outcome) == [.rejected, .rejected, .delivered, .rejected, .rejected])
        #expect(results.map(\.deviceStatus) == [205, 205, 0, 201, 200])
        // Only the message that fits reached the device.
        #expect(await device.waitUntil(2) { device.frames.count == 2 })
        try await Task.sleep(for: .milliseconds(200))
        let pushes = device.frames.filter { if case .push = $0 { true } else { false } }
        #expect(pushes.count == 1)
        await device.close()
    }

    @Test("Send to an online device: PUSH, device ACK, DELIVERED; large payloads travel deflated")
    func sendOnline() async throws {
        let gateway = try await Self.gateway()
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
        let silent = try await RawClient.connect(port: gateway.port, tls: true)
        try await silent.handshake("silent-speaker")
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

    /// A client of an API listener over TLS, with a client certificate when given.
    static func withTLSAPI<R: Sendable>(
        _ gateway: TestGateway,
        clientCertificate: CertificateFactory.Issued?,
        token: String? = nil,
        _ body: @Sendable (Terminus_V1_Gateway.Client<HTTP2ClientTransport.Posix>, Metadata) async throws -> R
    ) async throws -> R {
        let pki = TestPKI.shared
        let port = try #require(gateway.gateway.boundAPIPort)
        let trust: (inout HTTP2ClientTransport.Posix.TransportSecurity.TLS) -> Void = {
            $0.trustRoots = .certificates([.file(path: pki.caFile, format: .pem)])
        }
        let security: HTTP2ClientTransport.Posix.TransportSecurity
        if let clientCertificate {
            let name = "api-client-\(UUID().uuidString)"
            security = .mTLS(
                certificateChain: [
                    .file(path: pki.write(clientCertificate.certificatePEM, name: name + ".pem"), format: .pem)
                ],
                privateKey: .file(
                    path: pki.write(clientCertificate.privateKeyPEM, name: name + "-key.pem"),
                    format: .pem
                ),
                configure: trust
            )
        } else {
            security = .tls(configure: trust)
        }
        var config = HTTP2ClientTransport.Posix.Config.defaults
        config.http2.authority = "localhost"
        let transport = try HTTP2ClientTransport.Posix(
            target: .ipv4(address: "127.0.0.1", port: port),
            transportSecurity: security,
            config: config
        )
        var metadata: Metadata = [:]
        if let token { metadata.addString("Bearer \(token)", forKey: "authorization") }
        let headers = metadata
        return try await withGRPCClient(transport: transport) { client in
            try await body(Terminus_V1_Gateway.Client(wrapping: client), headers)
        }
    }

    static func presence(
        _ api: Terminus_V1_Gateway.Client<HTTP2ClientTransport.Posix>,
        _ metadata: Metadata
    ) async throws -> Terminus_V1_PresenceResponse {
        var request = Terminus_V1_PresenceRequest()
        request.deviceIds = ["speaker-mtls"]
        var options = CallOptions.defaults
        options.timeout = .seconds(5)
        return try await api.presence(request, metadata: metadata, options: options)
    }

    @Test("api.listen on an IPv6 address ([::1]:0) binds IPv6 and serves")
    func ipv6Listener() async throws {
        let gateway = try await TestGateway.start {
            $0.apiListen = .init(host: "::1", port: 0)
            $0.apiTokens = [Self.token]
        }
        let device = try await gateway.connect("speaker-v6")
        let answer = try await Self.withAPI(gateway, ipv6: true) { api, metadata in
            var request = Terminus_V1_PresenceRequest()
            request.deviceIds = ["speaker-v6"]
            return try await api.presence(request, metadata: metadata)
        }
        #expect(answer.devices.first?.online == true)
        await device.close()
    }

    @Test("mTLS API listener: a certificate from the client CA is admitted; none, or another CA's, is refused")
    func mutualTLS() async throws {
        let pki = TestPKI.shared
        let gateway = try await TestGateway.start {
            $0.apiListen = .init(host: "127.0.0.1", port: 0)
            $0.apiTLS = .init(certificateChain: pki.serverChain, privateKey: pki.serverKey, clientCA: pki.caFile)
        }
        let device = try await gateway.connect("speaker-mtls")
        let trusted = try CertificateFactory.issueClient(ca: pki.ca, deviceID: "billing-backend")
        let answer = try await Self.withTLSAPI(gateway, clientCertificate: trusted) { try await Self.presence($0, $1) }
        #expect(answer.devices.first?.online == true)

        let otherCA = try CertificateFactory.makeCA(commonName: "Someone else's CA")
        let stranger = try CertificateFactory.issueClient(ca: otherCA, deviceID: "intruder")
        for certificate in [nil, stranger] as [CertificateFactory.Issued?] {
            await #expect(throws: RPCError.self) {
                _ = try await Self.withTLSAPI(gateway, clientCertificate: certificate) {
                    try await Self.presence($0, $1)
                }
            }
        }
        // A plaintext caller does not get through either.
        await #expect(throws: RPCError.self) {
            try await Self.withAPI(gateway) { api, metadata in
                var options = CallOptions.defaults
                options.timeout = .seconds(5)
                _ = try await api.presence(Terminus_V1_PresenceRequest(), metadata: metadata, options: options)
            }
        }
        await device.close()
    }

    @Test("mTLS and bearer tokens together: a certificate without a token is UNAUTHENTICATED")
    func mutualTLSAndToken() async throws {
        let pki = TestPKI.shared
        let gateway = try await TestGateway.start {
            $0.apiListen = .init(host: "127.0.0.1", port: 0)
            $0.apiTokens = [Self.token]
            $0.apiTLS = .init(certificateChain: pki.serverChain, privateKey: pki.serverKey, clientCA: pki.caFile)
        }
        let trusted = try CertificateFactory.issueClient(ca: pki.ca, deviceID: "billing-backend")
        do {
            _ = try await Self.withTLSAPI(gateway, clientCertificate: trusted) { try await Self.presence($0, $1) }
            Issue.record("a call without a token was admitted")
        } catch let error as RPCError {
            #expect(error.code == .unauthenticated)
        }
        let answer = try await Self.withTLSAPI(gateway, clientCertificate: trusted, token: Self.token) {
            try await Self.presence($0, $1)
        }
        #expect(answer.devices.count == 1)
        #expect(answer.devices.first?.online == false)
    }

    @Test("TLS without client certificates: tokens still decide")
    func tlsWithTokens() async throws {
        let pki = TestPKI.shared
        let gateway = try await TestGateway.start {
            $0.apiListen = .init(host: "127.0.0.1", port: 0)
            $0.apiTokens = [Self.token]
            $0.apiTLS = .init(certificateChain: pki.serverChain, privateKey: pki.serverKey)
        }
        do {
            _ = try await Self.withTLSAPI(gateway, clientCertificate: nil) { try await Self.presence($0, $1) }
            Issue.record("a call without a token was admitted")
        } catch let error as RPCError {
            #expect(error.code == .unauthenticated)
        }
        let answer = try await Self.withTLSAPI(gateway, clientCertificate: nil, token: Self.token) {
            try await Self.presence($0, $1)
        }
        #expect(answer.devices.count == 1)
    }
}

extension Array {
    func asyncMap<T>(_ transform: (Element) async throws -> T) async rethrows -> [T] {
        var results: [T] = []
        for element in self { results.append(try await transform(element)) }
        return results
    }
}
