internal import Foundation
internal import NIOCore
internal import TerminusEdge

/// The embedded defaults of `terminus run` without a configuration file: loopback only, a
/// development CA and server certificate made at first start, a generated device secret that
/// any device id may use, and the logging sink. Never used when a file is given.
public enum DevelopmentMode {
    public struct Material: Sendable {
        public var directory: String
        public var caFile: String
        public var deviceSecret: String
        /// True when this call created the files (first start).
        public var created: Bool
    }

    public static let defaultDirectory = ".terminus-dev"
    public static let defaultPort = 7883

    /// Creates (first start) or reuses the development files in `directory`.
    public static func prepare(directory: String) throws -> Material {
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
            var random = SystemRandomNumberGenerator()
            let secret = (0..<24).map { _ in String(format: "%02x", UInt8.random(in: 0...255, using: &random)) }
                .joined()
            try Self.write(ca.certificatePEM, to: caFile, mode: 0o644)
            try Self.write(ca.privateKeyPEM, to: directory + "/ca-key.pem", mode: 0o600)
            try Self.write(server.certificatePEM, to: directory + "/server.pem", mode: 0o644)
            try Self.write(server.privateKeyPEM, to: directory + "/server-key.pem", mode: 0o600)
            try Self.write(secret + "\n", to: secretFile, mode: 0o600)
            try Self.write("prefixes:\n  \"\": \"\(secret)\"\n", to: directory + "/devices.yaml", mode: 0o600)
            created = true
        }
        guard let secretData = fm.contents(atPath: secretFile) else {
            throw ConfigurationError(key: "", "cannot read \(secretFile)")
        }
        let secret = String(decoding: secretData, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        return Material(directory: directory, caFile: caFile, deviceSecret: secret, created: created)
    }

    /// The configuration development mode runs with.
    public static func configuration(material: Material) -> GatewayConfiguration {
        var config = GatewayConfiguration()
        config.developmentMode = true
        config.instanceID = "terminus-dev"
        config.edge.gatewayID = config.instanceID
        config.deviceListen = .init(host: "127.0.0.1", port: Self.defaultPort)
        config.transport = .tls
        config.tls = .init(
            certificateChain: material.directory + "/server.pem",
            privateKey: material.directory + "/server-key.pem"
        )
        config.secretsFile = material.directory + "/devices.yaml"
        config.drainGrace = .seconds(5)
        config.drainReconnectWindow = .seconds(1)
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
