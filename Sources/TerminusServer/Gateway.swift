internal import Foundation
public import Logging
public import NIOCore
internal import NIOPosix
internal import NIOSSL
public import ServiceLifecycle
internal import Synchronization
internal import TerminusAdmin
internal import TerminusAuth
internal import TerminusBackend
internal import TerminusCompression
public import TerminusEdge
public import TerminusSessions

/// The composition root: builds the event loops, TLS context, secrets, dictionaries and the
/// device edge from a `GatewayConfiguration`, and runs them as one `Service`.
///
/// On graceful shutdown (SIGTERM) it stops accepting, sends every device GOAWAY(SHUTTING_DOWN)
/// with reconnect hints spread over `drain.reconnect_window`, and waits up to `drain.grace`.
public final class Gateway: Service, Sendable {
    public let configuration: GatewayConfiguration
    public let directory: any SessionDirectory
    private let group: MultiThreadedEventLoopGroup
    private let edge: EdgeServer
    private let router: BackendRouter?
    private let api: APIServer?
    private let admin: AdminServer?
    private let draining = Atomic<Bool>(false)
    private let logger: Logger

    public init(
        configuration: GatewayConfiguration,
        sink: (any UplinkSink)? = nil,
        directory: any SessionDirectory = LocalSessionDirectory(),
        logger: Logger,
        clock: @escaping @Sendable () -> Int64 = { WallClock.nowSeconds() }
    ) throws {
        self.configuration = configuration
        self.directory = directory
        self.logger = logger
        let threads = configuration.eventLoopThreads == 0 ? System.coreCount : configuration.eventLoopThreads
        self.group = MultiThreadedEventLoopGroup(numberOfThreads: threads)
        do {
            let security = try Self.makeSecurity(configuration)
            let secrets = try configuration.secretsFile.map { try SecretsFile.load(path: $0) } ?? SecretStore()
            let dictionaries = try Self.loadDictionaries(configuration.dictionaries)
            let listener = DeviceListener(
                host: configuration.deviceListen.host,
                port: configuration.deviceListen.port,
                security: security,
                proxyProtocol: configuration.proxyProtocol,
                proxyHeaderMaxSize: configuration.proxyHeaderMaxSize
            )
            let authenticator = DeviceAuthenticator(
                secrets: secrets,
                requireCertificate: configuration.tls?.clientAuth == .required,
                maxTokenLifetimeSeconds: configuration.maxTokenLifetimeSeconds,
                now: clock
            )
            let router: BackendRouter?
            if sink == nil && !configuration.services.isEmpty {
                router = try BackendRouter(
                    subscriptions: configuration.services,
                    instanceID: configuration.instanceID,
                    group: self.group,
                    logger: logger
                )
            } else {
                router = nil
            }
            self.router = router
            if let listen = configuration.apiListen {
                if let files = configuration.apiTLS { try Self.checkAPITLS(files) }
                self.api = APIServer(
                    host: listen.host,
                    port: listen.port,
                    tokens: configuration.apiTokens,
                    security: configuration.apiTLS.map {
                        .tls(certificateChain: $0.certificateChain, privateKey: $0.privateKey, clientCA: $0.clientCA)
                    } ?? .plaintext,
                    directory: directory,
                    instanceID: configuration.instanceID,
                    defaultTTLMilliseconds: configuration.apiSendTimeoutMilliseconds,
                    maxPayloadSize: configuration.edge.inflateLimits.maxInflatedSize,
                    maxTopicLength: configuration.edge.maxTopicLength,
                    limits: configuration.apiLimits,
                    logger: logger
                )
            } else {
                self.api = nil
            }
            self.edge = try EdgeServer(
                group: self.group,
                listener: listener,
                settings: configuration.edge,
                authenticator: authenticator,
                directory: directory,
                sink: sink ?? router ?? LoggingSink(logger: logger),
                dictionaries: dictionaries,
                logger: logger
            )
        } catch {
            try? self.group.syncShutdownGracefully()
            throw error
        }
        if let listen = configuration.adminListen {
            let ready = ReadyFlag()
            self.admin = AdminServer(
                group: self.group,
                host: listen.host,
                port: listen.port,
                limits: configuration.adminLimits,
                logger: logger,
                ready: { ready.isReady }
            )
            self.readyFlag = ready
        } else {
            self.admin = nil
            self.readyFlag = ReadyFlag()
        }
    }

    private let readyFlag: ReadyFlag

    /// Builds the one shared `NIOSSLContext` (off the event loops: it reads files and costs
    /// thousands of allocations).
    static func makeSecurity(_ configuration: GatewayConfiguration) throws -> DeviceListener.Security {
        guard configuration.transport == .tls else { return .plaintext }
        guard let files = configuration.tls else {
            throw ConfigurationError(key: "device.tls", "is required with transport: tls")
        }
        let chain = try Self.loadCertificates(files.certificateChain, key: "device.tls.certificate_chain")
        let key = try Self.loadPrivateKey(files.privateKey, key: "device.tls.private_key")
        var tls = TLSConfiguration.makeServerConfiguration(
            certificateChain: chain.map { .certificate($0) },
            privateKey: .privateKey(key)
        )
        tls.minimumTLSVersion = files.minimumVersion == "1.3" ? .tlsv13 : .tlsv12
        if let caFile = files.clientCA, files.clientAuth != .none {
            tls.trustRoots = .certificates(try Self.loadCertificates(caFile, key: "device.tls.client_ca"))
            tls.certificateVerification =
                files.clientAuth == .required ? .noHostnameVerification : .optionalVerification
        }
        do {
            return .tls(try NIOSSLContext(configuration: tls), verifiesClientCertificates: files.clientAuth != .none)
        } catch {
            throw ConfigurationError(key: "device.tls", "invalid TLS configuration: \(error)")
        }
    }

