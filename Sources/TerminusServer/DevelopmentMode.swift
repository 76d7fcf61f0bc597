internal import Foundation
internal import NIOCore
internal import TerminusEdge

/// The embedded defaults of `terminus run` without a configuration file: loopback only, a
/// development CA and server certificate made at first start, a generated device secret that
/// any device id may use, a generated API token (used when `--api-listen` turns the backend
/// API on), and the logging sink. Never used when a file is given.
package enum DevelopmentMode {
    package struct Material: Sendable {
        package var directory: String
        package var caFile: String
        package var deviceSecret: String
        /// The bearer token the development API listener admits (`api-token.txt`).
        package var apiToken: String
        /// True when this call created the files (first start).
        package var created: Bool
    }

    package static let defaultDirectory = ".terminus-dev"
    package static let defaultPort = 7883

    /// Creates (first start) or reuses the development files in `directory`.
    package static func prepare(directory: String) throws -> Material {
        let fm = FileManager.default
        let caFile = directory + "/ca.pem"
        let secretFile = directory + "/device-secret.txt"
        var created = false
        if !fm.fileExists(atPath: caFile) || !fm.fileExists(atPath: secretFile)
            || !fm.fileExists(atPath: directory + "/server.pem")
        {
            try fm.createDirectory(
                atPath: directory,
                withIntermediateDirectories: true,
                attributes: [.posixPermissions: 0o700]
            )
            let ca = try CertificateFactory.makeCA(commonName: "Terminus development CA")
            let server = try CertificateFactory.issueServer(
                ca: ca,
                commonName: "localhost",
                dnsNames: ["localhost"],
                ipAddresses: [[127, 0, 0, 1], [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]]
            )
            let secret = Self.randomHex(bytes: 24)
            try Self.write(ca.certificatePEM, to: caFile, mode: 0o644)
            try Self.write(ca.privateKeyPEM, to: directory + "/ca-key.pem", mode: 0o600)
            try Self.write(server.certificatePEM, to: directory + "/server.pem", mode: 0o644)
            try Self.write(server.privateKeyPEM, to: directory + "/server-key.pem", mode: 0o600)
            try Self.write(secret + "\n", to: secretFile, mode: 0o600)
            try Self.write("prefixes:\n  \"\": \"\(secret)\"\n", to: directory + "/devices.yaml", mode: 0o600)
            created = true
        }
        // Directories made before the API token existed get one on their next start.
        let tokenFile = directory + "/api-token.txt"
        if !fm.fileExists(atPath: tokenFile) {
            try Self.write(Self.randomHex(bytes: 24) + "\n", to: tokenFile, mode: 0o600)
        }
        return Material(
            directory: directory,
            caFile: caFile,
            deviceSecret: try Self.readLine(secretFile),
            apiToken: try Self.readLine(tokenFile),
            created: created
        )
    }

    /// Turns the backend API on at `listen`, admitting the development token.
    package static func enableAPI(
        _ config: inout GatewayConfiguration,
        material: Material,
        listen: GatewayConfiguration.HostPort
    ) {
        config.apiListen = listen
        config.apiTokens = [material.apiToken]
    }

    private static func readLine(_ path: String) throws -> String {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ConfigurationError(key: "", "cannot read \(path)")
        }
        return String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    private static func randomHex(bytes: Int) -> String {
        var random = SystemRandomNumberGenerator()
        return (0..<bytes).map { _ in String(format: "%02x", UInt8.random(in: 0...255, using: &random)) }.joined()
    }

    /// The configuration development mode runs with.
    package static func configuration(material: Material) -> GatewayConfiguration {
        var config = GatewayConfiguration()
        config.developmentMode = true
        config.instanceID = "terminus-dev"
        config.edge.instanceID = config.instanceID
        config.deviceListen = .init(host: "127.0.0.1", port: Self.defaultPort)
        config.transport = .tls
        config.tls = .init(
            certificateChain: material.directory + "/server.pem",
            privateKey: material.directory + "/server-key.pem"
        )
        config.secretsFile = material.directory + "/devices.yaml"
        config.drainGrace = .seconds(5)
        config.drainReconnectWindow = .seconds(1)
        // No load balancer in front: Ctrl-C stops at once.
        config.drainUnreadyDelay = .zero
        return config
    }

    private static func write(_ text: String, to path: String, mode: Int) throws {
        guard
            FileManager.default.createFile(
                atPath: path,
                contents: Data(text.utf8),
                attributes: [.posixPermissions: mode]
            )
        else {
            throw ConfigurationError(key: "", "cannot write \(path)")
        }
    }
}
