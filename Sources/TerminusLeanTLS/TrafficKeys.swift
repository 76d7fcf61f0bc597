/// One direction's record protection: the AEAD key and IV, the next record's sequence number,
/// and in TLS 1.3 the traffic secret they come from (kept for KeyUpdate).
/// Stored inline (no heap allocation, no reference counting on the record path): ~110 bytes.
package struct TrafficKeys: Sendable {
    package let suite: LeanCipherSuite
    private var secretStorage: InlineArray<48, UInt8>
    /// The AEAD key, padded with zeros to 32 bytes.
    private var keyStorage: InlineArray<32, UInt8>
    private var ivStorage: InlineArray<12, UInt8>
    package private(set) var sequence: UInt64

    /// The TLS 1.3 traffic secret (empty in TLS 1.2).
    package var secret: [UInt8] {
        Self.bytes(self.secretStorage, count: self.suite.isTLS13 ? self.suite.hashLength : 0)
    }
    package var key: [UInt8] { Self.bytes(self.keyStorage, count: self.suite.keyLength) }
    package var iv: [UInt8] { Self.bytes(self.ivStorage, count: self.suite.ivLength) }

    /// Keys for `secret` (a TLS 1.3 application traffic secret), starting at `sequence`.
    package init(suite: LeanCipherSuite, secret: [UInt8], sequence: UInt64 = 0) {
        precondition(secret.count == suite.hashLength, "a traffic secret is as long as the suite's hash")
        self.suite = suite
        self.secretStorage = Self.storage(secret)
        self.keyStorage = Self.storage(
            TLS13KeySchedule.expandLabel(secret, label: "key", length: suite.keyLength, suite: suite)
        )
        self.ivStorage = Self.storage(TLS13KeySchedule.expandLabel(secret, label: "iv", length: 12, suite: suite))
        self.sequence = sequence
    }

    /// TLS 1.2 keys: `key` and `iv` cut from the key block (no secret: TLS 1.2 has no
    /// KeyUpdate).
    package init(suite: LeanCipherSuite, key: [UInt8], iv: [UInt8], sequence: UInt64) {
        precondition(!suite.isTLS13 && key.count == suite.keyLength && iv.count == suite.ivLength)
        self.suite = suite
        self.secretStorage = InlineArray(repeating: 0)
        self.keyStorage = Self.storage(key)
        self.ivStorage = Self.storage(iv)
        self.sequence = sequence
    }

    private static func storage<let count: Int>(_ bytes: [UInt8]) -> InlineArray<count, UInt8> {
        precondition(bytes.count <= count)
        var storage = InlineArray<count, UInt8>(repeating: 0)
        for (index, byte) in bytes.enumerated() { storage[index] = byte }
        return storage
    }

    private static func bytes<let size: Int>(_ storage: InlineArray<size, UInt8>, count: Int) -> [UInt8] {
        (0..<count).map { storage[$0] }
    }

    /// KeyUpdate (RFC 8446, 7.2): the next secret, its key and IV, sequence 0.
    package mutating func update() {
        precondition(self.suite.isTLS13, "KeyUpdate is TLS 1.3's")
        self = TrafficKeys(
            suite: self.suite,
            secret: TLS13KeySchedule.expandLabel(
                self.secret,
                label: "traffic upd",
                length: self.suite.hashLength,
                suite: self.suite
            )
        )
    }

    /// The sequence number is 64 bits and must never wrap (RFC 8446, 5.3): false when it would.
    package var canProtectAnotherRecord: Bool { self.sequence < UInt64.max }

    /// Calls `body` with the key, this record's nonce (on the stack) and its sequence number;
    /// then counts the record. The nonce is the IV with the sequence number XORed into its last 8 bytes
    /// (RFC 8446 5.3, and RFC 7905 for TLS 1.2's ChaCha20-Poly1305), or for TLS 1.2 AES-GCM the
    /// 4-byte salt followed by `explicit` (RFC 5288): the 8 bytes the record carries, read from
    /// it when opening, the sequence number when sealing (`explicit` nil).
    mutating func withNextNonce<Result>(
        explicit: UnsafePointer<UInt8>? = nil,
        _ body: (_ key: UnsafePointer<UInt8>, _ nonce: UnsafePointer<UInt8>, _ sequence: UInt64) throws -> Result
    ) rethrows -> Result {
        let sequence = self.sequence
        self.sequence &+= 1
        let key = self.keyStorage
        return try withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 12) { nonce in
            if self.suite.ivLength == 4 {
                for index in 0..<4 { nonce[index] = self.ivStorage[index] }
                var value = sequence
                for index in stride(from: 11, through: 4, by: -1) {
                    nonce[index] = explicit.map { $0[index - 4] } ?? UInt8(truncatingIfNeeded: value)
                    value >>= 8
                }
            } else {
                for index in 0..<12 { nonce[index] = self.ivStorage[index] }
                var value = sequence
                for index in stride(from: 11, through: 4, by: -1) {
                    nonce[index] ^= UInt8(truncatingIfNeeded: value)
                    value >>= 8
                }
            }
            return try withUnsafeBytes(of: key) { key in
                try body(
                    key.baseAddress!.assumingMemoryBound(to: UInt8.self),
                    UnsafePointer(nonce.baseAddress!),
                    sequence
                )
            }
        }
    }
}
