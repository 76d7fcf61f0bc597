import NIOCore
import NIOEmbedded
import TerminusProtocol
import TerminusSessions
import Testing

@testable import TerminusEdge

/// The uplink batcher hands one batch per loop tick to the sink and gives every waiting session
/// its outcomes and ACK flushes back in one pass over the batch.
@Suite("Uplink batcher")
struct UplinkBatcherTests {
    /// A sink that keeps each batch's completion for the test to call.
    final class HeldSink: UplinkSink, @unchecked Sendable {
        var batches: [[UplinkMessage]] = []
        var completions: [@Sendable ([DeliveryOutcome]) -> Void] = []

        func deliver(
            _ batch: [UplinkMessage],
            on eventLoop: any EventLoop,
            completion: @escaping @Sendable ([DeliveryOutcome]) -> Void
        ) {
            self.batches.append(batch)
            self.completions.append(completion)
        }
    }

    /// A sink that reads each batch and keeps only the ids (the backend router copies what it
    /// queues), answering at once; `during` runs inside `deliver`, as a session's read might.
    final class ReadingSink: UplinkSink, @unchecked Sendable {
        var ids: [[UInt32]] = []
        var during: (() -> Void)?

        func deliver(
            _ batch: [UplinkMessage],
            on eventLoop: any EventLoop,
            completion: @escaping @Sendable ([DeliveryOutcome]) -> Void
        ) {
            self.ids.append(batch.map(\.messageID))
            self.during?()
            self.during = nil
            completion(Array(repeating: .accepted, count: batch.count))
        }
    }

    /// Records what the batcher tells it, in order, into a log shared by all waiters.
    final class Waiter: DeliveryWaiter {
        let name: String
        let log: Log
        var pending = 0

        init(_ name: String, log: Log) {
            self.name = name
            self.log = log
        }

        func deliveryCompleted(messageID: UInt32, kind: DeliveryKind, outcome: DeliveryOutcome, receivedAt: NIODeadline)
        {
            self.pending += 1
            self.log.entries.append("\(self.name)\(messageID):\(outcome == .accepted ? "ok" : "retry")")
        }

        func flushAcks() {
            guard self.pending > 0 else { return }
            self.pending = 0
            self.log.entries.append("flush \(self.name)")
        }
    }

    final class Log {
        var entries: [String] = []
    }

    static func message(_ id: UInt32) -> UplinkMessage {
        UplinkMessage(
            deviceID: "d",
            topic: "t",
            messageID: id,
            qos: .atLeastOnce,
            payload: ByteBuffer(string: "x"),
            receivedAt: 0,
            clientAddress: "127.0.0.1:1"
        )
    }

    /// A batcher on an embedded loop with a held sink, and two sessions logging into one log.
    struct Fixture {
        let loop = EmbeddedEventLoop()
        let sink = HeldSink()
        let log = Log()
        let batcher: UplinkBatcher
        let a: Waiter
        let b: Waiter

        init(maxBatchSize: Int) {
            self.batcher = UplinkBatcher(eventLoop: self.loop, sink: self.sink, maxBatchSize: maxBatchSize)
            self.a = Waiter("a", log: self.log)
            self.b = Waiter("b", log: self.log)
        }
    }

    @Test("one batch per tick; each session's run of ACKs is flushed as soon as the run ends, interleaved or not")
    func flushesPerRun() throws {
        let f = Fixture(maxBatchSize: 100)
        let (loop, sink, batcher, log, a, b) = (f.loop, f.sink, f.batcher, f.log, f.a, f.b)
        batcher.enqueue(Self.message(1), waiter: a, kind: .atLeastOnce)
        batcher.enqueue(Self.message(2), waiter: a, kind: .atLeastOnce)
        batcher.enqueue(Self.message(3), waiter: b, kind: .atLeastOnce)
        batcher.enqueue(Self.message(4), waiter: nil, kind: .atLeastOnce)  // QoS 0: nobody waits
        batcher.enqueue(Self.message(5), waiter: a, kind: .atLeastOnce)
        #expect(sink.batches.isEmpty, "the batch goes at the end of the tick")
        loop.run()
        try #require(sink.batches.count == 1)
        #expect(sink.batches[0].map(\.messageID) == [1, 2, 3, 4, 5])

        sink.completions[0](Array(repeating: .accepted, count: 5))
        #expect(log.entries == ["a1:ok", "a2:ok", "flush a", "b3:ok", "flush b", "a5:ok", "flush a"])
        #expect(a.pending == 0 && b.pending == 0, "no ACK is left unflushed")
    }

    @Test(
        "each tick's batch holds its own messages: a batch the sink keeps is never changed by later ones, one it lets go of carries the next, messages queued while the sink runs go in the next"
    )
    func batchesStayIntact() throws {
        let f = Fixture(maxBatchSize: 100)
        for ids in [[1, 2], [3], [4, 5, 6]] as [[UInt32]] {
            for id in ids { f.batcher.enqueue(Self.message(id), waiter: f.a, kind: .atLeastOnce) }
            f.loop.run()
        }
        #expect(f.sink.batches.map { $0.map(\.messageID) } == [[1, 2], [3], [4, 5, 6]])

        let loop = EmbeddedEventLoop()
        let sink = ReadingSink()
        let batcher = UplinkBatcher(eventLoop: loop, sink: sink, maxBatchSize: 100)
        sink.during = { batcher.enqueue(Self.message(9), waiter: nil, kind: .atLeastOnce) }
        for ids in [[1, 2], [3], [4, 5, 6]] as [[UInt32]] {
            for id in ids { batcher.enqueue(Self.message(id), waiter: nil, kind: .atLeastOnce) }
            loop.run()
        }
        #expect(sink.ids == [[1, 2], [9], [3], [4, 5, 6]])
    }

    @Test(
        "a malformed sink answer (not one outcome per message): every waiting message gets retryLater, and every ACK is flushed"
    )
    func malformedSinkAnswer() throws {
        let f = Fixture(maxBatchSize: 2)
        let (loop, sink, batcher, log, a, b) = (f.loop, f.sink, f.batcher, f.log, f.a, f.b)
        batcher.enqueue(Self.message(1), waiter: a, kind: .atLeastOnce)
        batcher.enqueue(Self.message(2), waiter: b, kind: .atLeastOnce)  // the second message fills the batch
        #expect(sink.batches.count == 1, "a full batch goes at once")
        sink.completions[0]([.accepted])
        #expect(log.entries == ["a1:retry", "flush a", "b2:retry", "flush b"])
        // The flush the first message scheduled finds nothing left; running it also lets the
        // embedded loop let go of the batcher (AddressSanitizer's leak check).
        loop.run()
        #expect(sink.batches.count == 1)
    }

    @Test("the next batch's waiters are reserved at the last batch's size: at least 8, at most max_batch_size")
    func reservedWaiters() {
        #expect(MemoryLayout<UplinkBatcher.Waiter>.stride == 32)
        for (count, maxBatchSize, expected) in [(0, 256, 8), (3, 256, 8), (40, 256, 40), (300, 256, 256), (5, 4, 4)] {
            let waiters = UplinkBatcher.reserved(after: count, maxBatchSize: maxBatchSize)
            #expect(waiters.isEmpty)
            // The allocator may round up; never below the reservation, never a doubling above it.
            #expect(waiters.capacity >= expected && waiters.capacity < 2 * expected, "after \(count)")
        }
    }
}
