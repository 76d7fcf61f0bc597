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

    public init(secrets: SecretStore, requireCertificate: Bool = false, now: @escaping @Sendable () -> Int64) {
        self.secrets = secrets
        self.requireCertificate = requireCertificate
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
        guard let secret = self.secrets.secret(for: hello.deviceID) else {
            // Same code as a bad token: do not reveal which device ids exist.
            throw ProtocolError(.authenticationFailed, "invalid token")
        }
        let token = hello.credential.readableBytesView
        switch DeviceToken.verify(token: Array(token), deviceID: hello.deviceID, secret: secret, now: self.now()) {
        case .valid:
            return hello.deviceID
        case .expired(let at):
            throw ProtocolError(.tokenExpired, "token expired at \(at)")
        case .invalid:
            throw ProtocolError(.authenticationFailed, "invalid token")
        }
    }
}
