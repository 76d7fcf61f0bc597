internal import Logging
internal import NIOCore
internal import TerminusCompression
internal import TerminusLeanTLS
internal import TerminusSessions

/// A topic that passed `Topic.validatePublishTopic` at `maxLength` (`EdgeLoopContext.validTopic`).
struct ValidTopic {
    var topic = ""
    /// -1: nothing checked yet.
    var maxLength = -1
}

/// Everything the sessions of one event loop share: the inflater (one zlib context per
/// loop), the timer wheel, the uplink batcher and the draining flag. Confined to its loop.
final class EdgeLoopContext {
    let eventLoop: any EventLoop
    let inflater: Inflater
    /// Compresses PUSH payloads for devices that announced COMPRESSED_PUSH.
    let deflater: Deflater
    let wheel: TimerWheel
    let batcher: UplinkBatcher
    /// This loop's counts, read at a scrape.
    let metrics: EdgeLoopMetrics
    /// For the sessions' outgoing frames and payload copies: plain `malloc`, read here to save a
    /// trip through the pipeline per frame. Not the channels' `SessionBufferAllocator`: these
    /// buffers are short-lived, and a 16–32 KiB payload copy would take an arena slot whose
    /// release returns touched pages to the kernel on every message.
    let allocator = ByteBufferAllocator()
    /// The buffer the sessions encode ACK frames into, reused from one to the next: the lean TLS
    /// engine seals a frame into a record at once and lets go of it, so the next ACK finds the
    /// buffer free and allocates nothing. An engine that holds it until the flush (nio-ssl)
    /// makes the next ACK allocate a fresh one of the same size, as it would without reuse.
    var ackScratch: ByteBuffer?
    /// The last topic one of this loop's sessions found valid, with the length limit it was
    /// checked against. A fleet's devices publish to few topics, so most messages compare
    /// their topic with it (equal storage or a few bytes) instead of checking it again.
    var validTopic = ValidTopic()
    var draining = false
    /// The lean TLS engine's AEAD state for this loop's connections, made at the first.
    private var aeadContext: AEADContext?
    var drainReconnectWindowMilliseconds: UInt32 = 0
    /// While draining: by when the gateway answers the uplinks still in flight (the end of
    /// `drain.grace`, plus a margin); sessions closed by the drain wait for them until then.
    var drainOutcomesBy: NIODeadline?
    /// Connections of this loop that have not authenticated yet, oldest first. Entries of
    /// sessions that authenticated or closed since are skipped lazily, so the buffer holds at
    /// most the accepts of the last handshake + HELLO timeout.
    private var unauthenticated = CircularBuffer<(session: DeviceSessionHandler, since: NIODeadline)>()
    private let maxTracked: Int

    init(
        eventLoop: any EventLoop,
        settings: EdgeSettings,
        dictionaries: DictionarySet,
        sink: any UplinkSink
    )
        throws
    {
        self.eventLoop = eventLoop
        self.inflater = try Inflater(limits: settings.inflateLimits, dictionaries: dictionaries)
        self.deflater = try Deflater(level: 6, dictionaries: dictionaries)
        self.wheel = TimerWheel(tick: settings.timerTick)
        let metrics = EdgeLoopMetrics()
        self.metrics = metrics
        self.batcher = UplinkBatcher(eventLoop: eventLoop, sink: sink, maxBatchSize: settings.maxBatchSize)
        self.maxTracked = max(1, settings.maxConnections)
    }
}

extension EdgeLoopContext {
    /// This loop's AEAD context (the lean TLS engine), made when first asked for.
    func aead() -> AEADContext {
        if let made = self.aeadContext { return made }
        let made = AEADContext()
        self.aeadContext = made
        return made
    }

    /// Bounded by `max_connections` (a loop never holds more unauthenticated connections than
    /// that); beyond it the oldest entry is forgotten, which only loses an eviction candidate.
    func trackUnauthenticated(_ session: DeviceSessionHandler, now: NIODeadline) {
        self.dropSettled()
        if self.unauthenticated.count >= self.maxTracked { self.unauthenticated.removeFirst() }
        self.unauthenticated.append((session, now))
    }

    /// At the connection cap, makes room for a new connection by closing this loop's oldest
    /// connection that has not authenticated within `age` (a flood of idle or slow handshakes
    /// must not lock real devices out). Returns false when there is none.
    func evictOldestUnauthenticated(olderThan age: TimeAmount, now: NIODeadline) -> Bool {
        self.dropSettled()
        guard let oldest = self.unauthenticated.first, oldest.since + age <= now else { return false }
        self.unauthenticated.removeFirst()
        oldest.session.evict()
        return true
    }

    /// Stops the timer wheel and lets go of every session this loop still refers to (they refer
    /// back to the listener: without this a stopped listener would keep itself alive).
    func shutdown() {
        self.wheel.stop()
        self.unauthenticated.removeAll()
    }

    private func dropSettled() {
        while let first = self.unauthenticated.first, !first.session.isAwaitingAuthentication {
            self.unauthenticated.removeFirst()
        }
    }
}

/// The per-loop contexts of one edge server, looked up once per connection.
final class EdgeLoopContexts: @unchecked Sendable {
    // Immutable after init; each context is only touched on its own loop.
    private let byLoop: [ObjectIdentifier: EdgeLoopContext]
    let loops: [any EventLoop]

    init(
        group: any EventLoopGroup,
        settings: EdgeSettings,
        dictionaries: DictionarySet,
        sink: any UplinkSink
    )
        throws
    {
        var byLoop: [ObjectIdentifier: EdgeLoopContext] = [:]
        self.loops = Array(group.makeIterator())
        for loop in self.loops {
            byLoop[ObjectIdentifier(loop)] = try EdgeLoopContext(
                eventLoop: loop,
                settings: settings,
                dictionaries: dictionaries,
                sink: sink
            )
        }
        self.byLoop = byLoop
    }

    /// Call on `eventLoop`.
    func context(for eventLoop: any EventLoop) -> EdgeLoopContext {
        eventLoop.preconditionInEventLoop()
        return self.byLoop[ObjectIdentifier(eventLoop)]!
    }
}
