#if canImport(Glibc)
import Glibc
import Logging
import NIOCore
@testable import TerminusEdge
import Testing

@Suite("Buffer arena for the large per-connection TLS buffers")
struct BufferArenaTests {
    static let page = Int(sysconf(Int32(_SC_PAGESIZE)))

    /// How many of the `length / page` pages at `pointer` are resident (`mincore`).
    static func residentPages(_ pointer: UnsafeMutableRawPointer, _ length: Int) -> Int {
        var vector = [UInt8](repeating: 0, count: (length + page - 1) / page)
        let rc = vector.withUnsafeMutableBufferPointer { mincore(pointer, length, $0.baseAddress) }
        precondition(rc == 0, "mincore failed: \(errno)")
        return vector.filter { $0 & 1 == 1 }.count
    }

    @Test("sizes from the minimum up to a slot get a slot; others and an exhausted arena get nil")
    func slotsAndSizes() throws {
        let arena = try #require(BufferArena(slotSize: 32 * 1024, slotCount: 2, minimumSize: 16 * 1024))
        #expect(arena.allocate(16 * 1024 - 1) == nil)
        #expect(arena.allocate(32 * 1024 + 1) == nil)
        let first = try #require(arena.allocate(16 * 1024))
        let second = try #require(arena.allocate(32 * 1024))
        #expect(arena.owns(first) && arena.owns(second))
        #expect(abs(first.distance(to: second)) == 32 * 1024)
        #expect(arena.allocate(20_000) == nil)
        #expect(arena.fallbacks == 1)
        #expect(arena.slotsInUse == 2)
        let elsewhere = try #require(malloc(64))
        #expect(!arena.owns(elsewhere))
        free(elsewhere)

        arena.release(first)
        #expect(arena.slotsInUse == 1)
        let reused = try #require(arena.allocate(20_000))
        #expect(reused == first)
        arena.release(reused)
        arena.release(second)
        #expect(arena.slotsInUse == 0)
    }

    @Test("only touched pages are resident; a released slot keeps only its first page")
    func residency() throws {
        let arena = try #require(BufferArena(slotSize: 32 * 1024, slotCount: 4))
        let slot = try #require(arena.allocate(32 * 1024))
        let pages = 32 * 1024 / Self.page
        #expect(Self.residentPages(slot, 32 * 1024) == 0)
        slot.storeBytes(of: 0xAB, as: UInt8.self)
        #expect(Self.residentPages(slot, 32 * 1024) == 1)
        slot.initializeMemory(as: UInt8.self, repeating: 0xCD, count: 32 * 1024)
        #expect(Self.residentPages(slot, 32 * 1024) == pages)

        // Released: every page but the first goes back to the kernel (the next owner touches
        // the first page anyway).
        arena.release(slot)
        #expect(Self.residentPages(slot, 32 * 1024) == 1)
        let again = try #require(arena.allocate(32 * 1024))
        #expect(again == slot)
        #expect(again.load(fromByteOffset: Self.page + 100, as: UInt8.self) == 0)
        #expect(again.load(fromByteOffset: 32 * 1024 - 1, as: UInt8.self) == 0)
        arena.release(again)
    }

