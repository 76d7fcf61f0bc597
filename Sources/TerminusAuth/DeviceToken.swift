internal import Crypto
internal import FoundationEssentials

/// HMAC-SHA256 device tokens (`docs/protocol.md`, "Tokens").
///
/// A token is the ASCII string `v1.<expiry>.<mac>` where `expiry` is Unix seconds in decimal
/// and `mac` is the unpadded base64url HMAC-SHA256, keyed with the device's secret, of
/// `"terminus-token-v1\n" + deviceID + "\n" + expiry`.
package enum DeviceToken {
    package enum Verdict: Hashable, Sendable {
        case valid(expiresAt: Int64)
        case invalid
        case expired(expiresAt: Int64)
    }

    static let domain = "terminus-token-v1\n"

    /// Makes a token for `deviceID` valid until `expiresAt` (Unix seconds).
    package static func make(deviceID: String, secret: [UInt8], expiresAt: Int64) -> String {
        let mac = Self.mac(deviceID: deviceID, secret: secret, expiry: String(expiresAt))
        return "v1.\(expiresAt).\(Self.base64URL(Data(mac)))"
    }

    /// Checks `token` for `deviceID`. The MAC comparison is constant-time; expiry is checked
    /// only for a token whose MAC is valid, so "expired" never leaks anything about a forgery.
    package static func verify(token: [UInt8], deviceID: String, secret: [UInt8], now: Int64) -> Verdict {
        let parts = token.split(separator: UInt8(ascii: "."), omittingEmptySubsequences: false)
        guard parts.count == 3, parts[0].elementsEqual("v1".utf8),
            parts[1].count <= 19, parts[1].allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }),
            let expiry = Int64(String(decoding: parts[1], as: UTF8.self)),
            let presented = Self.decodeBase64URL(parts[2]), presented.count == SHA256.byteCount
        else {
            return .invalid
        }
        let key = SymmetricKey(data: secret)
        var message = Data(Self.domain.utf8)
        message.append(contentsOf: deviceID.utf8)
        message.append(UInt8(ascii: "\n"))
        message.append(contentsOf: parts[1])
        guard HMAC<SHA256>.isValidAuthenticationCode(presented, authenticating: message, using: key) else {
            return .invalid
        }
        return expiry >= now ? .valid(expiresAt: expiry) : .expired(expiresAt: expiry)
    }

    private static func mac(deviceID: String, secret: [UInt8], expiry: String) -> HashedAuthenticationCode<SHA256> {
        var message = Data(Self.domain.utf8)
        message.append(contentsOf: deviceID.utf8)
        message.append(UInt8(ascii: "\n"))
        message.append(contentsOf: expiry.utf8)
        return HMAC<SHA256>.authenticationCode(for: message, using: SymmetricKey(data: secret))
    }

    static func base64URL(_ data: Data) -> String {
        let mapped = data.base64EncodedString().utf8.compactMap { byte -> UInt8? in
            switch byte {
            case UInt8(ascii: "+"): UInt8(ascii: "-")
            case UInt8(ascii: "/"): UInt8(ascii: "_")
            case UInt8(ascii: "="): nil
            default: byte
            }
        }
        return String(decoding: mapped, as: UTF8.self)
    }

    static func decodeBase64URL(_ bytes: some Collection<UInt8>) -> Data? {
        guard bytes.count <= 64 else { return nil }
        var standard: [UInt8] = []
        standard.reserveCapacity(bytes.count + 3)
        for byte in bytes {
            switch byte {
            case UInt8(ascii: "-"): standard.append(UInt8(ascii: "+"))
            case UInt8(ascii: "_"): standard.append(UInt8(ascii: "/"))
            case UInt8(ascii: "+"), UInt8(ascii: "/"), UInt8(ascii: "="): return nil
            default: standard.append(byte)
            }
        }
        while standard.count % 4 != 0 { standard.append(UInt8(ascii: "=")) }
        return Data(base64Encoded: Data(standard))
    }
}
