internal import GRPCCore
internal import GRPCNIOTransportHTTP2
public import Logging
internal import Synchronization
public import TerminusSessions

/// The listener backends call (`api.listen`): the `terminus.v1.Gateway` service, bearer-token
/// authenticated. A separate port from the device listener: devices cannot reach it.
public final class APIServer: Sendable {
    private let server: GRPCServer<HTTP2ServerTransport.Posix>
    private let task = Mutex<Task<Void, any Error>?>(nil)
    private let logger: Logger

    public init(
        host: String,
        port: Int,
        tokens: [String],
        directory: any SessionDirectory,
        gatewayInstance: String,
        defaultTTLMilliseconds: UInt32 = 10_000,
        maxPayloadSize: Int = 256 * 1024,
        logger: Logger
    ) {
        let service = GatewayAPIService(
            directory: directory,
            gatewayInstance: gatewayInstance,
            defaultTTLMilliseconds: defaultTTLMilliseconds,
            maxPayloadSize: maxPayloadSize
        )
        self.server = GRPCServer(
            transport: HTTP2ServerTransport.Posix(
                address: .ipv4(host: host, port: port),
                transportSecurity: .plaintext
            ),
            services: [service],
            interceptors: [BearerTokenInterceptor(tokens: tokens.map { Array($0.utf8) })]
        )
        self.logger = logger
    }

    /// Binds and serves in the background. Returns the bound port.
    public func start() async throws -> Int {
        let server = self.server
        let task = Task { try await server.serve() }
        self.task.withLock { $0 = task }
        guard let address = try await server.listeningAddress, let port = address.ipv4?.port ?? address.ipv6?.port
        else {
            throw RouterError("the API listener did not bind")
        }
        self.logger.info("API listener started", metadata: ["port": "\(port)"])
        return port
    }

    public func shutdown() async {
        self.server.beginGracefulShutdown()
        let task = self.task.withLock { $0 }
        _ = try? await task?.value
    }
}
