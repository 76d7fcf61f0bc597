internal import Foundation
internal import Logging
package import NIOCore
internal import TerminusBackend
internal import TerminusCompression
internal import TerminusEdge
internal import TerminusListeners
internal import TerminusProtocol
internal import TerminusRouting
internal import Yams

/// Reads the YAML configuration file. Unknown keys, wrong types and out-of-range values are
/// errors that name the key; nothing is silently ignored or defaulted from development mode.
///
/// The file is read section by section (`device`, `auth`, `limits`, `services`, …). Each
/// section has one enum of its keys (`SectionKeys`); it reads values only through those keys,
/// and a key in the file that is not a case of the enum is an unknown key, so the names are
/// written once. `schema` lists the sections; `knownKeys` (every key the loader reads) is
/// checked against `docs/configuration.md` by a test.
package enum ConfigurationLoader {
    /// Parses a duration as the configuration file writes it: `250ms`, `30s`, `5m`, `1h`, or a
    /// bare number of seconds. Nil for anything else, negative values and overflow.
    package static func parseDuration(_ text: String) -> TimeAmount? {
        Section.parseDuration(text)
    }

    package static func load(file path: String) throws -> GatewayConfiguration {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ConfigurationError(key: "", "cannot read configuration file \(path)")
        }
        return try self.load(yaml: String(decoding: data, as: UTF8.self), baseDirectory: Self.directory(of: path))
    }

    /// - Parameter baseDirectory: relative file paths in the configuration resolve against it.
    package static func load(yaml: String, baseDirectory: String = ".") throws -> GatewayConfiguration {
        let root = try Section.parse(yaml: yaml, errorKey: "", what: "the configuration file")
        var config = GatewayConfiguration()
        try Self.decodeRoot(Keyed(root), into: &config, base: baseDirectory)
        return config
    }

    /// Every section of the file: its key path (`[]` for each list entry) and its keys.
    static let schema: [(path: String, keys: any SectionKeys.Type)] = [
        ("", RootKey.self),
        ("device", DeviceKey.self),
        ("device.tls", DeviceTLSKey.self),
        ("device.placement", DevicePlacementKey.self),
        ("auth", AuthKey.self),
        ("auth.throttle", ThrottleKey.self),
        ("limits", LimitsKey.self),
        ("limits.rate", RateKey.self),
        ("limits.reconnect", ReconnectKey.self),
        ("limits.heap_trim", HeapTrimKey.self),
        ("compression", CompressionKey.self),
        ("compression.dictionaries[]", DictionaryKey.self),
        ("timeouts", TimeoutsKey.self),
        ("keepalive", KeepaliveKey.self),
        ("drain", DrainKey.self),
        ("sink", SinkKey.self),
        ("events", EventsKey.self),
        ("services[]", ServiceKey.self),
        ("services[].tls", ServiceTLSKey.self),
        ("services[].retry", ServiceRetryKey.self),
        ("api", APIKey.self),
        ("api.tls", APITLSKey.self),
        ("admin", AdminKey.self),
        ("log", LogKey.self),
        ("reload", ReloadKey.self),
        ("fleet", FleetKey.self),
        ("fleet.redis", FleetRedisKey.self),
        ("fleet.redis.tls", FleetRedisTLSKey.self),
        ("fleet.store", FleetStoreKey.self),
        ("fleet.tls", FleetTLSKey.self),
    ]

    /// Every key the loader reads, as a dotted path (`services[].retry.attempts`); keys that
    /// hold a section are not listed themselves, their keys are.
    package static var knownKeys: Set<String> {
        let sections = Set(Self.schema.map(\.path))
        var keys = Set<String>()
        for (path, type) in Self.schema {
            for name in type.names {
                let full = path.isEmpty ? name : "\(path).\(name)"
                if !sections.contains(full) && !sections.contains(full + "[]") { keys.insert(full) }
            }
        }
        return keys
    }

    // MARK: Top level

    enum RootKey: String, SectionKeys {
        case instanceID = "instance_id"
        case logLevel = "log_level"
        case eventLoopThreads = "event_loop_threads"
        case device
        case auth
        case limits
        case compression
        case timeouts
        case keepalive
        case drain
        case sink
        case events
        case services
        case api
        case admin
        case log
        case reload
        case fleet
    }

    enum ReloadKey: String, SectionKeys {
        case watchInterval = "watch_interval"
    }

    enum LogKey: String, SectionKeys {
        case level
        case format
    }

    private static func decodeLevel(_ level: String, key: String) throws -> Logger.Level {
        guard let parsed = Logger.Level(rawValue: level) else {
            throw ConfigurationError(key: key, "must be one of trace, debug, info, notice, warning, error, critical")
        }
        return parsed
    }

    private static func decodeRoot(_ root: Keyed<RootKey>, into config: inout GatewayConfiguration, base: String) throws
    {
        if let id = try root.string(.instanceID) {
            guard !id.isEmpty, id.utf8.count <= 255 else {
                throw ConfigurationError(key: "instance_id", "must be 1…255 bytes")
            }
            config.instanceID = id
        } else {
            config.instanceID = ProcessInfo.processInfo.hostName
        }
        config.edge.instanceID = config.instanceID
        if let level = try root.string(.logLevel) { config.logLevel = try Self.decodeLevel(level, key: "log_level") }
        if let reload = try root.section(.reload, ReloadKey.self), let v = try reload.string(.watchInterval) {
            guard let amount = Section.parseDuration(v), amount.nanoseconds >= 0 else {
                throw ConfigurationError(key: "reload.watch_interval", "must be a duration such as 0s, 10s, 1m")
            }
            config.reloadWatchInterval = amount
        }
        if let log = try root.section(.log, LogKey.self) {
            if let level = try log.string(.level) { config.logLevel = try Self.decodeLevel(level, key: "log.level") }
            if let format = try log.string(.format) {
                guard let parsed = TerminusLogHandler.Format(rawValue: format) else {
                    throw ConfigurationError(key: "log.format", "must be text or json")
                }
                config.logFormat = parsed
            }
        }
        if let threads = try root.int(.eventLoopThreads, in: 0...1024) { config.eventLoopThreads = threads }
        guard let device = try root.section(.device, DeviceKey.self) else {
            throw ConfigurationError(key: "device", "is required (listen address and transport)")
        }
        try Self.decodeDevice(device, into: &config, base: base)
        try Self.decodeAuth(root.section(.auth, AuthKey.self), into: &config, base: base)
        if let limits = try root.section(.limits, LimitsKey.self) { try Self.decodeLimits(limits, into: &config) }
        if let compression = try root.section(.compression, CompressionKey.self) {
            try Self.decodeCompression(compression, into: &config, base: base)
        }
        if let timeouts = try root.section(.timeouts, TimeoutsKey.self) {
            try Self.decodeTimeouts(timeouts, into: &config)
        }
        if let keepalive = try root.section(.keepalive, KeepaliveKey.self) {
            try Self.decodeKeepalive(keepalive, into: &config)
        }
        if let drain = try root.section(.drain, DrainKey.self) {
            if let v = try drain.duration(.grace) { config.drainGrace = v }
            if let v = try drain.duration(.reconnectWindow) { config.drainReconnectWindow = v }
            if let v = try drain.string(.unreadyDelay) {
                guard let amount = Section.parseDuration(v), amount.nanoseconds >= 0 else {
                    throw ConfigurationError(key: "drain.unready_delay", "must be a duration such as 0s, 5s, 10s")
                }
                config.drainUnreadyDelay = amount
            }
            guard config.drainUnreadyDelay < config.drainGrace else {
                throw ConfigurationError(
                    key: "drain.unready_delay",
                    "must be shorter than drain.grace (the whole shutdown fits in drain.grace)"
                )
            }
        }
        if let sink = try root.section(.sink, SinkKey.self), let type = try sink.string(.type), type != "log" {
            throw ConfigurationError(key: "sink.type", "must be log (backend routing is configured under services)")
        }
        config.services = try Self.services(root.list(.services, ServiceKey.self), base: base)
        if let events = try root.section(.events, EventsKey.self), let enabled = try events.string(.enabled) {
            guard let value = Bool(enabled) else {
                throw ConfigurationError(key: "events.enabled", "must be true or false")
            }
            config.edge.publishEvents = value
        }
        if let api = try root.section(.api, APIKey.self) { try Self.decodeAPI(api, into: &config, base: base) }
        if let admin = try root.section(.admin, AdminKey.self) {
            try Self.decodeAdmin(admin, into: &config, base: base)
        }
        if let fleet = try root.section(.fleet, FleetKey.self) {
            try Self.decodeFleet(fleet, into: &config, base: base)
        }
    }

    // MARK: device

    enum DeviceKey: String, SectionKeys {
        case listen
        case transport
        case tls
        case proxyProtocol = "proxy_protocol"
        case proxyHeaderMaxSize = "proxy_header_max_size"
        case reusePort = "reuse_port"
        case placement
    }

    enum DevicePlacementKey: String, SectionKeys {
        case policy
        case targetUtilization = "target_utilization"
        case burst
        case rebalanceAbove = "rebalance_above"
        case rebalanceRate = "rebalance_rate"
    }

    enum DeviceTLSKey: String, SectionKeys {
        case certificateChain = "certificate_chain"
        case privateKey = "private_key"
        case clientCA = "client_ca"
        case clientAuth = "client_auth"
        case minVersion = "min_version"
        case engine
        case sessionTickets = "session_tickets"
        case ticketKeyFile = "ticket_key_file"
        case ticketKeyRotation = "ticket_key_rotation"
    }

    private static func decodeDevice(
        _ device: Keyed<DeviceKey>,
        into config: inout GatewayConfiguration,
        base: String
    ) throws {
        if let listen = try device.string(.listen) {
            guard let parsed = GatewayConfiguration.HostPort(parsing: listen) else {
                throw ConfigurationError(key: "device.listen", "must be HOST:PORT")
            }
            config.deviceListen = parsed
        }
        guard let transport = try device.string(.transport) else {
            throw ConfigurationError(key: "device.transport", "is required: tls or plaintext")
        }
        guard let parsedTransport = GatewayConfiguration.Transport(rawValue: transport) else {
            throw ConfigurationError(key: "device.transport", "must be tls or plaintext")
        }
        config.transport = parsedTransport
        if let proxy = try device.string(.proxyProtocol) {
            guard let mode = ProxyProtocolMode(rawValue: proxy) else {
                throw ConfigurationError(key: "device.proxy_protocol", "must be off, v1, v2 or any")
            }
            config.proxyProtocol = mode
        }
        if let size = try device.int(.proxyHeaderMaxSize, in: 232...65_551) { config.proxyHeaderMaxSize = size }
        if let reuse = try device.string(.reusePort) {
            guard let value = Bool(reuse) else {
                throw ConfigurationError(key: "device.reuse_port", "must be true or false")
            }
            config.deviceReusePort = value
        }
        if let placement = try device.section(.placement, DevicePlacementKey.self) {
            if let policy = try placement.string(.policy) {
                guard let parsed = LoopPlacementSettings.Policy(rawValue: policy) else {
                    throw ConfigurationError(key: "device.placement.policy", "must be spread or pack")
                }
                config.edge.placement.policy = parsed
            }
            if let percent = try placement.int(.targetUtilization, in: 10...95) {
                config.edge.placement.targetUtilization = Double(percent) / 100
            }
            if let burst = try placement.int(.burst, in: 1...100_000) { config.edge.placement.burst = burst }
            if let percent = try placement.int(.rebalanceAbove, in: 0...100) {
                config.edge.placement.rebalanceAbove = Double(percent) / 100
            }
            if let rate = try placement.int(.rebalanceRate, in: 1...100_000) {
                config.edge.placement.rebalanceRate = rate
            }
            let settings = config.edge.placement
            if settings.rebalanceAbove > 0 && settings.rebalanceAbove <= settings.targetUtilization {
                throw ConfigurationError(
                    key: "device.placement.rebalance_above",
                    "must be above target_utilization (\(Int(settings.targetUtilization * 100))), or 0 to never move devices"
                )
            }
        }
        guard let tls = try device.section(.tls, DeviceTLSKey.self) else {
            if parsedTransport == .tls {
                throw ConfigurationError(key: "device.tls", "is required with transport: tls")
            }
            return
        }
        guard parsedTransport == .tls else {
            throw ConfigurationError(key: "device.tls", "is only valid with transport: tls")
        }
        guard let chain = try tls.string(.certificateChain) else {
            throw ConfigurationError(key: "device.tls.certificate_chain", "is required")
        }
        guard let key = try tls.string(.privateKey) else {
            throw ConfigurationError(key: "device.tls.private_key", "is required")
        }
        var files = GatewayConfiguration.TLSFiles(
            certificateChain: Self.resolve(chain, base),
            privateKey: Self.resolve(key, base)
        )
        files.clientCA = try tls.string(.clientCA).map { Self.resolve($0, base) }
        if let auth = try tls.string(.clientAuth) {
            guard let parsed = GatewayConfiguration.ClientAuth(rawValue: auth) else {
                throw ConfigurationError(key: "device.tls.client_auth", "must be none, optional or required")
            }
            files.clientAuth = parsed
        }
        if files.clientAuth != .none && files.clientCA == nil {
            throw ConfigurationError(
                key: "device.tls.client_ca",
                "is required when client_auth is \(files.clientAuth.rawValue)"
            )
        }
        if let version = try tls.string(.minVersion) {
            guard version == "1.2" || version == "1.3" else {
                throw ConfigurationError(key: "device.tls.min_version", "must be \"1.2\" or \"1.3\"")
            }
            files.minimumVersion = version
        }
        if let engine = try tls.string(.engine) {
            guard let parsed = GatewayConfiguration.TLSEngine(rawValue: engine) else {
                throw ConfigurationError(key: "device.tls.engine", "must be nio-ssl or lean")
            }
            files.engine = parsed
        }
        let tickets = try tls.int(.sessionTickets, in: 0...GatewayConfiguration.TLSFiles.maxSessionTickets)
        let ticketKeyFile = try tls.string(.ticketKeyFile).map { Self.resolve($0, base) }
        let rotation = try tls.duration(.ticketKeyRotation)
        if files.engine == .nioSSL, tickets != nil || ticketKeyFile != nil || rotation != nil {
            // BoringSSL in swift-nio-ssl keeps its own ticket keys, per process, out of reach.
            throw ConfigurationError(
                key: "device.tls",
                "session_tickets, ticket_key_file and ticket_key_rotation are settings of engine: lean"
            )
        }
        if let tickets { files.sessionTickets = tickets }
        files.ticketKeyFile = ticketKeyFile
        if let rotation {
            guard rotation >= .minutes(1), rotation <= .hours(24 * 7) else {
                throw ConfigurationError(key: "device.tls.ticket_key_rotation", "must be between 1m and 168h")
            }
            files.ticketKeyRotation = rotation
        }
        config.tls = files
    }

    // MARK: auth

    enum AuthKey: String, SectionKeys {
        case secretsFile = "secrets_file"
        case maxTokenLifetime = "max_token_lifetime"
        case throttle
    }

    enum ThrottleKey: String, SectionKeys {
        case failures
        case window
        case maxAddresses = "max_addresses"
    }

    private static func decodeAuth(
        _ auth: Keyed<AuthKey>?,
        into config: inout GatewayConfiguration,
        base: String
    ) throws {
        if let auth {
            config.secretsFile = try auth.string(.secretsFile).map { Self.resolve($0, base) }
            if try auth.string(.maxTokenLifetime) == "0" {
                config.maxTokenLifetimeSeconds = 0
            } else if let v = try auth.duration(.maxTokenLifetime) {
                config.maxTokenLifetimeSeconds = v.nanoseconds / 1_000_000_000
            }
            if let throttle = try auth.section(.throttle, ThrottleKey.self) {
                if let v = try throttle.int(.failures, in: 0...1_000_000) { config.edge.authThrottle.failures = v }
                if let v = try throttle.duration(.window) { config.edge.authThrottle.window = v }
                if let v = try throttle.int(.maxAddresses, in: 1...10_000_000) {
                    config.edge.authThrottle.maxAddresses = v
                }
            }
        }
        if config.secretsFile == nil && config.tls?.clientAuth != .required {
            throw ConfigurationError(
                key: "auth.secrets_file",
                "is required unless device.tls.client_auth is required (devices would have no way to authenticate)"
            )
        }
    }

    // MARK: limits

    enum LimitsKey: String, SectionKeys {
        case maxConnections = "max_connections"
        case maxFrameSize = "max_frame_size"
        case maxInflight = "max_inflight"
        case maxTopicLength = "max_topic_length"
        case maxDeviceIDLength = "max_device_id_length"
        case maxTopicAliases = "max_topic_aliases"
        case batchSize = "batch_size"
        case bufferArenaSlots = "buffer_arena_slots"
        case maxPending = "max_pending"
        case outboundBuffer = "outbound_buffer"
        case maxPushFrame = "max_push_frame"
        case acceptBackoff = "accept_backoff"
        case rate
        case evictUnauthenticatedAfter = "evict_unauthenticated_after"
        case reservedDescriptors = "reserved_descriptors"
        case newConnectionsPerSecond = "new_connections_per_second"
        case newConnectionBurst = "new_connection_burst"
        case maxHandshakes = "max_handshakes"
        case maxConnectionsPerAddress = "max_connections_per_address"
        case reconnect
        case heapTrim = "heap_trim"
    }

    enum HeapTrimKey: String, SectionKeys {
        case interval
        case freeBytes = "free_bytes"
    }

    enum ReconnectKey: String, SectionKeys {
        case max
        case window
        case block
    }

    enum RateKey: String, SectionKeys {
        case messagesPerSecond = "messages_per_second"
        case messageBurst = "message_burst"
        case bytesPerSecond = "bytes_per_second"
        case byteBurst = "byte_burst"
        case closeAfter = "close_after"
    }

    private static func decodeLimits(_ limits: Keyed<LimitsKey>, into config: inout GatewayConfiguration) throws {
        if let v = try limits.int(.maxConnections, in: 1...10_000_000) {
            config.edge.maxConnections = v
            config.maxConnectionsConfigured = true
        }
        if let v = try limits.int(.maxFrameSize, in: 64...16_777_216) { config.edge.maxFrameSize = v }
        if let v = try limits.int(.maxInflight, in: 1...65_535) { config.edge.maxInflight = v }
        if let v = try limits.int(.maxTopicLength, in: 1...65_535) { config.edge.maxTopicLength = v }
        if let v = try limits.int(.maxDeviceIDLength, in: 1...255) { config.edge.maxDeviceIDLength = v }
        if let v = try limits.int(.maxTopicAliases, in: 0...65_535) { config.edge.maxTopicAliases = v }
        if let v = try limits.int(.batchSize, in: 1...65_536) { config.edge.maxBatchSize = v }
        if let v = try limits.int(.bufferArenaSlots, in: 0...BufferArena.maximumSlots) {
            config.edge.bufferArenaSlots = v
        }
        if let v = try limits.int(.maxPending, in: 1...1_000_000) { config.edge.maxPending = v }
        if let v = try limits.int(.outboundBuffer, in: 1024...(64 * 1024 * 1024)) {
            config.edge.outboundBufferBytes = v
        }
        if let v = try limits.int(.maxPushFrame, in: 512...16_777_216) { config.edge.maxPushFrameSize = v }
        if let v = try limits.duration(.acceptBackoff) { config.edge.acceptBackoff = v }
        if let v = try limits.int(.reservedDescriptors, in: 0...1_000_000) { config.reservedDescriptors = v }
        if let v = try limits.duration(.evictUnauthenticatedAfter) { config.edge.unauthenticatedEvictionAge = v }
        if let v = try limits.int(.newConnectionsPerSecond, in: 0...10_000_000) {
            config.edge.admission.acceptRate = Double(v)
        }
        if let v = try limits.int(.newConnectionBurst, in: 1...10_000_000) {
            config.edge.admission.acceptBurst = Double(v)
        }
        if let v = try limits.int(.maxHandshakes, in: 0...10_000_000) { config.edge.admission.maxHandshakes = v }
        if let v = try limits.int(.maxConnectionsPerAddress, in: 0...10_000_000) {
            config.edge.admission.maxPerAddress = v
        }
        if let reconnect = try limits.section(.reconnect, ReconnectKey.self) {
            if let v = try reconnect.int(.max, in: 0...1_000_000) { config.edge.admission.reconnectMax = v }
            if let v = try reconnect.duration(.window) { config.edge.admission.reconnectWindow = v }
            if let v = try reconnect.duration(.block) { config.edge.admission.reconnectBlock = v }
        }
        if let trim = try limits.section(.heapTrim, HeapTrimKey.self) {
            if try trim.string(.interval) == "0" {
                config.heapTrim.interval = .zero
            } else if let v = try trim.duration(.interval) {
                config.heapTrim.interval = v
            }
            if let v = try trim.int(.freeBytes, in: 1_048_576...(1 << 40)) { config.heapTrim.freeBytes = v }
        }
        if let rate = try limits.section(.rate, RateKey.self) {
            var limits = config.edge.rateLimits
            if let v = try rate.int(.messagesPerSecond, in: 0...10_000_000) { limits.messagesPerSecond = Double(v) }
            if let v = try rate.int(.messageBurst, in: 1...10_000_000) { limits.messageBurst = Double(v) }
            if let v = try rate.int(.bytesPerSecond, in: 0...(1 << 40)) { limits.bytesPerSecond = Double(v) }
            if let v = try rate.int(.byteBurst, in: 1...(1 << 40)) { limits.byteBurst = Double(v) }
            if let v = try rate.int(.closeAfter, in: 0...1_000_000) { limits.refusalsBeforeClose = v }
            config.edge.rateLimits = limits
        }
    }

    // MARK: compression, timeouts, keepalive, drain, sink, events

    enum CompressionKey: String, SectionKeys {
        case maxInflatedSize = "max_inflated_size"
        case maxInflateRatio = "max_inflate_ratio"
        case ratioFloor = "ratio_floor"
        case dictionaries
    }

    enum DictionaryKey: String, SectionKeys {
        case id
        case file
    }

    private static func decodeCompression(
        _ compression: Keyed<CompressionKey>,
        into config: inout GatewayConfiguration,
        base: String
    ) throws {
        if let v = try compression.int(.maxInflatedSize, in: 64...(64 * 1024 * 1024)) {
            config.edge.inflateLimits.maxInflatedSize = v
        }
        if let v = try compression.int(.maxInflateRatio, in: 1...100_000) { config.edge.inflateLimits.maxRatio = v }
        if let v = try compression.int(.ratioFloor, in: 0...(64 * 1024 * 1024)) {
            config.edge.inflateLimits.ratioFloor = v
        }
        for entry in try compression.list(.dictionaries, DictionaryKey.self) {
            guard let id = try entry.int(.id, in: 1...65_535) else {
                throw ConfigurationError(key: "\(entry.path).id", "is required")
            }
            guard let file = try entry.string(.file) else {
                throw ConfigurationError(key: "\(entry.path).file", "is required")
            }
            if config.dictionaries.contains(where: { $0.id == UInt16(id) }) {
                throw ConfigurationError(key: "\(entry.path).id", "\(id) is listed twice")
            }
            config.dictionaries.append(.init(id: UInt16(id), file: Self.resolve(file, base)))
        }
    }

    enum TimeoutsKey: String, SectionKeys {
        case handshake
        case hello
        case closeGrace = "close_grace"
        case frame
        case writeStall = "write_stall"
    }

    private static func decodeTimeouts(_ timeouts: Keyed<TimeoutsKey>, into config: inout GatewayConfiguration) throws {
        if let v = try timeouts.duration(.frame) { config.edge.frameTimeout = v }
        if let v = try timeouts.duration(.writeStall) { config.edge.writeStallTimeout = v }
        if let v = try timeouts.duration(.handshake) { config.edge.handshakeTimeout = v }
        if let v = try timeouts.duration(.hello) { config.edge.helloTimeout = v }
        if let v = try timeouts.duration(.closeGrace) { config.edge.closeGrace = v }
    }

    enum KeepaliveKey: String, SectionKeys {
        case `default`
        case min
        case max
    }

    private static func decodeKeepalive(
        _ keepalive: Keyed<KeepaliveKey>,
        into config: inout GatewayConfiguration
    ) throws {
        if let v = try keepalive.seconds(.default) { config.edge.keepaliveDefault = v }
        if let v = try keepalive.seconds(.min) { config.edge.keepaliveMin = v }
        if let v = try keepalive.seconds(.max) { config.edge.keepaliveMax = v }
        let edge = config.edge
        guard edge.keepaliveMin <= edge.keepaliveDefault, edge.keepaliveDefault <= edge.keepaliveMax else {
            throw ConfigurationError(key: "keepalive", "must satisfy min <= default <= max")
        }
    }

    enum DrainKey: String, SectionKeys {
        case grace
        case reconnectWindow = "reconnect_window"
        case unreadyDelay = "unready_delay"
    }

    enum SinkKey: String, SectionKeys {
        case type
    }

    enum EventsKey: String, SectionKeys {
        case enabled
    }

    // MARK: api, admin

    enum APIKey: String, SectionKeys {
        case listen
        case tokensFile = "tokens_file"
        case tls
        case sendTimeout = "send_timeout"
        case compressPushAbove = "compress_push_above"
        case maxConnections = "max_connections"
        case idleTimeout = "idle_timeout"
        case maxConcurrentCalls = "max_concurrent_calls"
        case maxRequestSize = "max_request_size"
    }

    enum APITLSKey: String, SectionKeys {
        case certificateChain = "certificate_chain"
        case privateKey = "private_key"
        case clientCA = "client_ca"
    }

    private static func decodeAPI(_ api: Keyed<APIKey>, into config: inout GatewayConfiguration, base: String) throws {
        if let v = try api.int(.maxConnections, in: 1...1_000_000) { config.apiLimits.maxConnections = v }
        if let v = try api.duration(.idleTimeout) { config.apiLimits.idleTimeout = v }
        if let v = try api.int(.maxConcurrentCalls, in: 1...100_000) { config.apiMaxConcurrentCalls = v }
        if let v = try api.int(.maxRequestSize, in: 1_024...67_108_864) { config.apiMaxRequestSize = v }
        if let tls = try api.section(.tls, APITLSKey.self) {
            guard let chain = try tls.string(.certificateChain) else {
                throw ConfigurationError(key: "api.tls.certificate_chain", "is required")
            }
            guard let key = try tls.string(.privateKey) else {
                throw ConfigurationError(key: "api.tls.private_key", "is required")
            }
            config.apiTLS = .init(
                certificateChain: Self.resolve(chain, base),
                privateKey: Self.resolve(key, base),
                clientCA: try tls.string(.clientCA).map { Self.resolve($0, base) }
            )
        }
        if let listen = try api.string(.listen) {
            guard let parsed = GatewayConfiguration.HostPort(parsing: listen) else {
                throw ConfigurationError(key: "api.listen", "must be HOST:PORT")
            }
            config.apiListen = parsed
        }
        if let file = try api.string(.tokensFile) {
            config.apiTokensFile = Self.resolve(file, base)
            config.apiTokens = try Self.tokens(file: Self.resolve(file, base), key: "api.tokens_file")
        }
        if let v = try api.duration(.sendTimeout) {
            config.apiSendTimeoutMilliseconds = UInt32(clamping: v.nanoseconds / 1_000_000)
        }
        if let v = try api.int(.compressPushAbove, in: 0...16_777_216) { config.edge.pushCompressionThreshold = v }
        if config.apiListen != nil && config.apiTokens.isEmpty && config.apiTLS?.clientCA == nil {
            throw ConfigurationError(
                key: "api.tokens_file",
                "is required with api.listen unless api.tls.client_ca is set (callers must authenticate)"
            )
        }
    }

    /// A bearer-tokens file (`api.tokens_file`, `admin.tokens_file`): one token per line, `#`
    /// comments and blank lines skipped, each token at least 16 characters.
    static func tokens(file path: String, key: String) throws -> [String] {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ConfigurationError(key: key, Gateway.unreadable(path))
        }
        let tokens = String(decoding: data, as: UTF8.self).split(whereSeparator: \.isNewline)
            .map { $0.trimmingCharacters(in: .whitespaces) }
            .filter { !$0.isEmpty && !$0.hasPrefix("#") }
        guard tokens.allSatisfy({ $0.utf8.count >= 16 }) else {
            throw ConfigurationError(key: key, "every token in \(path) must be at least 16 characters")
        }
        return tokens
    }

    enum AdminKey: String, SectionKeys {
        case listen
        case tokensFile = "tokens_file"
        case maxConnections = "max_connections"
        case idleTimeout = "idle_timeout"
    }

    private static func decodeAdmin(
        _ admin: Keyed<AdminKey>,
        into config: inout GatewayConfiguration,
        base: String
    )
        throws
    {
        if let file = try admin.string(.tokensFile) {
            config.adminTokensFile = Self.resolve(file, base)
            config.adminTokens = try Self.tokens(file: Self.resolve(file, base), key: "admin.tokens_file")
        }
        if let v = try admin.int(.maxConnections, in: 1...1_000_000) { config.adminLimits.maxConnections = v }
        if let v = try admin.duration(.idleTimeout) { config.adminLimits.idleTimeout = v }
        if let listen = try admin.string(.listen) {
            guard let parsed = GatewayConfiguration.HostPort.parsingOptional(listen) else {
                throw ConfigurationError(key: "admin.listen", "must be HOST:PORT or off")
            }
            config.adminListen = parsed
        }
    }

    // MARK: services

    /// A service's `target` without its `dns:///`: `HOST:PORT` or `[IPv6]:PORT`, where HOST is
    /// an IP address or a DNS name the gateway can connect to. Refused, each with its reason:
    /// another scheme (`http://…`, `unix:…`), no host or the any-address, an IPv6 address
    /// without brackets, a name with characters DNS does not allow, a port outside 1…65535.
    static func serviceTarget(_ target: String, key: String) throws -> GatewayConfiguration.HostPort {
        let usage = "must be HOST:PORT or dns:///HOST:PORT"
        if let scheme = target.range(of: "://") {
            throw ConfigurationError(
                key: key,
                "\(usage): the scheme \(target[..<scheme.upperBound]) is not supported (gRPC over HTTP/2, TLS under services[].tls)"
            )
        }
        guard let colon = target.lastIndex(of: ":"), let port = Int(target[target.index(after: colon)...]) else {
            throw ConfigurationError(key: key, "\(usage): \(target) has no port")
        }
        guard (1...65_535).contains(port) else {
            throw ConfigurationError(key: key, "\(usage): port \(port) is outside 1…65535")
        }
        var host = String(target[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") {
            host = String(host.dropFirst().dropLast())
            guard host.contains(":"), (try? SocketAddress(ipAddress: host, port: port)) != nil else {
                throw ConfigurationError(key: key, "\(usage): [\(host)] is not an IPv6 address")
            }
        } else if host.contains(":") {
            throw ConfigurationError(key: key, "\(usage): write an IPv6 address in brackets, [\(host)]:\(port)")
        } else if host.isEmpty {
            throw ConfigurationError(key: key, "\(usage): the host is missing")
        } else if !Self.isHostName(host) {
            throw ConfigurationError(key: key, "\(usage): \(host) is not a valid host name or IPv4 address")
        }
        guard host != "0.0.0.0", host != "::" else {
            throw ConfigurationError(key: key, "\(usage): \(host) is the any-address, not a host to connect to")
        }
        return .init(host: host, port: port)
    }

    /// A DNS name by RFC 1123 (letters, digits, hyphens; labels of 1…63 bytes, not starting
    /// or ending with a hyphen; at most 253 bytes; `_` allowed, as Kubernetes service names in
    /// SRV form use it), or a dotted IPv4 address.
    static func isHostName(_ host: String) -> Bool {
        let name = host.hasSuffix(".") ? String(host.dropLast()) : host
        guard !name.isEmpty, name.utf8.count <= 253 else { return false }
        let labels = name.split(separator: ".", omittingEmptySubsequences: false)
        if labels.count == 4, labels.allSatisfy({ UInt8($0) != nil }) { return true }
        // An all-numeric name that is not four octets (`999.1.1.1`, `10.1`) is a mistyped address.
        if labels.last.map({ $0.allSatisfy(\.isNumber) }) == true { return false }
        return labels.allSatisfy { label in
            !label.isEmpty && label.utf8.count <= 63 && label.first != "-" && label.last != "-"
                && label.utf8.allSatisfy { byte in
                    (byte >= 0x30 && byte <= 0x39) || (byte >= 0x41 && byte <= 0x5A) || (byte >= 0x61 && byte <= 0x7A)
                        || byte == 0x2D || byte == 0x5F
                }
        }
    }

    enum ServiceKey: String, SectionKeys {
        case name
        case target
        case tls
        case topics
        case batchSize = "batch_size"
        case linger
        case window
        case deadline
        case retry
        case connections
        case batchesInFlight = "batches_in_flight"
        case rebalance
        case pingTimeout = "ping_timeout"
    }

    enum ServiceTLSKey: String, SectionKeys {
        case ca
        case certificate
        case privateKey = "private_key"
        case serverName = "server_name"
    }

    enum ServiceRetryKey: String, SectionKeys {
        case attempts
        case initialBackoff = "initial_backoff"
        case maxBackoff = "max_backoff"
        case retryAfter = "retry_after"
    }

    static func services(_ entries: [Keyed<ServiceKey>], base: String) throws -> [Subscription] {
        var services: [Subscription] = []
        for entry in entries {
            guard let name = try entry.string(.name), !name.isEmpty else {
                throw ConfigurationError(key: "\(entry.path).name", "is required")
            }
            if services.contains(where: { $0.name == name }) {
                throw ConfigurationError(key: "\(entry.path).name", "'\(name)' is used twice")
            }
            guard var target = try entry.string(.target) else {
                throw ConfigurationError(key: "\(entry.path).target", "is required (HOST:PORT)")
            }
            if target.hasPrefix("dns:///") { target.removeFirst("dns:///".count) }
            let address = try Self.serviceTarget(target, key: "\(entry.path).target")
            let topics = try entry.stringList(.topics)
            guard !topics.isEmpty else {
                throw ConfigurationError(key: "\(entry.path).topics", "needs at least one topic filter")
            }
            var filters: [TopicFilter] = []
            for (index, text) in topics.enumerated() {
                do {
                    filters.append(try TopicFilter(text))
                } catch {
                    throw ConfigurationError(key: "\(entry.path).topics[\(index)]", error.description)
                }
            }
            var service = Subscription(name: name, host: address.host, port: address.port, filters: filters)
            if let tls = try entry.section(.tls, ServiceTLSKey.self) {
                let certificate = try tls.string(.certificate).map { Self.resolve($0, base) }
                let key = try tls.string(.privateKey).map { Self.resolve($0, base) }
                if (certificate == nil) != (key == nil) {
                    throw ConfigurationError(key: "\(tls.path)", "certificate and private_key go together")
                }
                service.security = .tls(
                    caFile: try tls.string(.ca).map { Self.resolve($0, base) },
                    certificateFile: certificate,
                    keyFile: key,
                    serverName: try tls.string(.serverName)
                )
            }
            if let v = try entry.int(.batchSize, in: 1...65_536) { service.batchSize = v }
            if let v = try entry.string(.linger) {
                guard let amount = Section.parseDuration(v), amount.nanoseconds <= 10_000_000_000 else {
                    throw ConfigurationError(key: "\(entry.path).linger", "must be a duration from 0ms to 10s")
                }
                service.lingerMilliseconds = UInt64(amount.nanoseconds / 1_000_000)
            }
            if let v = try entry.int(.window, in: 1...10_000_000) { service.window = v }
            if let v = try entry.duration(.deadline) { service.deadlineMilliseconds = v.nanoseconds / 1_000_000 }
            if let v = try entry.int(.connections, in: 1...64) { service.connections = v }
            if let v = try entry.int(.batchesInFlight, in: 1...1024) { service.batchesInFlight = v }
            if let v = try entry.string(.pingTimeout) {
                guard let amount = Section.parseDuration(v), amount.nanoseconds <= 60_000_000_000 else {
                    throw ConfigurationError(key: "\(entry.path).ping_timeout", "must be a duration from 0s to 60s")
                }
                service.pingTimeoutMilliseconds = amount.nanoseconds / 1_000_000
            }
            if let v = try entry.duration(.rebalance) { service.rebalanceSeconds = Int(v.nanoseconds / 1_000_000_000) }
            if let retry = try entry.section(.retry, ServiceRetryKey.self) {
                if let v = try retry.int(.attempts, in: 1...20) { service.retry.maxAttempts = v }
                if let v = try retry.duration(.initialBackoff) {
                    service.retry.initialBackoff = .nanoseconds(v.nanoseconds)
                }
                if let v = try retry.duration(.maxBackoff) { service.retry.maxBackoff = .nanoseconds(v.nanoseconds) }
                guard service.retry.maxBackoff >= service.retry.initialBackoff else {
                    throw ConfigurationError(key: "\(retry.path).max_backoff", "must not be below initial_backoff")
                }
                if let v = try retry.seconds(.retryAfter) { service.retryAfterSeconds = v }
            }
            services.append(service)
        }
        guard services.count <= BackendRouter.maxServices else {
            throw ConfigurationError(key: "services", "at most \(BackendRouter.maxServices) services")
        }
        return services
    }

    static func resolve(_ path: String, _ base: String) -> String {
        path.hasPrefix("/") ? path : base + "/" + path
    }

    static func directory(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        let directory = String(path[..<slash])
        return directory.isEmpty ? "/" : directory
    }
}

