import Benchmark
import Foundation
import Logging
import NIOCore
import NIOEmbedded
import NIOSSL
import TerminusAuth
import TerminusBackend
import TerminusBenchmarkFixtures
import TerminusCompression
import TerminusEdge
import TerminusProtocol
import TerminusRouting
import TerminusServer
import TerminusSessions

// Allocation counts are exact and repeatable in a release build, so they are what the gate
// checks (Thresholds/*.p90.json, zero tolerance). Timings on a shared 2-core machine are not:
// TERMINUS_BENCH_TIMING=1 adds wall clock, CPU time and throughput for reading, ungated.
let timing = ProcessInfo.processInfo.environment["TERMINUS_BENCH_TIMING"] == "1"

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(
        metrics: timing ? [.mallocCountTotal, .wallClock, .cpuTotal, .throughput] : [.mallocCountTotal],
        warmupIterations: 50,
        scalingFactor: .one,
        maxDuration: .seconds(timing ? 2 : 1),
        maxIterations: timing ? 1_000_000 : 2_000
    )

    // MARK: Frames

    Benchmark("FrameDecodePublish") { benchmark in
        let frame = Fixtures.publishFrame()
        var decoder = FrameDecoder(maxFrameLength: 65_536)
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            var buffer = frame
            blackHole(try decoder.decode(buffer: &buffer))
        }
    }

    Benchmark("FrameEncodeAck") { benchmark in
        var buffer = ByteBufferAllocator().buffer(capacity: 64)
        benchmark.startMeasurement()
        for index in benchmark.scaledIterations {
            buffer.clear()
            blackHole(buffer.writeFrame(.ack(Ack(messageID: UInt32(truncatingIfNeeded: index), status: .ok))))
        }
    }

    Benchmark("FrameEncodePush") { benchmark in
        let push = Frame.push(Message(messageID: 9, qos: .atLeastOnce, topic: "cmd/play", payload: Fixtures.payload))
        var buffer = ByteBufferAllocator().buffer(capacity: 512)
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            buffer.clear()
            blackHole(buffer.writeFrame(push))
        }
    }

    // MARK: Compression (~200-byte JSON)

    Benchmark("Inflate200B") { benchmark in
        let inflater = Fixtures.inflater
        let allocator = ByteBufferAllocator()
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            blackHole(try inflater.inflate(Fixtures.deflated, dictionaryID: nil, allocator: allocator))
        }
    }

    Benchmark("Inflate200BDictionary") { benchmark in
        let inflater = Fixtures.inflater
        let allocator = ByteBufferAllocator()
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            blackHole(try inflater.inflate(Fixtures.deflatedWithDictionary, dictionaryID: 1, allocator: allocator))
        }
    }

    Benchmark("Deflate200B") { benchmark in
        let deflater = Fixtures.deflater
        let allocator = ByteBufferAllocator()
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            blackHole(try deflater.deflate(Fixtures.payload, allocator: allocator))
        }
    }

    Benchmark("Deflate200BDictionary") { benchmark in
        let deflater = Fixtures.deflater
        let allocator = ByteBufferAllocator()
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            blackHole(try deflater.deflate(Fixtures.payload, dictionaryID: 1, allocator: allocator))
        }
    }

    // MARK: Routing

    Benchmark("RouteMatch10kFilters") { benchmark in
        let table = Fixtures.routeTable
        precondition(!table.match(Fixtures.matchingTopic).isEmpty, "the fixture topic must match")
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            blackHole(table.match(Fixtures.matchingTopic))
        }
    }

    Benchmark("RouteMiss10kFilters") { benchmark in
        let table = Fixtures.routeTable
        precondition(table.match(Fixtures.unmatchedTopic).isEmpty, "the fixture topic must not match")
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            blackHole(table.match(Fixtures.unmatchedTopic))
        }
    }

    // Routing and batching of one message: the router's plan for a one-message edge batch and
    // the protobuf message appended to the service's batch.
    Benchmark("RouteAndEncodeOneMessage") { benchmark in
        let session = Fixtures.sessions.plain
        let message = UplinkMessage(
            deviceID: "spk-000123",
            topic: Fixtures.topic,
            messageID: 7,
            qos: .atLeastOnce,
            payload: Fixtures.payload,
            receivedAt: 1_795_995_912_345,
            clientAddress: "10.1.2.3:40000",
            connectionID: 1
        )
        let batch = [message]
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            session.sink.deliver(batch, on: session.loop) { blackHole($0) }
        }
    }

    // MARK: Session state machine

    Benchmark("SessionStateMachinePublishAck") { benchmark in
        let now = NIODeadline.now()
        var machine = DeviceSessionStateMachine(
            usesTLS: false,
            now: now,
            timeouts: .init(handshake: .seconds(10), hello: .seconds(10), closeGrace: .seconds(5)),
            maxInflight: 32
        )
        _ = machine.receivedCredential(now: now)
        machine.authenticated(deviceID: "bench-1", keepaliveSeconds: 240, now: now)
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            blackHole(machine.receivedPublish(qos: .atLeastOnce, payloadBytes: 200, now: now))
            blackHole(machine.deliveryCompleted(qos: .atLeastOnce))
            blackHole(machine.timerFired(now: now))
        }
    }

    // MARK: Authentication refusals: an unknown id and a wrong token for a known id must cost
    // the same (one HMAC each), or device ids could be enumerated by timing. Compare their
    // cpuTotal with TERMINUS_BENCH_TIMING=1.

    for (name, deviceID) in [("AuthRefusalUnknownDevice", "ghost-1"), ("AuthRefusalWrongToken", "spk-1")] {
        Benchmark(name) { benchmark in
            let secret = Array("bench-device-secret-0123456789".utf8)
            let authenticator = DeviceAuthenticator(secrets: SecretStore(prefixes: ["spk-": secret]), now: { 1_000 })
            let forged = DeviceToken.make(deviceID: deviceID, secret: Array("a guess".utf8), expiresAt: 2_000)
            let hello = Hello(
                keepaliveSeconds: 0,
                capabilities: [],
                deviceID: deviceID,
                authMethod: .token,
                credential: ByteBuffer(string: forged)
            )
            benchmark.startMeasurement()
            for _ in benchmark.scaledIterations {
                blackHole(try? authenticator.authenticate(hello, certificateDeviceID: nil, maxDeviceIDLength: 128))
            }
        }
    }

    // MARK: Hot path: decode → inflate → route → enqueue for a backend → ACK

    Benchmark("HotPathPublishToAck") { benchmark in
        let session = Fixtures.sessions.plain
        let frame = Fixtures.publishFrame()
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            blackHole(try session.publish(frame))
        }
        precondition(session.sink.routed > 0, "messages must reach the routing sink")
    }

    Benchmark("HotPathPublishToAckDeflated") { benchmark in
        let session = Fixtures.sessions.deflated
        let frame = Fixtures.publishFrame(compressed: true)
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            blackHole(try session.publish(frame))
        }
        precondition(session.sink.routed > 0, "messages must reach the routing sink")
    }

    Benchmark("HotPathPublishToAckDictionary") { benchmark in
        let session = Fixtures.sessions.dictionary
        let frame = Fixtures.publishFrame(compressed: true, dictionary: true)
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            blackHole(try session.publish(frame))
        }
        precondition(session.sink.routed > 0, "messages must reach the routing sink")
    }

    // MARK: TLS

    // One 200-byte application record from device to gateway and a 16-byte answer back, through
    // swift-nio-ssl (BoringSSL, TLS 1.3, ECDSA P-256) on both ends, in memory.
    Benchmark("TLSRecordRoundTrip") { benchmark in
        let pair = Fixtures.tlsPair
        let request = Fixtures.payload
        let answer = ByteBuffer(repeating: 0x2A, count: 16)
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            try pair.roundTrip(request, answer)
        }
    }
}