    /// Loads the API listener's PEM files once so that a bad file is a configuration error at
    /// start (and in `check-config`), not a failed listener later.
    static func checkAPITLS(_ files: GatewayConfiguration.APITLSFiles) throws {
        _ = try Self.loadCertificates(files.certificateChain, key: "api.tls.certificate_chain")
        _ = try Self.loadPrivateKey(files.privateKey, key: "api.tls.private_key")
        if let ca = files.clientCA { _ = try Self.loadCertificates(ca, key: "api.tls.client_ca") }
    }

    /// A PEM file of one or more certificates; a file that cannot be read or parsed, or holds
    /// none, is a configuration error naming `key`.
    static func loadCertificates(_ path: String, key: String) throws -> [NIOSSLCertificate] {
        let certificates: [NIOSSLCertificate]
        do {
            certificates = try NIOSSLCertificate.fromPEMFile(path)
        } catch {
            throw ConfigurationError(key: key, "cannot load \(path): \(error)")
        }
        guard !certificates.isEmpty else { throw ConfigurationError(key: key, "\(path) holds no certificate") }
        return certificates
    }

    /// A PEM private key; a file that cannot be read or parsed is a configuration error naming `key`.
    static func loadPrivateKey(_ path: String, key: String) throws -> NIOSSLPrivateKey {
        do {
            return try NIOSSLPrivateKey(file: path, format: .pem)
        } catch {
            throw ConfigurationError(key: key, "cannot load \(path): \(error)")
        }
    }

    static func loadDictionaries(_ entries: [GatewayConfiguration.Dictionary]) throws -> DictionarySet {
        var table: [UInt16: [UInt8]] = [:]
        for (index, entry) in entries.enumerated() {
            guard let data = FileManager.default.contents(atPath: entry.file) else {
                throw ConfigurationError(key: "compression.dictionaries[\(index)].file", "cannot read \(entry.file)")
            }
            table[entry.id] = Array(data)
        }
        do {
            return try DictionarySet(table)
        } catch {
            throw ConfigurationError(key: "compression.dictionaries", error.message)
        }
    }

    /// Binds the listeners. Returns the device listener's address. A start that fails half way
    /// (a port taken, a backend client that cannot be made) releases what it opened, listeners
    /// and event loops, before it throws.
    public func start() async throws -> SocketAddress {
        do {
            try self.router?.start()
            let address = try await self.edge.start()
            if let admin = self.admin {
                self.adminAddress.withLock { $0 = nil }
                let bound = try await admin.start()
                self.adminAddress.withLock { $0 = bound }
            }
            if let api = self.api {
                let port = try await api.start()
                self.apiPort.withLock { $0 = port }
            }
            self.readyFlag.set(true)
            return address
        } catch {
            self.logger.error("start failed; releasing what was opened", metadata: ["error": "\(error)"])
            await self.stop()
            throw error
        }
    }

    private let adminAddress = Mutex<SocketAddress?>(nil)
    private let apiPort = Mutex<Int?>(nil)

    /// The API listener's bound port, once started (nil without `api.listen`).
    public var boundAPIPort: Int? { self.apiPort.withLock { $0 } }

    /// The admin listener's bound address, once started (nil without `admin.listen`).
    public var boundAdminAddress: SocketAddress? { self.adminAddress.withLock { $0 } }

    /// Connections currently open on the device listener.
    public var openConnections: Int { self.edge.openConnections }

    /// Times a device's reads were paused because its inflight window was full (since start).
    public var readPauses: Int { self.edge.readPauses }

    /// The device listener's protection counters since start (rate limits, dropped QoS 0,
    /// stalled outputs, failed accepts).
    public var rateLimitedMessages: Int { self.edge.rateLimitedMessages }
    public var droppedQoS0Messages: Int { self.edge.droppedQoS0Messages }
    public var outputStalls: Int { self.edge.outputStalls }
    public var acceptFailures: Int { self.edge.acceptFailures }

    /// Uplink messages inside backend delivery (sent and unanswered, or waiting for a
    /// service's window or linger), counted once per service.
    public var deliveryBacklog: Int { self.router?.backlog ?? 0 }

    /// How often the delivery senders came back from waiting for work (`BackendRouter.senderWakeUps`).
    public var deliverySenderWakeUps: Int { self.router?.senderWakeUps ?? 0 }

    /// Drains the devices and stops. Safe to call once.
    public func stop() async {
        guard !self.draining.exchange(true, ordering: .relaxed) else { return }
        self.readyFlag.set(false)
        await self.edge.drain(
            reconnectWindow: self.configuration.drainReconnectWindow,
            grace: self.configuration.drainGrace
        )
        await self.api?.shutdown()
        await self.edge.shutdown()
        await self.router?.shutdown()
        await self.admin?.shutdown()
        try? await self.group.shutdownGracefully()
    }

    public func run() async throws {
        _ = try await self.start()
        try? await gracefulShutdown()
        self.logger.info("graceful shutdown requested")
        await self.stop()
        self.logger.info("stopped")
    }
}

/// Readiness as the admin listener reports it: true from a successful start until draining.
final class ReadyFlag: Sendable {
    private let value = Atomic<Bool>(false)

    var isReady: Bool { self.value.load(ordering: .relaxed) }

    func set(_ ready: Bool) {
        self.value.store(ready, ordering: .relaxed)
    }
}
