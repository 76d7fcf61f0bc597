package import NIOCore

/// One command as Redis receives it: an array of bulk strings (`SET key value`). Arguments are
/// bytes; `String` and integer arguments are written as their UTF-8 text.
package struct RedisCommand: Sendable, Hashable, CustomStringConvertible {
    package var arguments: [ByteBuffer]

    package init(_ name: String, _ arguments: [RedisArgument] = []) {
        self.arguments = [ByteBuffer(string: name)] + arguments.map(\.bytes)
    }

    package init(_ name: String, _ arguments: RedisArgument...) {
        self.init(name, arguments)
    }

    /// The name (`SET`), for logs and errors; arguments are not shown (they may be secrets).
    package var name: String { self.arguments.first.map { String(buffer: $0) } ?? "" }

    package var description: String { self.name }

    /// Writes the command as a RESP array of bulk strings.
    package func encode(into buffer: inout ByteBuffer) {
        buffer.writeInteger(UInt8(ascii: "*"))
        buffer.writeString(String(self.arguments.count))
        buffer.writeStaticString("\r\n")
        for argument in self.arguments {
            buffer.writeInteger(UInt8(ascii: "$"))
            buffer.writeString(String(argument.readableBytes))
            buffer.writeStaticString("\r\n")
            buffer.writeImmutableBuffer(argument)
            buffer.writeStaticString("\r\n")
        }
    }

    /// The bytes `encode` writes.
    package var encodedSize: Int {
        self.arguments.reduce(String(self.arguments.count).utf8.count + 3) {
            $0 + String($1.readableBytes).utf8.count + 5 + $1.readableBytes
        }
    }
}

/// An argument of a `RedisCommand`: bytes, text or a number.
package struct RedisArgument: Sendable, Hashable, ExpressibleByStringLiteral, ExpressibleByIntegerLiteral {
    package var bytes: ByteBuffer

    package init(_ bytes: ByteBuffer) { self.bytes = bytes }
    package init(_ text: String) { self.bytes = ByteBuffer(string: text) }
    package init<Value: BinaryInteger>(_ value: Value) { self.bytes = ByteBuffer(string: String(value)) }
    package init(stringLiteral value: String) { self.init(value) }
    package init(integerLiteral value: Int) { self.init(value) }
}
