internal import CTerminusMalloc
package import NIOCore
internal import ServiceLifecycle
internal import Synchronization
package import TerminusMetrics

/// When to hand the malloc heap's free memory back to the kernel (`limits.heap_trim.*`).
///
/// glibc returns freed memory to the kernel only from the top of a heap. Memory freed inside
/// one (a burst of large messages through many devices at once, the records, plaintexts and
/// payload copies interleaved with small objects that live on) stays resident until
/// `malloc_trim`: after 4,000 lean devices each sent one 16 KB message, 13.6 KiB per device
/// stayed resident as free heap memory, against 5.5 KiB per idle device.
///
/// The rule: the heap's free bytes (`mallinfo2().fordblks`) are read every `interval`; once
/// they are `freeBytes` above their lowest reading since the last trim, `malloc_trim(0)` runs.
/// Freed memory stays counted as free after a trim (only its pages go back), so what triggers
/// a trim is memory freed since then, not memory already returned.
package struct HeapTrimPolicy: Sendable, Equatable {
    /// How often the heap's free bytes are read; zero turns trimming off.
    package var interval: TimeAmount = .seconds(1)
    /// Free bytes gained since the last trim that start one.
    package var freeBytes = 16 * 1024 * 1024

    package init() {}
}

/// The policy's rule over successive readings: the lowest free-byte reading since the last trim.
package struct HeapTrimReadings: Sendable {
    package let freeBytes: Int
    private var low: Int?

    package init(freeBytes: Int) {
        self.freeBytes = freeBytes
    }

    /// Whether a heap with `free` bytes free should be trimmed now; records the reading.
    package mutating func shouldTrim(free: Int) -> Bool {
        let low = min(self.low ?? free, free)
        guard free - low >= self.freeBytes else {
            self.low = low
            return false
        }
        self.low = free
        return true
    }
}

/// Runs `HeapTrimPolicy` for the process until graceful shutdown.
///
/// The trim runs on this service's task, off the event loops: it holds each malloc arena's lock
/// while it walks that arena, and an event loop allocating meanwhile waits. The time it takes is
/// counted in `terminus_heap_trim_seconds_total`. On a system without glibc it does nothing.
package final class HeapTrimmer: Service, Sendable {
    private struct State {
        var readings: HeapTrimReadings
        var trims = 0
        var seconds = 0.0
        var lastFree = 0
    }

    private let state: Mutex<State>
    package let interval: TimeAmount

    package init(policy: HeapTrimPolicy) {
        self.interval = policy.interval
        self.state = Mutex(State(readings: HeapTrimReadings(freeBytes: policy.freeBytes)))
    }

    package func run() async throws {
        guard Self.available, self.interval > .zero else {
            try? await gracefulShutdown()
            return
        }
        try? await cancelWhenGracefulShutdown {
            while true {
                try await Task.sleep(for: .nanoseconds(self.interval.nanoseconds))
                self.check()
            }
        }
    }

    /// Reads the heap's free bytes and trims if the policy says so. Returns whether it trimmed.
    @discardableResult
    package func check() -> Bool {
        guard let free = Self.heapFreeBytes() else { return false }
        let trim = self.state.withLock { state in
            state.lastFree = free
            return state.readings.shouldTrim(free: free)
        }
        guard trim else { return false }
        let start = NIODeadline.now()
        Self.trim()
        let seconds = Double((NIODeadline.now() - start).nanoseconds) / 1e9
        self.state.withLock { state in
            state.trims += 1
            state.seconds += seconds
        }
        return true
    }

    /// `terminus_heap_trims_total`, `terminus_heap_trim_seconds_total`, `terminus_heap_free_bytes`.
    package func collect(into snapshot: inout MetricsSnapshot) {
        let state = self.state.withLock { $0 }
        snapshot.count(SeriesKey("terminus_heap_trims_total"), state.trims)
        snapshot.count(SeriesKey("terminus_heap_trim_seconds_total"), state.seconds)
        snapshot.gauge(SeriesKey("terminus_heap_free_bytes"), state.lastFree)
    }

    /// Whether this C library has the statistics and the trim (glibc).
    static let available = terminus_heap_free_bytes() >= 0

    /// Free bytes in the malloc heaps, resident or not.
    static func heapFreeBytes() -> Int? {
        let free = terminus_heap_free_bytes()
        return free >= 0 ? Int(free) : nil
    }

    static func trim() {
        _ = terminus_heap_trim()
    }
}
