internal import CTerminusZlib
public import NIOCore

/// Deflates independent payloads into raw deflate streams, reusing one zlib context.
///
/// Not thread-safe: one per event loop or per client. Each call produces a complete stream
/// (reset before, `Z_FINISH` after) that `Inflater` accepts with the same dictionary.
public final class Deflater {
    private let stream: UnsafeMutablePointer<z_stream>
    private let dictionaries: DictionarySet

    /// - Parameter level: zlib level 1 (fast) … 9 (small).
    public init(level: Int32 = 6, dictionaries: DictionarySet = DictionarySet()) throws(CompressionError) {
        self.dictionaries = dictionaries
        self.stream = .allocate(capacity: 1)
        self.stream.initialize(to: z_stream())
        let rc = cterminus_deflateInit2(self.stream, level, -15, 8)
        guard rc == Z_OK else {
            self.stream.deallocate()
            throw CompressionError(.zlib, "deflateInit2 failed (\(rc))")
        }
    }

    deinit {
        deflateEnd(self.stream)
        self.stream.deallocate()
    }

    public func deflate(
        _ input: ByteBuffer,
        dictionaryID: UInt16? = nil,
        allocator: ByteBufferAllocator
    )
        throws(CompressionError) -> ByteBuffer
    {
        guard deflateReset(self.stream) == Z_OK else { throw CompressionError(.zlib, "deflateReset failed") }
        if let dictionaryID {
            guard let dictionary = self.dictionaries[dictionaryID] else {
                throw CompressionError(.unknownDictionary, "dictionary \(dictionaryID) is not configured")
            }
            let rc = dictionary.withUnsafeBufferPointer {
                deflateSetDictionary(self.stream, $0.baseAddress, uInt($0.count))
            }
            guard rc == Z_OK else { throw CompressionError(.zlib, "deflateSetDictionary failed (\(rc))") }
        }
        let bound = Int(deflateBound(self.stream, uLong(input.readableBytes)))
        var output = allocator.buffer(capacity: bound)
        let rc: Int32 = input.withUnsafeReadableBytes { inBytes in
            output.writeWithUnsafeMutableBytes(minimumWritableBytes: bound) { outBytes in
                let stream = self.stream
                stream.pointee.next_in = UnsafeMutablePointer(
                    mutating: inBytes.baseAddress?.assumingMemoryBound(to: Bytef.self)
                )
                stream.pointee.avail_in = uInt(inBytes.count)
                stream.pointee.next_out = outBytes.baseAddress!.assumingMemoryBound(to: Bytef.self)
                stream.pointee.avail_out = uInt(outBytes.count)
                let rc = CTerminusZlib.deflate(stream, Z_FINISH)
                let produced = outBytes.count - Int(stream.pointee.avail_out)
                stream.pointee.next_in = nil
                stream.pointee.next_out = nil
                return rc == Z_STREAM_END ? produced : 0
            }
            return output.readableBytes > 0 || input.readableBytes == 0 ? Z_STREAM_END : Z_BUF_ERROR
        }
        guard rc == Z_STREAM_END else { throw CompressionError(.zlib, "deflate did not finish") }
        return output
    }
}
