@_spi(CustomByteBufferAllocator) package import NIOCore
internal import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Fixed-size slots in one reserved, lazily backed address range, for the large per-connection
/// buffers of device channels.
///
/// swift-nio-ssl allocates a 32 KiB plaintext read buffer and a 16 KiB outbound buffer from
/// the channel's allocator for every connection and keeps both for the connection's life. An
/// idle device touches only their first pages. From the malloc heap such a buffer is resident
/// well beyond what was touched (it reuses memory freed by earlier handshakes, and shares pages
/// with small objects); measured here, serving these buffers from untouched pages saves about
/// 2.1 KiB per idle TLS session (see docs/benchmarks.md). glibc can do that itself
/// (`mmap_threshold`), but it gives up after 65,536 mappings and each costs a kernel map entry;
/// this arena is one mapping.
///
/// A slot is `slotSize` bytes; requests from `minimumSize` up to `slotSize` get one, everything
/// else (and every request once all slots are taken) goes to `malloc`. A released slot's pages
/// after the first are returned to the kernel (`MADV_DONTNEED`), so a slot that once held a
/// large record does not stay resident for the next connection; at most `warmSlots` free slots
/// keep their first page, the others are returned whole.
package final class BufferArena: Sendable {
    /// The most slots `limits.buffer_arena_slots` may ask for (512 GiB of address space).
    package static let maximumSlots = 16_777_216

    package let slotSize: Int
    package let slotCount: Int
    package let minimumSize: Int
    /// Free slots that keep their first page resident for the next owner; slots released beyond
    /// these are returned to the kernel whole.
    package let warmSlots: Int
    private let page: Int
    private let base: UInt
    private let end: UInt
    private let state: Mutex<State>

    private struct State {
        /// Slots below this index have been handed out at least once.
        var next = 0
        /// Free slots whose first page is still resident, taken first.
        var warm: [Int32] = []
        /// Free slots with no resident page.
        var cold: [Int32] = []
        var inUse = 0
        var fallbacks = 0
    }

    /// Reserves `slotCount × slotSize` bytes of address space (nothing is resident until
    /// touched). Returns nil when the kernel refuses the reservation (for example under
    /// `vm.overcommit_memory = 2`); callers then use `malloc` alone.
    ///
    /// `warmSlots`: 256 by default, 1 MiB resident at most. Without a bound every slot ever
    /// released kept a page: after 4,000 lean devices each sent one 16 KB record at once (each
    /// held a slot while its record arrived), 3.4 KiB per device stayed resident in the arena.
    package init?(slotSize: Int = 32 * 1024, slotCount: Int, minimumSize: Int = 16 * 1024, warmSlots: Int = 256) {
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        precondition(slotSize > 0 && slotSize % page == 0, "slotSize must be a multiple of the page size")
        precondition(minimumSize > 0 && minimumSize <= slotSize)
        precondition(warmSlots >= 0)
        guard slotCount > 0, slotCount <= Self.maximumSlots, slotCount <= Int.max / slotSize else { return nil }
        let length = slotCount * slotSize
        let flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE
        guard let region = mmap(nil, length, PROT_READ | PROT_WRITE, flags, -1, 0), region != MAP_FAILED else {
            return nil
        }
        self.slotSize = slotSize
        self.slotCount = slotCount
        self.minimumSize = minimumSize
        self.warmSlots = warmSlots
        self.page = page
        self.base = UInt(bitPattern: region)
        self.end = self.base + UInt(length)
        self.state = Mutex(State())
    }

    deinit {
        munmap(UnsafeMutableRawPointer(bitPattern: self.base), Int(self.end - self.base))
    }

    /// A slot for `size` bytes, or nil if `size` is outside `minimumSize...slotSize` or every
    /// slot is taken.
    package func allocate(_ size: Int) -> UnsafeMutableRawPointer? {
        guard size >= self.minimumSize, size <= self.slotSize else { return nil }
        let index: Int? = self.state.withLock { state in
            let index: Int
            if let reused = state.warm.popLast() ?? state.cold.popLast() {
                index = Int(reused)
            } else if state.next < self.slotCount {
                index = state.next
                state.next += 1
            } else {
                state.fallbacks += 1
                return nil
            }
            state.inUse += 1
            return index
        }
        guard let index else { return nil }
        return UnsafeMutableRawPointer(bitPattern: self.base + UInt(index * self.slotSize))
    }

    /// Whether `pointer` is a slot of this arena.
    @inline(__always)
    package func owns(_ pointer: UnsafeMutableRawPointer) -> Bool {
        let address = UInt(bitPattern: pointer)
        return address >= self.base && address < self.end
    }

    /// Returns a slot's pages to the kernel, except its first while fewer than `warmSlots` free
    /// slots keep theirs, and the slot to the free list.
    ///
    /// Every connection touches the first page of its buffers (the handshake flight, the first
    /// records), so keeping it saves the next owner a page fault, and `madvise` over pages that
    /// were never touched unmaps nothing and needs no TLB shootdown across the event-loop
    /// threads: measured, dropping the whole slot cost 12.5–30 µs per connection on this machine,
    /// keeping the first 0–12.5 µs. Past `warmSlots` (after many connections closed at once, or
    /// many large records were in flight at once) the memory matters more than that cost.
    package func release(_ pointer: UnsafeMutableRawPointer) {
        let offset = UInt(bitPattern: pointer) - self.base
        precondition(offset % UInt(self.slotSize) == 0, "not the start of a slot")
        let index = Int32(offset / UInt(self.slotSize))
        _ = madvise(pointer + self.page, self.slotSize - self.page, MADV_DONTNEED)
        let keptWarm = self.state.withLock { state in
            guard state.warm.count < self.warmSlots else { return false }
            state.warm.append(index)
            state.inUse -= 1
            return true
        }
        guard !keptWarm else { return }
        _ = madvise(pointer, self.page, MADV_DONTNEED)
        self.state.withLock { state in
            state.cold.append(index)
            state.inUse -= 1
        }
    }

    /// Slots handed out and not yet released.
    package var slotsInUse: Int { self.state.withLock { $0.inUse } }

    /// Requests that fitted a slot but found none free (served by `malloc` instead).
    package var fallbacks: Int { self.state.withLock { $0.fallbacks } }

    /// Allocates like `malloc`, from a slot when the size fits one.
    func allocateAnywhere(_ size: Int) -> UnsafeMutableRawPointer {
        if let slot = self.allocate(size) { return slot }
        return checkedMalloc(size)
    }

    func deallocateAnywhere(_ pointer: UnsafeMutableRawPointer) {
        if self.owns(pointer) { self.release(pointer) } else { free(pointer) }
    }

    func reallocateAnywhere(_ pointer: UnsafeMutableRawPointer?, oldSize: Int, newSize: Int) -> UnsafeMutableRawPointer
    {
        guard let pointer else { return self.allocateAnywhere(newSize) }
        guard self.owns(pointer) else { return checkedRealloc(pointer, newSize) }
        if newSize <= self.slotSize { return pointer }
        let moved = checkedMalloc(newSize)
        moved.copyMemory(from: pointer, byteCount: min(oldSize, newSize))
        self.release(pointer)
        return moved
    }
}

