package import Logging
package import NIOCore
internal import TerminusAdmin
package import TerminusBackend
package import TerminusEdge
package import TerminusFleet
package import TerminusListeners
package import TerminusRedis

/// Everything `terminus run` needs, resolved from defaults, the YAML file and flags, in that
/// order of precedence (flags win). `docs/configuration.md` documents each YAML key.
package struct GatewayConfiguration: Sendable {
    package struct HostPort: Hashable, Sendable, CustomStringConvertible {
        package var host: String
        package var port: Int

        package init(host: String, port: Int) {
            self.host = host
            self.port = port
        }

        /// Parses `HOST:PORT`, `[IPv6]:PORT` or `:PORT` (all interfaces).
        package init?(parsing text: String) {
            guard let colon = text.lastIndex(of: ":") else { return nil }
            var host = String(text[..<colon])
            guard let port = Int(text[text.index(after: colon)...]), (0...65535).contains(port) else { return nil }
            if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
            if host.isEmpty { host = "0.0.0.0" }
            self.init(host: host, port: port)
        }

        /// `admin.listen`, `--admin-listen`: `HOST:PORT`, or `off` (`.some(nil)`: no listener);
        /// nil when `text` is neither.
        package static func parsingOptional(_ text: String) -> HostPort?? {
            if text == "off" { return .some(nil) }
            return HostPort(parsing: text).map { .some($0) }
        }

        package var description: String {
            self.host.contains(":") ? "[\(self.host)]:\(self.port)" : "\(self.host):\(self.port)"
        }
    }

    package enum Transport: String, Sendable {
        case tls
        case plaintext
    }

    package enum ClientAuth: String, Sendable {
        /// No client certificates are requested.
        case none
        /// A certificate, when presented, must verify and names the device; tokens still work.
        case optional
        /// Every device must present a certificate naming it.
        case required
    }

    /// Which TLS implementation terminates device connections (`device.tls.engine`).
    package enum TLSEngine: String, Sendable {
        /// swift-nio-ssl (BoringSSL): the connection's TLS state lives as long as it does.
        case nioSSL = "nio-ssl"
        /// OpenSSL for the handshake, then a record layer keeping only the keys (issue 16).
        case lean
    }

    package struct TLSFiles: Sendable {
        package var certificateChain: String
        package var privateKey: String
        package var clientCA: String?
        package var clientAuth: ClientAuth = .none
        /// "1.2" or "1.3".
        package var minimumVersion: String = "1.2"
        /// `device.tls.engine`: lean by default, the engine the figures favour for a fleet of
        /// mostly idle devices (a quarter of nio-ssl's memory per device; docs/benchmarks.md).
        package var engine: TLSEngine = .lean
        /// `device.tls.session_tickets` (lean engine): TLS 1.3 tickets after each handshake; 0
        /// turns resumption off (TLS 1.2's tickets too).
        package var sessionTickets = 1
        package static let maxSessionTickets = 4
        /// `device.tls.ticket_key_file` (lean engine): 32 to 64 bytes the ticket keys are derived
        /// from, shared by the pods so that a ticket resumes on any of them; nil: a random
        /// secret of this process's own.
        package var ticketKeyFile: String?
        /// `device.tls.ticket_key_rotation` (lean engine): each period has its own ticket key.
        package var ticketKeyRotation: TimeAmount = .hours(12)

        package init(certificateChain: String, privateKey: String) {
            self.certificateChain = certificateChain
            self.privateKey = privateKey
        }
    }

    package struct Dictionary: Hashable, Sendable {
        package var id: UInt16
        package var file: String

        package init(id: UInt16, file: String) {
            self.id = id
            self.file = file
        }
    }

    /// True only for the embedded development defaults (no file).
    package var developmentMode = false
    package var instanceID = "terminus"
    package var logLevel: Logger.Level = .info
    /// `log.format`: `text` (default) or `json` lines (`TerminusLogHandler`).
    package var logFormat: TerminusLogHandler.Format = .text
    /// 0: one per core.
    package var eventLoopThreads = 0

    package var deviceListen = HostPort(host: "0.0.0.0", port: 7883)
    package var transport: Transport = .tls
    package var tls: TLSFiles?
    package var proxyProtocol: ProxyProtocolMode = .off
    package var proxyHeaderMaxSize = 1024
    /// `device.reuse_port`: `SO_REUSEPORT` on the device listener (several processes, one port).
    package var deviceReusePort = false

    package var secretsFile: String?
    package var dictionaries: [Dictionary] = []
    package var edge = EdgeSettings()
    /// False when `limits.max_connections` is absent: the run command then uses the
    /// open-file capacity it finds at start.
    package var maxConnectionsConfigured = false
    /// `limits.reserved_descriptors`: open files kept back from device connections.
    package var reservedDescriptors = FileDescriptorLimit.reserved
    /// `limits.heap_trim.*`: when freed heap memory goes back to the kernel.
    package var heapTrim = HeapTrimPolicy()
    /// `auth.max_token_lifetime` in seconds (0: any expiry is accepted).
    package var maxTokenLifetimeSeconds: Int64 = DeviceAuthenticator.defaultMaxTokenLifetimeSeconds

    /// `drain.grace`: from SIGTERM to the end of the graceful shutdown, all parts included.
    package var drainGrace: TimeAmount = .seconds(30)
    package var drainReconnectWindow: TimeAmount = .seconds(60)
    /// `drain.unready_delay`: after SIGTERM, devices are still accepted this long (readiness is
    /// already false) so the load balancer stops sending new ones first.
    package var drainUnreadyDelay: TimeAmount = .seconds(5)

    /// `admin.listen`: health, readiness, `/metrics` and the admin API. On loopback unless
    /// configured otherwise (a pod's probes and scrapes need the pod's address, e.g.
    /// `0.0.0.0:9090`); `off` (nil) turns the listener off.
    package var adminListen: HostPort? = Self.defaultAdminListen
    package static let defaultAdminListen = HostPort(host: "127.0.0.1", port: 7885)
    /// `admin.tokens_file`: bearer tokens of the admin API (`/admin/…`); none: the API is off.
    package var adminTokens: [String] = []
    /// `fleet`: the session registry in Redis; nil: this gateway is on its own.
    package var fleet: Fleet?
    /// Where the Redis password came from (watched; never shown).
    package var fleetPasswordFile: String?

    package struct Fleet: Sendable {
        package var redis: RedisClient.Configuration
        /// `registry.podAddress` is `fleet.internal_address`, empty when not set: the gateway
        /// then advertises its internal listener's address once bound (`listen`'s host, or the
        /// host name's address when it binds every address).
        package var registry: SessionRegistry.Configuration
        /// `fleet.listen`: the internal listener other pods forward calls to.
        package var listen: HostPort
        /// `fleet.token_file`: the internal listener accepts any of them; the first is sent.
        package var tokens: [String]
        /// `fleet.store`: the offline message store's caps.
        package var store = DeviceMessageStore.Configuration()
        /// `fleet.tls`: mutual TLS between pods (nil: h2c, the token alone).
        package var tls: PodForwarder.TLSFiles?

        package init(
            redis: RedisClient.Configuration,
            registry: SessionRegistry.Configuration,
            listen: HostPort = GatewayConfiguration.defaultFleetListen,
            tokens: [String]
        ) {
            self.redis = redis
            self.registry = registry
            self.listen = listen
            self.tokens = tokens
        }
    }
    package static let defaultFleetListen = HostPort(host: "0.0.0.0", port: 7886)
    /// Where `adminTokens` came from (watched for changes by `terminus run`).
    package var adminTokensFile: String?
    /// `admin.max_connections`, `admin.idle_timeout`.
    package var adminLimits: ConnectionGuard.Limits = AdminServer.defaultLimits
    /// `api.max_connections`, `api.idle_timeout`.
    package var apiLimits: ConnectionGuard.Limits = APIServer.defaultLimits
    /// `api.max_concurrent_calls`: calls open at once on one API connection.
    package var apiMaxConcurrentCalls = APIServer.defaultMaxConcurrentCalls
    /// `api.max_request_size`: the largest API request, in bytes.
    package var apiMaxRequestSize = APIServer.defaultMaxRequestSize

    /// The backend API listener (`api.listen`, `--api-listen`); nil: not served.
    package var apiListen: HostPort?
    /// Bearer tokens admitted by the API listener (`api.tokens_file`, one per line).
    package var apiTokens: [String] = []
    /// Where `apiTokens` came from (watched for changes by `terminus run`).
    package var apiTokensFile: String?
    /// `reload.watch_interval`: how often `terminus run` looks at the configuration file and the
    /// files it names (secrets, TLS, API tokens) and reloads when one changed; zero: never
    /// (SIGHUP still reloads).
    package var reloadWatchInterval: TimeAmount = .seconds(10)

    /// The files a reload reads besides the configuration file itself.
    package var watchedFiles: [String] {
        [
            self.secretsFile, self.tls?.certificateChain, self.tls?.privateKey, self.tls?.clientCA, self.apiTokensFile,
            self.adminTokensFile, self.apiTLS?.certificateChain, self.apiTLS?.privateKey, self.apiTLS?.clientCA,
        ]
        .compactMap { $0 }
    }
    /// TLS for the API listener (`api.tls`); with `clientCA`, callers need a client certificate
    /// from that CA (mTLS). nil: plaintext h2c (bearer tokens only).
    package var apiTLS: APITLSFiles?

    package struct APITLSFiles: Sendable {
        package var certificateChain: String
        package var privateKey: String
        package var clientCA: String?

        package init(certificateChain: String, privateKey: String, clientCA: String? = nil) {
            self.certificateChain = certificateChain
            self.privateKey = privateKey
            self.clientCA = clientCA
        }
    }
    /// Default wait for a device's ACK to a Send (`api.send_timeout`).
    package var apiSendTimeoutMilliseconds: UInt32 = 10_000

    /// Backend services and their topic filters (`services`). Empty: the logging sink.
    package var services: [Subscription] = []

    package init() {}
}
