import ArgumentParser
import Foundation
import TerminusAuth
import TerminusEdge
import TerminusServer

struct Token: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print a device token (HMAC-SHA256 over device id and expiry)."
    )

    @Option(name: .long, help: "Device id.")
    var device: String

    @Option(name: .long, help: "The device's secret: text, hex:… or base64:… (visible in ps; prefer --secret-file).")
    var secret: String?

    @Option(name: .long, help: "Read the secret from this file (first line). Default: $TERMINUS_DEVICE_SECRET.")
    var secretFile: String?

    @Option(name: .long, help: "Seconds until the token expires.")
    var ttl: Int64 = 86_400

    func run() throws {
        guard let key = try SecretInput.read(secret: self.secret, file: self.secretFile) else {
            throw ValidationError("give --secret-file, $TERMINUS_DEVICE_SECRET or --secret")
        }
        guard self.ttl > 0 else { throw ValidationError("--ttl must be positive") }
        let lifetime = DeviceAuthenticator.defaultMaxTokenLifetimeSeconds
        if self.ttl > lifetime {
            FileHandle.standardError.write(
                Data(
                    "warning: gateways refuse tokens valid for more than auth.max_token_lifetime (default \(lifetime) s) with TOKEN_LIFETIME_EXCEEDED\n"
                        .utf8
                )
            )
        }
        let expiry = Int64(Date().timeIntervalSince1970) + self.ttl
        print(DeviceToken.make(deviceID: self.device, secret: key, expiresAt: expiry))
    }
}
