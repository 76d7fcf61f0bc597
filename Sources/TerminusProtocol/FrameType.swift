/// The frame kinds of wire protocol v1 (`docs/protocol.md`, "Frame kinds").
public enum FrameType: UInt8, Sendable, CaseIterable {
    case hello = 0x01
    case welcome = 0x02
    case publish = 0x03
    case ack = 0x04
    case push = 0x05
    case ping = 0x06
    case pong = 0x07
    case goAway = 0x08
}

/// Protocol constants shared by both peers.
public enum WireProtocol {
    /// The only version this gateway speaks.
    public static let version: UInt8 = 1
    /// Length prefix (4) + type (1) + flags (1).
    public static let headerSize = 6
    /// The bytes of a frame that the length prefix counts before the body: type and flags.
    public static let typeAndFlagsSize = 2
    /// PING and PONG carry at most this many opaque bytes.
    public static let maxPingBodySize = 8
    /// A PUBLISH idempotency key has 1…64 bytes.
    public static let maxIdempotencyKeySize = 64
    /// The smallest `max_receive_frame` a HELLO may announce: room for GOAWAY with its message.
    public static let minimumReceiveFrameSize: UInt32 = 512
    /// GOAWAY `reconnect_after` value meaning "do not reconnect".
    public static let doNotReconnect: UInt32 = .max
}

/// Flag bits of PUBLISH and PUSH frames.
public struct PublishFlags: OptionSet, Hashable, Sendable {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    /// QoS 1: the receiver acknowledges the message.
    public static let qos1 = PublishFlags(rawValue: 0x01)
    /// The payload is a raw deflate stream (RFC 1951).
    public static let compressed = PublishFlags(rawValue: 0x02)
    /// A preset dictionary id follows the topic; requires `compressed`.
    public static let dictionary = PublishFlags(rawValue: 0x04)
    /// A topic alias follows the message id (PUBLISH only).
    public static let topicAlias = PublishFlags(rawValue: 0x08)
    /// An idempotency key (`bytes8`, 1…64 bytes) follows the dictionary id (PUBLISH only).
    public static let idempotencyKey = PublishFlags(rawValue: 0x10)

    public static let allDefined: PublishFlags = [.qos1, .compressed, .dictionary, .topicAlias, .idempotencyKey]
}

/// Capability bits announced in HELLO (device) and WELCOME (gateway).
public struct Capabilities: OptionSet, Hashable, Sendable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    /// The device can inflate compressed PUSH payloads (and the gateway may send them).
    public static let compressedPush = Capabilities(rawValue: 0x0000_0001)
    /// The peer supports topic aliases on PUBLISH.
    public static let topicAliases = Capabilities(rawValue: 0x0000_0002)
    /// HELLO only: a `max_receive_frame` (u32) follows the credential; the gateway sends no
    /// frame (PUSH) longer than it.
    public static let receiveLimit = Capabilities(rawValue: 0x0000_0004)
}

/// Delivery guarantee of one message.
public enum QoS: UInt8, Hashable, Sendable {
    /// Fire and forget: no ACK.
    case atMostOnce = 0
    /// The receiver sends an ACK; the sender keeps the message until then.
    case atLeastOnce = 1
}

/// How a HELLO proves the device's identity.
public enum AuthMethod: UInt8, Hashable, Sendable {
    /// No credential in HELLO: the TLS client certificate names the device.
    case certificate = 0
    /// An HMAC-SHA256 token (`docs/protocol.md`, "Tokens").
    case token = 1
}
