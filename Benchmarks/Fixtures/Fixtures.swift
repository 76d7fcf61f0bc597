import Foundation
import Logging
package import NIOCore
package import NIOEmbedded
import TerminusAPI
import TerminusAuth
package import TerminusBackend
package import TerminusCompression
import TerminusEdge
import TerminusProtocol
package import TerminusRouting
package import TerminusSessions

/// Shared by the package-benchmark suite (allocation gates) and `terminus-instructions`
/// (instruction counts under callgrind).
///
/// Realistic device traffic: a payment speaker's "payment received" message (~200 bytes of
/// JSON) and the preset dictionary a fleet would ship for it.
package enum Fixtures {
    package static let paymentJSON = Array(
        #"{"type":"payment","order":"202611300325123456","amount":1288,"currency":"CNY","merchant":"M-20491","store":"S-0042","device":"spk-000123","voice":"payment-received","channel":"wxpay","ts":1795995912345,"seq":4821}"#
            .utf8
    )
    package static let dictionary = Array(
        #"{"type":"payment","order":"2026","amount":,"currency":"CNY","merchant":"M-","store":"S-","device":"spk-","voice":"payment-received","channel":"wxpay","alipay","ts":17,"seq":}"#
            .utf8
    )
    package static let dictionaries = try! DictionarySet([1: Fixtures.dictionary])
    package static let payload = ByteBuffer(bytes: Fixtures.paymentJSON)
    package static let deflated = try! Deflater(dictionaries: Fixtures.dictionaries)
        .deflate(Fixtures.payload, allocator: ByteBufferAllocator())
    package static let deflatedWithDictionary = try! Deflater(dictionaries: Fixtures.dictionaries)
        .deflate(Fixtures.payload, dictionaryID: 1, allocator: ByteBufferAllocator())

    package static let topic = "tenant-4821/spk-000123/pay/done"

    // Built once per process: the benchmark closure runs once per sample, so anything costly
    // to set up lives here (zlib contexts, the 10,000-filter table, sessions, TLS pairs).
    package nonisolated(unsafe) static let inflater = try! Inflater(
        limits: InflateLimits(),
        dictionaries: Fixtures.dictionaries
    )
    package nonisolated(unsafe) static let deflater = try! Deflater(dictionaries: Fixtures.dictionaries)
    package static let routeTable = RouteTable(routes: Fixtures.filters)
    package nonisolated(unsafe) static let sessions = (
        plain: try! EmbeddedSession(routes: Fixtures.subscriptions()),
        deflated: try! EmbeddedSession(routes: Fixtures.subscriptions()),
        dictionary: try! EmbeddedSession(routes: Fixtures.subscriptions())
    )

    package static func publishFrame(
        messageID: UInt32 = 7,
        compressed: Bool = false,
        dictionary: Bool = false
    ) -> ByteBuffer {
        let payload = compressed ? (dictionary ? Fixtures.deflatedWithDictionary : Fixtures.deflated) : Fixtures.payload
        var buffer = ByteBuffer()
        buffer.writeFrame(
            .publish(
                Message(
                    messageID: messageID,
                    qos: .atLeastOnce,
                    compressed: compressed,
                    dictionaryID: dictionary ? 1 : nil,
                    topic: Fixtures.topic,
                    payload: payload
                )
            )
        )
        return buffer
    }

    /// 10,000 filters over 64 services, shaped like a multi-tenant deployment: per-tenant
    /// wildcards, per-device status topics, and fleet-wide event filters.
    package static let filters: [(TopicFilter, Int)] = (0..<10_000).map { index in
        let text: String
        switch index % 4 {
        case 0: text = "tenant-\(index)/+/pay/#"
        case 1: text = "printer/p-\(index)/status"
        case 2: text = "tenant-\(index)/spk-\(index)/+/done"
        default: text = "fleet/\(index % 97)/+/event/\(index)"
        }
        return (try! TopicFilter(text), index % 64)
    }

    /// Topics that match, one that matches nothing.
    package static let matchingTopic = "tenant-4820/spk-000123/pay/done"
    package static let unmatchedTopic = "tenant-999999/spk-000123/pay/done"

    package static func subscriptions() -> [Subscription] {
        var byService = [[TopicFilter]](repeating: [], count: 64)
        for (filter, service) in Fixtures.filters { byService[service].append(filter) }
        byService[0].append(try! TopicFilter("tenant-4821/+/pay/#"))
        return byService.enumerated().map { index, filters in
            Subscription(name: "service-\(index)", host: "127.0.0.1", port: 1, filters: filters)
        }
    }
}

