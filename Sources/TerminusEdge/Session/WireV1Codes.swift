internal import NIOCore
package import TerminusProtocol

// Wire protocol v1's side of the session vocabulary: the codes a v1 device sees for each
// neutral close reason, and the v1 HELLO as a neutral credential. A second codec adds its
// own mapping beside this one; the session state machine never sees wire codes.

extension TerminusCode {
    /// The GOAWAY code (and log name) of a close reason.
    package init(_ reason: SessionCloseReason) {
        self =
            switch reason {
            case .normal: .ok
            case .shuttingDown: .shuttingDown
            case .replaced: .replaced
            case .kicked: .kicked
            case .evicted: .serverBusy
            case .handshakeTimeout: .handshakeTimeout
            case .credentialTimeout: .helloTimeout
            case .keepaliveTimeout: .keepaliveTimeout
            case .frameTimeout: .frameTimeout
            case .slowConsumer: .slowConsumer
            case .rateLimited: .rateLimited
            case .inflightExceeded: .inflightExceeded
            case .unexpectedMessage: .unexpectedFrame
            case .authentication(.invalidCredential): .authenticationFailed
            case .authentication(.expired): .tokenExpired
            case .authentication(.lifetimeExceeded): .tokenLifetimeExceeded
            case .authentication(.certificateRequired): .certificateRequired
            case .authentication(.invalidDeviceID): .invalidDeviceID
            case .authenticationThrottled: .authenticationThrottled
            case .reconnectingTooOften: .reconnectingTooOften
            case .protocolViolation(let code): TerminusCode(rawValue: code)
            case .connectionReset: .connectionReset
            case .uncleanShutdown: .uncleanShutdown
            case .tlsFailed: .tlsFailed
            case .internalError: .internalError
            }
    }
}

extension SessionCloseReason {
    /// A close that a backend or the session directory asks for with a v1 code
    /// (`DeviceSessionControl.goAway`): `REPLACED`, `KICKED`, `SHUTTING_DOWN`, or any other.
    package init(requested code: TerminusCode) {
        switch code {
        case .ok: self = .normal
        case .shuttingDown: self = .shuttingDown
        case .replaced: self = .replaced
        case .kicked: self = .kicked
        case .serverBusy: self = .evicted
        default: self = .protocolViolation(code: code.rawValue)
        }
    }
}

extension AuthenticationFailure {
    /// The text of the v1 GOAWAY and of the log line.
    package var message: String {
        switch self {
        case .invalidCredential: "invalid token"
        case .expired: "token expired"
        case .lifetimeExceeded: "token expires further ahead than auth.max_token_lifetime"
        case .certificateRequired: "a client certificate naming the device is required"
        case .invalidDeviceID: "invalid device id"
        }
    }
}

extension DeviceCredential {
    /// A v1 HELLO's credential: the token when `auth_method` is TOKEN.
    package init(hello: Hello, certificateDeviceID: String?, clientAddress: String) {
        self.init(
            deviceID: hello.deviceID,
            token: hello.authMethod == .token ? Array(hello.credential.readableBytesView) : nil,
            certificateDeviceID: certificateDeviceID,
            clientAddress: clientAddress
        )
    }
}