/// A TLS client and server on two `EmbeddedChannel`s, bytes carried between them by hand.
extension Fixtures {
    nonisolated(unsafe) static let tlsPair = try! TLSPair()
}

final class TLSPair {
    let client = EmbeddedChannel()
    let server = EmbeddedChannel()

    init() throws {
        let ca = try CertificateFactory.makeCA(commonName: "bench CA")
        let issued = try CertificateFactory.issueServer(
            ca: ca,
            commonName: "localhost",
            dnsNames: ["localhost"],
            ipAddresses: []
        )
        let serverConfiguration = TLSConfiguration.makeServerConfiguration(
            certificateChain: [
                .certificate(try NIOSSLCertificate(bytes: Array(issued.certificatePEM.utf8), format: .pem))
            ],
            privateKey: .privateKey(try NIOSSLPrivateKey(bytes: Array(issued.privateKeyPEM.utf8), format: .pem))
        )
        var clientConfiguration = TLSConfiguration.makeClientConfiguration()
        clientConfiguration.trustRoots = .certificates([
            try NIOSSLCertificate(bytes: Array(ca.certificatePEM.utf8), format: .pem)
        ])
        try self.server.pipeline.syncOperations.addHandler(
            NIOSSLServerHandler(context: try NIOSSLContext(configuration: serverConfiguration))
        )
        try self.client.pipeline.syncOperations.addHandler(
            try NIOSSLClientHandler(
                context: try NIOSSLContext(configuration: clientConfiguration),
                serverHostname: "localhost"
            )
        )
        let address = try SocketAddress(ipAddress: "127.0.0.1", port: 1)
        try self.server.connect(to: address).wait()
        try self.client.connect(to: address).wait()
        for _ in 0..<10 { try self.shuttle() }
    }

    /// Moves every pending byte between the two ends until both are quiet.
    func shuttle() throws {
        var moved = true
        while moved {
            moved = false
            while let bytes = try self.client.readOutbound(as: ByteBuffer.self) {
                try self.server.writeInbound(bytes)
                moved = true
            }
            while let bytes = try self.server.readOutbound(as: ByteBuffer.self) {
                try self.client.writeInbound(bytes)
                moved = true
            }
        }
    }

    func roundTrip(_ request: ByteBuffer, _ answer: ByteBuffer) throws {
        try self.client.writeOutbound(request)
        try self.shuttle()
        guard let received = try self.server.readInbound(as: ByteBuffer.self),
            received.readableBytes == request.readableBytes
        else { fatalError("the server did not receive the record") }
        try self.server.writeOutbound(answer)
        try self.shuttle()
        guard let reply = try self.client.readInbound(as: ByteBuffer.self), reply.readableBytes == answer.readableBytes
        else { fatalError("the client did not receive the answer") }
    }
}
