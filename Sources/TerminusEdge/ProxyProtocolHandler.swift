internal import Logging
internal import NIOCore
internal import TerminusProtocol

/// Fired inbound once the PROXY header is parsed, before any client bytes.
package struct ProxyHeaderReceived: Sendable {
    /// The real client address, or nil when the header carried none (LOCAL/UNKNOWN).
    package var source: String?
}

/// Reads the PROXY protocol header at the start of a connection, announces the real client
/// address with `ProxyHeaderReceived`, passes on whatever followed it and removes itself.
///
/// A missing or malformed header closes the connection (logged as `PROXY_HEADER_INVALID`):
/// a listener configured for PROXY protocol never falls back to the socket address.
final class ProxyProtocolHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    private let parser: ProxyHeaderParser
    private let logger: Logger
    private var buffered: ByteBuffer?
    private var done = false

    init(parser: ProxyHeaderParser, logger: Logger) {
        self.parser = parser
        self.logger = logger
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !self.done else {
            context.fireChannelRead(data)
            return
        }
        var incoming = self.unwrapInboundIn(data)
        if self.buffered == nil {
            self.buffered = incoming
        } else {
            self.buffered!.writeBuffer(&incoming)
        }
        do {
            guard let header = try self.parser.parse(self.buffered!) else { return }
            self.done = true
            var rest = self.buffered!
            self.buffered = nil
            rest.moveReaderIndex(forwardBy: header.length)
            context.fireUserInboundEventTriggered(ProxyHeaderReceived(source: header.source))
            if rest.readableBytes > 0 {
                context.fireChannelRead(self.wrapInboundOut(rest))
            }
            context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
        } catch {
            self.done = true
            self.buffered = nil
            self.logger.warning(
                "closing connection: invalid PROXY protocol header",
                metadata: [
                    "code": "\(TerminusCode.proxyHeaderInvalid.name)",
                    "reason": "\(error.reason)",
                    "peer": "\(context.channel.remoteAddress?.description ?? "?")",
                ]
            )
            context.close(promise: nil)
        }
    }
}
