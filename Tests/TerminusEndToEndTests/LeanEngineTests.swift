import Foundation
import NIOCore
import NIOPosix
import NIOSSL
import TerminusClient
import TerminusProtocol
import TerminusServer
import TerminusSessions
import TerminusTestSupport
import Testing

/// A gateway whose device listener uses the lean TLS engine (`device.tls.engine: lean`): the
/// same sessions, over OpenSSL's handshake and the lean record layer.
@Suite("Lean TLS engine: devices end to end", .serialized, .gatewayScope)
struct LeanEngineTests {
    static func lean(_ configuration: inout GatewayConfiguration) {
        configuration.tls?.engine = .lean
        configuration.tls?.minimumVersion = "1.3"
    }

    @Test(
        "a device publishes over the lean engine: small and multi-record payloads, each acknowledged; the ACKs arrive sealed"
    )
    func publish() async throws {
        let gateway = try await TestGateway.start { Self.lean(&$0) }
        let device = try await gateway.connect("lean-printer-1")
        for index in 0..<50 {
            let ack = try await device.publish(topic: "print/done", payload: ByteBuffer(string: "job \(index)"))
            #expect(ack.status == .ok)
        }
        // 40,000 bytes: three TLS records one way.
        let large = ByteBuffer(bytes: (0..<40_000).map { UInt8(truncatingIfNeeded: $0 &* 7) })
        #expect(try await device.publish(topic: "print/log", payload: large).status == .ok)
        #expect(gateway.sink.messages.count == 51)
        #expect(gateway.sink.messages.last?.payload == large)
        await device.close()
    }

    @Test("mTLS over the lean engine: OpenSSL verifies the certificate and the session takes the device id from it")
    func mutualTLS() async throws {
        let gateway = try await TestGateway.start {
            Self.lean(&$0)
            $0.tls?.clientCA = TestPKI.shared.caFile
            $0.tls?.clientAuth = .required
        }
        let issued = try CertificateFactory.issueClient(ca: TestPKI.shared.ca, deviceID: "lean-speaker-9")
        var tls = try TestPKI.shared.clientTLS()
        tls.certificateChain = [
            .certificate(try NIOSSLCertificate(bytes: Array(issued.certificatePEM.utf8), format: .pem))
        ]
        tls.privateKey = .privateKey(try NIOSSLPrivateKey(bytes: Array(issued.privateKeyPEM.utf8), format: .pem))
        var configuration = try gateway.client("")
        configuration.tls = tls
        configuration.credential = .certificate
        let connection = try await TerminusConnection.connect(
            configuration,
            group: MultiThreadedEventLoopGroup.singleton
        )
        #expect(connection.welcome.deviceID == "lean-speaker-9")
        #expect(try await connection.publish(topic: "pay/done", payload: ByteBuffer(string: "9.90")).status == .ok)
        #expect(gateway.sink.messages.last?.deviceID == "lean-speaker-9")
        await connection.close()

        // Without a certificate: refused in OpenSSL's handshake.
        await #expect(throws: (any Error).self) {
            _ = try await gateway.connect("no-certificate")
        }
    }

    @Test(
        "min_version 1.2 with the lean engine: a TLS 1.2 device (BoringSSL's client) and a TLS 1.3 device publish side by side"
    )
    func tls12() async throws {
        let gateway = try await TestGateway.start {
            $0.tls?.engine = .lean
            $0.tls?.minimumVersion = "1.2"
        }
        var configuration = try gateway.client("lean-tls12")
        configuration.tls?.maximumTLSVersion = .tlsv12
        let old = try await TerminusConnection.connect(configuration, group: MultiThreadedEventLoopGroup.singleton)
        let modern = try await gateway.connect("lean-tls13")
        for index in 0..<20 {
            #expect(try await old.publish(topic: "pay/done", payload: ByteBuffer(string: "old \(index)")).status == .ok)
            #expect(
                try await modern.publish(topic: "pay/done", payload: ByteBuffer(string: "new \(index)")).status == .ok
            )
        }
        let large = ByteBuffer(bytes: (0..<40_000).map { UInt8(truncatingIfNeeded: $0 &* 13) })
        #expect(try await old.publish(topic: "print/log", payload: large).status == .ok)
        #expect(gateway.sink.messages.count == 41)
        #expect(gateway.sink.messages.last?.payload == large)
        #expect(gateway.sink.messages.filter { $0.deviceID == "lean-tls12" }.count == 21)
        await old.close()
        await modern.close()
    }

    @Test("ticket_key_file must hold 32 to 64 bytes (a trailing newline aside): otherwise the configuration is refused")
    func ticketKeyFileSize() throws {
        let file = NSTemporaryDirectory() + "lean-ticket-\(UUID().uuidString).key"
        defer { try? FileManager.default.removeItem(atPath: file) }
        for (content, accepted) in [("short\n", false), (String(repeating: "k", count: 32) + "\n", true)] {
            try content.write(toFile: file, atomically: true, encoding: .utf8)
            var configuration = TestGateway.configuration()
            configuration.tls?.engine = .lean
            configuration.tls?.ticketKeyFile = file
            if accepted {
                _ = try Gateway(configuration: configuration, sink: InMemorySink(), logger: TestGateway.logger)
            } else {
                #expect(throws: ConfigurationError.self) {
                    _ = try Gateway(configuration: configuration, sink: InMemorySink(), logger: TestGateway.logger)
                }
            }
        }
    }
}
