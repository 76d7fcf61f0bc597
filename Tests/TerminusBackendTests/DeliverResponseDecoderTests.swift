import Foundation
import NIOCore
import SwiftProtobuf
import TerminusAPI
import TerminusTestSupport
import Testing

@testable import TerminusBackend

/// `DeliverResponseDecoder` reads the backend's answers by hand where it can and leaves the rest
/// to SwiftProtobuf: on every input, its answer (or its error) must be SwiftProtobuf's.
@Suite("Deliver response decoder: SwiftProtobuf's answer, read directly")
struct DeliverResponseDecoderTests {
    /// The decoder's answer and SwiftProtobuf's for the same bytes: both fail, or both succeed
    /// with equal messages (unknown fields included).
    static func agree(_ bytes: [UInt8]) -> Bool {
        let ours = try? DeliverResponseDecoder.decode(ByteBuffer(bytes: bytes))
        let theirs = try? Terminus_V1_DeliverResponse(serializedBytes: bytes)
        return ours == theirs
    }

    /// Whether the fast path took the bytes itself.
    static func fast(_ bytes: [UInt8]) -> Terminus_V1_DeliverResponse? {
        bytes.withUnsafeBytes { raw in
            var reader = DeliverResponseDecoder.Reader(bytes: raw)
            return reader.response()
        }
    }

    /// The results the fast path counts before reading them (the size it reserves).
    static func counted(_ bytes: [UInt8]) -> Int {
        bytes.withUnsafeBytes { DeliverResponseDecoder.Reader(bytes: $0).resultCount() }
    }

    static func response(
        results: Int,
        batchID: UInt64,
        using generator: inout SeededGenerator
    )
        -> Terminus_V1_DeliverResponse
    {
        var response = Terminus_V1_DeliverResponse()
        response.batchID = batchID
        let reasons = ["", "queue full", "unknown device", "zu voll: überlastet", "满"]
        let statuses: [Terminus_V1_DeliverResult.Status] = [.accepted, .rejected, .UNRECOGNIZED(7)]
        for _ in 0..<results {
            var result = Terminus_V1_DeliverResult()
            result.status = statuses.randomElement(using: &generator)!
            result.reason = reasons.randomElement(using: &generator)!
            result.retryable = Bool.random(using: &generator)
            response.results.append(result)
        }
        return response
    }

    @Test("a typical answer, as a hex vector: read by the fast path, equal to SwiftProtobuf's")
    func vector() throws {
        // results { status: ACCEPTED }, results { status: REJECTED, reason: "full", retryable: true },
        // batch_id: 300.
        let bytes: [UInt8] = [
            0x0A, 0x00,
            0x0A, 0x0A, 0x08, 0x01, 0x12, 0x04, 0x66, 0x75, 0x6C, 0x6C, 0x18, 0x01,
            0x10, 0xAC, 0x02,
        ]
        let answer = try #require(Self.fast(bytes))
        #expect(answer.batchID == 300)
        #expect(answer.results.count == 2)
        #expect(answer.results[0].status == .accepted && answer.results[0].reason.isEmpty)
        #expect(answer.results[1].status == .rejected && answer.results[1].reason == "full")
        #expect(answer.results[1].retryable)
        #expect(answer == (try Terminus_V1_DeliverResponse(serializedBytes: bytes)))
        #expect(try DeliverResponseDecoder.decode(ByteBuffer(bytes: bytes)) == answer)
    }

    @Test("what SwiftProtobuf writes: the fast path takes every ASCII answer; all answers agree")
    func encoded() throws {
        var generator = SeededGenerator(state: 12)
        var tookFast = 0
        var asciiOnly = 0
        for round in 0..<2_000 {
            let batchID: UInt64 =
                round % 10 == 0 ? UInt64.random(in: (1 << 63)...UInt64.max, using: &generator) : UInt64(round)
            let response = Self.response(
                results: Int.random(in: 0...8, using: &generator),
                batchID: batchID,
                using: &generator
            )
            let bytes: [UInt8] = try response.serializedBytes()
            #expect(try DeliverResponseDecoder.decode(ByteBuffer(bytes: bytes)) == response)
            let ascii = response.results.allSatisfy { $0.reason.utf8.allSatisfy { $0 < 0x80 } }
            // A batch id of 2^63 or more needs a 10-byte varint, which the fast path leaves.
            if ascii && batchID < (1 << 63) {
                asciiOnly += 1
                if Self.fast(bytes) == response { tookFast += 1 }
                #expect(Self.counted(bytes) == response.results.count)
            } else {
                #expect(Self.fast(bytes) == nil)
            }
        }
        #expect(asciiOnly > 100)
        #expect(tookFast == asciiOnly)
    }

