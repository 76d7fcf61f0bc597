package import NIOCore

/// Decodes RESP2 and RESP3 values from a byte stream, one complete top-level value at a time
/// (`NIOSingleStepByteToMessageDecoder`: feed it bytes as they come, one at a time or many
/// values at once). Everything it keeps is bounded: a bulk string's length, an aggregate's
/// element count and the nesting depth are limited, and a line (a simple string, an error, a
/// number) must end within `maxLineLength`; a value past a limit is a `RedisError` with code
/// `protocolViolation` and the connection closes. RESP3 attributes (`|`) are read and dropped;
/// pushes (`>`) come out as `.push`. A value that arrives in pieces is parsed again from its
/// start as bytes come: fine for the small values Terminus keeps in Redis.
package struct RESPDecoder: NIOSingleStepByteToMessageDecoder {
    package enum Decoded: Sendable, Hashable {
        /// The answer to the oldest command still waiting.
        case reply(RESPValue)
        /// Out-of-band data (RESP3 pushes: invalidation, pub/sub messages).
        case push([RESPValue])
    }

    package typealias InboundOut = Decoded

    package struct Limits: Sendable, Hashable {
        /// The largest bulk string, in bytes (Redis's own `proto-max-bulk-len` default: 512 MB;
        /// ours is what a stored downlink message can be).
        package var maxBulkLength = 16 * 1024 * 1024
        /// The most elements of one array, set or map.
        package var maxElements = 1_048_576
        /// How deep aggregates may nest.
        package var maxDepth = 16
        /// The longest line (simple strings, errors, numbers).
        package var maxLineLength = 64 * 1024

        package init() {}
    }

    private let limits: Limits

    package init(limits: Limits = Limits()) {
        self.limits = limits
    }

    package mutating func decode(buffer: inout ByteBuffer) throws -> Decoded? {
        var view = buffer
        guard let value = try self.parse(&view, depth: 0) else { return nil }
        buffer = view
        return value
    }

    package mutating func decodeLast(buffer: inout ByteBuffer, seenEOF: Bool) throws -> Decoded? {
        try self.decode(buffer: &buffer)
    }

    /// One value from `buffer`, consuming it; nil (and `buffer` in some state the caller
    /// drops) when more bytes are needed.
    private func parse(_ buffer: inout ByteBuffer, depth: Int) throws -> Decoded? {
        while true {
            guard let type = buffer.readInteger(as: UInt8.self) else { return nil }
            switch type {
            case UInt8(ascii: "|"):
                // An attribute map, then the value it describes: read and dropped.
                guard let count = try self.length(&buffer, allowNull: false) else { return nil }
                try self.checkElements(count)
                for _ in 0..<(2 * count) {
                    guard try self.value(&buffer, depth: depth + 1) != nil else { return nil }
                }
                continue
            case UInt8(ascii: ">"):
                guard let count = try self.length(&buffer, allowNull: false) else { return nil }
                return try self.elements(&buffer, count: count, depth: depth).map { .push($0) }
            default:
                buffer.moveReaderIndex(to: buffer.readerIndex - 1)
                return try self.value(&buffer, depth: depth).map { .reply($0) }
            }
        }
    }

    private func value(_ buffer: inout ByteBuffer, depth: Int) throws -> RESPValue? {
        guard depth <= self.limits.maxDepth else {
            throw RedisError(.protocolViolation, "aggregates nested deeper than \(self.limits.maxDepth)")
        }
        guard let type = buffer.readInteger(as: UInt8.self) else { return nil }
        switch type {
        case UInt8(ascii: "+"):
            return try self.line(&buffer).map { .simpleString($0) }
        case UInt8(ascii: "-"):
            return try self.line(&buffer).map { .error(String(buffer: $0)) }
        case UInt8(ascii: ":"):
            guard let line = try self.line(&buffer) else { return nil }
            guard let value = Int64(String(buffer: line)) else {
                throw RedisError(.protocolViolation, "integer expected, got \(String(buffer: line).prefix(40))")
            }
            return .integer(value)
        case UInt8(ascii: "$"), UInt8(ascii: "="), UInt8(ascii: "!"):
            guard let length = try self.length(&buffer, allowNull: type == UInt8(ascii: "$")) else { return nil }
            if length < 0 { return .null }
            guard length <= self.limits.maxBulkLength else {
                throw RedisError(
                    .protocolViolation,
                    "bulk string of \(length) bytes above \(self.limits.maxBulkLength)"
                )
            }
            guard buffer.readableBytes >= length + 2, var body = buffer.readSlice(length: length) else { return nil }
            guard buffer.readInteger(as: UInt16.self) == 0x0D0A else {
                throw RedisError(.protocolViolation, "bulk string not ended by CRLF")
            }
            if type == UInt8(ascii: "!") { return .error(String(buffer: body)) }
            if type == UInt8(ascii: "=") {
                // A verbatim string starts with its three-letter format and a colon.
                guard body.readableBytes >= 4 else {
                    throw RedisError(.protocolViolation, "verbatim string without its format")
                }
                body.moveReaderIndex(forwardBy: 4)
            }
            return .bulkString(body)
        case UInt8(ascii: "*"), UInt8(ascii: "~"):
            guard let count = try self.length(&buffer, allowNull: type == UInt8(ascii: "*")) else { return nil }
            if count < 0 { return .null }
            return try self.elements(&buffer, count: count, depth: depth).map { .array($0) }
        case UInt8(ascii: "%"):
            guard let count = try self.length(&buffer, allowNull: false) else { return nil }
            try self.checkElements(count)
            var map: [RESPValue: RESPValue] = [:]
            for _ in 0..<count {
                guard let key = try self.value(&buffer, depth: depth + 1),
                    let value = try self.value(&buffer, depth: depth + 1)
                else { return nil }
                map[key] = value
            }
            return .map(map)
        case UInt8(ascii: "_"):
            guard try self.line(&buffer) != nil else { return nil }
            return .null
        case UInt8(ascii: "#"):
            guard let line = try self.line(&buffer) else { return nil }
            switch String(buffer: line) {
            case "t": return .boolean(true)
            case "f": return .boolean(false)
            default: throw RedisError(.protocolViolation, "boolean expected")
            }
        case UInt8(ascii: ","):
            guard let line = try self.line(&buffer) else { return nil }
            guard let value = Double(String(buffer: line)) else {
                throw RedisError(.protocolViolation, "double expected")
            }
            return .double(value)
        case UInt8(ascii: "("):
            guard let line = try self.line(&buffer) else { return nil }
            let text = String(buffer: line)
            guard !text.isEmpty, text.drop(while: { $0 == "-" || $0 == "+" }).allSatisfy(\.isNumber) else {
                throw RedisError(.protocolViolation, "big number expected")
            }
            return .bigNumber(text)
        default:
            throw RedisError(.protocolViolation, "unknown RESP type byte 0x\(String(type, radix: 16))")
        }
    }

    /// The `count` values of an aggregate (array, set, push), one level deeper; nil when more
    /// bytes are needed.
    private func elements(_ buffer: inout ByteBuffer, count: Int, depth: Int) throws -> [RESPValue]? {
        try self.checkElements(count)
        var elements: [RESPValue] = []
        elements.reserveCapacity(min(count, 64))
        for _ in 0..<count {
            guard let element = try self.value(&buffer, depth: depth + 1) else { return nil }
            elements.append(element)
        }
        return elements
    }

    private func checkElements(_ count: Int) throws {
        guard count <= self.limits.maxElements else {
            throw RedisError(.protocolViolation, "an aggregate of \(count) elements above \(self.limits.maxElements)")
        }
    }

    /// The bytes up to CRLF (consumed), or nil when the CRLF has not arrived yet.
    private func line(_ buffer: inout ByteBuffer) throws -> ByteBuffer? {
        let view = buffer.readableBytesView
        guard let cr = view.firstIndex(of: 0x0D) else {
            if view.count > self.limits.maxLineLength {
                throw RedisError(.protocolViolation, "a line longer than \(self.limits.maxLineLength) bytes")
            }
            return nil
        }
        guard cr + 1 < view.endIndex else { return nil }
        guard view[cr + 1] == 0x0A else { throw RedisError(.protocolViolation, "CR without LF") }
        let line = buffer.readSlice(length: cr - view.startIndex)!
        buffer.moveReaderIndex(forwardBy: 2)
        return line
    }

    /// A length or count line: -1 (RESP2 null, when allowed) or 0…the limit for aggregates.
    private func length(_ buffer: inout ByteBuffer, allowNull: Bool) throws -> Int? {
        guard let line = try self.line(&buffer) else { return nil }
        guard let value = Int(String(buffer: line)), value >= (allowNull ? -1 : 0) else {
            throw RedisError(.protocolViolation, "length expected, got \(String(buffer: line).prefix(40))")
        }
        // The caller checks it against its own limit (bulk length or element count).
        return value
    }
}