/// The keys of one configuration section: the cases are the only names the section reads, and
/// any other key in the file is refused as unknown.
protocol SectionKeys: RawRepresentable<String>, CaseIterable, Sendable {}

extension SectionKeys {
    static var names: [String] { Self.allCases.map(\.rawValue) }
}

/// A section read through its keys. Making one checks that the file holds no other key.
struct Keyed<Key: SectionKeys> {
    let section: Section

    init(_ section: Section) throws {
        try section.allow(Set(Key.names))
        self.section = section
    }

    var path: String { self.section.path }

    func string(_ key: Key) throws -> String? { try self.section.string(key.rawValue) }
    func stringList(_ key: Key) throws -> [String] { try self.section.stringList(key.rawValue) }
    func int(_ key: Key, in range: ClosedRange<Int>) throws -> Int? { try self.section.int(key.rawValue, in: range) }
    func duration(_ key: Key) throws -> TimeAmount? { try self.section.duration(key.rawValue) }
    func seconds(_ key: Key) throws -> UInt16? { try self.section.seconds(key.rawValue) }

    func section<Child: SectionKeys>(_ key: Key, _: Child.Type) throws -> Keyed<Child>? {
        try self.section.section(key.rawValue).map { try Keyed<Child>($0) }
    }

    func list<Child: SectionKeys>(_ key: Key, _: Child.Type) throws -> [Keyed<Child>] {
        try self.section.list(key.rawValue).map { try Keyed<Child>($0) }
    }
}

