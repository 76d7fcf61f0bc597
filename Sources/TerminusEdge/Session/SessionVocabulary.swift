/// Why a session ends, in terms every device codec shares. The session state machine decides
/// with these; each codec maps them to its own wire codes (wire protocol v1: `TerminusCode(_:)`
/// in `WireV1Codes.swift`; an MQTT codec would map them to reason codes).
package enum SessionCloseReason: Hashable, Sendable {
    /// The device said goodbye, or the gateway ends a session with nothing wrong.
    case normal
    /// The gateway drains (rollout, scale-in).
    case shuttingDown
    /// Another connection authenticated as the same device.
    case replaced
    /// A backend asked (`Kick`).
    case kicked
    /// Closed at the connection cap to make room: not authenticated in time.
    case evicted
    case handshakeTimeout
    /// No credential (v1 HELLO) in time after the transport was ready.
    case credentialTimeout
    case keepaliveTimeout
    /// A frame that started did not complete in time.
    case frameTimeout
    /// The device does not read what it is sent.
    case slowConsumer
    /// The device went on sending while refused for its rate.
    case rateLimited
    /// More unanswered QoS 1 messages than the session allows.
    case inflightExceeded
    /// A message that is not valid in the session's state (a PUBLISH before the credential, a
    /// second credential).
    case unexpectedMessage
    case authentication(AuthenticationFailure)
    /// Too many failed authentications from the device's address.
    case authenticationThrottled
    /// The device authenticated too often (`limits.reconnect`): refused for a while.
    case reconnectingTooOften
    /// The codec found the device's bytes invalid; `code` is the codec's own, passed through.
    case protocolViolation(code: UInt16)
    case connectionReset
    /// The connection ended in the middle of a frame or without TLS close_notify.
    case uncleanShutdown
    case tlsFailed
    case internalError

    /// Nobody's fault: outstanding outcomes still reach the device before the connection
    /// closes, and the log line is `info`, not `notice`.
    package var isOrderly: Bool {
        switch self {
        case .normal, .shuttingDown, .replaced, .kicked: true
        default: false
        }
    }

    /// Whether the close frame is followed by the outcomes still owed to the device (it would
    /// resend those messages otherwise): orderly closes, and a close for the device's rate.
    package var waitsForOutcomes: Bool { self.isOrderly || self == .rateLimited }

    /// Whether nothing may be sent: the device reads nothing, so a close frame would only queue
    /// behind what it ignores.
    package var isSilent: Bool { self == .slowConsumer }

    /// The reconnect delay the gateway suggests when the caller gives none, in milliseconds:
    /// a device closed for its rate or evicted at the cap should not come straight back.
    package var defaultReconnectAfterMilliseconds: UInt32 {
        switch self {
        case .rateLimited: 10_000
        case .evicted: 5_000
        default: 0
        }
    }
}

/// Why a credential was refused, whatever the codec that carried it.
package enum AuthenticationFailure: Error, Hashable, Sendable {
    /// No credential, a token that does not verify, or an unknown device (the same answer, so
    /// device ids cannot be enumerated).
    case invalidCredential
    case expired
    /// The token expires further ahead than `auth.max_token_lifetime` allows.
    case lifetimeExceeded
    /// The listener requires a client certificate, or the claimed id differs from the one the
    /// certificate names.
    case certificateRequired
    /// The device id breaks the id rules (`docs/protocol.md`).
    case invalidDeviceID
}

/// What a device presents to authenticate, independent of the codec that carried it (wire v1
/// HELLO, MQTT CONNECT): the claimed id, a token, and the id a verified client certificate
/// names.
package struct DeviceCredential: Sendable {
    /// The id the device claims; may be empty when a certificate names it.
    package var deviceID: String
    /// An HMAC token (`docs/protocol.md`, "Tokens"), if the device sent one.
    package var token: [UInt8]?
    /// The device id named by a verified client certificate (mTLS).
    package var certificateDeviceID: String?
    /// Where the device connects from (after PROXY protocol), for throttling and logs.
    package var clientAddress: String

    package init(deviceID: String, token: [UInt8]?, certificateDeviceID: String?, clientAddress: String) {
        self.deviceID = deviceID
        self.token = token
        self.certificateDeviceID = certificateDeviceID
        self.clientAddress = clientAddress
    }
}
