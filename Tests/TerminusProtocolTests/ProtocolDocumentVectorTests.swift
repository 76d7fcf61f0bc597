import Foundation
import NIOCore
import TerminusCompression
import TerminusProtocol
import Testing

/// Reads the hex test vectors out of `docs/protocol.md` so that the document and the codec
/// cannot disagree. A vector is an HTML comment `<!-- vector: NAME -->` (or
/// `<!-- vector-error: CODE_NAME -->`), optional `<!-- key: value -->` annotations, then a
/// fenced block of hex bytes.
struct DocumentVector: Sendable, CustomTestStringConvertible {
    var name: String
    var isError: Bool
    var annotations: [String: String]
    var bytes: [UInt8]
    var testDescription: String { self.name }

    static let all: [DocumentVector] = {
        let path = URL(fileURLWithPath: #filePath)
            .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("docs/protocol.md").path
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return [] }
        var vectors: [DocumentVector] = []
        var current: DocumentVector?
        var inBlock = false
        var hex = ""
        for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
            let trimmed = line.trimmingCharacters(in: .whitespaces)
            if inBlock {
                if trimmed == "```" {
                    inBlock = false
                    current?.bytes = Self.parseHex(hex)
                    if let done = current { vectors.append(done) }
                    current = nil
                } else {
                    hex += " " + trimmed
                }
                continue
            }
            if let name = Self.comment(trimmed, "vector") {
                current = DocumentVector(name: name, isError: false, annotations: [:], bytes: [])
            } else if let code = Self.comment(trimmed, "vector-error") {
                current = DocumentVector(name: code, isError: true, annotations: [:], bytes: [])
            } else if current != nil, trimmed.hasPrefix("<!-- "), trimmed.hasSuffix(" -->"),
                let colon = trimmed.firstIndex(of: ":")
            {
                let key = String(trimmed[trimmed.index(trimmed.startIndex, offsetBy: 5)..<colon])
                let value = String(trimmed[trimmed.index(after: colon)...].dropLast(4)).trimmingCharacters(
                    in: .whitespaces
                )
                current?.annotations[key] = value
            } else if current != nil, trimmed.hasPrefix("```") {
                inBlock = true
                hex = ""
            }
        }
        return vectors
    }()

    static func comment(_ line: String, _ kind: String) -> String? {
        let prefix = "<!-- \(kind): "
        guard line.hasPrefix(prefix), line.hasSuffix(" -->") else { return nil }
        return String(line.dropFirst(prefix.count).dropLast(4))
    }

    static func parseHex(_ text: String) -> [UInt8] {
        text.split(separator: " ").map { UInt8($0, radix: 16)! }
    }
}

@Suite("docs/protocol.md test vectors")
struct ProtocolDocumentVectorTests {
    static let frames = DocumentVector.all.filter { !$0.isError }
    static let errors = DocumentVector.all.filter(\.isError)

    @Test("the document has vectors for every frame kind and error vectors")
    func coverage() throws {
        var kinds: Set<FrameType> = []
        for vector in Self.frames {
            var buffer = ByteBuffer(bytes: vector.bytes)
            var decoder = FrameDecoder(maxFrameLength: 65536)
            if let frame = try decoder.decode(buffer: &buffer) { kinds.insert(frame.type) }
        }
        #expect(kinds == Set(FrameType.allCases))
        #expect(Self.errors.count >= 6)
    }

    @Test("each frame vector decodes completely and re-encodes to the same bytes", arguments: Self.frames)
    func decodeAndReencode(_ vector: DocumentVector) throws {
        var buffer = ByteBuffer(bytes: vector.bytes)
        var decoder = FrameDecoder(maxFrameLength: 65536)
        let frame = try #require(try decoder.decode(buffer: &buffer))
        #expect(buffer.readableBytes == 0, "vector \(vector.name) has trailing bytes")
        var encoded = ByteBuffer()
        encoded.writeFrame(frame)
        #expect(Array(encoded.readableBytesView) == vector.bytes)
        if let plaintext = vector.annotations["plaintext"], case .publish(let message) = frame {
            #expect(message.compressed)
            #expect(try Self.inflate(message, dictionary: vector.annotations["dictionary"]) == plaintext)
        }
    }

    @Test("each error vector fails with the documented code", arguments: Self.errors)
    func errorVector(_ vector: DocumentVector) {
        var buffer = ByteBuffer(bytes: vector.bytes)
        var decoder = FrameDecoder(maxFrameLength: 65536)
        do {
            let frame = try decoder.decode(buffer: &buffer)
            if case .publish(let message) = frame {
                try Topic.validatePublishTopic(message.topic, maxLength: 256)
            }
            Issue.record("\(vector.name) vector decoded without error")
        } catch let error as ProtocolError {
            #expect(error.code.name == vector.name)
        } catch {
            Issue.record("unexpected error \(error)")
        }
    }

    /// Inflates with the gateway's own inflater and the documented dictionary text.
    static func inflate(_ message: Message, dictionary: String?) throws -> String {
        let dictionaries =
            try dictionary.map { try DictionarySet([message.dictionaryID ?? 1: Array($0.utf8)]) } ?? DictionarySet()
        let inflater = try Inflater(limits: InflateLimits(), dictionaries: dictionaries)
        let output = try inflater.inflate(
            message.payload,
            dictionaryID: message.dictionaryID,
            allocator: ByteBufferAllocator()
        )
        return String(decoding: output.readableBytesView, as: UTF8.self)
    }
}
