internal import CTerminusOpenSSL
internal import Crypto

/// The cipher suites the lean engine's record layer protects records with.
package enum LeanCipherSuite: UInt16, Sendable, CaseIterable {
    case tls13AES128GCMSHA256 = 0x1301
    case tls13AES256GCMSHA384 = 0x1302
    case tls13ChaCha20Poly1305SHA256 = 0x1303

    /// The AEAD key's length in bytes.
    package var keyLength: Int {
        switch self {
        case .tls13AES128GCMSHA256: 16
        case .tls13AES256GCMSHA384, .tls13ChaCha20Poly1305SHA256: 32
        }
    }

    /// The length of the handshake hash, and so of each traffic secret.
    package var hashLength: Int {
        switch self {
        case .tls13AES128GCMSHA256, .tls13ChaCha20Poly1305SHA256: 32
        case .tls13AES256GCMSHA384: 48
        }
    }

    var aead: terminus_aead {
        switch self {
        case .tls13AES128GCMSHA256: TERMINUS_AEAD_AES_128_GCM
        case .tls13AES256GCMSHA384: TERMINUS_AEAD_AES_256_GCM
        case .tls13ChaCha20Poly1305SHA256: TERMINUS_AEAD_CHACHA20_POLY1305
        }
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