/// The `ByteBufferAllocator` of device channels: large buffers from the process's
/// `BufferArena`, everything else from `malloc`.
///
/// The arena is process-wide because a `ByteBufferAllocator`'s functions cannot capture state.
/// `reserve(slots:)` sizes it before the first device channel; without that call it is made
/// with `defaultSlots` on first use.
package enum SessionBufferAllocator {
    /// Slots reserved when nobody called `reserve(slots:)` first: two per connection for
    /// 65,536 connections (4 GiB of address space, none of it resident until used).
    package static let defaultSlots = 2 * 65_536

    private static let requestedSlots = Atomic<Int>(0)

    /// Sets the arena's slot count, if it does not exist yet. Returns false when it already
    /// does (the first size stays).
    @discardableResult
    package static func reserve(slots: Int) -> Bool {
        guard slots > 0 else { return false }
        let (exchanged, _) = Self.requestedSlots.compareExchange(expected: 0, desired: slots, ordering: .relaxed)
        return exchanged && !Self.created.load(ordering: .acquiring)
    }

    private static let created = Atomic<Bool>(false)

    /// The process's arena, or nil if the kernel refused the reservation.
    package static let arena: BufferArena? = {
        Self.created.store(true, ordering: .releasing)
        let requested = Self.requestedSlots.load(ordering: .relaxed)
        return BufferArena(slotCount: requested > 0 ? requested : Self.defaultSlots)
    }()

    /// Uses the arena when there is one, `malloc` otherwise.
    package static let allocator = ByteBufferAllocator(
        allocate: { size in
            if let arena = SessionBufferAllocator.arena { return arena.allocateAnywhere(size) }
            return checkedMalloc(size)
        },
        reallocate: { pointer, oldSize, newSize in
            if let arena = SessionBufferAllocator.arena {
                return arena.reallocateAnywhere(pointer, oldSize: oldSize, newSize: newSize)
            }
            return checkedRealloc(pointer, newSize)
        },
        deallocate: { pointer in
            if let arena = SessionBufferAllocator.arena { arena.deallocateAnywhere(pointer) } else { free(pointer) }
        },
        copy: { destination, source, count in destination.copyMemory(from: source, byteCount: count) }
    )
}

/// `malloc` for `ByteBuffer` storage. NIO's allocator contract has no failure path (its own
/// default allocator traps too), so a failure here ends the process with a message naming the
/// size; what keeps it from happening is that every buffer toward or from a device is bounded
/// (`limits.outbound_buffer`, `max_frame_size`, `max_pending`), see docs/security.md.
@inline(__always)
func checkedMalloc(_ size: Int) -> UnsafeMutableRawPointer {
    guard let pointer = malloc(size) else { allocationFailed(size) }
    return pointer
}

@inline(__always)
func checkedRealloc(_ pointer: UnsafeMutableRawPointer?, _ size: Int) -> UnsafeMutableRawPointer {
    guard let moved = realloc(pointer, size) else { allocationFailed(size) }
    return moved
}

@inline(never)
func allocationFailed(_ size: Int) -> Never {
    fatalError("out of memory: a ByteBuffer of \(size) bytes could not be allocated")
}