    @Test("mutated answers (bytes changed, inserted, dropped, cut short, unknown fields): both agree")
    func mutated() throws {
        var generator = SeededGenerator(state: 99)
        var failures = 0
        var fastSuccesses = 0
        var miscounted = 0
        var disagreements: [[UInt8]] = []
        // Tags and bytes that matter: the fields' own tags, wrong wire types for them, an
        // unknown field, group tags, continuation bytes, invalid UTF-8.
        let interesting: [UInt8] = [
            0x08, 0x0A, 0x10, 0x12, 0x18, 0x09, 0x0B, 0x0C, 0x11, 0x1A, 0x22, 0x80, 0xFF, 0x00, 0xC3,
        ]
        for _ in 0..<20_000 {
            var bytes: [UInt8] = try Self.response(
                results: Int.random(in: 0...4, using: &generator),
                batchID: UInt64.random(in: 0...100_000, using: &generator),
                using: &generator
            ).serializedBytes()
            for _ in 0..<Int.random(in: 1...3, using: &generator) {
                let byte =
                    Bool.random(using: &generator)
                    ? interesting.randomElement(using: &generator)! : UInt8.random(in: 0...255, using: &generator)
                let position = Int.random(in: 0...bytes.count, using: &generator)
                switch Int.random(in: 0..<4, using: &generator) {
                case 0 where position < bytes.count: bytes[position] = byte
                case 1: bytes.insert(byte, at: position)
                case 2 where position < bytes.count: bytes.remove(at: position)
                default: bytes = Array(bytes.prefix(position))
                }
            }
            if !Self.agree(bytes) { disagreements.append(bytes) }
            if (try? Terminus_V1_DeliverResponse(serializedBytes: bytes)) == nil { failures += 1 }
            if let answer = Self.fast(bytes) {
                fastSuccesses += 1
                // Wherever the fast path reads an answer, it reserved exactly its results.
                if Self.counted(bytes) != answer.results.count { miscounted += 1 }
            }
        }
        #expect(miscounted == 0)
        #expect(disagreements.isEmpty, "first: \(disagreements.first.map { $0.map { String($0, radix: 16) } } ?? [])")
        // The mutations reach both outcomes and both paths.
        #expect(failures > 1_000)
        #expect(fastSuccesses > 1_000)
    }

    @Test("an unknown field, a mistyped field, a 10-byte varint, a non-ASCII reason: SwiftProtobuf decides")
    func fallback() throws {
        let cases: [[UInt8]] = [
            [0x10, 0x05, 0x1A, 0x01, 0x41],  // an unknown field 3: kept as unknown
            [0x11, 0, 0, 0, 0, 0, 0, 0, 0],  // batch_id with wire type 1: unknown, not an error
            [0x10, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01],  // UInt64.max
            [0x0A, 0x04, 0x12, 0x02, 0xC3, 0xA9],  // reason "é"
            [0x0A, 0x03, 0x12, 0x01, 0xC3],  // reason: invalid UTF-8 (an error)
            [0x0A, 0x05, 0x08, 0x01],  // truncated (an error)
        ]
        for bytes in cases {
            #expect(Self.fast(bytes) == nil)
            #expect(Self.agree(bytes))
        }
        #expect((try DeliverResponseDecoder.decode(ByteBuffer(bytes: cases[2]))).batchID == UInt64.max)
        #expect((try DeliverResponseDecoder.decode(ByteBuffer(bytes: cases[3]))).results.first?.reason == "é")
        #expect(throws: (any Error).self) { try DeliverResponseDecoder.decode(ByteBuffer(bytes: cases[4])) }
        #expect(throws: (any Error).self) { try DeliverResponseDecoder.decode(ByteBuffer(bytes: cases[5])) }
    }
}
