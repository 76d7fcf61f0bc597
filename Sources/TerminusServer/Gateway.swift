internal import Foundation
package import Logging
package import NIOCore
internal import NIOPosix
internal import NIOSSL
internal import ServiceLifecycle
internal import Synchronization
internal import TerminusAdmin
internal import TerminusAuth
internal import TerminusBackend
internal import TerminusCompression
internal import TerminusEdge
package import TerminusFleet
internal import TerminusLeanTLS
package import TerminusListeners
package import TerminusMetrics
internal import TerminusProtocol
internal import TerminusRedis
package import TerminusSessions

/// The composition root: builds the event loops, TLS context, secrets, dictionaries, the device
/// edge, the backend router and the listeners from a `GatewayConfiguration`, and runs them as
/// one `Service` (each part a `Service` of its own, see `run()`).
///
/// On graceful shutdown (SIGTERM) readiness turns false, the device listener stops accepting,
/// sends every device GOAWAY(SHUTTING_DOWN) with reconnect hints spread over
/// `drain.reconnect_window` and waits up to `drain.grace`; then the other parts stop.
package final class Gateway: Service, Sendable {
    package let configuration: GatewayConfiguration
    package let directory: any SessionDirectory
    private let group: MultiThreadedEventLoopGroup
    /// The admin listener's own thread: a busy event loop cannot fail a liveness probe.
    private let adminGroup: MultiThreadedEventLoopGroup?
    /// Set when the graceful shutdown begins: `drain.grace` later everything has stopped.
    private let shutdown = ShutdownDeadline()
    private let edge: EdgeServer
    private let router: BackendRouter?
    private let api: APIServer?
    /// `fleet.listen`: where other pods forward calls about this pod's devices (nil: no fleet).
    private let internalAPI: APIServer?
    /// Forwards calls about devices of other pods to them (nil: no fleet).
    private let forwarder: PodForwarder?
    /// The offline message store (nil: no fleet).
    private let store: DeviceMessageStore?
    private let draining = Atomic<Bool>(false)
    private let running = Atomic<Bool>(false)
    private let logger: Logger
    /// Every part of the gateway as a `Service` (see `run()`).
    private let services: ServiceGroup
    /// The device and admin listeners' bound addresses, once bound.
    private let deviceAddress = Latch<SocketAddress>()
    private let adminBound: Latch<SocketAddress>?
    /// Settled when every listener is bound, or the run failed.
    private let startup = Latch<SocketAddress>()
    private let runTask = Mutex<Task<Void, any Error>?>(nil)
    /// What `/metrics` on the admin listener renders.
    package let metrics = MetricsExporter()
    /// The device tokens' clock (tests inject one); kept for the authenticators reloads make.
    private let clock: @Sendable () -> Int64
    /// The configuration the last reload applied (the one started with, until then).
    private let applied: Mutex<GatewayConfiguration>
    private let reloadsApplied = Atomic<Int>(0)
    private let reloadsRefused = Atomic<Int>(0)
    /// Unix seconds of the last applied reload (0: none).
    private let lastReload = Atomic<Int>(0)
    /// Why the last reload was refused (the admin API's answer).
    private let lastReloadError = Mutex<String?>(nil)
    /// Where a reload reads the configuration (`terminus run` sets it: the file and the command
    /// line's overrides); nil: nothing to reload (development mode, embedding).
    package let configurationSource = Reloadable<(@Sendable () throws -> GatewayConfiguration)?>(nil)
    /// The admin API's tokens (`admin.tokens_file`), replaced by a reload.
    private let adminTokens: Reloadable<BearerTokens>?
    /// `fleet`: the session registry in Redis and its client (nil: on its own).
    package let registry: SessionRegistry?
    private let redis: RedisClient?
    /// The admin API's drain (`POST /admin/drain`), kept so that it is awaited, not leaked.
    private let adminDrain = Mutex<Task<Void, Never>?>(nil)

    package init(
        configuration: GatewayConfiguration,
        sink: (any UplinkSink)? = nil,
        directory: any SessionDirectory = LocalSessionDirectory(),
        logger: Logger,
        clock: @escaping @Sendable () -> Int64 = { WallClock.nowSeconds() }
    ) throws {
        self.configuration = configuration
        self.applied = Mutex(configuration)
        self.clock = clock
        self.logger = logger
        let threads = configuration.eventLoopThreads == 0 ? System.coreCount : configuration.eventLoopThreads
        self.group = MultiThreadedEventLoopGroup(numberOfThreads: threads)
        // In a fleet, each session is also recorded in Redis (queued, coalesced).
        if let fleet = configuration.fleet {
            let local = LocalSessionDirectory()
            let redis = RedisClient(configuration: fleet.redis, eventLoop: self.group.any(), logger: logger)
            let registry = SessionRegistry(
                configuration: fleet.registry,
                client: redis,
                logger: logger,
                sessions: { local.all() },
                local: { local.lookup($0) }
            )
            let store = DeviceMessageStore(
                configuration: fleet.store,
                client: redis,
                keyPrefix: fleet.registry.keyPrefix,
                podID: fleet.registry.podID,
                local: { local.lookup($0) },
                logger: logger
            )
            registry.onStoredMessages { store.waiting($0, count: $1) }
            (self.redis, self.registry, self.store) = (redis, registry, store)
            self.directory = FleetSessionDirectory(local: local, registry: registry, store: store)
            var forwarding = PodForwarder.Configuration(podID: fleet.registry.podID, token: fleet.tokens[0])
            forwarding.tls = fleet.tls
            self.forwarder = PodForwarder(configuration: forwarding, group: self.group, logger: logger)
        } else {
            (self.redis, self.registry, self.forwarder, self.store) = (nil, nil, nil, nil)
            self.directory = directory
        }
        // In a fleet, the API names the pod (`gateway_instance`) as the registry does.
        let instanceID = configuration.fleet?.registry.podID ?? configuration.instanceID
        self.adminGroup = configuration.adminListen == nil ? nil : MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let shutdown = self.shutdown
        do {
            let security = try Self.makeSecurity(configuration)
            let secrets = try configuration.secretsFile.map { try SecretsFile.load(path: $0) } ?? SecretStore()
            let dictionaries = try Self.loadDictionaries(configuration.dictionaries)
            let listener = DeviceListener(
                host: configuration.deviceListen.host,
                port: configuration.deviceListen.port,
                security: security,
                proxyProtocol: configuration.proxyProtocol,
                proxyHeaderMaxSize: configuration.proxyHeaderMaxSize,
                reusePort: configuration.deviceReusePort
            )
            let authenticator = DeviceAuthenticator(
                secrets: secrets,
                requireCertificate: configuration.tls?.clientAuth == .required,
                maxTokenLifetimeSeconds: configuration.maxTokenLifetimeSeconds,
                now: clock
            )
            try Self.checkServiceTLS(configuration.services)
            let router: BackendRouter?
            if sink == nil && !configuration.services.isEmpty {
                router = try BackendRouter(
                    subscriptions: configuration.services,
                    instanceID: configuration.instanceID,
                    group: self.group,
                    logger: logger,
                    shutdown: shutdown
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
                    security: configuration.apiTLS.map(Self.apiSecurity) ?? .plaintext,
                    directory: self.directory,
                    locator: self.registry,
                    forwarder: self.forwarder,
                    store: self.store,
                    instanceID: instanceID,
                    defaultTTLMilliseconds: configuration.apiSendTimeoutMilliseconds,
                    maxPayloadSize: configuration.edge.inflateLimits.maxInflatedSize,
                    maxTopicLength: configuration.edge.maxTopicLength,
                    limits: configuration.apiLimits,
                    maxConcurrentCalls: configuration.apiMaxConcurrentCalls,
                    maxRequestSize: configuration.apiMaxRequestSize,
                    group: self.group,
                    logger: logger
                )
            } else {
                self.api = nil
            }
            // Answers for this pod's own devices only: a forwarded call goes no further.
            if let files = configuration.fleet?.tls { try Self.checkFleetTLS(files) }
            let directory = self.directory
            let group = self.group
            let store = self.store
            self.internalAPI = configuration.fleet.map { fleet in
                APIServer(
                    host: fleet.listen.host,
                    port: fleet.listen.port,
                    tokens: fleet.tokens,
                    security: fleet.tls.map {
                        .tls(certificateChain: $0.certificateChain, privateKey: $0.privateKey, clientCA: $0.ca)
                    } ?? .plaintext,
                    name: "fleet",
                    directory: directory,
                    store: store,
                    instanceID: instanceID,
                    defaultTTLMilliseconds: configuration.apiSendTimeoutMilliseconds,
                    maxPayloadSize: configuration.edge.inflateLimits.maxInflatedSize,
                    maxTopicLength: configuration.edge.maxTopicLength,
                    limits: configuration.apiLimits,
                    maxConcurrentCalls: configuration.apiMaxConcurrentCalls,
                    maxRequestSize: configuration.apiMaxRequestSize,
                    group: group,
                    logger: logger
                )
            }
            self.edge = try EdgeServer(
                group: self.group,
                listener: listener,
                settings: configuration.edge,
                authenticator: authenticator,
                directory: self.directory,
                sink: sink ?? router ?? LoggingSink(logger: logger),
                dictionaries: dictionaries,
                logger: logger
            )
        } catch {
            try? self.group.syncShutdownGracefully()
            try? self.adminGroup?.syncShutdownGracefully()
            throw error
        }
        let ready = ReadyFlag()
        self.readyFlag = ready
        let reference = GatewayReference()
        var parts: [any Service] = []
        if let listen = configuration.adminListen {
            let api = Self.adminAPI(configuration, reference)
            self.adminTokens = api.tokens
            let admin = AdminServer(
                group: self.adminGroup!,
                host: listen.host,
                port: listen.port,
                limits: configuration.adminLimits,
                logger: logger,
                metrics: self.metrics,
                api: api,
                ready: { ready.isReady }
            )
            self.metrics.add(ClosureMetricsSource { admin.connectionGuard.collect(into: &$0) })
            let bound = Latch<SocketAddress>()
            self.adminBound = bound
            parts.append(
                ListenerService(
                    open: { try await bound.settle { try await admin.start() } },
                    close: { await admin.shutdown() }
                )
            )
        } else {
            self.adminBound = nil
            self.adminTokens = nil
        }
        // Redis before the registry, both before the devices: at shutdown the registry writes
        // the drain's disconnects and removes this pod's liveness before Redis closes.
        if let redis = self.redis, let registry = self.registry {
            parts += [redis, registry]
        }
        // Other pods forward to this one until its devices are gone.
        if let store = self.store, let forwarder = self.forwarder, let internalAPI = self.internalAPI {
            parts += [store, forwarder, internalAPI]
        }
        parts += self.router?.lifecycleServices ?? []
        if let api = self.api { parts.append(api) }
        let trimmer = HeapTrimmer(policy: configuration.heapTrim)
        parts.append(trimmer)
        self.metrics.add(ClosureMetricsSource { trimmer.collect(into: &$0) })
        let edge = self.edge
        let deviceAddress = self.deviceAddress
        let drainWindow = configuration.drainReconnectWindow
        let drainGrace = configuration.drainGrace
        let unreadyDelay = configuration.drainUnreadyDelay
        let logger = logger
        parts.append(
            ListenerService(
                open: { try await deviceAddress.settle { try await edge.start() } },
                close: {
                    ready.set(false)
                    let deadline = shutdown.begin(grace: drainGrace)
                    // Still accepting: the load balancer sees readiness fail and stops sending.
                    if unreadyDelay > .zero {
                        logger.info(
                            "not ready; still accepting devices for drain.unready_delay",
                            metadata: ["unready_delay_ms": "\(unreadyDelay.nanoseconds / 1_000_000)"]
                        )
                        try? await Task.sleep(
                            for: .nanoseconds(min(unreadyDelay, deadline - NIODeadline.now()).nanoseconds)
                        )
                    }
                    // Devices get the time left, less a reserve for the deliveries of what they
                    // sent last (a tenth of the grace, at most two seconds).
                    let reserve = TimeAmount.nanoseconds(min(2_000_000_000, drainGrace.nanoseconds / 10))
                    // Sessions owed outcomes wait for them past the edge's part: the deliveries
                    // answer what is in flight by the deadline at the latest.
                    await edge.drain(
                        reconnectWindow: drainWindow,
                        grace: max(.zero, deadline - reserve - NIODeadline.now()),
                        outcomesBy: deadline + .seconds(1)
                    )
                    await edge.shutdown()
                }
            )
        )
        self.services = ServiceGroup(
            configuration: .init(services: parts.map { .init(service: $0) }, logger: logger)
        )
        reference.gateway = self
        self.metrics.add(self.edge)
        if let router = self.router { self.metrics.add(router) }
        if let registry = self.registry { self.metrics.add(ClosureMetricsSource { registry.collect(into: &$0) }) }
        if let forwarder = self.forwarder { self.metrics.add(ClosureMetricsSource { forwarder.collect(into: &$0) }) }
        if let store = self.store { self.metrics.add(ClosureMetricsSource { store.collect(into: &$0) }) }
        if let internalAPI = self.internalAPI { self.metrics.add(internalAPI) }
        if let api = self.api { self.metrics.add(api) }
        _ = ProcessMetrics.startTime
        self.metrics.add(
            ClosureMetricsSource { [weak self] snapshot in
                ProcessMetrics.collect(into: &snapshot)
                snapshot.gauge(SeriesKey("terminus_ready"), ready.isReady ? 1 : 0)
                let draining = self?.draining.load(ordering: .relaxed) ?? true
                snapshot.gauge(SeriesKey("terminus_draining"), draining ? 1 : 0)
                if let self {
                    for (outcome, count) in [
                        ("applied", self.reloadsApplied.load(ordering: .relaxed)),
                        ("refused", self.reloadsRefused.load(ordering: .relaxed)),
                    ] {
                        snapshot.count(SeriesKey("terminus_config_reloads_total", ["outcome": outcome]), count)
                    }
                    snapshot.gauge(
                        SeriesKey("terminus_config_last_reload_timestamp_seconds"),
                        self.lastReload.load(ordering: .relaxed)
                    )
                }
            }
        )
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
        try CertificateFactory.checkKeyMatches(
            certificateChain: files.certificateChain,
            privateKey: files.privateKey,
            key: "device.tls.private_key"
        )
        var tls = TLSConfiguration.makeServerConfiguration(
            certificateChain: chain.map { .certificate($0) },
            privateKey: .privateKey(key)
        )
        if files.engine == .lean {
            var ticketSecret: [UInt8]? = nil
            if let path = files.ticketKeyFile {
                guard let data = FileManager.default.contents(atPath: path) else {
                    throw ConfigurationError(key: "device.tls.ticket_key_file", "cannot read \(path)")
                }
                // A trailing newline (an editor's, `base64`'s) is not part of the secret.
                var bytes = [UInt8](data)
                while let last = bytes.last, last == 0x0A || last == 0x0D { bytes.removeLast() }
                guard (32...64).contains(bytes.count) else {
                    throw ConfigurationError(
                        key: "device.tls.ticket_key_file",
                        "must hold 32 to 64 bytes (e.g. head -c 48 /dev/urandom | base64), not \(bytes.count)"
                    )
                }
                ticketSecret = bytes
            }
            do {
                let context = try LeanTLSServerContext(
                    certificateChainFile: files.certificateChain,
                    privateKeyFile: files.privateKey,
                    clientCAFile: files.clientAuth == .none ? nil : files.clientCA,
                    clientAuthentication: files.clientAuth == .required
                        ? .required : files.clientAuth == .optional ? .optional : .none,
                    minimumVersion: files.minimumVersion == "1.3" ? 0x0304 : 0x0303,
                    tickets: files.sessionTickets,
                    ticketSecret: ticketSecret,
                    ticketKeyRotation: files.ticketKeyRotation.nanoseconds / 1_000_000_000
                )
                return .leanTLS(context, verifiesClientCertificates: files.clientAuth != .none)
            } catch {
                throw ConfigurationError(key: "device.tls", "invalid TLS configuration for the lean engine: \(error)")
            }
        }
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
    /// Loads each service's TLS files (`services[].tls`: CA, client certificate and key) so that
    /// a bad one is a configuration error naming it at start, in `check-config` and on reload,
    /// not a service whose connections fail later.
    /// Where other pods reach this one when `fleet.internal_address` is not set: `listen`'s
    /// host, or, when it binds every address, the address the host name resolves to (on
    /// Kubernetes, `/etc/hosts` maps the pod's name to its IP), with the bound port.
    package static func internalAddress(_ listen: GatewayConfiguration.HostPort, port: Int) -> String {
        var host = listen.host
        if ["0.0.0.0", "::", ""].contains(host) {
            var name = [CChar](repeating: 0, count: 256)
            gethostname(&name, name.count - 1)
            let hostName = String(decoding: name.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            host = (try? SocketAddress.makeAddressResolvingHost(hostName, port: port).ipAddress) ?? hostName
        }
        return host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
    }

    static func checkServiceTLS(_ services: [Subscription]) throws {
        for (index, service) in services.enumerated() {
            guard case .tls(let ca, let certificate, let key, _) = service.security else { continue }
            let path = "services[\(index)].tls"
            if let ca { _ = try Self.loadCertificates(ca, key: "\(path).ca") }
            if let certificate, let key {
                _ = try Self.loadCertificates(certificate, key: "\(path).certificate")
                _ = try Self.loadPrivateKey(key, key: "\(path).private_key")
                try CertificateFactory.checkKeyMatches(
                    certificateChain: certificate,
                    privateKey: key,
                    key: "\(path).private_key"
                )
            }
        }
    }

    /// `fleet.tls`'s files: readable, the key the certificate's, the CA a certificate.
    static func checkFleetTLS(_ files: PodForwarder.TLSFiles) throws {
        try Self.checkTLSFiles(files.certificateChain, files.privateKey, ca: files.ca, keys: "fleet.tls", caKey: "ca")
    }

    static func checkAPITLS(_ files: GatewayConfiguration.APITLSFiles) throws {
        try Self.checkTLSFiles(
            files.certificateChain,
            files.privateKey,
            ca: files.clientCA,
            keys: "api.tls",
            caKey: "client_ca"
        )
    }

    /// A listener's PEM files: readable, the key the certificate's, the CA (if any) a certificate;
    /// errors name `keys`.certificate_chain, `keys`.private_key, `keys`.`caKey`.
    private static func checkTLSFiles(_ chain: String, _ key: String, ca: String?, keys: String, caKey: String) throws {
        _ = try Self.loadCertificates(chain, key: "\(keys).certificate_chain")
        _ = try Self.loadPrivateKey(key, key: "\(keys).private_key")
        try CertificateFactory.checkKeyMatches(certificateChain: chain, privateKey: key, key: "\(keys).private_key")
        if let ca { _ = try Self.loadCertificates(ca, key: "\(keys).\(caKey)") }
    }

    /// Why `path` cannot be read, in words: missing, a directory, or not readable.
    static func unreadable(_ path: String) -> String {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            return "the file \(path) does not exist"
        }
        if isDirectory.boolValue { return "\(path) is a directory, not a file" }
        if !FileManager.default.isReadableFile(atPath: path) {
            return "the file \(path) is not readable by this process"
        }
        return "cannot read \(path)"
    }

    /// A PEM file of one or more certificates; a file that cannot be read or parsed, or holds
    /// none, is a configuration error naming `key` and the file.
    static func loadCertificates(_ path: String, key: String) throws -> [NIOSSLCertificate] {
        guard FileManager.default.isReadableFile(atPath: path) else {
            throw ConfigurationError(key: key, Self.unreadable(path))
        }
        let certificates: [NIOSSLCertificate]
        do {
            certificates = try NIOSSLCertificate.fromPEMFile(path)
        } catch {
            throw ConfigurationError(key: key, "\(path) is not a PEM certificate file: \(error)")
        }
        guard !certificates.isEmpty else { throw ConfigurationError(key: key, "\(path) holds no certificate") }
        return certificates
    }

    /// A PEM private key; a file that cannot be read or parsed is a configuration error naming `key`.
    static func loadPrivateKey(_ path: String, key: String) throws -> NIOSSLPrivateKey {
        guard FileManager.default.isReadableFile(atPath: path) else {
            throw ConfigurationError(key: key, Self.unreadable(path))
        }
        do {
            return try NIOSSLPrivateKey(file: path, format: .pem)
        } catch {
            throw ConfigurationError(key: key, "\(path) is not a PEM private key: \(error)")
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

    /// Runs the gateway until graceful shutdown (SIGTERM through the `ServiceGroup` that runs
    /// it, or `stop()`), then drains and stops. Every part is a `Service` in one inner
    /// `ServiceGroup`, in start order: admin listener, each subscribed service's delivery, the
    /// pools' re-balancing, API listener, device listener. Graceful shutdown runs the other
    /// way: the device listener drains first (readiness turns false at once), then the API
    /// finishes its calls, deliveries answer or give back what they hold, and the admin
    /// listener goes last. When a part fails to start, the group cancels the others, each
    /// releases what it opened, the event loops stop, and `run` throws that error.
    package func run() async throws {
        self.running.store(true, ordering: .relaxed)
        defer { self.running.store(false, ordering: .relaxed) }
        do {
            try await withGracefulShutdownHandler {
                try await withThrowingDiscardingTaskGroup { group in
                    group.addTask { try await self.services.run() }
                    do {
                        try await self.awaitListeners()
                    } catch is CancellationError {
                        // A part failed to start: its error is the one the group throws.
                    }
                }
            } onGracefulShutdown: {
                self.shutdown.begin(grace: self.configuration.drainGrace)
                self.draining.store(true, ordering: .relaxed)
                self.readyFlag.set(false)
                self.logger.info("graceful shutdown requested")
            }
        } catch {
            self.logger.error("gateway failed; released what it had opened", metadata: ["error": "\(error)"])
            self.startup.fail(error)
            try? await self.group.shutdownGracefully()
            try? await self.adminGroup?.shutdownGracefully()
            throw error
        }
        // An admin API drain still waiting for devices ends with the listener it drained.
        await self.adminDrain.withLock { $0 }?.value
        try? await self.group.shutdownGracefully()
        try? await self.adminGroup?.shutdownGracefully()
        self.logger.info("stopped")
    }

    /// Waits until every listener is bound, then reports the gateway ready and started.
    private func awaitListeners() async throws {
        let address = try await self.deviceAddress.value
        if let admin = self.adminBound {
            let bound = try await admin.value
            self.adminAddress.withLock { $0 = bound }
        }
        if let api = self.api {
            let port = try await api.listeningPort
            self.apiPort.withLock { $0 = port }
            self.logger.info("API listener started", metadata: ["port": "\(port)"])
        }
        if let internalAPI = self.internalAPI, let fleet = self.configuration.fleet, let registry = self.registry {
            let port = try await internalAPI.listeningPort
            let address =
                registry.podAddress.isEmpty ? Self.internalAddress(fleet.listen, port: port) : registry.podAddress
            registry.advertise(address)
            self.internalPort.withLock { $0 = port }
            self.logger.info("fleet listener started", metadata: ["port": "\(port)", "internal_address": "\(address)"])
        }
        if !self.draining.load(ordering: .relaxed) { self.readyFlag.set(true) }
        self.startup.succeed(address)
    }

    /// Starts `run()` for callers that cannot hand the gateway to a `ServiceGroup` (embedding,
    /// tests) and returns the device listener's bound address once every listener is bound.
    /// A start that fails half way has released what it opened (listeners, clients, event
    /// loops) before it throws. Pair with `stop()`, which awaits the run to its end.
    package func start() async throws -> SocketAddress {
        // The one stored task of the gateway: `run()` needs a task to live in, and start/stop
        // callers have none to give it. `stop()` awaits it, so nothing outlives `stop()`.
        let task = Task { try await self.run() }
        self.runTask.withLock { $0 = task }
        do {
            return try await self.startup.value
        } catch {
            _ = try? await task.value
            throw error
        }
    }

    /// Drains the devices and stops; returns once everything `start()` began has ended.
    /// Safe to call more than once.
    package func stop() async {
        self.shutdown.begin(grace: self.configuration.drainGrace)
        self.draining.store(true, ordering: .relaxed)
        self.readyFlag.set(false)
        self.logger.info("stop requested")
        await self.services.triggerGracefulShutdown()
        _ = try? await self.runTask.withLock { $0 }?.value
    }

    /// Reloads the configuration `load` returns (SIGHUP, a changed file). What takes effect at
    /// once (new HELLOs, handshakes, connections and calls; established sessions stay):
    /// - device secrets and `auth.max_token_lifetime`; the device listener's TLS certificate,
    ///   key and client CA; the API's and the admin API's tokens;
    /// - the admission limits, `auth.throttle.*` and `limits.rate.*` (see
    ///   `EdgeServer.reload(limits:)`);
    /// - the services and their topics (`BackendRouter.reload(subscriptions:)`: unchanged
    ///   services keep their connections, new ones start, removed ones finish what they hold),
    ///   when the gateway routes to services (not when it started with none);
    ///
    /// Everything is loaded and checked first: when anything fails (a file missing, a key that
    /// does not match its certificate, a YAML error) nothing changes, the reason is logged and
    /// `terminus_config_reloads_total{outcome="refused"}` counts it. Keys that differ from the
    /// configuration the process started with and cannot change while it runs are named in the
    /// log (`restart_needed_for`): they take effect at the next restart.
    /// - Returns: whether the new configuration was applied.
    @discardableResult
    package func reload(_ load: () throws -> GatewayConfiguration) -> Bool {
        let next: GatewayConfiguration
        let security: DeviceListener.Security
        let secrets: SecretStore
        var apiTLS: NIOSSLContext?
        var serviceChange = BackendRouter.ServiceChange()
        do {
            next = try load()
            security = try Self.makeSecurity(next)
            secrets = try next.secretsFile.map { try SecretsFile.load(path: $0) } ?? SecretStore()
            // The API's certificate is swapped when the listener keeps its kind of security
            // (TLS, with or without client certificates); anything else is a restart.
            if let files = next.apiTLS, Self.apiTLSMode(next) == Self.apiTLSMode(self.configuration) {
                try Self.checkAPITLS(files)
                apiTLS = try APIServer.makeTLSContext(Self.apiSecurity(files))
            }
            try Self.checkServiceTLS(next.services)
            guard !self.draining.load(ordering: .relaxed) else {
                throw ConfigurationError(key: "", "the gateway is draining")
            }
            // First of what changes, since it alone can still fail (the shutdown began).
            if let router = self.router { serviceChange = try router.reload(subscriptions: next.services) }
        } catch {
            self.reloadsRefused.wrappingAdd(1, ordering: .relaxed)
            self.lastReloadError.withLock { $0 = "\(error)" }
            self.logger.error(
                "configuration reload refused; the running configuration stays",
                metadata: ["reason": "\(error)"]
            )
            return false
        }
        let authenticator = DeviceAuthenticator(
            secrets: secrets,
            requireCertificate: next.tls?.clientAuth == .required,
            maxTokenLifetimeSeconds: next.maxTokenLifetimeSeconds,
            now: self.clock
        )
        var tlsContext: NIOSSLContext?
        var leanContext: LeanTLSServerContext?
        if case .tls(let context, _) = security { tlsContext = context }
        if case .leanTLS(let context, _) = security { leanContext = context }
        self.edge.reload(authenticator: authenticator, tlsContext: tlsContext, leanContext: leanContext)
        self.edge.reload(limits: next.edge)
        self.api?.reload(tokens: next.apiTokens)
        if let apiTLS { self.api?.reload(tlsContext: apiTLS) }
        self.adminTokens?.replace(with: BearerTokens(next.adminTokens))
        let previous = self.applied.withLock { applied in
            defer { applied = next }
            return applied
        }
        self.reloadsApplied.wrappingAdd(1, ordering: .relaxed)
        self.lastReload.store(Int(WallClock.nowSeconds()), ordering: .relaxed)
        var metadata: Logger.Metadata = [
            "secrets": "\(secrets.count)", "api_tokens": "\(next.apiTokens.count)",
            "admin_tokens": "\(next.adminTokens.count)",
            "device_tls": "\(tlsContext != nil ? "reloaded" : "none")",
            "api_tls": "\(apiTLS != nil && self.api != nil ? "reloaded" : "none")",
        ]
        if serviceChange.routes { metadata["routes"] = "reloaded" }
        if !serviceChange.added.isEmpty { metadata["services_added"] = "\(serviceChange.added.joined(separator: ","))" }
        if !serviceChange.removed.isEmpty {
            metadata["services_removed"] = "\(serviceChange.removed.joined(separator: ","))"
        }
        if EdgeServer.reloadableLimitsDiffer(previous.edge, next.edge) { metadata["limits"] = "reloaded" }
        var restart = Self.restartKeys(self.configuration, next)
        // Started without services (the log sink, or an embedder's): routing needs a restart.
        if self.router == nil && !next.services.isEmpty { restart.append("services") }
        if !restart.isEmpty { metadata["restart_needed_for"] = "\(restart.joined(separator: ","))" }
        self.logger.notice("configuration reloaded", metadata: metadata)
        return true
    }

    /// The admin API over this gateway (see `AdminAPI`); its closures hold the gateway weakly.
    static func adminAPI(_ configuration: GatewayConfiguration, _ reference: GatewayReference) -> AdminAPI {
        AdminAPI(
            tokens: configuration.adminTokens,
            devices: { prefix, after, limit in
                guard let gateway = reference.gateway else { return [] }
                return gateway.directory.all()
                    .filter { session in
                        session.deviceID.hasPrefix(prefix) && (after.map { session.deviceID > $0 } ?? true)
                    }
                    .sorted { $0.deviceID < $1.deviceID }
                    .prefix(limit)
                    .map(Self.adminDevice)
            },
            device: { id in reference.gateway?.directory.lookup(id).map(Self.adminDevice) },
            kick: { id in
                guard let session = reference.gateway?.directory.lookup(id) else { return false }
                session.control.goAway(.kicked, reconnectAfterMilliseconds: 0, message: "kicked by an operator")
                return true
            },
            drain: { reference.gateway?.drainDevices() },
            configuration: { reference.gateway?.redactedConfiguration() ?? "{}" },
            reload: {
                guard let gateway = reference.gateway else { return "the gateway stopped" }
                guard let source = gateway.configurationSource.value else {
                    return "no configuration file to reload (development mode)"
                }
                return gateway.reload(source) ? nil : gateway.lastReloadError.withLock { $0 } ?? "refused"
            }
        )
    }

    private static func adminDevice(_ session: SessionHandle) -> AdminDevice {
        AdminDevice(
            deviceID: session.deviceID,
            clientAddress: session.clientAddress,
            connectedAtMs: session.connectedAt,
            connectionID: session.connectionID
        )
    }

    /// `POST /admin/drain`: readiness false, the device listener closed, every device told to
    /// reconnect (hints spread over `drain.reconnect_window`); the process keeps running and a
    /// later SIGTERM stops it as usual.
    func drainDevices() {
        self.readyFlag.set(false)
        self.draining.store(true, ordering: .relaxed)
        self.logger.notice("drain requested through the admin API")
        let edge = self.edge
        let window = self.configuration.drainReconnectWindow
        let grace = self.configuration.drainGrace
        self.adminDrain.withLock { task in
            guard task == nil else { return }
            task = Task { await edge.drain(reconnectWindow: window, grace: grace) }
        }
    }

    /// The configuration in use, as JSON, with secrets and tokens replaced by their count.
    func redactedConfiguration() -> String {
        let config = self.applied.withLock { $0 }
        var device: [String: Any] = [
            "listen": "\(config.deviceListen)", "transport": "\(config.transport)",
            "proxy_protocol": "\(config.proxyProtocol)",
        ]
        if let tls = config.tls {
            device["tls"] = [
                "certificate_chain": tls.certificateChain, "private_key": "(redacted: \(tls.privateKey))",
                "client_ca": tls.clientCA ?? "", "client_auth": "\(tls.clientAuth)", "min_version": tls.minimumVersion,
            ]
        }
        let object: [String: Any] = [
            "instance_id": config.instanceID,
            "event_loop_threads": config.eventLoopThreads,
            "device": device,
            "auth": [
                "secrets_file": config.secretsFile ?? "", "secrets": "(redacted)",
                "max_token_lifetime_s": config.maxTokenLifetimeSeconds,
            ],
            "limits": [
                "max_connections": config.edge.maxConnections, "max_frame_size": config.edge.maxFrameSize,
                "max_inflight": config.edge.maxInflight,
                "new_connections_per_second": config.edge.admission.acceptRate,
                "max_handshakes": config.edge.admission.maxHandshakes,
                "max_connections_per_address": config.edge.admission.maxPerAddress,
                "reconnect_max": config.edge.admission.reconnectMax,
            ],
            "services": config.services.map { service in
                [
                    "name": service.name, "target": "\(service.host):\(service.port)",
                    "topics": service.filters.map { "\($0)" },
                ]
            },
            "api": [
                "listen": config.apiListen.map { "\($0)" } ?? "", "tokens": "(\(config.apiTokens.count) redacted)",
            ],
            "admin": [
                "listen": config.adminListen.map { "\($0)" } ?? "", "tokens": "(\(config.adminTokens.count) redacted)",
            ],
            "drain": [
                "grace_ms": config.drainGrace.nanoseconds / 1_000_000,
                "unready_delay_ms": config.drainUnreadyDelay.nanoseconds / 1_000_000,
                "reconnect_window_ms": config.drainReconnectWindow.nanoseconds / 1_000_000,
            ],
            "log": ["level": "\(config.logLevel)", "format": config.logFormat.rawValue],
        ]
        let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data("{}".utf8)
        return String(decoding: data, as: UTF8.self)
    }

    /// Keys whose new value a reload cannot apply (listeners, transport, loops, services).
    static func restartKeys(_ old: GatewayConfiguration, _ new: GatewayConfiguration) -> [String] {
        var keys: [String] = []
        func compare(_ key: String, _ value: (GatewayConfiguration) -> String) {
            if value(old) != value(new) { keys.append(key) }
        }
        compare("instance_id") { $0.instanceID }
        compare("event_loop_threads") { "\($0.eventLoopThreads)" }
        compare("device.listen") { "\($0.deviceListen)" }
        compare("device.transport") { $0.transport.rawValue }
        compare("device.proxy_protocol") { "\($0.proxyProtocol)/\($0.proxyHeaderMaxSize)" }
        compare("device.reuse_port") { "\($0.deviceReusePort)" }
        compare("device.placement") { "\($0.edge.placement)" }
        compare("device.tls.min_version") { $0.tls?.minimumVersion ?? "" }
        compare("compression.dictionaries") { "\($0.dictionaries.map { "\($0.id)=\($0.file)" })" }
        compare("api") {
            "\($0.apiListen.map(\.description) ?? "")|\($0.apiLimits)"
                + "|\($0.apiMaxConcurrentCalls)|\($0.apiMaxRequestSize)|\($0.apiSendTimeoutMilliseconds)"
        }
        compare("api.tls (on, off, client_ca)") { Self.apiTLSMode($0) }
        compare("admin.listen") { $0.adminListen.map(\.description) ?? "" }
        compare("admin.max_connections") { "\($0.adminLimits)" }
        compare("drain") { "\($0.drainGrace)|\($0.drainReconnectWindow)|\($0.drainUnreadyDelay)" }
        compare("log") { "\($0.logLevel)|\($0.logFormat)" }
        compare("limits.heap_trim") { "\($0.heapTrim.interval)|\($0.heapTrim.freeBytes)" }
        compare("fleet") {
            $0.fleet.map {
                "\($0.redis.address)|\($0.registry)|\($0.redis.database)|\($0.listen)|\($0.tokens)|\($0.store)"
                    + "|\(String(describing: $0.tls))"
            } ?? ""
        }
        // The device limits and timeouts but those `EdgeServer.reload(limits:)` applies.
        let edge: [(String, (EdgeSettings) -> String)] = [
            ("limits.max_connections", { "\($0.maxConnections)" }),
            ("limits.buffer_arena_slots", { "\($0.bufferArenaSlots.map(String.init) ?? "")" }),
            ("limits.evict_unauthenticated_after", { "\($0.unauthenticatedEvictionAge)" }),
            ("limits.accept_backoff", { "\($0.acceptBackoff)" }),
            ("limits.max_frame_size", { "\($0.maxFrameSize)" }),
            ("limits.max_inflight", { "\($0.maxInflight)" }),
            ("limits.max_pending", { "\($0.maxPending.map(String.init) ?? "")" }),
            ("limits.outbound_buffer", { "\($0.outboundBufferBytes)" }),
            ("limits.max_push_frame", { "\($0.maxPushFrameSize.map(String.init) ?? "")" }),
            ("limits.max_topic_length", { "\($0.maxTopicLength)" }),
            ("limits.max_device_id_length", { "\($0.maxDeviceIDLength)" }),
            ("limits.max_topic_aliases", { "\($0.maxTopicAliases)" }),
            ("limits.batch_size", { "\($0.maxBatchSize)" }),
            ("compression", { "\($0.inflateLimits)" }),
            ("timeouts", { "\($0.sessionTimeouts)" }),
            ("keepalive", { "\($0.keepaliveDefault)/\($0.keepaliveMin)/\($0.keepaliveMax)" }),
            ("api.compress_push_above", { "\($0.pushCompressionThreshold)" }),
            ("events.enabled", { "\($0.publishEvents)" }),
        ]
        for (key, value) in edge where value(old.edge) != value(new.edge) { keys.append(key) }
        return keys
    }

    /// The API listener's kind of security: a reload can swap its certificate, not this.
    private static func apiTLSMode(_ configuration: GatewayConfiguration) -> String {
        guard let files = configuration.apiTLS else { return "h2c" }
        return files.clientCA == nil ? "tls" : "mtls"
    }

    private static func apiSecurity(_ files: GatewayConfiguration.APITLSFiles) -> APISecurity {
        .tls(certificateChain: files.certificateChain, privateKey: files.privateKey, clientCA: files.clientCA)
    }

    /// The event loops that serve devices, backends and the API (not the admin listener's).
    package var eventLoopGroup: any EventLoopGroup { self.group }

    /// True while `run()` (or the run `start()` began) has not returned.
    package var isRunning: Bool { self.running.load(ordering: .relaxed) }

    private let adminAddress = Mutex<SocketAddress?>(nil)
    private let apiPort = Mutex<Int?>(nil)
    private let internalPort = Mutex<Int?>(nil)
    /// The fleet's internal listener's port, once bound.
    package var boundInternalPort: Int? { self.internalPort.withLock { $0 } }

    /// The API listener's bound port, once started (nil without `api.listen`).
    package var boundAPIPort: Int? { self.apiPort.withLock { $0 } }

    /// The admin listener's bound address, once started (nil without `admin.listen`).
    package var boundAdminAddress: SocketAddress? { self.adminAddress.withLock { $0 } }

    /// Connections currently open on the device listener.
    package var openConnections: Int { self.edge.openConnections }

    /// Device connections open on each event loop (`device.placement`).
    package func connectionsPerLoop() async -> [Int] { await self.edge.connectionsPerLoop() }

    /// `device.placement: pack` with more than one loop: reports a loop's sample as its own
    /// thread would (tests drive moves with it). False without pack placement.
    package func placementSampled(loop: Int, utilization: Double, connections: Int) -> Bool {
        guard let placement = self.edge.placement else { return false }
        placement.sampled(loop: loop, utilization: utilization, connections: connections)
        return true
    }

    /// `device.placement: pack`: devices each loop moved since start (empty without pack).
    package var placementMoves: [Int] { self.edge.placement?.snapshot.map(\.moved) ?? [] }

    /// Times a device's reads were paused because its inflight window was full (since start).
    package var readPauses: Int { self.edge.readPauses }

    /// The device listener's protection counters since start (rate limits, dropped QoS 0,
    /// stalled outputs, failed accepts).
    package var rateLimitedMessages: Int { self.edge.rateLimitedMessages }
    package var droppedQoS0Messages: Int { self.edge.droppedQoS0Messages }
    package var outputStalls: Int { self.edge.outputStalls }
    package var acceptFailures: Int { self.edge.acceptFailures }

    /// Uplink messages inside backend delivery (sent and unanswered, or waiting for a
    /// service's window or linger), counted once per service.
    package var deliveryBacklog: Int { self.router?.backlog ?? 0 }

    /// How many sending passes the deliveries ran (`BackendRouter.senderWakeUps`).
    package var deliverySenderWakeUps: Int { self.router?.senderWakeUps ?? 0 }

    /// Edge batches handed to their delivery's loop from another thread (`BackendRouter.offLoopSteps`): 0.
    package var deliveryOffLoopSteps: Int { self.router?.offLoopSteps ?? 0 }

    /// The backend router as an uplink sink, when services are configured (tests hand it edge
    /// batches of their own).
    package var backendSink: (any UplinkSink)? { self.router }

}

/// A listener as a `Service`: opened when the group starts it, closed at graceful shutdown or
/// cancellation (a part that failed to start).
struct ListenerService: Service {
    let open: @Sendable () async throws -> Void
    let close: @Sendable () async -> Void

    func run() async throws {
        try await self.open()
        try? await gracefulShutdown()
        await self.close()
    }
}

/// A value settled once, awaited by any number of tasks (a waiter that is cancelled gets
/// `CancellationError`).
final class Latch<Value: Sendable>: Sendable {
    private enum State {
        case pending([UInt64: CheckedContinuation<Value, any Error>], next: UInt64)
        case settled(Result<Value, any Error>)
    }

    private let state = Mutex(State.pending([:], next: 0))

    func succeed(_ value: Value) { self.resolve(.success(value)) }

    func fail(_ error: any Error) { self.resolve(.failure(error)) }

    /// Settles with what `body` returns or throws, and passes that on.
    func settle(_ body: () async throws -> Value) async throws {
        do {
            self.succeed(try await body())
        } catch {
            self.fail(error)
            throw error
        }
    }

    private func resolve(_ result: Result<Value, any Error>) {
        let waiters = self.state.withLock { state -> [CheckedContinuation<Value, any Error>] in
            guard case .pending(let waiters, _) = state else { return [] }
            state = .settled(result)
            return Array(waiters.values)
        }
        for waiter in waiters { waiter.resume(with: result) }
    }

    var value: Value {
        get async throws {
            let id = self.state.withLock { state -> UInt64? in
                guard case .pending(let waiters, let next) = state else { return nil }
                state = .pending(waiters, next: next + 1)
                return next
            }
            guard let id else { return try self.settledResult!.get() }
            return try await withTaskCancellationHandler {
                try await withCheckedThrowingContinuation { continuation in
                    let settled = self.state.withLock { state -> Result<Value, any Error>? in
                        switch state {
                        case .settled(let result):
                            return result
                        case .pending(var waiters, let next):
                            guard !Task.isCancelled else { return .failure(CancellationError()) }
                            waiters[id] = continuation
                            state = .pending(waiters, next: next)
                            return nil
                        }
                    }
                    if let settled { continuation.resume(with: settled) }
                }
            } onCancel: {
                let waiter = self.state.withLock { state -> CheckedContinuation<Value, any Error>? in
                    guard case .pending(var waiters, let next) = state else { return nil }
                    let waiter = waiters.removeValue(forKey: id)
                    state = .pending(waiters, next: next)
                    return waiter
                }
                waiter?.resume(throwing: CancellationError())
            }
        }
    }

    private var settledResult: Result<Value, any Error>? {
        self.state.withLock { state in
            guard case .settled(let result) = state else { return nil }
            return result
        }
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

/// The gateway, weakly, for the admin API's closures (made before the gateway is).
final class GatewayReference: @unchecked Sendable {
    // Set once in `Gateway.init`, before the admin listener can run; read after.
    weak var gateway: Gateway?
}
