internal import Foundation
internal import Logging
public import NIOCore
internal import TerminusBackend
internal import TerminusCompression
internal import TerminusEdge
internal import TerminusListeners
internal import TerminusProtocol
internal import TerminusRouting
internal import Yams

/// Reads the YAML configuration file. Unknown keys, wrong types and out-of-range values are
/// errors that name the key; nothing is silently ignored or defaulted from development mode.
public enum ConfigurationLoader {
    /// Parses a duration as the configuration file writes it: `250ms`, `30s`, `5m`, `1h`, or a
    /// bare number of seconds. Nil for anything else, negative values and overflow.
    public static func parseDuration(_ text: String) -> TimeAmount? {
        Section.parseDuration(text)
    }

    public static func load(file path: String) throws -> GatewayConfiguration {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ConfigurationError(key: "", "cannot read configuration file \(path)")
        }
        return try self.load(yaml: String(decoding: data, as: UTF8.self), baseDirectory: Self.directory(of: path))
    }

    /// - Parameter baseDirectory: relative file paths in the configuration resolve against it.
    public static func load(yaml: String, baseDirectory: String = ".") throws -> GatewayConfiguration {
        let root = try Section.parse(yaml: yaml, errorKey: "", what: "the configuration file")
        return try Self.build(root, base: baseDirectory)
    }

    private static func build(_ root: Section, base: String) throws -> GatewayConfiguration {
        var config = GatewayConfiguration()
        try root.allow([
            "instance_id", "log_level", "event_loop_threads", "device", "auth", "limits", "compression",
            "timeouts", "keepalive", "drain", "sink", "admin", "services", "api", "events",
        ])
        if let id = try root.string("instance_id") {
            guard !id.isEmpty, id.utf8.count <= 255 else {
                throw ConfigurationError(key: "instance_id", "must be 1…255 bytes")
            }
            config.instanceID = id
        } else {
            config.instanceID = ProcessInfo.processInfo.hostName
        }
        config.edge.instanceID = config.instanceID
        if let level = try root.string("log_level") {
            guard let parsed = Logger.Level(rawValue: level) else {
                throw ConfigurationError(
                    key: "log_level",
                    "must be one of trace, debug, info, notice, warning, error, critical"
                )
            }
            config.logLevel = parsed
        }
        if let threads = try root.int("event_loop_threads", in: 0...1024) { config.eventLoopThreads = threads }

        // device
        guard let device = try root.section("device") else {
            throw ConfigurationError(key: "device", "is required (listen address and transport)")
        }
        try device.allow(["listen", "transport", "tls", "proxy_protocol", "proxy_header_max_size"])
        if let listen = try device.string("listen") {
            guard let parsed = GatewayConfiguration.HostPort(parsing: listen) else {
                throw ConfigurationError(key: "device.listen", "must be HOST:PORT")
            }
            config.deviceListen = parsed
        }
        guard let transport = try device.string("transport") else {
            throw ConfigurationError(key: "device.transport", "is required: tls or plaintext")
        }
        guard let parsedTransport = GatewayConfiguration.Transport(rawValue: transport) else {
            throw ConfigurationError(key: "device.transport", "must be tls or plaintext")
        }
        config.transport = parsedTransport
        if let proxy = try device.string("proxy_protocol") {
            guard let mode = ProxyProtocolMode(rawValue: proxy) else {
                throw ConfigurationError(key: "device.proxy_protocol", "must be off, v1, v2 or any")
            }
            config.proxyProtocol = mode
        }
        if let size = try device.int("proxy_header_max_size", in: 232...65_551) { config.proxyHeaderMaxSize = size }
        if let tls = try device.section("tls") {
            guard parsedTransport == .tls else {
                throw ConfigurationError(key: "device.tls", "is only valid with transport: tls")
            }
            try tls.allow(["certificate_chain", "private_key", "client_ca", "client_auth", "min_version"])
            guard let chain = try tls.string("certificate_chain") else {
                throw ConfigurationError(key: "device.tls.certificate_chain", "is required")
            }
            guard let key = try tls.string("private_key") else {
                throw ConfigurationError(key: "device.tls.private_key", "is required")
            }
            var files = GatewayConfiguration.TLSFiles(
                certificateChain: Self.resolve(chain, base),
                privateKey: Self.resolve(key, base)
            )
            files.clientCA = try tls.string("client_ca").map { Self.resolve($0, base) }
            if let auth = try tls.string("client_auth") {
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
            if let version = try tls.string("min_version") {
                guard version == "1.2" || version == "1.3" else {
                    throw ConfigurationError(key: "device.tls.min_version", "must be \"1.2\" or \"1.3\"")
                }
                files.minimumVersion = version
            }
            config.tls = files
        } else if parsedTransport == .tls {
            throw ConfigurationError(key: "device.tls", "is required with transport: tls")
        }

        // auth
        if let auth = try root.section("auth") {
            try auth.allow(["secrets_file", "max_token_lifetime", "throttle"])
            config.secretsFile = try auth.string("secrets_file").map { Self.resolve($0, base) }
            if try auth.string("max_token_lifetime") == "0" {
                config.maxTokenLifetimeSeconds = 0
            } else if let v = try auth.duration("max_token_lifetime") {
                config.maxTokenLifetimeSeconds = v.nanoseconds / 1_000_000_000
            }
            if let throttle = try auth.section("throttle") {
                try throttle.allow(["failures", "window", "max_addresses"])
                if let v = try throttle.int("failures", in: 0...1_000_000) { config.edge.authThrottle.failures = v }
                if let v = try throttle.duration("window") { config.edge.authThrottle.window = v }
                if let v = try throttle.int("max_addresses", in: 1...10_000_000) {
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

        // limits
        if let limits = try root.section("limits") {
            try limits.allow([
                "max_connections", "max_frame_size", "max_inflight", "max_topic_length", "max_device_id_length",
                "max_topic_aliases", "batch_size", "buffer_arena_slots", "max_pending", "outbound_buffer",
                "max_push_frame", "accept_backoff", "rate", "evict_unauthenticated_after", "reserved_descriptors",
            ])
            if let v = try limits.int("max_connections", in: 1...10_000_000) {
                config.edge.maxConnections = v
                config.maxConnectionsConfigured = true
            }
            if let v = try limits.int("max_frame_size", in: 64...16_777_216) { config.edge.maxFrameSize = v }
            if let v = try limits.int("max_inflight", in: 1...65_535) { config.edge.maxInflight = v }
            if let v = try limits.int("max_topic_length", in: 1...65_535) { config.edge.maxTopicLength = v }
            if let v = try limits.int("max_device_id_length", in: 1...255) { config.edge.maxDeviceIDLength = v }
            if let v = try limits.int("max_topic_aliases", in: 0...65_535) { config.edge.maxTopicAliases = v }
            if let v = try limits.int("batch_size", in: 1...65_536) { config.edge.maxBatchSize = v }
            if let v = try limits.int("buffer_arena_slots", in: 0...BufferArena.maximumSlots) {
                config.edge.bufferArenaSlots = v
            }
            if let v = try limits.int("max_pending", in: 1...1_000_000) { config.edge.maxPending = v }
            if let v = try limits.int("outbound_buffer", in: 1024...(64 * 1024 * 1024)) {
                config.edge.outboundBufferBytes = v
            }
            if let v = try limits.int("max_push_frame", in: 512...16_777_216) { config.edge.maxPushFrameSize = v }
            if let v = try limits.duration("accept_backoff") { config.edge.acceptBackoff = v }
            if let v = try limits.int("reserved_descriptors", in: 0...1_000_000) { config.reservedDescriptors = v }
            if let v = try limits.duration("evict_unauthenticated_after") { config.edge.unauthenticatedEvictionAge = v }
            if let rate = try limits.section("rate") {
                try rate.allow([
                    "messages_per_second", "message_burst", "bytes_per_second", "byte_burst", "close_after",
                ])
                var limits = config.edge.rateLimits
                if let v = try rate.int("messages_per_second", in: 0...10_000_000) {
                    limits.messagesPerSecond = Double(v)
                }
                if let v = try rate.int("message_burst", in: 1...10_000_000) { limits.messageBurst = Double(v) }
                if let v = try rate.int("bytes_per_second", in: 0...(1 << 40)) { limits.bytesPerSecond = Double(v) }
                if let v = try rate.int("byte_burst", in: 1...(1 << 40)) { limits.byteBurst = Double(v) }
                if let v = try rate.int("close_after", in: 0...1_000_000) { limits.refusalsBeforeClose = v }
                config.edge.rateLimits = limits
            }
        }

        // compression
        if let compression = try root.section("compression") {
            try compression.allow(["max_inflated_size", "max_inflate_ratio", "ratio_floor", "dictionaries"])
            if let v = try compression.int("max_inflated_size", in: 64...(64 * 1024 * 1024)) {
                config.edge.inflateLimits.maxInflatedSize = v
            }
            if let v = try compression.int("max_inflate_ratio", in: 1...100_000) {
                config.edge.inflateLimits.maxRatio = v
            }
            if let v = try compression.int("ratio_floor", in: 0...(64 * 1024 * 1024)) {
                config.edge.inflateLimits.ratioFloor = v
            }
            for (index, entry) in try compression.list("dictionaries").enumerated() {
                try entry.allow(["id", "file"])
                guard let id = try entry.int("id", in: 1...65_535) else {
                    throw ConfigurationError(key: "compression.dictionaries[\(index)].id", "is required")
                }
                guard let file = try entry.string("file") else {
                    throw ConfigurationError(key: "compression.dictionaries[\(index)].file", "is required")
                }
                if config.dictionaries.contains(where: { $0.id == UInt16(id) }) {
                    throw ConfigurationError(key: "compression.dictionaries[\(index)].id", "\(id) is listed twice")
                }
                config.dictionaries.append(.init(id: UInt16(id), file: Self.resolve(file, base)))
            }
        }

        // timeouts and keepalive
        if let timeouts = try root.section("timeouts") {
            try timeouts.allow(["handshake", "hello", "close_grace", "frame", "write_stall"])
            if let v = try timeouts.duration("frame") { config.edge.frameTimeout = v }
            if let v = try timeouts.duration("write_stall") { config.edge.writeStallTimeout = v }
            if let v = try timeouts.duration("handshake") { config.edge.handshakeTimeout = v }
            if let v = try timeouts.duration("hello") { config.edge.helloTimeout = v }
            if let v = try timeouts.duration("close_grace") { config.edge.closeGrace = v }
        }
        if let keepalive = try root.section("keepalive") {
            try keepalive.allow(["default", "min", "max"])
            if let v = try keepalive.seconds("default") { config.edge.keepaliveDefault = v }
            if let v = try keepalive.seconds("min") { config.edge.keepaliveMin = v }
            if let v = try keepalive.seconds("max") { config.edge.keepaliveMax = v }
            let edge = config.edge
            guard edge.keepaliveMin <= edge.keepaliveDefault, edge.keepaliveDefault <= edge.keepaliveMax else {
                throw ConfigurationError(key: "keepalive", "must satisfy min <= default <= max")
            }
        }
        if let drain = try root.section("drain") {
            try drain.allow(["grace", "reconnect_window"])
            if let v = try drain.duration("grace") { config.drainGrace = v }
            if let v = try drain.duration("reconnect_window") { config.drainReconnectWindow = v }
        }
        if let sink = try root.section("sink") {
            try sink.allow(["type"])
            if let type = try sink.string("type"), type != "log" {
                throw ConfigurationError(
                    key: "sink.type",
                    "must be log (backend routing is configured under services)"
                )
            }
        }
        config.services = try Self.services(root.list("services"), base: base)
        if let events = try root.section("events") {
            try events.allow(["enabled"])
            if let enabled = try events.string("enabled") {
                guard let value = Bool(enabled) else {
                    throw ConfigurationError(key: "events.enabled", "must be true or false")
                }
                config.edge.publishEvents = value
            }
        }
        if let api = try root.section("api") {
            try api.allow([
                "listen", "tokens_file", "tls", "send_timeout", "compress_push_above", "max_connections",
                "idle_timeout",
            ])
            if let v = try api.int("max_connections", in: 1...1_000_000) { config.apiLimits.maxConnections = v }
            if let v = try api.duration("idle_timeout") { config.apiLimits.idleTimeout = v }
            if let tls = try api.section("tls") {
                try tls.allow(["certificate_chain", "private_key", "client_ca"])
                guard let chain = try tls.string("certificate_chain") else {
                    throw ConfigurationError(key: "api.tls.certificate_chain", "is required")
                }
                guard let key = try tls.string("private_key") else {
                    throw ConfigurationError(key: "api.tls.private_key", "is required")
                }
                config.apiTLS = .init(
                    certificateChain: Self.resolve(chain, base),
                    privateKey: Self.resolve(key, base),
                    clientCA: try tls.string("client_ca").map { Self.resolve($0, base) }
                )
            }
            if let listen = try api.string("listen") {
                guard let parsed = GatewayConfiguration.HostPort(parsing: listen) else {
                    throw ConfigurationError(key: "api.listen", "must be HOST:PORT")
                }
                config.apiListen = parsed
            }
            if let file = try api.string("tokens_file") {
                let path = Self.resolve(file, base)
                guard let data = FileManager.default.contents(atPath: path) else {
                    throw ConfigurationError(key: "api.tokens_file", "cannot read \(path)")
                }
                config.apiTokens = String(decoding: data, as: UTF8.self).split(whereSeparator: \.isNewline)
                    .map { $0.trimmingCharacters(in: .whitespaces) }
                    .filter { !$0.isEmpty && !$0.hasPrefix("#") }
                guard config.apiTokens.allSatisfy({ $0.utf8.count >= 16 }) else {
                    throw ConfigurationError(key: "api.tokens_file", "every token must be at least 16 characters")
                }
            }
            if let v = try api.duration("send_timeout") {
                config.apiSendTimeoutMilliseconds = UInt32(clamping: v.nanoseconds / 1_000_000)
            }
            if let v = try api.int("compress_push_above", in: 0...16_777_216) {
                config.edge.pushCompressionThreshold = v
            }
            if config.apiListen != nil && config.apiTokens.isEmpty && config.apiTLS?.clientCA == nil {
                throw ConfigurationError(
                    key: "api.tokens_file",
                    "is required with api.listen unless api.tls.client_ca is set (callers must authenticate)"
                )
            }
        }
        if let admin = try root.section("admin") {
            try admin.allow(["listen", "max_connections", "idle_timeout"])
            if let v = try admin.int("max_connections", in: 1...1_000_000) { config.adminLimits.maxConnections = v }
            if let v = try admin.duration("idle_timeout") { config.adminLimits.idleTimeout = v }
            if let listen = try admin.string("listen") {
                guard let parsed = GatewayConfiguration.HostPort(parsing: listen) else {
                    throw ConfigurationError(key: "admin.listen", "must be HOST:PORT")
                }
                config.adminListen = parsed
            }
        }
        return config
    }

    static func services(_ entries: [Section], base: String) throws -> [Subscription] {
        var services: [Subscription] = []
        for entry in entries {
            try entry.allow([
                "name", "target", "tls", "topics", "batch_size", "linger", "window", "deadline", "retry",
                "connections", "batches_in_flight", "rebalance",
            ])
            guard let name = try entry.string("name"), !name.isEmpty else {
                throw ConfigurationError(key: "\(entry.path).name", "is required")
            }
            if services.contains(where: { $0.name == name }) {
                throw ConfigurationError(key: "\(entry.path).name", "'\(name)' is used twice")
            }
            guard var target = try entry.string("target") else {
                throw ConfigurationError(key: "\(entry.path).target", "is required (HOST:PORT)")
            }
            if target.hasPrefix("dns:///") { target.removeFirst("dns:///".count) }
            guard let address = GatewayConfiguration.HostPort(parsing: target), address.port > 0 else {
                throw ConfigurationError(key: "\(entry.path).target", "must be HOST:PORT or dns:///HOST:PORT")
            }
            let topics = try entry.stringList("topics")
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
            if let tls = try entry.section("tls") {
                try tls.allow(["ca", "certificate", "private_key", "server_name"])
                let certificate = try tls.string("certificate").map { Self.resolve($0, base) }
                let key = try tls.string("private_key").map { Self.resolve($0, base) }
                if (certificate == nil) != (key == nil) {
                    throw ConfigurationError(key: "\(tls.path)", "certificate and private_key go together")
                }
                service.security = .tls(
                    caFile: try tls.string("ca").map { Self.resolve($0, base) },
                    certificateFile: certificate,
                    keyFile: key,
                    serverName: try tls.string("server_name")
                )
            }
            if let v = try entry.int("batch_size", in: 1...65_536) { service.batchSize = v }
            if let v = try entry.string("linger") {
                guard let amount = Section.parseDuration(v), amount.nanoseconds <= 10_000_000_000 else {
                    throw ConfigurationError(key: "\(entry.path).linger", "must be a duration from 0ms to 10s")
                }
                service.lingerMilliseconds = UInt64(amount.nanoseconds / 1_000_000)
            }
            if let v = try entry.int("window", in: 1...10_000_000) { service.window = v }
            if let v = try entry.duration("deadline") { service.deadlineMilliseconds = v.nanoseconds / 1_000_000 }
            if let v = try entry.int("connections", in: 1...64) { service.connections = v }
            if let v = try entry.int("batches_in_flight", in: 1...1024) { service.batchesInFlight = v }
            if let v = try entry.duration("rebalance") { service.rebalanceSeconds = Int(v.nanoseconds / 1_000_000_000) }
            if let retry = try entry.section("retry") {
                try retry.allow(["attempts", "initial_backoff", "max_backoff", "retry_after"])
                if let v = try retry.int("attempts", in: 1...20) { service.retry.maxAttempts = v }
                if let v = try retry.duration("initial_backoff") {
                    service.retry.initialBackoff = .nanoseconds(v.nanoseconds)
                }
                if let v = try retry.duration("max_backoff") { service.retry.maxBackoff = .nanoseconds(v.nanoseconds) }
                guard service.retry.maxBackoff >= service.retry.initialBackoff else {
                    throw ConfigurationError(key: "\(retry.path).max_backoff", "must not be below initial_backoff")
                }
                if let v = try retry.seconds("retry_after") { service.retryAfterSeconds = v }
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

    func int(_ name: String, in range: ClosedRange<Int>) throws -> Int? {
        guard let text = try self.string(name) else { return nil }
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
