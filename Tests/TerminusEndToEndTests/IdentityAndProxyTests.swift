import Foundation
import NIOCore
import NIOPosix
import NIOSSL
import TerminusClient
import TerminusEdge
import TerminusProtocol
import TerminusServer
import TerminusSessions
import Testing

@Suite("mTLS identity and PROXY protocol", .serialized, .gatewayScope)
struct IdentityAndProxyTests {
    func clientCertificateTLS(deviceID: String) throws -> TLSConfiguration {
        let issued = try CertificateFactory.issueClient(ca: TestPKI.shared.ca, deviceID: deviceID)
        var tls = try TestPKI.shared.clientTLS()
        tls.certificateChain = [
            .certificate(try NIOSSLCertificate(bytes: Array(issued.certificatePEM.utf8), format: .pem))
        ]
        tls.privateKey = .privateKey(try NIOSSLPrivateKey(bytes: Array(issued.privateKeyPEM.utf8), format: .pem))
        return tls
    }

    @Test("mTLS: the client certificate names the device; tokens still work when optional")
    func mutualTLS() async throws {
        let gateway = try await TestGateway.start {
            $0.tls?.clientCA = TestPKI.shared.caFile
            $0.tls?.clientAuth = .optional
        }
        var configuration = try gateway.client("")
        configuration.tls = try self.clientCertificateTLS(deviceID: "printer-cert-7")
        configuration.credential = .certificate
        let connection = try await TerminusConnection.connect(
            configuration,
            group: MultiThreadedEventLoopGroup.singleton
        )
        #expect(connection.welcome.deviceID == "printer-cert-7")
        #expect(try await connection.publish(topic: "print/done", payload: ByteBuffer(string: "1")).status == .ok)
        #expect(gateway.sink.messages.last?.deviceID == "printer-cert-7")

        // A token device on the same listener.
        let tokenDevice = try await gateway.connect("token-device")
        #expect(try await tokenDevice.publish(topic: "a", payload: ByteBuffer(string: "b")).status == .ok)

        // A certificate for one device cannot claim another id in HELLO.
        configuration.deviceID = "someone-else"
        await #expect(throws: TerminusClientError.self) {
            _ = try await TerminusConnection.connect(configuration, group: MultiThreadedEventLoopGroup.singleton)
        }
    }

    @Test("client_auth required: a device without a certificate is refused")
    func certificateRequired() async throws {
        let gateway = try await TestGateway.start {
            $0.tls?.clientCA = TestPKI.shared.caFile
            $0.tls?.clientAuth = .required
        }
        do {
            _ = try await gateway.connect("no-cert")
            Issue.record("a device without a certificate connected")
        } catch let error as TerminusClientError {
            #expect(error.kind == .connectionClosed || error.kind == .refused)
        }
        var configuration = try gateway.client("")
        configuration.tls = try self.clientCertificateTLS(deviceID: "cert-only-1")
        configuration.credential = .certificate
        let connection = try await TerminusConnection.connect(
            configuration,
            group: MultiThreadedEventLoopGroup.singleton
        )
        #expect(connection.welcome.deviceID == "cert-only-1")
    }

    static let v2Signature: [UInt8] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A]

    @Test("PROXY v2 before TLS (as Tencent CLB sends it): the real client address reaches the sink")
    func proxyV2() async throws {
        let gateway = try await TestGateway.start { $0.proxyProtocol = .v2 }
        var configuration = try gateway.client("proxied-1")
        configuration.preamble =
            Self.v2Signature + [0x21, 0x11, 0x00, 0x0C, 203, 0, 113, 9, 10, 0, 0, 5, 0x11, 0xD7, 0x1E, 0xCB]
        let connection = try await TerminusConnection.connect(
            configuration,
            group: MultiThreadedEventLoopGroup.singleton
        )
        #expect(try await connection.publish(topic: "x", payload: ByteBuffer(string: "y")).status == .ok)
        #expect(gateway.sink.messages.last?.clientAddress == "203.0.113.9:4567")
        #expect(gateway.gateway.directory.lookup("proxied-1")?.clientAddress == "203.0.113.9:4567")
    }

    @Test("PROXY v1 on a plain TCP listener")
    func proxyV1() async throws {
        let gateway = try await TestGateway.start {
            $0.proxyProtocol = .any
            $0.transport = .plaintext
            $0.tls = nil
        }
        let raw = try await RawClient.connect(
            port: gateway.port,
            tls: false,
            preamble: Array("PROXY TCP4 198.51.100.20 10.0.0.1 40001 7883\r\n".utf8)
        )
        try await raw.handshake("proxied-v1")
        #expect(gateway.gateway.directory.lookup("proxied-v1")?.clientAddress == "198.51.100.20:40001")
    }

    @Test("a PROXY listener refuses a connection whose header is missing or garbled")
    func proxyMissingOrGarbled() async throws {
        let gateway = try await TestGateway.start { $0.proxyProtocol = .v2 }
        // Missing: a TLS client that starts with its ClientHello.
        await #expect(throws: TerminusClientError.self) { _ = try await gateway.connect("no-header") }
        // Garbled: a broken signature.
        let garbled = try await RawClient.connect(
            port: gateway.port,
            tls: false,
            preamble: Array(Self.v2Signature.prefix(11)) + [0x0B, 0x21, 0x11, 0, 0]
        )
        #expect(await garbled.waitUntil(3) { garbled.isClosed })
        // The listener still serves correct clients.
        var configuration = try gateway.client("after-garbled")
        configuration.preamble = Self.v2Signature + [0x20, 0x00, 0x00, 0x00]
        let ok = try await TerminusConnection.connect(configuration, group: MultiThreadedEventLoopGroup.singleton)
        #expect(try await ok.publish(topic: "x", payload: ByteBuffer(string: "y")).status == .ok)
        #expect(gateway.sink.messages.last?.clientAddress.hasPrefix("127.0.0.1:") == true)
    }
}
