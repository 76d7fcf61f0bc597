internal import NIOCore
package import TerminusAuth
package import TerminusProtocol

/// How the device listener authenticates devices (`auth` and `device.tls.client_auth`).
package struct DeviceAuthenticator: Sendable {
    package var secrets: SecretStore
    /// When true, a device must present a client certificate naming it; tokens alone are refused.
    package var requireCertificate: Bool
    /// Clock in Unix seconds (tests inject one).
    package var now: @Sendable () -> Int64
    /// `auth.max_token_lifetime`: a token whose expiry lies further ahead than this many seconds
    /// is refused (`TOKEN_LIFETIME_EXCEEDED`); 0 accepts any expiry.
    package var maxTokenLifetimeSeconds: Int64
    /// Checked in place of a missing device's secret, so that an unknown device id costs the
    /// same HMAC as a known one with a wrong token (ids cannot be enumerated by timing).
    private let decoySecret: [UInt8] = (0..<32).map { _ in UInt8.random(in: 0...255) }

    /// One year: long enough for tokens provisioned at manufacturing and renewed yearly.
    package static let defaultMaxTokenLifetimeSeconds: Int64 = 366 * 86_400

    package init(
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

    /// Decides whether `credential` may open a session, and as which device.
    /// - Returns: the session's device id.
    package func authenticate(
        _ credential: DeviceCredential,
        maxDeviceIDLength: Int
    ) throws(AuthenticationFailure) -> String {
        if let certificateDeviceID = credential.certificateDeviceID {
            // mTLS: the certificate names the device; the credential may repeat the id but not
            // change it.
            guard credential.deviceID.isEmpty || credential.deviceID == certificateDeviceID else {
                throw .certificateRequired
            }
            try Self.validate(certificateDeviceID, maxLength: maxDeviceIDLength)
            return certificateDeviceID
        }
        if self.requireCertificate { throw .certificateRequired }
        try Self.validate(credential.deviceID, maxLength: maxDeviceIDLength)
        guard let token = credential.token else { throw .invalidCredential }
        // An unknown device is checked against the decoy secret and refused like a bad token:
        // same code, same work, so neither the answer nor its timing tells which ids exist.
        let secret = self.secrets.secret(for: credential.deviceID)
        let now = self.now()
        let verdict = DeviceToken.verify(
            token: token,
            deviceID: credential.deviceID,
            secret: secret ?? self.decoySecret,
            now: now
        )
        guard secret != nil else { throw .invalidCredential }
        switch verdict {
        case .valid(let expiresAt):
            if self.maxTokenLifetimeSeconds > 0 && expiresAt - now > self.maxTokenLifetimeSeconds {
                throw .lifetimeExceeded
            }
            return credential.deviceID
        case .expired:
            throw .expired
        case .invalid:
            throw .invalidCredential
        }
    }

    private static func validate(_ deviceID: String, maxLength: Int) throws(AuthenticationFailure) {
        do {
            try Topic.validateDeviceID(deviceID, maxLength: maxLength)
        } catch {
            throw .invalidDeviceID
        }
    }
}

extension DeviceAuthenticator {
    /// Wire protocol v1: authenticates a HELLO; refusals carry their v1 code.
    package func authenticate(
        _ hello: Hello,
        certificateDeviceID: String?,
        clientAddress: String = "",
        maxDeviceIDLength: Int
    ) throws(ProtocolError) -> String {
        do {
            return try self.authenticate(
                DeviceCredential(hello: hello, certificateDeviceID: certificateDeviceID, clientAddress: clientAddress),
                maxDeviceIDLength: maxDeviceIDLength
            )
        } catch {
            throw ProtocolError(TerminusCode(.authentication(error)), error.message)
        }
    }
}
