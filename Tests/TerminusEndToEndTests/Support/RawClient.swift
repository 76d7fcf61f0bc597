import Foundation
import NIOCore
import NIOPosix
import NIOSSL
import Synchronization
import TerminusAuth
import TerminusProtocol

enum TerminusAuthTestSupport {
    static func token(deviceID: String, secret: String, expiresIn: Int64) -> String {
        DeviceToken.make(
            deviceID: deviceID,
            secret: Array(secret.utf8),
            expiresAt: Int64(Date().timeIntervalSince1970) + expiresIn
        )
    }
}

/// A misbehaving device: sends whatever bytes a test wants and records what comes back.
final class RawClient: Sendable {
    final class Collector: ChannelInboundHandler, Sendable {
        typealias InboundIn = ByteBuffer
        let received = Mutex(ByteBuffer())
        let closed = Mutex(false)

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            var incoming = self.unwrapInboundIn(data)
            self.received.withLock { _ = $0.writeBuffer(&incoming) }
        }

        func channelInactive(context: ChannelHandlerContext) {
            self.closed.withLock { $0 = true }
            context.fireChannelInactive()
        }

        func errorCaught(context: ChannelHandlerContext, error: any Error) {
            context.close(promise: nil)
        }
    }

    let channel: any Channel
    let collector: Collector
    /// The client's TLS handler; removing it lets a test close without close_notify.
    static let tlsHandlerName = "raw-client-tls"

    private init(channel: any Channel, collector: Collector) {
        self.channel = channel
        self.collector = collector
    }

    static func connect(port: Int, tls: Bool, preamble: [UInt8]? = nil) async throws -> RawClient {
        let collector = Collector()
        let sslContext = tls ? try NIOSSLContext(configuration: try TestPKI.shared.clientTLS()) : nil
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelInitializer { channel in
                do {
                    if let sslContext {
                        try channel.pipeline.syncOperations.addHandler(
                            try NIOSSLClientHandler(context: sslContext, serverHostname: "localhost"),
                            name: RawClient.tlsHandlerName
                        )
                    }
                    try channel.pipeline.syncOperations.addHandler(collector)
                    return channel.eventLoop.makeSucceededVoidFuture()
                } catch {
                    return channel.eventLoop.makeFailedFuture(error)
                }
            }
            .connect(host: "127.0.0.1", port: port)
            .get()
        if let preamble {
            // Sent before TLS starts only for plaintext clients; TLS clients use TerminusClient's preamble.
            try await channel.writeAndFlush(ByteBuffer(bytes: preamble)).get()
        }
        return RawClient(channel: channel, collector: collector)
    }

    func send(_ bytes: [UInt8]) async throws {
        try await self.channel.writeAndFlush(ByteBuffer(bytes: bytes)).get()
    }

    func send(_ frame: Frame) async throws {
        var buffer = ByteBuffer()
        buffer.writeFrame(frame)
        try await self.channel.writeAndFlush(buffer).get()
    }

    var frames: [Frame] {
        var buffer = self.collector.received.withLock { $0 }
        var decoder = FrameDecoder(maxFrameLength: 1 << 24)
        var frames: [Frame] = []
        while let frame = try? decoder.decode(buffer: &buffer) { frames.append(frame) }
        return frames
    }

    var receivedText: String {
        self.collector.received.withLock { String(decoding: $0.readableBytesView, as: UTF8.self) }
    }

    var isClosed: Bool { self.collector.closed.withLock { $0 } }

    /// Waits (bounded) until `condition` holds.
    func waitUntil(_ seconds: Double, _ condition: () -> Bool) async -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if condition() { return true }
            try? await Task.sleep(for: .milliseconds(10))
        }
        return condition()
    }

    /// Sends a valid HELLO and waits for WELCOME; throws when anything else comes back.
    @discardableResult
    func handshake(_ deviceID: String, keepalive: UInt16 = 0) async throws -> Welcome {
        try await self.send(TestGateway.hello(deviceID, keepalive: keepalive))
        _ = await self.waitUntil(5) { !self.frames.isEmpty || self.isClosed }
        guard case .welcome(let welcome) = self.frames.first else {
            throw HandshakeFailed(deviceID: deviceID, received: self.frames.first, closed: self.isClosed)
        }
        return welcome
    }

    struct HandshakeFailed: Error, CustomStringConvertible {
        let deviceID: String
        let received: Frame?
        let closed: Bool
        var description: String {
            "HELLO for \(self.deviceID) got \(self.received.map { "\($0)" } ?? "no frame")\(self.closed ? ", closed" : "")"
        }
    }

    /// Waits for the connection to close and returns the GOAWAY it got, if any.
    func goAwayOnClose(within seconds: Double = 5) async -> GoAway? {
        let closed = await self.waitUntil(seconds) { self.isClosed }
        guard closed else { return nil }
        for frame in self.frames.reversed() {
            if case .goAway(let goAway) = frame { return goAway }
        }
        return nil
    }

    func close() async {
        try? await self.channel.close()
    }
}
