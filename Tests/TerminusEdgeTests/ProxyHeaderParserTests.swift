import NIOCore
import TerminusEdge
import Testing

@Suite("PROXY protocol header parser")
struct ProxyHeaderParserTests {
    static let v2Signature: [UInt8] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A]

    static func v2IPv4(source: [UInt8], port: UInt16, tlv: [UInt8] = []) -> [UInt8] {
        let length = 12 + tlv.count
        return Self.v2Signature + [0x21, 0x11, UInt8(length >> 8), UInt8(length & 0xFF)] + source + [10, 0, 0, 1]
            + [UInt8(port >> 8), UInt8(port & 0xFF), 0x1E, 0xCB] + tlv
    }

    @Test("v1 TCP4 and TCP6 lines give the client address")
    func v1() throws {
        let parser = ProxyHeaderParser(mode: .v1)
        let line = "PROXY TCP4 203.0.113.7 10.0.0.1 51234 7883\r\n"
        let header = try #require(try parser.parse(ByteBuffer(string: line + "rest")))
        #expect(header.source == "203.0.113.7:51234")
        #expect(header.length == line.utf8.count)
        let six = try #require(try parser.parse(ByteBuffer(string: "PROXY TCP6 2001:db8::1 2001:db8::2 4000 7883\r\n")))
        #expect(six.source == "[2001:db8::1]:4000")
        let unknown = try #require(try parser.parse(ByteBuffer(string: "PROXY UNKNOWN\r\n")))
        #expect(unknown.source == nil)
    }

    @Test("an unspecified source (0.0.0.0, ::) names no client: the socket peer is used, as for LOCAL")
    func unspecifiedSource() throws {
        let v2 = ProxyHeaderParser(mode: .v2)
        #expect(try v2.parse(ByteBuffer(bytes: Self.v2IPv4(source: [0, 0, 0, 0], port: 0)))?.source == nil)
        var six = Self.v2Signature + [0x21, 0x21, 0x00, 36]
        six += Array(repeating: 0, count: 32) + [0x00, 0x00, 0x1E, 0xCB]
        #expect(try v2.parse(ByteBuffer(bytes: six))?.source == nil)
        let v1 = ProxyHeaderParser(mode: .v1)
        #expect(try v1.parse(ByteBuffer(string: "PROXY TCP4 0.0.0.0 10.0.0.1 0 7883\r\n"))?.source == nil)
    }

    @Test("v2 IPv4 with TLVs, IPv6 and LOCAL")
    func v2() throws {
        let parser = ProxyHeaderParser(mode: .v2)
        let bytes = Self.v2IPv4(source: [198, 51, 100, 9], port: 40_000, tlv: [0x04, 0x00, 0x02, 0xAB, 0xCD])
        let header = try #require(try parser.parse(ByteBuffer(bytes: bytes + [0x16, 0x03])))
        #expect(header.source == "198.51.100.9:40000")
        #expect(header.length == bytes.count)

        var six = Self.v2Signature + [0x21, 0x21, 0x00, 36]
        six += [0x20, 0x01, 0x0d, 0xb8] + Array(repeating: 0, count: 11) + [1]
        six += Array(repeating: 0, count: 16) + [0x1F, 0x40, 0x1E, 0xCB]
        #expect(try parser.parse(ByteBuffer(bytes: six))?.source == "[2001:db8:0:0:0:0:0:1]:8000")

        let local = Self.v2Signature + [0x20, 0x00, 0x00, 0x00]
        let parsed = try #require(try parser.parse(ByteBuffer(bytes: local)))
        #expect(parsed.source == nil)
        #expect(parsed.length == 16)
    }

    @Test("partial headers ask for more bytes")
    func partial() throws {
        let parser = ProxyHeaderParser(mode: .any)
        let v2 = Self.v2IPv4(source: [1, 2, 3, 4], port: 1)
        for cut in 1..<v2.count {
            #expect(try parser.parse(ByteBuffer(bytes: v2.prefix(cut))) == nil)
        }
        let v1 = Array("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n".utf8)
        for cut in 1..<v1.count {
            #expect(try parser.parse(ByteBuffer(bytes: v1.prefix(cut))) == nil)
        }
    }

    @Test(
        "missing or garbled headers are refused",
        arguments: [
            Array("GET / HTTP/1.1\r\n".utf8),
            [0x16, 0x03, 0x01, 0x00],  // a TLS ClientHello without the header
            Array("PROXY TCP4 999.1.1.1 5.6.7.8 1 2\r\n".utf8),
            Array("PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n".utf8),
            Array("PROXY SCTP 1.2.3.4 5.6.7.8 1 2\r\n".utf8),
            Array("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n".utf8),
            Array("PROXY " + String(repeating: "x", count: 120)).map { $0.asciiValue! },
            [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0B],
            [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A, 0x11, 0x11, 0x00, 0x0C],
            [
                0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A, 0x21, 0x11, 0x00, 0x04, 1, 2, 3,
                4,
            ],
        ] as [[UInt8]]
    )
    func garbled(bytes: [UInt8]) {
        #expect(throws: ProxyHeaderParser.Invalid.self) {
            _ = try ProxyHeaderParser(mode: .any).parse(ByteBuffer(bytes: bytes))
        }
    }

    @Test("a mode accepts only its version, and v2 headers are size-capped")
    func modes() {
        #expect(throws: ProxyHeaderParser.Invalid.self) {
            _ = try ProxyHeaderParser(mode: .v2).parse(ByteBuffer(string: "PROXY UNKNOWN\r\n"))
        }
        #expect(throws: ProxyHeaderParser.Invalid.self) {
            _ = try ProxyHeaderParser(mode: .v1).parse(ByteBuffer(bytes: Self.v2Signature))
        }
        let big = Self.v2IPv4(source: [1, 2, 3, 4], port: 1, tlv: Array(repeating: 0, count: 2000))
        #expect(throws: ProxyHeaderParser.Invalid.self) {
            _ = try ProxyHeaderParser(mode: .v2, maxHeaderSize: 1024).parse(ByteBuffer(bytes: big))
        }
    }
}
