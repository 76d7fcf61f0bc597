import ArgumentParser
import Foundation
import NIOCore
import NIOPosix
import NIOSSL
import TerminusClient
import TerminusCompression
import TerminusProtocol
import TerminusServer

struct Device: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Act as one device from the command line (like mosquitto_pub / mosquitto_sub).",
        subcommands: [Publish.self, Listen.self, Fleet.self]
    )
}

/// Options shared by `device publish` and `device listen`.
struct ConnectionOptions: ParsableArguments {
    @Option(name: .long, help: "Gateway address HOST:PORT.")
    var gateway: String = "127.0.0.1:7883"

    @Option(
        name: .customShort("h"),
        help: ArgumentHelp("Gateway host (mosquitto style; overrides --gateway's host).", valueName: "host")
    )
    var host: String?

    @Option(
        name: .customShort("p"),
        help: ArgumentHelp("Gateway port (mosquitto style; overrides --gateway's port).", valueName: "port")
    )
    var port: Int?

    @Option(name: [.long, .customShort("i")], help: "Device id (with --cert, defaults to the certificate's name).")
    var device: String = ""

    @Option(name: .long, help: "Device secret (text, hex:… or base64:…); a fresh token is made from it.")
    var secret: String?

    @Option(name: .long, help: "Read the device secret from this file (first line). Default: $TERMINUS_DEVICE_SECRET.")
    var secretFile: String?

    @Option(name: .long, help: "A ready-made token (see `terminus token`).")
    var token: String?

    @Option(name: .long, help: "Client certificate (PEM) for mTLS.")
    var cert: String?

    @Option(name: .long, help: "Client certificate's private key (PEM).")
    var key: String?

    @Option(name: .long, help: "CA bundle (PEM) that signed the gateway's certificate.")
    var ca: String?

    @Flag(name: .long, help: "Do not verify the gateway's certificate (debugging only).")
    var insecure = false

    @Flag(name: .long, help: "Plain TCP, no TLS (a listener behind a TLS-terminating proxy).")
    var plaintext = false

    @Option(name: .long, help: "Name to verify in the gateway's certificate (default: the gateway host).")
    var serverName: String?

    @Option(name: .long, help: "Keepalive to ask for, in seconds (0: the gateway's default).")
    var keepalive: UInt16 = 0

    @Option(name: .long, help: "Preset dictionary ID:FILE for compressed payloads (repeatable).")
    var dictionary: [String] = []

    func makeConfiguration() throws -> TerminusClientConfiguration {
        guard var address = GatewayConfiguration.HostPort(parsing: self.gateway) else {
            throw ValidationError("--gateway must be HOST:PORT")
        }
        if let host = self.host { address.host = host }
        if let port = self.port {
            guard (1...65_535).contains(port) else { throw ValidationError("-p must be a port, 1…65535") }
            address.port = port
        }
        let credential: TerminusClientConfiguration.Credential
        if let token = self.token {
            credential = .token(token)
        } else if let bytes = try SecretInput.read(secret: self.secret, file: self.secretFile) {
            credential = .secret(bytes, ttlSeconds: 3600)
        } else if self.cert != nil {
            credential = .certificate
        } else {
            throw ValidationError("give --secret-file, $TERMINUS_DEVICE_SECRET, --secret, --token or --cert/--key")
        }
        var tls: TLSConfiguration? = nil
        if !self.plaintext {
            var configuration = TLSConfiguration.makeClientConfiguration()
            configuration.minimumTLSVersion = .tlsv12
            if self.insecure {
                configuration.certificateVerification = .none
            } else if let ca = self.ca {
                configuration.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(ca))
            }
            if let cert = self.cert {
                guard let key = self.key else { throw ValidationError("--cert needs --key") }
                configuration.certificateChain = try NIOSSLCertificate.fromPEMFile(cert).map { .certificate($0) }
                configuration.privateKey = .privateKey(try NIOSSLPrivateKey(file: key, format: .pem))
            }
            tls = configuration
        }
        var dictionaries: [UInt16: [UInt8]] = [:]
        for entry in self.dictionary {
            let parts = entry.split(separator: ":", maxSplits: 1)
            guard parts.count == 2, let id = UInt16(parts[0]),
                let data = FileManager.default.contents(atPath: String(parts[1]))
            else {
                throw ValidationError("--dictionary must be ID:FILE with a readable file")
            }
            dictionaries[id] = Array(data)
        }
        var configuration = TerminusClientConfiguration(
            host: address.host,
            port: address.port,
            tls: tls,
            deviceID: self.device,
            credential: credential,
            compression: ClientCompression(dictionaries: try DictionarySet(dictionaries))
        )
        configuration.serverHostname = self.serverName
        configuration.keepaliveSeconds = self.keepalive
        return configuration
    }
}

func standardError(_ text: String) {
    FileHandle.standardError.write(Data((text + "\n").utf8))
}

