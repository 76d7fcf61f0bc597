import Foundation
import Logging
import NIOCore
import NIOPosix
import NIOSSL
import Synchronization
import TerminusClient
import TerminusCompression
import TerminusEdge
import TerminusProtocol
import TerminusServer
import TerminusSessions
import Testing

/// Certificates for the end-to-end tests, made once per process with swift-certificates.
struct TestPKI: Sendable {
    let directory: String
    let ca: CertificateFactory.Issued
    let caFile: String
    let serverChain: String
    let serverKey: String

    static var directoryPath: String { NSTemporaryDirectory() + "terminus-e2e-\(getpid())" }

    /// The directory (keys included) is removed when the test process exits.
    static let shared: TestPKI = {
        let directory = Self.directoryPath
        try! FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        atexit { try? FileManager.default.removeItem(atPath: TestPKI.directoryPath) }
        let ca = try! CertificateFactory.makeCA(commonName: "Terminus test CA")
        let server = try! CertificateFactory.issueServer(
            ca: ca,
            commonName: "localhost",
            dnsNames: ["localhost"],
            ipAddresses: [[127, 0, 0, 1]]
        )
        func write(_ text: String, _ name: String) -> String {
            let path = directory + "/" + name
            _ = FileManager.default.createFile(atPath: path, contents: Data(text.utf8))
            return path
        }
        return TestPKI(
            directory: directory,
            ca: ca,
            caFile: write(ca.certificatePEM, "ca.pem"),
            serverChain: write(server.certificatePEM, "server.pem"),
            serverKey: write(server.privateKeyPEM, "server-key.pem")
        )
    }()

    func write(_ text: String, name: String) -> String {
        let path = self.directory + "/" + name
        _ = FileManager.default.createFile(atPath: path, contents: Data(text.utf8))
        return path
    }

    func clientTLS() throws -> TLSConfiguration {
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.trustRoots = .certificates([try NIOSSLCertificate(bytes: Array(self.ca.certificatePEM.utf8), format: .pem)])
        return tls
    }
}

/// A gateway on 127.0.0.1:0 with an in-memory sink and short timeouts.
final class TestGateway: Sendable {
    static let secret = "e2e-device-secret-0123456789"
    static let dictionary = Array(
        #"{"type":"payment","amount":,"currency":"CNY","merchant":"M-","device":"spk-"}"#.utf8
    )

    let gateway: Gateway
    let port: Int
    let sink: InMemorySink
    let configuration: GatewayConfiguration

    private init(gateway: Gateway, port: Int, sink: InMemorySink, configuration: GatewayConfiguration) {
        self.gateway = gateway
        self.port = port
        self.sink = sink
        self.configuration = configuration
    }

    /// - Parameter routed: use the configured `services` (gRPC routing) instead of `sink`.
    static func start(
        port: Int = 0,
        sink: InMemorySink = InMemorySink(),
        routed: Bool = false,
        logger: Logger = TestGateway.logger,
        configure: (inout GatewayConfiguration) -> Void = { _ in }
    ) async throws -> TestGateway {
        let configuration = Self.configuration(port: port, configure: configure)
        guard let scope = GatewayScope.current else {
            Issue.record("TestGateway.start outside a `.gatewayScope` suite: nothing would stop the gateway")
            throw CancellationError()
        }
        let gateway = try Gateway(configuration: configuration, sink: routed ? nil : sink, logger: logger)
        let address = try await gateway.start()
        let started = TestGateway(gateway: gateway, port: address.port!, sink: sink, configuration: configuration)
        scope.add(started)
        return started
    }

    static var logger: Logger {
        var logger = Logger(label: "e2e")
        logger.logLevel = ProcessInfo.processInfo.environment["TERMINUS_TEST_LOG"] == nil ? .critical : .debug
        return logger
    }

