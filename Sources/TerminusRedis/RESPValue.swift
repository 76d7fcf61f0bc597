package import NIOCore

/// One value of the Redis serialization protocol: RESP2, and the RESP3 types a server answers
/// with after `HELLO 3` (<https://redis.io/docs/latest/develop/reference/protocol-spec/>).
/// Strings stay `ByteBuffer` slices of what was read; `string` decodes one as UTF-8.
package enum RESPValue: Sendable, Hashable {
    /// `+OK`
    case simpleString(ByteBuffer)
    /// `-ERR …` (RESP3 `!` blob errors too): the server refused the command.
    case error(String)
    /// `:42`
    case integer(Int64)
    /// `$5 hello`; RESP2's `$-1` and `*-1`, and RESP3's `_`, are `.null`.
    case bulkString(ByteBuffer)
    case null
    /// `*…`; RESP3 sets (`~`) and pushes (`>`) are arrays too, pushes marked by `isPush` on
    /// the decoder's output.
    case array([RESPValue])
    /// RESP3 `%` map, in the server's order.
    case map([RESPValue: RESPValue])
    /// RESP3 `#t` / `#f`.
    case boolean(Bool)
    /// RESP3 `,` double (`inf`, `-inf`, `nan` included).
    case double(Double)
    /// RESP3 `(` big number, kept as its decimal text; `=` verbatim strings are bulk strings.
    case bigNumber(String)

    /// The value as text: simple and bulk strings, integers, big numbers; nil otherwise.
    package var string: String? {
        switch self {
        case .simpleString(let buffer), .bulkString(let buffer): String(buffer: buffer)
        case .integer(let value): String(value)
        case .bigNumber(let text): text
        default: nil
        }
    }

    /// The value as an integer: integers, and strings that hold one.
    package var int: Int64? {
        switch self {
        case .integer(let value): value
        case .simpleString(let buffer), .bulkString(let buffer): Int64(String(buffer: buffer))
        default: nil
        }
    }

    package var array: [RESPValue]? {
        if case .array(let values) = self { return values }
        return nil
    }

    package var isNull: Bool { self == .null }
}

extension RESPValue: ExpressibleByStringLiteral {
    package init(stringLiteral value: String) {
        self = .bulkString(ByteBuffer(string: value))
    }
}
