import ArgumentParser
import Foundation
import TerminusServer

/// A device secret from `--secret`, `--secret-file` (first line) or `$TERMINUS_DEVICE_SECRET`,
/// in that order: a secret given on the command line shows in `ps` and shell history, so the
/// file and the variable are the ones to use outside a demo. Refused below the gateway's
/// minimum (`SecretsFile.minimumSecretBytes`), naming where it came from.
enum SecretInput {
    static let environmentVariable = "TERMINUS_DEVICE_SECRET"

    /// nil when none of the three is given.
    static func read(secret: String?, file: String?) throws -> [UInt8]? {
        let text: String
        let source: String
        if let secret {
            (text, source) = (secret, "--secret")
        } else if let file {
            guard let data = FileManager.default.contents(atPath: file) else {
                throw ValidationError("--secret-file: cannot read \(file)")
            }
            text = String(String(decoding: data, as: UTF8.self).split(whereSeparator: \.isNewline).first ?? "")
                .trimmingCharacters(in: .whitespaces)
            source = "--secret-file \(file)"
        } else if let variable = ProcessInfo.processInfo.environment[Self.environmentVariable], !variable.isEmpty {
            (text, source) = (variable, "$\(Self.environmentVariable)")
        } else {
            return nil
        }
        guard let bytes = SecretsFile.decodeSecret(text) else {
            throw ValidationError("\(source): not valid text, hex:… or base64:…")
        }
        guard bytes.count >= SecretsFile.minimumSecretBytes else {
            throw ValidationError(
                "\(source): \(bytes.count) bytes; the gateway accepts secrets of at least \(SecretsFile.minimumSecretBytes) bytes"
            )
        }
        return bytes
    }
}
