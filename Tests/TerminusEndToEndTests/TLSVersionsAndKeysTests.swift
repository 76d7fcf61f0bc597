import Crypto
import Foundation
import NIOCore
import NIOPosix
import NIOSSL
import SwiftASN1
import TerminusClient
import TerminusProtocol
import TerminusServer
import Testing
import X509
import _CryptoExtras

@Suite("TLS versions and key types", .serialized, .gatewayScope)
struct TLSVersionsAndKeysTests {
    /// An RSA-2048 server certificate signed by the test CA (ECDSA), written as PEM files.
    static func rsaServerFiles() throws -> (chain: String, key: String) {
        let pki = TestPKI.shared
        let caKey = try P256.Signing.PrivateKey(pemRepresentation: pki.ca.privateKeyPEM)
        let caCertificate = try Certificate(pemEncoded: pki.ca.certificatePEM)
        let rsaKey = try _RSA.Signing.PrivateKey(keySize: .bits2048)
        let certificate = try Certificate(
            version: .v3,
            serialNumber: .init(),
            publicKey: .init(rsaKey.publicKey),
            notValidBefore: Date().addingTimeInterval(-60),
            notValidAfter: Date().addingTimeInterval(3600),
            issuer: caCertificate.subject,
            subject: try DistinguishedName { CommonName("localhost") },
            signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                SubjectAlternativeNames([
                    .dnsName("localhost"), .ipAddress(ASN1OctetString(contentBytes: [127, 0, 0, 1])),
                ])
            },
            issuerPrivateKey: .init(caKey)
        )
        return (
            pki.write(try certificate.serializeAsPEM().pemString, name: "rsa-server.pem"),
            pki.write(rsaKey.pemRepresentation, name: "rsa-server-key.pem")
        )
    }

    @Test("TLS 1.2 and TLS 1.3 clients both connect; an RSA certificate serves like an ECDSA one")
    func versionsAndRSA() async throws {
        for rsa in [false, true] {
            let files = rsa ? try Self.rsaServerFiles() : nil
            let gateway = try await TestGateway.start {
                if let files { $0.tls = .init(certificateChain: files.chain, privateKey: files.key) }
            }
            for version in [TLSVersion.tlsv12, .tlsv13] {
                var configuration = try gateway.client("tls-\(rsa ? "rsa" : "ec")-\(version)")
                configuration.tls?.minimumTLSVersion = version
                configuration.tls?.maximumTLSVersion = version
                let connection = try await TerminusConnection.connect(
                    configuration,
                    group: MultiThreadedEventLoopGroup.singleton
                )
                #expect(try await connection.publish(topic: "t", payload: ByteBuffer(string: "v")).status == .ok)
                await connection.close()
            }
            await gateway.stop()
        }
    }

    @Test("min_version 1.3 refuses a TLS 1.2-only client")
    func minimumVersion() async throws {
        let gateway = try await TestGateway.start { $0.tls?.minimumVersion = "1.3" }
        var configuration = try gateway.client("old-tls")
        configuration.tls?.maximumTLSVersion = .tlsv12
        await #expect(throws: TerminusClientError.self) {
            _ = try await TerminusConnection.connect(configuration, group: MultiThreadedEventLoopGroup.singleton)
        }
    }
}
