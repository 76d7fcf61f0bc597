import NIOCore
import NIOPosix
import TerminusServer
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite("Gateway lifecycle", .serialized)
struct LifecycleTests {
    @Test("a start that fails half way releases what it opened: the listeners bound before the failure are closed")
    func failedStartReleases() async throws {
        // Something else holds the port the API listener wants; it is bound last.
        let blocker = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .bind(host: "127.0.0.1", port: 0).get()
        let apiPort = try #require(blocker.localAddress?.port)
        let devicePort = LoopbackSocket.freePort()
        let adminPort = LoopbackSocket.freePort()
        await #expect(throws: (any Error).self) {
            _ = try await TestGateway.start(port: devicePort) {
                $0.adminListen = .init(host: "127.0.0.1", port: adminPort)
                $0.apiListen = .init(host: "127.0.0.1", port: apiPort)
                $0.apiTokens = ["lifecycle-token-0123456789"]
            }
        }
        // The device and admin listeners had been bound; now nothing answers on either port.
        for port in [devicePort, adminPort] {
            let fd = LoopbackSocket.connect(port: port)
            #expect(fd == nil, "port \(port) is still open after the failed start")
            if let fd { close(fd) }
        }
        try await blocker.close()
    }
}
