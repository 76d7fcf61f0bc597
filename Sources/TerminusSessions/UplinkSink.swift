package import NIOCore
package import TerminusProtocol

/// One uplink message, inflated and validated, on its way to the services that want it.
package struct UplinkMessage: Sendable {
    package var deviceID: String
    package var topic: String
    package var messageID: UInt32
    package var qos: QoS
    /// The inflated payload.
    package var payload: ByteBuffer
    /// Unix time in milliseconds when the gateway decoded the frame.
    package var receivedAt: Int64
    /// The real client address (from PROXY protocol when configured).
    package var clientAddress: String
    /// The gateway's id for the device's connection, unique within `epoch`.
    package var connectionID: UInt64
    /// A random value drawn when the device listener started: with `connectionID` and
    /// `sequence` it makes every message's `delivery_id` unique across processes and restarts.
    package var epoch: UInt64
    /// The message's place among everything this connection handed to the sink: 1 is the
    /// connected event, then the device's messages, then the disconnected event.
    package var sequence: UInt32
    /// The device's idempotency key for this message (PUBLISH `IDEMPOTENCY_KEY`), if any.
    package var idempotencyKey: ByteBuffer?

    package init(
        deviceID: String,
        topic: String,
        messageID: UInt32,
        qos: QoS,
        payload: ByteBuffer,
        receivedAt: Int64,
        clientAddress: String,
        connectionID: UInt64 = 0,
        epoch: UInt64 = 0,
        sequence: UInt32 = 0,
        idempotencyKey: ByteBuffer? = nil
    ) {
        self.idempotencyKey = idempotencyKey
        self.deviceID = deviceID
        self.topic = topic
        self.messageID = messageID
        self.qos = qos
        self.payload = payload
        self.receivedAt = receivedAt
        self.clientAddress = clientAddress
        self.connectionID = connectionID
        self.epoch = epoch
        self.sequence = sequence
    }
}

/// What became of one uplink message; the device's ACK status is derived from it.
package enum DeliveryOutcome: Hashable, Sendable {
    /// Every subscribed service accepted the message.
    case accepted
    /// No service subscribes to the topic.
    case noRoute
    /// A service refused the message and a retry will not help.
    case rejected(reason: String)
    /// Not accepted now; the device should resend after the hint.
    case retryLater(afterSeconds: UInt16)

    /// The ACK this outcome becomes.
    package func ack(for messageID: UInt32) -> Ack {
        switch self {
        case .accepted: Ack(messageID: messageID, status: .ok)
        case .noRoute: Ack(messageID: messageID, status: .noRoute)
        case .rejected: Ack(messageID: messageID, status: .rejected)
        case .retryLater(let seconds): Ack(messageID: messageID, status: .retryLater, retryAfterSeconds: seconds)
        }
    }
}

extension DeliveryOutcome {
    /// `count` times `self`: the outcomes of an edge batch before its answers. One outcome
    /// (a lone message, the common case at device rates) is an array literal; the standard
    /// library's `Array(repeating:count:)` looks the array storage's generic metadata up at run
    /// time on every call, 700 to 1,000 instructions more (callgrind; `terminus-instructions`).
    @inlinable
    package func repeated(_ count: Int) -> [DeliveryOutcome] {
        count == 1 ? [self] : Array(repeating: self, count: count)
    }
}

/// Where accepted uplink messages go: the seam that backend routing plugs into.
///
/// The edge hands over one batch per event loop tick. The sink may take its time (that is
/// the "asynchronous accept"), but must call `completion` once, with exactly one outcome per
/// message, in the batch's order. QoS 1 devices are acked only from these outcomes, so a
/// sink that accepts a message promises not to lose it.
///
/// A message's `payload` and `idempotencyKey` are slices of the device's read (with the lean
/// TLS engine, of the loop's arena of opened records), not copies: a sink that keeps a message
/// past `deliver` keeps what it needs in buffers of its own (`BackendRouter` keeps the encoded
/// protobuf; `InMemorySink` copies), or it would hold the whole read buffer, or the arena, for
/// as long as it keeps the message.
package protocol UplinkSink: Sendable {
    /// Called on `eventLoop`; `completion` must be called on `eventLoop` too (at once, inside
    /// this call, is allowed). A completion rather than a future: a lone message's round trip
    /// allocates no promise and runs no callback list (issue 12).
    func deliver(
        _ batch: [UplinkMessage],
        on eventLoop: any EventLoop,
        completion: @escaping @Sendable ([DeliveryOutcome]) -> Void
    )
}
