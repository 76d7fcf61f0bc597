internal import CNIOBoringSSL
package import NIOCore

/// The AEAD state of one thread (an event loop): every record of every lean TLS connection on
/// that thread is sealed and opened with it. Use it on its thread only.
package final class AEADContext {
    /// Buffers for sealed records, one per size class: each power of two from `smallestReused`
    /// to `largestReused` bytes. A record takes its class's buffer when nothing holds it any
    /// more (the socket wrote it: most records), and allocates otherwise. Each class
    /// is the capacity NIO would round an exactly sized buffer up to, so a buffer still held (a
    /// socket that is not writable) costs no more than before; a loop keeps at most 4 KiB of
    /// them.
    private var reusable: [ByteBuffer?] = Array(repeating: nil, count: 6)
    package static let smallestReused = 64
    package static let largestReused = 2048
    /// The plaintext of opened records of up to `largestReused` bytes, one after another: each
    /// record's content is a slice of this buffer, and a full one is replaced by a new one
    /// (freed once the last slice of it is gone). A record's plaintext is usually still held
    /// when the loop opens the next one: its message waits in the loop's edge batch until the
    /// end of the tick, so a buffer of its own for each record cost 1.7 allocations per
    /// message at 5,000 devices × 4 in flight (docs/benchmarks.md). Everything that keeps
    /// bytes past its read copies them out (the session's partial frame, the delivery's
    /// encoded messages), so an arena lives about one tick.
    private var plaintexts = ByteBuffer()
    package static let plaintextArenaSize = 16 * 1024

    /// BoringSSL's AEAD state (`EVP_AEAD_CTX`, 576 bytes), keyed afresh for each record with
    /// that record's key: the loop's connections share it, so a connection keeps only its key,
    /// IV and sequence number. swift-nio-ssl's BoringSSL rather than the system OpenSSL 3 the
    /// handshake uses: OpenSSL 3's `EVP` interface looks its parameters up by name on every
    /// record (`EVP_CipherInit_ex2` asks the provider for the key and IV lengths, the tag goes
    /// through `EVP_CIPHER_CTX_ctrl`), 440 ns a 250-byte record against BoringSSL's 230,
    /// key schedule included (docs/benchmarks.md).
    private let state: UnsafeMutablePointer<EVP_AEAD_CTX>

    package init() {
        self.state = .allocate(capacity: 1)
        EVP_AEAD_CTX_zero(self.state)
    }

    deinit {
        EVP_AEAD_CTX_cleanup(self.state)
        self.state.deallocate()
    }

    /// Encrypts `length` bytes from `input` into `output` (the same pointer: in place) with
    /// `key` and the 12-byte `nonce`, authenticating `aad` too, and writes the 16-byte tag to
    /// `tag`. False on failure.
    func seal(
        _ aead: AEADAlgorithm,
        key: UnsafePointer<UInt8>,
        nonce: UnsafePointer<UInt8>,
        aad: UnsafePointer<UInt8>,
        aadLength: Int,
        input: UnsafePointer<UInt8>,
        output: UnsafeMutablePointer<UInt8>,
        length: Int,
        tag: UnsafeMutablePointer<UInt8>
    ) -> Bool {
        guard self.key(aead, key) else { return false }
        defer { EVP_AEAD_CTX_cleanup(self.state) }
        var tagLength = 0
        let sealed = EVP_AEAD_CTX_seal_scatter(
            self.state,
            output,
            tag,
            &tagLength,
            TLS13Records.tagLength,
            nonce,
            12,
            input,
            length,
            nil,
            0,
            aad,
            aadLength
        )
        return Self.succeeded(sealed)
    }

    /// Decrypts `length` bytes from `input` into `output` (or in place) and checks the 16-byte
    /// `tag`: true when the record is authentic (else `output` holds nothing meaningful).
    func open(
        _ aead: AEADAlgorithm,
        key: UnsafePointer<UInt8>,
        nonce: UnsafePointer<UInt8>,
        aad: UnsafePointer<UInt8>,
        aadLength: Int,
        input: UnsafePointer<UInt8>,
        output: UnsafeMutablePointer<UInt8>,
        length: Int,
        tag: UnsafePointer<UInt8>
    ) -> Bool {
        guard self.key(aead, key) else { return false }
        defer { EVP_AEAD_CTX_cleanup(self.state) }
        let opened = EVP_AEAD_CTX_open_gather(
            self.state,
            output,
            nonce,
            12,
            input,
            length,
            tag,
            TLS13Records.tagLength,
            aad,
            aadLength
        )
        return Self.succeeded(opened)
    }

    private func key(_ aead: AEADAlgorithm, _ key: UnsafePointer<UInt8>) -> Bool {
        let algorithm =
            switch aead {
            case .aes128GCM: EVP_aead_aes_128_gcm()
            case .aes256GCM: EVP_aead_aes_256_gcm()
            case .chacha20Poly1305: EVP_aead_chacha20_poly1305()
            }
        return Self.succeeded(
            EVP_AEAD_CTX_init(self.state, algorithm, key, aead.keyLength, TLS13Records.tagLength, nil)
        )
    }

    /// A failure (a record that does not authenticate, above all) leaves an entry on BoringSSL's
    /// error queue for this thread, which swift-nio-ssl reads when one of its own calls fails:
    /// cleared here, so that a forged record on a lean connection is never reported as the
    /// cause of an unrelated nio-ssl connection's error on the same loop.
    private static func succeeded(_ result: CInt) -> Bool {
        guard result == 1 else {
            ERR_clear_error()
            return false
        }
        return true
    }

    /// An empty buffer of at least `capacity` bytes: the loop's reusable one of that size when
    /// nothing else holds it (emptied in place), else a new one. Give it back with `reuse` once
    /// written.
    package func buffer(capacity: Int, allocator: ByteBufferAllocator) -> ByteBuffer {
        guard let slot = Self.slot(capacity: capacity) else { return allocator.buffer(capacity: capacity) }
        guard var buffer = self.reusable[slot] else {
            // At least the smallest class, so that it can be kept.
            return allocator.buffer(capacity: max(capacity, Self.smallestReused))
        }
        // Our reference goes first, so `clear` finds the storage unique unless a write or a
        // session still holds it (then it allocates a fresh one of the same size).
        self.reusable[slot] = nil
        buffer.clear()
        return buffer
    }

    /// `capacity` bytes for `decrypt` to write a record's plaintext to (it returns how many it
    /// wrote); those bytes, as a slice of the loop's plaintext arena (a buffer of their own past
    /// `largestReused`).
    ///
    /// The arena is written past its writer index only, where no slice handed out reaches, and
    /// through a pointer to its storage rather than `ByteBuffer`'s writes: those would copy the
    /// whole arena (its storage is shared with the slices). A slice's holder that writes to it
    /// gets a copy of its own, as with any shared `ByteBuffer`.
    package func plaintext(
        capacity: Int,
        allocator: ByteBufferAllocator,
        decrypt: (UnsafeMutablePointer<UInt8>) -> Int
    ) -> ByteBuffer {
        guard capacity <= Self.largestReused else {
            var own = allocator.buffer(capacity: capacity)
            own.writeWithUnsafeMutableBytes(minimumWritableBytes: capacity) { output in
                decrypt(output.baseAddress!.assumingMemoryBound(to: UInt8.self))
            }
            return own
        }
        if self.plaintexts.writableBytes < capacity {
            self.plaintexts = allocator.buffer(capacity: Self.plaintextArenaSize)
        }
        let start = self.plaintexts.writerIndex
        let written = self.plaintexts.withVeryUnsafeBytes { storage in
            decrypt(UnsafeMutableRawPointer(mutating: storage.baseAddress! + start).assumingMemoryBound(to: UInt8.self))
        }
        precondition(written >= 0 && written <= capacity)
        self.plaintexts.moveWriterIndex(forwardBy: written)
        return self.plaintexts.getSlice(at: start, length: written)!
    }

    /// Bytes of the current plaintext arena handed out so far (tests).
    package var plaintextArenaUsed: Int { self.plaintexts.writerIndex }

    /// Keeps `buffer` (written, and handed on) for the next record of its size.
    package func reuse(_ buffer: ByteBuffer) {
        guard let slot = Self.slot(capacity: buffer.capacity), buffer.capacity == Self.smallestReused << slot else {
            return
        }
        self.reusable[slot] = buffer
    }

    /// Buffers kept for reuse now (tests).
    package var reusableCount: Int { self.reusable.count { $0 != nil } }

    private static func slot(capacity: Int) -> Int? {
        guard capacity <= Self.largestReused else { return nil }
        let size = max(capacity, Self.smallestReused)
        // The power of two NIO rounds `size` up to, counted from 64 bytes.
        return (Int.bitWidth - (size - 1).leadingZeroBitCount) - 6
    }
}