/// The uplink sink of the hot-path benchmark: the gateway's real routing decision
/// (`BackendRouter.route`, which `BackendRouter.deliver` takes) and encoding to the backend's
/// protobuf message (`UplinkEncoder`, into one buffer per edge batch and service, as
/// `ServiceDelivery` does), appended to the batch a service delivery would send. Answers at
/// once, so the device gets its ACK in the same tick.
package final class RoutingSink: UplinkSink, @unchecked Sendable {
    // Only touched on the embedded loop.
    package let router: BackendRouter
    let encoder = UplinkEncoder(instanceID: "gw-bench-0")
    let allocator = ByteBufferAllocator()
    var pending: [ByteBuffer] = []
    package var routed = 0

    package init(router: BackendRouter) {
        self.router = router
        self.pending.reserveCapacity(1024)
    }

    package func deliver(
        _ batch: [UplinkMessage],
        on eventLoop: any EventLoop,
        completion: @escaping @Sendable ([DeliveryOutcome]) -> Void
    ) {
        let outcomes: [DeliveryOutcome]
        switch self.router.route(batch) {
        case .noRoute:
            outcomes = DeliveryOutcome.noRoute.repeated(batch.count)
        case .one:
            self.encode(batch[...])
            outcomes = DeliveryOutcome.accepted.repeated(batch.count)
        case .split(let plan):
            // As `BackendRouter.deliver` hands each service its part.
            for group in plan.groups where !group.isEmpty {
                self.encode(group.count == batch.count ? batch[...] : group.map { batch[$0] }[...])
            }
            outcomes = plan.outcomes
        }
        self.routed += self.pending.count
        self.pending.removeAll(keepingCapacity: true)
        completion(outcomes)
    }

    /// One service's part of the batch, as `ServiceDelivery` queues it.
    private func encode(_ messages: ArraySlice<UplinkMessage>) {
        self.encoder.encode(messages, allocator: self.allocator) { _, slice in self.pending.append(slice) }
    }
}

/// One authenticated device session on the gateway's real pipeline (frame decoder, session
/// handler, per-loop inflater and batcher), over an `EmbeddedChannel` without TLS.
package final class EmbeddedSession {
    package let loop = EmbeddedEventLoop()
    package let channel: EmbeddedChannel
    package let sink: RoutingSink
    private let server: EdgeServer

    package init(routes: [Subscription]) throws {
        let secret = Array("bench-secret-0123456789abcdef".utf8)
        let router = try BackendRouter(
            subscriptions: routes,
            instanceID: "gw-bench-0",
            group: self.loop,
            logger: Logger(label: "bench", factory: { _ in SwiftLogNoOpLogHandler() })
        )
        self.sink = RoutingSink(router: router)
        var settings = EdgeSettings()
        settings.publishEvents = false
        settings.admission = .unlimited
        // The limiter runs as in production, with limits no benchmark loop reaches.
        settings.rateLimits = UplinkRateLimits(
            messagesPerSecond: 1e9,
            messageBurst: 1e9,
            bytesPerSecond: 1e12,
            byteBurst: 1e12,
            refusalsBeforeClose: 0
        )
        self.server = try EdgeServer(
            group: self.loop,
            listener: DeviceListener(host: "127.0.0.1", port: 0, security: .plaintext),
            settings: settings,
            authenticator: DeviceAuthenticator(secrets: SecretStore(prefixes: ["": secret]), now: { 1_795_995_912 }),
            directory: LocalSessionDirectory(),
            sink: self.sink,
            dictionaries: Fixtures.dictionaries,
            logger: Logger(label: "bench", factory: { _ in SwiftLogNoOpLogHandler() })
        )
        self.channel = EmbeddedChannel(loop: self.loop)
        try self.server.adopt(self.channel)
        try self.channel.connect(to: SocketAddress(ipAddress: "127.0.0.2", port: 40_000)).wait()
        let token = DeviceToken.make(deviceID: "spk-000123", secret: secret, expiresAt: 1_795_999_999)
        var hello = ByteBuffer()
        hello.writeFrame(
            .hello(
                Hello(
                    keepaliveSeconds: 240,
                    capabilities: [],
                    deviceID: "spk-000123",
                    authMethod: .token,
                    credential: ByteBuffer(string: token)
                )
            )
        )
        try self.channel.writeInbound(hello)
        self.loop.run()
        var decoder = FrameDecoder(maxFrameLength: 65_536)
        guard var welcome = try self.channel.readOutbound(as: ByteBuffer.self),
            case .welcome = try decoder.decode(buffer: &welcome)
        else {
            fatalError("the embedded session did not answer HELLO with WELCOME")
        }
    }

    /// Feeds one PUBLISH frame, runs the loop's tick (the batcher flushes), and takes the ACK.
    @inline(__always)
    package func publish(_ frame: ByteBuffer) throws -> ByteBuffer? {
        try self.channel.writeInbound(frame)
        self.loop.run()
        return try self.channel.readOutbound(as: ByteBuffer.self)
    }
}