/// A YAML mapping with its key path, for precise errors.
struct Section {
    let path: String
    private let pairs: [(String, Node)]

    /// Parses a YAML document whose top level must be a mapping.
    static func parse(yaml: String, errorKey: String, what: String) throws -> Section {
        let node: Node?
        do {
            node = try Yams.compose(yaml: yaml)
        } catch {
            throw ConfigurationError(key: errorKey, "\(what) is not valid YAML: \(error)")
        }
        guard let node else { throw ConfigurationError(key: errorKey, "\(what) is empty") }
        return try Section(node: node, path: "")
    }

    init(node: Node, path: String) throws {
        guard case .mapping(let mapping) = node else {
            throw ConfigurationError(key: path, "must be a mapping")
        }
        self.path = path
        var pairs: [(String, Node)] = []
        for (key, value) in mapping {
            guard let name = key.scalar?.string else {
                throw ConfigurationError(key: path, "has a non-string key")
            }
            if pairs.contains(where: { $0.0 == name }) {
                throw ConfigurationError(key: path.isEmpty ? name : "\(path).\(name)", "is given twice")
            }
            pairs.append((name, value))
        }
        self.pairs = pairs
    }

    private func key(_ name: String, _ path: String? = nil) -> String {
        let base = path ?? self.path
        return base.isEmpty ? name : "\(base).\(name)"
    }

