/// Preset deflate dictionaries by id (`docs/protocol.md`, "Compression").
///
/// Immutable and shared by every event loop's inflater and deflater.
public struct DictionarySet: Sendable {
    /// The largest dictionary zlib can use for a 32 KiB window.
    public static let maxDictionarySize = 32 * 1024

    private var byID: [UInt16: [UInt8]]

    public init() {
        self.byID = [:]
    }

    /// - Throws: when an id is 0 (reserved), a dictionary is empty, or it exceeds 32 KiB.
    public init(_ dictionaries: [UInt16: [UInt8]]) throws(CompressionError) {
        for (id, bytes) in dictionaries {
            guard id != 0 else { throw CompressionError(.zlib, "dictionary id 0 is reserved") }
            guard !bytes.isEmpty, bytes.count <= Self.maxDictionarySize else {
                throw CompressionError(.zlib, "dictionary \(id) must be 1…\(Self.maxDictionarySize) bytes")
            }
        }
        self.byID = dictionaries
    }

    public subscript(id: UInt16) -> [UInt8]? { self.byID[id] }

    public var ids: [UInt16] { self.byID.keys.sorted() }
}
