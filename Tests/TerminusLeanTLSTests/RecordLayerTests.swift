import CNIOBoringSSL
import NIOCore
import TerminusLeanTLS
import Testing

extension Array where Element == UInt8 {
    init(hex: String) {
        var bytes: [UInt8] = []
        var index = hex.startIndex
        while index < hex.endIndex {
            let next = hex.index(index, offsetBy: 2)
            bytes.append(UInt8(hex[index..<next], radix: 16)!)
            index = next
        }
        self = bytes
    }
}

extension ByteBuffer {
    init(hex: String) { self.init(bytes: [UInt8](hex: hex)) }
    var bytes: [UInt8] { Array(self.readableBytesView) }
}

/// TLS 1.3 record protection against RFC 8448's traces, then its edges.
@Suite("Lean TLS: TLS 1.3 records")
struct RecordLayerTests {
    let suite = LeanCipherSuite.tls13AES128GCMSHA256
    let allocator = ByteBufferAllocator()

    @Test("traffic keys and IVs are derived from the secrets as RFC 8448 shows")
    func keySchedule() {
        let server = TrafficKeys(suite: self.suite, secret: [UInt8](hex: RFC8448.serverApSecret))
        #expect(server.key == [UInt8](hex: RFC8448.serverApKey))
        #expect(server.iv == [UInt8](hex: RFC8448.serverApIv))
        let client = TrafficKeys(suite: self.suite, secret: [UInt8](hex: RFC8448.clientApSecret))
        #expect(client.key == [UInt8](hex: RFC8448.clientApKey))
        #expect(client.iv == [UInt8](hex: RFC8448.clientApIv))
        let handshake = TrafficKeys(suite: self.suite, secret: [UInt8](hex: RFC8448.serverHsSecret))
        #expect(handshake.key == [UInt8](hex: RFC8448.serverHsKey))
        #expect(handshake.iv == [UInt8](hex: RFC8448.serverHsIv))
    }

    @Test(
        "the server's records are sealed byte for byte as in RFC 8448: the ticket (sequence 0), data (1), close_notify (2)"
    )
    func sealAsTheServer() throws {
        let context = AEADContext()
        var keys = TrafficKeys(suite: self.suite, secret: [UInt8](hex: RFC8448.serverApSecret))
        var output = self.allocator.buffer(capacity: 512)
        try TLS13Records.seal(
            ByteBuffer(hex: RFC8448.newSessionTicketPayload),
            type: .handshake,
            keys: &keys,
            context: context,
            into: &output
        )
        #expect(output.bytes == [UInt8](hex: RFC8448.newSessionTicketRecord))
        output.clear()
        try TLS13Records.seal(
            ByteBuffer(bytes: Array(0..<50)),
            type: .applicationData,
            keys: &keys,
            context: context,
            into: &output
        )
        #expect(output.bytes == [UInt8](hex: RFC8448.serverAppDataRecord))
        output.clear()
        try TLS13Records.seal(ByteBuffer(bytes: [1, 0]), type: .alert, keys: &keys, context: context, into: &output)
        #expect(output.bytes == [UInt8](hex: RFC8448.serverAlertRecord))
        #expect(keys.sequence == 3)
    }

    @Test("the client's records of RFC 8448 open, coalesced in one read: data (sequence 0), then close_notify (1)")
    func openAsTheServer() throws {
        let context = AEADContext()
        var keys = TrafficKeys(suite: self.suite, secret: [UInt8](hex: RFC8448.clientApSecret))
        var input = ByteBuffer(hex: RFC8448.clientAppDataRecord + RFC8448.clientAlertRecord)
        let first = try #require(try TLS13Records.nextRecord(from: &input))
        let data = try TLS13Records.open(first, keys: &keys, context: context, allocator: self.allocator)
        #expect(data.type == .applicationData)
        #expect(data.content.bytes == Array(0..<50))
        let second = try #require(try TLS13Records.nextRecord(from: &input))
        let alert = try TLS13Records.open(second, keys: &keys, context: context, allocator: self.allocator)
        #expect(alert.type == .alert)
        #expect(alert.content.bytes == [1, 0])
        #expect(input.readableBytes == 0)
        #expect(try TLS13Records.nextRecord(from: &input) == nil)
    }

