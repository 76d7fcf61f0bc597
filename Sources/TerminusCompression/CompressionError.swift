/// Why a payload could not be inflated or deflated.
public struct CompressionError: Error, Hashable, Sendable, CustomStringConvertible {
    public enum Kind: Hashable, Sendable {
        /// Not a valid raw deflate stream, truncated, or followed by trailing bytes.
        case corrupt
        /// The inflated size would exceed the size or ratio cap (a zip bomb).
        case limitExceeded
        /// The message names a dictionary id that is not configured.
        case unknownDictionary
        /// zlib itself failed (out of memory, bad initialisation).
        case zlib
    }

    public var kind: Kind
    public var message: String

    public init(_ kind: Kind, _ message: String) {
        self.kind = kind
        self.message = message
    }

    public var description: String { "\(self.kind): \(self.message)" }
}
