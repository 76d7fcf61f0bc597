import NIOCore
import NIOTestUtils
import TerminusRedis
import Testing

@Suite("RESP2 and RESP3 decoding, bounded")
struct RESPDecoderTests {
    static func bytes(_ text: String) -> ByteBuffer { ByteBuffer(string: text) }

    static let samples: [(String, RESPDecoder.Decoded)] = [
        ("+OK\r\n", .reply(.simpleString(bytes("OK")))),
        ("-ERR unknown command\r\n", .reply(.error("ERR unknown command"))),
        (":-42\r\n", .reply(.integer(-42))),
        ("$5\r\nhe\r\no\r\n", .reply(.bulkString(bytes("he\r\no")))),
        ("$0\r\n\r\n", .reply(.bulkString(bytes("")))),
        ("$-1\r\n", .reply(.null)),
        ("*-1\r\n", .reply(.null)),
        ("_\r\n", .reply(.null)),
        ("*2\r\n$1\r\na\r\n*1\r\n:1\r\n", .reply(.array([.bulkString(bytes("a")), .array([.integer(1)])]))),
        ("*0\r\n", .reply(.array([]))),
        ("~2\r\n+a\r\n+b\r\n", .reply(.array([.simpleString(bytes("a")), .simpleString(bytes("b"))]))),
        ("%1\r\n+server\r\n+redis\r\n", .reply(.map([.simpleString(bytes("server")): .simpleString(bytes("redis"))]))),
        ("#t\r\n", .reply(.boolean(true))),
        (",1.5\r\n", .reply(.double(1.5))),
        (
            "(3492890328409238509324850943850943825024385\r\n",
            .reply(.bigNumber("3492890328409238509324850943850943825024385"))
        ),
        ("=15\r\ntxt:Some string\r\n", .reply(.bulkString(bytes("Some string")))),
        ("!21\r\nSYNTAX invalid syntax\r\n", .reply(.error("SYNTAX invalid syntax"))),
        ("|1\r\n+key-popularity\r\n%1\r\n$1\r\na\r\n,0.19\r\n:7\r\n", .reply(.integer(7))),
        (
            ">2\r\n+invalidate\r\n*1\r\n$3\r\nkey\r\n",
            .push([.simpleString(bytes("invalidate")), .array([.bulkString(bytes("key"))])])
        ),
    ]

    @Test("every type, split at every byte and glued together")
    func verifier() throws {
        try ByteToMessageDecoderVerifier.verifyDecoder(
            inputOutputPairs: Self.samples.map { (Self.bytes($0.0), [$0.1]) },
            decoderFactory: { RESPDecoder() }
        )
    }

    @Test(
        "what a hostile or broken server sends is refused, never buffered without bound",
        arguments: [
            ("$17\r\n", "bulk string of 17 bytes"),
            ("*5\r\n", "an aggregate of 5 elements"),
            ("%5\r\n", "an aggregate of 5 elements"),
            ("*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n", "nested deeper"),
            ("+" + String(repeating: "x", count: 70), "a line longer than 64"),
            ("?1\r\n", "unknown RESP type byte"),
            (":1\rx", "CR without LF"),
            (":abc\r\n", "integer expected"),
            ("$-2\r\n", "length expected"),
            ("$3\r\nabcXY", "not ended by CRLF"),
            ("#x\r\n", "boolean expected"),
        ]
    )
    func limits(input: String, reason: String) {
        var limits = RESPDecoder.Limits()
        (limits.maxBulkLength, limits.maxElements, limits.maxDepth, limits.maxLineLength) = (16, 4, 2, 64)
        var decoder = RESPDecoder(limits: limits)
        var buffer = Self.bytes(input)
        do {
            _ = try decoder.decode(buffer: &buffer)
            Issue.record("accepted \(input.prefix(20))")
        } catch let error as RedisError {
            #expect(error.code == .protocolViolation)
            #expect(error.message.contains(reason), "\(error)")
        } catch {
            Issue.record("unexpected \(error)")
        }
    }

    @Test("a command is written as an array of bulk strings; its size is known before")
    func encoding() {
        let command = RedisCommand("SET", "device:printer-7", RedisArgument(ByteBuffer(bytes: [0, 13, 10])), 42)
        var buffer = ByteBuffer()
        command.encode(into: &buffer)
        #expect(
            Array(buffer.readableBytesView)
                == Array("*4\r\n$3\r\nSET\r\n$16\r\ndevice:printer-7\r\n$3\r\n".utf8) + [0, 13, 10]
                + Array("\r\n$2\r\n42\r\n".utf8)
        )
        #expect(command.encodedSize == buffer.readableBytes)
        #expect("\(command)" == "SET", "arguments (a password) are never shown")
        #expect(RedisScript("return 1").sha1 == "e0e1f9fabfc9d4800c877a703b823ac0578ff8db")
    }
}
