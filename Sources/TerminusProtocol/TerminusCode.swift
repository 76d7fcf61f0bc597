/// A stable numeric code that the gateway reports to a device (in ACK and GOAWAY frames) and
/// names in its logs.
///
/// Codes are part of wire protocol v1 (`docs/protocol.md`, "Codes"). The struct wraps a raw
/// `UInt16` so that codes can be added without breaking callers; an unknown value received
/// from a peer is kept as is and printed as `UNKNOWN(n)`.
public struct TerminusCode: Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt16

    public init(rawValue: UInt16) {
        self.rawValue = rawValue
    }

    // MARK: Per-message results (ACK status)

    /// ACK: the message was accepted. GOAWAY: an orderly close with nothing wrong.
    public static let ok = TerminusCode(rawValue: 0)
    /// ACK: no service subscribes to the topic; the gateway dropped the message.
    public static let noRoute = TerminusCode(rawValue: 1)
    /// ACK: a service refused the message and a retry will not help.
    public static let rejected = TerminusCode(rawValue: 2)
    /// ACK: not accepted now; resend after the ACK's retry-after hint.
    public static let retryLater = TerminusCode(rawValue: 3)
    /// ACK: the device exceeded its message or byte rate; resend after the hint. GOAWAY: it kept
    /// sending while refused.
    public static let rateLimited = TerminusCode(rawValue: 4)

    // MARK: Session (GOAWAY)

    /// The gateway is draining; reconnect after the hint (to another instance).
    public static let shuttingDown = TerminusCode(rawValue: 100)
    /// Another connection authenticated with the same device id.
    public static let replaced = TerminusCode(rawValue: 101)
    /// An operator or backend disconnected the device.
    public static let kicked = TerminusCode(rawValue: 102)
    /// Nothing arrived from the device for 1.5 × the negotiated keepalive.
    public static let keepaliveTimeout = TerminusCode(rawValue: 103)
    /// No HELLO arrived within the configured time after the connection (and TLS) opened.
    public static let helloTimeout = TerminusCode(rawValue: 104)
    /// The gateway holds its maximum number of connections.
    public static let serverBusy = TerminusCode(rawValue: 105)
    /// The TLS handshake did not finish in time (logged only: no frame can be sent).
    public static let handshakeTimeout = TerminusCode(rawValue: 106)
    /// The device did not read what the gateway sent for longer than the write-stall timeout
    /// (logged only: nothing more can be sent).
    public static let slowConsumer = TerminusCode(rawValue: 107)
    /// A frame whose first bytes arrived was not complete within the frame timeout.
    public static let frameTimeout = TerminusCode(rawValue: 108)
    /// The peer reset the TCP connection (logged only).
    public static let connectionReset = TerminusCode(rawValue: 109)
    /// The connection ended without TLS close_notify, or in the middle of a frame (logged only).
    public static let uncleanShutdown = TerminusCode(rawValue: 110)
    /// The device authenticated more often than `limits.reconnect` allows; reconnect after the
    /// hint.
    public static let reconnectingTooOften = TerminusCode(rawValue: 111)

    // MARK: Protocol errors (GOAWAY)

    /// A frame's body is shorter or longer than its kind's layout requires.
    public static let malformedFrame = TerminusCode(rawValue: 200)
    /// The length prefix is above the negotiated maximum frame size.
    public static let frameTooLarge = TerminusCode(rawValue: 201)
    public static let unknownFrameType = TerminusCode(rawValue: 202)
    /// A reserved flag bit is set, or the flag combination is invalid.
    public static let badFlags = TerminusCode(rawValue: 203)
    public static let unsupportedVersion = TerminusCode(rawValue: 204)
    /// A topic is empty, too long, not UTF-8, or uses a reserved form.
    public static let invalidTopic = TerminusCode(rawValue: 205)
    /// A frame kind that is not valid in the session's current state.
    public static let unexpectedFrame = TerminusCode(rawValue: 206)
    /// More unacknowledged QoS 1 messages than WELCOME allowed.
    public static let inflightExceeded = TerminusCode(rawValue: 207)
    public static let invalidDeviceID = TerminusCode(rawValue: 208)
    public static let unknownTopicAlias = TerminusCode(rawValue: 209)
    /// The PROXY protocol header was missing or malformed (logged only).
    public static let proxyHeaderInvalid = TerminusCode(rawValue: 210)
    /// The TLS handshake failed, e.g. plain bytes on a TLS port (logged only).
    public static let tlsFailed = TerminusCode(rawValue: 211)

    // MARK: Compression (GOAWAY)

    public static let decompressionFailed = TerminusCode(rawValue: 300)
    /// The inflated payload exceeded the size or ratio cap (a zip bomb).
    public static let inflateLimitExceeded = TerminusCode(rawValue: 301)
    public static let unknownDictionary = TerminusCode(rawValue: 302)

    // MARK: Authentication (GOAWAY)

    public static let authenticationFailed = TerminusCode(rawValue: 400)
    public static let tokenExpired = TerminusCode(rawValue: 401)
    /// The listener requires a client certificate naming the device, and there was none or
    /// it names another device.
    public static let certificateRequired = TerminusCode(rawValue: 402)
    /// The token's expiry lies further ahead than the gateway's maximum token lifetime.
    public static let tokenLifetimeExceeded = TerminusCode(rawValue: 403)
    /// Too many failed authentications from this client address; retry after the hint.
    public static let authenticationThrottled = TerminusCode(rawValue: 404)

    // MARK: Gateway

    public static let internalError = TerminusCode(rawValue: 500)

    /// Every code this version defines, in numeric order.
    public static let allDefined: [TerminusCode] = [
        .ok, .noRoute, .rejected, .retryLater, .rateLimited,
        .shuttingDown, .replaced, .kicked, .keepaliveTimeout, .helloTimeout, .serverBusy,
        .handshakeTimeout, .slowConsumer, .frameTimeout, .connectionReset, .uncleanShutdown,
        .reconnectingTooOften,
        .malformedFrame, .frameTooLarge, .unknownFrameType, .badFlags, .unsupportedVersion,
        .invalidTopic, .unexpectedFrame, .inflightExceeded, .invalidDeviceID, .unknownTopicAlias,
        .proxyHeaderInvalid, .tlsFailed,
        .decompressionFailed, .inflateLimitExceeded, .unknownDictionary,
        .authenticationFailed, .tokenExpired, .certificateRequired, .tokenLifetimeExceeded,
        .authenticationThrottled,
        .internalError,
    ]

    /// The stable upper-case name used in `docs/protocol.md` and in logs.
    public var name: String {
        switch self.rawValue {
        case 0: "OK"
        case 1: "NO_ROUTE"
        case 2: "REJECTED"
        case 3: "RETRY_LATER"
        case 4: "RATE_LIMITED"
        case 100: "SHUTTING_DOWN"
        case 101: "REPLACED"
        case 102: "KICKED"
        case 103: "KEEPALIVE_TIMEOUT"
        case 104: "HELLO_TIMEOUT"
        case 105: "SERVER_BUSY"
        case 106: "HANDSHAKE_TIMEOUT"
        case 107: "SLOW_CONSUMER"
        case 108: "FRAME_TIMEOUT"
        case 109: "CONNECTION_RESET"
        case 110: "UNCLEAN_SHUTDOWN"
        case 111: "RECONNECTING_TOO_OFTEN"
        case 200: "MALFORMED_FRAME"
        case 201: "FRAME_TOO_LARGE"
        case 202: "UNKNOWN_FRAME_TYPE"
        case 203: "BAD_FLAGS"
        case 204: "UNSUPPORTED_VERSION"
        case 205: "INVALID_TOPIC"
        case 206: "UNEXPECTED_FRAME"
        case 207: "INFLIGHT_EXCEEDED"
        case 208: "INVALID_DEVICE_ID"
        case 209: "UNKNOWN_TOPIC_ALIAS"
        case 210: "PROXY_HEADER_INVALID"
        case 211: "TLS_FAILED"
        case 300: "DECOMPRESSION_FAILED"
        case 301: "INFLATE_LIMIT_EXCEEDED"
        case 302: "UNKNOWN_DICTIONARY"
        case 400: "AUTHENTICATION_FAILED"
        case 401: "TOKEN_EXPIRED"
        case 402: "CERTIFICATE_REQUIRED"
        case 403: "TOKEN_LIFETIME_EXCEEDED"
        case 404: "AUTHENTICATION_THROTTLED"
        case 500: "INTERNAL_ERROR"
        default: "UNKNOWN(\(self.rawValue))"
        }
    }

    public var description: String { "\(self.name)(\(self.rawValue))" }
}
