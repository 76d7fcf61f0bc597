public import NIOCore
public import NIOSSL
public import TerminusCompression
internal import TerminusProtocol

/// How a device connects and proves who it is.
public struct TerminusClientConfiguration: Sendable {
    public enum Credential: Sendable {
        /// A ready-made token (`terminus token`).
        case token(String)
        /// The device secret: the client makes a fresh token valid for `ttl` seconds.
        case secret([UInt8], ttlSeconds: Int64)
        /// No token: the TLS client certificate (in `tls`) names the device.
        case certificate
    }

    public var host: String
    public var port: Int
    /// nil: plain TCP (TLS ended by a proxy in front of the gateway).
    public var tls: TLSConfiguration?
    /// The name checked against the server certificate and sent as SNI; defaults to `host`.
    public var serverHostname: String?
    public var deviceID: String
    public var credential: Credential
    /// 0 asks for the gateway's default.
    public var keepaliveSeconds: UInt16 = 0
    /// Announce that compressed PUSH payloads are welcome.
    public var acceptsCompressedPush = true
    public var connectTimeout: TimeAmount = .seconds(10)
    /// Local address to connect from (e.g. 127.0.0.2 to spread a fleet over source addresses).
    public var localAddress: String?
    /// Bytes sent before anything else: a PROXY protocol header, for tests and proxies.
    public var preamble: [UInt8]?
    /// Shared zlib contexts and dictionaries (one deflater/inflater per event loop).
    public var compression: ClientCompression

    public init(
        host: String,
        port: Int,
        tls: TLSConfiguration?,
        deviceID: String,
        credential: Credential,
        compression: ClientCompression = ClientCompression()
    ) {
        self.host = host
        self.port = port
        self.tls = tls
        self.deviceID = deviceID
        self.credential = credential
        self.compression = compression
    }
}

/// Per-event-loop zlib contexts for clients, so that a fleet of thousands of simulated devices
/// does not hold a zlib context each. Each context is used only on its own loop.
public final class ClientCompression: @unchecked Sendable {
    public let dictionaries: DictionarySet
    public let inflateLimits: InflateLimits
    private let lock = NIOLockedDeflaters()

    public init(dictionaries: DictionarySet = DictionarySet(), inflateLimits: InflateLimits = InflateLimits()) {
        self.dictionaries = dictionaries
        self.inflateLimits = inflateLimits
    }

    /// Call on `eventLoop`.
    func contexts(for eventLoop: any EventLoop) throws -> (Deflater, Inflater) {
        try self.lock.get(ObjectIdentifier(eventLoop)) {
            (
                try Deflater(dictionaries: self.dictionaries),
                try Inflater(limits: self.inflateLimits, dictionaries: self.dictionaries)
            )
        }
    }
}