/// TLS record content types (RFC 8446, 5.1).
package enum ContentType: UInt8, Sendable {
    case changeCipherSpec = 20
    case alert = 21
    case handshake = 22
    case applicationData = 23
}

/// What ends a lean TLS connection, each with the alert it sends (RFC 8446, 6.2).
package enum LeanTLSError: Error, Equatable, Sendable {
    /// A record that does not authenticate: `bad_record_mac`.
    case badRecordMAC
    /// A record longer than TLS allows: `record_overflow`.
    case recordOverflow
    /// A record or message not allowed here: `unexpected_message`.
    case unexpectedMessage(String)
    /// A malformed record or message: `decode_error`.
    case decodeError(String)
    /// The sequence number would wrap; the connection must end (RFC 8446, 5.5).
    case sequenceExhausted
    /// The peer sent a fatal alert.
    case alertReceived(level: UInt8, description: UInt8)
    /// OpenSSL refused the handshake (its alert is already written).
    case handshakeFailed(String)
    /// The connection ended without close_notify, after the client had sent something (as
    /// swift-nio-ssl's `uncleanShutdown`; a probe that connects and closes is not one).
    case uncleanShutdown
    case internalError(String)

    /// The alert description this error is reported to the peer with.
    package var alertDescription: UInt8 {
        switch self {
        case .badRecordMAC: 20
        case .recordOverflow: 22
        case .unexpectedMessage: 10
        case .decodeError: 50
        case .sequenceExhausted, .internalError: 80
        case .alertReceived, .handshakeFailed, .uncleanShutdown: 0
        }
    }
}