    private func value(_ name: String) -> Node? {
        guard let node = self.pairs.first(where: { $0.0 == name })?.1 else { return nil }
        if case .scalar(let scalar) = node, scalar.string == "~" || (scalar.string == "null" && scalar.style == .plain)
        {
            return nil
        }
        return node
    }

    var pairNames: [String] { self.pairs.map(\.0) }

    func allow(_ names: Set<String>) throws {
        for (name, _) in self.pairs where !names.contains(name) {
            throw ConfigurationError(key: self.key(name), "is not a known key")
        }
    }

    func section(_ name: String) throws -> Section? {
        guard let node = self.value(name) else { return nil }
        return try Section(node: node, path: self.key(name))
    }

    func list(_ name: String) throws -> [Section] {
        guard let node = self.value(name) else { return [] }
        guard case .sequence(let sequence) = node else {
            throw ConfigurationError(key: self.key(name), "must be a list")
        }
        return try sequence.enumerated().map { index, item in
            try Section(node: item, path: "\(self.key(name))[\(index)]")
        }
    }

    func stringList(_ name: String) throws -> [String] {
        guard let node = self.value(name) else { return [] }
        guard case .sequence(let sequence) = node else {
            throw ConfigurationError(key: self.key(name), "must be a list")
        }
        return try sequence.enumerated().map { index, item in
            guard case .scalar(let scalar) = item else {
                throw ConfigurationError(key: "\(self.key(name))[\(index)]", "must be a string")
            }
            return scalar.string
        }
    }

