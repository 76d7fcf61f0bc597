import NIOCore
import NIOPosix
import TerminusProtocol
import TerminusTestSupport
import Testing

/// `Channel.isConnectedToItself`, which the Redis client and the backend's Deliver streams
/// check after each connect: a connection to a local port nothing listens on that got the same
/// port as its source is connected to itself (TCP simultaneous open).
@Suite("Connections that reach themselves")
struct SelfConnectionTests {
    @Test("a socket connected to its own address is recognised; a connection to a listener is not")
    func recognised() async throws {
        let group = MultiThreadedEventLoopGroup.singleton
        // What the kernel does by chance, forced: the connection's source is its destination.
        let port = LoopbackSocket.freePort()
        let address = try SocketAddress(ipAddress: "127.0.0.1", port: port)
        let looped = try await ClientBootstrap(group: group).bind(to: address).connect(to: address).get()
        #expect(looped.localAddress == looped.remoteAddress)
        #expect(looped.isConnectedToItself)
        try await looped.close()

        let server = try await ServerBootstrap(group: group)
            .bind(to: try SocketAddress(ipAddress: "127.0.0.1", port: 0))
            .get()
        let ordinary = try await ClientBootstrap(group: group).connect(to: server.localAddress!).get()
        #expect(!ordinary.isConnectedToItself)
        try await ordinary.close()
        try await server.close()
    }
}
