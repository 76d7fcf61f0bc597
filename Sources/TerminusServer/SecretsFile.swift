internal import Foundation
package import TerminusAuth

/// Loads device secrets from YAML (`docs/configuration.md`, "Secrets file"):
///
/// ```yaml
/// devices:            # exact device id → secret
///   printer-0001: "a-long-random-secret"
/// prefixes:           # device class: every id starting with the prefix
///   "spk-": "hex:8f3a…"
/// ```
/// A secret is UTF-8 text, or bytes written `hex:…` or `base64:…`; at least 16 bytes.
package enum SecretsFile {
    package static let minimumSecretBytes = 16

    package static func load(path: String) throws -> SecretStore {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ConfigurationError(key: "auth.secrets_file", Gateway.unreadable(path))
        }
        return try self.parse(yaml: String(decoding: data, as: UTF8.self), origin: path)
    }

    package static func parse(yaml: String, origin: String = "secrets file") throws -> SecretStore {
        let root = try Section.parse(yaml: yaml, errorKey: "auth.secrets_file", what: origin)
        try root.allow(["devices", "prefixes"])
        let devices = try self.table(root, "devices", origin: origin)
        let prefixes = try self.table(root, "prefixes", origin: origin)
        let store = SecretStore(devices: devices, prefixes: prefixes)
        guard !store.isEmpty else {
            throw ConfigurationError(key: "auth.secrets_file", "\(origin) lists no devices and no prefixes")
        }
        return store
    }

    /// A bad secret's error names the file and the entry (never the secret).
    private static func table(_ root: Section, _ name: String, origin: String) throws -> [String: [UInt8]] {
        guard let section = try root.section(name) else { return [:] }
        var table: [String: [UInt8]] = [:]
        for key in section.keys {
            let text = try section.string(key) ?? ""
            guard let secret = Self.decodeSecret(text), secret.count >= Self.minimumSecretBytes else {
                throw ConfigurationError(
                    key: "auth.secrets_file",
                    "\(origin): the secret of \(name).\(key) must be at least \(Self.minimumSecretBytes) bytes (text, hex:… or base64:…)"
                )
            }
            table[key] = secret
        }
        return table
    }

    package static func decodeSecret(_ text: String) -> [UInt8]? {
        if text.hasPrefix("hex:") {
            let hex = Array(text.utf8.dropFirst(4))
            guard hex.count % 2 == 0 else { return nil }
            var bytes: [UInt8] = []
            for index in stride(from: 0, to: hex.count, by: 2) {
                guard let byte = UInt8(String(decoding: hex[index..<index + 2], as: UTF8.self), radix: 16) else {
                    return nil
                }
                bytes.append(byte)
            }
            return bytes
        }
        if text.hasPrefix("base64:") {
            return Data(base64Encoded: String(text.dropFirst(7))).map { Array($0) }
        }
        return Array(text.utf8)
    }
}

extension Section {
    var keys: [String] { self.pairNames }
}
