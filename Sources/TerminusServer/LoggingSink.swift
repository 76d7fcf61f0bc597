package import Logging
package import NIOCore
internal import TerminusProtocol
package import TerminusSessions

/// Logs every uplink message and accepts it: the sink of development mode, and a way to watch
/// traffic before backends exist. It keeps nothing, so "accepted" means "logged".
package struct LoggingSink: UplinkSink {
    private let logger: Logger
    /// Payload bytes shown per message.
    private let previewBytes: Int

    package init(logger: Logger, previewBytes: Int = 200) {
        self.logger = logger
        self.previewBytes = previewBytes
    }

    package func deliver(
        _ batch: [UplinkMessage],
        on eventLoop: any EventLoop,
        completion: @escaping @Sendable ([DeliveryOutcome]) -> Void
    ) {
        for message in batch {
            self.logger.info(
                "message",
                metadata: [
                    "device": "\(message.deviceID)",
                    "topic": "\(message.topic)",
                    "id": "\(message.messageID)",
                    "qos": "\(message.qos.rawValue)",
                    "bytes": "\(message.payload.readableBytes)",
                    "payload": "\(Self.preview(message.payload, limit: self.previewBytes))",
                ]
            )
        }
        completion(Array(repeating: .accepted, count: batch.count))
    }

    /// UTF-8 text when the payload is printable (no control characters at all: a newline or an
    /// escape sequence would forge log lines), hex otherwise; cut at `limit` bytes.
    static func preview(_ payload: ByteBuffer, limit: Int) -> String {
        let bytes = payload.readableBytesView.prefix(limit)
        let suffix = payload.readableBytes > limit ? "…" : ""
        if let text = String(validating: Array(bytes), as: UTF8.self),
            text.unicodeScalars.allSatisfy({ $0.value >= 0x20 && !(0x7F...0x9F).contains($0.value) })
        {
            return text + suffix
        }
        return "hex:"
            + bytes.map { byte in
                let hex = String(byte, radix: 16)
                return byte < 0x10 ? "0" + hex : hex
            }.joined() + suffix
    }
}
