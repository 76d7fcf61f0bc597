internal import CTerminusOpenSSL
internal import Crypto

/// The AEADs of TLS 1.3 and of TLS 1.2's ECDHE AEAD suites, as the record layer seals and opens
/// records with them (`AEADContext`).
package enum AEADAlgorithm: Sendable {
    case aes128GCM
    case aes256GCM
    case chacha20Poly1305

    /// The key's length in bytes.
    package var keyLength: Int { self == .aes128GCM ? 16 : 32 }
}

/// The cipher suites the lean engine's record layer protects records with: TLS 1.3's three,
/// and TLS 1.2's ECDHE suites with the same AEADs.
package enum LeanCipherSuite: UInt16, Sendable, CaseIterable {
    case tls13AES128GCMSHA256 = 0x1301
    case tls13AES256GCMSHA384 = 0x1302
    case tls13ChaCha20Poly1305SHA256 = 0x1303
    case ecdheECDSAWithAES128GCMSHA256 = 0xC02B
    case ecdheRSAWithAES128GCMSHA256 = 0xC02F
    case ecdheECDSAWithAES256GCMSHA384 = 0xC02C
    case ecdheRSAWithAES256GCMSHA384 = 0xC030
    case ecdheRSAWithChaCha20Poly1305SHA256 = 0xCCA8
    case ecdheECDSAWithChaCha20Poly1305SHA256 = 0xCCA9

    /// Whether this is a TLS 1.3 suite (else TLS 1.2).
    package var isTLS13: Bool { self.rawValue >> 8 == 0x13 }

    /// The AEAD key's length in bytes.
    package var keyLength: Int { self.aead.keyLength }

    /// The length of the suite's hash: each TLS 1.3 traffic secret's, and TLS 1.2's PRF hash.
    package var hashLength: Int {
        switch self {
        case .tls13AES256GCMSHA384, .ecdheECDSAWithAES256GCMSHA384, .ecdheRSAWithAES256GCMSHA384: 48
        default: 32
        }
    }

    /// The IV the key schedule derives: 12 bytes, but TLS 1.2 AES-GCM's 4-byte salt (the other 8
    /// bytes of its nonce are explicit in each record, RFC 5288).
    package var ivLength: Int { self.explicitNonceLength == 0 ? 12 : 4 }

    /// The bytes of nonce a record carries before its ciphertext: 8 for TLS 1.2 AES-GCM, none
    /// otherwise (TLS 1.3, and TLS 1.2 ChaCha20-Poly1305 by RFC 7905).
    package var explicitNonceLength: Int {
        switch self {
        case .ecdheECDSAWithAES128GCMSHA256, .ecdheRSAWithAES128GCMSHA256, .ecdheECDSAWithAES256GCMSHA384,
            .ecdheRSAWithAES256GCMSHA384:
            8
        default: 0
        }
    }

    var aead: AEADAlgorithm {
        switch self {
        case .tls13AES128GCMSHA256, .ecdheECDSAWithAES128GCMSHA256, .ecdheRSAWithAES128GCMSHA256:
            .aes128GCM
        case .tls13AES256GCMSHA384, .ecdheECDSAWithAES256GCMSHA384, .ecdheRSAWithAES256GCMSHA384:
            .aes256GCM
        case .tls13ChaCha20Poly1305SHA256, .ecdheRSAWithChaCha20Poly1305SHA256, .ecdheECDSAWithChaCha20Poly1305SHA256:
            .chacha20Poly1305
        }
    }
}

/// TLS 1.2's PRF (RFC 5246, section 5), by OpenSSL's TLS1-PRF.
package enum TLS12KeySchedule {
    /// PRF(secret, label, seed) with the suite's hash: `length` bytes.
    package static func prf(
        secret: [UInt8],
        label: String,
        seed: [UInt8],
        length: Int,
        suite: LeanCipherSuite
    ) -> [UInt8] {
        var output = [UInt8](repeating: 0, count: length)
        let ok = terminus_tls12_prf(
            suite.hashLength == 48 ? 1 : 0,
            secret,
            secret.count,
            label,
            seed,
            seed.count,
            &output,
            length
        )
        precondition(ok == 1, "OpenSSL's TLS1-PRF is part of its default provider")
        return output
    }
}

/// TLS 1.3's key schedule where the record layer needs it (RFC 8446, section 7).
package enum TLS13KeySchedule {
    /// HKDF-Expand-Label(secret, label, context, length) with the suite's hash.
    package static func expandLabel(
        _ secret: [UInt8],
        label: String,
        context: [UInt8] = [],
        length: Int,
        suite: LeanCipherSuite
    ) -> [UInt8] {
        let fullLabel = Array("tls13 ".utf8) + Array(label.utf8)
        precondition(fullLabel.count <= 255 && context.count <= 255 && length <= 0xFFFF)
        var info: [UInt8] = [UInt8(length >> 8), UInt8(length & 0xFF), UInt8(fullLabel.count)]
        info += fullLabel
        info.append(UInt8(context.count))
        info += context
        let key: SymmetricKey
        switch suite.hashLength {
        case 48: key = HKDF<SHA384>.expand(pseudoRandomKey: secret, info: info, outputByteCount: length)
        default: key = HKDF<SHA256>.expand(pseudoRandomKey: secret, info: info, outputByteCount: length)
        }
        return key.withUnsafeBytes { Array($0) }
    }
}
