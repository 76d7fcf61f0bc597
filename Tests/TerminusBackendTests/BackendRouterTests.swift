import Logging
@_spi(CustomByteBufferAllocator) import NIOCore
import NIOEmbedded
import Synchronization
import TerminusProtocol
import TerminusRouting
import TerminusSessions
import Testing

@testable import TerminusBackend

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Frees of `countingAllocator`'s buffers (one test uses it).
private let countedFrees = Atomic<Int>(0)
private let countingAllocator = ByteBufferAllocator(
    allocate: { malloc($0) },
    reallocate: { pointer, _, size in realloc(pointer, size) },
    deallocate: { pointer in
        countedFrees.add(1, ordering: .relaxed)
        free(pointer)
    },
    copy: { destination, source, count in destination.copyMemory(from: source, byteCount: count) }
)

@Suite("Backend router: where an edge batch goes")
struct BackendRouterTests {
    /// Service 0 takes `a/#`, service 1 takes `b/#`, both take `both/#`.
    func router() throws -> BackendRouter {
        let subscriptions = try [("zero", "a/#"), ("one", "b/#")].map { name, filter in
            Subscription(
                name: name,
                host: "127.0.0.1",
                port: 1,
                filters: [try TopicFilter(filter), try TopicFilter("both/#")]
            )
        }
        return try BackendRouter(
            subscriptions: subscriptions,
            instanceID: "gw-test",
            group: EmbeddedEventLoop(),
            logger: Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })
        )
    }

    func messages(_ topics: String...) -> [UplinkMessage] {
        topics.enumerated().map { index, topic in
            UplinkMessage(
                deviceID: "d-1",
                topic: topic,
                messageID: UInt32(index + 1),
                qos: .atLeastOnce,
                payload: ByteBuffer(string: "x"),
                receivedAt: 0,
                clientAddress: "127.0.0.1",
                connectionID: 1
            )
        }
    }

    @Test("a batch whose messages all match one service goes to it whole, without a plan")
    func oneService() throws {
        let router = try self.router()
        #expect(router.route(self.messages("a/x")) == .one(service: 0))
        #expect(router.route(self.messages("b/x", "b/y/z", "b")) == .one(service: 1))
    }

    @Test("a batch that waits for room in a service's window holds its encoded bytes, not the devices' reads")
    func waitingBatchReleasesReads() throws {
        let loop = EmbeddedEventLoop()
        var subscription = Subscription(name: "zero", host: "127.0.0.1", port: 1, filters: [try TopicFilter("a/#")])
        subscription.window = 1
        let router = try BackendRouter(
            subscriptions: [subscription],
            instanceID: "gw-test",
            group: loop,
            logger: Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })
        )
        // The first message takes the window's one permit; nothing answers it (no connection,
        // and the loop does not run).
        router.deliver(self.messages("a/first"), on: loop) { _ in }
        #expect(router.backlog == 1)
        let freesBefore = countedFrees.load(ordering: .relaxed)
        do {
            // As the session hands it over: the payload is a slice of the device's read.
            var read = countingAllocator.buffer(capacity: 4096)
            read.writeString(String(repeating: "p", count: 300))
            var message = self.messages("a/second")[0]
            message.payload = read.getSlice(at: 50, length: 200)!
            router.deliver([message], on: loop) { _ in }
        }
        #expect(router.backlog == 2, "the second message waits for the window")
        #expect(
            countedFrees.load(ordering: .relaxed) == freesBefore + 1,
            "the read buffer is freed while its message waits: the waiting batch holds the message encoded"
        )
    }

    @Test("a batch no service matches, and an empty batch, have no route")
    func noRoute() throws {
        let router = try self.router()
        #expect(router.route(self.messages("c/x", "d")) == .noRoute)
        #expect(router.route([]) == .noRoute)
    }

    @Test("otherwise each service gets the indices it matched; unmatched messages are noRoute")
    func split() throws {
        let router = try self.router()
        // Same services throughout, but two of them: split, every message to both.
        #expect(
            router.route(self.messages("both/1", "both/2"))
                == .split(RoutingPlan(groups: [[0, 1], [0, 1]], outcomes: [.accepted, .accepted]))
        )
        // The first two match the same service, then they differ (the prefix matched once).
        #expect(
            router.route(self.messages("a/1", "a/2", "b/1", "c/1", "both/x"))
                == .split(
                    RoutingPlan(
                        groups: [[0, 1, 4], [2, 4]],
                        outcomes: [.accepted, .accepted, .accepted, .noRoute, .accepted]
                    )
                )
        )
    }
}
