import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import GRPCProtobuf
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle
import Synchronization
import TerminusAPI
import TerminusBackend
import TerminusListeners
import TerminusProtocol
import TerminusSessions
import TerminusTestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The API listener on its own, with a directory of fake sessions: what the hand-written gRPC
/// server must do that grpc-swift-2's server did for it (draining, refusing what it cannot
/// serve).
@Suite("API listener (gRPC unary calls as HTTP/2 frames)", .serialized)
struct APIServerTests {
    static let token = "api-server-token-0123456789"

    /// A session whose PUSH is acknowledged after `delay`.
    final class SlowDevice: DeviceSessionControl {
        let loop: any EventLoop
        let delay: TimeAmount
        /// PUSHes waiting for their ACK now, and the most there ever were.
        let pending = Mutex((now: 0, most: 0))
        init(loop: any EventLoop, delay: TimeAmount) {
            self.loop = loop
            self.delay = delay
        }
        func goAway(_ code: TerminusCode, reconnectAfterMilliseconds: UInt32, message: String) {}
        func push(topic: String, payload: ByteBuffer, qos: QoS, timeout: TimeAmount) -> EventLoopFuture<PushOutcome> {
            self.pending.withLock {
                $0.now += 1
                $0.most = max($0.most, $0.now)
            }
            return self.loop.scheduleTask(in: self.delay) {
                self.pending.withLock { $0.now -= 1 }
                return PushOutcome.delivered
            }.futureResult
        }
    }