extension Device {
    struct Publish: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Publish messages and print each ACK. Exit 0 when every QoS 1 message was accepted.",
            // -h is the gateway host, as in mosquitto_pub; help is --help.
            helpNames: [.long]
        )

        @OptionGroup var connection: ConnectionOptions

        @Option(name: [.long, .customShort("t")], help: "Topic to publish to.")
        var topic: String

        @Option(
            name: [.long, .customShort("m")],
            help:
                "Message payload (repeatable). Without --message or --file, each line of standard input is one message."
        )
        var message: [String] = []

        @Option(name: .long, help: "Read one payload from this file.")
        var file: String?

        @Option(name: [.long, .customShort("q")], help: "QoS: 0 (no ACK) or 1 (acknowledged).")
        var qos: UInt8 = 1

        @Flag(name: .long, help: "Send payloads as raw deflate.")
        var compress = false

        @Option(name: .long, help: "Compress with this preset dictionary id (needs --dictionary ID:FILE).")
        var dictionaryID: UInt16?

        @Option(name: .long, help: "Send the messages this many times.")
        var count: Int = 1

        func run() async throws {
            guard let qos = QoS(rawValue: self.qos) else { throw ValidationError("--qos must be 0 or 1") }
            var payloads: [ByteBuffer] = self.message.map { ByteBuffer(string: $0) }
            if let file = self.file {
                guard let data = FileManager.default.contents(atPath: file) else {
                    throw ValidationError("cannot read \(file)")
                }
                payloads.append(ByteBuffer(bytes: data))
            }
            if payloads.isEmpty {
                while let line = readLine() { payloads.append(ByteBuffer(string: line)) }
            }
            let configuration = try self.connection.makeConfiguration()
            let group = MultiThreadedEventLoopGroup.singleton
            let connection: TerminusConnection
            do {
                connection = try await TerminusConnection.connect(configuration, group: group)
            } catch {
                standardError(
                    "connect failed: \(ConnectFailure.describe(error, host: configuration.host, port: configuration.port))"
                )
                throw ExitCode(3)
            }
            standardError(
                "connected to \(connection.welcome.gatewayID) as \(connection.welcome.deviceID) (keepalive \(connection.welcome.keepaliveSeconds)s)"
            )
            var failures = 0
            for _ in 0..<max(1, self.count) {
                for payload in payloads {
                    do {
                        let ack = try await connection.publish(
                            topic: self.topic,
                            payload: payload,
                            qos: qos,
                            compress: self.compress || self.dictionaryID != nil,
                            dictionaryID: self.dictionaryID
                        )
                        if qos == .atLeastOnce {
                            print(
                                "ack id=\(ack.messageID) status=\(ack.status)"
                                    + (ack.retryAfterSeconds > 0 ? " retry_after=\(ack.retryAfterSeconds)s" : "")
                            )
                            if ack.status != .ok { failures += 1 }
                        } else {
                            print("sent qos=0")
                        }
                    } catch {
                        standardError("publish failed: \(error)")
                        failures += 1
                    }
                }
            }
            await connection.close()
            if failures > 0 { throw ExitCode(1) }
        }
    }

    struct Listen: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Stay connected, print each PUSH and acknowledge it; reconnect with backoff.",
            // -h is the gateway host, as in mosquitto_sub; help is --help.
            helpNames: [.long]
        )

        @OptionGroup var connection: ConnectionOptions

        @Option(name: [.long, .customShort("C")], help: "Exit after this many pushes (0: run until interrupted).")
        var count: Int = 0

        @Flag(name: .long, help: "Exit when the connection ends instead of reconnecting.")
        var noReconnect = false

        func run() async throws {
            let configuration = try self.connection.makeConfiguration()
            let group = MultiThreadedEventLoopGroup.singleton
            let limit = self.count
            let noReconnect = self.noReconnect
            let device = TerminusDevice(configuration: configuration)
            let received = Counter()
            let goAway: GoAway?
            do {
                goAway = try await self.listen(
                    device,
                    group: group,
                    limit: limit,
                    noReconnect: noReconnect,
                    received: received
                )
            } catch is CancellationError where (limit > 0 && received.current >= limit) || noReconnect {
                // Stopped as asked: after --count pushes, or when the connection ended.
                return
            }
            if let goAway, goAway.code != .ok { standardError("stopped: \(goAway.code) \(goAway.message)") }
        }

        private func listen(
            _ device: TerminusDevice,
            group: MultiThreadedEventLoopGroup,
            limit: Int,
            noReconnect: Bool,
            received: Counter
        ) async throws -> GoAway? {
            try await device.run(
                group: group,
                events: { event in
                    switch event {
                    case .connected(let welcome):
                        standardError("connected to \(welcome.gatewayID) as \(welcome.deviceID)")
                    case .disconnected(let goAway):
                        standardError("disconnected" + (goAway.map { ": \($0.code) \($0.message)" } ?? ""))
                    case .connectFailed(let error):
                        standardError(
                            "connect failed: \(ConnectFailure.describe(error, host: device.configuration.host, port: device.configuration.port))"
                        )
                    case .waiting(let milliseconds):
                        standardError("reconnecting in \(milliseconds) ms")
                    }
                },
                session: { connection in
                    for await push in connection.pushes {
                        let text = String(decoding: push.payload.readableBytesView, as: UTF8.self)
                        // Written at once (not buffered), also into a pipe or a file.
                        FileHandle.standardOutput.write(
                            Data(
                                "push id=\(push.messageID) topic=\(push.topic) qos=\(push.qos.rawValue) payload=\(text)\n"
                                    .utf8
                            )
                        )
                        if push.qos == .atLeastOnce { connection.acknowledge(push) }
                        if limit > 0 && received.increment() >= limit {
                            await connection.close()
                            throw CancellationError()
                        }
                    }
                    if noReconnect { throw CancellationError() }
                }
            )
        }
    }
}

/// A tiny thread-safe counter for the listen loop.
final class Counter: @unchecked Sendable {
    private var value = 0
    private let lock = NSLock()

    var current: Int {
        self.lock.lock()
        defer { self.lock.unlock() }
        return self.value
    }

    func increment() -> Int {
        self.lock.lock()
        defer { self.lock.unlock() }
        self.value += 1
        return self.value
    }
}
