public import NIOCore

/// Splits a byte stream into frames, rejecting an oversize length prefix before allocating or
/// waiting for the body.
///
/// The gateway's session handler calls `decode(buffer:)` on its own read buffer; the client
/// library uses it inside a `ByteToMessageHandler`. Throws `ProtocolError` for every malformed
/// input; the gateway then answers with GOAWAY and closes.
public struct FrameDecoder: NIOSingleStepByteToMessageDecoder, Sendable {
    public typealias InboundOut = Frame

    /// The largest accepted value of the length prefix (type + flags + body).
    public var maxFrameLength: Int
    /// The last two messages' topics, which the next one with the same bytes reuses.
    private var recentTopics = RecentTopics()

    public init(maxFrameLength: Int) {
        self.maxFrameLength = maxFrameLength
    }

    public mutating func decode(buffer: inout ByteBuffer) throws -> Frame? {
        guard let length = buffer.getInteger(at: buffer.readerIndex, as: UInt32.self) else { return nil }
        guard length >= WireProtocol.typeAndFlagsSize else {
            throw ProtocolError(.malformedFrame, "length \(length) is below the 2-byte minimum")
        }
        guard length <= self.maxFrameLength else {
            throw ProtocolError(.frameTooLarge, "frame length \(length) exceeds the maximum \(self.maxFrameLength)")
        }
        guard buffer.readableBytes >= 4 + Int(length) else { return nil }
        buffer.moveReaderIndex(forwardBy: 4)
        let type = buffer.readInteger(as: UInt8.self)!
        let flags = buffer.readInteger(as: UInt8.self)!
        var body = buffer.readSlice(length: Int(length) - WireProtocol.typeAndFlagsSize)!
        return try Frame.decode(type: type, flags: flags, body: &body, topics: &self.recentTopics)
    }

    public mutating func decodeLast(buffer: inout ByteBuffer, seenEOF: Bool) throws -> Frame? {
        if let frame = try self.decode(buffer: &buffer) { return frame }
        if buffer.readableBytes > 0 && seenEOF {
            throw ProtocolError(.malformedFrame, "connection closed inside a frame (\(buffer.readableBytes) bytes)")
        }
        return nil
    }
}
