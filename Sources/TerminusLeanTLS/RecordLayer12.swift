package import NIOCore

/// TLS 1.2 record protection with an AEAD (RFC 5246 6.2.3.3; RFC 5288 for AES-GCM, RFC 7905 for
/// ChaCha20-Poly1305): the content type stays in the header, the additional data is the
/// sequence number, type, version and plaintext length, and AES-GCM records carry 8 bytes of
/// explicit nonce (the sequence number, as OpenSSL and BoringSSL send it).
package enum TLS12Records {
    package static let headerLength = 5
    /// The largest plaintext a record carries (2^14).
    package static let maxPlaintext = 16_384
    /// The largest record body TLS 1.2 allows (2^14 + 2048, RFC 5246 6.2.3).
    package static let maxCiphertext = 16_384 + 2_048
    static let tagLength = 16

    /// Takes one complete record from the front of `buffer`, or nil when it holds less than a
    /// record; throws at once for a header no TLS 1.2 peer sends after the handshake.
    package static func nextRecord(from buffer: inout ByteBuffer, suite: LeanCipherSuite) throws -> ByteBuffer? {
        guard buffer.readableBytes >= Self.headerLength,
            let type = buffer.getInteger(at: buffer.readerIndex, as: UInt8.self),
            let version = buffer.getInteger(at: buffer.readerIndex + 1, as: UInt16.self),
            let length = buffer.getInteger(at: buffer.readerIndex + 3, as: UInt16.self)
        else { return nil }
        guard let contentType = ContentType(rawValue: type), contentType != .changeCipherSpec else {
            throw LeanTLSError.unexpectedMessage("a record of type \(type) after the handshake")
        }
        guard version == 0x0303 else { throw LeanTLSError.decodeError("a record of version \(version) in TLS 1.2") }
        guard Int(length) <= Self.maxCiphertext else { throw LeanTLSError.recordOverflow }
        guard Int(length) >= suite.explicitNonceLength + Self.tagLength else {
            throw LeanTLSError.decodeError("a record shorter than its nonce and tag")
        }
        return buffer.readSlice(length: Self.headerLength + Int(length))
    }

    /// Opens `record` (one complete record, as `nextRecord` gives it): its content type and
    /// its content, decrypted into the loop's plaintext arena (`AEADContext.plaintext`).
    package static func open(
        _ record: ByteBuffer,
        keys: inout TrafficKeys,
        context: AEADContext,
        allocator: ByteBufferAllocator
    ) throws -> (type: ContentType, content: ByteBuffer) {
        let explicit = keys.suite.explicitNonceLength
        let cipherLength = record.readableBytes - Self.headerLength - explicit - Self.tagLength
        guard cipherLength <= Self.maxPlaintext else { throw LeanTLSError.recordOverflow }
        guard keys.canProtectAnotherRecord else { throw LeanTLSError.sequenceExhausted }
        let type = ContentType(rawValue: record.getInteger(at: record.readerIndex, as: UInt8.self)!)!
        var authentic = false
        let aead = keys.suite.aead
        let plaintext = context.plaintext(capacity: cipherLength, allocator: allocator) { output in
            record.withUnsafeReadableBytes { input -> Int in
                let base = input.baseAddress!.assumingMemoryBound(to: UInt8.self)
                let ciphertext = base + Self.headerLength + explicit
                authentic =
                    keys.withNextNonce(explicit: explicit > 0 ? base + Self.headerLength : nil) {
                        key,
                        nonce,
                        sequence in
                        Self.withAdditionalData(sequence: sequence, header: base, length: cipherLength) { aad in
                            context.open(
                                aead,
                                key: key,
                                nonce: nonce,
                                aad: aad,
                                aadLength: 13,
                                input: ciphertext,
                                output: output,
                                length: cipherLength,
                                tag: ciphertext + cipherLength
                            )
                        }
                    }
                return authentic ? cipherLength : 0
            }
        }
        guard authentic else { throw LeanTLSError.badRecordMAC }
        return (type, plaintext)
    }

    /// Seals `content` as records of type `type` (as many as its length needs; one empty
    /// record for empty content), appended to `output`.
    package static func seal(
        _ content: ByteBuffer,
        type: ContentType,
        keys: inout TrafficKeys,
        context: AEADContext,
        into output: inout ByteBuffer
    ) throws {
        let explicit = keys.suite.explicitNonceLength
        var remaining = content
        repeat {
            guard keys.canProtectAnotherRecord else { throw LeanTLSError.sequenceExhausted }
            let chunk = remaining.readSlice(length: min(remaining.readableBytes, Self.maxPlaintext))!
            let length = chunk.readableBytes
            let start = output.writerIndex
            output.writeInteger(type.rawValue)
            output.writeInteger(UInt16(0x0303))
            output.writeInteger(UInt16(explicit + length + Self.tagLength))
            if explicit > 0 { output.writeInteger(keys.sequence) }
            output.writeImmutableBuffer(chunk)
            output.writeRepeatingByte(0, count: Self.tagLength)
            let offset = start - output.readerIndex
            let aead = keys.suite.aead
            let sealed = output.withUnsafeMutableReadableBytes { bytes -> Bool in
                let base = bytes.baseAddress!.assumingMemoryBound(to: UInt8.self) + offset
                let plaintext = base + Self.headerLength + explicit
                return keys.withNextNonce { key, nonce, sequence in
                    Self.withAdditionalData(sequence: sequence, header: base, length: length) { aad in
                        context.seal(
                            aead,
                            key: key,
                            nonce: nonce,
                            aad: aad,
                            aadLength: 13,
                            input: plaintext,
                            output: plaintext,
                            length: length,
                            tag: plaintext + length
                        )
                    }
                }
            }
            guard sealed else { throw LeanTLSError.internalError("sealing a record failed") }
        } while remaining.readableBytes > 0
    }

    /// The 13 bytes of additional data (RFC 5246, 6.2.3.3): the sequence number, the header's
    /// type and version, and the plaintext's length; on the stack.
    private static func withAdditionalData<Result>(
        sequence: UInt64,
        header: UnsafePointer<UInt8>,
        length: Int,
        _ body: (UnsafePointer<UInt8>) -> Result
    ) -> Result {
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 13) { aad in
            var value = sequence
            for index in stride(from: 7, through: 0, by: -1) {
                aad[index] = UInt8(truncatingIfNeeded: value)
                value >>= 8
            }
            aad[8] = header[0]
            aad[9] = header[1]
            aad[10] = header[2]
            aad[11] = UInt8(truncatingIfNeeded: length >> 8)
            aad[12] = UInt8(truncatingIfNeeded: length)
            return body(UnsafePointer(aad.baseAddress!))
        }
    }
}