    func string(_ name: String) throws -> String? {
        guard let node = self.value(name) else { return nil }
        guard case .scalar(let scalar) = node else {
            throw ConfigurationError(key: self.key(name), "must be a string")
        }
        return scalar.string
    }

    /// A plain YAML integer. A quoted one (`"5000"`) is refused: the file's author wrote a
    /// string, and a tool that templates the file may have meant something else.
    func int(_ name: String, in range: ClosedRange<Int>) throws -> Int? {
        guard let node = self.value(name) else { return nil }
        guard case .scalar(let scalar) = node else {
            throw ConfigurationError(key: self.key(name), "must be an integer")
        }
        let text = scalar.string
        guard scalar.style == .plain else {
            throw ConfigurationError(
                key: self.key(name),
                "must be an integer, not a quoted string: write \(text) without quotes"
            )
        }
        guard let value = Int(text.replacingOccurrences(of: "_", with: "")) else {
            throw ConfigurationError(key: self.key(name), "must be an integer")
        }
        guard range.contains(value) else {
            throw ConfigurationError(key: self.key(name), "must be between \(range.lowerBound) and \(range.upperBound)")
        }
        return value
    }

    /// `250ms`, `10s`, `5m`, `1h`, or a bare number of seconds.
    func duration(_ name: String) throws -> TimeAmount? {
        guard let text = try self.string(name) else { return nil }
        guard let amount = Self.parseDuration(text), amount.nanoseconds > 0 else {
            throw ConfigurationError(key: self.key(name), "must be a positive duration such as 500ms, 10s, 5m")
        }
        return amount
    }