    @Test("a record split anywhere waits for its last byte")
    func split() throws {
        let record = [UInt8](hex: RFC8448.clientAppDataRecord)
        for cut in [1, 4, 5, 6, record.count - 1] {
            var input = ByteBuffer(bytes: record[0..<cut])
            #expect(try TLS13Records.nextRecord(from: &input) == nil)
            #expect(input.readableBytes == cut)
            input.writeBytes(record[cut...])
            #expect(try TLS13Records.nextRecord(from: &input)?.readableBytes == record.count)
        }
    }

    @Test("a changed byte, a replayed record, or a record under the wrong key is bad_record_mac")
    func tampering() throws {
        let context = AEADContext()
        let record = [UInt8](hex: RFC8448.clientAppDataRecord)
        for position in [0, 3, 5, 20, record.count - 1] {
            var changed = record
            changed[position] ^= 0x01
            var keys = TrafficKeys(suite: self.suite, secret: [UInt8](hex: RFC8448.clientApSecret))
            var input = ByteBuffer(bytes: changed)
            // A changed header may already be refused as a header.
            guard let framed = try? TLS13Records.nextRecord(from: &input) else { continue }
            #expect(throws: LeanTLSError.badRecordMAC) {
                try TLS13Records.open(framed, keys: &keys, context: context, allocator: self.allocator)
            }
        }
        // The same record again: its sequence number has moved on.
        var keys = TrafficKeys(suite: self.suite, secret: [UInt8](hex: RFC8448.clientApSecret))
        _ = try TLS13Records.open(ByteBuffer(bytes: record), keys: &keys, context: context, allocator: self.allocator)
        #expect(throws: LeanTLSError.badRecordMAC) {
            try TLS13Records.open(ByteBuffer(bytes: record), keys: &keys, context: context, allocator: self.allocator)
        }
        var serverKeys = TrafficKeys(suite: self.suite, secret: [UInt8](hex: RFC8448.serverApSecret))
        #expect(throws: LeanTLSError.badRecordMAC) {
            try TLS13Records.open(
                ByteBuffer(bytes: record),
                keys: &serverKeys,
                context: context,
                allocator: self.allocator
            )
        }
        // BoringSSL's error queue of this thread is left empty, as swift-nio-ssl's connections
        // on the same loop read it when one of their own calls fails.
        #expect(ERR_peek_error() == 0)
    }

    @Test(
        "opened plaintexts are consecutive slices of the loop's arena: each keeps its bytes as later ones are written, a full arena is replaced, a large one gets its own buffer"
    )
    func plaintextArena() throws {
        let context = AEADContext()
        func bytes(_ seed: Int, _ count: Int) -> [UInt8] {
            (0..<count).map { UInt8(truncatingIfNeeded: seed &* 7 &+ $0) }
        }
        func open(_ seed: Int, capacity: Int, written: Int) -> ByteBuffer {
            context.plaintext(capacity: capacity, allocator: self.allocator) { output in
                for (index, byte) in bytes(seed, written).enumerated() { output[index] = byte }
                return written
            }
        }
        // 100 records of up to 300 bytes, 280 written (a record's padding and type are dropped
        // the same way): a record goes to the arena while 300 bytes are left in it, so 58 fit
        // in one of 16 KiB, and the other 42 go to a second.
        var held: [ByteBuffer] = []
        for seed in 0..<100 { held.append(open(seed, capacity: 300, written: 280)) }
        let perArena = (AEADContext.plaintextArenaSize - 300) / 280 + 1
        #expect(perArena == 58)
        #expect(context.plaintextArenaUsed == (100 - perArena) * 280)
        for (seed, plaintext) in held.enumerated() { #expect(Array(plaintext.readableBytesView) == bytes(seed, 280)) }
        // A holder that writes to its slice gets a copy of its own; its neighbour is untouched,
        // and so is the next record opened after it.
        held[98].writeBytes([1, 2, 3])
        #expect(Array(held[98].readableBytesView) == bytes(98, 280) + [1, 2, 3])
        let next = open(100, capacity: 300, written: 300)
        #expect(Array(held[99].readableBytesView) == bytes(99, 280))
        #expect(Array(next.readableBytesView) == bytes(100, 300))
        // Past `largestReused`: a buffer of its own, and the arena does not move.
        let used = context.plaintextArenaUsed
        let large = open(101, capacity: AEADContext.largestReused + 1, written: AEADContext.largestReused + 1)
        #expect(Array(large.readableBytesView) == bytes(101, AEADContext.largestReused + 1))
        #expect(context.plaintextArenaUsed == used)
        // A record that did not authenticate writes nothing and takes no room.
        #expect(open(102, capacity: 300, written: 0).readableBytes == 0)
        #expect(context.plaintextArenaUsed == used)
    }

    @Test("headers no TLS 1.3 peer sends after the handshake are refused before the body arrives")
    func headers() throws {
        var handshake = ByteBuffer(bytes: [22, 3, 3, 0, 40])
        #expect(throws: LeanTLSError.unexpectedMessage("an unprotected record of type 22 after the handshake")) {
            try TLS13Records.nextRecord(from: &handshake)
        }
        var long = ByteBuffer(bytes: [23, 3, 3, 0x41, 0x01])
        #expect(throws: LeanTLSError.recordOverflow) { try TLS13Records.nextRecord(from: &long) }
        var short = ByteBuffer(bytes: [23, 3, 3, 0, 16])
        #expect(throws: LeanTLSError.decodeError("a record shorter than its tag")) {
            try TLS13Records.nextRecord(from: &short)
        }
        var longest = ByteBuffer(bytes: [23, 3, 3, 0x41, 0x00])
        #expect(try TLS13Records.nextRecord(from: &longest) == nil)
    }

    @Test(
        "every suite round-trips content of any length, split into records of at most 2^14 bytes, with and without padding",
        arguments: LeanCipherSuite.allCases.filter(\.isTLS13)
    )
    func roundTrip(suite: LeanCipherSuite) throws {
        let context = AEADContext()
        let secret = [UInt8](repeating: 7, count: suite.hashLength)
        for length in [0, 1, 16_383, 16_384, 16_385, 40_000] {
            for padding in [0, 5] {
                var writer = TrafficKeys(suite: suite, secret: secret)
                var reader = TrafficKeys(suite: suite, secret: secret)
                let content = ByteBuffer(bytes: (0..<length).map { UInt8(truncatingIfNeeded: $0 &* 31) })
                var wire = self.allocator.buffer(capacity: 0)
                try TLS13Records.seal(
                    content,
                    type: .applicationData,
                    keys: &writer,
                    context: context,
                    padding: padding,
                    into: &wire
                )
                var received = self.allocator.buffer(capacity: length)
                var records = 0
                while let record = try TLS13Records.nextRecord(from: &wire) {
                    #expect(record.readableBytes <= 5 + 16_384 + 256)
                    var opened = try TLS13Records.open(
                        record,
                        keys: &reader,
                        context: context,
                        allocator: self.allocator
                    )
                    #expect(opened.type == .applicationData)
                    received.writeBuffer(&opened.content)
                    records += 1
                }
                #expect(received == content)
                let perRecord = 16_384 - padding
                #expect(records == max(1, (length + perRecord - 1) / perRecord))
                #expect(writer.sequence == UInt64(records) && reader.sequence == UInt64(records))
            }
        }
    }

    @Test(
        "KeyUpdate: both sides move to the next secret, sequence 0; the old keys no longer open",
        arguments: LeanCipherSuite.allCases.filter(\.isTLS13)
    )
    func keyUpdate(suite: LeanCipherSuite) throws {
        let context = AEADContext()
        var writer = TrafficKeys(suite: suite, secret: [UInt8](repeating: 3, count: suite.hashLength), sequence: 41)
        var reader = writer
        let old = writer
        writer.update()
        reader.update()
        #expect(writer.sequence == 0 && writer.secret != old.secret && writer.key != old.key && writer.iv != old.iv)
        var wire = self.allocator.buffer(capacity: 64)
        try TLS13Records.seal(
            ByteBuffer(string: "after the update"),
            type: .applicationData,
            keys: &writer,
            context: context,
            into: &wire
        )
        var stale = old
        let record = try #require(try TLS13Records.nextRecord(from: &wire))
        #expect(throws: LeanTLSError.badRecordMAC) {
            try TLS13Records.open(record, keys: &stale, context: context, allocator: self.allocator)
        }
        let opened = try TLS13Records.open(record, keys: &reader, context: context, allocator: self.allocator)
        #expect(opened.content == ByteBuffer(string: "after the update"))
    }

    @Test(
        "inner plaintexts no peer should send: no content type, change_cipher_spec, unknown types, more than 2^14 + 1 bytes"
    )
    func innerPlaintexts() throws {
        let context = AEADContext()
        let secret = [UInt8](repeating: 9, count: 32)
        let cases: [([UInt8], LeanTLSError)] = [
            ([0, 0, 0, 0], .unexpectedMessage("a record with no content type")),
            ([1, 2, 3, 20], .unexpectedMessage("a protected record of inner type 20")),
            ([1, 2, 3, 99, 0, 0], .unexpectedMessage("a protected record of inner type 99")),
            ([UInt8](repeating: 7, count: 16_384) + [23, 0], .recordOverflow),
        ]
        for (inner, error) in cases {
            var writer = TrafficKeys(suite: self.suite, secret: secret)
            var reader = TrafficKeys(suite: self.suite, secret: secret)
            var wire = self.allocator.buffer(capacity: 0)
            try TLS13Records.seal(
                innerPlaintext: ByteBuffer(bytes: inner),
                keys: &writer,
                context: context,
                into: &wire
            )
            let record = try #require(try TLS13Records.nextRecord(from: &wire))
            #expect(throws: error) {
                try TLS13Records.open(record, keys: &reader, context: context, allocator: self.allocator)
            }
        }
        // The largest allowed: 2^14 bytes of content, the type, no padding.
        var writer = TrafficKeys(suite: self.suite, secret: secret)
        var reader = TrafficKeys(suite: self.suite, secret: secret)
        var wire = self.allocator.buffer(capacity: 0)
        let largest = [UInt8](repeating: 7, count: 16_384) + [23]
        try TLS13Records.seal(innerPlaintext: ByteBuffer(bytes: largest), keys: &writer, context: context, into: &wire)
        let record = try #require(try TLS13Records.nextRecord(from: &wire))
        let opened = try TLS13Records.open(record, keys: &reader, context: context, allocator: self.allocator)
        #expect(opened.type == .applicationData && opened.content.readableBytes == 16_384)
    }

    @Test("the last sequence number is never used: the connection must end instead")
    func sequenceExhaustion() throws {
        let context = AEADContext()
        var keys = TrafficKeys(suite: self.suite, secret: [UInt8](repeating: 1, count: 32), sequence: .max)
        var output = self.allocator.buffer(capacity: 64)
        #expect(throws: LeanTLSError.sequenceExhausted) {
            try TLS13Records.seal(
                ByteBuffer(string: "x"),
                type: .applicationData,
                keys: &keys,
                context: context,
                into: &output
            )
        }
        #expect(output.readableBytes == 0)
    }
}
