public import Logging
public import NIOCore
internal import TerminusAdmin
public import TerminusBackend
public import TerminusEdge
public import TerminusListeners

/// Everything `terminus run` needs, resolved from defaults, the YAML file and flags, in that
/// order of precedence (flags win). `docs/configuration.md` documents each YAML key.
public struct GatewayConfiguration: Sendable {
    public struct HostPort: Hashable, Sendable, CustomStringConvertible {
        public var host: String
        public var port: Int

        public init(host: String, port: Int) {
            self.host = host
            self.port = port
        }

        /// Parses `HOST:PORT`, `[IPv6]:PORT` or `:PORT` (all interfaces).
        public init?(parsing text: String) {
            guard let colon = text.lastIndex(of: ":") else { return nil }
            var host = String(text[..<colon])
            guard let port = Int(text[text.index(after: colon)...]), (0...65535).contains(port) else { return nil }
            if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
            if host.isEmpty { host = "0.0.0.0" }
            self.init(host: host, port: port)
        }

        public var description: String {
            self.host.contains(":") ? "[\(self.host)]:\(self.port)" : "\(self.host):\(self.port)"
        }
    }

    public enum Transport: String, Sendable {
        case tls
        case plaintext
    }

    public enum ClientAuth: String, Sendable {
        /// No client certificates are requested.
        case none
        /// A certificate, when presented, must verify and names the device; tokens still work.
        case optional
        /// Every device must present a certificate naming it.
        case required
    }

    public struct TLSFiles: Sendable {
        public var certificateChain: String
        public var privateKey: String
        public var clientCA: String?
        public var clientAuth: ClientAuth = .none
        /// "1.2" or "1.3".
        public var minimumVersion: String = "1.2"

        public init(certificateChain: String, privateKey: String) {
            self.certificateChain = certificateChain
            self.privateKey = privateKey
        }
    }

    public struct Dictionary: Hashable, Sendable {
        public var id: UInt16
        public var file: String

        public init(id: UInt16, file: String) {
            self.id = id
            self.file = file
        }
    }

    /// True only for the embedded development defaults (no file).
    public var developmentMode = false
    public var instanceID = "terminus"
    public var logLevel: Logger.Level = .info
    /// 0: one per core.
    public var eventLoopThreads = 0

    public var deviceListen = HostPort(host: "0.0.0.0", port: 7883)
    public var transport: Transport = .tls
    public var tls: TLSFiles?
    public var proxyProtocol: ProxyProtocolMode = .off
    public var proxyHeaderMaxSize = 1024

    public var secretsFile: String?
    public var dictionaries: [Dictionary] = []
    public var edge = EdgeSettings()
    /// False when `limits.max_connections` is absent: the run command then uses the
    /// open-file capacity it finds at start.
    public var maxConnectionsConfigured = false
    /// `limits.reserved_descriptors`: open files kept back from device connections.
    public var reservedDescriptors = FileDescriptorLimit.reserved
    /// `auth.max_token_lifetime` in seconds (0: any expiry is accepted).
    public var maxTokenLifetimeSeconds: Int64 = DeviceAuthenticator.defaultMaxTokenLifetimeSeconds

    public var drainGrace: TimeAmount = .seconds(30)
    public var drainReconnectWindow: TimeAmount = .seconds(60)

    public var adminListen: HostPort?
    /// `admin.max_connections`, `admin.idle_timeout`.
    public var adminLimits: ConnectionGuard.Limits = AdminServer.defaultLimits
    /// `api.max_connections`, `api.idle_timeout`.
    public var apiLimits: ConnectionGuard.Limits = APIServer.defaultLimits

    /// The backend API listener (`api.listen`, `--api-listen`); nil: not served.
    public var apiListen: HostPort?
    /// Bearer tokens admitted by the API listener (`api.tokens_file`, one per line).
    public var apiTokens: [String] = []
    /// TLS for the API listener (`api.tls`); with `clientCA`, callers need a client certificate
    /// from that CA (mTLS). nil: plaintext h2c (bearer tokens only).
    public var apiTLS: APITLSFiles?

    public struct APITLSFiles: Sendable {
        public var certificateChain: String
        public var privateKey: String
        public var clientCA: String?

        public init(certificateChain: String, privateKey: String, clientCA: String? = nil) {
            self.certificateChain = certificateChain
            self.privateKey = privateKey
            self.clientCA = clientCA
        }
    }
    /// Default wait for a device's ACK to a Send (`api.send_timeout`).
    public var apiSendTimeoutMilliseconds: UInt32 = 10_000

    /// Backend services and their topic filters (`services`). Empty: the logging sink.
    public var services: [Subscription] = []

    public init() {}
}