    @Test("at most warmSlots free slots keep their first page; the others are returned whole")
    func warmSlots() throws {
        let arena = try #require(BufferArena(slotSize: 32 * 1024, slotCount: 4, warmSlots: 2))
        let slots = try (0..<4).map { _ in try #require(arena.allocate(32 * 1024)) }
        for slot in slots { slot.initializeMemory(as: UInt8.self, repeating: 0xCD, count: 32 * 1024) }
        for slot in slots { arena.release(slot) }
        #expect(slots.map { Self.residentPages($0, 32 * 1024) } == [1, 1, 0, 0])
        #expect(arena.slotsInUse == 0)

        // Warm slots are handed out first, then the cold ones, each zeroed past what it kept.
        let again = try (0..<4).map { _ in try #require(arena.allocate(32 * 1024)) }
        #expect(Set(again) == Set(slots))
        #expect(Set(again.prefix(2)) == Set(slots.prefix(2)))
        for slot in again.suffix(2) { #expect(slot.load(as: UInt8.self) == 0) }
        #expect(arena.allocate(32 * 1024) == nil)
        for slot in again { arena.release(slot) }
        #expect(arena.slotsInUse == 0)
    }

    @Test("reallocating within a slot stays in place; beyond it moves to malloc with the bytes")
    func reallocation() throws {
        let arena = try #require(BufferArena(slotSize: 32 * 1024, slotCount: 1))
        let slot = arena.allocateAnywhere(16 * 1024)
        #expect(arena.owns(slot))
        for i in 0..<(16 * 1024) { slot.storeBytes(of: UInt8(truncatingIfNeeded: i), toByteOffset: i, as: UInt8.self) }
        let grown = arena.reallocateAnywhere(slot, oldSize: 16 * 1024, newSize: 32 * 1024)
        #expect(grown == slot)
        let moved = arena.reallocateAnywhere(grown, oldSize: 32 * 1024, newSize: 64 * 1024)
        #expect(!arena.owns(moved))
        #expect(arena.slotsInUse == 0)
        let intact = (0..<(16 * 1024)).allSatisfy {
            moved.load(fromByteOffset: $0, as: UInt8.self) == UInt8(truncatingIfNeeded: $0)
        }
        #expect(intact)
        arena.deallocateAnywhere(moved)

        // Small requests, and requests once the only slot is taken, come from malloc.
        let small = arena.allocateAnywhere(100)
        #expect(!arena.owns(small))
        let taken = arena.allocateAnywhere(20_000)
        let overflow = arena.allocateAnywhere(20_000)
        #expect(arena.owns(taken) && !arena.owns(overflow))
        arena.deallocateAnywhere(small)
        arena.deallocateAnywhere(taken)
        arena.deallocateAnywhere(overflow)
        #expect(arena.slotsInUse == 0)
    }

    @Test("ByteBuffers from the session allocator: large ones in the arena, small ones in malloc")
    func byteBuffers() throws {
        let arena = try #require(SessionBufferAllocator.arena)
        var large = SessionBufferAllocator.allocator.buffer(capacity: 32 * 1024)
        large.writeString("hello")
        let inArena = large.withUnsafeReadableBytes { arena.owns(UnsafeMutableRawPointer(mutating: $0.baseAddress!)) }
        #expect(inArena)
        var small = SessionBufferAllocator.allocator.buffer(capacity: 512)
        small.writeString("hello")
        let smallInArena = small.withUnsafeReadableBytes {
            arena.owns(UnsafeMutableRawPointer(mutating: $0.baseAddress!))
        }
        #expect(!smallInArena)
        // Growing the large buffer past a slot moves it out, bytes intact.
        large.writeRepeatingByte(0x5A, count: 40 * 1024)
        let movedOut = large.withUnsafeReadableBytes { !arena.owns(UnsafeMutableRawPointer(mutating: $0.baseAddress!)) }
        #expect(movedOut)
        #expect(large.readString(length: 5) == "hello")
        #expect(large.readableBytes == 40 * 1024)
    }

    @Test("limits.buffer_arena_slots: 0 keeps NIO's allocator; otherwise device channels use the arena's")
    func channelAllocatorChoice() throws {
        var settings = EdgeSettings()
        settings.maxConnections = 1_000
        #expect(settings.effectiveBufferArenaSlots == 3_024)
        settings.bufferArenaSlots = 0
        let logger = Logger(label: "test")
        #expect(EdgeServer.channelAllocator(settings: settings, logger: logger) == nil)
        settings.bufferArenaSlots = nil
        let chosen = try #require(EdgeServer.channelAllocator(settings: settings, logger: logger))
        let buffer = chosen.buffer(capacity: 32 * 1024)
        let arena = try #require(SessionBufferAllocator.arena)
        let inArena = buffer.withVeryUnsafeBytes { arena.owns(UnsafeMutableRawPointer(mutating: $0.baseAddress!)) }
        #expect(inArena)
    }
}
#endif
