internal import Logging
internal import NIOCore
internal import TerminusCompression
internal import TerminusSessions

/// Everything the sessions of one event loop share: the inflater (one zlib context per
/// loop), the timer wheel, the uplink batcher and the draining flag. Confined to its loop.
final class EdgeLoopContext {
    let eventLoop: any EventLoop
    let inflater: Inflater
    /// Compresses PUSH payloads for devices that announced COMPRESSED_PUSH.
    let deflater: Deflater
    let wheel: TimerWheel
    let batcher: UplinkBatcher
    /// For the sessions' outgoing frames and payload copies: plain `malloc`, read here to save a
    /// trip through the pipeline per frame. Not the channels' `SessionBufferAllocator`: these
    /// buffers are short-lived, and a 16–32 KiB payload copy would take an arena slot whose
    /// release returns touched pages to the kernel on every message.
    let allocator = ByteBufferAllocator()
    var draining = false
    var drainReconnectWindowMilliseconds: UInt32 = 0

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
        self.batcher = UplinkBatcher(eventLoop: eventLoop, sink: sink, maxBatchSize: settings.maxBatchSize)
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
