import NIOCore
import TerminusLeanTLS
import Testing

/// TLS 1.2 record protection with an AEAD (RFC 5246, 5288, 7905): the PRF, the record format
/// and its edges. Interoperability with OpenSSL's client is in `LeanHandlerInteropTests`.
@Suite("Lean TLS: TLS 1.2 records")
struct TLS12RecordTests {
    let allocator = ByteBufferAllocator()
    static let suites = LeanCipherSuite.allCases.filter { !$0.isTLS13 }

    static func keys(_ suite: LeanCipherSuite, sequence: UInt64 = 1) -> TrafficKeys {
        TrafficKeys(
            suite: suite,
            key: (0..<suite.keyLength).map { UInt8($0) },
            iv: (0..<suite.ivLength).map { UInt8(0xA0 + $0) },
            sequence: sequence
        )
    }

    @Test("the PRF: the IETF TLS working group's SHA-256 vector, and SHA-384 against an independent HMAC computation")
    func prf() {
        let sha256 = TLS12KeySchedule.prf(
            secret: [UInt8](hex: "9bbe436ba940f017b17652849a71db35"),
            label: "test label",
            seed: [UInt8](hex: "a0ba9f936cda311827a6f796ffd5198c"),
            length: 100,
            suite: .ecdheECDSAWithAES128GCMSHA256
        )
        #expect(
            sha256
                == [UInt8](
                    hex:
                        "e3f229ba727be17b8d122620557cd453c2aab21d07c3d495329b52d4e61edb5a6b301791e90d35c9c9a46b4e14baf9af"
                        + "0fa022f7077def17abfd3797c0564bab4fbc91666e9def9b97fce34f796789baa48082d122ee42c5a72e5a5110fff70187347b66"
                )
        )
        // Python's hmac module, P_SHA384 by RFC 5246 section 5.
        let sha384 = TLS12KeySchedule.prf(
            secret: [UInt8](hex: "b80b733d6ceefcdc71566ea48e5567df"),
            label: "test label",
            seed: [UInt8](hex: "cd665cf6a8447dd6ff8b27555edb7465"),
            length: 148,
            suite: .ecdheRSAWithAES256GCMSHA384
        )
        #expect(
            sha384
                == [UInt8](
                    hex:
                        "7b0c18e9ced410ed1804f2cfa34a336a1c14dffb4900bb5fd7942107e81c83cde9ca0faa60be9fe34f82b1233c9146a0"
                        + "e534cb400fed2700884f9dc236f80edd8bfa961144c9e8d792eca722a7b32fc3d416d473ebc2c5fd4abfdad05d9184259b"
                        + "5bf8cd4d90fa0d31e2dec479e4f1a26066f2eea9a69236a3e52655c9e9aee691c8f3a26854308d5eaa3be85e0990703d73e56f"
                )
        )
    }

    @Test(
        "every TLS 1.2 suite round-trips content of any length in records of at most 2^14 bytes; AES-GCM records carry the sequence number as explicit nonce",
        arguments: Self.suites
    )
    func roundTrip(suite: LeanCipherSuite) throws {
        let context = AEADContext()
        for length in [0, 1, 16_384, 16_385, 40_000] {
            var writer = Self.keys(suite)
            var reader = Self.keys(suite)
            let content = ByteBuffer(bytes: (0..<length).map { UInt8(truncatingIfNeeded: $0 &* 31) })
            var wire = self.allocator.buffer(capacity: 0)
            try TLS12Records.seal(content, type: .applicationData, keys: &writer, context: context, into: &wire)
            var received = self.allocator.buffer(capacity: length)
            var records = 0
            while let record = try TLS12Records.nextRecord(from: &wire, suite: suite) {
                let bodyLength = Int(record.getInteger(at: record.readerIndex + 3, as: UInt16.self)!)
                #expect(bodyLength <= suite.explicitNonceLength + 16_384 + 16)
                if suite.explicitNonceLength == 8 {
                    #expect(record.getInteger(at: record.readerIndex + 5, as: UInt64.self) == reader.sequence)
                }
                var opened = try TLS12Records.open(record, keys: &reader, context: context, allocator: self.allocator)
                #expect(opened.type == .applicationData)
                received.writeBuffer(&opened.content)
                records += 1
            }
            #expect(received == content)
            #expect(records == max(1, (length + 16_383) / 16_384))
            #expect(writer.sequence == UInt64(records + 1) && reader.sequence == UInt64(records + 1))
        }
    }

    @Test(
        "the header's type and the sequence number are authenticated: a changed type, a replayed or reordered record do not open",
        arguments: Self.suites
    )
    func authenticated(suite: LeanCipherSuite) throws {
        let context = AEADContext()
        var writer = Self.keys(suite)
        var wire = self.allocator.buffer(capacity: 0)
        try TLS12Records.seal(
            ByteBuffer(string: "first"),
            type: .applicationData,
            keys: &writer,
            context: context,
            into: &wire
        )
        try TLS12Records.seal(
            ByteBuffer(string: "second"),
            type: .applicationData,
            keys: &writer,
            context: context,
            into: &wire
        )
        let first = try #require(try TLS12Records.nextRecord(from: &wire, suite: suite))
        let second = try #require(try TLS12Records.nextRecord(from: &wire, suite: suite))
        // An alert's type byte on application data.
        var retyped = first
        retyped.setInteger(ContentType.alert.rawValue, at: retyped.readerIndex)
        var reader = Self.keys(suite)
        #expect(throws: LeanTLSError.badRecordMAC) {
            try TLS12Records.open(retyped, keys: &reader, context: context, allocator: self.allocator)
        }
        // The second record first: its sequence number is not the reader's.
        reader = Self.keys(suite)
        #expect(throws: LeanTLSError.badRecordMAC) {
            try TLS12Records.open(second, keys: &reader, context: context, allocator: self.allocator)
        }
        reader = Self.keys(suite)
        #expect(
            try TLS12Records.open(first, keys: &reader, context: context, allocator: self.allocator).content
                == ByteBuffer(string: "first")
        )
        #expect(throws: LeanTLSError.badRecordMAC) {
            try TLS12Records.open(first, keys: &reader, context: context, allocator: self.allocator)
        }
    }

    @Test(
        "headers refused before their body: change_cipher_spec, an unknown type, another version, too long, too short"
    )
    func headers() throws {
        let suite = LeanCipherSuite.ecdheECDSAWithAES128GCMSHA256
        var ccs = ByteBuffer(bytes: [20, 3, 3, 0, 1, 1])
        #expect(throws: LeanTLSError.unexpectedMessage("a record of type 20 after the handshake")) {
            try TLS12Records.nextRecord(from: &ccs, suite: suite)
        }
        var unknown = ByteBuffer(bytes: [99, 3, 3, 0, 40])
        #expect(throws: LeanTLSError.self) { try TLS12Records.nextRecord(from: &unknown, suite: suite) }
        var tls10 = ByteBuffer(bytes: [23, 3, 1, 0, 40])
        #expect(throws: LeanTLSError.decodeError("a record of version 769 in TLS 1.2")) {
            try TLS12Records.nextRecord(from: &tls10, suite: suite)
        }
        var long = ByteBuffer(bytes: [23, 3, 3, 0x48, 0x01])
        #expect(throws: LeanTLSError.recordOverflow) { try TLS12Records.nextRecord(from: &long, suite: suite) }
        var short = ByteBuffer(bytes: [23, 3, 3, 0, 23])
        #expect(throws: LeanTLSError.decodeError("a record shorter than its nonce and tag")) {
            try TLS12Records.nextRecord(from: &short, suite: suite)
        }
        // ChaCha20-Poly1305 has no explicit nonce: 16 bytes (an empty record) frame.
        var empty = ByteBuffer(bytes: [23, 3, 3, 0, 16] + [UInt8](repeating: 0, count: 16))
        #expect(try TLS12Records.nextRecord(from: &empty, suite: .ecdheECDSAWithChaCha20Poly1305SHA256) != nil)
    }

    @Test("a record with more than 2^14 bytes of plaintext is refused as record_overflow, even when authentic")
    func plaintextLimit() throws {
        let suite = LeanCipherSuite.ecdheECDSAWithAES128GCMSHA256
        // 2^14 + 1 bytes fit TLS 1.2's ciphertext bound but not its plaintext bound.
        var header = ByteBuffer(bytes: [23, 3, 3])
        header.writeInteger(UInt16(8 + 16_385 + 16))
        header.writeRepeatingByte(0, count: 8 + 16_385 + 16)
        let record = try #require(try TLS12Records.nextRecord(from: &header, suite: suite))
        var reader = Self.keys(suite)
        #expect(throws: LeanTLSError.recordOverflow) {
            try TLS12Records.open(record, keys: &reader, context: AEADContext(), allocator: self.allocator)
        }
    }

    @Test("the last sequence number is never used")
    func sequenceExhaustion() throws {
        var keys = Self.keys(.ecdheECDSAWithChaCha20Poly1305SHA256, sequence: .max)
        var output = self.allocator.buffer(capacity: 64)
        #expect(throws: LeanTLSError.sequenceExhausted) {
            try TLS12Records.seal(
                ByteBuffer(string: "x"),
                type: .applicationData,
                keys: &keys,
                context: AEADContext(),
                into: &output
            )
        }
        #expect(output.readableBytes == 0)
    }
}
