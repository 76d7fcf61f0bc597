import Foundation
import NIOCore
import NIOPosix
import NIOSSL
import NIOTLS
import Synchronization
import TerminusAuth
import TerminusProtocol

/// Plain SwiftNIO + swift-nio-ssl connections that speak no more of the device protocol than a
/// HELLO: the same client for the gateway and for a peer (HAProxy terminating TLS in front of a
/// TCP sink), so handshake CPU and memory per connection compare like for like.
enum RawTLS {
    /// Completes the connect promise once the TLS handshake is done; counts inbound bytes.
    final class Watcher: ChannelInboundHandler, @unchecked Sendable {
        typealias InboundIn = ByteBuffer
        let handshake: EventLoopPromise<Void>
        var received = 0

        init(handshake: EventLoopPromise<Void>) {
            self.handshake = handshake
        }

        func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
            if case TLSUserEvent.handshakeCompleted = event { self.handshake.succeed() }
            context.fireUserInboundEventTriggered(event)
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            self.received += self.unwrapInboundIn(data).readableBytes
        }

        func errorCaught(context: ChannelHandlerContext, error: any Error) {
            self.handshake.fail(error)
            context.close(promise: nil)
        }

        func channelInactive(context: ChannelHandlerContext) {
            self.handshake.fail(LoadError("closed before the handshake completed"))
            context.fireChannelInactive()
        }
    }

    static func clientContext(caFile: String, tls13Only: Bool) throws -> NIOSSLContext {
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(caFile))
        if tls13Only { tls.minimumTLSVersion = .tlsv13 }
        return try NIOSSLContext(configuration: tls)
    }

    /// Completes the handshake promise as soon as the TCP connection is up (no TLS).
    final class PlainWatcher: ChannelInboundHandler, @unchecked Sendable {
        typealias InboundIn = ByteBuffer
        let handshake: EventLoopPromise<Void>
        init(handshake: EventLoopPromise<Void>) { self.handshake = handshake }
        func channelActive(context: ChannelHandlerContext) {
            self.handshake.succeed()
            context.fireChannelActive()
        }
        func channelRead(context: ChannelHandlerContext, data: NIOAny) {}
        func errorCaught(context: ChannelHandlerContext, error: any Error) {
            self.handshake.fail(error)
            context.close(promise: nil)
        }
    }

    /// Opens one TLS connection (plain TCP with a nil context) from `source` and returns once
    /// the handshake completed.
    static func connect(
        group: any EventLoopGroup,
        context: NIOSSLContext?,
        serverName: String,
        host: String,
        port: Int,
        source: String?
    ) async throws -> any Channel {
        let loop = group.next()
        let handshake = loop.makePromise(of: Void.self)
        var bootstrap = ClientBootstrap(group: loop)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .connectTimeout(.seconds(10))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let sync = channel.pipeline.syncOperations
                    if let context {
                        try sync.addHandler(NIOSSLClientHandler(context: context, serverHostname: serverName))
                        try sync.addHandler(Watcher(handshake: handshake))
                    } else {
                        try sync.addHandler(PlainWatcher(handshake: handshake))
                    }
                }
            }
        if let source {
            bootstrap = bootstrap.bind(to: try SocketAddress(ipAddress: source, port: 0))
        }
        let channel: any Channel
        do {
            channel = try await bootstrap.connect(host: host, port: port).get()
        } catch {
            handshake.fail(error)
            throw error
        }
        try await handshake.futureResult.get()
        return channel
    }

    /// A HELLO frame with a valid token for `deviceID`.
    static func hello(deviceID: String, secret: [UInt8]) -> ByteBuffer {
        let expires = Int64(Date().timeIntervalSince1970) + 3600
        let token = DeviceToken.make(deviceID: deviceID, secret: secret, expiresAt: expires)
        var buffer = ByteBuffer()
        buffer.writeFrame(
            .hello(
                Hello(
                    keepaliveSeconds: 540,
                    capabilities: [],
                    deviceID: deviceID,
                    authMethod: .token,
                    credential: ByteBuffer(string: token)
                )
            )
        )
        return buffer
    }

    /// A QoS 0 PUBLISH carrying `size` incompressible bytes, on a topic no service subscribes
    /// to (the gateway inflates nothing and drops it): a large record through each session.
    static func largePublish(size: Int) -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.writeFrame(.publish(Self.largeMessage(size: size)))
        return buffer
    }

    static func largeMessage(size: Int) -> Message {
        var random = SystemRandomNumberGenerator()
        var payload = ByteBuffer()
        for _ in 0..<size { payload.writeInteger(UInt8.random(in: 0...255, using: &random)) }
        return Message(messageID: 0, qos: .atMostOnce, topic: "bench/large-record", payload: payload)
    }
}

/// Source addresses 127.0.0.2 … so that many connections never run out of ephemeral ports.
struct SourceAddresses: Sendable {
    let count: Int
    var offset = 0

    func address(for index: Int) -> String? {
        guard self.count > 0 else { return nil }
        let n = 2 + self.offset + index % self.count
        return "127.0.\(n / 256).\(n % 256)"
    }
}

/// A TCP sink for the peer: reads and discards everything, holds connections open.
enum TCPSink {
    final class Discard: ChannelInboundHandler, Sendable {
        typealias InboundIn = ByteBuffer
        func channelRead(context: ChannelHandlerContext, data: NIOAny) {}
    }

    static func start(host: String, port: Int, group: any EventLoopGroup) async throws -> any Channel {
        try await ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 4096)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(Discard()) }
            }
            .bind(host: host, port: port)
            .get()
    }
}
