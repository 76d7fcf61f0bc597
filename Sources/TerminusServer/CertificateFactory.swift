internal import Crypto
internal import Foundation
internal import SwiftASN1
internal import X509

/// Makes ECDSA P-256 certificates with swift-certificates: the development CA and server
/// certificate, and (for tests and operators' experiments) client certificates naming devices.
package enum CertificateFactory {
    /// A certificate and its private key, both PEM.
    package struct Issued: Sendable {
        package var certificatePEM: String
        package var privateKeyPEM: String
    }

    /// A self-signed CA valid for `days`.
    package static func makeCA(commonName: String, days: Int = 3650) throws -> Issued {
        let key = P256.Signing.PrivateKey()
        let name = try DistinguishedName {
            OrganizationName("Terminus")
            CommonName(commonName)
        }
        let extensions = try Certificate.Extensions {
            Critical(BasicConstraints.isCertificateAuthority(maxPathLength: 0))
            Critical(KeyUsage(keyCertSign: true, cRLSign: true))
        }
        return try self.sign(key: key, subject: name, issuer: name, issuerKey: key, days: days, extensions: extensions)
    }

    /// A server certificate for `dnsNames` and `ipAddresses`, signed by `ca`.
    package static func issueServer(
        ca: Issued,
        commonName: String,
        dnsNames: [String],
        ipAddresses: [[UInt8]],
        days: Int = 825,
        clientAuth: Bool = false
    ) throws -> Issued {
        var names: [GeneralName] = dnsNames.map { .dnsName($0) }
        names += ipAddresses.map { .ipAddress(ASN1OctetString(contentBytes: $0[...])) }
        let sans = SubjectAlternativeNames(names)
        // A fleet's pods present one certificate both ways (`fleet.tls`): server and client.
        let usages: [ExtendedKeyUsage.Usage] = clientAuth ? [.serverAuth, .clientAuth] : [.serverAuth]
        let extensions = try Certificate.Extensions {
            Critical(BasicConstraints.notCertificateAuthority)
            Critical(KeyUsage(digitalSignature: true))
            try ExtendedKeyUsage(usages)
            sans
        }
        return try self.issue(ca: ca, commonName: commonName, days: days, extensions: extensions)
    }

    /// A client certificate whose subject common name is `deviceID`, signed by `ca`.
    package static func issueClient(ca: Issued, deviceID: String, days: Int = 825) throws -> Issued {
        let extensions = try Certificate.Extensions {
            Critical(BasicConstraints.notCertificateAuthority)
            Critical(KeyUsage(digitalSignature: true))
            try ExtendedKeyUsage([.clientAuth])
        }
        return try self.issue(ca: ca, commonName: deviceID, days: days, extensions: extensions)
    }

    private static func issue(
        ca: Issued,
        commonName: String,
        days: Int,
        extensions: Certificate.Extensions
    ) throws -> Issued {
        let caKey = try P256.Signing.PrivateKey(pemRepresentation: ca.privateKeyPEM)
        let caCertificate = try Certificate(pemEncoded: ca.certificatePEM)
        return try self.sign(
            key: P256.Signing.PrivateKey(),
            subject: try DistinguishedName { CommonName(commonName) },
            issuer: caCertificate.subject,
            issuerKey: caKey,
            days: days,
            extensions: extensions
        )
    }

    /// Signs a certificate for `key`, valid from an hour ago (clock skew) for `days`.
    private static func sign(
        key: P256.Signing.PrivateKey,
        subject: DistinguishedName,
        issuer: DistinguishedName,
        issuerKey: P256.Signing.PrivateKey,
        days: Int,
        extensions: Certificate.Extensions
    ) throws -> Issued {
        let now = Date()
        let certificate = try Certificate(
            version: .v3,
            serialNumber: Certificate.SerialNumber(),
            publicKey: .init(key.publicKey),
            notValidBefore: now.addingTimeInterval(-3600),
            notValidAfter: now.addingTimeInterval(Double(days) * 86_400),
            issuer: issuer,
            subject: subject,
            signatureAlgorithm: .ecdsaWithSHA256,
            extensions: extensions,
            issuerPrivateKey: .init(issuerKey)
        )
        return Issued(certificatePEM: try certificate.serializeAsPEM().pemString, privateKeyPEM: key.pemRepresentation)
    }
}

extension CertificateFactory {
    /// Refuses a private key whose public key is not the one in the chain's first (leaf)
    /// certificate: a configuration error naming `key` and both files, where TLS would only
    /// say that the context could not be made. Keys swift-certificates cannot read (some
    /// legacy encodings) are left to TLS to judge.
    static func checkKeyMatches(certificateChain: String, privateKey privateKeyPath: String, key: String) throws {
        guard let chainPEM = try? String(contentsOfFile: certificateChain, encoding: .utf8),
            let keyPEM = try? String(contentsOfFile: privateKeyPath, encoding: .utf8),
            let leafDocument = try? PEMDocument.parseMultiple(pemString: chainPEM).first,
            let leaf = try? Certificate(derEncoded: leafDocument.derBytes),
            let privateKey = try? Certificate.PrivateKey(pemEncoded: keyPEM)
        else { return }
        guard privateKey.publicKey == leaf.publicKey else {
            throw ConfigurationError(
                key: key,
                "the key in \(privateKeyPath) does not match the certificate in \(certificateChain) (its public key differs)"
            )
        }
    }
}