    func seconds(_ name: String) throws -> UInt16? {
        guard let amount = try self.duration(name) else { return nil }
        let seconds = amount.nanoseconds / 1_000_000_000
        guard seconds >= 1, seconds <= 65_535, amount.nanoseconds % 1_000_000_000 == 0 else {
            throw ConfigurationError(key: self.key(name), "must be a whole number of seconds, 1s…65535s")
        }
        return UInt16(seconds)
    }

    static func parseDuration(_ text: String) -> TimeAmount? {
        let units: [(String, Int64)] = [
            ("ms", 1_000_000), ("s", 1_000_000_000), ("m", 60_000_000_000), ("h", 3_600_000_000_000),
        ]
        // Overflowing values are refused, not trapped on (found by fuzzing the loader).
        func scaled(_ value: Int64, _ scale: Int64) -> TimeAmount? {
            let (nanoseconds, overflow) = value.multipliedReportingOverflow(by: scale)
            return overflow ? nil : .nanoseconds(nanoseconds)
        }
        for (suffix, scale) in units where text.hasSuffix(suffix) {
            guard let value = Int64(text.dropLast(suffix.count)), value >= 0 else { return nil }
            return scaled(value, scale)
        }
        guard let seconds = Int64(text), seconds >= 0 else { return nil }
        return scaled(seconds, 1_000_000_000)
    }
}
