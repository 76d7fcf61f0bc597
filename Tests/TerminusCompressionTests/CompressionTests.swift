import NIOCore
import TerminusCompression
import Testing

@Suite("Inflate and deflate")
struct CompressionTests {
    static let message =
        #"{"type":"payment","amount":1250,"currency":"CNY","merchant":"M-000123","device":"spk-000123","ts":1764460800}"#
    static let dictionary = Array(
        #"{"type":"payment","amount":,"currency":"CNY","merchant":"M-","device":"spk-","ts":}"#.utf8
    )
    let allocator = ByteBufferAllocator()

    @Test("raw deflate round trip, without and with a preset dictionary")
    func roundTrip() throws {
        let dictionaries = try DictionarySet([1: Self.dictionary])
        let deflater = try Deflater(level: 9, dictionaries: dictionaries)
        let inflater = try Inflater(limits: InflateLimits(), dictionaries: dictionaries)
        let input = ByteBuffer(string: Self.message)
        let plain = try deflater.deflate(input, allocator: self.allocator)
        let withDictionary = try deflater.deflate(input, dictionaryID: 1, allocator: self.allocator)
        #expect(withDictionary.readableBytes < plain.readableBytes)
        #expect(try inflater.inflate(plain, dictionaryID: nil, allocator: self.allocator) == input)
        #expect(try inflater.inflate(withDictionary, dictionaryID: 1, allocator: self.allocator) == input)
        // The same context serves the next message after a reset.
        #expect(try inflater.inflate(plain, dictionaryID: nil, allocator: self.allocator) == input)
    }

    @Test("inflating with the wrong or no dictionary fails cleanly")
    func wrongDictionary() throws {
        let dictionaries = try DictionarySet([1: Self.dictionary])
        let deflater = try Deflater(dictionaries: dictionaries)
        let inflater = try Inflater(limits: InflateLimits(), dictionaries: dictionaries)
        let compressed = try deflater.deflate(
            ByteBuffer(string: Self.message),
            dictionaryID: 1,
            allocator: self.allocator
        )
        #expect(throws: CompressionError.self) {
            _ = try inflater.inflate(compressed, dictionaryID: nil, allocator: self.allocator)
        }
        do {
            _ = try inflater.inflate(compressed, dictionaryID: 2, allocator: self.allocator)
            Issue.record("unknown dictionary accepted")
        } catch {
            #expect(error.kind == .unknownDictionary)
        }
    }

    @Test("a zip bomb hits the size cap")
    func zipBomb() throws {
        let deflater = try Deflater(level: 9)
        let bomb = try deflater.deflate(ByteBuffer(repeating: 0, count: 10 * 1024 * 1024), allocator: self.allocator)
        #expect(bomb.readableBytes < 20 * 1024)
        let inflater = try Inflater(
            limits: InflateLimits(maxInflatedSize: 256 * 1024, maxRatio: 100_000, ratioFloor: 0)
        )
        do {
            _ = try inflater.inflate(bomb, dictionaryID: nil, allocator: self.allocator)
            Issue.record("bomb inflated")
        } catch {
            #expect(error.kind == .limitExceeded)
        }
    }

    @Test("the ratio cap applies above the floor")
    func ratio() throws {
        let deflater = try Deflater(level: 9)
        let zeros = try deflater.deflate(ByteBuffer(repeating: 0, count: 100_000), allocator: self.allocator)
        let strict = try Inflater(limits: InflateLimits(maxInflatedSize: 1 << 20, maxRatio: 10, ratioFloor: 4096))
        do {
            _ = try strict.inflate(zeros, dictionaryID: nil, allocator: self.allocator)
            Issue.record("ratio not enforced")
        } catch {
            #expect(error.kind == .limitExceeded)
        }
        // Small messages below the floor pass whatever their ratio.
        let small = try deflater.deflate(ByteBuffer(repeating: 0, count: 4000), allocator: self.allocator)
        #expect(try strict.inflate(small, dictionaryID: nil, allocator: self.allocator).readableBytes == 4000)
    }

    @Test("output exactly at the cap is accepted, one byte more is not")
    func exactCap() throws {
        let deflater = try Deflater()
        let inflater = try Inflater(limits: InflateLimits(maxInflatedSize: 1000, maxRatio: 1000, ratioFloor: 0))
        let atCap = try deflater.deflate(ByteBuffer(repeating: 7, count: 1000), allocator: self.allocator)
        #expect(try inflater.inflate(atCap, dictionaryID: nil, allocator: self.allocator).readableBytes == 1000)
        let over = try deflater.deflate(ByteBuffer(repeating: 7, count: 1001), allocator: self.allocator)
        #expect(throws: CompressionError.self) {
            _ = try inflater.inflate(over, dictionaryID: nil, allocator: self.allocator)
        }
    }

    @Test("garbage, truncated streams and trailing bytes are corrupt")
    func corrupt() throws {
        let inflater = try Inflater(limits: InflateLimits())
        let deflater = try Deflater()
        let good = try deflater.deflate(ByteBuffer(string: Self.message), allocator: self.allocator)
        var truncated = good
        truncated.moveWriterIndex(to: good.writerIndex - 3)
        var trailing = good
        trailing.writeBytes([0xAA, 0xBB])
        for input in [ByteBuffer(bytes: [0xFF, 0xFF, 0xFF, 0xFF]), truncated, trailing, ByteBuffer()] {
            do {
                _ = try inflater.inflate(input, dictionaryID: nil, allocator: self.allocator)
                Issue.record("accepted corrupt input \(input)")
            } catch {
                #expect(error.kind == .corrupt)
            }
        }
        // Still usable afterwards.
        #expect(
            try inflater.inflate(good, dictionaryID: nil, allocator: self.allocator) == ByteBuffer(string: Self.message)
        )
    }

    @Test("dictionary ids and sizes are validated")
    func dictionaryValidation() {
        #expect(throws: CompressionError.self) { _ = try DictionarySet([0: [1]]) }
        #expect(throws: CompressionError.self) { _ = try DictionarySet([1: []]) }
        #expect(throws: CompressionError.self) { _ = try DictionarySet([1: Array(repeating: 1, count: 40_000)]) }
    }
}
