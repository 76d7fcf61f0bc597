internal import NIOCore
public import TerminusAuth
public import TerminusProtocol

/// How the device listener authenticates devices (`auth` and `device.tls.client_auth`).
public struct DeviceAuthenticator: Sendable {
    public var secrets: SecretStore
    /// When true, a device must present a client certificate naming it; tokens alone are refused.
    public var requireCertificate: Bool
    /// Clock in Unix seconds (tests inject one).
    public var now: @Sendable () -> Int64
    /// `auth.max_token_lifetime`: a token whose expiry lies further ahead than this many seconds
    /// is refused (`TOKEN_LIFETIME_EXCEEDED`); 0 accepts any expiry.
    public var maxTokenLifetimeSeconds: Int64
    /// Checked in place of a missing device's secret, so that an unknown device id costs the
    /// same HMAC as a known one with a wrong token (ids cannot be enumerated by timing).
    private let decoySecret: [UInt8] = (0..<32).map { _ in UInt8.random(in: 0...255) }

    /// One year: long enough for tokens provisioned at manufacturing and renewed yearly.
    public static let defaultMaxTokenLifetimeSeconds: Int64 = 366 * 86_400

    public init(
        secrets: SecretStore,
        requireCertificate: Bool = false,
        maxTokenLifetimeSeconds: Int64 = DeviceAuthenticator.defaultMaxTokenLifetimeSeconds,
        now: @escaping @Sendable () -> Int64
    ) {
        self.secrets = secrets
        self.requireCertificate = requireCertificate
        self.maxTokenLifetimeSeconds = maxTokenLifetimeSeconds
        self.now = now
    }

    /// Decides whether `hello` may open a session, and as which device.
    ///
    /// - Parameter certificateDeviceID: the device id named by a verified client certificate.
    /// - Returns: the session's device id.
    public func authenticate(
        _ hello: Hello,
        certificateDeviceID: String?,
        maxDeviceIDLength: Int
    )
        throws(ProtocolError) -> String
    {
        if let certificateDeviceID {
            // mTLS: the certificate names the device; HELLO may repeat the id but not change it.
            guard hello.deviceID.isEmpty || hello.deviceID == certificateDeviceID else {
                throw ProtocolError(.certificateRequired, "HELLO device id differs from the certificate's")
            }
            try Topic.validateDeviceID(certificateDeviceID, maxLength: maxDeviceIDLength)
            return certificateDeviceID
        }
        if self.requireCertificate {
            throw ProtocolError(.certificateRequired, "this listener requires a client certificate")
        }
        try Topic.validateDeviceID(hello.deviceID, maxLength: maxDeviceIDLength)
        guard hello.authMethod == .token else {
            throw ProtocolError(.authenticationFailed, "no certificate and no token")
        }
        // An unknown device is checked against the decoy secret and refused like a bad token:
        // same code, same work, so neither the answer nor its timing tells which ids exist.
        let secret = self.secrets.secret(for: hello.deviceID)
        let token = hello.credential.readableBytesView
        let now = self.now()
        let verdict = DeviceToken.verify(
            token: Array(token),
            deviceID: hello.deviceID,
            secret: secret ?? self.decoySecret,
            now: now
        )
        guard secret != nil else { throw ProtocolError(.authenticationFailed, "invalid token") }
        switch verdict {
        case .valid(let expiresAt):
            if self.maxTokenLifetimeSeconds > 0 && expiresAt - now > self.maxTokenLifetimeSeconds {
                throw ProtocolError(
                    .tokenLifetimeExceeded,
                    "token expires at \(expiresAt), more than \(self.maxTokenLifetimeSeconds) s ahead"
                )
            }
            return hello.deviceID
        case .expired(let at):
            throw ProtocolError(.tokenExpired, "token expired at \(at)")
        case .invalid:
            throw ProtocolError(.authenticationFailed, "invalid token")
        }
    }
}
