/// One direction's record protection: the traffic secret (kept for KeyUpdate), the AEAD key
/// and IV derived from it, and the next record's sequence number.
package struct TrafficKeys: Sendable {
    package let suite: LeanCipherSuite
    package private(set) var secret: [UInt8]
    package private(set) var key: [UInt8]
    package private(set) var iv: [UInt8]
    package private(set) var sequence: UInt64

    /// Keys for `secret` (a TLS 1.3 application traffic secret), starting at `sequence`.
    package init(suite: LeanCipherSuite, secret: [UInt8], sequence: UInt64 = 0) {
        precondition(secret.count == suite.hashLength, "a traffic secret is as long as the suite's hash")
        self.suite = suite
        self.secret = secret
        self.key = TLS13KeySchedule.expandLabel(secret, label: "key", length: suite.keyLength, suite: suite)
        self.iv = TLS13KeySchedule.expandLabel(secret, label: "iv", length: 12, suite: suite)
        self.sequence = sequence
    }

    /// KeyUpdate (RFC 8446, 7.2): the next secret, its key and IV, sequence 0.
    package mutating func update() {
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

    /// Calls `body` with this record's nonce (the IV with the sequence number XORed into its
    /// last 8 bytes, RFC 8446 5.3), on the stack; then counts the record.
    mutating func withNextNonce<Result>(_ body: (UnsafePointer<UInt8>) throws -> Result) rethrows -> Result {
        let sequence = self.sequence
        self.sequence &+= 1
        return try withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 12) { nonce in
            for index in 0..<12 { nonce[index] = self.iv[index] }
            var value = sequence
            for index in stride(from: 11, through: 4, by: -1) {
                nonce[index] ^= UInt8(truncatingIfNeeded: value)
                value >>= 8
            }
            return try body(UnsafePointer(nonce.baseAddress!))
        }
    }
}