    /// Runs an API server (one device, `slow-1`, acknowledging after `delay`) in a `ServiceGroup`.
    static func withServer(
        delay: TimeAmount = .zero,
        limits: ConnectionGuard.Limits = APIServer.defaultLimits,
        maxRequestSize: Int = APIServer.defaultMaxRequestSize,
        _ body: @Sendable (SlowDevice, Int, ServiceGroup) async throws -> Void
    ) async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        let directory = LocalSessionDirectory()
        let loop = group.next()
        let device = SlowDevice(loop: loop, delay: delay)
        _ = directory.register(
            SessionHandle(
                deviceID: "slow-1",
                connectionID: 1,
                clientAddress: "127.0.0.1:1",
                connectedAt: 0,
                eventLoop: loop,
                control: device
            )
        )
        let server = APIServer(
            host: "127.0.0.1",
            port: 0,
            tokens: [Self.token],
            directory: directory,
            instanceID: "api-test",
            limits: limits,
            maxRequestSize: maxRequestSize,
            group: group,
            logger: Logger(label: "api-test")
        )
        let services = ServiceGroup(services: [server], logger: Logger(label: "api-test"))
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await services.run() }
            let port = try await server.listeningPort
            do {
                try await body(device, port, services)
            } catch {
                await services.triggerGracefulShutdown()
                throw error
            }
            await services.triggerGracefulShutdown()
            try await tasks.waitForAll()
        }
        try await group.shutdownGracefully()
    }

    static func withClient<R: Sendable>(
        port: Int,
        _ body:
            @Sendable (
                GRPCClient<HTTP2ClientTransport.Posix>, Terminus_V1_Gateway.Client<HTTP2ClientTransport.Posix>, Metadata
            ) async throws -> R
    ) async throws -> R {
        let transport = try HTTP2ClientTransport.Posix(
            target: .ipv4(address: "127.0.0.1", port: port),
            transportSecurity: .plaintext
        )
        var metadata: Metadata = [:]
        metadata.addString("Bearer \(Self.token)", forKey: "authorization")
        let headers = metadata
        return try await withGRPCClient(transport: transport) { client in
            try await body(client, Terminus_V1_Gateway.Client(wrapping: client), headers)
        }
    }

    static func send(payloadBytes: Int = 3) -> Terminus_V1_SendRequest {
        var request = Terminus_V1_SendRequest()
        request.deviceID = "slow-1"
        request.topic = "cmd/play"
        request.payload = Data(repeating: 0x61, count: payloadBytes)
        request.qos = 1
        request.ttlMs = 5000
        return request
    }

    @Test("graceful shutdown: a Send in flight is answered, its connection then closes, new connections are refused")
    func drainAnswersCallsInFlight() async throws {
        try await Self.withServer(delay: .milliseconds(400)) { device, port, services in
            let started = ContinuousClock.now
            let outcome = try await Self.withClient(port: port) { _, api, metadata in
                try await withThrowingTaskGroup(of: Terminus_V1_SendResponse.Outcome?.self) { calls in
                    calls.addTask { try await api.send(Self.send(), metadata: metadata).outcome }
                    calls.addTask {
                        // The Send is waiting for its device's ACK when the drain begins.
                        for _ in 0..<200 where device.pending.withLock({ $0.now }) == 0 {
                            try await Task.sleep(for: .milliseconds(5))
                        }
                        await services.triggerGracefulShutdown()
                        return nil
                    }
                    var outcome: Terminus_V1_SendResponse.Outcome?
                    for try await result in calls { if let result { outcome = result } }
                    return outcome
                }
            }
            #expect(outcome == .delivered, "the call in flight was answered")
            #expect(ContinuousClock.now - started >= .milliseconds(400))
            // Bounded: the listener closes at once; the connection once its call is answered.
            var refused = false
            for _ in 0..<50 {
                if let fd = LoopbackSocket.connect(port: port) {
                    close(fd)
                    try await Task.sleep(for: .milliseconds(20))
                } else {
                    refused = true
                    break
                }
            }
            #expect(refused, "the listener still accepts after the drain")
        }
    }

    @Test(
        "an unknown method is UNIMPLEMENTED; Presence above 10,000 ids is INVALID_ARGUMENT; a request above max_request_size is RESOURCE_EXHAUSTED"
    )
    func refusals() async throws {
        try await Self.withServer(maxRequestSize: 128 * 1024) { _, port, _ in
            try await Self.withClient(port: port) { client, api, metadata in
                do {
                    _ = try await client.unary(
                        request: ClientRequest(message: Terminus_V1_KickRequest(), metadata: metadata),
                        descriptor: MethodDescriptor(fullyQualifiedService: "terminus.v1.Gateway", method: "Reboot"),
                        serializer: ProtobufSerializer<Terminus_V1_KickRequest>(),
                        deserializer: ProtobufDeserializer<Terminus_V1_KickResponse>(),
                        options: .defaults
                    ) { try $0.message }
                    Issue.record("an unknown method was answered")
                } catch let error as RPCError {
                    #expect(error.code == .unimplemented)
                }
                var presence = Terminus_V1_PresenceRequest()
                presence.deviceIds = (0...10_000).map { "d\($0)" }
                do {
                    _ = try await api.presence(presence, metadata: metadata)
                    Issue.record("10,001 ids were answered")
                } catch let error as RPCError {
                    #expect(error.code == .invalidArgument)
                }
                do {
                    _ = try await api.send(Self.send(payloadBytes: 128 * 1024 + 1), metadata: metadata)
                    Issue.record("a request above max_request_size was answered")
                } catch let error as RPCError {
                    #expect(error.code == .resourceExhausted)
                }
                // The connection still serves, requests up to the bound too.
                let answer = try await api.send(Self.send(payloadBytes: 120 * 1024), metadata: metadata)
                #expect(answer.outcome == .delivered)
            }
        }
    }

    @Test("many calls in flight on one connection, above HTTP/2's usual 100 streams: all answered")
    func manyCallsInFlight() async throws {
        try await Self.withServer(delay: .milliseconds(300)) { device, port, _ in
            let outcomes = try await Self.withClient(port: port) { _, api, metadata in
                try await withThrowingTaskGroup(of: Terminus_V1_SendResponse.Outcome.self) { calls in
                    for _ in 0..<300 { calls.addTask { try await api.send(Self.send(), metadata: metadata).outcome } }
                    return try await calls.reduce(into: [Terminus_V1_SendResponse.Outcome]()) { $0.append($1) }
                }
            }
            #expect(outcomes.count == 300 && outcomes.allSatisfy { $0 == .delivered })
            // With HTTP/2's customary 100 concurrent streams the client would have queued the rest.
            let most = device.pending.withLock { $0.most }
            #expect(most > 100, "at most \(most) calls were open at once")
        }
    }

    @Test("a connection without calls gets an HTTP/2 GOAWAY at half the idle timeout, then closes")
    func idleConnectionGetsGoAway() async throws {
        let limits = ConnectionGuard.Limits(maxConnections: 10, idleTimeout: .seconds(2))
        try await Self.withServer(limits: limits) { _, port, _ in
            // The server's idle timer starts when it accepts the connection: the clock starts before
            // connecting, so a slow connect on a loaded machine cannot make the GOAWAY look early.
            let started = ContinuousClock.now
            let client = try await RawClient.connect(port: port, tls: false)
            // The HTTP/2 preface and an empty SETTINGS frame; then nothing, not even the PING's answer.
            try await client.send(Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8) + [0, 0, 0, 4, 0, 0, 0, 0, 0])
            func frameTypes() -> [UInt8] {
                var bytes = client.collector.received.withLock { Array($0.readableBytesView) }[...]
                var types: [UInt8] = []
                while bytes.count >= 9 {
                    let length =
                        Int(bytes[bytes.startIndex]) << 16 | Int(bytes[bytes.startIndex + 1]) << 8
                        | Int(bytes[bytes.startIndex + 2])
                    types.append(bytes[bytes.startIndex + 3])
                    bytes = bytes.dropFirst(9 + length)
                }
                return types
            }
            #expect(await client.waitUntil(5) { frameTypes().contains(7) }, "no GOAWAY (type 7) arrived")
            let goAwayAfter = ContinuousClock.now - started
            #expect(
                goAwayAfter >= .milliseconds(1000) && goAwayAfter < .milliseconds(1900),
                "GOAWAY after \(goAwayAfter)"
            )
            #expect(frameTypes().contains(6), "the drain's PING (type 6) came with it")
            #expect(await client.waitUntil(5) { client.isClosed }, "the idle connection stayed open")
        }
    }
}
