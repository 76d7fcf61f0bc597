public import NIOCore

/// HELLO: the first frame a device sends.
public struct Hello: Hashable, Sendable {
    public var version: UInt8
    /// Requested keepalive in seconds; 0 asks for the gateway's default.
    public var keepaliveSeconds: UInt16
    public var capabilities: Capabilities
    /// May be empty when the TLS client certificate names the device.
    public var deviceID: String
    public var authMethod: AuthMethod
    public var credential: ByteBuffer
    /// The largest frame `length` the device can receive (capability `RECEIVE_LIMIT`); nil when
    /// it did not say, and the gateway then keeps PUSH frames within its own `max_frame_size`.
    public var maxReceiveFrameSize: UInt32?

    public init(
        version: UInt8 = WireProtocol.version,
        keepaliveSeconds: UInt16,
        capabilities: Capabilities,
        deviceID: String,
        authMethod: AuthMethod,
        credential: ByteBuffer,
        maxReceiveFrameSize: UInt32? = nil
    ) {
        self.version = version
        self.keepaliveSeconds = keepaliveSeconds
        self.capabilities = capabilities
        self.deviceID = deviceID
        self.authMethod = authMethod
        self.credential = credential
        self.maxReceiveFrameSize = maxReceiveFrameSize
        if maxReceiveFrameSize == nil {
            self.capabilities.remove(.receiveLimit)
        } else {
            self.capabilities.insert(.receiveLimit)
        }
    }
}

/// WELCOME: the gateway's answer to a successful HELLO, carrying the session's limits.
public struct Welcome: Hashable, Sendable {
    public var version: UInt8
    public var keepaliveSeconds: UInt16
    public var maxFrameSize: UInt32
    public var maxInflight: UInt16
    public var maxPayloadSize: UInt32
    public var maxTopicAliases: UInt16
    public var capabilities: Capabilities
    /// The device id the session is bound to (from HELLO or from the certificate).
    public var deviceID: String
    /// The gateway instance that holds the session.
    public var gatewayID: String

    public init(
        version: UInt8 = WireProtocol.version,
        keepaliveSeconds: UInt16,
        maxFrameSize: UInt32,
        maxInflight: UInt16,
        maxPayloadSize: UInt32,
        maxTopicAliases: UInt16,
        capabilities: Capabilities,
        deviceID: String,
        gatewayID: String
    ) {
        self.version = version
        self.keepaliveSeconds = keepaliveSeconds
        self.maxFrameSize = maxFrameSize
        self.maxInflight = maxInflight
        self.maxPayloadSize = maxPayloadSize
        self.maxTopicAliases = maxTopicAliases
        self.capabilities = capabilities
        self.deviceID = deviceID
        self.gatewayID = gatewayID
    }
}

/// PUBLISH (device → gateway) and PUSH (gateway → device) share this shape.
public struct Message: Hashable, Sendable {
    public var messageID: UInt32
    public var qos: QoS
    public var compressed: Bool
    public var dictionaryID: UInt16?
    /// PUBLISH only. With a non-empty topic it binds the alias; with an empty one it uses it.
    public var topicAlias: UInt16?
    public var topic: String
    /// As sent: deflated when `compressed` is set.
    public var payload: ByteBuffer
    /// PUBLISH only: a key the device keeps with the message and sends again on every resend of
    /// it, so that backends can recognise the resend (1…64 bytes).
    public var idempotencyKey: ByteBuffer?

    public init(
        messageID: UInt32,
        qos: QoS,
        compressed: Bool = false,
        dictionaryID: UInt16? = nil,
        topicAlias: UInt16? = nil,
        topic: String,
        payload: ByteBuffer,
        idempotencyKey: ByteBuffer? = nil
    ) {
        self.idempotencyKey = idempotencyKey
        self.messageID = messageID
        self.qos = qos
        self.compressed = compressed
        self.dictionaryID = dictionaryID
        self.topicAlias = topicAlias
        self.topic = topic
        self.payload = payload
    }

    public var flags: PublishFlags {
        var flags: PublishFlags = []
        if self.qos == .atLeastOnce { flags.insert(.qos1) }
        if self.compressed { flags.insert(.compressed) }
        if self.dictionaryID != nil { flags.insert(.dictionary) }
        if self.topicAlias != nil { flags.insert(.topicAlias) }
        if self.idempotencyKey != nil { flags.insert(.idempotencyKey) }
        return flags
    }
}

/// ACK: acknowledges one QoS 1 PUBLISH (gateway → device) or PUSH (device → gateway).
public struct Ack: Hashable, Sendable {
    public var messageID: UInt32
    public var status: TerminusCode
    /// A hint in seconds before resending; 0 when there is none.
    public var retryAfterSeconds: UInt16

    public init(messageID: UInt32, status: TerminusCode, retryAfterSeconds: UInt16 = 0) {
        self.messageID = messageID
        self.status = status
        self.retryAfterSeconds = retryAfterSeconds
    }
}

/// GOAWAY: the sender is closing the connection, and why.
public struct GoAway: Hashable, Sendable {
    public var code: TerminusCode
    /// Milliseconds to wait before reconnecting; `WireProtocol.doNotReconnect` means never.
    public var reconnectAfterMilliseconds: UInt32
    public var message: String

    public init(code: TerminusCode, reconnectAfterMilliseconds: UInt32 = 0, message: String = "") {
        self.code = code
        self.reconnectAfterMilliseconds = reconnectAfterMilliseconds
        self.message = message
    }
}

/// One frame of wire protocol v1.
public enum Frame: Hashable, Sendable {
    case hello(Hello)
    case welcome(Welcome)
    case publish(Message)
    case ack(Ack)
    case push(Message)
    /// Up to 8 opaque bytes, echoed in the PONG.
    case ping(ByteBuffer)
    case pong(ByteBuffer)
    case goAway(GoAway)

    public var type: FrameType {
        switch self {
        case .hello: .hello
        case .welcome: .welcome
        case .publish: .publish
        case .ack: .ack
        case .push: .push
        case .ping: .ping
        case .pong: .pong
        case .goAway: .goAway
        }
    }
}