/// TLS 1.3 record protection (RFC 8446, 5.2 and 5.4): framing, sealing and opening records.
/// Nothing is kept here: each call takes the direction's keys and the thread's AEAD context.
package enum TLS13Records {
    /// The record header's length.
    package static let headerLength = 5
    /// The largest plaintext a record carries (2^14).
    package static let maxPlaintext = 16_384
    /// The largest protected record body: 2^14 + 256 (RFC 8446, 5.2).
    package static let maxCiphertext = 16_384 + 256
    static let tagLength = 16

    /// Takes one complete record (header and body) from the front of `buffer`, or nil when it
    /// holds less than a record; throws at once for a header no TLS 1.3 peer sends after the
    /// handshake, before its body arrives.
    package static func nextRecord(from buffer: inout ByteBuffer) throws -> ByteBuffer? {
        guard buffer.readableBytes >= Self.headerLength,
            let type = buffer.getInteger(at: buffer.readerIndex, as: UInt8.self),
            let length = buffer.getInteger(at: buffer.readerIndex + 3, as: UInt16.self)
        else { return nil }
        guard type == ContentType.applicationData.rawValue else {
            throw LeanTLSError.unexpectedMessage("an unprotected record of type \(type) after the handshake")
        }
        guard Int(length) <= Self.maxCiphertext else { throw LeanTLSError.recordOverflow }
        guard Int(length) >= Self.tagLength + 1 else { throw LeanTLSError.decodeError("a record shorter than its tag") }
        return buffer.readSlice(length: Self.headerLength + Int(length))
    }

    /// Opens `record` (one complete record, as `nextRecord` gives it): its inner content type
    /// and its content, decrypted into the loop's plaintext arena (`AEADContext.plaintext`).
    package static func open(
        _ record: ByteBuffer,
        keys: inout TrafficKeys,
        context: AEADContext,
        allocator: ByteBufferAllocator
    ) throws -> (type: ContentType, content: ByteBuffer) {
        let bodyLength = record.readableBytes - Self.headerLength
        let cipherLength = bodyLength - Self.tagLength
        guard keys.canProtectAnotherRecord else { throw LeanTLSError.sequenceExhausted }
        var authentic = false
        let aead = keys.suite.aead
        var plaintext = context.plaintext(capacity: cipherLength, allocator: allocator) { output in
            record.withUnsafeReadableBytes { input -> Int in
                let base = input.baseAddress!.assumingMemoryBound(to: UInt8.self)
                authentic =
                    keys.withNextNonce { key, nonce, _ in
                        context.open(
                            aead,
                            key: key,
                            nonce: nonce,
                            aad: base,
                            aadLength: Self.headerLength,
                            input: base + Self.headerLength,
                            output: output,
                            length: cipherLength,
                            tag: base + Self.headerLength + cipherLength
                        )
                    }
                return authentic ? cipherLength : 0
            }
        }
        guard authentic else { throw LeanTLSError.badRecordMAC }
        // TLSInnerPlaintext (content, the content type, then zero padding) is at most 2^14 + 1
        // bytes (RFC 8446, 5.4).
        guard cipherLength <= Self.maxPlaintext + 1 else { throw LeanTLSError.recordOverflow }
        var end = plaintext.writerIndex
        while end > plaintext.readerIndex, plaintext.getInteger(at: end - 1, as: UInt8.self) == 0 { end -= 1 }
        guard end > plaintext.readerIndex, let typeByte = plaintext.getInteger(at: end - 1, as: UInt8.self) else {
            throw LeanTLSError.unexpectedMessage("a record with no content type")
        }
        guard let type = ContentType(rawValue: typeByte), type != .changeCipherSpec else {
            throw LeanTLSError.unexpectedMessage("a protected record of inner type \(typeByte)")
        }
        plaintext.moveWriterIndex(to: end - 1)
        return (type, plaintext)
    }

    /// Seals `content` as records of inner type `type` (as many as its length needs), appended
    /// to `output`; each record's inner plaintext padded with `padding` zero bytes (RFC 8446,
    /// 5.4), and at most 2^14 + 1 bytes with its type and padding.
    package static func seal(
        _ content: ByteBuffer,
        type: ContentType,
        keys: inout TrafficKeys,
        context: AEADContext,
        padding: Int = 0,
        into output: inout ByteBuffer
    ) throws {
        precondition(padding >= 0 && padding < Self.maxPlaintext)
        var remaining = content
        repeat {
            let chunk = remaining.readSlice(length: min(remaining.readableBytes, Self.maxPlaintext - padding))!
            let start = output.writerIndex
            Self.writeHeader(innerLength: chunk.readableBytes + 1 + padding, into: &output)
            output.writeImmutableBuffer(chunk)
            output.writeInteger(type.rawValue)
            output.writeRepeatingByte(0, count: padding + Self.tagLength)
            try Self.encryptRecord(at: start, in: &output, keys: &keys, context: context)
        } while remaining.readableBytes > 0
    }

    /// Seals `inner` as one record's whole TLSInnerPlaintext, whatever it holds (the fuzz
    /// target makes records no peer should send with it).
    package static func seal(
        innerPlaintext inner: ByteBuffer,
        keys: inout TrafficKeys,
        context: AEADContext,
        into output: inout ByteBuffer
    ) throws {
        precondition(inner.readableBytes <= Self.maxCiphertext - Self.tagLength)
        let start = output.writerIndex
        Self.writeHeader(innerLength: inner.readableBytes, into: &output)
        output.writeImmutableBuffer(inner)
        output.writeRepeatingByte(0, count: Self.tagLength)
        try Self.encryptRecord(at: start, in: &output, keys: &keys, context: context)
    }

    private static func writeHeader(innerLength: Int, into output: inout ByteBuffer) {
        output.writeInteger(ContentType.applicationData.rawValue)
        output.writeInteger(UInt16(0x0303))
        output.writeInteger(UInt16(innerLength + Self.tagLength))
    }

    /// Encrypts, in place, the record written at `start` (header, inner plaintext, room for
    /// the tag) with the next sequence number.
    private static func encryptRecord(
        at start: Int,
        in output: inout ByteBuffer,
        keys: inout TrafficKeys,
        context: AEADContext
    ) throws {
        guard keys.canProtectAnotherRecord else {
            output.moveWriterIndex(to: start)
            throw LeanTLSError.sequenceExhausted
        }
        let innerLength = output.writerIndex - start - Self.headerLength - Self.tagLength
        let offset = start - output.readerIndex
        let aead = keys.suite.aead
        let sealed = output.withUnsafeMutableReadableBytes { bytes -> Bool in
            let base = bytes.baseAddress!.assumingMemoryBound(to: UInt8.self) + offset
            return keys.withNextNonce { key, nonce, _ in
                context.seal(
                    aead,
                    key: key,
                    nonce: nonce,
                    aad: base,
                    aadLength: Self.headerLength,
                    input: base + Self.headerLength,
                    output: base + Self.headerLength,
                    length: innerLength,
                    tag: base + Self.headerLength + innerLength
                )
            }
        }
        guard sealed else { throw LeanTLSError.internalError("sealing a record failed") }
    }
}
