import Synchronization
import Testing

@testable import TerminusBackend

/// The service window: edge batches are admitted in order, at once when there is room (on the
/// caller's thread, no task), otherwise by the release that makes room.
@Suite("Delivery window")
struct AsyncWindowTests {
    final class Order: Sendable {
        let ran = Mutex<[Int]>([])
        func record(_ value: Int) { self.ran.withLock { $0.append(value) } }
        var values: [Int] { self.ran.withLock { $0 } }
    }

    @Test("room now: the closure runs before acquire returns; no room: it waits, in order, for releases")
    func admitsInOrder() {
        let window = AsyncWindow(capacity: 10)
        let order = Order()
        window.acquire(6) { order.record(1) }
        #expect(order.values == [1], "ran at once")
        window.acquire(6) { order.record(2) }
        window.acquire(1) { order.record(3) }
        #expect(order.values == [1], "2 does not fit, and 3 may not overtake it")
        #expect(window.waiting == 2 && window.waitingMessages == 7)
        window.release(6)
        #expect(order.values == [1, 2, 3])
        #expect(window.inUse == 7 && window.waiting == 0)
        window.release(7)
        #expect(window.inUse == 0)
    }

    @Test("a waiter that releases at once (a batch refused on arrival) does not nest: 20,000 of them run in order")
    func releasesFromWaitersDoNotNest() {
        let window = AsyncWindow(capacity: 1)
        let order = Order()
        window.acquire(1) { order.record(-1) }
        let count = 20_000
        for index in 0..<count {
            window.acquire(1) {
                order.record(index)
                window.release(1)
            }
        }
        #expect(window.waiting == count)
        window.release(1)  // would recurse 20,000 deep if each release ran the next waiter itself
        #expect(order.values == [-1] + Array(0..<count))
        #expect(window.inUse == 0 && window.waiting == 0)
    }

    @Test("requests above the capacity take the whole window instead of waiting forever")
    func clampsToCapacity() async {
        let window = AsyncWindow(capacity: 4)
        await window.acquire(100)
        #expect(window.inUse == 4)
        window.release(100)
        #expect(window.inUse == 0)
    }
}
