internal import CTerminusZlib
public import NIOCore

/// Inflates independent raw-deflate payloads, one at a time, reusing one zlib context.
///
/// One instance per event loop (or per thread): it is not thread-safe, and that is the point.
/// A zlib inflate context with its 32 KiB window costs ~40 KiB; one per connection would cost
/// gigabytes at fleet scale. Each payload is a complete stream: the context is reset before
/// every message, the preset dictionary (if any) set, and the stream inflated with `Z_FINISH`
/// into a scratch buffer of the cap's size, then copied out in one allocation of the exact size.
public final class Inflater {
    private let stream: UnsafeMutablePointer<z_stream>
    private let scratch: UnsafeMutableRawBufferPointer
    private let dictionaries: DictionarySet
    public let limits: InflateLimits

    public init(limits: InflateLimits, dictionaries: DictionarySet = DictionarySet()) throws(CompressionError) {
        self.limits = limits
        self.dictionaries = dictionaries
        self.stream = .allocate(capacity: 1)
        self.stream.initialize(to: z_stream())
        // Negative window bits: raw deflate, no zlib header or checksum.
        let rc = cterminus_inflateInit2(self.stream, -15)
        guard rc == Z_OK else {
            self.stream.deallocate()
            throw CompressionError(.zlib, "inflateInit2 failed (\(rc))")
        }
        self.scratch = .allocate(byteCount: max(limits.maxInflatedSize, 1), alignment: 16)
    }

    deinit {
        inflateEnd(self.stream)
        self.stream.deallocate()
        self.scratch.deallocate()
    }

    /// Inflates `input` (one whole raw deflate stream) into a new buffer.
    public func inflate(
        _ input: ByteBuffer,
        dictionaryID: UInt16?,
        allocator: ByteBufferAllocator
    ) throws(CompressionError) -> ByteBuffer {
        let allowed = self.limits.allowedOutput(compressedSize: input.readableBytes)
        var dictionary: [UInt8]? = nil
        if let dictionaryID {
            guard let found = self.dictionaries[dictionaryID] else {
                throw CompressionError(.unknownDictionary, "dictionary \(dictionaryID) is not configured")
            }
            dictionary = found
        }
        let produced = try self.inflateIntoScratch(input, dictionary: dictionary, allowed: allowed)
        var output = allocator.buffer(capacity: produced)
        output.writeBytes(UnsafeRawBufferPointer(rebasing: self.scratch[0..<produced]))
        return output
    }

    private func inflateIntoScratch(
        _ input: ByteBuffer,
        dictionary: [UInt8]?,
        allowed: Int
    )
        throws(CompressionError) -> Int
    {
        guard inflateReset(self.stream) == Z_OK else { throw CompressionError(.zlib, "inflateReset failed") }
        if let dictionary {
            let rc = dictionary.withUnsafeBufferPointer {
                inflateSetDictionary(self.stream, $0.baseAddress, uInt($0.count))
            }
            guard rc == Z_OK else { throw CompressionError(.zlib, "inflateSetDictionary failed (\(rc))") }
        }
        // One byte beyond the cap tells "exactly at the cap" from "over it".
        let outCapacity = min(allowed + 1, self.scratch.count)
        let result: (rc: Int32, consumedAll: Bool, produced: Int) = input.withUnsafeReadableBytes { inBytes in
            let stream = self.stream
            stream.pointee.next_in = UnsafeMutablePointer(
                mutating: inBytes.baseAddress?.assumingMemoryBound(to: Bytef.self)
            )
            stream.pointee.avail_in = uInt(inBytes.count)
            stream.pointee.next_out = self.scratch.baseAddress!.assumingMemoryBound(to: Bytef.self)
            stream.pointee.avail_out = uInt(outCapacity)
            let rc = CTerminusZlib.inflate(stream, Z_FINISH)
            let produced = outCapacity - Int(stream.pointee.avail_out)
            let consumedAll = stream.pointee.avail_in == 0
            stream.pointee.next_in = nil
            stream.pointee.next_out = nil
            return (rc, consumedAll, produced)
        }
        switch result.rc {
        case Z_STREAM_END:
            guard result.produced <= allowed else {
                throw CompressionError(.limitExceeded, "inflated size exceeds \(allowed) bytes")
            }
            guard result.consumedAll else {
                throw CompressionError(.corrupt, "trailing bytes after the deflate stream")
            }
            return result.produced
        case Z_BUF_ERROR where result.produced >= outCapacity, Z_OK where result.produced >= outCapacity:
            throw CompressionError(.limitExceeded, "inflated size exceeds \(allowed) bytes")
        case Z_NEED_DICT:
            throw CompressionError(.corrupt, "stream needs a dictionary")
        case Z_BUF_ERROR, Z_OK:
            throw CompressionError(.corrupt, "truncated deflate stream")
        case Z_DATA_ERROR:
            throw CompressionError(.corrupt, "invalid deflate data")
        default:
            throw CompressionError(.zlib, "inflate failed (\(result.rc))")
        }
    }
}
