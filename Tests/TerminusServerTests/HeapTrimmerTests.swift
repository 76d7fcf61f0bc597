#if canImport(Glibc)
import Glibc
import NIOCore
@testable import TerminusServer
import TerminusMetrics
import Testing

@Suite("Heap trimmer (limits.heap_trim)")
struct HeapTrimmerTests {
    static let mib = 1024 * 1024

    @Test("trims once free bytes have grown by free_bytes over their lowest reading since the last trim")
    func policy() {
        var policy = HeapTrimReadings(freeBytes: 10 * Self.mib)
        // Free bytes read, and whether that reading trims.
        let readings: [(MiB: Int, trims: Bool)] = [
            (50, false),  // the first reading only sets the low
            (59, false),
            (30, false),  // free memory reused: a new low
            (40, true),  // 10 MiB freed since the low
            (40, false),  // a trim leaves the freed bytes counted as free: no second trim
            (49, false),
            (50, true),
        ]
        for (index, reading) in readings.enumerated() {
            let trimmed = policy.shouldTrim(free: reading.MiB * Self.mib)
            #expect(trimmed == reading.trims, "reading \(index): \(reading.MiB) MiB")
        }
    }

    /// How many of the pages wholly inside `[pointer, pointer + length)` are resident.
    static func residentPages(_ pointer: UnsafeMutableRawPointer, _ length: Int) -> (resident: Int, pages: Int) {
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let start = (Int(bitPattern: pointer) + page - 1) / page * page
        let end = (Int(bitPattern: pointer) + length) / page * page
        guard end > start else { return (0, 0) }
        var vector = [UInt8](repeating: 0, count: (end - start) / page)
        let rc = vector.withUnsafeMutableBufferPointer {
            mincore(UnsafeMutableRawPointer(bitPattern: start), end - start, $0.baseAddress)
        }
        precondition(rc == 0, "mincore failed: \(errno)")
        return (vector.filter { $0 & 1 == 1 }.count, vector.count)
    }

    @Test("large buffers freed between live small ones go back to the kernel at the next check")
    func returnsFreedPages() throws {
        var policy = HeapTrimPolicy()
        policy.freeBytes = 8 * Self.mib
        let trimmer = HeapTrimmer(policy: policy)
        // The whole suite runs in this process at once: other tests' threads share malloc's
        // arenas and may take freed memory back between the free and the check. Up to three
        // attempts; one in which the trim returned the pages passes.
        var attempts: [String] = []
        for _ in 0..<3 {
            let (triggered, after, before) = try Self.freeAndTrim(trimmer)
            #expect(before.pages > 0)
            if triggered && after * 2 < before.pages && before.resident * 10 >= before.pages * 9 {
                attempts.removeAll()
                break
            }
            attempts.append("triggered \(triggered), resident \(before.resident)/\(before.pages) → \(after)")
        }
        #expect(attempts.isEmpty, "no attempt saw the freed pages returned: \(attempts)")
        var snapshot = MetricsSnapshot()
        trimmer.collect(into: &snapshot)
        #expect((snapshot.counters[SeriesKey("terminus_heap_trims_total")] ?? 0) >= 1)
        #expect((snapshot.gauges[SeriesKey("terminus_heap_free_bytes")] ?? 0) > 0)
    }

    /// 2,048 records of 16 KB, each followed by a small object that lives on (as a session's
    /// state does), so that glibc cannot give the freed records back from the heap's top; frees
    /// the records and checks. Returns whether the check trimmed, the records' resident pages
    /// after it, and their resident and total pages before it.
    static func freeAndTrim(_ trimmer: HeapTrimmer) throws -> (Bool, Int, (resident: Int, pages: Int)) {
        let size = 16_000
        var large: [UnsafeMutableRawPointer] = []
        var small: [UnsafeMutableRawPointer] = []
        defer { for object in small { free(object) } }
        for _ in 0..<2_048 {
            let record = try #require(malloc(size))
            memset(record, 0xAB, size)
            large.append(record)
            small.append(try #require(malloc(64)))
        }
        // The low, read once the records are allocated: they may have come out of memory that
        // was already free (other tests' frees), and a low read before would not see the drop.
        trimmer.check()
        for record in large { free(record) }
        let before = large.reduce(into: (resident: 0, pages: 0)) {
            let counted = Self.residentPages($1, size)
            $0.resident += counted.resident
            $0.pages += counted.pages
        }
        let triggered = trimmer.check()
        let after = large.reduce(0) { $0 + Self.residentPages($1, size).resident }
        return (triggered, after, before)
    }
}
#endif
