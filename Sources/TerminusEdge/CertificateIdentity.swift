internal import NIOSSL
internal import SwiftASN1
internal import X509

/// Reads the device id out of a verified client certificate: the subject's common name.
enum CertificateIdentity {
    static func deviceID(of certificate: NIOSSLCertificate) -> String? {
        guard let der = try? certificate.toDERBytes(), let parsed = try? Certificate(derEncoded: der) else {
            return nil
        }
        for rdn in parsed.subject {
            for attribute in rdn where attribute.type == .RDNAttributeType.commonName {
                if let name = String(attribute.value) { return name }
            }
        }
        return nil
    }
}
