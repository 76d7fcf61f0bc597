internal import Foundation
internal import NIOCore
internal import NIOSSL
internal import TerminusFleet
internal import TerminusRedis

extension ConfigurationLoader {
    enum FleetKey: String, SectionKeys {
        case podID = "pod_id"
        case listen
        case internalAddress = "internal_address"
        case tokenFile = "token_file"
        case lease
        case flushInterval = "flush_interval"
        case redis
        case store
        case tls
    }

    enum FleetTLSKey: String, SectionKeys {
        case certificateChain = "certificate_chain"
        case privateKey = "private_key"
        case ca
    }

    enum FleetStoreKey: String, SectionKeys {
        case maxMessages = "max_messages"
        case maxBytes = "max_bytes"
        case maxTTL = "max_ttl"
        case pushTimeout = "push_timeout"
    }

    enum FleetRedisKey: String, SectionKeys {
        case address
        case username
        case passwordFile = "password_file"
        case database
        case keyPrefix = "key_prefix"
        case commandTimeout = "command_timeout"
        case protocolVersion = "protocol"
        case tls
    }

    enum FleetRedisTLSKey: String, SectionKeys {
        case ca
        case serverName = "server_name"
    }

    /// `fleet`: the session registry in Redis. Without `fleet.redis.address` the pod stays on
    /// its own (no fleet).
    static func decodeFleet(_ fleet: Keyed<FleetKey>, into config: inout GatewayConfiguration, base: String) throws {
        guard let redis = try fleet.section(.redis, FleetRedisKey.self), let address = try redis.string(.address) else {
            throw ConfigurationError(key: "fleet.redis.address", "is required in fleet (HOST:PORT of Redis)")
        }
        guard let hostPort = GatewayConfiguration.HostPort(parsing: address), hostPort.port > 0 else {
            throw ConfigurationError(key: "fleet.redis.address", "must be HOST:PORT")
        }
        var client = RedisClient.Configuration(host: hostPort.host, port: hostPort.port)
        client.username = try redis.string(.username)
        if let file = try redis.string(.passwordFile) {
            let path = Self.resolve(file, base)
            guard let data = FileManager.default.contents(atPath: path) else {
                throw ConfigurationError(key: "fleet.redis.password_file", Gateway.unreadable(path))
            }
            let password = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
            guard !password.isEmpty else {
                throw ConfigurationError(key: "fleet.redis.password_file", "\(path) is empty")
            }
            client.password = password
            config.fleetPasswordFile = path
        }
        if let v = try redis.int(.database, in: 0...15) { client.database = v }
        if let v = try redis.int(.protocolVersion, in: 2...3) { client.protocolVersion = v }
        if let v = try redis.duration(.commandTimeout) { client.commandTimeout = v }
        if let tls = try redis.section(.tls, FleetRedisTLSKey.self) {
            var configuration = TLSConfiguration.makeClientConfiguration()
            if let ca = try tls.string(.ca) { configuration.trustRoots = .file(Self.resolve(ca, base)) }
            client.tls = configuration
            client.serverName = try tls.string(.serverName)
        }
        let podID = try fleet.string(.podID) ?? config.instanceID
        guard !podID.isEmpty, !podID.contains("|"), podID.utf8.count <= 253 else {
            throw ConfigurationError(key: "fleet.pod_id", "must be 1…253 bytes without '|'")
        }
        client.clientName = "terminus-\(podID)"
        // Pod-to-pod calls: the internal listener, where others reach it, and their token.
        var listen = GatewayConfiguration.defaultFleetListen
        if let text = try fleet.string(.listen) {
            guard let parsed = GatewayConfiguration.HostPort(parsing: text) else {
                throw ConfigurationError(key: "fleet.listen", "must be HOST:PORT")
            }
            listen = parsed
        }
        let internalAddress = try fleet.string(.internalAddress)
        if let internalAddress {
            guard let parsed = GatewayConfiguration.HostPort(parsing: internalAddress), parsed.port > 0,
                !["0.0.0.0", "::"].contains(parsed.host)
            else {
                throw ConfigurationError(
                    key: "fleet.internal_address",
                    "must be the HOST:PORT other pods dial (the pod's IP and fleet.listen's port)"
                )
            }
        }
        var registry = SessionRegistry.Configuration(podID: podID, podAddress: internalAddress ?? "")
        if let prefix = try redis.string(.keyPrefix) { registry.keyPrefix = prefix }
        if let v = try fleet.duration(.lease) {
            guard v >= .seconds(3) else { throw ConfigurationError(key: "fleet.lease", "must be at least 3s") }
            registry.lease = .nanoseconds(v.nanoseconds)
        }
        if let v = try fleet.string(.flushInterval) {
            guard let amount = Section.parseDuration(v), amount.nanoseconds > 0, amount.nanoseconds <= 1_000_000_000
            else {
                throw ConfigurationError(key: "fleet.flush_interval", "must be a duration from 1ms to 1s")
            }
            registry.flushInterval = .nanoseconds(amount.nanoseconds)
        }
        guard let tokenFile = try fleet.string(.tokenFile) else {
            throw ConfigurationError(
                key: "fleet.token_file",
                "is required in fleet (a file of bearer tokens, at least 16 characters each, that pods present to each other; the first is sent)"
            )
        }
        let tokens = try Self.tokens(file: Self.resolve(tokenFile, base), key: "fleet.token_file")
        guard !tokens.isEmpty else {
            throw ConfigurationError(key: "fleet.token_file", "\(Self.resolve(tokenFile, base)) holds no token")
        }
        var fleetConfiguration = GatewayConfiguration.Fleet(
            redis: client,
            registry: registry,
            listen: listen,
            tokens: tokens
        )
        if let store = try fleet.section(.store, FleetStoreKey.self) {
            if let v = try store.int(.maxMessages, in: 1...100_000) { fleetConfiguration.store.maxMessages = v }
            if let v = try store.int(.maxBytes, in: 1_024...67_108_864) { fleetConfiguration.store.maxBytes = v }
            if let v = try store.duration(.maxTTL) {
                guard v >= .seconds(1), v <= .seconds(30 * 86_400) else {
                    throw ConfigurationError(key: "fleet.store.max_ttl", "must be from 1s to 720h")
                }
                fleetConfiguration.store.maxTTL = .nanoseconds(v.nanoseconds)
            }
            if let v = try store.duration(.pushTimeout) {
                guard v >= .milliseconds(100), v <= .seconds(300) else {
                    throw ConfigurationError(key: "fleet.store.push_timeout", "must be from 100ms to 5m")
                }
                fleetConfiguration.store.pushTimeout = .nanoseconds(v.nanoseconds)
            }
        }
        if let tls = try fleet.section(.tls, FleetTLSKey.self) {
            guard let chain = try tls.string(.certificateChain), let key = try tls.string(.privateKey),
                let ca = try tls.string(.ca)
            else {
                throw ConfigurationError(
                    key: "fleet.tls",
                    "needs certificate_chain, private_key and ca (mutual TLS: every pod presents a certificate from ca)"
                )
            }
            fleetConfiguration.tls = .init(
                certificateChain: Self.resolve(chain, base),
                privateKey: Self.resolve(key, base),
                ca: Self.resolve(ca, base)
            )
        }
        config.fleet = fleetConfiguration
    }
}