    /// The tests' gateway configuration: TLS with the test PKI, the shared device secret, a
    /// dictionary, short timeouts.
    static func configuration(
        port: Int = 0,
        configure: (inout GatewayConfiguration) -> Void = { _ in }
    ) -> GatewayConfiguration {
        let pki = TestPKI.shared
        var configuration = GatewayConfiguration()
        configuration.instanceID = "gw-test"
        configuration.edge.instanceID = "gw-test"
        configuration.eventLoopThreads = 2
        configuration.deviceListen = .init(host: "127.0.0.1", port: port)
        configuration.transport = .tls
        configuration.tls = .init(certificateChain: pki.serverChain, privateKey: pki.serverKey)
        configuration.secretsFile = pki.write("prefixes:\n  \"\": \"\(Self.secret)\"\n", name: "devices.yaml")
        let dictionaryFile = pki.directory + "/dict-1.bin"
        _ = FileManager.default.createFile(atPath: dictionaryFile, contents: Data(Self.dictionary))
        configuration.dictionaries = [.init(id: 1, file: dictionaryFile)]
        configuration.edge.timerTick = .milliseconds(100)
        // Generous: the whole suite runs at once on two cores, where a TLS handshake can wait
        // seconds for CPU. The tests of these timeouts set short ones.
        configuration.edge.handshakeTimeout = .seconds(10)
        configuration.edge.helloTimeout = .seconds(5)
        configuration.edge.closeGrace = .seconds(2)
        configuration.edge.keepaliveMin = 1
        configuration.edge.publishEvents = false  // tests that count messages opt in
        configuration.drainGrace = .seconds(3)
        configuration.drainReconnectWindow = .milliseconds(500)
        configuration.drainUnreadyDelay = .zero
        // Round robin, not the default pack: every test's devices then use both loops, so the
        // suite exercises what crosses loops (several tests count on it), and no device is moved
        // (a disconnect no other test expects). LoopPlacementTests covers pack and its moves.
        configuration.edge.placement.policy = .spread
        // Tests run gateways side by side: no fixed admin port (tests that need it set one).
        configuration.adminListen = nil
        configure(&configuration)
        return configuration
    }

    func stop() async {
        await self.gateway.stop()
    }

    func client(_ deviceID: String, keepalive: UInt16 = 0) throws -> TerminusClientConfiguration {
        var configuration = TerminusClientConfiguration(
            host: "127.0.0.1",
            port: self.port,
            tls: self.configuration.transport == .tls ? try TestPKI.shared.clientTLS() : nil,
            deviceID: deviceID,
            credential: .secret(Array(Self.secret.utf8), ttlSeconds: 600),
            compression: Self.compression
        )
        configuration.keepaliveSeconds = keepalive
        return configuration
    }

    static let compression = ClientCompression(dictionaries: try! .init([1: TestGateway.dictionary]))

    func connect(_ deviceID: String, keepalive: UInt16 = 0) async throws -> TerminusConnection {
        try await TerminusConnection.connect(
            try self.client(deviceID, keepalive: keepalive),
            group: MultiThreadedEventLoopGroup.singleton
        )
    }

    /// A HELLO with a valid token for `deviceID`.
    static func hello(
        _ deviceID: String,
        keepalive: UInt16 = 0,
        expiresIn: Int64 = 600,
        secret: String = TestGateway.secret
    ) -> Frame {
        let token = TerminusAuthTestSupport.token(deviceID: deviceID, secret: secret, expiresIn: expiresIn)
        return .hello(
            Hello(
                keepaliveSeconds: keepalive,
                capabilities: [],
                deviceID: deviceID,
                authMethod: .token,
                credential: ByteBuffer(string: token)
            )
        )
    }
}

/// A `LogHandler` that keeps what it is given, for tests that check what the gateway logs.
final class RecordingLogHandler: LogHandler, Sendable {
    struct Record: Sendable {
        var level: Logger.Level
        var message: String
        var metadata: [String: String]
    }

    private let records = Mutex<[Record]>([])
    var metadata: Logger.Metadata {
        get { [:] }
        set {}
    }
    var logLevel: Logger.Level {
        get { .debug }
        set {}
    }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { nil }
        set {}
    }

    func log(event: LogEvent) {
        let record = Record(
            level: event.level,
            message: event.message.description,
            metadata: (event.metadata ?? [:]).mapValues(\.description)
        )
        self.records.withLock { $0.append(record) }
    }

    var logged: [Record] { self.records.withLock { $0 } }

    /// A logger writing here (nothing else sees it).
    var logger: Logger { Logger(label: "recorded") { _ in self } }
}
