import NIOCore

/// A failed connect in words an operator can act on: the TLS alert the gateway sent (by its
/// RFC 8446 name, with what usually causes it), a certificate this client did not trust, or
/// nothing listening. Anything else is shown as the error says it.
enum ConnectFailure {
    /// BoringSSL's reason for an alert received (`…_ALERT_<NAME>`) → the alert's name and a hint.
    private static let alerts: [(reason: String, name: String, hint: String)] = [
        ("CERTIFICATE_REQUIRED", "certificate_required", "the gateway requires a client certificate (--cert, --key)"),
        ("UNKNOWN_CA", "unknown_ca", "the gateway does not trust the CA of this client certificate"),
        ("BAD_CERTIFICATE", "bad_certificate", "the gateway refused this client certificate"),
        ("CERTIFICATE_UNKNOWN", "certificate_unknown", "the gateway refused this client certificate"),
        ("CERTIFICATE_EXPIRED", "certificate_expired", "this client certificate has expired"),
        ("CERTIFICATE_REVOKED", "certificate_revoked", "this client certificate is revoked"),
        ("PROTOCOL_VERSION", "protocol_version", "no TLS version in common (device.tls.min_version)"),
        ("HANDSHAKE_FAILURE", "handshake_failure", "no cipher suite or key-share group in common"),
        ("UNRECOGNIZED_NAME", "unrecognized_name", "the gateway has no certificate for this server name"),
        ("DECRYPT_ERROR", "decrypt_error", "a signature did not verify (a key that does not match its certificate?)"),
        ("INTERNAL_ERROR", "internal_error", "the gateway failed during the handshake"),
    ]

    static func describe(_ error: any Error, host: String, port: Int) -> String {
        let text = "\(error)"
        for alert in Self.alerts where text.contains("ALERT_\(alert.reason)") {
            return "the gateway at \(host):\(port) ended the TLS handshake with alert \(alert.name): \(alert.hint)"
        }
        if text.contains("CERTIFICATE_VERIFY_FAILED") || text.contains("unableToValidateCertificate") {
            return
                "the certificate of \(host):\(port) did not verify against the CA given (--ca) or the name (--server-name): \(text)"
        }
        if let io = error as? IOError, io.errnoCode == 111 {
            return "nothing listens on \(host):\(port) (connection refused)"
        }
        if text.contains("connectionRefused") || text.contains("Connection refused") {
            return "nothing listens on \(host):\(port) (connection refused)"
        }
        return text
    }
}
